"""A plain PyTorch chunkwise retention (bf16 on a GPU), written the way a user would: the
baseline the GPU benchmark compares the Triton kernel with.

Per chunk of C tokens: ``O = (Q K^T * D) V + diag(gamma^(j+1)) Q S_prev`` and
``S = gamma^C S_prev + K^T diag(gamma^(C-1-j)) V``; the intra-chunk products and the per-chunk
state updates are batched over chunks, the state recurrence is a loop over chunks.
"""

from __future__ import annotations

import torch


def torch_chunk_retention(q, k, v, g_gamma, scale, chunk_size=64):
    """``[B, T, H, K]`` inputs (T a multiple of ``chunk_size``); returns ``o [B, T, H, V]``."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    c = chunk_size
    if T % c:
        raise ValueError(f"T={T} must be a multiple of chunk_size={c}")
    n = T // c
    dt = q.dtype
    g = g_gamma.to(q.device, torch.float32).view(H, 1)
    j = torch.arange(c, device=q.device, dtype=torch.float32)
    diff = j[:, None] - j[None, :]
    decay = torch.where(diff >= 0, torch.exp(g[:, :, None] * diff.clamp(min=0)), 0.0).to(dt)
    inter = torch.exp(g * (j + 1)).to(dt).view(1, H, 1, c, 1)
    kdec = torch.exp(g * (c - 1 - j)).to(dt).view(1, H, 1, c, 1)
    chunk = torch.exp(g[:, 0] * c).view(1, H, 1, 1)

    def split(x):
        return x.transpose(1, 2).reshape(B, H, n, c, x.shape[-1])

    qc, kc, vc = split(q * scale), split(k), split(v)
    o = ((qc @ kc.transpose(-1, -2)) * decay.view(1, H, 1, c, c)) @ vc
    d_state = ((kc * kdec).transpose(-1, -2) @ vc).float()
    S = torch.zeros(B, H, K, V, device=q.device, dtype=torch.float32)
    prev = []
    for i in range(n):
        prev.append(S)
        S = S * chunk + d_state[:, :, i]
    states = torch.stack(prev, dim=2).to(dt)
    o = o + (qc * inter) @ states
    return o.reshape(B, H, T, V).transpose(1, 2)
