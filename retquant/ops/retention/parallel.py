"""``parallel_retention``: fla's signature and layout, plus ``quant=``, ``g_gamma=``, ``backend=``."""

from __future__ import annotations

import torch

from retquant.ops.retention.function import run_form
from retquant.spec.naive import naive_parallel_retention
from retquant.validate import check_static


def parallel_retention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    output_attentions: bool = False,
    cu_seqlens: torch.LongTensor | None = None,
    head_first: bool = False,
    *,
    g_gamma: torch.Tensor | None = None,
    quant=None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Parallel (quadratic) multi-scale retention; differentiable.

    Returns ``(o [B, T, H, V], attn [B, H, T, T] or None)``; ``attn`` holds the decayed scores
    ``(q k^T) * gamma**(n-m)`` and is available on the float path without ``cu_seqlens``. The
    float path (float32/bfloat16/float16) computes the same function with the chunkwise
    algorithm; float64 runs the parallel specification. With ``quant`` set, the integer
    algorithm runs with one chunk spanning each sequence.

    Example:
        >>> q = k = v = torch.randn(1, 8, 2, 16)
        >>> o, attn = parallel_retention(q, k, v, output_attentions=True)
        >>> attn.shape
        torch.Size([1, 2, 8, 8])
    """
    if head_first:
        raise ValueError("head_first=True is not supported (deprecated in fla): pass [B, T, H, K]")
    if not isinstance(output_attentions, bool):
        raise TypeError(f"output_attentions must be a bool, got {output_attentions!r}")
    static = check_static(q, k, v, scale, None, False, cu_seqlens, g_gamma, quant)
    if output_attentions and (static.quant is not None or cu_seqlens is not None):
        raise ValueError("output_attentions=True needs the float path (quant=None) and no cu_seqlens")
    o, _ = run_form("parallel", q, k, v, static, None, cu_seqlens, False, backend, g_gamma)
    attn = None
    if output_attentions:
        attn = naive_parallel_retention(q, k, v, static.g_gamma, static.scale)[2].to(q.dtype)
    return o, attn
