"""``chunk_retention``: fla's signature and layout, plus ``quant=``, ``g_gamma=``, ``backend=``."""

from __future__ import annotations

import torch

from retquant.constants import CHUNK_SIZE
from retquant.ops.retention.function import run_form
from retquant.validate import check_static


def chunk_retention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.LongTensor | None = None,
    head_first: bool = False,
    *,
    chunk_size: int = CHUNK_SIZE,
    g_gamma: torch.Tensor | None = None,
    quant=None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunkwise multi-scale retention; differentiable (quantized calls by straight-through
    estimators, see :mod:`retquant.ops.retention.function`).

    Args:
        q, k: ``[B, T, H, K]``; v: ``[B, T, H, V]``.
        scale: multiplies q (any real scalar); default ``K ** -0.5``.
        initial_state: ``[N, H, K, V]`` (N = B, or the number of packed sequences).
        output_final_state: also return the final state ``[N, H, K, V]`` (float32).
        cu_seqlens: ``[N + 1]`` cumulative lengths of packed sequences (B must be 1).
        head_first: deprecated in fla; must be False.
        chunk_size: 64, the chunk length every retquant kernel is built for.
        g_gamma: log decay per head ``[H]`` (a constant: no gradient); default RetNet's
            ``log(1 - 2**(-5 - h))``.
        quant: ``None`` (float), a preset name (``"int8"``, ``"int4"``, ``"int16"``,
            ``"int8_smooth"``) or a :class:`retquant.quant.RetentionQuantConfig`.
        backend: ``"auto"``, ``"reference"``, ``"torch"``, ``"cpu"`` or ``"triton"``; default from
            the ``RETQUANT_BACKEND`` environment variable, else ``"auto"``.

    Returns:
        ``(o [B, T, H, V] in q's dtype, final_state or None)``.

    Example:
        >>> q = k = torch.randn(2, 100, 4, 32); v = torch.randn(2, 100, 4, 48)
        >>> o, s = chunk_retention(q, k, v, output_final_state=True, quant="int8")
        >>> o.shape, s.shape
        (torch.Size([2, 100, 4, 48]), torch.Size([2, 4, 32, 48]))
    """
    if head_first:
        raise ValueError("head_first=True is not supported (deprecated in fla): pass [B, T, H, K]")
    static = check_static(
        q, k, v, scale, initial_state, output_final_state, cu_seqlens, g_gamma, quant, chunk_size
    )
    return run_form("chunk", q, k, v, static, initial_state, cu_seqlens, output_final_state, backend, g_gamma)
