"""Pass 1 of the split chunk forward: the state recurrence, emitting each chunk's quantized
entering state ``S_{i-1}`` (int8 codes + fp32 per-column scales) for pass 2.

One program per (sequence, head, V block) walks the chunks with ``S`` ``[K, BV]`` in fp32
registers: it quantizes ``S`` per column of V (independent per V block) and stores codes and
scales, then ``K~ = K * gamma**(L-1-j)`` per channel and V per channel (both independent per V
block), ``K~^T V`` (int8 x int8 -> int32) and ``S = S * gamma**L + dS``. Only the cheap state
product runs sequentially; every output product runs chunk-parallel in pass 2
(:mod:`retquant.kernels.chunk_retention_out`), like fla's ``chunk_h`` / ``chunk_o`` split.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from retquant.kernels.chunk_prep import ChunkLaunch, launch_over_v, state_meta
from retquant.kernels.chunk_tile import decayed_state_update
from retquant.kernels.quant_int8 import quant_cols


@triton.jit
def chunk_retention_state_kernel(
    k_ptr,
    v_ptr,
    sq_ptr,
    ss_ptr,
    h0_ptr,
    ht_ptr,
    cu_ptr,
    choff_ptr,
    kdec_ptr,
    chunk_ptr,
    tkv_ptr,
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
    """Grid ``(cdiv(V, BV), N * H)``; writes ``sq [NC, H, K, V]`` int8, ``ss [NC, H, V]``."""
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
    s_off = rk[:, None] * V + rv[None, :]
    s_mask = mk[:, None] & mv[None, :]
    if USE_H0:
        S = tl.load(h0_ptr + (i_n * H + i_h) * K * V + s_off, mask=s_mask, other=0.0)
    else:
        S = tl.zeros([BK, BV], dtype=tl.float32)

    for i in range(0, nt):
        base = (ch0 + i) * H + i_h
        s_i8, s_s = quant_cols(S)
        tl.store(sq_ptr + base.to(tl.int64) * K * V + s_off, s_i8, mask=s_mask)
        tl.store(ss_ptr + base * V + rv, s_s, mask=mv)

        t0 = bos + i * C
        mt = r < seq_len - i * C
        k = tl.load(
            k_ptr + (t0 + r)[:, None].to(tl.int64) * (H * K) + i_h * K + rk[None, :],
            mask=mt[:, None] & mk[None, :],
            other=0.0,
        ).to(tl.float32)
        v = tl.load(
            v_ptr + (t0 + r)[:, None].to(tl.int64) * (H * V) + i_h * V + rv[None, :],
            mask=mt[:, None] & mv[None, :],
            other=0.0,
        ).to(tl.float32)
        v_i8, s_v = quant_cols(v)
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
            tl.store(tkv_ptr + base.to(tl.int64) * K * V + s_off, acc_kv, mask=s_mask)

    if STORE_HT:
        tl.store(ht_ptr + (i_n * H + i_h) * K * V + s_off, S, mask=s_mask)


def _configs():
    # Configurations without register spills on sm_90 at K=128 (see bench.compile_sm90).
    return [
        triton.Config({"BV": bv}, num_warps=w, num_stages=s)
        for bv, w in ((16, 4), (32, 4), (32, 8), (64, 8))
        for s in (1, 2, 3)
    ]


_tuned_kernel = triton.autotune(configs=_configs(), key=["K", "V"])(chunk_retention_state_kernel)


def chunk_state_launch(p: ChunkLaunch, block_v: int | None = None):
    """Run pass 1; returns ``(codes int8 [NC, H, K, V], scales fp32 [NC, H, V])`` of the state
    entering every chunk, and fills ``p.final`` / ``p.trace['acc_kv']`` when requested."""
    dev = p.q.device
    s_codes = torch.empty(p.NC, p.H, p.K, p.V, dtype=torch.int8, device=dev)
    s_scales = torch.empty(p.NC, p.H, p.V, dtype=torch.float32, device=dev)
    d = p.tables.dummy
    args = (
        p.k,
        p.v,
        s_codes,
        s_scales,
        d if p.h0 is None else p.h0,
        d if p.final is None else p.final,
        p.tables.cu,
        p.tables.choff,
        p.tables.kdec,
        p.tables.chunk,
        d if p.trace is None else p.trace["acc_kv"],
        p.H,
        p.K,
        p.V,
    )
    launch_over_v(
        chunk_retention_state_kernel, _tuned_kernel, args, state_meta(p), (p.N * p.H,), p, block_v, 32
    )
    return s_codes, s_scales
