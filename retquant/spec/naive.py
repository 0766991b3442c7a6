"""The float64 specification of multi-scale retention in its three forms.

Inputs use fla's layout: ``q, k`` of shape ``[B, T, H, K]``, ``v`` of ``[B, T, H, V]``, states
``[B, H, K, V]``; ``g_gamma`` is log(gamma) per head. Everything is computed in float64 and
returned in float64. ``scale`` multiplies q before anything else.

    parallel:   o_n = sum_{m<=n} gamma**(n-m) (q_n . k_m) v_m + gamma**(n+1) S_0^T q_n
    recurrent:  S_n = gamma S_{n-1} + k_n v_n^T,  o_n = S_n^T q_n
    chunkwise:  O_i = (Q_i K_i^T * D) V_i + diag(gamma**(j+1)) Q_i S_{i-1}
                S_i = gamma**C S_{i-1} + K_i^T diag(gamma**(C-1-j)) V_i
"""

from __future__ import annotations

import torch

from retquant.constants import CHUNK_SIZE


def _bhtd(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2).to(torch.float64)


def _state0(initial_state, q, k, v):
    B, T, H, K = q.shape
    if initial_state is None:
        return torch.zeros(B, H, K, v.shape[-1], dtype=torch.float64, device=q.device)
    return initial_state.to(torch.float64)


def naive_parallel_retention(q, k, v, g_gamma, scale, initial_state=None):
    """Parallel form. Returns ``(o [B,T,H,V], final_state [B,H,K,V], attn [B,H,T,T])``."""
    T = q.shape[1]
    qh, kh, vh = _bhtd(q) * scale, _bhtd(k), _bhtd(v)
    g = g_gamma.to(torch.float64).view(1, -1, 1, 1)
    n = torch.arange(T, dtype=torch.float64, device=q.device)
    diff = n[:, None] - n[None, :]
    decay = torch.where(diff >= 0, torch.exp(g * diff.clamp(min=0)), 0.0)  # [1,H,T,T]
    attn = (qh @ kh.transpose(-1, -2)) * decay
    o = attn @ vh
    s0 = _state0(initial_state, q, k, v)
    o = o + torch.exp(g * (n[:, None] + 1)) * (qh @ s0)
    tail = torch.exp(g * (T - 1 - n[:, None]))  # [1,H,T,1]
    final = torch.exp(g * T) * s0 + kh.transpose(-1, -2) @ (tail * vh)
    return o.transpose(1, 2), final, attn


def naive_recurrent_retention(q, k, v, g_gamma, scale, initial_state=None):
    """Recurrent form, one token at a time. Returns ``(o [B,T,H,V], final_state [B,H,K,V])``."""
    qh, kh, vh = _bhtd(q) * scale, _bhtd(k), _bhtd(v)
    gamma = torch.exp(g_gamma.to(torch.float64)).view(1, -1, 1, 1)
    S = _state0(initial_state, q, k, v)
    outs = []
    for t in range(q.shape[1]):
        S = gamma * S + kh[:, :, t, :, None] * vh[:, :, t, None, :]
        outs.append((qh[:, :, t, None, :] @ S)[:, :, 0])
    o = torch.stack(outs, dim=2) if outs else vh.new_zeros(vh.shape)
    return o.transpose(1, 2), S


def naive_chunk_retention(q, k, v, g_gamma, scale, initial_state=None, chunk_size=CHUNK_SIZE):
    """Chunkwise form. Returns ``(o [B,T,H,V], final_state [B,H,K,V])``."""
    qh, kh, vh = _bhtd(q) * scale, _bhtd(k), _bhtd(v)
    g = g_gamma.to(torch.float64).view(1, -1, 1, 1)
    S = _state0(initial_state, q, k, v)
    T = q.shape[1]
    outs = []
    for start in range(0, T, chunk_size):
        L = min(chunk_size, T - start)
        Qi, Ki, Vi = (x[:, :, start : start + L] for x in (qh, kh, vh))
        j = torch.arange(L, dtype=torch.float64, device=q.device)
        diff = j[:, None] - j[None, :]
        D = torch.where(diff >= 0, torch.exp(g * diff.clamp(min=0)), 0.0)
        inter = torch.exp(g * (j[:, None] + 1)) * (Qi @ S)
        outs.append(((Qi @ Ki.transpose(-1, -2)) * D) @ Vi + inter)
        S = torch.exp(g * L) * S + Ki.transpose(-1, -2) @ (torch.exp(g * (L - 1 - j[:, None])) * Vi)
    o = torch.cat(outs, dim=2) if outs else vh.new_zeros(vh.shape)
    return o.transpose(1, 2), S
