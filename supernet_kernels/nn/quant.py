"""``QuantLinear``: a drop-in replacement for ``nn.Linear`` holding a packed 2/3/4/8-bit weight.

The weight is stored in the ``sk-pack-v1`` format (:mod:`supernet_kernels.quant.packing`) as
buffers ``packed`` (int32), ``scales`` and ``zeros`` (float32), with a metadata buffer ``qmeta``
(int64: format version, bits, group_size, in_features, out_features, act_bits, symmetric), so
the whole state_dict is tensors only (it saves to safetensors as is). ``load_state_dict``
refuses a state_dict made for another configuration, with corrupt metadata, or with tensors of
the wrong shape or dtype, naming the key.

``layer.half()`` / ``.to(torch.bfloat16)`` change the compute dtype (the bias); the packed
weight keeps its int32 / float32 buffers (a half-precision scale would change the weight).

On the Triton backend the layer holds its codes in the GPU tile layout only
(:func:`~supernet_kernels.quant.packing.to_tiles`, a non-persistent int16 buffer ``tiles``)
instead of ``packed``: the op on a bare packed weight keeps the tile layout cached beside it,
which doubles the codes' memory (4096 -> 11008, W4 g128: 47.9 MB against 25.4 MB, codes 22.5
MB each way, scales and zero points 2.8 MB). The switch happens on the first forward that the
Triton kernel runs (or by :meth:`QuantLinear.use_tile_layout`), after which ``auto`` keeps to
Triton at every M (not converting with each M); ``packed`` then reads as the
sk-pack-v1 words derived from the tiles (a new tensor each time), ``state_dict`` saves them, and
``load_state_dict`` or a forward on another backend returns the layer to ``packed``.
Above 64 rows of x the kernel reads the scales as 16-bit scale pairs
(:func:`~supernet_kernels.quant.packing.fold_scales`), made on first use per activation dtype
and kept beside the layer while its scales live: 4 bytes per row and group (1.4 MB for the
layer above), not counted in ``weight_nbytes``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..quant.packing import SUPPORTED_BITS, check_bits, from_tiles, packed_width, to_tiles
from ..quant.quantize import QuantizedWeight, quantize_weight

QMETA_VERSION = 1
QMETA_FIELDS = (
    "version",
    "bits",
    "group_size",
    "in_features",
    "out_features",
    "act_bits",
    "symmetric",
)
ACT_BITS = (8, 16)
# Buffers whose dtype is part of the format: module-wide dtype casts must not touch them.
_FIXED_DTYPES = {
    "packed": torch.int32,
    "scales": torch.float32,
    "zeros": torch.float32,
    "qmeta": torch.int64,
    "tiles": torch.int16,  # present instead of packed in the tile layout
}
_FLOATS = (torch.float16, torch.bfloat16, torch.float32)


def _check_int(name: str, value, lo: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < lo:
        raise ValueError(f"QuantLinear: {name} must be an int >= {lo}, got {value!r}")
    return value


def _resolve_group_size(group_size, in_features: int) -> int:
    """None or -1 mean per-channel (one group spanning in_features)."""
    if group_size is None or group_size == -1:
        return in_features
    _check_int("group_size", group_size)
    if in_features % group_size:
        raise ValueError(
            f"QuantLinear: group_size {group_size} does not divide in_features={in_features}"
        )
    return group_size


class QuantLinear(nn.Module):
    """y = x @ W.T + bias with W held packed (sk-pack-v1); forward is
    ``torch.ops.supernet_kernels.quant_linear``.

    Args:
        in_features, out_features: as nn.Linear.
        bits: 2, 3, 4 or 8.
        group_size: a divisor of in_features, or None / -1 for per-channel.
        act_bits: 16 for weight-only (A16), 8 for per-token dynamic int8 activations
            (W8A8, W4A8, ...).
        symmetric: how the weight was quantized (recorded; the kernel reads the zero points).
        bias: whether the layer has a bias (a Parameter in ``dtype``, the compute dtype).

    The constructor makes a placeholder weight (all codes 0, scales 1, so W = 0); use
    :meth:`from_linear`, :meth:`from_qweight` or ``load_state_dict`` to fill it.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bits: int = 4,
        group_size: int | None = 128,
        act_bits: int = 16,
        symmetric: bool = False,
        bias: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        _check_int("in_features", in_features)
        _check_int("out_features", out_features)
        check_bits(bits, "QuantLinear: bits")
        if act_bits not in ACT_BITS:
            raise ValueError(f"QuantLinear: act_bits must be 8 or 16, got {act_bits!r}")
        g = _resolve_group_size(group_size, in_features)
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size, self.act_bits = bits, g, act_bits
        self.symmetric = bool(symmetric)
        n, groups = out_features, in_features // g
        self.register_buffer(
            "packed",
            torch.zeros(n, packed_width(in_features, bits), dtype=torch.int32, device=device),
        )
        self.register_buffer("scales", torch.ones(n, groups, dtype=torch.float32, device=device))
        self.register_buffer("zeros", torch.zeros(n, groups, dtype=torch.float32, device=device))
        self.register_buffer(
            "qmeta", torch.tensor(self._meta_values(), dtype=torch.int64, device=device)
        )
        self.bias = nn.Parameter(torch.zeros(n, device=device, dtype=dtype)) if bias else None

    # ----------------------------------------------------------------- weight layout
    @property
    def packed(self) -> torch.Tensor:
        """The sk-pack-v1 words (N, ceil(K / PER_WORD)) int32: the buffer itself, or in the tile
        layout a new tensor derived from the tiles (writing to it does not change the layer)."""
        buf = self._buffers.get("packed")
        if buf is not None:
            return buf
        tiles = self._buffers.get("tiles")
        if tiles is None:
            raise AttributeError("packed")  # during __init__, before the buffer exists
        return from_tiles(tiles, self.bits, self.in_features, self._tile)

    @property
    def tile_layout(self) -> bool:
        """Whether the codes are held in the GPU tile layout (buffer ``tiles``) only."""
        return "tiles" in self._buffers

    def _tile_size(self) -> int | None:
        from ..kernels.triton_quant import packed_width_tiles, tile_for

        if self.act_bits != 16:
            return None
        tile = tile_for(self.bits, self.group_size, self.in_features)
        if (
            tile is None
            or self.out_features * packed_width_tiles(self.in_features, self.bits, tile) >= 2**31
        ):
            return None
        return tile

    def use_tile_layout(self) -> bool:
        """Hold the codes in the Triton kernel's tile layout instead of sk-pack-v1 (same bytes
        up to the padding of K to a whole tile); True if the layer now does (weight-only
        layers of 2, 3, 4 or 8 bits whose groups the layout takes)."""
        if self.tile_layout:
            return True
        tile = self._tile_size()
        if tile is None:
            return False
        tiles = to_tiles(self._buffers["packed"], self.bits, self.in_features, tile)
        self._tile = tile
        self._swap_codes("packed", "tiles", tiles)
        return True

    def use_packed_layout(self) -> None:
        """Hold the codes as the sk-pack-v1 buffer ``packed`` again."""
        if self.tile_layout:
            self._swap_codes("tiles", "packed", self.packed)

    def _swap_codes(self, old: str, new: str, tensor: torch.Tensor) -> None:
        # the code buffer keeps its place first among the buffers (the state_dict's order)
        rest = [(k, v) for k, v in self._buffers.items() if k != old]
        self._buffers.clear()
        self._buffers[new] = tensor
        self._buffers.update(rest)
        if new == "tiles":
            self._non_persistent_buffers_set.add("tiles")
        else:
            self._non_persistent_buffers_set.discard("tiles")

    def _triton_runs(self, x) -> bool:
        """Whether the op would run this call on the Triton kernel (then the tile layout is
        what it reads)."""
        from .. import backends

        codes = self._buffers.get("packed", self._buffers.get("tiles"))
        if (
            self.act_bits != 16
            or not isinstance(x, torch.Tensor)
            or x.dtype not in _FLOATS
            or x.dim() < 1
            or x.shape[-1] != self.in_features
            or x.device != codes.device
        ):
            return False  # the op names what is wrong (or the reference runs float64)
        if (
            self.tile_layout
            and backends.get_backend() == "auto"
            and backends.unavailable_reason("triton", x.device, x.dtype) is None
        ):
            # auto keeps to the Triton kernel for every M once the layer holds the tiles:
            # following auto's choice per M would convert the weight back and forth
            return True
        try:
            choice = backends.select(
                "quant_linear", x.device, x.dtype, m=x.numel() // self.in_features,
                bits=self.bits, act_bits=16, group_size=self.group_size, k=self.in_features,
                n=self.out_features,
            )  # fmt: skip
        except backends.BackendUnavailable:
            return False  # the op raises it again, with the same message
        return choice.name == "triton"

    # ----------------------------------------------------------------- construction
    def _meta_values(self) -> list[int]:
        return [
            QMETA_VERSION,
            self.bits,
            self.group_size,
            self.in_features,
            self.out_features,
            self.act_bits,
            int(self.symmetric),
        ]

    @classmethod
    def from_qweight(
        cls, qweight: QuantizedWeight, bias: torch.Tensor | None = None, act_bits: int = 16
    ) -> QuantLinear:
        """A layer around an existing packed weight (its tensors are copied); the bias, if
        given, sets the compute dtype."""
        if not isinstance(qweight, QuantizedWeight):
            raise TypeError(
                f"QuantLinear.from_qweight: qweight must be a QuantizedWeight, "
                f"got {type(qweight).__name__}"
            )
        n, k = qweight.shape
        layer = cls(
            k,
            n,
            bits=qweight.bits,
            group_size=qweight.group_size,
            act_bits=act_bits,
            symmetric=qweight.symmetric,
            bias=bias is not None,
            device=qweight.device,
            dtype=None if bias is None else bias.dtype,
        )
        with torch.no_grad():
            layer.packed.copy_(qweight.packed)
            layer.scales.copy_(qweight.scales)
            layer.zeros.copy_(qweight.zeros)
            if bias is not None:
                if tuple(bias.shape) != (n,):
                    raise ValueError(
                        f"QuantLinear.from_qweight: bias must have shape ({n},), "
                        f"got {tuple(bias.shape)}"
                    )
                layer.bias.copy_(bias.detach())
        return layer

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        bits: int = 4,
        group_size: int | None = 128,
        act_bits: int = 16,
        symmetric: bool = False,
        clip_search: bool = False,
    ) -> QuantLinear:
        """Quantize ``linear``'s weight (round-to-nearest min-max per group, see
        :func:`~supernet_kernels.quant.quantize_weight`); the bias keeps the layer's dtype."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(
                f"QuantLinear.from_linear: expected an nn.Linear, got {type(linear).__name__}"
            )
        qw = quantize_weight(linear.weight, bits, group_size, symmetric, clip_search)
        return cls.from_qweight(qw, linear.bias, act_bits)

    # ----------------------------------------------------------------- views
    @property
    def qweight(self) -> QuantizedWeight:
        """The packed weight as a :class:`QuantizedWeight` (views of the buffers, no copy)."""
        return QuantizedWeight(
            packed=self.packed,
            scales=self.scales,
            zeros=self.zeros,
            bits=self.bits,
            group_size=self.group_size,
            shape=(self.out_features, self.in_features),
            symmetric=self.symmetric,
        )

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The weight (out_features, in_features) as floats, in ``dtype`` (default: the bias's
        dtype, else float32)."""
        if dtype is None:
            dtype = self.bias.dtype if self.bias is not None else torch.float32
        return self.qweight.dequantize(dtype)

    @property
    def weight_nbytes(self) -> int:
        """Bytes the weight takes in memory (codes in their current layout, scales and zero
        points)."""
        codes = self._buffers.get("packed", self._buffers.get("tiles"))
        return sum(t.numel() * t.element_size() for t in (codes, self.scales, self.zeros))

    def config(self) -> dict:
        """The layer's configuration, JSON-serializable (what ``save_quantized`` records)."""
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bits": self.bits,
            "group_size": self.group_size,
            "act_bits": self.act_bits,
            "symmetric": self.symmetric,
            "bias": self.bias is not None,
        }

    # ----------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias
        if bias is not None and bias.dtype != x.dtype:
            bias = bias.to(x.dtype)  # e.g. under autocast; differentiable
        if self._triton_runs(x) and self.use_tile_layout():
            return torch.ops.supernet_kernels.quant_linear_tiled(
                x,
                self.tiles,
                self.scales,
                self.zeros,
                self.bits,
                self.group_size,
                self.in_features,
                self._tile,
                bias,
            )
        self.use_packed_layout()  # another backend reads sk-pack-v1
        return torch.ops.supernet_kernels.quant_linear(
            x,
            self.packed,
            self.scales,
            self.zeros,
            self.bits,
            self.group_size,
            self.in_features,
            self.act_bits,
            bias,
        )

    def extra_repr(self) -> str:
        g = "per-channel" if self.group_size == self.in_features else self.group_size
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bits={self.bits}, group_size={g}, act_bits={self.act_bits}, "
            f"symmetric={self.symmetric}, bias={self.bias is not None}"
        )

    # ----------------------------------------------------------------- dtype safety
    def _apply(self, fn, recurse=True):
        """Module-wide conversions (``.half()``, ``.to(dtype)``, ``.double()``) reach the bias
        only; ``packed``, ``scales``, ``zeros`` and ``qmeta`` follow device moves but keep their
        dtypes and exact values."""
        before = {name: self._buffers.get(name) for name in _FIXED_DTYPES}
        out = super()._apply(fn, recurse)
        for name, dtype in _FIXED_DTYPES.items():
            cur = self._buffers.get(name)
            if cur is not None and cur.dtype != dtype:
                self._buffers[name] = before[name].to(device=cur.device)
        return out

    # ----------------------------------------------------------------- loading
    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        self.use_packed_layout()  # the state_dict holds sk-pack-v1
        problems = self._check_state(state_dict, prefix)
        if problems:
            error_msgs.extend(problems)
            return  # load nothing into this layer: it stays whole
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        """sk-pack-v1 in either layout: in the tile layout ``packed`` is derived from the tiles
        (which are not saved)."""
        if not self.tile_layout:
            return super()._save_to_state_dict(destination, prefix, keep_vars)
        start = len(destination)
        super()._save_to_state_dict(destination, prefix, keep_vars)
        # packed before the other buffers, as the packed layout saves it
        added = list(destination.items())[start:]
        for key, _ in added:
            del destination[key]
        for key, value in added:
            if key == prefix + "scales":
                destination[prefix + "packed"] = self.packed
            destination[key] = value
        return None

    def _check_state(self, state_dict, prefix: str) -> list[str]:
        """Messages for every problem with this layer's entries of ``state_dict``."""
        problems: list[str] = []
        key = prefix + "qmeta"
        if key in state_dict:
            meta = state_dict[key]
            if (
                not isinstance(meta, torch.Tensor)
                or meta.dtype != torch.int64
                or tuple(meta.shape) != (len(QMETA_FIELDS),)
            ):
                what = (
                    f"{meta.dtype} {tuple(meta.shape)}"
                    if isinstance(meta, torch.Tensor)
                    else type(meta).__name__
                )
                problems.append(
                    f"{key}: corrupt QuantLinear metadata: expected an int64 tensor of "
                    f"{len(QMETA_FIELDS)} values {QMETA_FIELDS}, got {what}"
                )
            else:
                got = dict(zip(QMETA_FIELDS, meta.tolist(), strict=True))
                want = dict(zip(QMETA_FIELDS, self._meta_values(), strict=True))
                if got["version"] != QMETA_VERSION:
                    problems.append(
                        f"{key}: QuantLinear metadata version {got['version']} is not supported "
                        f"(this build reads version {QMETA_VERSION}); the file is corrupt or "
                        f"from a newer release"
                    )
                elif got["bits"] not in SUPPORTED_BITS or got["act_bits"] not in ACT_BITS:
                    problems.append(f"{key}: corrupt QuantLinear metadata {got}")
                else:
                    diff = [
                        f"{f}={got[f]} (layer has {want[f]})" for f in want if got[f] != want[f]
                    ]
                    if diff:
                        problems.append(
                            f"{key}: state_dict is for another QuantLinear configuration: "
                            + ", ".join(diff)
                            + "; build the layer with that configuration (or quantize_model / "
                            "load_quantized) before loading"
                        )
        for name, dtype in _FIXED_DTYPES.items():
            if name in ("qmeta", "tiles"):
                continue
            k = prefix + name
            if k not in state_dict:
                continue  # reported as a missing key by load_state_dict
            t = state_dict[k]
            mine = self._buffers[name]
            if not isinstance(t, torch.Tensor):
                problems.append(f"{k}: expected a tensor, got {type(t).__name__}")
            elif t.dtype != dtype:
                problems.append(f"{k}: expected dtype {dtype} (sk-pack-v1), got {t.dtype}")
            elif t.shape != mine.shape:
                problems.append(
                    f"{k}: shape {tuple(t.shape)} does not match the layer's {tuple(mine.shape)} "
                    f"({self.out_features}x{self.in_features}, {self.bits}-bit, "
                    f"group_size={self.group_size})"
                )
            elif name != "packed" and t.numel() and not torch.isfinite(t).all():
                problems.append(f"{k}: has NaN or inf entries (corrupt weight)")
        return problems
