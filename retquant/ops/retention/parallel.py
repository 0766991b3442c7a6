"""``parallel_retention``: fla's signature and layout, plus ``quant=`` and ``backend=``."""

from __future__ import annotations

import torch

from retquant.backends import select_impl
from retquant.spec.naive import naive_parallel_retention
from retquant.validate import validate_call


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
    """Parallel (quadratic) multi-scale retention.

    Returns ``(o [B, T, H, V], attn [B, H, T, T] or None)``; ``attn`` holds the decayed scores
    ``(q k^T) * gamma**(n-m)`` and is available on the float path without ``cu_seqlens``. With
    ``quant`` set, the integer algorithm runs with one chunk spanning each sequence.

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
    call = validate_call(q, k, v, scale, None, False, cu_seqlens, g_gamma, quant)
    if output_attentions and (call.quant is not None or call.cu_seqlens is not None):
        raise ValueError("output_attentions=True needs the float path (quant=None) and no cu_seqlens")
    o, _ = select_impl("parallel", call, backend)(call)
    attn = None
    if output_attentions:
        attn = naive_parallel_retention(call.q, call.k, call.v, call.g_gamma, call.scale)[2]
        attn = attn.to(q.dtype)
    return o, attn
