"""Pass 2 of the split chunk forward: every chunk's output, chunk-parallel.

One program per (V block, global chunk, head) quantizes its chunk's Q (scaled) and K per token
and V per channel, computes ``Q K^T`` (int8 x int8 -> int32) with the fused-decay epilogue (or
the guarded ``gamma**(a-b)`` table), the causal mask, per-row requantization of the scores and
``P V``; it loads the entering state's int8 codes and per-column scales written by pass 1
(:mod:`retquant.kernels.chunk_retention_state`) for ``Q S`` with the ``gamma**(a+1)`` row scale.
``Q K^T`` and the score requantization are independent of V and are recomputed per V block.
"""

from __future__ import annotations

import triton
import triton.language as tl

from retquant.kernels.chunk_prep import INT8_DOT_MIN_REDUCED, ChunkLaunch, block, launch_over_v
from retquant.kernels.chunk_tile import decayed_scores, load_chunk_tiles
from retquant.kernels.quant_int8 import (
    finish_output,
    kernel_output,
)


@triton.jit
def chunk_retention_out_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    o_ptr,
    sq_ptr,
    ss_ptr,
    cu_ptr,
    choff_ptr,
    cseq_ptr,
    row_ptr,
    col_ptr,
    mask_ptr,
    inter_ptr,
    fused_ptr,
    tqk_ptr,
    tpv_ptr,
    tqs_ptr,
    scale,
    H,
    K,
    V,
    C: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    TRACE: tl.constexpr,
):
    """Grid ``(cdiv(V, BV), NC, H)``; q/k ``[Ttot, H, K]``, v/o ``[Ttot, H, V]``."""
    i_v = tl.program_id(0)
    i_c = tl.program_id(1)
    i_h = tl.program_id(2)
    i_n = tl.load(cseq_ptr + i_c)
    i = i_c - tl.load(choff_ptr + i_n)
    bos = tl.load(cu_ptr + i_n)
    seq_len = tl.load(cu_ptr + i_n + 1) - bos
    t0 = bos + i * C

    r = tl.arange(0, C)
    rk = tl.arange(0, BK)
    rv = i_v * BV + tl.arange(0, BV)
    mk = rk < K
    mv = rv < V
    mt = r < seq_len - i * C
    tok = (t0 + r)[:, None].to(tl.int64)
    q_i8, s_q, k, k_i8, s_k, v_i8, s_v, vo_off, vo_mask = load_chunk_tiles(
        q_ptr, k_ptr, v_ptr, tok, i_h, rk, rv, mt, mk, mv, scale, H, K, V
    )

    acc = tl.dot(q_i8, tl.trans(k_i8), out_dtype=tl.int32)
    p_i8, s_p = decayed_scores(acc, s_q, s_k, row_ptr, col_ptr, mask_ptr, fused_ptr, i_h, r, C)
    acc_pv = tl.dot(p_i8, v_i8, out_dtype=tl.int32)
    o_intra = (acc_pv.to(tl.float32) * s_p[:, None]) * s_v[None, :]

    base = i_c * H + i_h
    s_off = base.to(tl.int64) * K * V + rk[:, None] * V + rv[None, :]
    s_i8 = tl.load(sq_ptr + s_off, mask=mk[:, None] & mv[None, :], other=0)
    s_s = tl.load(ss_ptr + base * V + rv, mask=mv, other=1.0)
    acc_qs = tl.dot(q_i8, s_i8, out_dtype=tl.int32)
    inter = tl.load(inter_ptr + i_h * C + r)
    o_inter = (acc_qs.to(tl.float32) * (s_q * inter)[:, None]) * s_s[None, :]
    o = o_intra + o_inter
    tl.store(o_ptr + vo_off, o.to(o_ptr.dtype.element_ty), mask=vo_mask)

    if TRACE:
        if i_v == 0:
            tl.store(tqk_ptr + base * C * C + r[:, None] * C + r[None, :], acc)
        cv_off = base * C * V + r[:, None] * V + rv[None, :]
        cv_mask = mv[None, :] & (r[:, None] >= 0)
        tl.store(tpv_ptr + cv_off, acc_pv, mask=cv_mask)
        tl.store(tqs_ptr + cv_off, acc_qs, mask=cv_mask)


def _configs():
    # No loop, so num_stages does not matter; BV=128 spills heavily on sm_90 (bench.compile_sm90).
    return [triton.Config({"BV": bv}, num_warps=w) for bv, w in ((32, 4), (32, 8), (64, 8))]


_tuned_kernel = triton.autotune(configs=_configs(), key=["K", "V"])(chunk_retention_out_kernel)


def chunk_out_launch(p: ChunkLaunch, s_codes, s_scales, block_v: int | None = None) -> None:
    """Run pass 2 on a prepared :class:`ChunkLaunch` and pass 1's state codes and scales;
    fills ``p.out`` and ``p.trace['acc_qk' | 'acc_pv' | 'acc_qs']`` when tracing."""
    kout = kernel_output(p.out)
    tr = p.trace or {}
    d = p.tables.dummy
    args = (
        p.q,
        p.k,
        p.v,
        kout,
        s_codes,
        s_scales,
        p.tables.cu,
        p.tables.choff,
        p.tables.chunk_seq,
        p.tables.row,
        p.tables.col,
        p.tables.mask,
        p.tables.inter,
        p.tables.fused,
        tr.get("acc_qk", d),
        tr.get("acc_pv", d),
        tr.get("acc_qs", d),
        p.scale,
        p.H,
        p.K,
        p.V,
    )
    meta = {
        "C": p.C,
        "BK": block(p.K, INT8_DOT_MIN_REDUCED),
        "TRACE": p.trace is not None,
        "enable_fp_fusion": False,
    }
    launch_over_v(chunk_retention_out_kernel, _tuned_kernel, args, meta, (p.NC, p.H), p, block_v, 64)
    finish_output(p.out, kout)
