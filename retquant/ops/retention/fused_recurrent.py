"""``fused_recurrent_retention``: fla's signature and layout, plus ``quant=`` and ``backend=``."""

from __future__ import annotations

from dataclasses import replace

import torch

from retquant.backends import select_impl
from retquant.validate import validate_call


def _flip_sequences(x: torch.Tensor, cu_seqlens) -> torch.Tensor:
    if cu_seqlens is None:
        return x.flip(1)
    b = cu_seqlens.tolist()
    return torch.cat([x[:, s:e].flip(1) for s, e in zip(b[:-1], b[1:])], dim=1)


def fused_recurrent_retention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    reverse: bool = False,
    cu_seqlens: torch.LongTensor | None = None,
    transpose_state_layout: bool = False,
    *,
    g_gamma: torch.Tensor | None = None,
    quant=None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Recurrent multi-scale retention, one token at a time (the decode form).

    Arguments as :func:`retquant.ops.chunk_retention`, plus ``reverse`` (run each sequence from
    its end) and ``transpose_state_layout`` (states as ``[N, H, V, K]``).

    Example:
        >>> q = k = torch.randn(1, 5, 2, 16); v = torch.randn(1, 5, 2, 16)
        >>> o, s = fused_recurrent_retention(q, k, v, output_final_state=True)
        >>> o.shape, s.shape
        (torch.Size([1, 5, 2, 16]), torch.Size([1, 2, 16, 16]))
    """
    for name, flag in (("reverse", reverse), ("transpose_state_layout", transpose_state_layout)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {flag!r}")
    call = validate_call(
        q, k, v, scale, initial_state, output_final_state, cu_seqlens, g_gamma, quant, transpose_state_layout
    )
    if reverse:
        fq, fk, fv = (_flip_sequences(x, call.cu_seqlens) for x in (call.q, call.k, call.v))
        call = replace(call, q=fq, k=fk, v=fv)
    o, final = select_impl("fused_recurrent", call, backend)(call)
    if reverse:
        o = _flip_sequences(o, call.cu_seqlens)
    if transpose_state_layout and final is not None:
        final = final.transpose(-1, -2)
    return o, final
