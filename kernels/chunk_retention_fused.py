"""Single-pass quantized chunkwise retention forward (int8 GEMMs, int32 accumulation).

Reproduces :func:`retquant.spec.int_chunk.int_chunk_retention` (default int8 config)
operation for operation. One program per (sequence, head, V block) walks the sequence's chunks
and carries the state ``S`` (``[K, BV]``, fp32) in registers, as fla's ``chunk_h`` does. Per chunk:

* Q (scaled), K per token and V per channel are quantized in the kernel from the fp32/bf16/fp16
  inputs (no pre-pass: the codes never touch memory, and a pre-pass would cost one more read and
  write of Q, K, V);
* ``Q K^T`` (int8 x int8 -> int32), the fused-decay epilogue (or the guarded ``gamma**(a-b)``
  table), causal mask, per-row requantization of the scores, ``P V``;
* ``S`` quantized per column of V for ``Q S`` (``gamma**(a+1)`` row scale);
* ``K~ = K * gamma**(L-1-j)`` quantized per channel, ``K~^T V``, ``S = S * gamma**L + dS``.

V blocking: every per-column scale (V, S) is independent across V blocks, so splitting V over
programs changes no number; ``Q K^T`` and the score requantization do not depend on V and are
recomputed by each V block (cheaper than a round trip of int8 P through memory, and it keeps one
pass). The decay factors are the float32 tables of :func:`retquant.decay.chunk_decay_tables`.
"""

from __future__ import annotations

import triton
import triton.language as tl

from retquant.kernels.chunk_prep import ChunkLaunch, launch_over_v, state_meta
from retquant.kernels.chunk_tile import decayed_scores, decayed_state_update, load_chunk_tiles
from retquant.kernels.quant_int8 import (
    finish_output,
    kernel_output,
    quant_cols,
)


@triton.jit
def chunk_retention_fused_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    o_ptr,
    h0_ptr,
    ht_ptr,
    cu_ptr,
    choff_ptr,
    row_ptr,
    col_ptr,
    mask_ptr,
    inter_ptr,
    kdec_ptr,
    chunk_ptr,
    fused_ptr,
    tqk_ptr,
    tpv_ptr,
    tqs_ptr,
    tkv_ptr,
    scale,
    H,
    K,
    V,
    C: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    USE_H0: tl.constexpr,
    STORE_HT: tl.constexpr,
    TRACE: tl.constexpr,
):
    """Grid ``(cdiv(V, BV), N * H)``; q/k ``[Ttot, H, K]``, v/o ``[Ttot, H, V]``, states
    ``[N, H, K, V]`` fp32, tables ``[H, C]`` (mask ``[H, C, C]``), state-update factors
    ``kdec [H, C+1, C]`` / ``chunk [H, C+1]`` indexed by chunk length."""
    i_v = tl.program_id(0)
    i_nh = tl.program_id(1)
    i_n = i_nh // H
    i_h = i_nh % H
    bos = tl.load(cu_ptr + i_n)
    seq_len = tl.load(cu_ptr + i_n + 1) - bos
    nt = tl.cdiv(seq_len, C)
    ch0 = tl.load(choff_ptr + i_n)

    r = tl.arange(0, C)
    rk = tl.arange(0, BK)
    rv = i_v * BV + tl.arange(0, BV)
    mk = rk < K
    mv = rv < V

    inter = tl.load(inter_ptr + i_h * C + r)

    s_off = (i_n * H + i_h) * K * V + rk[:, None] * V + rv[None, :]
    s_mask = mk[:, None] & mv[None, :]
    if USE_H0:
        S = tl.load(h0_ptr + s_off, mask=s_mask, other=0.0)
    else:
        S = tl.zeros([BK, BV], dtype=tl.float32)

    for i in range(0, nt):
        t0 = bos + i * C
        mt = r < seq_len - i * C
        tok = (t0 + r)[:, None].to(tl.int64)
        q_i8, s_q, k, k_i8, s_k, v_i8, s_v, vo_off, vo_mask = load_chunk_tiles(
            q_ptr, k_ptr, v_ptr, tok, i_h, rk, rv, mt, mk, mv, scale, H, K, V
        )

        # Q K^T and the fused-decay epilogue, scores requantized per row
        acc = tl.dot(q_i8, tl.trans(k_i8), out_dtype=tl.int32)
        p_i8, s_p = decayed_scores(acc, s_q, s_k, row_ptr, col_ptr, mask_ptr, fused_ptr, i_h, r, C)

        # intra-chunk output P V
        acc_pv = tl.dot(p_i8, v_i8, out_dtype=tl.int32)
        o_intra = (acc_pv.to(tl.float32) * s_p[:, None]) * s_v[None, :]

        # inter-chunk output Q S_{i-1}, S quantized per column
        s_i8, s_s = quant_cols(S)
        acc_qs = tl.dot(q_i8, s_i8, out_dtype=tl.int32)
        o_inter = (acc_qs.to(tl.float32) * (s_q * inter)[:, None]) * s_s[None, :]
        o = o_intra + o_inter
        tl.store(o_ptr + vo_off, o.to(o_ptr.dtype.element_ty), mask=vo_mask)

        # state update with K decayed along the reduced axis before quantization
        S, acc_kv = decayed_state_update(
            S,
            k,
            v_i8,
            s_v,
            tl.minimum(seq_len - i * C, C),
            kdec_ptr,
            chunk_ptr,
            i_h,
            r,
            C,
        )

        if TRACE:
            base = (ch0 + i) * H + i_h
            if i_v == 0:
                tl.store(tqk_ptr + base * C * C + r[:, None] * C + r[None, :], acc)
            cv_off = base * C * V + r[:, None] * V + rv[None, :]
            cv_mask = mv[None, :] & (r[:, None] >= 0)
            tl.store(tpv_ptr + cv_off, acc_pv, mask=cv_mask)
            tl.store(tqs_ptr + cv_off, acc_qs, mask=cv_mask)
            tl.store(tkv_ptr + base * K * V + rk[:, None] * V + rv[None, :], acc_kv, mask=s_mask)

    if STORE_HT:
        tl.store(ht_ptr + s_off, S, mask=s_mask)


def _configs():
    # BV=128 spills heavily on sm_90 at K=128 (see bench.compile_sm90).
    return [
        triton.Config({"BV": bv}, num_warps=w, num_stages=s)
        for bv in (16, 32, 64)
        for w in (4, 8)
        for s in (1, 2)
    ]


_tuned_kernel = triton.autotune(configs=_configs(), key=["K", "V"])(chunk_retention_fused_kernel)


def chunk_fused_launch(p: ChunkLaunch, block_v: int | None = None) -> None:
    """Run the single-pass kernel on a prepared :class:`ChunkLaunch` (fills ``p.out`` etc.).

    ``block_v`` fixes the V block; by default the interpreter takes the whole V in one block
    and a GPU autotunes it.
    """
    kout = kernel_output(p.out)
    tr = p.trace or {}
    d = p.tables.dummy
    args = (
        p.q,
        p.k,
        p.v,
        kout,
        d if p.h0 is None else p.h0,
        d if p.final is None else p.final,
        p.tables.cu,
        p.tables.choff,
        p.tables.row,
        p.tables.col,
        p.tables.mask,
        p.tables.inter,
        p.tables.kdec,
        p.tables.chunk,
        p.tables.fused,
        tr.get("acc_qk", d),
        tr.get("acc_pv", d),
        tr.get("acc_qs", d),
        tr.get("acc_kv", d),
        p.scale,
        p.H,
        p.K,
        p.V,
    )
    launch_over_v(
        chunk_retention_fused_kernel, _tuned_kernel, args, state_meta(p), (p.N * p.H,), p, block_v, 64
    )
    finish_output(p.out, kout)
