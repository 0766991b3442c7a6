"""The Triton backend: int8 chunkwise and recurrent retention kernels (``retquant.kernels``).

Runs ``chunk`` and ``fused_recurrent`` with the default int8 configuration on CUDA tensors, or
on CPU tensors through the Triton interpreter when ``TRITON_INTERPRET=1`` was set before the
kernels were first loaded. Importing this module never fails: when triton is missing the import
error becomes the ``unsupported`` reason, so ``auto`` warns once and runs the reference while
``backend="triton"`` raises. The kernels are loaded on first use, not at ``import retquant``.
"""

from __future__ import annotations

import os

import torch

from retquant.backends.registry import Backend, register_backend
from retquant.ops.validate import RetentionCall

try:
    import triton  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only where triton is absent
    _IMPORT_ERROR: str | None = f"triton is not installed ({e})"
else:
    _IMPORT_ERROR = None

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MAX_DIM = 256  # K and V held whole in registers per program


def _kernels():
    """Import the kernel modules (decorating them in the current TRITON_INTERPRET mode)."""
    from retquant.kernels import chunk_retention, recurrent_retention_step

    return chunk_retention, recurrent_retention_step


def kernels_interpreted() -> bool:
    """Whether the loaded kernels run in the Triton interpreter (``TRITON_INTERPRET=1``)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_kernels()[1].recurrent_retention_step_kernel, InterpretedFunction)


def _device_reason(device: torch.device) -> str | None:
    interp = kernels_interpreted()
    if device.type == "cuda":
        if interp or torch.cuda.is_available():
            return None
        return "CUDA is not available"
    if device.type == "cpu":
        if interp:
            return None
        if os.environ.get("TRITON_INTERPRET", "0") == "1":
            return (
                "TRITON_INTERPRET=1 was set after the triton kernels were loaded; set it "
                "before the first retention call (or before importing retquant)"
            )
        return "CPU tensors need the Triton interpreter: set TRITON_INTERPRET=1"
    return f"no Triton support for device type {device.type!r}"


def unsupported(op: str, call: RetentionCall) -> str | None:
    """``None`` when the Triton kernels can run ``op`` on ``call``, else the reason."""
    if _IMPORT_ERROR is not None:
        return _IMPORT_ERROR
    if op not in _IMPLS:
        return f"the triton backend implements {sorted(_IMPLS)} only, not {op!r}"
    if call.quant is None:
        return "the triton backend runs quantized calls only (quant=None is the float path)"
    if not call.quant.is_default_int8():
        return "the triton kernels implement the default int8 configuration only"
    if call.q.dtype not in _DTYPES:
        return f"the triton kernels take float32/float16/bfloat16 inputs, got {call.q.dtype}"
    K, V = call.q.shape[-1], call.v.shape[-1]
    if K > _MAX_DIM or V > _MAX_DIM:
        return f"the triton kernels need K, V <= {_MAX_DIM}, got K={K}, V={V}"
    return _device_reason(call.q.device)


def _cu(call: RetentionCall):
    return None if call.cu_seqlens is None else call.cu_seqlens.to(call.q.device)


def chunk(call: RetentionCall):
    """``chunk_retention`` on the int8 chunk kernel; returns ``(o, final or None)``."""
    o, final, _ = _kernels()[0].chunk_retention_fwd(
        call.q,
        call.k,
        call.v,
        call.g_gamma,
        call.scale,
        call.initial_state,
        call.output_final_state,
        _cu(call),
    )
    return o, final


def fused_recurrent(call: RetentionCall):
    """``fused_recurrent_retention`` on the int8 decode kernel; returns ``(o, final or None)``."""
    return _kernels()[1].recurrent_retention_fwd(
        call.q,
        call.k,
        call.v,
        call.g_gamma,
        call.scale,
        call.initial_state,
        call.output_final_state,
        _cu(call),
    )


_IMPLS = {"chunk": chunk, "fused_recurrent": fused_recurrent}

register_backend(Backend(name="triton", impls=_IMPLS, unsupported=unsupported))
