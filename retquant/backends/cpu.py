"""The ``cpu`` backend: the C++/OpenMP kernels (AVX-512, AVX2 or portable) for CPU tensors.

Runs ``chunk`` and ``fused_recurrent`` with the default int8 configuration (the int8 kernels),
and every form of the float path (``quant=None``: the fused float chunk kernel of
:mod:`retquant.backends.cpu_float`, the same function computed chunkwise); for anything else,
or when the extension cannot be built, :func:`unsupported` returns the reason (``auto`` then
warns once and runs the reference; ``backend="cpu"`` raises). Importing this module never fails
and never compiles: the build happens on the first call that could use the kernels.

Inputs of float32, bfloat16 or float16 (float64 runs the reference) and any strides are made
contiguous (the decode call does it in C++, ``retquant::recurrent_call``); the chunk kernel reads
and writes bfloat16 as it is, everything else runs in float32. ``o`` comes back in q's dtype, the
final state in float32 (as the reference does). The kernels check their inputs for inf/NaN while
reading them (``checks_finite``). Under torch.compile each call is one custom op
(:mod:`retquant.backends.cpu_ops`).
"""

from __future__ import annotations

import torch

from retquant.backends import cpu_extension, cpu_float, cpu_ops
from retquant.backends.registry import Backend, int8_kernel_reason, register_backend
from retquant.validate import RetentionCall

SUPPORTED_OPS = ("chunk", "fused_recurrent")
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def unsupported(op: str, call: RetentionCall) -> str | None:
    """``None`` if the C++ kernels can run ``op`` on ``call``, else why not."""
    if call.quant is None:  # every form of the float path is the fused float chunk kernel
        return cpu_float.supported(call)
    reason = int8_kernel_reason("cpu", SUPPORTED_OPS, op, call, SUPPORTED_DTYPES)
    if reason is not None:
        return reason
    if call.q.device.type != "cpu":
        return f"the cpu backend needs CPU tensors, got {call.q.device}"
    return cpu_extension.load_error()


def token_rows(x: torch.Tensor, keep_bf16: bool = False) -> torch.Tensor:
    """[B, T, H, D] of any float dtype/strides -> contiguous [B*T, H, D], float32 or (keep_bf16,
    for the kernels that read and write bfloat16 themselves) bfloat16 as given."""
    B, T, H, D = x.shape
    dtype = torch.bfloat16 if keep_bf16 and x.dtype == torch.bfloat16 else torch.float32
    # Only read by the kernels: a view of the caller's tensor where it already is so (one torch
    # call instead of four, which a decode step's Python budget notices).
    if x.dtype != dtype or not x.is_contiguous():
        x = x.detach().to(dtype).contiguous()
    return x.view(B * T, H, D)


def token_offsets(call: RetentionCall) -> torch.Tensor:
    """Sequence offsets ``[N + 1]`` (int64) of :func:`token_rows`' rows: ``cu_seqlens``, or one
    sequence per batch row."""
    if call.cu_seqlens is not None:
        return call.cu_seqlens.to(torch.int64).contiguous()
    B, T = call.q.shape[:2]
    return torch.arange(0, B * T + 1, T, dtype=torch.int64, device="cpu")


def _init(call: RetentionCall) -> torch.Tensor | None:
    s = call.initial_state
    if s is None or (s.dtype == torch.float32 and s.is_contiguous()):
        return s  # read, never written, by the kernels
    return s.detach().to(torch.float32).contiguous()


def chunk_raw(call: RetentionCall, isa: str | None = None, debug_chunks: int = 0):
    """Run the chunk kernel on ``call``: ``(o f32 [B*T, H, V], final f32 [N, H, K, V])``, or with
    ``debug_chunks > 0`` (tests) also the four int32 accumulators, on ``isa`` (a name of
    :data:`cpu_extension.ISA_CODES`; default ``RETQUANT_CPU_ISA``)."""
    q, k, v = (token_rows(x, keep_bf16=True) for x in (call.q, call.k, call.v))
    args = (q, k, v, token_offsets(call), call.scale, call.g_gamma, _init(call))
    if debug_chunks:
        code = cpu_extension.isa_code(isa)
        return cpu_extension.ops().chunk_fwd_debug(*cpu_ops.chunk_args(*args, code), debug_chunks)
    return cpu_ops.chunk(*args)


def _finish(call: RetentionCall, out: torch.Tensor, final: torch.Tensor):
    o = out.view(call.q.shape[:3] + (call.v.shape[3],))
    if o.dtype != call.q.dtype:
        o = o.to(call.q.dtype)
    return o, (final if call.output_final_state else None)


def float_forms(call: RetentionCall):
    """The float path (``quant=None``) of any form: the fused float chunk kernel."""
    q, k, v = (token_rows(x, keep_bf16=True) for x in (call.q, call.k, call.v))
    o, final = cpu_float.chunk_float(q, k, v, token_offsets(call), call.scale, call.g_gamma, _init(call))
    return _finish(call, o, final)


def chunk(call: RetentionCall):
    if call.quant is None:
        return float_forms(call)
    return _finish(call, *chunk_raw(call))


def fused_recurrent(call: RetentionCall):
    if call.quant is None:
        return float_forms(call)
    args = (call.q, call.k, call.v, call.cu_seqlens, call.scale, call.g_gamma, call.initial_state)
    o, final = cpu_ops.recurrent(*args)
    return o, (final if call.output_final_state else None)


register_backend(
    Backend(
        name="cpu",
        impls={"chunk": chunk, "fused_recurrent": fused_recurrent, "parallel": float_forms},
        unsupported=unsupported,
        checks_finite=True,
        float_path=True,
    )
)
