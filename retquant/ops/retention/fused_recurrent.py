"""``fused_recurrent_retention``: fla 0.6's signature and layout, plus ``quant=``, ``g_gamma=``,
``backend=``."""

from __future__ import annotations

import torch

from retquant.ops.retention.function import run_form
from retquant.validate import check_static


def _flip_sequences(x: torch.Tensor, cu_seqlens) -> torch.Tensor:
    """Reverse time within each sequence (differentiable, no host sync for dense inputs)."""
    if cu_seqlens is None:
        return x.flip(1)
    b = cu_seqlens.tolist()
    return torch.cat([x[:, s:e].flip(1) for s, e in zip(b[:-1], b[1:])], dim=1)


def _v_first_state(initial_state: torch.Tensor, q, v, cu_seqlens) -> torch.Tensor:
    """``[N, H, V, K]`` -> ``[N, H, K, V]``, after checking it against the user's layout (so a
    wrong shape is reported as passed, not transposed)."""
    if all(isinstance(x, torch.Tensor) and x.dim() == 4 for x in (q, v)):
        n = q.shape[0] if not isinstance(cu_seqlens, torch.Tensor) else cu_seqlens.shape[0] - 1
        want = [n, q.shape[2], v.shape[3], q.shape[3]]
        if list(initial_state.shape) != want:
            raise ValueError(
                f"with state_v_first=True initial_state must have shape [N, H, V, K]={want}, "
                f"got {list(initial_state.shape)}"
            )
    return initial_state.transpose(-1, -2)


def fused_recurrent_retention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    reverse: bool = False,
    state_v_first: bool = False,
    cu_seqlens: torch.LongTensor | None = None,
    *,
    transpose_state_layout: bool | None = None,
    g_gamma: torch.Tensor | None = None,
    quant=None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Recurrent multi-scale retention (the decode form); differentiable.

    Arguments as :func:`retquant.ops.chunk_retention`, in fla 0.6's positional order, plus
    ``reverse`` (run each sequence from its end) and ``state_v_first`` (states as
    ``[N, H, V, K]``; ``transpose_state_layout`` is its older name, keyword only).

    The float path (``quant=None``, float32/bfloat16/float16) computes this form with the
    chunkwise algorithm (the same function; no per-token Python loop at any T); float64 runs
    the recurrent specification. Quantized calls quantize each token on its own, as a decode
    step does (``retquant.spec.int_recurrent``).

    Example:
        >>> q = k = torch.randn(1, 5, 2, 16); v = torch.randn(1, 5, 2, 16)
        >>> o, s = fused_recurrent_retention(q, k, v, output_final_state=True)
        >>> o.shape, s.shape
        (torch.Size([1, 5, 2, 16]), torch.Size([1, 2, 16, 16]))
    """
    if transpose_state_layout is not None:
        if not isinstance(transpose_state_layout, bool):
            raise TypeError(f"transpose_state_layout must be a bool, got {transpose_state_layout!r}")
        if state_v_first and not transpose_state_layout:
            raise ValueError("state_v_first=True and transpose_state_layout=False contradict each other")
        state_v_first = transpose_state_layout
    for name, flag in (("reverse", reverse), ("state_v_first", state_v_first)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {flag!r}")
    if state_v_first and isinstance(initial_state, torch.Tensor):
        initial_state = _v_first_state(initial_state, q, v, cu_seqlens)
    static = check_static(q, k, v, scale, initial_state, output_final_state, cu_seqlens, g_gamma, quant)
    if reverse:
        q, k, v = (_flip_sequences(x, cu_seqlens) for x in (q, k, v))
    o, final = run_form(
        "fused_recurrent", q, k, v, static, initial_state, cu_seqlens, output_final_state, backend, g_gamma
    )
    if reverse:
        o = _flip_sequences(o, cu_seqlens)
    if state_v_first and final is not None:
        final = final.transpose(-1, -2)
    return o, final
