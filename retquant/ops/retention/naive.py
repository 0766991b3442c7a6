"""fla's ``naive_retention`` at fla's module path, in fla's layout for it: head-first.

``naive_retention(q, k, v)`` takes ``[B, H, T, K]`` / ``[B, H, T, V]`` (as fla's does; the ops
take ``[B, T, H, K]``) and returns the parallel form with RetNet's decays and ``scale = K**-0.5``,
computed in float64 by the specification and returned in q's dtype.

Example:
    >>> import torch
    >>> q = k = v = torch.randn(1, 2, 8, 16)
    >>> naive_retention(q, k, v).shape
    torch.Size([1, 2, 8, 16])
"""

from __future__ import annotations

import torch

from retquant.decay import default_g_gamma
from retquant.spec.naive import naive_parallel_retention


def naive_retention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Parallel retention of head-first ``q, k [B, H, T, K]``, ``v [B, H, T, V]``."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"{name} must be a rank-4 tensor [B, H, T, D] (head-first, as fla's naive)")
    H, K = q.shape[1], q.shape[-1]
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    o = naive_parallel_retention(qt, kt, vt, default_g_gamma(H, device=q.device), K**-0.5)[0]
    return o.transpose(1, 2).to(q.dtype)
