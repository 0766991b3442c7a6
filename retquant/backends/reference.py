"""The PyTorch reference backend: the float64 spec for ``quant=None``, the exact integer spec
otherwise. Packed (varlen) inputs run one sequence at a time."""

from __future__ import annotations

from dataclasses import replace

import torch

from retquant.backends.registry import Backend, register_backend
from retquant.constants import CHUNK_SIZE
from retquant.spec.int_chunk import int_chunk_retention
from retquant.spec.int_recurrent import int_recurrent_retention
from retquant.spec.naive import (
    naive_chunk_retention,
    naive_parallel_retention,
    naive_recurrent_retention,
)
from retquant.validate import RetentionCall


def _state_dtype(call: RetentionCall) -> torch.dtype:
    return torch.float64 if call.q.dtype == torch.float64 else torch.float32


def per_sequence(dense, call: RetentionCall):
    """Run ``dense(call) -> (o, final, *extra)`` on each packed sequence of a varlen call;
    returns ``(o, final, *extra)`` with o and final concatenated and each extra a list with one
    entry per sequence (a dense call: one)."""
    if call.cu_seqlens is None:
        o, f, *extra = dense(call)
        return (o, f, *([e] for e in extra))
    bounds = call.cu_seqlens.tolist()
    outs, finals, extras = [], [], []
    for i, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
        init = None if call.initial_state is None else call.initial_state[i : i + 1]
        sub = replace(
            call, q=call.q[:, s:e], k=call.k[:, s:e], v=call.v[:, s:e], initial_state=init, cu_seqlens=None
        )
        o, f, *extra = dense(sub)
        outs.append(o)
        finals.append(f)
        extras.append(extra)
    return (torch.cat(outs, dim=1), torch.cat(finals, dim=0), *(list(x) for x in zip(*extras)))


def _finish(call: RetentionCall, o, final):
    final = final.to(_state_dtype(call)) if call.output_final_state else None
    return o.to(call.q.dtype), final


def _int_chunk(call: RetentionCall, chunk_size: int, trace: bool):
    return int_chunk_retention(
        call.q,
        call.k,
        call.v,
        call.g_gamma,
        call.scale,
        call.quant,
        call.initial_state,
        chunk_size,
        trace=trace,
    )


def _chunk_dense(call: RetentionCall, trace: bool = False):
    if call.quant is None:
        return naive_chunk_retention(call.q, call.k, call.v, call.g_gamma, call.scale, call.initial_state)
    o, s, tr = _int_chunk(call, CHUNK_SIZE, trace)
    return (o, s, tr) if trace else (o, s)


def _recurrent_dense(call: RetentionCall, trace: bool = False):
    if call.quant is None:
        return naive_recurrent_retention(call.q, call.k, call.v, call.g_gamma, call.scale, call.initial_state)
    return int_recurrent_retention(
        call.q, call.k, call.v, call.g_gamma, call.scale, call.quant, call.initial_state, trace=trace
    )


def _parallel_dense(call: RetentionCall, trace: bool = False):
    if call.quant is None:
        o, s, _ = naive_parallel_retention(
            call.q, call.k, call.v, call.g_gamma, call.scale, call.initial_state
        )
        return o, s
    # The quantized parallel form is the integer algorithm with one chunk spanning the sequence.
    o, s, tr = _int_chunk(call, call.q.shape[1], trace)
    return (o, s, tr) if trace else (o, s)


_DENSE = {"chunk": _chunk_dense, "fused_recurrent": _recurrent_dense, "parallel": _parallel_dense}


def chunk(call: RetentionCall):
    return _finish(call, *per_sequence(_chunk_dense, call))


def fused_recurrent(call: RetentionCall):
    return _finish(call, *per_sequence(_recurrent_dense, call))


def parallel(call: RetentionCall):
    return _finish(call, *per_sequence(_parallel_dense, call))


# checks_finite: the integer specs check their inputs themselves (check_quant_inputs, the error
# every backend raises), so selection need not make a second pass over them.
register_backend(
    Backend(
        name="reference",
        impls={"chunk": chunk, "fused_recurrent": fused_recurrent, "parallel": parallel},
        unsupported=lambda op, call: None,
        checks_finite=True,
    )
)


def run_traced(op: str, call: RetentionCall):
    """The quantized ``op`` with the spec's trace of every sequence: ``(o, final, traces)``,
    the codes, scales and zero points the call multiplied (the autograd layer saves them).

    Example:
        >>> from retquant.validate import validate_call
        >>> q = k = v = torch.randn(1, 70, 2, 16)
        >>> o, final, traces = run_traced("chunk", validate_call(q, k, v, quant="int4"))
        >>> len(traces), traces[0].q_codes.dtype
        (1, torch.int8)
    """
    o, final, traces = per_sequence(lambda c: _DENSE[op](c, trace=True), call)
    return o.to(call.q.dtype), final.to(_state_dtype(call)), traces
