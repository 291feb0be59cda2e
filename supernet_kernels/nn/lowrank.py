"""Low-rank linear layers on the sliced low-rank GEMM op.

``LowRankLinear`` is a static rank-r layer. ``ElasticLowRankLinear`` stores a full
factorization whose components are ordered by singular value, so its first r components are
the best rank-r approximation of the original weight (Eckart-Young): every rank a supernet
samples inherits the same weights (FLORA's SVD weight inheritance), and switching rank is a
slice, not a copy.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def svd_factors(weight: torch.Tensor, rank: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncated SVD of ``weight`` (out, in) as u (out, r) and v (r, in) with weight ~= u @ v.

    The singular values are split evenly between the factors (sqrt(s) on each side), so u and v
    have the same scale, which keeps their gradients balanced in training. Computed in float64
    (then cast back) so that the full-rank factorization reproduces the weight to ~1e-7 in fp32.
    """
    if weight.dim() != 2:
        raise ValueError(
            f"svd_factors: weight must be 2-D (out, in), got shape {tuple(weight.shape)}"
        )
    full = min(weight.shape)
    r = full if rank is None else rank
    if not 1 <= r <= full:
        raise ValueError(
            f"svd_factors: rank must be in 1..{full} for a {tuple(weight.shape)} weight, got {r}"
        )
    U, S, Vh = torch.linalg.svd(weight.detach().to(torch.float64), full_matrices=False)
    root = S[:r].sqrt()
    u = (U[:, :r] * root).to(weight.dtype)
    v = (root[:, None] * Vh[:r]).to(weight.dtype)
    return u.contiguous(), v.contiguous()


@torch.no_grad()
def inherit_linear(layer: nn.Module, linear: nn.Linear, rank: int | None) -> None:
    """Load ``linear`` into ``layer`` in place: its weight (rank None: ``layer.weight``) or the
    rank-``rank`` truncated SVD factors of it (``layer.u``, ``layer.v``), and its bias."""
    if rank is None:
        layer.weight.copy_(linear.weight)
    else:
        u, v = svd_factors(linear.weight, rank)
        layer.u.copy_(u)
        layer.v.copy_(v)
    if linear.bias is not None:
        layer.bias.copy_(linear.bias)


def _init_factors(u: nn.Parameter, v: nn.Parameter, bias: nn.Parameter | None) -> None:
    """Random factors whose product u @ v has nn.Linear's default scale (each factor takes the
    square root of it); the bias as nn.Linear's."""
    in_features, rank = v.shape[1], v.shape[0]
    with torch.no_grad():
        nn.init.kaiming_uniform_(v, a=math.sqrt(5))
        nn.init.normal_(u, std=1.0 / math.sqrt(rank))
        if bias is not None:
            bound = 1 / math.sqrt(in_features)
            nn.init.uniform_(bias, -bound, bound)


class LowRankLinear(nn.Module):
    """y = x @ v.T @ u.T + bias, with u (out, rank) and v (rank, in)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        bias: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if not 1 <= rank <= min(in_features, out_features):
            raise ValueError(
                f"LowRankLinear: rank must be in 1..{min(in_features, out_features)}, got {rank}"
            )
        kw = {"device": device, "dtype": dtype}
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.u = nn.Parameter(torch.empty(out_features, rank, **kw))
        self.v = nn.Parameter(torch.empty(rank, in_features, **kw))
        self.bias = nn.Parameter(torch.empty(out_features, **kw)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _init_factors(self.u, self.v, self.bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int) -> LowRankLinear:
        """Truncated SVD of ``linear``; at rank min(in, out) it reproduces the layer."""
        layer = cls(
            linear.in_features,
            linear.out_features,
            rank,
            bias=linear.bias is not None,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
        )
        inherit_linear(layer, linear, rank)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.supernet_kernels.lowrank_linear(
            x, self.u, self.v, self.rank, None, self.bias
        )

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"rank={self.rank}, bias={self.bias is not None}"
        )


class ElasticLowRankLinear(nn.Module):
    """A low-rank layer whose rank (and output / input width) is chosen at run time.

    Stores u (out, max_rank) and v (max_rank, in). ``set_active(rank=, out_features=,
    in_features=)`` picks the sub-layer: y[..., :out] = x[..., :in] @ v[:rank, :in].T @
    u[:out, :rank].T + bias[:out]. All slices are views of the stored factors.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        max_rank: int | None = None,
        bias: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        full = min(in_features, out_features)
        max_rank = full if max_rank is None else max_rank
        if not 1 <= max_rank <= full:
            raise ValueError(f"ElasticLowRankLinear: max_rank must be in 1..{full}, got {max_rank}")
        kw = {"device": device, "dtype": dtype}
        self.in_features, self.out_features, self.max_rank = in_features, out_features, max_rank
        self.u = nn.Parameter(torch.empty(out_features, max_rank, **kw))
        self.v = nn.Parameter(torch.empty(max_rank, in_features, **kw))
        self.bias = nn.Parameter(torch.empty(out_features, **kw)) if bias else None
        self.active_rank = max_rank
        self.active_out_features = out_features
        self.active_in_features = in_features
        _init_factors(self.u, self.v, self.bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear, max_rank: int | None = None) -> ElasticLowRankLinear:
        """SVD weight inheritance: components ordered by singular value, largest first."""
        layer = cls(
            linear.in_features,
            linear.out_features,
            max_rank,
            bias=linear.bias is not None,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
        )
        inherit_linear(layer, linear, layer.max_rank)
        return layer

    def set_rank(self, rank: int) -> None:
        self.set_active(rank=rank)

    def set_active(
        self,
        rank: int | None = None,
        out_features: int | None = None,
        in_features: int | None = None,
        *,
        out: int | None = None,
    ) -> None:
        """Choose the active sub-layer; arguments left None keep their current value. ``out``
        is another name for ``out_features`` (ElasticLinear's), so ``set_active(**choice)``
        takes what :meth:`active_choice` and :meth:`choices` give."""
        if out is not None:
            if out_features is not None and out != out_features:
                raise ValueError(
                    f"ElasticLowRankLinear.set_active: out ({out}) and out_features "
                    f"({out_features}) name the same width; give one"
                )
            out_features = out
        checks = (
            ("rank", rank, self.max_rank),
            ("out_features", out_features, self.out_features),
            ("in_features", in_features, self.in_features),
        )
        for name, val, hi in checks:
            if val is None:
                continue
            if not isinstance(val, int) or isinstance(val, bool):
                raise TypeError(
                    f"ElasticLowRankLinear.set_active: {name} must be an int, got {val!r}"
                )
            if not 1 <= val <= hi:
                raise ValueError(
                    f"ElasticLowRankLinear.set_active: {name} must be in 1..{hi}, got {val}"
                )
        if rank is not None:
            self.active_rank = rank
        if out_features is not None:
            self.active_out_features = out_features
        if in_features is not None:
            self.active_in_features = in_features

    def active_choice(self) -> dict:
        """The active sub-layer as ``set_active`` keywords (these keys name a choice in stored
        latency tables: keep them)."""
        return {
            "in_features": self.active_in_features,
            "out_features": self.active_out_features,
            "rank": self.active_rank,
        }

    def choices(self) -> list[dict]:
        """Ranks max/4, max/2, 3max/4 and max (widths stay), as ``set_active`` keywords: a
        rank is any int up to ``max_rank``, these four sample it evenly."""
        return [{"rank": r} for r in sorted({max(1, self.max_rank * q // 4) for q in (1, 2, 3, 4)})]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.active_in_features
        if x.shape[-1] != k:
            raise ValueError(
                f"ElasticLowRankLinear: input has {x.shape[-1]} features, "
                f"the active in_features is {k}"
            )
        v = self.v if k == self.in_features else self.v[:, :k]  # column slice: a strided view
        return torch.ops.supernet_kernels.lowrank_linear(
            x, self.u, v, self.active_rank, self.active_out_features, self.bias
        )

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"max_rank={self.max_rank}, active_rank={self.active_rank}, "
            f"active_out_features={self.active_out_features}, "
            f"active_in_features={self.active_in_features}, bias={self.bias is not None}"
        )
