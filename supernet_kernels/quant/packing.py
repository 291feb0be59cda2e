"""The packing format of quantized weights ("sk-pack-v1"), documented so other tools can write it.

A weight W of shape (N, K) = (out_features, in_features) is stored as:

* codes ``q[n, k]``: unsigned integers in ``[0, 2**bits - 1]``, bits in {2, 3, 4, 8};
* ``packed``: int32, shape ``(N, ceil(K / PER_WORD))``, row-major, with
  ``PER_WORD = 32 // bits`` (2-bit: 16, 3-bit: 10, 4-bit: 8, 8-bit: 4). Code ``q[n, k]`` is in
  word ``packed[n, k // PER_WORD]`` at bit offset ``(k % PER_WORD) * bits``, low bits first.
  Unused bits (the top two of each 3-bit word) and codes past K in the last word are 0;
* ``scales`` and ``zeros``: float32, shape ``(N, K // G)`` for group size G (G divides K;
  per-channel is G = K). The weight is
  ``w[n, k] = (q[n, k] - zeros[n, k // G]) * scales[n, k // G]``.

Why 10 codes per word for 3 bits rather than 32 codes across three words: every bit-width then
shares one unpacking rule (word index, shift, mask), which lets one kernel serve all of them
with ``bits`` as a compile-time constant; the price is 2 unused bits per word (6.25% more
bytes than dense 3-bit packing).
"""

from __future__ import annotations

import torch

SUPPORTED_BITS = (2, 3, 4, 8)
FORMAT = "sk-pack-v1"


def codes_per_word(bits: int) -> int:
    check_bits(bits)
    return 32 // bits


def check_bits(bits, name: str = "bits") -> None:
    if not isinstance(bits, int) or isinstance(bits, bool) or bits not in SUPPORTED_BITS:
        raise ValueError(f"{name} must be one of {SUPPORTED_BITS}, got {bits!r}")


def packed_width(k: int, bits: int) -> int:
    return -(-k // codes_per_word(bits))


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes (N, K) in [0, 2**bits) into int32 words (N, ceil(K / PER_WORD))."""
    check_bits(bits)
    if codes.dim() != 2:
        raise ValueError(f"pack: codes must be 2-D (N, K), got shape {tuple(codes.shape)}")
    if codes.dtype.is_floating_point or codes.dtype == torch.bool:
        raise TypeError(f"pack: codes must be an integer tensor, got {codes.dtype}")
    c = codes.to(torch.int64)
    if c.numel() and (c.min() < 0 or c.max() >= 2**bits):
        raise ValueError(f"pack: codes must lie in [0, {2**bits - 1}] for {bits}-bit packing")
    n, k = c.shape
    per = codes_per_word(bits)
    words = packed_width(k, bits)
    c = torch.nn.functional.pad(c, (0, words * per - k)).view(n, words, per)
    shifts = torch.arange(per, device=c.device, dtype=torch.int64) * bits
    packed = (c << shifts).sum(-1)  # disjoint bit fields: the sum is an OR
    # Values use at most 32 bits; reinterpret the low 32 as int32 (two's complement).
    packed = torch.where(packed >= 2**31, packed - 2**32, packed)
    return packed.to(torch.int32).contiguous()


def unpack(packed: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """Inverse of :func:`pack`: int32 words (N, W) -> codes (N, k) as uint8."""
    check_bits(bits)
    if packed.dtype != torch.int32 or packed.dim() != 2:
        raise ValueError(
            f"unpack: packed must be a 2-D int32 tensor, got {packed.dtype} {tuple(packed.shape)}"
        )
    per = codes_per_word(bits)
    if packed.shape[1] != packed_width(k, bits):
        raise ValueError(
            f"unpack: packed has {packed.shape[1]} words per row, expected "
            f"{packed_width(k, bits)} for K={k} at {bits} bits"
        )
    words = packed.to(torch.int64) & 0xFFFFFFFF
    shifts = torch.arange(per, device=packed.device, dtype=torch.int64) * bits
    codes = (words[:, :, None] >> shifts) & (2**bits - 1)
    return codes.reshape(packed.shape[0], -1)[:, :k].to(torch.uint8)


# ----------------------------------------------------------------------------------------------
# The GPU tile layout ("sk-tiles-v1"), made once per weight from sk-pack-v1; never saved
# (QuantLinear on the Triton backend holds it instead of sk-pack-v1 and derives v1 to save).
#
# For 2, 4 and 8 bits the kernels read codes as int16 words, C = 16 // bits codes each
# (2-bit: 8, 4-bit: 4, 8-bit: 2), in tiles of T codes along K (T divides the padded K). In the
# tile starting at code t, int16 word e (0 <= e < E = T // C) holds codes t + j*E + e for
# j = 0..C-1 at bits [bits*j, bits*j + bits). Shifting a loaded (rows, E) word tile by bits*j
# and masking gives the weights of K range [t + jE, t + (j+1)E) for every row: contiguous K
# slices, so x is read contiguously and no reshape stands between the load and the MMA. Rows
# are K-contiguous and padded to a whole number of tiles with code 0 (x is masked past K).
# Scales and zero points stay the float32 (N, K // G) tensors of sk-pack-v1 for the kernel's
# exact-integer path (M <= 64, see kernels.triton_quant): at G = 128 they add 8 bytes per 128
# codes (0.0625 B/code; 12.5% over 4-bit codes), read once per tile.
#
# Scale pairs ("sk-scale16-v1"), for the path that scales the weight in 16 bits (M > 64):
# int32 (N, K // G), one word per row and group holding two numbers of the activation dtype
# (float16 or bfloat16): bits [0, 16) the scale s rounded to nearest, bits [16, 32) the zero
# point plus the magic constant of the dequantization, c = z + MAGIC (see magic_offset), an
# integer below 2**11 (fp16) or 2**8 (bf16) and so exact in either dtype. One
# 4-byte load per row and group instead of two, and the kernel computes
# w = (f - c) * s = (q - z) * s from the code's magic-number bits f = MAGIC + q: the
# subtraction is exact (integers), so the only roundings are s to 16 bits and the product.
# Made once per weight and activation dtype (kernels.triton_quant.scale_pairs_of); never saved.
# What the 16-bit scale does to quantize_model's models (relative error of the output against
# the unquantized float32 model; W8 / W4, g32, the models of tests/test_quant_model.py and the
# quickstart's ViT architecture, random weights, 80-136 rows so the scaled path runs; CPU
# interpreter; fp32 scales, as before -> 16-bit scales; the op's reference in the same dtype):
#   MLP 64-128-96-10     fp16 W8 0.00351 -> 0.00347 (ref 0.00353), bf16 W8 0.00452 -> 0.00500
#                        (ref 0.00498); W4 fp16 0.0666 -> 0.0666, bf16 0.0671 -> 0.0673
#   timm ViT, 2 blocks   fp16 W8 0.01053 -> 0.01045 (ref 0.01051), bf16 W8 0.0116 -> 0.0127
#                        (ref 0.0129); W4 fp16 0.0919 -> 0.0919, bf16 0.0924 -> 0.0913
#   SAM encoder, 2 blks  fp16 W8 0.00326 -> 0.00326 (ref 0.00327), bf16 W8 0.00802 -> 0.00821
#                        (ref 0.00794); W4 fp16 0.0529 -> 0.0529, bf16 0.0533 -> 0.0534
#   quickstart ViT, W4   fp16 0.3456 -> 0.3463 (ref 0.3460), bf16 0.3435 -> 0.3445 (ref 0.3444)
# W3 (generic kernel before, the tile kernel's planes now; same models, 16-bit path above 16
# rows): MLP fp16 0.1355 -> 0.1355, bf16 0.1356 -> 0.1355; ViT fp16 0.2035 -> 0.2036, bf16
# 0.2043 -> 0.2041; SAM fp16 0.1140 -> 0.1140, bf16 0.1144 -> 0.1141; quickstart ViT fp16
# 0.4802 -> 0.4804, bf16 0.4811 -> 0.4831 (ref 0.4811).
# The float32 error of quantize_model itself (its CPU path) does not change: sk-pack-v1 stays.
# So the 16-bit scale stays within the dtype's own rounding of the weight: rounding the scale
# (relative 2**-11 fp16, 2**-9 bf16) adds one rounding of the size the reference already
# makes on every weight when it casts the dequantized weight to x's dtype.


# 3 bits ("sk-tiles3-v1"): two planes in the same form, q = lo + 4 * hi. A tile of T codes is
# 16 slices of E = T // 16 codes; per row it holds 3E int16 words: words [0, E) and [E, 2E)
# the low two bits of slices 0-7 and 8-15 (word e of part p: code t + (8p + j)E + e at bits
# [2j, 2j + 2), the 2-bit form), words [2E, 3E) the high bit of all 16 slices (word e: code
# t + jE + e at bit j). 3 bits per code exactly, every part of a tile a contiguous (rows, E)
# int16 block (16-byte loads for E >= 8), and both planes dequantize by the magic-number
# trick with shifts shared by all codes of a word (see kernels.triton_quant._centered3).
# Why not 10 codes per int32 as sk-pack-v1: 10 does not split into 16-bit halves, so the
# packed-half arithmetic cannot take it (the generic kernel ran 24.5 SASS instructions per
# code on it, with 4-byte gathers).


def slices_per_tile(bits: int) -> int:
    """C: the K slices a tile of the tile layout splits into (codes per int16 word for 2, 4 and
    8 bits; 16 for 3 bits, one per bit of the high plane)."""
    return 16 if bits == 3 else 16 // bits


def tile_codes(k: int, bits: int, tile: int) -> tuple[int, int]:
    """(slices per tile, int16 words per row) of the tile layout for K = k."""
    c = slices_per_tile(bits)
    words = 3 * (tile // 16) if bits == 3 else tile // c
    return c, -(-k // tile) * words


def _check_tile_bits(bits, tile, where: str) -> int:
    if bits not in (2, 3, 4, 8):
        raise ValueError(f"{where}: the tile layout takes 2, 3, 4 or 8 bits, got {bits!r}")
    c = slices_per_tile(bits)
    if not isinstance(tile, int) or tile < 1 or tile % (16 * c):
        raise ValueError(f"{where}: tile {tile!r} must be a multiple of {16 * c} at {bits} bits")
    return c


def _words(codes: torch.Tensor, bits: int, c: int) -> torch.Tensor:
    """codes (N, tiles, c, E) -> int16 words (N, tiles, E): slice j at bits [bits*j, ...)."""
    shifts = (torch.arange(c, device=codes.device, dtype=torch.int32) * bits).view(1, 1, c, 1)
    words = (codes << shifts).sum(2)  # disjoint bit fields: the sum is an OR; < 2**16
    return torch.where(words >= 2**15, words - 2**16, words).to(torch.int16)


def _fields(words: torch.Tensor, bits: int, c: int) -> torch.Tensor:
    """int16 words (N, tiles, E) -> codes (N, tiles, c, E), the inverse of _words."""
    w = (words.to(torch.int32) & 0xFFFF).unsqueeze(2)
    shifts = (torch.arange(c, device=words.device, dtype=torch.int32) * bits).view(1, 1, c, 1)
    return (w >> shifts) & (2**bits - 1)


def to_tiles(packed: torch.Tensor, bits: int, k: int, tile: int) -> torch.Tensor:
    """sk-pack-v1 words (N, W) -> the tile layout: int16 (N, tile_codes(k, bits, tile)[1])."""
    c = _check_tile_bits(bits, tile, "to_tiles")
    _, width = tile_codes(k, bits, tile)
    n, e = packed.shape[0], tile // c
    codes = unpack(packed, bits, k).to(torch.int32)
    codes = torch.nn.functional.pad(codes, (0, -(-k // tile) * tile - k))
    codes = codes.view(n, -1, c, e)  # [tile, j, e]: code t + j*E + e
    if bits != 3:
        return _words(codes, bits, c).reshape(n, width).contiguous()
    lo = codes & 3
    parts = (_words(lo[:, :, :8], 2, 8), _words(lo[:, :, 8:], 2, 8), _words(codes >> 2, 1, 16))
    return torch.cat(parts, dim=2).reshape(n, width).contiguous()


def unpack_tiles(tiles: torch.Tensor, bits: int, k: int, tile: int) -> torch.Tensor:
    """The codes (N, k) as uint8 of a weight in the tile layout (see :func:`to_tiles`)."""
    c = _check_tile_bits(bits, tile, "unpack_tiles")
    _, width = tile_codes(k, bits, tile)
    if tiles.dtype != torch.int16 or tiles.dim() != 2 or tiles.shape[1] != width:
        raise ValueError(
            f"unpack_tiles: tiles must be int16 of shape (N, {width}) for K={k}, {bits} bits, "
            f"tile {tile}; got {tiles.dtype} {tuple(tiles.shape)}"
        )
    n, e = tiles.shape[0], tile // c
    if bits != 3:
        codes = _fields(tiles.view(n, -1, e), bits, c)
    else:
        parts = tiles.view(n, -1, 3, e)
        lo = torch.cat((_fields(parts[:, :, 0], 2, 8), _fields(parts[:, :, 1], 2, 8)), dim=2)
        codes = lo + 4 * _fields(parts[:, :, 2], 1, 16)
    return codes.reshape(n, -1)[:, :k].to(torch.uint8)


def from_tiles(tiles: torch.Tensor, bits: int, k: int, tile: int) -> torch.Tensor:
    """Inverse of :func:`to_tiles`: the tile layout (N, W16) -> sk-pack-v1 words (N, W)."""
    return pack(unpack_tiles(tiles, bits, k, tile), bits)


def magic_offset(bits: int, dtype: torch.dtype) -> float:
    """The constant MAGIC that the 16-bit dequantization reads a code on: a code ORed into the
    mantissa of 1024.0 (float16, 10 mantissa bits) or 128.0 (bfloat16, 7 bits) reads as
    MAGIC + q. 8-bit codes on bfloat16 pass the 7 mantissa bits: the kernel rebuilds q itself
    there, MAGIC 0."""
    if dtype == torch.float16:
        return 1024.0
    if dtype == torch.bfloat16:
        return 0.0 if bits == 8 else 128.0
    raise ValueError(f"magic_offset: dtype must be float16 or bfloat16, got {dtype}")


def fold_scales(scales: torch.Tensor, zeros: torch.Tensor, bits: int, dtype: torch.dtype):
    """sk-pack-v1 scales and zero points (N, G) float32 -> scale pairs int32 (N, G) (see the
    layout notes above): the scale in ``dtype`` in the low half, zero + MAGIC in the high."""
    if scales.shape != zeros.shape or scales.dim() != 2:
        raise ValueError(
            f"fold_scales: scales and zeros must be 2-D of one shape, got "
            f"{tuple(scales.shape)} and {tuple(zeros.shape)}"
        )
    lo = scales.to(dtype).view(torch.int16).to(torch.int32) & 0xFFFF
    hi = (zeros + magic_offset(bits, dtype)).to(dtype).view(torch.int16).to(torch.int32)
    return ((hi << 16) | lo).contiguous()


def unfold_scales(pairs: torch.Tensor, bits: int, dtype: torch.dtype):
    """Inverse of :func:`fold_scales`: (scales, zeros) float32, the scales as rounded."""
    lo = (pairs & 0xFFFF).to(torch.int16).view(dtype)
    hi = (pairs >> 16).to(torch.int16).view(dtype)
    return lo.to(torch.float32), hi.to(torch.float32) - magic_offset(bits, dtype)
