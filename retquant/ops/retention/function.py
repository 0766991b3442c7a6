"""One code path for inference and training: the retention forms as torch custom ops.

``torch.ops.retquant.retention`` runs a form (``chunk``, ``fused_recurrent``, ``parallel``) the
way inference runs it: value checks, backend selection (inside the op, so torch.compile never
traces host logic), the chosen kernel. With ``save=True`` it also returns what the backward
needs that cannot be recomputed cheaply: for a quantized call the integer codes, scales and zero
points of ``q * scale``, ``k``, ``v`` (:mod:`retquant.ops.retention.quantized_operands`), never
fp32 copies; a float call saves its inputs. The output is the inference output bit for bit.

``torch.ops.retquant.retention_backward`` is the registered backward: the gradient of the float
chunkwise retention (:func:`retquant.backends.torch_chunk.chunk_bwd`, chunk by chunk, no T x T
matrix) evaluated at the dequantized operands, each quantizer treated as the identity inside its
range and zero outside (straight-through estimator; with the dynamic ranges of the presets
nothing is clipped). ``g_gamma`` is a constant (as in fla): a ``g_gamma`` that requires grad is
an error, never a silently missing gradient.

:func:`run_form` is what the public ops call. Without autograd and outside torch.compile it calls
the forward directly (a Python custom op's dispatch costs tens of microseconds); meta tensors
go through the op's fake implementation, so shape inference works with and without ``quant``.
"""

from __future__ import annotations

import torch

from retquant.backends import reference
from retquant.backends.registry import select
from retquant.backends.torch_chunk import chunk_bwd
from retquant.ops.retention.quantized_operands import (
    default_int8_operands,
    dequantize_operands,
    from_traces,
    saved_shapes,
)
from retquant.quant.config import RetentionQuantConfig, config_from_key
from retquant.validate import RetentionCall, StaticArgs, complete_call, validate_call

FORMS = ("chunk", "fused_recurrent", "parallel")


def _check_backward_config(config: RetentionQuantConfig) -> None:
    """Static ranges on the operands the backward does not see cannot be masked exactly."""
    for name in ("k_state", "score", "state"):
        if not getattr(config, name).dynamic:
            raise ValueError(
                f"RetentionQuantConfig.{name} has a static range: its clipping happens inside the "
                "op, where the straight-through backward cannot mask it; use a dynamic range for "
                f"{name} when differentiating (static ranges on q, k, v are supported)"
            )


def forward_impl(
    op: str,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g_gamma: torch.Tensor,
    initial_state: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    scale: float,
    quant: str,
    backend: str,
    save: bool,
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """``(o, final_state, saved)``: the inference call of ``op`` (final state always computed)."""
    if op not in FORMS:
        raise ValueError(f"op must be one of {FORMS}, got {op!r}")
    config = config_from_key(quant)
    call = validate_call(q, k, v, scale, initial_state, True, cu_seqlens, g_gamma, config)
    return _run(op, call, backend, save)


def _run(op: str, call: RetentionCall, backend: str, save: bool):
    """:func:`forward_impl` on a validated call."""
    name, impl = select(op, call, backend or None)
    if not (save and call.quant is not None):
        o, final = impl(call)
        return _dense(o), _dense(final), []
    _check_backward_config(call.quant)
    if name == "reference":  # the spec's own codes (stochastic rounding included)
        o, final, traces = reference.run_traced(op, call)
        saved = from_traces(op, call, traces)
    else:
        o, final = impl(call)
        saved = default_int8_operands(op, call)
    return _dense(o), _dense(final), [_dense(t) for t in saved]


def _dense(t: torch.Tensor) -> torch.Tensor:
    """Outputs in the contiguous layout the fake implementations promise the compiler."""
    return t.contiguous()


def _forward_fake(op, q, k, v, g_gamma, initial_state, cu_seqlens, scale, quant, backend, save):
    B, T, H, K = q.shape
    V = v.shape[-1]
    n_seq = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    state_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    o = q.new_empty(B, T, H, V)
    final = q.new_empty(n_seq, H, K, V, dtype=state_dtype)
    config = config_from_key(quant)
    if not (save and config is not None):
        return o, final, []
    num = None if cu_seqlens is None else n_seq
    saved = [q.new_empty(s, dtype=d) for s, d in saved_shapes(op, config, B, T, H, K, V, num)]
    return o, final, saved


retention = torch.library.custom_op("retquant::retention", forward_impl, mutates_args=())
retention.register_fake(_forward_fake)


def backward_impl(
    op: str,
    quant: str,
    saved: list[torch.Tensor],
    do: torch.Tensor,
    dht: torch.Tensor | None,
    g_gamma: torch.Tensor,
    initial_state: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv, dh0)`` in float32 (float64 for float64 inputs); ``dh0`` is empty without
    an initial state. ``saved``: the quantized operands, or ``[q, k, v]`` for a float call."""
    config = config_from_key(quant)
    if config is None:
        q, k, v = saved
        dq, dk, dv, dh0 = chunk_bwd(q, k, v, g_gamma, scale, do, initial_state, dht, cu_seqlens)
    else:
        q_hat, k_hat, v_hat, masks = dequantize_operands(op, config, saved, cu_seqlens)
        # q_hat is the dequantized q * scale: differentiate at scale 1, then chain the scale
        dq, dk, dv, dh0 = chunk_bwd(q_hat, k_hat, v_hat, g_gamma, 1.0, do, initial_state, dht, cu_seqlens)
        dq = dq * scale
        dq, dk, dv = (g if m is None else g * m for g, m in zip((dq, dk, dv), masks))
    dtype = torch.float64 if do.dtype == torch.float64 else torch.float32
    dq, dk, dv = (g.to(dtype) for g in (dq, dk, dv))
    dh0 = do.new_empty(0) if dh0 is None else dh0.to(initial_state.dtype)
    return _dense(dq), _dense(dk), _dense(dv), _dense(dh0)


def _backward_fake(op, quant, saved, do, dht, g_gamma, initial_state, cu_seqlens, scale):
    B, T, H, V = do.shape
    K = saved[0].shape[-1]
    dtype = torch.float64 if do.dtype == torch.float64 else torch.float32
    dh0 = do.new_empty(0) if initial_state is None else initial_state.new_empty(initial_state.shape)
    return (
        do.new_empty(B, T, H, K, dtype=dtype),
        do.new_empty(B, T, H, K, dtype=dtype),
        do.new_empty(B, T, H, V, dtype=dtype),
        dh0,
    )


retention_backward = torch.library.custom_op("retquant::retention_backward", backward_impl, mutates_args=())
retention_backward.register_fake(_backward_fake)


def _setup_context(ctx, inputs, output):
    op, q, k, v, g_gamma, initial_state, cu_seqlens, scale, quant, backend, save = inputs
    ctx.op, ctx.quant, ctx.scale = op, quant, scale
    ctx.dtypes = (q.dtype, k.dtype, v.dtype)
    ctx.has_init = initial_state is not None
    tensors = list(output[2]) if quant else [q, k, v]
    ctx.num_saved = len(tensors)
    ctx.save_for_backward(*tensors, g_gamma, initial_state, cu_seqlens)


def _backward(ctx, do, dfinal, dsaved):
    *saved, g_gamma, initial_state, cu_seqlens = ctx.saved_tensors
    if do is None:  # only the final state was used
        B, T, H = saved[0].shape[:3]
        do = torch.zeros(B, T, H, saved[6].shape[-1], dtype=dfinal.dtype, device=dfinal.device)
    do = do.contiguous()
    dq, dk, dv, dh0 = retention_backward(
        ctx.op, ctx.quant, saved, do, dfinal, g_gamma, initial_state, cu_seqlens, ctx.scale
    )
    dq, dk, dv = (g.to(dt) for g, dt in zip((dq, dk, dv), ctx.dtypes))
    dh0 = dh0.to(initial_state.dtype) if ctx.has_init else None
    return None, dq, dk, dv, None, dh0, None, None, None, None, None


retention.register_autograd(_backward, setup_context=_setup_context)


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def run_form(
    op: str,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    static: StaticArgs,
    initial_state: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    output_final_state: bool,
    backend: str | None,
    g_gamma_arg=None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run ``op`` on statically checked arguments: differentiable, and one custom op under
    torch.compile. ``g_gamma_arg``: the user's g_gamma (refused if it requires grad).

    Example:
        >>> from retquant.validate import check_static
        >>> q = k = v = torch.randn(1, 8, 2, 4, requires_grad=True)
        >>> o, _ = run_form("chunk", q, k, v, check_static(q, k, v, quant="int8"), None, None, False, None)
        >>> o.sum().backward(); q.grad.shape
        torch.Size([1, 8, 2, 4])
    """
    if isinstance(g_gamma_arg, torch.Tensor) and _needs_grad(g_gamma_arg):
        raise ValueError(
            "g_gamma requires grad, but retention treats the decay as a constant (as fla does) "
            "and returns no gradient for it: pass g_gamma.detach()"
        )
    quant = "" if static.quant is None else static.quant.key
    args = (op, q, k, v, static.g_gamma, initial_state, cu_seqlens, static.scale, quant, backend or "")
    save = _needs_grad(q, k, v, initial_state)
    # the custom op also when tracing, and for meta tensors (shape inference: its fake impl)
    if save or torch.compiler.is_compiling() or q.device.type == "meta":
        o, final, _ = retention(*args, save)
    else:  # forward_impl without repeating check_static (tens of microseconds: a decode step's)
        call = complete_call(static, q, k, v, initial_state, True, cu_seqlens)
        o, final, _ = _run(op, call, backend or "", False)
    return o, (final if output_final_state else None)
