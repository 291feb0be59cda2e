"""Hugging Face transformers families: ViT (``ViTModel``, ``ViTForImageClassification``) and
SAM (``SamModel``, ``SamVisionModel``).

* ``hf_vit``: each ``ViTLayer`` (``{layers}.{i}``) has ``attention.q_proj`` / ``k_proj`` /
  ``v_proj`` (role qkv: factorized), ``attention.o_proj`` (role proj: dense, 4 / 8 / 16-bit)
  and ``mlp.fc1`` / ``fc2`` (elastic MLP width). Heads are elastic: transformers' ViT attention
  reshapes q, k, v with ``view(..., -1, head_dim)``, so h heads are the first h * head_dim rows
  of q, k and v and the first h * head_dim inputs of o_proj. ``convert`` sorts the heads by
  magnitude (the L2 norm of each head's q, k, v rows and o_proj columns) so a prefix keeps the
  best. Every layer but the first and the last is droppable.
* ``hf_sam``: each ``SamVisionLayer`` of the vision encoder has ``attn.qkv`` (factorized),
  ``attn.proj`` (dense, quantizable) and ``mlp.lin1`` / ``lin2`` (elastic width); windowed
  layers but the first and last are droppable, global-attention layers are kept (as for
  segment-anything). Heads are elastic with ``attention="ours"`` (the default): the fused qkv
  rows are laid out (3, heads, head_dim) and transformers' attention reshapes with
  ``num_attention_heads``, so ``convert`` replaces each ``SamVisionAttention`` (eager or SDPA)
  by :class:`~supernet_kernels.supernet.hf_sam_attention.SKHFSamAttention` and sorts its heads
  by importance into a head-major qkv, as for segment-anything (windowed and global layers
  alike). With ``attention="original"`` the heads stay fixed. The prompt encoder and mask
  decoder linears are converted as fixed dense 16-bit layers ("other").

Build records: ``{"kind": "hf", "class": "ViTForImageClassification", "kwargs": config
dict}``, rebuilt as ``cls(cls.config_class.from_dict(kwargs))`` for a whitelisted class, plus
``"attn_implementation": "eager" | "sdpa"`` where the model runs another attention
implementation than transformers' default (SAM's eager and SDPA attention are different
classes, so the rebuilt architecture must pick the same one).
"""

from __future__ import annotations

import sys

import torch
from torch import nn

HF_FAMILIES = ("hf_vit", "hf_sam")
HF_CLASSES = ("ViTModel", "ViTForImageClassification", "SamModel", "SamVisionModel")


def _is_hf(model: nn.Module) -> bool:
    return type(model).__module__.startswith("transformers.") and "transformers" in sys.modules


def _layer_cls(family: str):
    if family == "hf_vit":
        from transformers.models.vit.modeling_vit import ViTLayer

        return ViTLayer
    from transformers.models.sam.modeling_sam import SamVisionLayer

    return SamVisionLayer


def detect(model: nn.Module) -> str | None:
    """ "hf_vit" / "hf_sam" for a whitelisted transformers class, else None."""
    if not _is_hf(model) or type(model).__name__ not in HF_CLASSES:
        return None
    return "hf_sam" if type(model).__name__.startswith("Sam") else "hf_vit"


def layers(model: nn.Module, family: str) -> list[tuple[str, nn.Module]]:
    """(name, layer) of the family's transformer layers, in order."""
    cls = _layer_cls(family)
    return [(n, m) for n, m in model.named_modules() if type(m) is cls]


def layout_parts(model: nn.Module, family: str):
    """(roles, mlps, blocks, heads) of a transformers model (see the module doc)."""
    roles: dict[str, str] = {}
    mlps: dict[str, tuple[str, str]] = {}
    blocks: dict[str, bool] = {}
    heads: dict[str, int] = {}
    found = layers(model, family)
    n = len(found)
    for i, (name, layer) in enumerate(found):
        edge = 0 < i < n - 1
        if family == "hf_vit":
            a = f"{name}.attention"
            for p in ("q_proj", "k_proj", "v_proj"):
                roles[f"{a}.{p}"] = "qkv"
            roles[f"{a}.o_proj"] = "proj"
            roles[f"{name}.mlp.fc1"], roles[f"{name}.mlp.fc2"] = "fc1", "fc2"
            mlps[f"{name}.mlp"] = (f"{name}.mlp.fc1", f"{name}.mlp.fc2")
            heads[a] = int(layer.attention.num_attention_heads)
            blocks[name] = edge
        else:
            roles[f"{name}.attn.qkv"], roles[f"{name}.attn.proj"] = "qkv", "proj"
            roles[f"{name}.mlp.lin1"], roles[f"{name}.mlp.lin2"] = "fc1", "fc2"
            mlps[f"{name}.mlp"] = (f"{name}.mlp.lin1", f"{name}.mlp.lin2")
            blocks[name] = edge and int(layer.window_size) > 0
            heads[f"{name}.attn"] = int(layer.attn.num_attention_heads)
    return roles, mlps, blocks, heads


def head_linears(attn_name: str, family: str = "hf_vit") -> tuple[list[str], str]:
    """(q, k, v linear names, output linear name) of a transformers attention: ViT's separate
    q, k, v projections, SAM's fused qkv."""
    if family == "hf_sam":
        return [f"{attn_name}.qkv"], f"{attn_name}.proj"
    return [f"{attn_name}.{p}" for p in ("q_proj", "k_proj", "v_proj")], f"{attn_name}.o_proj"


@torch.no_grad()
def prioritize_heads(attn: nn.Module, num_heads: int) -> torch.Tensor:
    """Sort a transformers ViT attention's heads by magnitude (L2 norm of each head's q, k, v
    rows and o_proj columns), in place; the module computes the same function (attention is
    invariant to the order of the heads). Returns the head permutation."""
    q, k, v, o = attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj
    d = q.out_features // num_heads
    score = torch.zeros(num_heads, dtype=torch.float64, device=q.weight.device)
    for lin in (q, k, v):
        score += lin.weight.double().reshape(num_heads, d, -1).pow(2).sum((1, 2))
    score += o.weight.double().reshape(o.out_features, num_heads, d).pow(2).sum((0, 2))
    perm = torch.argsort(score, descending=True, stable=True)
    rows = (perm[:, None] * d + torch.arange(d, device=perm.device)).reshape(-1)
    for lin in (q, k, v):
        lin.weight.copy_(lin.weight[rows])
        if lin.bias is not None:
            lin.bias.copy_(lin.bias[rows])
    o.weight.copy_(o.weight[:, rows])
    return perm


ATTN_IMPLEMENTATIONS = ("eager", "sdpa")


def build_record(model: nn.Module) -> dict:
    record = {
        "kind": "hf",
        "class": type(model).__name__,
        "kwargs": model.config.to_diff_dict() if hasattr(model.config, "to_diff_dict") else {},
    }
    impl = getattr(model.config, "_attn_implementation", None)
    if impl in ATTN_IMPLEMENTATIONS:
        record["attn_implementation"] = impl
    return record


def rebuild(build: dict) -> nn.Module:
    """The transformers model a build record describes (fresh weights), in the current default
    device context."""
    name = build.get("class")
    if name not in HF_CLASSES:
        raise ValueError(f"unknown transformers class {name!r} in build record")
    try:
        import transformers
    except ImportError as exc:  # pragma: no cover - only without transformers
        raise ValueError(f"the record needs transformers ({exc})") from exc
    impl = build.get("attn_implementation")
    if impl is not None and impl not in ATTN_IMPLEMENTATIONS:
        raise ValueError(
            f"attn_implementation {impl!r} in build record is not one of {ATTN_IMPLEMENTATIONS}"
        )
    cls = getattr(transformers, name)
    config = cls.config_class.from_dict(dict(build["kwargs"]))
    if impl is None:
        return cls(config).eval()
    return cls._from_config(config, attn_implementation=impl).eval()


def is_sam_model(model: nn.Module) -> bool:
    """A transformers ``SamModel`` (vision encoder, prompt encoder and mask decoder)."""
    return detect(model) == "hf_sam" and type(model).__name__ == "SamModel"


def vision_model(sam: nn.Module) -> nn.Module:
    """A transformers ``SamVisionModel`` holding a copy of ``sam``'s (a ``SamModel``) vision
    encoder, its weights loaded strictly (``sam`` is untouched): the part of SAM a supernet is
    made of, as segment-anything's ``image_encoder`` is. Its forward returns an output whose
    ``last_hidden_state`` is ``sam.get_image_embeddings``'s."""
    if not is_sam_model(sam):
        raise TypeError(f"vision_model: expected a transformers SamModel, got {type(sam).__name__}")
    import transformers

    vision = transformers.SamVisionModel(sam.config.vision_config)
    vision.vision_encoder.load_state_dict(sam.vision_encoder.state_dict(), strict=True)
    p = next(sam.vision_encoder.parameters())
    return vision.to(device=p.device, dtype=p.dtype).train(sam.training)


def refuse_save_pretrained(model: nn.Module) -> None:
    """Give a converted / extracted / quantized transformers model a ``save_pretrained`` that
    refuses: transformers would write our layers' tensors (u, v, packed codes) under names its
    own classes do not have, and ``from_pretrained`` would then initialize those linears
    afresh (a warning in a log, not an error)."""
    if not _is_hf(model) or not hasattr(model, "save_pretrained"):
        return

    def save_pretrained(*args, **kwargs):
        raise NotImplementedError(
            "save_pretrained: this model holds supernet-kernels layers (LowRankLinear / "
            "QuantLinear / ElasticLinear) that transformers' from_pretrained would silently "
            "re-initialize; save it with supernet_kernels.save(subnet, path) (an extracted "
            "subnet) or supernet_kernels.save_quantized(model, path), and load with "
            "supernet_kernels.load / load_quantized"
        )

    model.save_pretrained = save_pretrained
