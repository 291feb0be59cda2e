"""Elastic layers for weight-sharing supernets: ``ElasticLinear`` and ``ElasticBlock``.

``ElasticLinear`` is one linear layer with every elastic dimension a supernet samples:

* width: output neurons ``out`` and input features ``in_features`` (prefix slices; sort the
  neurons by importance first, :mod:`supernet_kernels.nn.importance`, so a prefix keeps the
  most important ones);
* rank: a factorized layer (u (out, R), v (R, in), components ordered by singular value, FLORA's
  SVD weight inheritance) runs rank r as the first r components;
* precision: weight bits (2, 3, 4, 8, 16) and activation bits (8, 16), trained with
  straight-through fake quantization whose codes equal the packed kernels' codes exactly;
* LoRA adapters over a frozen base.

Every sub-layer is a slice of the stored tensors (no copies), and :meth:`ElasticLinear.extract`
returns the deployable standalone layer for the active configuration (``nn.Linear``,
:class:`~supernet_kernels.nn.LowRankLinear` or :class:`~supernet_kernels.nn.QuantLinear`) with
copied weights, computing the same function as the supernet layer.

Compute paths of ``ElasticLinear.forward``:

* factorized: ``torch.ops.supernet_kernels.lowrank_linear`` on slices of u and v;
* LoRA: the adapter product x @ A.T @ B.T is itself a sliced low-rank product, so it also runs on
  ``torch.ops.supernet_kernels.lowrank_linear`` (u = lora_b, v = lora_a);
* dense, 16-bit and fake-quantized: ``torch.nn.functional.linear``. Our ops have no dense
  floating-point GEMM (the dense 16-bit product is cuBLAS's job), and quantization-aware
  training needs gradients to the latent float weight, which the packed ``quant_linear`` op
  cannot give, so the fake-quantized weight (:func:`~supernet_kernels.quant.fake.fake_quantize`,
  straight-through) is multiplied with ``F.linear``. ``extract()`` turns it into a
  ``QuantLinear`` that runs ``torch.ops.supernet_kernels.quant_linear`` with the same codes.

Quantization groups: a weight of active input width K is quantized in groups of ``group_size``
along K when ``group_size`` divides K; otherwise (e.g. K = 100 with group_size 128, or an input
width slice that is not a multiple of it) the layer falls back to per-channel scales (one group
spanning K). ``forward`` and ``extract`` use the same rule (:meth:`ElasticLinear.quant_group_size`).
Scales and zero points are min-max (asymmetric, :func:`~supernet_kernels.quant.quantize_weight`'s
arithmetic) of the detached active weight, recomputed each forward.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..quant.fake import fake_quantize, fake_quantize_activations_int8
from ..quant.quantize import _rtn
from .elastic_block import ElasticBlock
from .lowrank import LowRankLinear, _init_factors, inherit_linear
from .quant import QuantLinear

__all__ = ["A_BITS", "W_BITS", "ElasticBlock", "ElasticLinear", "bits_compatible", "check_perm"]

W_BITS = (2, 3, 4, 8, 16)
A_BITS = (8, 16)


def bits_compatible(w_bits: int, a_bits: int) -> bool:
    """Whether a kernel runs ``w_bits`` weights with ``a_bits`` activations: 8-bit activations
    need weights of at most 8 bits (there is no W16A8 kernel). The one home of this rule: the
    supernet's space, configs, search repair and this layer all ask here."""
    return a_bits != 8 or w_bits <= 8


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_choices(name: str, values, allowed: Sequence[int], shown: str) -> tuple[int, ...]:
    """Validate a non-empty sequence of ints from ``allowed`` (described as ``shown`` in
    errors); return it sorted and deduplicated."""
    if isinstance(values, (int, str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(
            f"ElasticLinear: {name} must be a sequence of ints from {shown}, got {values!r}"
        )
    if not values:
        raise ValueError(f"ElasticLinear: {name} must not be empty (allowed: {shown})")
    for v in values:
        if not _is_int(v):
            raise TypeError(f"ElasticLinear: {name} must hold ints from {shown}, got {v!r}")
        if v not in allowed:
            raise ValueError(f"ElasticLinear: {name} values must be in {shown}, got {v}")
    return tuple(sorted(set(values)))


def check_perm(perm, size: int, where: str) -> torch.Tensor:
    """``perm`` as a long tensor after checking that it is a permutation of 0..size - 1
    (``where`` names the caller in the error)."""
    if not isinstance(perm, torch.Tensor) or perm.dim() != 1 or perm.dtype.is_floating_point:
        raise TypeError(f"{where}: perm must be a 1-D integer tensor")
    if perm.numel() != size or not torch.equal(
        perm.sort().values.cpu(), torch.arange(size, dtype=perm.dtype)
    ):
        raise ValueError(f"{where}: perm must be a permutation of 0..{size - 1}")
    return perm.to(torch.long)


class ElasticLinear(nn.Module):
    """A linear layer whose width, rank, weight / activation precision are chosen at run time.

    Args:
        in_features, out_features: the largest (stored) widths.
        bias: whether the layer has a bias.
        rank_choices: None for a dense layer (parameter ``weight`` (out, in)); a sequence of
            ranks for a factorized layer (parameters ``u`` (out, R) and ``v`` (R, in), R =
            max(rank_choices) <= min(in, out)). Stored sorted and deduplicated. The choices
            shape a supernet's sampling; ``set_active`` accepts any rank in 1..R.
        w_bits_choices: weight bits the supernet samples, a subset of {2, 3, 4, 8, 16}. A
            factorized layer needs 16 among them (quantized low-rank is not supported).
        a_bits_choices: activation bits, a subset of {8, 16}. 8 is per-token int8 and needs
            w_bits <= 8 (there is no W16A8 kernel).
        group_size: quantization group along the input dimension (None or -1: per-channel).
            Where it does not divide the active input width the layer uses per-channel.
        lora_rank: > 0 adds adapters ``lora_a`` (r, in) and ``lora_b`` (out, r) (``lora_b``
            zero-initialised, so the layer starts as the base) with scaling lora_alpha / r,
            and freezes the base (weight / u / v and bias).
        lora_alpha: the LoRA alpha (default: lora_rank, i.e. scaling 1).

    The active configuration starts at the largest everything: full widths, rank R (factorized)
    or None (dense), w_bits = max(w_bits_choices), a_bits = max(a_bits_choices).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        rank_choices: Sequence[int] | None = None,
        w_bits_choices: Sequence[int] = (16,),
        a_bits_choices: Sequence[int] = (16,),
        group_size: int | None = 128,
        lora_rank: int = 0,
        lora_alpha: float | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        for name, val in (("in_features", in_features), ("out_features", out_features)):
            if not _is_int(val) or val < 1:
                raise ValueError(f"ElasticLinear: {name} must be an int >= 1, got {val!r}")
        self.in_features, self.out_features = in_features, out_features
        full = min(in_features, out_features)
        if rank_choices is None:
            self.rank_choices = None
            self.max_rank = None
        else:
            ranks = _check_choices(
                "rank_choices", rank_choices, range(1, full + 1), f"1..{full} (min(in, out))"
            )
            self.rank_choices = ranks
            self.max_rank = ranks[-1]
        self.w_bits_choices = _check_choices("w_bits_choices", w_bits_choices, W_BITS, str(W_BITS))
        self.a_bits_choices = _check_choices("a_bits_choices", a_bits_choices, A_BITS, str(A_BITS))
        if group_size is None or group_size == -1:
            self.group_size = None
        elif _is_int(group_size) and group_size >= 1:
            self.group_size = group_size
        else:
            raise ValueError(
                f"ElasticLinear: group_size must be a positive int, -1 or None, got {group_size!r}"
            )
        if not _is_int(lora_rank) or lora_rank < 0:
            raise ValueError(f"ElasticLinear: lora_rank must be an int >= 0, got {lora_rank!r}")

        kw = {"device": device, "dtype": dtype}
        if self.max_rank is None:
            self.weight = nn.Parameter(torch.empty(out_features, in_features, **kw))
        else:
            self.u = nn.Parameter(torch.empty(out_features, self.max_rank, **kw))
            self.v = nn.Parameter(torch.empty(self.max_rank, in_features, **kw))
        self.bias = nn.Parameter(torch.empty(out_features, **kw)) if bias else None

        self.lora_rank = lora_rank
        self.lora_alpha = float(lora_rank if lora_alpha is None else lora_alpha)
        self.lora_scaling = self.lora_alpha / lora_rank if lora_rank else 0.0
        if lora_rank:
            self.lora_a = nn.Parameter(torch.empty(lora_rank, in_features, **kw))
            self.lora_b = nn.Parameter(torch.empty(out_features, lora_rank, **kw))
        else:
            self.lora_a = self.lora_b = None
        self.reset_parameters()
        if lora_rank:
            for p in self._base_params():
                p.requires_grad_(False)

        self.active_out = out_features
        self.active_in = in_features
        self.active_rank = self.max_rank
        self.w_bits = self.w_bits_choices[-1]
        self.a_bits = self.a_bits_choices[-1]
        self._check_config(self.active_rank, self.w_bits, self.a_bits, "the default configuration")

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name != "weight":
                raise
        # A model reading ``layer.weight`` instead of calling the layer: convert leaves the
        # layers it can see being read (supernet_kernels._direct_reads); say what happened.
        raise AttributeError(
            f"ElasticLinear (factorized, rank choices {self.rank_choices}) has no dense .weight "
            "(it stores factors u, v): the model reads this layer's weight directly instead of "
            "calling it. Give the layer a dense space in convert (space={'linear': {name: "
            "{'rank': [None]}}}) or call the layer instead of reading its weight."
        )

    # ----------------------------------------------------------------- construction
    def _base_params(self) -> list[nn.Parameter]:
        base = [self.weight] if self.max_rank is None else [self.u, self.v]
        return base + ([self.bias] if self.bias is not None else [])

    def reset_parameters(self) -> None:
        """nn.Linear's initialization (dense), or random factors with nn.Linear's scale
        (factorized); LoRA as PEFT (A Kaiming-uniform, B zero)."""
        with torch.no_grad():
            if self.max_rank is None:
                nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
                if self.bias is not None:
                    bound = 1 / math.sqrt(self.in_features)
                    nn.init.uniform_(self.bias, -bound, bound)
            else:
                _init_factors(self.u, self.v, self.bias)
            if self.lora_rank:
                nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
                nn.init.zeros_(self.lora_b)

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        *,
        rank_choices: Sequence[int] | None = None,
        w_bits_choices: Sequence[int] = (16,),
        a_bits_choices: Sequence[int] = (16,),
        group_size: int | None = 128,
        lora_rank: int = 0,
        lora_alpha: float | None = None,
    ) -> ElasticLinear:
        """An elastic layer inheriting ``linear``'s weights (copied).

        Factorized: u, v = svd_factors(weight, R), components ordered by singular value, so rank
        min(in, out) reproduces ``linear`` (to fp32 rounding) and every rank r is the best
        rank-r approximation of its weight.
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(
                f"ElasticLinear.from_linear: expected an nn.Linear, got {type(linear).__name__}"
            )
        w = linear.weight
        layer = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            rank_choices=rank_choices,
            w_bits_choices=w_bits_choices,
            a_bits_choices=a_bits_choices,
            group_size=group_size,
            lora_rank=lora_rank,
            lora_alpha=lora_alpha,
            device=w.device,
            dtype=w.dtype,
        )
        inherit_linear(layer, linear, layer.max_rank)
        return layer

    # ----------------------------------------------------------------- configuration
    @property
    def is_factorized(self) -> bool:
        return self.max_rank is not None

    def _check_config(self, rank, w_bits, a_bits, where: str = "set_active") -> None:
        """Reject combinations no kernel runs; ``where`` names the caller in the message."""
        if rank is not None and w_bits < 16:
            if where == "set_active":
                raise ValueError(
                    "ElasticLinear.set_active: quantized low-rank is not supported: a factorized "
                    f"layer (rank {rank}) runs with w_bits 16 only, got w_bits {w_bits}"
                )
            raise ValueError(
                f"ElasticLinear: {where} is invalid: quantized low-rank is not supported (a "
                f"factorized layer needs 16 in w_bits_choices, got {self.w_bits_choices})"
            )
        if not bits_compatible(w_bits, a_bits):
            msg = f"a_bits 8 needs w_bits <= 8 (there is no W16A8 kernel), got w_bits {w_bits}"
            if where == "set_active":
                raise ValueError(f"ElasticLinear.set_active: {msg}")
            raise ValueError(
                f"ElasticLinear: {where} is invalid: {msg} (w_bits_choices "
                f"{self.w_bits_choices}, a_bits_choices {self.a_bits_choices})"
            )

    def set_active(
        self,
        out: int | None = None,
        rank: int | None = None,
        w_bits: int | None = None,
        a_bits: int | None = None,
        in_features: int | None = None,
        *,
        out_features: int | None = None,
    ) -> None:
        """Choose the active sub-layer; arguments left None keep their current value.

        out in 1..out_features, in_features in 1..in_features, rank in 1..max_rank (any int,
        not only ``rank_choices``; a dense layer takes no rank), w_bits in ``w_bits_choices``,
        a_bits in ``a_bits_choices``. The whole call is validated before anything changes.
        ``out_features`` is another name for ``out`` (the name every elastic layer takes), so
        ``set_active(**choice)`` takes what :meth:`active_choice` and :meth:`choices` give.
        """
        where = "ElasticLinear.set_active"
        if out_features is not None:
            if out is not None and out != out_features:
                raise ValueError(
                    f"{where}: out ({out}) and out_features ({out_features}) name the same "
                    "width; give one"
                )
            out = out_features
        for name, val, hi in (
            ("out", out, self.out_features),
            ("in_features", in_features, self.in_features),
            ("rank", rank, self.max_rank),
        ):
            if val is None:
                continue
            if not _is_int(val):
                raise TypeError(f"{where}: {name} must be an int, got {val!r}")
            if hi is None:
                raise ValueError(
                    f"{where}: rank must be None for a dense layer (built without "
                    f"rank_choices), got {val}"
                )
            if not 1 <= val <= hi:
                raise ValueError(f"{where}: {name} must be in 1..{hi}, got {val}")
        for name, val, allowed in (
            ("w_bits", w_bits, self.w_bits_choices),
            ("a_bits", a_bits, self.a_bits_choices),
        ):
            if val is None:
                continue
            if not _is_int(val):
                raise TypeError(f"{where}: {name} must be an int from {allowed}, got {val!r}")
            if val not in allowed:
                raise ValueError(f"{where}: {name} must be one of {allowed}, got {val}")
        new_rank = self.active_rank if rank is None else rank
        new_w = self.w_bits if w_bits is None else w_bits
        new_a = self.a_bits if a_bits is None else a_bits
        self._check_config(new_rank, new_w, new_a)
        if out is not None:
            self.active_out = out
        if in_features is not None:
            self.active_in = in_features
        self.active_rank = new_rank
        self.w_bits, self.a_bits = new_w, new_a

    def active_choice(self) -> dict:
        """The active sub-layer as ``set_active`` keywords (these keys name a choice in stored
        latency tables: keep them)."""
        return {
            "a_bits": self.a_bits,
            "in_features": self.active_in,
            "out": self.active_out,
            "rank": self.active_rank,
            "w_bits": self.w_bits,
        }

    def choices(self) -> list[dict]:
        """Every valid (rank, w_bits, a_bits) of ``rank_choices`` (None for a dense layer),
        ``w_bits_choices`` and ``a_bits_choices``, as ``set_active`` keywords (widths stay)."""
        out = []
        for r in self.rank_choices or [None]:
            for w in self.w_bits_choices:
                for a in self.a_bits_choices:
                    try:
                        self._check_config(r, w, a)
                    except ValueError:
                        continue
                    out.append({"rank": r, "w_bits": w, "a_bits": a})
        return out

    @torch.no_grad()
    def add_lora(self, rank: int = 8, alpha: float | None = None) -> None:
        """Add LoRA adapters (``lora_a`` Kaiming-uniform, ``lora_b`` zero, so the layer is
        unchanged) and freeze the base weights, as ``ElasticLinear(..., lora_rank=rank)``
        would. ValueError if the layer already has adapters."""
        if self.lora_rank:
            raise ValueError(
                "ElasticLinear.add_lora: the layer already has LoRA adapters "
                f"(rank {self.lora_rank})"
            )
        if not _is_int(rank) or rank < 1:
            raise ValueError(f"ElasticLinear.add_lora: rank must be an int >= 1, got {rank!r}")
        base = self.weight if self.max_rank is None else self.u
        kw = {"device": base.device, "dtype": base.dtype}
        self.lora_rank = rank
        self.lora_alpha = float(rank if alpha is None else alpha)
        self.lora_scaling = self.lora_alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, self.in_features, **kw))
        self.lora_b = nn.Parameter(torch.zeros(self.out_features, rank, **kw))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        for p in self._base_params():
            p.requires_grad_(False)

    def quant_group_size(self, in_features: int | None = None) -> int:
        """The quantization group used at input width ``in_features`` (default: the active
        one): ``group_size`` if it divides it, else the whole width (per-channel)."""
        k = self.active_in if in_features is None else in_features
        g = self.group_size
        return g if g is not None and k % g == 0 else k

    def cost_bits(self) -> tuple[int, int]:
        """(w_bits, a_bits) of the active configuration."""
        return self.w_bits, self.a_bits

    def active_weight_params(self) -> int:
        """Weight parameters of the active sub-layer: out*in (dense) or rank*(in+out)
        (factorized), plus out for the bias. LoRA adapters are not counted (they merge into
        the weight on ``extract``)."""
        n, k = self.active_out, self.active_in
        w = n * k if not self._factors_cheaper() else self.active_rank * (n + k)
        return w + (n if self.bias is not None else 0)

    def cost_macs(self, input_shape) -> int:
        """MACs of the deployable layer (what ``extract`` returns) on an input of this shape:
        tokens * min(in * out, rank * (in + out)); LoRA merges into the weight."""
        tokens = 1
        for d in tuple(input_shape)[:-1]:
            tokens *= int(d)
        n, k = self.active_out, self.active_in
        per_token = self.active_rank * (n + k) if self._factors_cheaper() else n * k
        return tokens * per_token

    def _factors_cheaper(self) -> bool:
        """True when the active rank is low enough for the factors to save work: a rank-r layer
        costs r * (in + out) per token against in * out dense (FLORA counts min of the two). At
        higher ranks the product u[:, :r] @ v[:r] is formed once and used as a dense weight,
        in the forward and in ``extract``, so a high rank never costs more than the original."""
        r, n, k = self.active_rank, self.active_out, self.active_in
        return r is not None and r * (n + k) < n * k

    # ----------------------------------------------------------------- forward
    def _active_bias(self) -> torch.Tensor | None:
        return None if self.bias is None else self.bias[: self.active_out]

    def _lora_delta(self) -> torch.Tensor:
        """scaling * lora_b[:out] @ lora_a[:, :in], the adapters merged into one weight (a
        weight-merge matmul, not an activation GEMM)."""
        n, k = self.active_out, self.active_in
        return (self.lora_b[:n] @ self.lora_a[:, :k]) * self.lora_scaling

    def _dense_weight(self) -> torch.Tensor:
        """The active float weight (out, in), LoRA merged in; views / differentiable."""
        n, k = self.active_out, self.active_in
        if self.max_rank is None:
            w = self.weight[:n, :k]
        else:
            r = self.active_rank
            w = self.u[:n, :r] @ self.v[:r, :k]
        if self.lora_rank:
            w = w + self._lora_delta().to(w.dtype)
        return w

    def _quant_params(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Min-max scales and zero points of w (detached), ``quantize_weight``'s arithmetic."""
        n, k = w.shape
        g = self.quant_group_size(k)
        with torch.no_grad():
            wg = w.detach().to(torch.float32).reshape(n, k // g, g)
            _, scales, zeros = _rtn(wg, self.w_bits, symmetric=False)
        return scales, zeros, g

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, n = self.active_in, self.active_out
        if x.shape[-1] != k:
            raise ValueError(
                f"ElasticLinear: input has {x.shape[-1]} features, the active in_features is {k}"
            )
        bias = self._active_bias()
        if self.active_rank is not None:
            if self._factors_cheaper():
                v = self.v if k == self.in_features else self.v[:, :k]
                y = torch.ops.supernet_kernels.lowrank_linear(
                    x, self.u, v, self.active_rank, n, bias
                )
            else:  # see _factors_cheaper: the rank-r product as one dense weight
                r = self.active_rank
                y = F.linear(x, self.u[:n, :r] @ self.v[:r, :k], bias)
            if self.lora_rank:
                y = y + self._lora_forward(x)
            return y
        quantized = self.w_bits < 16 or self.a_bits == 8
        if not quantized:
            # Dense 16-bit: F.linear (no dense float GEMM among our ops).
            w = self.weight if (n, k) == tuple(self.weight.shape) else self.weight[:n, :k]
            y = F.linear(x, w, bias)
            if self.lora_rank:
                y = y + self._lora_forward(x)
            return y
        # Fake quantization (training): LoRA is merged first, so the quantized weight is the
        # one extract() packs; gradients reach the latent weight / adapters straight through.
        w = self._dense_weight()
        if self.w_bits < 16:
            scales, zeros, g = self._quant_params(w)
            w = fake_quantize(w, scales, zeros, self.w_bits, g)
        if self.a_bits == 8:
            x = fake_quantize_activations_int8(x)
        return F.linear(x, w.to(x.dtype), bias)

    def _lora_forward(self, x: torch.Tensor) -> torch.Tensor:
        k, n = self.active_in, self.active_out
        a = self.lora_a if k == self.in_features else self.lora_a[:, :k]
        y = torch.ops.supernet_kernels.lowrank_linear(x, self.lora_b, a, self.lora_rank, n, None)
        return y * self.lora_scaling

    # ----------------------------------------------------------------- neuron reordering
    def _check_perm(self, perm: torch.Tensor, size: int, what: str) -> torch.Tensor:
        return check_perm(perm, size, f"ElasticLinear.{what}")

    @torch.no_grad()
    def reorder_outputs(self, perm: torch.Tensor) -> None:
        """New output neuron i is old neuron perm[i] (rows of weight / u, bias, lora_b)."""
        perm = self._check_perm(perm, self.out_features, "reorder_outputs")
        names = ["weight"] if self.max_rank is None else ["u"]
        names += [n for n in ("bias", "lora_b") if getattr(self, n) is not None]
        for name in names:
            p = getattr(self, name)
            p.copy_(p[perm.to(p.device)])

    @torch.no_grad()
    def reorder_inputs(self, perm: torch.Tensor) -> None:
        """New input feature j is old feature perm[j] (columns of weight / v, lora_a)."""
        perm = self._check_perm(perm, self.in_features, "reorder_inputs")
        names = ["weight"] if self.max_rank is None else ["v"]
        if self.lora_a is not None:
            names.append("lora_a")
        for name in names:
            p = getattr(self, name)
            p.copy_(p[:, perm.to(p.device)])

    # ----------------------------------------------------------------- extraction
    @torch.no_grad()
    def extract(self) -> nn.Module:
        """The standalone layer of the active configuration, weights copied:

        * ``QuantLinear`` when w_bits < 16 or a_bits == 8 (the merged active weight quantized
          with the same groups and codes as ``forward``; act_bits = a_bits);
        * ``LowRankLinear`` (rank = active rank) for a factorized layer without LoRA whose rank
          saves work (``_factors_cheaper``);
        * ``nn.Linear`` otherwise (a high rank as the dense product u[:, :r] @ v[:r]), with
          LoRA merged into the weight. A factorized layer with
          LoRA is extracted as a dense ``nn.Linear`` (u[:, :r] @ v[:r] + scaling * B @ A): the
          adapter generally raises the rank of the product.
        """
        n, k = self.active_out, self.active_in
        ref = self.weight if self.max_rank is None else self.u
        kw = {"device": ref.device, "dtype": ref.dtype}
        bias = self._active_bias()
        has_bias = bias is not None
        if self.active_rank is not None and not self.lora_rank and self._factors_cheaper():
            r = self.active_rank
            layer = LowRankLinear(k, n, r, bias=has_bias, **kw)
            layer.u.copy_(self.u[:n, :r])
            layer.v.copy_(self.v[:r, :k])
            if has_bias:
                layer.bias.copy_(bias)
            return layer
        lin = nn.Linear(k, n, bias=has_bias, **kw)
        lin.weight.copy_(self._dense_weight())
        if has_bias:
            lin.bias.copy_(bias)
        if self.w_bits < 16 or self.a_bits == 8:
            return QuantLinear.from_linear(
                lin,
                bits=self.w_bits,
                group_size=self.quant_group_size(k),
                act_bits=self.a_bits,
            )
        return lin

    def extra_repr(self) -> str:
        s = f"in_features={self.in_features}, out_features={self.out_features}"
        if self.max_rank is not None:
            s += f", rank_choices={self.rank_choices}"
        s += (
            f", w_bits_choices={self.w_bits_choices}, a_bits_choices={self.a_bits_choices}, "
            f"group_size={self.group_size}, bias={self.bias is not None}"
        )
        if self.lora_rank:
            s += f", lora_rank={self.lora_rank}, lora_alpha={self.lora_alpha:g}"
        s += (
            f", active=(out={self.active_out}, in={self.active_in}, rank={self.active_rank}, "
            f"w_bits={self.w_bits}, a_bits={self.a_bits})"
        )
        return s
