"""The exact integer recurrent form (one token per step): the decode-step specification.

Per (batch, head) and step t, with q already scaled:

    q_t, k_t, v_t quantized per token (specs ``q``, ``k``, ``v``: their bits, symmetry, rounding
    and static range; a decode step sees one token, so each token is its own group)
    S_t = S_{t-1} * gamma + (k_int v_int^T) * (s_k * s_v)      float32 state, exact int product
    S_t quantized per column (spec ``state``)
    o_t = (q_int . S_int) * s_q * s_S[v]                        int32 accumulate over K

The state is carried in float32; only the copy entering ``q . S`` is quantized. Inputs are
range-checked first, as in :mod:`retquant.spec.int_chunk` (:func:`retquant.validate.check_quant_inputs`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from retquant.decay import step_gamma
from retquant.quant.config import RetentionQuantConfig
from retquant.quant.primitives import centered, compute_qparams, quantize
from retquant.quant.ranges import max_centered_magnitude
from retquant.quant.spec import Granularity
from retquant.spec.int_gemm import int_gemm
from retquant.validate import check_quant_inputs

_STATE_DIMS = {Granularity.CHANNEL: (2,), Granularity.BLOCK: (2, 3)}


@dataclass
class IntRecurrentTrace:
    """Per-token codes ``[B, T, H, D]`` with their scales and zero points ``[B, T, H, 1]`` of q
    (scaled), k and v: the quantized operands a step multiplied (for the backward)."""

    q_codes: torch.Tensor
    q_scale: torch.Tensor
    q_zero: torch.Tensor
    k_codes: torch.Tensor
    k_scale: torch.Tensor
    k_zero: torch.Tensor
    v_codes: torch.Tensor
    v_scale: torch.Tensor
    v_zero: torch.Tensor


def _per_token(x, spec, generator):
    spec = replace(spec, granularity=Granularity.TOKEN)
    scale, zero = compute_qparams(x, spec, (-1,))
    return quantize(x, spec, scale, zero, generator), scale, zero


def int_recurrent_retention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g_gamma: torch.Tensor,
    scale: float,
    config: RetentionQuantConfig,
    initial_state: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    carry_quantized_state: bool = False,
    trace: bool = False,
):
    """Quantized recurrent retention on dense ``[B, T, H, *]``; returns ``(o f32, final f32)``.

    ``carry_quantized_state=True`` is the studied alternative, not the spec the kernels follow:
    the state carried to the next token is the per-column quantized copy (dequantized), as a
    kernel keeping an int8 state between tokens would (``bench/decode_state.py`` compares both).
    ``trace=True`` returns ``(o, final, IntRecurrentTrace)``.

    Example:
        >>> from retquant.decay import default_g_gamma
        >>> q = k = torch.randn(1, 3, 2, 16); v = torch.randn(1, 3, 2, 8)
        >>> o, s = int_recurrent_retention(q, k, v, default_g_gamma(2), 0.25, RetentionQuantConfig())
        >>> o.shape
        torch.Size([1, 3, 2, 8])
    """
    check_quant_inputs(q, k, v, initial_state, scale)
    B, T, H, K = q.shape
    V = v.shape[-1]
    gamma = step_gamma(g_gamma).to(q.device).view(1, H, 1, 1)
    qc, sq, zq = _per_token(q.float() * scale, config.q, generator)  # [B, T, H, K], [B, T, H, 1]
    kc, sk, zk = _per_token(k.float(), config.k, generator)
    vc, sv, zv = _per_token(v.float(), config.v, generator)
    qi, ki, vi = centered(qc, zq), centered(kc, zk), centered(vc, zv)
    bq = max_centered_magnitude(config.q.bits, config.q.symmetric)
    bs = max_centered_magnitude(config.state.bits, config.state.symmetric)
    S = (
        torch.zeros(B, H, K, V, dtype=torch.float32, device=q.device)
        if initial_state is None
        else initial_state.float().clone()
    )
    outs = []
    for t in range(T):
        # exact int32 product, then one float32 rounding (exact for 8-bit codes: < 2**24)
        outer = (ki[:, t, :, :, None] * vi[:, t, :, None, :]).float()
        S = S * gamma + outer * (sk[:, t, :, :, None] * sv[:, t, :, None, :])
        s_scale, s_zero = compute_qparams(S, config.state, _STATE_DIMS[config.state.granularity])
        s_int = centered(quantize(S, config.state, s_scale, s_zero, generator), s_zero)
        acc = int_gemm(qi[:, t, :, None, :], s_int, bq, bs)[:, :, 0]  # [B, H, V]
        outs.append((acc.float() * sq[:, t]) * s_scale[:, :, 0])
        if carry_quantized_state:
            S = s_int.float() * s_scale  # the int8 copy becomes the state
    o = torch.stack(outs, dim=1)
    if trace:
        return o, S, IntRecurrentTrace(qc, sq, zq, kc, sk, zk, vc, sv, zv)
    return o, S
