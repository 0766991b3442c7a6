"""Quantized chunkwise retention forward (int8 operands, int32 accumulation): kernel + launcher.

Reproduces :func:`retquant.ops.retention.int_chunk.int_chunk_retention` (default int8 config)
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

import torch
import triton
import triton.language as tl
from retquant.kernels.quant_int8 import (
    finish_output,
    interpreted,
    kernel_output,
    quant_cols,
    quant_rows,
)

from retquant.constants import CHUNK_SIZE
from retquant.decay import chunk_decay_tables


@triton.jit
def chunk_retention_fwd_kernel(
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
    kdec_last_ptr,
    chunk_last_ptr,
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
    ``[N, H, K, V]`` fp32, tables ``[H, C]`` (mask ``[H, C, C]``), last-chunk tables
    ``[N, H, C]``."""
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
    causal = r[:, None] >= r[None, :]

    row = tl.load(row_ptr + i_h * C + r)
    col = tl.load(col_ptr + i_h * C + r)
    inter = tl.load(inter_ptr + i_h * C + r)
    fused = tl.load(fused_ptr + i_h)

    s_off = (i_n * H + i_h) * K * V + rk[:, None] * V + rv[None, :]
    s_mask = mk[:, None] & mv[None, :]
    if USE_H0:
        S = tl.load(h0_ptr + s_off, mask=s_mask, other=0.0)
    else:
        S = tl.zeros([BK, BV], dtype=tl.float32)

    for i in range(0, nt):
        t0 = bos + i * C
        mt = r < seq_len - i * C
        qk_off = (t0 + r)[:, None] * (H * K) + i_h * K + rk[None, :]
        qk_mask = mt[:, None] & mk[None, :]
        vo_off = (t0 + r)[:, None] * (H * V) + i_h * V + rv[None, :]
        vo_mask = mt[:, None] & mv[None, :]
        q = tl.load(q_ptr + qk_off, mask=qk_mask, other=0.0).to(tl.float32) * scale
        k = tl.load(k_ptr + qk_off, mask=qk_mask, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + vo_off, mask=vo_mask, other=0.0).to(tl.float32)

        q_i8, s_q = quant_rows(q)
        k_i8, s_k = quant_rows(k)
        v_i8, s_v = quant_cols(v)

        # Q K^T and the fused-decay epilogue
        acc = tl.dot(q_i8, tl.trans(k_i8), out_dtype=tl.int32)
        accf = acc.to(tl.float32)
        if fused != 0:
            p = (accf * (s_q * row)[:, None]) * (s_k * col)[None, :]
        else:
            dmask = tl.load(mask_ptr + i_h * C * C + r[:, None] * C + r[None, :])
            p = ((accf * s_q[:, None]) * s_k[None, :]) * dmask
        p = tl.where(causal, p, 0.0)
        p_i8, s_p = quant_rows(p)

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
        if i == nt - 1:
            kdec = tl.load(kdec_last_ptr + (i_n * H + i_h) * C + r)
            cdec = tl.load(chunk_last_ptr + i_n * H + i_h)
        else:
            kdec = tl.load(kdec_ptr + i_h * C + r)
            cdec = tl.load(chunk_ptr + i_h)
        kd_i8, s_kd = quant_cols(k * kdec[:, None])
        acc_kv = tl.dot(tl.trans(kd_i8), v_i8, out_dtype=tl.int32)
        d_s = (acc_kv.to(tl.float32) * s_kd[:, None]) * s_v[None, :]
        S = S * cdec + d_s

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
    return [
        triton.Config({"BV": bv}, num_warps=w, num_stages=s)
        for bv in (32, 64, 128)
        for w in (4, 8)
        for s in (1, 2)
    ]


_tuned_kernel = triton.autotune(configs=_configs(), key=["K", "V"])(chunk_retention_fwd_kernel)


def _block(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def _decay_inputs(g_gamma, lengths, c, device):
    """Full-chunk tables and, per sequence, the tables of its last (possibly short) chunk."""
    g = g_gamma.to(device=device, dtype=torch.float64)
    full = chunk_decay_tables(g, c, c)
    by_len = {}
    kdec_last, chunk_last = [], []
    for n in lengths:
        last = n - (-(-n // c) - 1) * c
        if last not in by_len:
            t = chunk_decay_tables(g, last, c)
            kd = torch.zeros(g.numel(), c, dtype=torch.float32, device=device)
            kd[:, :last] = t.kdec
            by_len[last] = (kd, t.chunk)
        kdec_last.append(by_len[last][0])
        chunk_last.append(by_len[last][1])
    return full, torch.stack(kdec_last).contiguous(), torch.stack(chunk_last).contiguous()


def chunk_retention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g_gamma: torch.Tensor,
    scale: float,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    final_out: torch.Tensor | None = None,
    trace: bool = False,
    chunk_size: int = CHUNK_SIZE,
    block_v: int | None = None,
):
    """Launch the kernel on ``[B, T, H, *]`` inputs (``B == 1`` with ``cu_seqlens``).

    Returns ``(o in q's dtype [B, T, H, V], final fp32 [N, H, K, V] or None, trace)`` where
    ``trace`` is ``None`` or a dict of int32 accumulators ``acc_qk [NC, H, C, C]``, ``acc_pv``,
    ``acc_qs [NC, H, C, V]``, ``acc_kv [NC, H, K, V]`` over the ``NC`` chunks of all sequences
    (sequence-major). ``out``/``final_out`` are optional preallocated buffers the kernel fills.
    ``block_v`` fixes the V block (a power of two >= 16) instead of the default (whole V in
    the interpreter, autotuned on a GPU).
    """
    if block_v is not None and (block_v < 16 or block_v & (block_v - 1)):
        raise ValueError(f"block_v must be a power of two >= 16, got {block_v}")
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"expected q, k [B, T, H, K] and v [B, T, H, V]; got {list(q.shape)}, "
            f"{list(k.shape)}, {list(v.shape)}"
        )
    B, T, H, K = q.shape
    V = v.shape[-1]
    dev = q.device
    if cu_seqlens is None:
        lengths = [T] * B
    else:
        if B != 1:
            raise ValueError(f"with cu_seqlens the batch size must be 1, got B={B}")
        bounds = cu_seqlens.tolist()
        lengths = [e - s for s, e in zip(bounds[:-1], bounds[1:], strict=True)]
    N = len(lengths)
    cu = torch.tensor([0] + lengths, dtype=torch.int64).cumsum(0).to(device=dev, dtype=torch.int32)
    nchunks = [-(-n // chunk_size) for n in lengths]
    choff = torch.tensor([0] + nchunks[:-1], dtype=torch.int64).cumsum(0)
    choff = choff.to(device=dev, dtype=torch.int32)
    full, kdec_last, chunk_last = _decay_inputs(g_gamma, lengths, chunk_size, dev)

    q, k, v = (x.contiguous() for x in (q, k, v))
    if out is None:
        out = torch.empty(B, T, H, V, dtype=q.dtype, device=dev)
    if output_final_state and final_out is None:
        final_out = torch.empty(N, H, K, V, dtype=torch.float32, device=dev)
    h0 = None if initial_state is None else initial_state.to(torch.float32).contiguous()
    nc = sum(nchunks) if trace else 1
    i32 = {"dtype": torch.int32, "device": dev}
    tr = {
        "acc_qk": torch.empty(nc, H, chunk_size, chunk_size, **i32),
        "acc_pv": torch.empty(nc, H, chunk_size, V, **i32),
        "acc_qs": torch.empty(nc, H, chunk_size, V, **i32),
        "acc_kv": torch.empty(nc, H, K, V, **i32),
    }
    kout = kernel_output(out)
    dummy = torch.empty(1, dtype=torch.float32, device=dev)
    args = (
        q,
        k,
        v,
        kout,
        dummy if h0 is None else h0,
        final_out if output_final_state else dummy,
        cu,
        choff,
        full.row.contiguous(),
        full.col.contiguous(),
        full.mask.contiguous(),
        full.inter.contiguous(),
        full.kdec.contiguous(),
        full.chunk.contiguous(),
        full.fused.to(device=dev, dtype=torch.int32).contiguous(),
        kdec_last,
        chunk_last,
        tr["acc_qk"],
        tr["acc_pv"],
        tr["acc_qs"],
        tr["acc_kv"],
        float(torch.tensor(scale, dtype=torch.float32)),
        H,
        K,
        V,
    )
    meta = {
        "C": chunk_size,
        "BK": _block(K),
        "USE_H0": h0 is not None,
        "STORE_HT": output_final_state,
        "TRACE": trace,
        "enable_fp_fusion": False,
    }
    if block_v is not None or interpreted() or trace:
        bv = block_v or (_block(V) if interpreted() else min(_block(V), 64))
        chunk_retention_fwd_kernel[(triton.cdiv(V, bv), N * H)](*args, BV=bv, **meta)
    else:
        grid = lambda m: (triton.cdiv(V, m["BV"]), N * H)  # noqa: E731
        _tuned_kernel[grid](*args, **meta)
    finish_output(out, kout)
    return out, (final_out if output_final_state else None), (tr if trace else None)
