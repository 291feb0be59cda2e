"""Weight quantization: round-to-nearest min-max per group, optional clipping search.

``quantize_weight(w, bits, group_size)`` returns a :class:`QuantizedWeight` in the packing
format of :mod:`supernet_kernels.quant.packing`. Activations are quantized per token at run
time (``quantize_activations_int8``), symmetric int8 with scale absmax / 127.
"""

from __future__ import annotations

import dataclasses

import torch

from .packing import FORMAT, check_bits, pack, packed_width, unpack

_SCALE_DTYPE = torch.float32


def _as_group_size(group_size, k: int) -> int:
    """None or -1 mean per-channel (one group spanning K)."""
    if group_size is None or group_size == -1:
        return k
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, -1 or None, got {group_size!r}")
    if k % group_size:
        raise ValueError(f"group_size {group_size} does not divide in_features K={k}")
    return group_size


@dataclasses.dataclass
class QuantizedWeight:
    """A weight (N, K) as packed integer codes with per-group scales and zero points.

    ``w[n, k] = (q[n, k] - zeros[n, k // group_size]) * scales[n, k // group_size]``.
    """

    packed: torch.Tensor  # int32 (N, ceil(K / (32 // bits)))
    scales: torch.Tensor  # float32 (N, K // group_size)
    zeros: torch.Tensor  # float32 (N, K // group_size)
    bits: int
    group_size: int
    shape: tuple[int, int]  # (N, K)
    symmetric: bool = False

    def __post_init__(self) -> None:
        self.shape = (int(self.shape[0]), int(self.shape[1]))
        validate_qweight(
            self.packed, self.scales, self.zeros, self.bits, self.group_size, self.shape[1]
        )
        if self.packed.shape[0] != self.shape[0]:
            raise ValueError(f"packed has {self.packed.shape[0]} rows, expected N={self.shape[0]}")

    @property
    def out_features(self) -> int:
        return self.shape[0]

    @property
    def in_features(self) -> int:
        return self.shape[1]

    @property
    def device(self) -> torch.device:
        return self.packed.device

    def codes(self) -> torch.Tensor:
        """The unpacked codes (N, K) as uint8."""
        return unpack(self.packed, self.bits, self.in_features)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        n, k = self.shape
        g = self.group_size
        q = self.codes().to(torch.float32).view(n, k // g, g)
        w = (q - self.zeros[..., None]) * self.scales[..., None]
        return w.reshape(n, k).to(dtype)

    def to(self, device) -> QuantizedWeight:
        return dataclasses.replace(
            self,
            packed=self.packed.to(device),
            scales=self.scales.to(device),
            zeros=self.zeros.to(device),
        )

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.packed, self.scales, self.zeros))

    def metadata(self) -> dict:
        return {
            "format": FORMAT,
            "bits": self.bits,
            "group_size": self.group_size,
            "shape": list(self.shape),
            "symmetric": self.symmetric,
        }


def validate_qweight(packed, scales, zeros, bits, group_size, in_features, where: str = "") -> int:
    """Check a packed weight's tensors against each other; return N. Errors name the argument."""
    p = f"{where}: " if where else ""
    check_bits(bits, f"{p}bits")
    for name, t in (("packed", packed), ("scales", scales), ("zeros", zeros)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{p}{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(f"{p}{name} must be 2-D, got shape {tuple(t.shape)}")
    if packed.dtype != torch.int32:
        raise TypeError(f"{p}packed must be int32 (sk-pack-v1 words), got {packed.dtype}")
    for name, t in (("scales", scales), ("zeros", zeros)):
        if t.dtype != _SCALE_DTYPE:
            raise TypeError(f"{p}{name} must be float32, got {t.dtype}")
        if t.device != packed.device:
            raise ValueError(
                f"{p}{name} is on {t.device}, expected packed's device {packed.device}"
            )
    if not isinstance(in_features, int) or in_features < 1:
        raise ValueError(f"{p}in_features must be a positive int, got {in_features!r}")
    if not isinstance(group_size, int) or group_size < 1 or in_features % group_size:
        raise ValueError(
            f"{p}group_size {group_size!r} must be a positive divisor of in_features={in_features}"
        )
    n = packed.shape[0]
    width = packed_width(in_features, bits)
    if packed.shape[1] != width:
        raise ValueError(
            f"{p}packed has {packed.shape[1]} words per row, expected {width} "
            f"(K={in_features} at {bits} bits, {32 // bits} codes per word)"
        )
    groups = in_features // group_size
    for name, t in (("scales", scales), ("zeros", zeros)):
        if tuple(t.shape) != (n, groups):
            raise ValueError(
                f"{p}{name} has shape {tuple(t.shape)}, "
                f"expected (N, K // group_size) = {(n, groups)}"
            )
    return n


def _rtn(wg: torch.Tensor, bits: int, symmetric: bool, shrink: float | torch.Tensor = 1.0):
    """Round-to-nearest of grouped weights wg (N, groups, G): codes, scales, zeros."""
    qmax = 2**bits - 1
    if symmetric:
        half = 2 ** (bits - 1)
        absmax = wg.abs().amax(-1) * shrink
        scales = absmax / (half - 1) if bits > 1 else absmax
        scales = torch.where(scales > 0, scales, torch.ones_like(scales))
        zeros = torch.full_like(scales, float(half))
    else:
        # The range always holds 0, so 0 is exact and the zero point is an integer in [0, qmax].
        lo = wg.amin(-1).clamp(max=0) * shrink
        hi = wg.amax(-1).clamp(min=0) * shrink
        scales = (hi - lo) / qmax
        scales = torch.where(scales > 0, scales, torch.ones_like(scales))
        zeros = torch.round(-lo / scales).clamp(0, qmax)
    codes = torch.clamp(torch.round(wg / scales[..., None]) + zeros[..., None], 0, qmax)
    return codes, scales, zeros


def quantize_weight(
    w: torch.Tensor,
    bits: int,
    group_size: int | None = 128,
    symmetric: bool = False,
    clip_search: bool = False,
) -> QuantizedWeight:
    """Quantize a weight (N, K) to ``bits`` with one scale and zero point per group of K.

    Args:
        w: (out_features, in_features) floating-point weight.
        bits: 2, 3, 4 or 8.
        group_size: 32, 64, 128 (any divisor of K works), or None / -1 for per-channel.
        symmetric: zero point fixed at 2**(bits-1), scale absmax / (2**(bits-1) - 1).
        clip_search: also try shrinking each group's range by up to 50% and keep the range with
            the smallest squared error (never worse than plain min-max, which is one candidate).
    """
    if not isinstance(w, torch.Tensor) or not w.dtype.is_floating_point:
        raise TypeError(
            "quantize_weight: w must be a floating-point tensor, "
            f"got {getattr(w, 'dtype', type(w))}"
        )
    if w.dim() != 2:
        raise ValueError(
            f"quantize_weight: w must be 2-D (out_features, in_features), got {tuple(w.shape)}"
        )
    check_bits(bits)
    if not torch.isfinite(w).all():
        raise ValueError("quantize_weight: w has NaN or inf entries")
    n, k = w.shape
    g = _as_group_size(group_size, k)
    wg = w.detach().to(torch.float32).reshape(n, k // g, g)
    codes, scales, zeros = _rtn(wg, bits, symmetric)
    if clip_search:
        best_err = ((codes - zeros[..., None]) * scales[..., None] - wg).pow(2).sum(-1)
        for shrink in torch.linspace(0.95, 0.5, 10).tolist():
            c2, s2, z2 = _rtn(wg, bits, symmetric, shrink)
            err = ((c2 - z2[..., None]) * s2[..., None] - wg).pow(2).sum(-1)
            better = err < best_err
            codes = torch.where(better[..., None], c2, codes)
            scales = torch.where(better, s2, scales)
            zeros = torch.where(better, z2, zeros)
            best_err = torch.minimum(err, best_err)
    packed = pack(codes.reshape(n, k).to(torch.int64), bits)
    return QuantizedWeight(
        packed=packed,
        scales=scales.to(_SCALE_DTYPE).contiguous(),
        zeros=zeros.to(_SCALE_DTYPE).contiguous(),
        bits=bits,
        group_size=g,
        shape=(n, k),
        symmetric=symmetric,
    )


def quantize_activations_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token symmetric int8: codes (..., K) int8 and scales (..., 1) float32.

    scale = max|x| / 127 per row (1 for an all-zero row); codes = round-half-even(x / scale)
    clamped to [-127, 127], so ``codes * scale`` approximates x. A row holding NaN or inf gets
    scale NaN (and codes 0), so whatever multiplies it comes out NaN in that row rather than
    silently finite.
    """
    xf = x.to(torch.float32)
    scale = _row_scale(xf, 127.0)
    codes = torch.clamp(torch.round(xf / scale), -127, 127)
    codes = torch.nan_to_num(codes, nan=0.0).to(torch.int8)
    return codes, scale


def _row_scale(xf: torch.Tensor, qmax: float) -> torch.Tensor:
    """max|x| / qmax per row: 1 for an all-zero row, NaN for a row that is not all finite."""
    amax = xf.abs().amax(-1, keepdim=True)
    scale = torch.where(amax == 0, torch.ones_like(amax), amax / qmax)
    return torch.where(torch.isfinite(amax), scale, torch.full_like(amax, float("nan")))


FP8_MAX = 448.0  # largest finite float8 e4m3fn


def _fp8_scale(t: torch.Tensor) -> torch.Tensor:
    return _row_scale(t, FP8_MAX)


def quantize_weight_fp8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel float8 e4m3: weight (N, K) float8_e4m3fn and scale (N,) float32 with
    ``w ~= weight.float() * scale[:, None]`` (scale = max|w[n]| / 448, round to nearest even)."""
    if not isinstance(w, torch.Tensor) or not w.dtype.is_floating_point or w.dim() != 2:
        raise TypeError(
            "quantize_weight_fp8: w must be a 2-D floating-point tensor, "
            f"got {getattr(w, 'dtype', type(w))}"
        )
    wf = w.detach().to(torch.float32)
    scale = _fp8_scale(wf)
    return (wf / scale).to(torch.float8_e4m3fn), scale[:, 0].contiguous()


def quantize_activations_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token float8 e4m3: codes (..., K) float8_e4m3fn and scales (..., 1) float32 (NaN for
    a row that is not all finite, as in ``quantize_activations_int8``)."""
    xf = x.to(torch.float32)
    scale = _fp8_scale(xf)
    return (xf / scale).to(torch.float8_e4m3fn), scale
