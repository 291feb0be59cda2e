"""Triton kernels for attention with SAM's decomposed relative-position bias and / or an
additive bias tensor.

    out = softmax(scale * q k^T + bias) v,
    bias[b, h, i, j] = rel_h[b, h, i, j // W] + rel_w[b, h, i, j % W]   (HAS_REL)
                     + bias_t[b % G, h or 0, i, j]                         (HAS_BIAS)

q, k, v are (B, nH, T, d), read through their strides; rel_h (B, nH, T, H) and rel_w
(B, nH, T, W) are the two small factors of SAM's bias (T = H * W); bias_t (G, nH or 1, Tq, Tk)
is shared by the batch rows b = g (mod G) (Swin: the windows' rel-pos bias plus shift mask,
G = windows) and, with one head, by the heads (head stride 0). Neither the T x T scores nor a
(B, nH, T, T) bias ever reach memory: every kernel takes both kinds of bias behind constexpr
flags (HAS_REL, HAS_BIAS), and ``_scores`` adds the bias tile, loaded once per (q-tile, k-tile)
block in fp32 and masked at the edges.

* forward (``_attn_fwd_kernel``, flash-attention style): a program owns BLOCK_M queries of one
  (batch, head) and walks the keys in BLOCK_N tiles, keeping the running row maximum and sum in
  fp32 (online softmax, base 2). The bias tile is gathered on the fly: key j of the tile reads
  rel_h[i, j // W] and rel_w[i, j % W] -- two (BLOCK_M x BLOCK_N) gathers from rows of H and W
  values, which stay in L1/L2 (the alternative, a one-hot matmul rel_h @ onehot(j // W), costs
  BLOCK_M * BLOCK_N * (H + W) extra MACs: more than q k^T itself at SAM's global 64 x 64 grid).
  It stores out and the fp32 log-sum-exp of each query row (natural log), which the backward
  needs and which the op returns as its second output.
* backward (flash-attention 2 scheme, no atomics): delta_i = dO_i . O_i - dlse_i is a T x d
  row reduction (done by the op layer). ``_attn_bwd_dkdv_kernel`` owns a BLOCK_N block of keys
  and walks the queries: p = exp(s - lse), dV += p^T dO, dS = p (dO V^T - delta), dK += dS^T Q.
  ``_attn_bwd_dq_kernel`` owns a BLOCK_M block of queries and walks the keys: dQ += dS K, and
  with the bias d rel_h += dS @ onehot(j // W) and d rel_w += dS @ onehot(j % W), the one-hot
  (BLOCK_N x H_pad) tiles built from tl.arange comparisons. Each program owns its query rows,
  so the bias gradients need no atomics. The one-hot products run on fp32 dS ("ieee" for fp32
  inputs; tf32 for fp16/bf16 inputs, whose rounding is no coarser than theirs).
  ``_attn_bwd_dbias_kernel`` (only when the additive bias needs a gradient) owns one
  (BLOCK_M x BLOCK_N) tile of d bias_t[g, h] and walks the B / G batch rows of its group (and
  the heads, for a one-head bias), recomputing dS there and summing it in fp32: no atomics,
  deterministic; it costs the score and dP tile products once more (2 of the backward's 7,
  about 30% more backward FLOPs) and one more read of q, k, v, dO.

Head dims that are not powers of two (80, SAM ViT-H) are padded to the next power of two with
masks; token counts need not be multiples of the tiles. Offsets are int64.

Precision, as in flash attention and the reference (``ops.attention``): scores, bias, softmax
statistics and all accumulators in fp32; the probabilities are rounded to the input dtype before
the p @ v product (and p, dS before the dV, dK, dQ products).

Tile sizes: see ``_tiles`` (the forward's were chosen after the first H100 run).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_common import _dot, _load_tile, _round

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)

# The CUDA grid's second axis holds at most 65535 programs: (batch * heads) beyond that is
# launched in chunks.
_MAX_GRID_Y = 65535


@triton.jit
def _rel_bias(rh_ptr, rw_ptr, offs_m, offs_n, mask, RW, srht, srhk, srwt, srwk):
    """The (BLOCK_M x BLOCK_N) fp32 bias tile rel_h[i, j // W] + rel_w[i, j % W]."""
    kh = offs_n // RW
    kw = offs_n % RW
    bh = tl.load(rh_ptr + offs_m[:, None] * srht + kh[None, :] * srhk, mask=mask, other=0.0)
    bw = tl.load(rw_ptr + offs_m[:, None] * srwt + kw[None, :] * srwk, mask=mask, other=0.0)
    return bh.to(tl.float32) + bw.to(tl.float32)


@triton.jit
def _bias_tile(b_ptr, offs_m, offs_n, mask, sbt, sbk):
    """The (BLOCK_M x BLOCK_N) tile of the additive bias (one (group, head) slice), in fp32;
    0 outside ``mask`` (the tails of the last tiles)."""
    tile = tl.load(b_ptr + offs_m[:, None] * sbt + offs_n[None, :] * sbk, mask=mask, other=0.0)
    return tile.to(tl.float32)


@triton.jit
def _scores(
    q, kt, rh_ptr, rw_ptr, b_ptr, offs_m, offs_n, mask, RW, srht, srhk, srwt, srwk, sbt, sbk,
    qk_scale,
    HAS_REL: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):  # fmt: skip
    """The (BLOCK_M x BLOCK_N) fp32 score tile in base 2: log2(e) * (scale * q k^T + bias)
    (qk_scale = scale * log2(e)); bias = SAM's decomposed rel-pos bias with HAS_REL, plus the
    additive bias tile (loaded once per (q-tile, k-tile) block) with HAS_BIAS."""
    s = _dot(q, kt, tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), DOT_FP32) * qk_scale
    if HAS_REL:
        s += _rel_bias(rh_ptr, rw_ptr, offs_m, offs_n, mask, RW, srht, srhk, srwt, srwk) * LOG2E
    if HAS_BIAS:
        s += _bias_tile(b_ptr, offs_m, offs_n, mask, sbt, sbk) * LOG2E
    return s


@triton.jit
def _attn_fwd_kernel(
    q_ptr, k_ptr, v_ptr, rh_ptr, rw_ptr, b_ptr, o_ptr, lse_ptr,
    NH, TQ, TK, D, RH, RW, G, bh_base, qk_scale,
    sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd,
    srhb, srhh, srht, srhk, srwb, srwh, srwt, srwk, sbg, sbh, sbt, sbk,
    sob, soh, sot, sod, slb, slh, slt,
    HAS_REL: tl.constexpr,
    KEY_GRID: tl.constexpr,
    WP: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    DOT_FP32: tl.constexpr,
    RNE_BF16: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Forward for BLOCK_M queries of one (batch, head).

    KEY_GRID (with the bias, when next_pow2(W) = WP <= BLOCK_N): a key tile is ROWS = BLOCK_N
    // WP whole rows of the H x W key grid, each padded to WP columns (masked), so key t of the
    tile sits at row r0 + t // WP, column t % WP. Then rel_w[i, j % W] is the same (BLOCK_M x
    WP) block for every tile, loaded once before the loop, and rel_h[i, j // W] is a (BLOCK_M x
    ROWS) load per tile, broadcast over the row's columns: no per-element gathers. Costs the
    padding (W = 14: 16 columns, 12.5% more key work; W = 64: none)."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64) + bh_base
    b = bh // NH
    h = bh % NH
    q_ptr += b * sqb + h * sqh
    k_ptr += b * skb + h * skh
    v_ptr += b * svb + h * svh
    rh_ptr += b * srhb + h * srhh
    rw_ptr += b * srwb + h * srwh
    b_ptr += (b % G) * sbg + h * sbh  # batch row b uses bias[b % G]; sbh = 0: one shared head
    o_ptr += b * sob + h * soh
    lse_ptr += b * slb + h * slh

    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D).to(tl.int64)
    mask_m = offs_m < TQ
    mask_d = offs_d < D
    q = tl.load(
        q_ptr + offs_m[:, None] * sqt + offs_d[None, :] * sqd,
        mask=mask_m[:, None] & mask_d[None, :],
        other=0.0,
    )
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    if KEY_GRID:
        ROWS: tl.constexpr = BLOCK_N // WP
        cols = tl.arange(0, WP)
        bw = (
            tl.load(
                rw_ptr + offs_m[:, None] * srwt + cols[None, :] * srwk,
                mask=mask_m[:, None] & (cols < RW)[None, :],
                other=0.0,
            ).to(tl.float32)
            * LOG2E
        )
        n_end = RH * WP  # padded key positions
    else:
        n_end = TK
    for n0 in range(0, n_end, BLOCK_N):
        if KEY_GRID:
            t = tl.arange(0, BLOCK_N)
            row = n0 // WP + t // WP
            mask_n = ((t % WP) < RW) & (row < RH)
            offs_n = (row * RW + t % WP).to(tl.int64)
        else:
            offs_n = (n0 + tl.arange(0, BLOCK_N)).to(tl.int64)
            mask_n = offs_n < TK
        kt = tl.load(
            k_ptr + offs_d[:, None] * skd + offs_n[None, :] * skt,
            mask=mask_d[:, None] & mask_n[None, :],
            other=0.0,
        )
        # s in base 2: log2(e) * (scale * q k^T + bias)
        mask = mask_m[:, None] & mask_n[None, :]
        if KEY_GRID:
            s = _dot(q, kt, tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), DOT_FP32) * qk_scale
            rows = n0 // WP + tl.arange(0, ROWS)
            rel_rows = (
                tl.load(
                    rh_ptr + offs_m[:, None] * srht + rows[None, :] * srhk,
                    mask=mask_m[:, None] & (rows < RH)[None, :],
                    other=0.0,
                ).to(tl.float32)
                * LOG2E
            )
            if ROWS == 1:
                s += rel_rows + bw
            else:
                s += tl.reshape(rel_rows[:, :, None] + bw[:, None, :], (BLOCK_M, BLOCK_N))
            if HAS_BIAS:
                s += _bias_tile(b_ptr, offs_m, offs_n, mask, sbt, sbk) * LOG2E
        else:
            s = _scores(
                q, kt, rh_ptr, rw_ptr, b_ptr, offs_m, offs_n, mask, RW, srht, srhk, srwt, srwk,
                sbt, sbk, qk_scale, HAS_REL, HAS_BIAS, DOT_FP32, BLOCK_M, BLOCK_N,
            )  # fmt: skip
        s = tl.where(mask_n[None, :], s, float("-inf"))
        # The first tile holds key 0, so m_new is finite from the start (TK >= 1).
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        vt = tl.load(
            v_ptr + offs_n[:, None] * svt + offs_d[None, :] * svd,
            mask=mask_n[:, None] & mask_d[None, :],
            other=0.0,
        )
        acc = _dot(_round(p, v_ptr.dtype.element_ty, RNE_BF16), vt, acc * alpha[:, None], DOT_FP32)
        m_i = m_new
    out = acc / l_i[:, None]
    tl.store(
        o_ptr + offs_m[:, None] * sot + offs_d[None, :] * sod,
        _round(out, o_ptr.dtype.element_ty, RNE_BF16),
        mask=mask_m[:, None] & mask_d[None, :],
    )
    tl.store(lse_ptr + offs_m * slt, m_i * LN2 + tl.log(l_i), mask=mask_m)


@triton.jit
def _attn_bwd_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, rh_ptr, rw_ptr, b_ptr, do_ptr, lse_ptr, dl_ptr, dk_ptr, dv_ptr,
    NH, TQ, TK, D, RW, G, bh_base, qk_scale, scale,
    sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd,
    srhb, srhh, srht, srhk, srwb, srwh, srwt, srwk, sbg, sbh, sbt, sbk,
    sdob, sdoh, sdot, sdod, slb, slh, slt,
    sdkb, sdkh, sdkt, sdkd, sdvb, sdvh, sdvt, sdvd,
    HAS_REL: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    DOT_FP32: tl.constexpr,
    RNE_BF16: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):  # fmt: skip
    """dK, dV for BLOCK_N keys of one (batch, head): walks every query tile.

    lse and delta (dl_ptr) share the strides (slb, slh, slt)."""
    pid_n = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64) + bh_base
    b = bh // NH
    h = bh % NH
    q_ptr += b * sqb + h * sqh
    k_ptr += b * skb + h * skh
    v_ptr += b * svb + h * svh
    rh_ptr += b * srhb + h * srhh
    rw_ptr += b * srwb + h * srwh
    b_ptr += (b % G) * sbg + h * sbh  # batch row b uses bias[b % G]; sbh = 0: one shared head
    do_ptr += b * sdob + h * sdoh
    lse_ptr += b * slb + h * slh
    dl_ptr += b * slb + h * slh
    dk_ptr += b * sdkb + h * sdkh
    dv_ptr += b * sdvb + h * sdvh

    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D).to(tl.int64)
    mask_n = offs_n < TK
    mask_d = offs_d < D
    mask_nd = mask_d[:, None] & mask_n[None, :]
    kt = tl.load(k_ptr + offs_d[:, None] * skd + offs_n[None, :] * skt, mask=mask_nd, other=0.0)
    vt = tl.load(v_ptr + offs_d[:, None] * svd + offs_n[None, :] * svt, mask=mask_nd, other=0.0)
    dk = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    for m0 in range(0, TQ, BLOCK_M):
        offs_m = (m0 + tl.arange(0, BLOCK_M)).to(tl.int64)
        mask_m = offs_m < TQ
        mask_md = mask_m[:, None] & mask_d[None, :]
        q = tl.load(q_ptr + offs_m[:, None] * sqt + offs_d[None, :] * sqd, mask=mask_md, other=0.0)
        do = tl.load(
            do_ptr + offs_m[:, None] * sdot + offs_d[None, :] * sdod, mask=mask_md, other=0.0
        )
        lse = tl.load(lse_ptr + offs_m * slt, mask=mask_m, other=0.0)
        delta = tl.load(dl_ptr + offs_m * slt, mask=mask_m, other=0.0)
        mask = mask_m[:, None] & mask_n[None, :]
        s = _scores(
            q, kt, rh_ptr, rw_ptr, b_ptr, offs_m, offs_n, mask, RW, srht, srhk, srwt, srwk,
            sbt, sbk, qk_scale, HAS_REL, HAS_BIAS, DOT_FP32, BLOCK_M, BLOCK_N,
        )  # fmt: skip
        p = tl.where(mask, tl.exp2(s - lse[:, None] * LOG2E), 0.0)
        p_lp = _round(p, do_ptr.dtype.element_ty, RNE_BF16)
        dv = _dot(tl.trans(p_lp), do, dv, DOT_FP32)
        dp = _dot(do, vt, tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), DOT_FP32)
        ds = p * (dp - delta[:, None])
        dk = _dot(tl.trans(_round(ds, q_ptr.dtype.element_ty, RNE_BF16)), q, dk, DOT_FP32)
    mask_dn = mask_n[:, None] & mask_d[None, :]
    tl.store(
        dk_ptr + offs_n[:, None] * sdkt + offs_d[None, :] * sdkd,
        _round(dk * scale, dk_ptr.dtype.element_ty, RNE_BF16),
        mask=mask_dn,
    )
    tl.store(
        dv_ptr + offs_n[:, None] * sdvt + offs_d[None, :] * sdvd,
        _round(dv, dv_ptr.dtype.element_ty, RNE_BF16),
        mask=mask_dn,
    )


@triton.jit
def _attn_bwd_dq_kernel(
    q_ptr, k_ptr, v_ptr, rh_ptr, rw_ptr, b_ptr, do_ptr, lse_ptr, dl_ptr, dq_ptr, drh_ptr,
    drw_ptr, NH, TQ, TK, D, RH, RW, G, bh_base, qk_scale, scale,
    sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd,
    srhb, srhh, srht, srhk, srwb, srwh, srwt, srwk, sbg, sbh, sbt, sbk,
    sdob, sdoh, sdot, sdod, slb, slh, slt,
    sdqb, sdqh, sdqt, sdqd, sdrhb, sdrhh, sdrht, sdrhk, sdrwb, sdrwh, sdrwt, sdrwk,
    HAS_REL: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    DOT_FP32: tl.constexpr,
    RNE_BF16: tl.constexpr,
    ONEHOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
):  # fmt: skip
    """dQ (and d rel_h, d rel_w) for BLOCK_M queries of one (batch, head): walks every key tile."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64) + bh_base
    b = bh // NH
    h = bh % NH
    q_ptr += b * sqb + h * sqh
    k_ptr += b * skb + h * skh
    v_ptr += b * svb + h * svh
    rh_ptr += b * srhb + h * srhh
    rw_ptr += b * srwb + h * srwh
    b_ptr += (b % G) * sbg + h * sbh  # batch row b uses bias[b % G]; sbh = 0: one shared head
    do_ptr += b * sdob + h * sdoh
    lse_ptr += b * slb + h * slh
    dl_ptr += b * slb + h * slh
    dq_ptr += b * sdqb + h * sdqh
    drh_ptr += b * sdrhb + h * sdrhh
    drw_ptr += b * sdrwb + h * sdrwh

    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D).to(tl.int64)
    mask_m = offs_m < TQ
    mask_d = offs_d < D
    mask_md = mask_m[:, None] & mask_d[None, :]
    q = tl.load(q_ptr + offs_m[:, None] * sqt + offs_d[None, :] * sqd, mask=mask_md, other=0.0)
    do = tl.load(do_ptr + offs_m[:, None] * sdot + offs_d[None, :] * sdod, mask=mask_md, other=0.0)
    lse2 = tl.load(lse_ptr + offs_m * slt, mask=mask_m, other=0.0) * LOG2E
    delta = tl.load(dl_ptr + offs_m * slt, mask=mask_m, other=0.0)
    dq = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    drh = tl.zeros((BLOCK_M, BLOCK_H), dtype=tl.float32)
    drw = tl.zeros((BLOCK_M, BLOCK_W), dtype=tl.float32)
    cols_h = tl.arange(0, BLOCK_H)
    cols_w = tl.arange(0, BLOCK_W)
    for n0 in range(0, TK, BLOCK_N):
        offs_n = (n0 + tl.arange(0, BLOCK_N)).to(tl.int64)
        mask_n = offs_n < TK
        mask_dn = mask_d[:, None] & mask_n[None, :]
        kt = tl.load(k_ptr + offs_d[:, None] * skd + offs_n[None, :] * skt, mask=mask_dn, other=0.0)
        vt = tl.load(v_ptr + offs_d[:, None] * svd + offs_n[None, :] * svt, mask=mask_dn, other=0.0)
        mask = mask_m[:, None] & mask_n[None, :]
        s = _scores(
            q, kt, rh_ptr, rw_ptr, b_ptr, offs_m, offs_n, mask, RW, srht, srhk, srwt, srwk,
            sbt, sbk, qk_scale, HAS_REL, HAS_BIAS, DOT_FP32, BLOCK_M, BLOCK_N,
        )  # fmt: skip
        p = tl.where(mask, tl.exp2(s - lse2[:, None]), 0.0)
        dp = _dot(do, vt, tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), DOT_FP32)
        ds = p * (dp - delta[:, None])
        dq = _dot(_round(ds, q_ptr.dtype.element_ty, RNE_BF16), tl.trans(kt), dq, DOT_FP32)
        if HAS_REL:
            # d bias[i, j] = dS[i, j]; summed over the keys of each key row (j // W) and column
            # (j % W) by products with one-hot tiles built here.
            oh_h = ((offs_n // RW)[:, None] == cols_h[None, :]) & mask_n[:, None]
            oh_w = ((offs_n % RW)[:, None] == cols_w[None, :]) & mask_n[:, None]
            drh = tl.dot(ds, oh_h.to(tl.float32), drh, input_precision=ONEHOT_PREC)
            drw = tl.dot(ds, oh_w.to(tl.float32), drw, input_precision=ONEHOT_PREC)
    tl.store(
        dq_ptr + offs_m[:, None] * sdqt + offs_d[None, :] * sdqd,
        _round(dq * scale, dq_ptr.dtype.element_ty, RNE_BF16),
        mask=mask_md,
    )
    if HAS_REL:
        tl.store(
            drh_ptr + offs_m[:, None] * sdrht + cols_h[None, :] * sdrhk,
            _round(drh, drh_ptr.dtype.element_ty, RNE_BF16),
            mask=mask_m[:, None] & (cols_h < RH)[None, :],
        )
        tl.store(
            drw_ptr + offs_m[:, None] * sdrwt + cols_w[None, :] * sdrwk,
            _round(drw, drw_ptr.dtype.element_ty, RNE_BF16),
            mask=mask_m[:, None] & (cols_w < RW)[None, :],
        )


@triton.jit
def _attn_bwd_dbias_kernel(
    q_ptr, k_ptr, v_ptr, rh_ptr, rw_ptr, b_ptr, do_ptr, lse_ptr, dl_ptr, db_ptr,
    NH, TQ, TK, D, RW, G, HB, N_ITER, NHL, qk_scale,
    sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd,
    srhb, srhh, srht, srhk, srwb, srwh, srwt, srwk, sbg, sbh, sbt, sbk,
    sdob, sdoh, sdot, sdod, slb, slh, slt,
    sdbg, sdbh, sdbt, sdbk,
    HAS_REL: tl.constexpr,
    DOT_FP32: tl.constexpr,
    RNE_BF16: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):  # fmt: skip
    """d bias[g, hb] for one (BLOCK_M x BLOCK_N) tile: the sum of dS[b, h] over the N_ITER
    (batch, head) pairs that read this slice of the bias, b = r * G + g for r < B / G, and
    h = hb (HB = nH, NHL = 1) or every head (HB = 1, NHL = nH). dS = P * (dP - delta) is
    recomputed (q k^T and dO v^T for the tile), so every program owns its output tile: no
    atomics, deterministic. The bias tile itself is loaded once, before the walk."""
    pid = tl.program_id(0)
    n_tiles = tl.cdiv(TQ, BLOCK_M) * tl.cdiv(TK, BLOCK_N)
    gh = pid // n_tiles
    tile = pid % n_tiles
    pid_m = tile // tl.cdiv(TK, BLOCK_N)
    pid_n = tile % tl.cdiv(TK, BLOCK_N)
    g = (gh // HB).to(tl.int64)
    hb = (gh % HB).to(tl.int64)

    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D).to(tl.int64)
    mask_m = offs_m < TQ
    mask_n = offs_n < TK
    mask_d = offs_d < D
    mask = mask_m[:, None] & mask_n[None, :]
    bias2 = _bias_tile(b_ptr + g * sbg + hb * sbh, offs_m, offs_n, mask, sbt, sbk) * LOG2E
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for it in range(0, N_ITER):
        b = (it // NHL).to(tl.int64) * G + g
        h = hb + (it % NHL)
        q = _load_tile(q_ptr + b * sqb + h * sqh, offs_m, offs_d, sqt, sqd, mask_m, mask_d)
        do = _load_tile(do_ptr + b * sdob + h * sdoh, offs_m, offs_d, sdot, sdod, mask_m, mask_d)
        kt = _load_tile(k_ptr + b * skb + h * skh, offs_d, offs_n, skd, skt, mask_d, mask_n)
        vt = _load_tile(v_ptr + b * svb + h * svh, offs_d, offs_n, svd, svt, mask_d, mask_n)
        lse2 = tl.load(lse_ptr + b * slb + h * slh + offs_m * slt, mask=mask_m, other=0.0) * LOG2E
        delta = tl.load(dl_ptr + b * slb + h * slh + offs_m * slt, mask=mask_m, other=0.0)
        s = _scores(
            q, kt, rh_ptr + b * srhb + h * srhh, rw_ptr + b * srwb + h * srwh, b_ptr, offs_m,
            offs_n, mask, RW, srht, srhk, srwt, srwk, sbt, sbk, qk_scale,
            HAS_REL, False, DOT_FP32, BLOCK_M, BLOCK_N,
        ) + bias2  # fmt: skip
        p = tl.where(mask, tl.exp2(s - lse2[:, None]), 0.0)
        dp = _dot(do, vt, tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), DOT_FP32)
        acc += p * (dp - delta[:, None])
    tl.store(
        db_ptr + g * sdbg + hb * sdbh + offs_m[:, None] * sdbt + offs_n[None, :] * sdbk,
        _round(acc, db_ptr.dtype.element_ty, RNE_BF16),
        mask=mask,
    )


# --------------------------------------------------------------------------------------------
# Launchers. Raw tensors in, outputs out; arguments are validated by the op layer.


def _pad(n: int) -> int:
    """Triton's dot needs power-of-two tiles of at least 16."""
    return max(16, triton.next_power_of_2(n))


def _tiles(interpret: bool, block_d: int, backward: bool) -> dict:
    """Tiles. The interpreter gets 16 x 16 tiles: small numpy work, and several tiles (and
    masked tails) even at the tests' T <= 64.

    Forward on a GPU: 128 x 64, 8 warps, 3 stages for head dims <= 64 (the Triton tutorial's
    choice for Hopper). The first H100 run (2026-11-26, 64 x 64 x 4 warps) reached 36% of the
    bf16 peak without the bias at 4096 tokens against SDPA's 64%; `bench_attention.py --sweep`
    times the alternatives. The backward's tiles are unmeasured."""
    if interpret:
        return dict(BLOCK_M=16, BLOCK_N=16, num_warps=1)
    if backward:
        return dict(BLOCK_M=32, BLOCK_N=32 if block_d <= 64 else 16, num_warps=4)
    if block_d <= 64:
        return dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=3)
    return dict(BLOCK_M=64, BLOCK_N=32, num_warps=4)


def _flags(q) -> dict:
    import torch

    interp_bf16 = q.dtype == torch.bfloat16 and q.device.type == "cpu"
    return dict(DOT_FP32=q.dtype == torch.float32 or interp_bf16, RNE_BF16=interp_bf16)


def _rel_args(rel_h, rel_w, like):
    """(rel_h, rel_w, strides...) or dummies (never read when HAS_REL is False)."""
    if rel_h is None:
        return like, like, (0, 0, 0, 0, 0, 0, 0, 0), 1, 1
    return rel_h, rel_w, (*rel_h.stride(), *rel_w.stride()), rel_h.shape[-1], rel_w.shape[-1]


def _bias_args(bias, like):
    """(bias, G, strides (group, head, query, key)) or a dummy (never read without HAS_BIAS).
    A bias with one head is read with head stride 0 (shared by every head)."""
    if bias is None:
        return like, 1, (0, 0, 0, 0)
    sg, sh, st, sk = bias.stride()
    return bias, bias.shape[0], (sg, sh if bias.shape[1] > 1 else 0, st, sk)


def _bh_chunks(bh: int):
    for base in range(0, bh, _MAX_GRID_Y):
        yield base, min(_MAX_GRID_Y, bh - base)


def attention_fwd(q, k, v, rel_h, rel_w, scale: float, bias=None, tiles: dict | None = None,
                  key_grid: bool | None = None):  # fmt: skip
    """(out (B, nH, Tq, d) in q's dtype, lse (B, nH, Tq) fp32, natural log). ``bias``
    (G, nH or 1, Tq, Tk), any strides: batch row b adds bias[b % G].

    ``tiles`` (BLOCK_M, BLOCK_N, num_warps[, num_stages]) and ``key_grid`` override the
    defaults (benchmark sweeps); key_grid=None uses the key-grid tiling wherever it applies."""
    import torch

    B, NH, TQ, D = q.shape
    TK = k.shape[2]
    out = torch.empty((B, NH, TQ, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, NH, TQ), dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, lse
    rh, rw, rel_strides, RH, RW = _rel_args(rel_h, rel_w, q)
    bp, G, bias_strides = _bias_args(bias, q)
    block_d = _pad(D)
    if tiles is None:
        tiles = _tiles(q.device.type == "cpu", block_d, backward=False)
    wp = triton.next_power_of_2(RW)
    fits = rel_h is not None and wp <= tiles["BLOCK_N"]
    grid_keys = fits if key_grid is None else (key_grid and fits)
    for base, n in _bh_chunks(B * NH):
        grid = (triton.cdiv(TQ, tiles["BLOCK_M"]), n)
        _attn_fwd_kernel[grid](
            q, k, v, rh, rw, bp, out, lse,
            NH, TQ, TK, D, RH, RW, G, base, scale * 1.4426950408889634,
            *q.stride(), *k.stride(), *v.stride(), *rel_strides, *bias_strides,
            *out.stride(), *lse.stride(),
            HAS_REL=rel_h is not None,
            KEY_GRID=grid_keys,
            WP=wp if grid_keys else 1,
            HAS_BIAS=bias is not None,
            BLOCK_D=block_d,
            **_flags(q),
            **tiles,
        )  # fmt: skip
    return out, lse


def attention_bwd(
    q, k, v, rel_h, rel_w, scale: float, do, lse, delta, need_rel: bool, bias=None,
    need_bias: bool = False,
):  # fmt: skip
    """(dq, dk, dv, d rel_h, d rel_w, d bias); delta (B, nH, Tq) fp32 = rowsum(dO * O) - dlse,
    with the strides of lse. The rel-pos gradients are None without rel pos or when need_rel
    is False; d bias (G, nH or 1, Tq, Tk), contiguous, in bias's dtype, is None without a
    bias or when need_bias is False.

    d bias costs a third kernel (``_attn_bwd_dbias_kernel``) that recomputes the score and dP
    tiles: 2 of the backward's 7 tile products again (about 30% more backward FLOPs, which a
    fused variant with atomics would save at the price of determinism), one extra read of q,
    k, v, dO; no memory beyond d bias itself (the size of bias)."""
    import torch

    B, NH, TQ, D = q.shape
    TK = k.shape[2]
    dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    dk = torch.empty_like(k, memory_format=torch.contiguous_format)
    dv = torch.empty_like(v, memory_format=torch.contiguous_format)
    has_rel = rel_h is not None
    drh = torch.empty_like(rel_h, memory_format=torch.contiguous_format) if has_rel else None
    drw = torch.empty_like(rel_w, memory_format=torch.contiguous_format) if has_rel else None
    need_bias = need_bias and bias is not None
    dbias = torch.empty_like(bias, memory_format=torch.contiguous_format) if need_bias else None
    if not need_rel:
        drh_out = drw_out = None
    else:
        drh_out, drw_out = drh, drw
    if B * NH == 0 or D == 0:
        return dq, dk, dv, drh_out, drw_out, (dbias.zero_() if need_bias else None)
    if TQ == 0:  # no queries: nothing reaches the keys
        return dq, dk.zero_(), dv.zero_(), drh_out, drw_out, dbias
    rh, rw, rel_strides, RH, RW = _rel_args(rel_h, rel_w, q)
    bp, G, bias_strides = _bias_args(bias, q)
    drh_arg, drw_arg = (drh, drw) if has_rel else (dq, dq)
    drel_strides = (*drh.stride(), *drw.stride()) if has_rel else (0,) * 8
    block_d = _pad(D)
    tiles = _tiles(q.device.type == "cpu", block_d, backward=True)
    flags = _flags(q)
    interpret = q.device.type == "cpu"
    onehot_prec = "ieee" if (q.dtype == torch.float32 or interpret) else "tf32"
    qk_scale = scale * 1.4426950408889634
    assert lse.stride() == delta.stride()
    common = (
        *q.stride(), *k.stride(), *v.stride(), *rel_strides, *bias_strides, *do.stride(),
        *lse.stride(),
    )  # fmt: skip
    for base, n in _bh_chunks(B * NH):
        _attn_bwd_dkdv_kernel[(triton.cdiv(TK, tiles["BLOCK_N"]), n)](
            q, k, v, rh, rw, bp, do, lse, delta, dk, dv,
            NH, TQ, TK, D, RW, G, base, qk_scale, scale,
            *common, *dk.stride(), *dv.stride(),
            HAS_REL=has_rel,
            HAS_BIAS=bias is not None,
            BLOCK_D=block_d,
            **flags,
            **tiles,
        )  # fmt: skip
        _attn_bwd_dq_kernel[(triton.cdiv(TQ, tiles["BLOCK_M"]), n)](
            q, k, v, rh, rw, bp, do, lse, delta, dq, drh_arg, drw_arg,
            NH, TQ, TK, D, rel_h.shape[-1] if has_rel else 1, RW, G, base, qk_scale, scale,
            *common, *dq.stride(), *drel_strides,
            HAS_REL=has_rel,
            HAS_BIAS=bias is not None,
            ONEHOT_PREC=onehot_prec,
            BLOCK_D=block_d,
            BLOCK_H=_pad(rel_h.shape[-1]) if has_rel else 16,
            BLOCK_W=_pad(RW) if has_rel else 16,
            **flags,
            **tiles,
        )  # fmt: skip
    if need_bias:
        HB = bias.shape[1]
        nhl = NH if HB == 1 else 1
        n_tiles = triton.cdiv(TQ, tiles["BLOCK_M"]) * triton.cdiv(TK, tiles["BLOCK_N"])
        _attn_bwd_dbias_kernel[(G * HB * n_tiles,)](
            q, k, v, rh, rw, bp, do, lse, delta, dbias,
            NH, TQ, TK, D, RW, G, HB, (B // G) * nhl, nhl, qk_scale,
            *common, *dbias.stride(),
            HAS_REL=has_rel,
            BLOCK_D=block_d,
            **flags,
            **tiles,
        )  # fmt: skip
    return dq, dk, dv, drh_out, drw_out, dbias
