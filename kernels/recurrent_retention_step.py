"""Quantized recurrent retention (decode: T = 1 or a few tokens): kernel + launcher.

Reproduces :func:`retquant.spec.int_recurrent.int_recurrent_retention` (default int8
config). One program per (sequence, head, V block) walks its tokens with the fp32 state in
registers. Per token: q (scaled), k, v quantized per token; ``S = S * gamma + (k_int v_int^T) *
(s_k * s_v)``; ``S`` quantized per column for the output ``o = (q_int . S_int) * s_q * s_S``.
V may be split across programs (each reads all of v for its per-token scale). The products are
small (a K x V outer product and a K-long reduction per column), so they use exact int32
elementwise products and a sum instead of ``tl.dot``.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from retquant.decay import decay_key, step_gamma
from retquant.kernels.chunk_prep import (
    DEVICE_DECAY_CACHE_SIZE,
    block,
    check_block_v,
    sequence_lengths,
    token_offsets,
)
from retquant.kernels.quant_int8 import (
    finish_output,
    int8_codes,
    int8_scale,
    interpreted,
    kernel_output,
    quant_cols,
)


@triton.jit
def recurrent_retention_step_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    o_ptr,
    h0_ptr,
    ht_ptr,
    cu_ptr,
    gamma_ptr,
    scale,
    H,
    K,
    V,
    BK: tl.constexpr,
    BVF: tl.constexpr,
    BV: tl.constexpr,
    USE_H0: tl.constexpr,
    STORE_HT: tl.constexpr,
):
    """Grid ``(cdiv(V, BV), N * H)``; q/k ``[Ttot, H, K]``, v/o ``[Ttot, H, V]``, states
    ``[N, H, K, V]``. ``BVF`` covers all of V (for v's per-token scale), ``BV`` is this
    program's block of state columns."""
    i_v = tl.program_id(0)
    i_nh = tl.program_id(1)
    i_n = i_nh // H
    i_h = i_nh % H
    bos = tl.load(cu_ptr + i_n)
    seq_len = tl.load(cu_ptr + i_n + 1) - bos
    gamma = tl.load(gamma_ptr + i_h)

    rk = tl.arange(0, BK)
    rvf = tl.arange(0, BVF)
    rv = i_v * BV + tl.arange(0, BV)
    mk = rk < K
    mv = rv < V
    s_off = (i_n * H + i_h) * K * V + rk[:, None] * V + rv[None, :]
    s_mask = mk[:, None] & mv[None, :]
    if USE_H0:
        S = tl.load(h0_ptr + s_off, mask=s_mask, other=0.0)
    else:
        S = tl.zeros([BK, BV], dtype=tl.float32)

    for t in range(0, seq_len):
        tok = (bos + t).to(tl.int64)
        q = tl.load(q_ptr + tok * H * K + i_h * K + rk, mask=mk, other=0.0).to(tl.float32) * scale
        k = tl.load(k_ptr + tok * H * K + i_h * K + rk, mask=mk, other=0.0).to(tl.float32)
        v_all = tl.load(v_ptr + tok * H * V + i_h * V + rvf, mask=rvf < V, other=0.0)
        v = tl.load(v_ptr + tok * H * V + i_h * V + rv, mask=mv, other=0.0).to(tl.float32)
        s_q = int8_scale(tl.max(tl.abs(q), axis=0))
        s_k = int8_scale(tl.max(tl.abs(k), axis=0))
        s_v = int8_scale(tl.max(tl.abs(v_all.to(tl.float32)), axis=0))
        q_i = int8_codes(q, tl.full([BK], 0.0, tl.float32) + s_q).to(tl.int32)
        k_i = int8_codes(k, tl.full([BK], 0.0, tl.float32) + s_k).to(tl.int32)
        v_i = int8_codes(v, tl.full([BV], 0.0, tl.float32) + s_v).to(tl.int32)

        outer = (k_i[:, None] * v_i[None, :]).to(tl.float32)
        S = S * gamma + outer * (s_k * s_v)
        st_i8, s_s = quant_cols(S)
        acc = tl.sum(q_i[:, None] * st_i8.to(tl.int32), axis=0)
        o = (acc.to(tl.float32) * s_q) * s_s
        tl.store(o_ptr + tok * H * V + i_h * V + rv, o.to(o_ptr.dtype.element_ty), mask=mv)

    if STORE_HT:
        tl.store(ht_ptr + s_off, S, mask=s_mask)


def _configs():
    return [triton.Config({"BV": bv}, num_warps=w) for bv in (16, 32, 64) for w in (1, 2, 4)]


_tuned_kernel = triton.autotune(configs=_configs(), key=["K", "V"])(recurrent_retention_step_kernel)


@functools.lru_cache(maxsize=DEVICE_DECAY_CACHE_SIZE)
def _gamma_on(g: tuple, device: torch.device) -> torch.Tensor:
    """The spec's per-head gamma on ``device``; cached with the token offsets (a decode step is
    short enough that building these each call would dominate it on a GPU)."""
    return step_gamma(torch.tensor(g, dtype=torch.float64)).to(device)


def recurrent_retention_fwd(
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
    block_v: int | None = None,
):
    """Launch the decode kernel on ``[B, T, H, *]`` (``B == 1`` with ``cu_seqlens``).

    Returns ``(o in q's dtype [B, T, H, V], final fp32 [N, H, K, V] or None)``;
    ``out``/``final_out`` are optional preallocated buffers the kernel fills. ``block_v``
    fixes the block of state columns per program (a power of two >= 16; default: all of V in
    the interpreter, autotuned on a GPU). Every V block reads all of v for its per-token scale;
    the state's per-column scales are independent per block, so blocking changes no number.
    """
    check_block_v(block_v)
    lengths = sequence_lengths(q, k, v, cu_seqlens)
    B, T, H, K = q.shape
    V = v.shape[-1]
    dev = q.device
    N = len(lengths)
    cu, dummy = token_offsets(tuple(lengths), dev)
    gamma = _gamma_on(decay_key(g_gamma), dev)

    q, k, v = (x.contiguous() for x in (q, k, v))
    if out is None:
        out = torch.empty(B, T, H, V, dtype=q.dtype, device=dev)
    if output_final_state and final_out is None:
        final_out = torch.empty(N, H, K, V, dtype=torch.float32, device=dev)
    h0 = None if initial_state is None else initial_state.to(torch.float32).contiguous()
    kout = kernel_output(out)
    args = (
        q,
        k,
        v,
        kout,
        dummy if h0 is None else h0,
        final_out if output_final_state else dummy,
        cu,
        gamma,
        float(torch.tensor(scale, dtype=torch.float32)),
        H,
        K,
        V,
    )
    meta = {
        "BK": block(K),
        "BVF": block(V),
        "USE_H0": h0 is not None,
        "STORE_HT": output_final_state,
        "enable_fp_fusion": False,
    }
    if block_v is not None or interpreted():
        bv = block_v or block(V)
        recurrent_retention_step_kernel[(triton.cdiv(V, bv), N * H)](*args, BV=bv, **meta)
    else:
        grid = lambda m: (triton.cdiv(V, m["BV"]), N * H)  # noqa: E731
        _tuned_kernel[grid](*args, **meta)
    finish_output(out, kout)
    return out, (final_out if output_final_state else None)
