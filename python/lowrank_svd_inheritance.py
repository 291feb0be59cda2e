"""FLORA's first step on any model made of nn.Linear: SVD weight inheritance.

Every nn.Linear becomes an ElasticLowRankLinear holding its full SVD factorization, ordered by
singular value; then the same weights serve every rank. This prints, for a few rank ratios
(FLORA's DeiT-B choices: fractions of min(in, out)), the output error against the original
model and the share of linear-layer FLOPs kept, min(in*out, r*(in+out)) per token.

    python python/lowrank_svd_inheritance.py            # a timm DeiT-Tiny if timm is installed,
                                                        # else a small random MLP-Mixer-like model
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from supernet_kernels.nn import ElasticLowRankLinear

RATIOS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 1.0)


def to_elastic(model: nn.Module) -> list[tuple[nn.Linear, ElasticLowRankLinear]]:
    """Replace every nn.Linear in place; return (original, elastic) pairs."""
    pairs = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                elastic = ElasticLowRankLinear.from_linear(child)
                setattr(parent, name, elastic)
                pairs.append((child, elastic))
    return pairs


def build_model(use_timm: bool) -> tuple[nn.Module, torch.Tensor]:
    if use_timm:
        try:
            import timm

            model = timm.create_model("deit_tiny_patch16_224", pretrained=False)
            return model.eval(), torch.randn(2, 3, 224, 224)
        except ImportError:
            pass
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(96, 384), nn.GELU(), nn.Linear(384, 96), nn.GELU(), nn.Linear(96, 10)
    )
    return model.eval(), torch.randn(16, 96)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--no-timm", action="store_true", help="use the small built-in model")
    args = parser.parse_args()

    model, x = build_model(not args.no_timm)
    with torch.no_grad():
        ref = model(x)
        pairs = to_elastic(model)
        print(f"{len(pairs)} linear layers converted")
        print(f"{'ratio':>6} {'rel. output error':>18} {'linear FLOPs kept':>18}")
        for ratio in RATIOS:
            dense = kept = 0
            for lin, el in pairs:
                k, n = lin.in_features, lin.out_features
                r = max(1, round(ratio * min(k, n)))
                el.set_rank(r)
                dense += k * n
                kept += min(k * n, r * (k + n))
            err = ((model(x) - ref).norm() / ref.norm()).item()
            print(f"{ratio:>6.3f} {err:>18.3e} {kept / dense:>17.1%}")


if __name__ == "__main__":
    main()
