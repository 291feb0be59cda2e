"""Fake quantization for quantization-aware training, beside the real packed kernels.

``fake_quantize(w, scales, zeros, bits, group_size)`` rounds a float weight onto the grid of
the ``sk-pack-v1`` format and returns it as floats, with a straight-through estimator (STE) for
the rounding. It uses the same arithmetic as :func:`~supernet_kernels.quant.quantize_weight`
and :meth:`QuantizedWeight.dequantize` (float32, ``torch.round`` half-to-even, clamp to
``[0, 2**bits - 1]``), so for the same scales and zeros the fake weight equals the real packed
weight's dequantization bit for bit.

``LSQWeightQuantizer`` learns the step size (scale) of every group, LSQ (Esser et al., "Learned
Step Size Quantization", ICLR 2020), with the gradient scale 1 / sqrt(G * Qp) (G weights per
group, Qp the largest positive code step: 2**bits - 1 asymmetric, 2**(bits-1) - 1 symmetric).
The scales start from the min-max scales of ``quantize_weight``. Zero points are *not* learned:
asymmetric zero points stay fixed at their ``quantize_weight`` values (integers, so 0 stays
exactly representable), symmetric ones are 2**(bits-1). ``export(w)`` gives the real
:class:`QuantizedWeight`.

The layer trained this way, ``FakeQuantLinear``, is in :mod:`supernet_kernels.nn.fake_quant`
(still importable from here, deprecated).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .packing import check_bits, pack
from .quantize import QuantizedWeight, quantize_weight

_SCALE_MIN = 1e-8  # keeps a learned step size positive; min-max scales are far above it


class _RoundSTE(torch.autograd.Function):
    """torch.round (half to even) forward, identity backward."""

    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


class _RoundClamp(torch.autograd.Function):
    """``clamp(round(v) + z, 0, qmax)`` forward (quantize_weight's codes); backward straight
    through where the unrounded code ``v + z`` lies in ``[0, qmax]`` and zero outside, the LSQ
    rule (torch.clamp's own gradient would also zero codes that round onto the bounds)."""

    @staticmethod
    def forward(ctx, v, z, qmax: int):
        u = v + z
        ctx.save_for_backward((u >= 0) & (u <= qmax))
        return torch.clamp(torch.round(v) + z, 0, qmax)

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None


class _GradScale(torch.autograd.Function):
    """Identity forward (the same values), gradient times ``scale`` backward."""

    @staticmethod
    def forward(ctx, x, scale: float):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def round_ste(x: torch.Tensor) -> torch.Tensor:
    return _RoundSTE.apply(x)


def grad_scale(x: torch.Tensor, scale: float) -> torch.Tensor:
    return _GradScale.apply(x, scale)


def _check_fake_args(w, scales, zeros, bits, group_size) -> tuple[int, int, int]:
    check_bits(bits)
    if not isinstance(w, torch.Tensor) or not w.dtype.is_floating_point or w.dim() != 2:
        raise ValueError(
            "fake_quantize: w must be a 2-D floating-point tensor (out_features, in_features), "
            f"got {getattr(w, 'dtype', type(w))} {tuple(getattr(w, 'shape', ()))}"
        )
    n, k = w.shape
    if not isinstance(group_size, int) or group_size < 1 or k % group_size:
        raise ValueError(
            f"fake_quantize: group_size {group_size!r} must be a positive divisor of K={k}"
        )
    groups = k // group_size
    for name, t in (("scales", scales), ("zeros", zeros)):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != (n, groups):
            raise ValueError(
                f"fake_quantize: {name} must have shape (N, K // group_size) = {(n, groups)}, "
                f"got {tuple(getattr(t, 'shape', ()))}"
            )
    return n, k, groups


def _codes(w, scales, zeros, bits, group_size):
    """Codes (N, groups, G) as float32: clamp(round(w / s) + z, 0, qmax), quantize_weight's
    arithmetic, differentiable by the STE / LSQ rule."""
    n, k = w.shape
    wg = w.to(torch.float32).reshape(n, k // group_size, group_size)
    s = scales.to(torch.float32)[..., None]
    z = zeros.to(torch.float32)[..., None]
    return _RoundClamp.apply(wg / s, z, 2**bits - 1), s, z


def fake_quantize(
    w: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    bits: int,
    group_size: int,
) -> torch.Tensor:
    """``(clamp(round(w / s) + z, 0, 2**bits - 1) - z) * s`` per group, in w's dtype.

    Differentiable: straight through the rounding (gradient 1 to w where the unrounded code
    ``w / s + z`` lies in ``[0, 2**bits - 1]``, 0 outside), and to ``scales`` (the LSQ
    step-size gradient) if they require grad. ``zeros`` are treated as constants. Equals
    ``QuantizedWeight.dequantize(w.dtype)`` exactly for the same scales and zeros.
    """
    n, k, _ = _check_fake_args(w, scales, zeros, bits, group_size)
    q, s, z = _codes(w, scales, zeros.detach(), bits, group_size)
    return ((q - z) * s).reshape(n, k).to(w.dtype)


def fake_quantize_activations_int8(x: torch.Tensor) -> torch.Tensor:
    """Per-token symmetric int8 fake quantization (scale max|x| / 127, the definition of
    ``quantize_activations_int8``), straight through: the gradient to x is the identity, as in
    the ``quant_linear`` op's backward."""
    xf = x.to(torch.float32)
    scale = xf.detach().abs().amax(-1, keepdim=True) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = round_ste(xf / scale)
    q = q + (q.clamp(-127, 127) - q).detach()  # integers: exact; the clamp is straight through
    return (q * scale).to(x.dtype)


class LSQWeightQuantizer(nn.Module):
    """Learned step size per group for a weight (N, K); zero points fixed.

    Args:
        weight: the float weight whose min-max quantization sets the initial scales and the
            (fixed) zero points.
        bits: 2, 3, 4 or 8.
        group_size: a divisor of K, or None / -1 for per-channel.
        symmetric: zero point 2**(bits-1) and absmax scales, as ``quantize_weight``.
        clip_search: start from ``quantize_weight``'s clipped scales instead of plain min-max.

    ``forward(w)`` returns the fake-quantized weight; ``scale`` (float32, (N, K // G)) is the
    learnable parameter; ``export(w)`` packs w with the current scales.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bits: int = 4,
        group_size: int | None = 128,
        symmetric: bool = False,
        clip_search: bool = False,
    ):
        super().__init__()
        qw = quantize_weight(weight.detach(), bits, group_size, symmetric, clip_search)
        self.bits, self.group_size, self.symmetric = bits, qw.group_size, symmetric
        self.shape = qw.shape
        self.scale = nn.Parameter(qw.scales.clone())
        self.register_buffer("zeros", qw.zeros.clone())
        qp = (2 ** (bits - 1) - 1) if symmetric else (2**bits - 1)
        self.qp = max(qp, 1)
        self.grad_scale = 1.0 / math.sqrt(self.group_size * self.qp)

    def scales(self) -> torch.Tensor:
        """The step sizes in use (float32, kept positive)."""
        return self.scale.to(torch.float32).clamp_min(_SCALE_MIN)

    def _check_w(self, w: torch.Tensor) -> None:
        if tuple(w.shape) != self.shape:
            raise ValueError(
                f"LSQWeightQuantizer: weight has shape {tuple(w.shape)}, the quantizer was made "
                f"for {self.shape}"
            )

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        self._check_w(w)
        s = grad_scale(self.scale, self.grad_scale).to(torch.float32).clamp_min(_SCALE_MIN)
        return fake_quantize(w, s, self.zeros, self.bits, self.group_size)

    @torch.no_grad()
    def export(self, w: torch.Tensor) -> QuantizedWeight:
        """The real packed weight: codes of w at the current scales (so that
        ``export(w).dequantize()`` equals ``self(w)`` exactly)."""
        self._check_w(w)
        s = self.scales().detach()
        n, k = self.shape
        q, _, _ = _codes(w.detach(), s, self.zeros, self.bits, self.group_size)
        return QuantizedWeight(
            packed=pack(q.reshape(n, k).to(torch.int64), self.bits),
            scales=s.contiguous().clone(),
            zeros=self.zeros.to(torch.float32).contiguous().clone(),
            bits=self.bits,
            group_size=self.group_size,
            shape=(n, k),
            symmetric=self.symmetric,
        )

    def _apply(self, fn, recurse=True):
        """Keep the step sizes and zero points float32 through ``.half()`` / ``.to(dtype)``
        (the packed format stores them in float32)."""
        keep = {"scale": self.scale.data, "zeros": self.zeros}
        out = super()._apply(fn, recurse)
        if self.scale.dtype != torch.float32:
            self.scale.data = keep["scale"].to(device=self.scale.device)
        if self.zeros.dtype != torch.float32:
            self._buffers["zeros"] = keep["zeros"].to(device=self.zeros.device)
        return out

    def extra_repr(self) -> str:
        return (
            f"shape={self.shape}, bits={self.bits}, group_size={self.group_size}, "
            f"symmetric={self.symmetric}, grad_scale={self.grad_scale:.3g}"
        )


def __getattr__(name: str):
    # FakeQuantLinear (a layer) lives in nn/fake_quant.py; this module keeps the numerics. The
    # name stays importable from here, resolved on first use so that quant/ never imports nn/
    # while loading.
    if name == "FakeQuantLinear":
        import warnings

        from ..nn.fake_quant import FakeQuantLinear

        warnings.warn(
            "supernet_kernels.quant.fake.FakeQuantLinear is deprecated: use "
            "supernet_kernels.nn.FakeQuantLinear",
            DeprecationWarning,
            stacklevel=2,
        )
        return FakeQuantLinear
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------- activations
def _is_fake(x: torch.Tensor) -> bool:
    """A tensor without data (FakeTensorMode or the meta device: a cost profile)."""
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(x, FakeTensor) or x.device.type == "meta"


def _mse_step(x: torch.Tensor, qn: int, qp: int) -> torch.Tensor:
    """The step among absmax / qp * {0.3, 0.4, ..., 1.0} with the least squared error on x.
    LSQ's own start, 2 mean|x| / sqrt(Qp), is tuned for 2-4 bits: at 8 bits it clips the
    tails (28 dB SQNR on a Gaussian against 40 dB for this search)."""
    top = x.abs().amax().clamp_min(1e-6) / qp
    best, err = top, None
    for c in torch.linspace(0.3, 1.0, 8).tolist():
        s = top * c
        e = ((x / s).round().clamp(qn, qp) * s - x).square().sum()
        if err is None or e < err:
            best, err = s, e
    return best


class LSQActQuantizer(nn.Module):
    """Per-tensor LSQ fake quantization of an activation, with one learned step size per
    bit-width (a supernet switches ``bits`` per subnet; a step learned at 4 bits is useless at
    8, so each width keeps its own).

    Args:
        bits_choices: the widths it may run (16 or more: identity).
        signed: codes in [-2**(b-1), 2**(b-1) - 1] (inputs of linears, Q, K, V); unsigned
            [0, 2**b - 1] otherwise (softmax probabilities).

    ``bits`` selects the width (the largest choice at first). Step sizes start, on the first
    batch seen at a width, at the least-squares clip of the batch (:func:`_mse_step`), then
    learn with the gradient scale 1 / sqrt(numel * Qp).
    The rounding is straight through; values outside the grid are clipped (no gradient to x,
    a gradient to the step, as in LSQ).
    """

    def __init__(self, bits_choices=(4, 8, 16), signed: bool = True):
        super().__init__()
        choices = sorted({int(b) for b in bits_choices})
        if not choices or any(b < 2 for b in choices):
            raise ValueError(f"LSQActQuantizer: bits_choices must be ints >= 2, got {bits_choices}")
        self.bits_choices = tuple(choices)
        self.signed = bool(signed)
        self.bits = choices[-1]
        low = [b for b in choices if b < 16]
        self.step = nn.ParameterDict({str(b): nn.Parameter(torch.ones(())) for b in low})
        # 1.0 once the step of that width was initialized from data (saved with the state).
        self.register_buffer("initialized", torch.zeros(len(low)))
        self._index = {b: i for i, b in enumerate(low)}

    def set_bits(self, bits: int) -> None:
        if bits not in self.bits_choices:
            raise ValueError(f"LSQActQuantizer: bits {bits} is not one of {self.bits_choices}")
        self.bits = int(bits)

    def _range(self, b: int) -> tuple[int, int]:
        if self.signed:
            return -(2 ** (b - 1)), 2 ** (b - 1) - 1
        return 0, 2**b - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.bits
        if b >= 16:
            return x
        qn, qp = self._range(b)
        step = self.step[str(b)]
        i = self._index[b]
        if not _is_fake(x) and not bool(self.initialized[i]):
            with torch.no_grad():
                step.copy_(_mse_step(x.detach().float(), qn, qp))
                self.initialized[i] = 1.0
        s = grad_scale(step, 1.0 / math.sqrt(max(x.numel(), 1) * qp)).clamp_min(_SCALE_MIN)
        xf = x.to(torch.float32)
        q = (xf / s).clamp(qn, qp)
        q = round_ste(q)
        return (q * s).to(x.dtype)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, choices={self.bits_choices}, signed={self.signed}"
