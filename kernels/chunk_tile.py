"""Per-chunk tile steps shared by the chunk kernels (``chunk_retention_fused`` and
``chunk_retention_out``): load and quantize one chunk of Q, K, V, and the fused-decay score
epilogue. Each follows :mod:`retquant.spec.int_chunk` operation for operation."""

from __future__ import annotations

import triton
import triton.language as tl

from retquant.kernels.quant_int8 import quant_cols, quant_rows


@triton.jit
def load_chunk_tiles(q_ptr, k_ptr, v_ptr, tok, i_h, rk, rv, mt, mk, mv, scale, H, K, V):
    """Load one chunk (rows ``tok``) of q, k, v; quantize Q (scaled) and K per token, V per
    channel. Returns ``(q_i8, s_q, k, k_i8, s_k, v_i8, s_v, vo_off, vo_mask)``; ``k`` stays fp32
    for the decayed-K state update and ``vo_off``/``vo_mask`` address the output tile."""
    qk_off = tok * (H * K) + i_h * K + rk[None, :]
    qk_mask = mt[:, None] & mk[None, :]
    vo_off = tok * (H * V) + i_h * V + rv[None, :]
    vo_mask = mt[:, None] & mv[None, :]
    q = tl.load(q_ptr + qk_off, mask=qk_mask, other=0.0).to(tl.float32) * scale
    k = tl.load(k_ptr + qk_off, mask=qk_mask, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + vo_off, mask=vo_mask, other=0.0).to(tl.float32)
    q_i8, s_q = quant_rows(q)
    k_i8, s_k = quant_rows(k)
    v_i8, s_v = quant_cols(v)
    return q_i8, s_q, k, k_i8, s_k, v_i8, s_v, vo_off, vo_mask


@triton.jit
def decayed_scores(acc, s_q, s_k, row_ptr, col_ptr, mask_ptr, fused_ptr, i_h, r, C: tl.constexpr):
    """Scores of ``acc = Q_int K_int^T``: the fused-decay epilogue (or, for guarded heads, the
    ``gamma**(a-b)`` table), the causal mask, then per-row requantization: ``(p_i8, s_p)``."""
    accf = acc.to(tl.float32)
    if tl.load(fused_ptr + i_h) != 0:
        row = tl.load(row_ptr + i_h * C + r)
        col = tl.load(col_ptr + i_h * C + r)
        p = (accf * (s_q * row)[:, None]) * (s_k * col)[None, :]
    else:
        dmask = tl.load(mask_ptr + i_h * C * C + r[:, None] * C + r[None, :])
        p = ((accf * s_q[:, None]) * s_k[None, :]) * dmask
    p = tl.where(r[:, None] >= r[None, :], p, 0.0)
    return quant_rows(p)


@triton.jit
def decayed_state_update(
    S,
    k,
    v_i8,
    s_v,
    L,
    kdec_ptr,
    chunk_ptr,
    i_h,
    r,
    C: tl.constexpr,
):
    """``S * gamma**L + (K~_int^T V_int) * s_k~ * s_v`` with ``K~ = K * gamma**(L-1-j)`` quantized
    per channel (the decay runs along the reduced axis, so it is applied before quantizing) for
    a chunk of ``L`` tokens: the tables are indexed by length (``kdec [H, C+1, C]``, ``chunk
    [H, C+1]``), so a sequence's short last chunk reads its own row. Returns ``(S, acc_kv)``."""
    kdec = tl.load(kdec_ptr + (i_h * (C + 1) + L) * C + r)
    cdec = tl.load(chunk_ptr + i_h * (C + 1) + L)
    kd_i8, s_kd = quant_cols(k * kdec[:, None])
    acc_kv = tl.dot(tl.trans(kd_i8), v_i8, out_dtype=tl.int32)
    d_s = (acc_kv.to(tl.float32) * s_kd[:, None]) * s_v[None, :]
    return S * cdec + d_s, acc_kv
