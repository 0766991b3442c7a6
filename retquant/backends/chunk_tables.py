"""Decay tables of the float chunkwise path (:mod:`retquant.backends.torch_chunk`).

Built in float64 and rounded once to the compute dtype. ``scale`` is folded into the two tables
that multiply every product holding Q (the intra-chunk mask and the inter-chunk row factor), so
no pass over Q is spent on it. The per-call part (mask, row factor, powers of gamma) is cached in
a small LRU keyed by (g_gamma, chunk size, scale, dtype, device); the per-chunk part depends on
the chunk lengths and is cheap (n x H x C numbers).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch


@dataclass(frozen=True)
class DecayTables:
    """Tables for one (g_gamma, C, scale, dtype, device), per head (leading dim H).

    mask[h, a, b]  = scale * gamma**(a-b) for a >= b else 0   (intra-chunk, Q K^T and dO V^T)
    inter[h, a, 0] = scale * gamma**(a+1)                       (row factor of Q S_{i-1})
    powers[h, l]   = gamma**l, l = 0..C (float64; per-chunk factors are gathered from it)
    """

    mask: torch.Tensor
    inter: torch.Tensor
    powers: torch.Tensor


@lru_cache(maxsize=16)
def _cached(g: tuple, C: int, scale: float, dtype: torch.dtype, device: torch.device) -> DecayTables:
    gg = torch.tensor(g, dtype=torch.float64, device=device)[:, None]
    j = torch.arange(C, dtype=torch.float64, device=device)
    diff = j[:, None] - j[None, :]
    mask = torch.where(diff >= 0, torch.exp(gg[:, :, None] * diff.clamp(min=0)), 0.0) * scale
    inter = torch.exp(gg * (j + 1)) * scale
    powers = torch.exp(gg * torch.arange(C + 1, dtype=torch.float64, device=device))
    return DecayTables(mask=mask.to(dtype), inter=inter.to(dtype)[:, :, None], powers=powers)


def decay_tables(g_gamma: torch.Tensor, C: int, scale: float, dtype: torch.dtype) -> DecayTables:
    """The cached per-call tables.

    Example:
        >>> from retquant.decay import default_g_gamma
        >>> t = decay_tables(default_g_gamma(2), 64, 0.125, torch.float32)
        >>> t.mask.shape, t.inter.shape, t.powers.shape
        (torch.Size([2, 64, 64]), torch.Size([2, 64, 1]), torch.Size([2, 65]))
    """
    return _cached(tuple(g_gamma.tolist()), int(C), float(scale), dtype, g_gamma.device)


def chunk_factors(powers: torch.Tensor, lengths: torch.Tensor, dtype: torch.dtype):
    """Per-chunk factors for chunk lengths ``lengths`` ([n, S] ints, 0 for a padding chunk).

    Returns ``kdec [n, S, H, C, 1]`` = gamma**(L-1-j) for j < L else 0 (the state-update factor,
    applied to K or V) and ``decay [n, S, H, 1, 1]`` = gamma**L (the state decay across the chunk;
    1 across a padding chunk, so a padded sequence's state passes through unchanged).

    Example:
        >>> p = torch.tensor([[1.0, 0.5, 0.25]], dtype=torch.float64)  # gamma = 0.5, C = 2
        >>> kdec, decay = chunk_factors(p, torch.tensor([[2], [1]]), torch.float64)
        >>> kdec[:, 0, 0, :, 0].tolist(), decay.flatten().tolist()
        ([[0.5, 1.0], [1.0, 0.0]], [0.25, 0.5])
    """
    C = powers.shape[1] - 1
    j = torch.arange(C, device=lengths.device)
    expo = lengths[:, :, None] - 1 - j  # [n, S, C]
    kdec = torch.where(expo >= 0, powers[:, expo.clamp(min=0)], 0.0)  # [H, n, S, C]
    decay = powers[:, lengths]  # [H, n, S]
    kdec = kdec.permute(1, 2, 0, 3)[..., None].to(dtype)
    return kdec.contiguous(), decay.permute(1, 2, 0)[..., None, None].to(dtype).contiguous()
