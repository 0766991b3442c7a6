"""The Triton backend: int8 chunkwise and recurrent retention kernels (``retquant.kernels``).

Runs ``chunk`` and ``fused_recurrent`` with the default int8 configuration on CUDA tensors, or
on CPU tensors through the Triton interpreter when ``TRITON_INTERPRET=1`` is set before triton
is imported. Importing this module never imports triton (so ``import retquant`` cannot fix the
interpreter mode too early, and never fails): triton and the kernels are loaded on the first
call that asks this backend; a missing triton becomes the ``unsupported`` reason, so ``auto``
warns once and runs the reference while ``backend="triton"`` raises.
"""

from __future__ import annotations

import functools
import os

import torch

from retquant.backends.registry import Backend, int8_kernel_reason, register_backend
from retquant.validate import RetentionCall

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MAX_DIM = 256  # K and V held whole in registers per program


@functools.cache
def _import_error() -> str | None:
    """Import triton once; the reason it is unusable, or None."""
    try:
        import triton  # noqa: F401
    except ImportError as e:
        return f"triton is not installed ({e})"
    return None


def _kernels():
    """Import the kernel modules (decorated in the interpreter mode triton was imported in)."""
    from retquant.kernels import chunk_retention, recurrent_retention_step

    return chunk_retention, recurrent_retention_step


def _interpreter_mode() -> str:
    """``"on"`` when triton and the kernels run interpreted, ``"off"`` when neither does, else
    ``"mixed"`` (TRITON_INTERPRET changed after triton was imported: unusable on CPU)."""
    import triton.language.standard as tl_standard
    from triton.runtime.interpreter import InterpretedFunction

    lib = isinstance(tl_standard.cdiv, InterpretedFunction)
    ker = isinstance(_kernels()[1].recurrent_retention_step_kernel, InterpretedFunction)
    return "on" if lib and ker else "off" if not (lib or ker) else "mixed"


def _device_reason(device: torch.device) -> str | None:
    mode = _interpreter_mode()
    if device.type == "cuda":
        if mode == "on" or (mode == "off" and torch.cuda.is_available()):
            return None
        return "CUDA is not available" if mode == "off" else _LATE_ENV
    if device.type == "cpu":
        if mode == "on":
            return None
        if mode == "mixed" or os.environ.get("TRITON_INTERPRET", "0") == "1":
            return _LATE_ENV
        return "CPU tensors need the Triton interpreter: set TRITON_INTERPRET=1"
    return f"no Triton support for device type {device.type!r}"


_LATE_ENV = (
    "TRITON_INTERPRET=1 was set after triton was imported; set it before the first import of "
    "triton (e.g. at the start of the process)"
)


def unsupported(op: str, call: RetentionCall) -> str | None:
    """``None`` when the Triton kernels can run ``op`` on ``call``, else the reason."""
    if _import_error() is not None:
        return _import_error()
    reason = int8_kernel_reason("triton", _IMPLS, op, call, _DTYPES)
    if reason is not None:
        return reason
    K, V = call.q.shape[-1], call.v.shape[-1]
    if K > _MAX_DIM or V > _MAX_DIM:
        return f"the triton kernels need K, V <= {_MAX_DIM}, got K={K}, V={V}"
    return _device_reason(call.q.device)


def _launch_args(call: RetentionCall) -> tuple:
    """The launchers' common positional arguments, in their order."""
    return (
        call.q,
        call.k,
        call.v,
        call.g_gamma,
        call.scale,
        call.initial_state,
        call.output_final_state,
        call.cu_seqlens,  # host int64: the launchers read the bounds on the host
    )


def chunk(call: RetentionCall):
    """``chunk_retention`` on the int8 chunk kernel; returns ``(o, final or None)``."""
    o, final, _ = _kernels()[0].chunk_retention_fwd(*_launch_args(call))
    return o, final


def fused_recurrent(call: RetentionCall):
    """``fused_recurrent_retention`` on the int8 decode kernel; returns ``(o, final or None)``."""
    return _kernels()[1].recurrent_retention_fwd(*_launch_args(call))


_IMPLS = {"chunk": chunk, "fused_recurrent": fused_recurrent}

register_backend(Backend(name="triton", impls=_IMPLS, unsupported=unsupported))
