"""fla's ``naive_retention`` at fla's module path: the float64 parallel specification.

Example:
    >>> import torch
    >>> q = k = v = torch.randn(1, 8, 2, 16)
    >>> naive_retention(q, k, v).shape
    torch.Size([1, 8, 2, 16])
"""

from __future__ import annotations

import torch

from retquant.decay import resolve_g_gamma
from retquant.spec.naive import naive_parallel_retention


def naive_retention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None, g_gamma=None
):
    """``o [B, T, H, V]`` in q's dtype from the float64 parallel form (RetNet's decays by
    default; ``scale`` defaults to ``K ** -0.5``)."""
    s = q.shape[-1] ** -0.5 if scale is None else scale
    g = resolve_g_gamma(g_gamma, q.shape[2], device=q.device)
    return naive_parallel_retention(q, k, v, g, s)[0].to(q.dtype)
