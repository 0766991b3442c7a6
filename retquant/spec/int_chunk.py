"""The exact integer chunkwise algorithm: the bit-level specification the kernels reproduce.

Per (batch, head) and chunk i of L <= C tokens (local index a, b, j), with q already scaled:

1. ``Q`` and ``K`` quantized per token (spec ``q``, ``k``), ``V`` per channel of the chunk
   (spec ``v``).
2. ``acc = Q_int K_int^T`` (int32; reduced over features). Fused-decay epilogue:
   ``P[a,b] = (acc * (s_q[a] * gamma**a)) * (s_k[b] * gamma**-b)`` for a >= b, else 0. Where
   ``(C-1)|log2 gamma| > FUSED_DECAY_MAX_LOG2`` the factored form would overflow or lose
   precision, and the guard computes ``((acc * s_q[a]) * s_k[b]) * gamma**(a-b)`` instead.
   With ``smooth_k`` K is replaced by ``K - mean_chunk(K)`` and ``(q_a . k_mean) gamma**(a-b)``
   is added to P, which makes the smoothing exact.
3. ``P`` requantized per row (spec ``score``); ``O_intra = (P_int V_int) * s_p[a] * s_v[v]``.
4. ``S_{i-1}`` (float32, carried) quantized per column (spec ``state``);
   ``O_inter = (Q_int S_int) * (s_q[a] * gamma**(a+1)) * s_S[v]``.
5. ``K~ = K * gamma**(L-1-j)`` (the decay runs along the reduced axis, so it is applied before
   quantizing), quantized per channel (spec ``k_state``);
   ``S_i = S_{i-1} * gamma**L + (K~_int^T V_int) * s_k~[k] * s_v[v]`` in float32.

Range: q, k, v and initial_state are checked first (:func:`retquant.validate.check_quant_inputs`):
finite, ``|q * scale|, |k|, |v| < 127 * 2**25`` and ``|initial_state| < 2**100``, else
``ValueError``. Within that range no float32 intermediate overflows (the scores of step 2 stay
below ``K * 2**88``, the state below ``2**101``), so a finite true output is finite and an output
whose quantized value exceeds float32's range is ``+-inf``; beyond it step 2's
``acc * s_q * row * s_k * col`` could overflow while the true output is finite (e.g.
``q, k ~ 1e19``, ``v ~ 1e-20``), which is why such inputs are rejected (see
:mod:`retquant.validate`).

Every float step is one correctly rounded float32 operation in the order written (no fused
multiply-add), the decay factors come from :func:`retquant.decay.chunk_decay_tables`, and the
integer GEMMs are exact, so a kernel following the same order produces the same integers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from retquant.constants import CHUNK_SIZE
from retquant.decay import chunk_decay_tables
from retquant.quant.config import RetentionQuantConfig
from retquant.quant.primitives import centered, compute_qparams, quantize
from retquant.quant.ranges import max_centered_magnitude
from retquant.quant.spec import Granularity, QuantSpec
from retquant.spec.int_gemm import int_gemm
from retquant.validate import check_quant_inputs

# Dims of a [B, H, N, rows, cols] chunked tensor that share one scale, per granularity.
_REDUCE_DIMS = {
    Granularity.TENSOR: (0, 1, 2, 3, 4),
    Granularity.HEAD: (2, 3, 4),
    Granularity.BLOCK: (3, 4),
    Granularity.TOKEN: (4,),
    Granularity.CHANNEL: (3,),
}


@dataclass
class IntChunkTrace:
    """Integer intermediates of one call (``[B, H, N, ...]``), for tests and kernel checks."""

    q_codes: torch.Tensor
    k_codes: torch.Tensor
    v_codes: torch.Tensor
    acc_qk: torch.Tensor
    score_codes: torch.Tensor
    acc_pv: torch.Tensor
    acc_qs: torch.Tensor
    k_state_codes: torch.Tensor
    acc_kv: torch.Tensor
    # scales and zero points of q, k (the scores' operand), v, shaped to broadcast against the
    # codes; k_mean: the chunk mean subtracted from k with smooth_k (else None). Together with
    # the codes they give the dequantized operands the backward is evaluated at.
    q_scale: torch.Tensor
    q_zero: torch.Tensor
    k_scale: torch.Tensor
    k_zero: torch.Tensor
    v_scale: torch.Tensor
    v_zero: torch.Tensor
    k_mean: torch.Tensor | None


@dataclass
class _Quantized:
    ints: torch.Tensor  # centered codes, int32
    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    bound: int


def _quant(x, spec: QuantSpec, generator) -> _Quantized:
    scale, zero = compute_qparams(x, spec, _REDUCE_DIMS[spec.granularity])
    codes = quantize(x, spec, scale, zero, generator)
    bound = max_centered_magnitude(spec.bits, spec.symmetric)
    return _Quantized(centered(codes, zero), codes, scale, zero, bound)


def _gemm(a: _Quantized, b: _Quantized, transpose_a=False, transpose_b=False):
    x = a.ints.transpose(-1, -2) if transpose_a else a.ints
    y = b.ints.transpose(-1, -2) if transpose_b else b.ints
    return int_gemm(x, y, a.bound, b.bound)


def _chunked(x: torch.Tensor, n: int, c: int) -> torch.Tensor:
    """[B, T, H, D] -> zero-padded [B, H, n, c, D] float32."""
    B, T, H, D = x.shape
    xh = x.transpose(1, 2).float()
    if n * c != T:
        xh = torch.nn.functional.pad(xh, (0, 0, 0, n * c - T))
    return xh.reshape(B, H, n, c, D)


def _per_chunk_tables(g_gamma, T, n, c, device):
    """Decay tables for the n chunks (the last one may be short), stacked as [H, n, ...]."""
    full = chunk_decay_tables(g_gamma, c, c)
    last_len = T - (n - 1) * c
    last = chunk_decay_tables(g_gamma, last_len, c)
    kdec = full.kdec[:, None, :].repeat(1, n, 1)
    kdec[:, -1] = 0.0
    kdec[:, -1, :last_len] = last.kdec
    chunk = full.chunk[:, None].repeat(1, n)
    chunk[:, -1] = last.chunk
    return full, kdec.to(device), chunk.to(device)


def int_chunk_retention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g_gamma: torch.Tensor,
    scale: float,
    config: RetentionQuantConfig,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = CHUNK_SIZE,
    generator: torch.Generator | None = None,
    trace: bool = False,
):
    """Quantized chunkwise retention on dense ``[B, T, H, *]`` inputs.

    Returns ``(o float32 [B, T, H, V], final_state float32 [B, H, K, V], trace or None)``.

    Example:
        >>> q = k = torch.randn(1, 70, 2, 16); v = torch.randn(1, 70, 2, 8)
        >>> from retquant.decay import default_g_gamma
        >>> o, s, _ = int_chunk_retention(q, k, v, default_g_gamma(2), 0.25, RetentionQuantConfig())
        >>> o.shape, s.shape
        (torch.Size([1, 70, 2, 8]), torch.Size([1, 2, 16, 8]))
    """
    check_quant_inputs(q, k, v, initial_state, scale)
    B, T, H, K = q.shape
    V = v.shape[-1]
    c = chunk_size
    n = -(-T // c)
    dev = q.device
    full, kdec, chunk_decay = _per_chunk_tables(g_gamma.to(dev), T, n, c, dev)
    fused = full.fused.to(dev).view(1, H, 1, 1, 1)

    qc = _chunked(q.float() * scale, n, c)
    kc = _chunked(k, n, c)
    vc = _chunked(v, n, c)

    # --- Q K^T with the fused-decay epilogue ---------------------------------------------
    Q = _quant(qc, config.q, generator)
    k_mean = None
    if config.smooth_k:
        counts = torch.full((n,), float(c), device=dev)
        counts[-1] = T - (n - 1) * c
        k_mean = kc.sum(dim=3, keepdim=True) / counts.view(1, 1, n, 1, 1)
        valid = (torch.arange(n * c, device=dev) < T).view(1, 1, n, c, 1)
        k_for_scores = torch.where(valid, kc - k_mean, 0.0)
    else:
        k_for_scores = kc
    Kq = _quant(k_for_scores, config.k, generator)
    acc_qk = _gemm(Q, Kq, transpose_b=True)  # [B, H, n, c, c]
    acc_f = acc_qk.float()
    s_q = Q.scale.expand(B, H, n, c, 1)
    s_k = Kq.scale.expand(B, H, n, c, 1).transpose(-1, -2)
    row = full.row.to(dev).view(1, H, 1, c, 1)
    col = full.col.to(dev).view(1, H, 1, 1, c)
    mask = full.mask.to(dev).view(1, H, 1, c, c)
    p_fused = (acc_f * (s_q * row)) * (s_k * col)
    p_guard = ((acc_f * s_q) * s_k) * mask
    causal = torch.ones(c, c, dtype=torch.bool, device=dev).tril()
    P = torch.where(causal, torch.where(fused, p_fused, p_guard), 0.0)
    if config.smooth_k:
        P = P + (qc * k_mean).sum(-1, keepdim=True) * mask

    # --- P V ---------------------------------------------------------------------------
    Pq = _quant(P, config.score, generator)
    Vq = _quant(vc, config.v, generator)
    acc_pv = _gemm(Pq, Vq)  # [B, H, n, c, V]
    o_intra = (acc_pv.float() * Pq.scale) * Vq.scale

    # --- state: per-chunk updates, the float32 recurrence, then Q S -----------------------
    Kd = _quant(kc * kdec.view(1, H, n, c, 1), config.k_state, generator)
    acc_kv = _gemm(Kd, Vq, transpose_a=True)  # [B, H, n, K, V]
    d_state = (acc_kv.float() * Kd.scale.transpose(-1, -2)) * Vq.scale
    S = (
        torch.zeros(B, H, K, V, dtype=torch.float32, device=dev)
        if initial_state is None
        else initial_state.float().clone()
    )
    prev = []
    for i in range(n):
        prev.append(S)
        S = S * chunk_decay[:, i].view(1, H, 1, 1) + d_state[:, :, i]
    Sq = _quant(torch.stack(prev, dim=2), config.state, generator)
    acc_qs = _gemm(Q, Sq)  # [B, H, n, c, V]
    inter = full.inter.to(dev).view(1, H, 1, c, 1)
    o_inter = (acc_qs.float() * (s_q * inter)) * Sq.scale

    o = (o_intra + o_inter).reshape(B, H, n * c, V)[:, :, :T].transpose(1, 2)
    tr = None
    if trace:
        tr = IntChunkTrace(
            q_codes=Q.codes,
            k_codes=Kq.codes,
            v_codes=Vq.codes,
            acc_qk=acc_qk,
            score_codes=Pq.codes,
            acc_pv=acc_pv,
            acc_qs=acc_qs,
            k_state_codes=Kd.codes,
            acc_kv=acc_kv,
            q_scale=Q.scale,
            q_zero=Q.zero,
            k_scale=Kq.scale,
            k_zero=Kq.zero,
            v_scale=Vq.scale,
            v_zero=Vq.zero,
            k_mean=k_mean,
        )
    return o, S, tr
