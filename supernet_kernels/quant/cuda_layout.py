"""The weight layout of the CUDA quantized GEMV ("sk-cuda-gemv-v1"), made once per weight.

``sk-pack-v1`` (:mod:`supernet_kernels.quant.packing`) stays the interchange and file format;
the CUDA kernel (csrc/quant/quant_cuda.cu) reads this layout instead, written here from v1 and
kept in a cache beside the v1 tensors (:func:`cached_layout`), so the op converts a weight on
its first call and again only when the weight changes. csrc/quant/quant_plan.h describes the
same layout for the kernel; the two are kept in step by tests/test_quant_cuda_layout.py, which
runs the kernel's fragment arithmetic on this layout in PyTorch.

The kernel multiplies with ``mma.sync`` m16n8k16: the weight is the A operand (16 rows by 16
columns a step), x the B operand. A lane ``l`` (``g = l // 4``, ``t = l % 4``) holds rows ``g``
and ``g + 8`` of the step at four columns, and the layout stores exactly those codes for it:

* layout bits ``LB``: 2, 4 or 8; 3-bit codes are stored as 4-bit (the kernel reads 4 bits a
  code: 3-bit weights run at the 4-bit speed and size);
* a chunk is 16 rows by ``KC = 16 * SPC`` columns, ``SPC = 16 // LB`` steps (2-bit: 128
  columns, 4-bit: 64, 8-bit: 32): 32 lanes x 16 bytes; ``codes[rt, (c * 32 + l) * 4 + w]``
  is word ``w`` of lane ``l`` in chunk ``c`` of row tile ``rt`` (rows ``16 rt .. 16 rt + 15``);
  rows past N and columns past K hold code 0;
* the span ``P = min(G, KC)`` (per-channel, ``G == K``: ``KC``): within a span a lane's
  columns are contiguous (``P / 4`` of them), so it reads x with 16-byte loads; step ``s``
  covers column ``c * KC + (s // (P // 16)) * P + t * (P // 4) + (s % (P // 16)) * 4 + e``;
* code (row ``g + 8 h``, ``e``) of step ``s`` is pair ``p = 4 s + 2 (e // 2) + h``, half
  ``e % 2``; pair ``p`` is in word ``p // PPW`` (``PPW = 16 // LB``) at bit
  ``(p % PPW) * LB`` of the low (half 0) or high (half 1) 16 bits. The kernel turns position
  ``i`` of both halves into a packed pair of (q - z) with one LOP3 and one HFMA2;
* ``params[rt, group, g] = (s, -z)`` of row ``g``, then of row ``g + 8`` (float32): the scale
  applies once per group in fp32, ``y += s * sum(x (q - z))``. Groups past K hold zeros.

Group sizes: smaller than a chunk, a multiple of 32 that divides it; larger, a power of two
of chunks; or per-channel. Zero points must be integers in ``[0, 2**bits - 1]`` (what
:func:`~supernet_kernels.quant.quantize_weight` writes): the kernel folds them into exact
16-bit integers.
"""

from __future__ import annotations

import dataclasses
import weakref

import torch

from .packing import check_bits, unpack

FORMAT = "sk-cuda-gemv-v1"
ROWS_PER_TILE = 16


def layout_bits(bits: int) -> int:
    check_bits(bits)
    return 4 if bits == 3 else bits


def chunk_k(lb: int) -> int:
    return 16 * (16 // lb)


def span_for(bits: int, k: int, group_size: int) -> int:
    """The span (see the module docstring), or 0 where the layout has none."""
    kc = chunk_k(layout_bits(bits))
    g = group_size
    if k <= 0 or g <= 0 or k % g:
        return 0
    if g == k:
        return kc
    if g >= kc:
        ratio = g // kc
        return kc if g % kc == 0 and ratio & (ratio - 1) == 0 else 0
    return g if kc % g == 0 and g % 32 == 0 else 0


def unsupported_reason(bits: int, k: int, group_size: int) -> str | None:
    """Why the CUDA layout cannot hold such a weight, or None."""
    if span_for(bits, k, group_size):
        return None
    kc = chunk_k(layout_bits(bits))
    return (
        f"the CUDA kernel takes group sizes below {kc} that are multiples of 32 dividing {kc}, "
        f"a power of two times {kc}, or per-channel; got {group_size} for {bits}-bit weights "
        f"with in_features {k}"
    )


def k_padded(bits: int, k: int) -> int:
    kc = chunk_k(layout_bits(bits))
    return -(-k // kc) * kc


def num_groups(bits: int, k: int, group_size: int) -> int:
    sp = span_for(bits, k, group_size)
    if sp == chunk_k(layout_bits(bits)):
        return 1 if group_size == k else k // group_size
    return k_padded(bits, k) // sp


@dataclasses.dataclass(frozen=True)
class CudaGemvWeight:
    """A weight in the CUDA GEMV's layout."""

    codes: torch.Tensor  # int32 (ceil(N / 16), n_chunks * 128)
    params: torch.Tensor  # float32 (ceil(N / 16), groups, 8, 4)
    bits: int  # the sk-pack-v1 bits (3 is stored as 4)
    group_size: int
    in_features: int
    out_features: int


def slots(lb: int, span: int, k_pad: int, device=None) -> tuple[torch.Tensor, ...]:
    """(chunk, lane, word, bit) of every (row in tile, column) as (16, k_pad) int64 tensors."""
    kc = chunk_k(lb)
    sps = span // 16
    ppw = 16 // lb
    k = torch.arange(k_pad, device=device)
    rr = torch.arange(ROWS_PER_TILE, device=device)[:, None]
    c = k // kc
    kk = k % kc
    j, ks = kk // span, kk % span
    t, rest = ks // (span // 4), ks % (span // 4)
    s, e = j * sps + rest // 4, rest % 4
    g, h = rr % 8, rr // 8
    p = 4 * s + 2 * (e // 2) + h  # (16, k_pad)
    lane = 4 * g + t
    word = p // ppw
    bit = (e % 2) * 16 + (p % ppw) * lb
    return c.expand_as(p), lane.expand_as(p), word, bit


def to_cuda_layout(packed, scales, zeros, bits: int, group_size: int, in_features: int):
    """The layout of ``(packed, scales, zeros)`` (sk-pack-v1), on their device."""
    k, g = in_features, group_size
    reason = unsupported_reason(bits, k, g)
    if reason:
        raise ValueError(f"to_cuda_layout: {reason}")
    qmax = 2**bits - 1
    if zeros.numel() and (
        not torch.equal(zeros, zeros.round()) or zeros.min() < 0 or zeros.max() > qmax
    ):
        raise ValueError(
            f"to_cuda_layout: the CUDA kernel needs integer zero points in [0, {qmax}] "
            "(it folds them into exact 16-bit integers); these are not"
        )
    n = packed.shape[0]
    lb, sp = layout_bits(bits), span_for(bits, k, g)
    kp, kc = k_padded(bits, k), chunk_k(lb)
    tiles, n_chunks = -(-n // ROWS_PER_TILE), kp // kc
    dev = packed.device

    q = torch.zeros(tiles * ROWS_PER_TILE, kp, dtype=torch.int64, device=dev)
    if n:
        q[:n, :k] = unpack(packed, bits, k).to(torch.int64)
    c, lane, word, bit = slots(lb, sp, kp, dev)
    flat = ((c * 32 + lane) * 4 + word).reshape(-1)  # index within a tile's words
    vals = q.view(tiles, ROWS_PER_TILE * kp) << bit.reshape(1, -1)
    words = torch.zeros(tiles, n_chunks * 128, dtype=torch.int64, device=dev)
    words.scatter_add_(1, flat.expand(tiles, -1), vals)  # disjoint bit fields: a sum is an OR
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)

    groups = num_groups(bits, k, g)
    sz = torch.zeros(tiles * ROWS_PER_TILE, groups, 2, dtype=torch.float32, device=dev)
    real = scales.shape[1]
    sz[:n, :real, 0] = scales.float()
    sz[:n, :real, 1] = -zeros.float()
    params = sz.view(tiles, 2, 8, groups, 2).permute(0, 3, 2, 1, 4).reshape(tiles, groups, 8, 4)
    return CudaGemvWeight(words.contiguous(), params.contiguous(), bits, g, k, n)


_CACHE: dict[int, tuple] = {}


def cached_layout(packed, scales, zeros, bits: int, group_size: int, in_features: int):
    """:func:`to_cuda_layout`, made once per weight: kept while ``packed`` lives and rebuilt
    when any of the three tensors is changed in place or replaced."""
    stamp = tuple((id(t), t.data_ptr(), t._version) for t in (packed, scales, zeros))
    stamp += (bits, group_size, in_features)
    key = id(packed)
    hit = _CACHE.get(key)
    if hit is not None and hit[0]() is packed and hit[1] == stamp:
        return hit[2]
    if packed.is_cuda and torch.cuda.is_current_stream_capturing():
        # making the layout checks the zero points on the host (a synchronization), which a
        # CUDA graph capture forbids: say so rather than fail inside the capture
        raise RuntimeError(
            "quant_linear (cuda): the weight's GPU layout is made on its first call, which "
            "cannot happen inside a CUDA graph capture; run the layer once before capturing"
        )
    lay = to_cuda_layout(packed, scales, zeros, bits, group_size, in_features)
    ref = weakref.ref(packed, lambda _r, key=key: _CACHE.pop(key, None))
    _CACHE[key] = (ref, stamp, lay)
    return lay
