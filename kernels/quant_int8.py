"""Helpers shared by the Triton kernels: symmetric int8 quantization bit-exact with
:mod:`retquant.quant.primitives` (default int8 spec), the interpreter check, and the output
buffer rule that keeps bf16 outputs correctly rounded under the interpreter.

    scale = amax / 127          one correctly rounded fp32 division (``tl.div_rn``); 1 if amax == 0
    code  = clamp(rne(x / scale), -127, 127)      correctly rounded division, round half to even

Round half to even uses the exact magic-number trick ``(t + 1.5 * 2**23) - 1.5 * 2**23``, valid
for |t| < 2**22 (here |t| <= 127 plus a few ulp); it needs IEEE adds without reassociation,
which Triton guarantees (no fast-math) and the interpreter (numpy) does too.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

_RNE_MAGIC = 12582912.0  # 1.5 * 2**23


def interpreted() -> bool:
    """True when the kernels were decorated under ``TRITON_INTERPRET=1`` (interpreter mode)."""
    return isinstance(int8_scale, InterpretedFunction)


@triton.jit
def int8_scale(amax):
    """Scale of a symmetric int8 group from its absolute maximum (all-zero group -> 1)."""
    s = tl.div_rn(amax, tl.full(amax.shape, 127.0, tl.float32))
    return tl.where(s > 0.0, s, 1.0)


@triton.jit
def int8_codes(x, scale):
    """int8 codes of ``x`` (fp32) for ``scale`` of the same shape (broadcast by the caller)."""
    t = tl.div_rn(x, scale)
    t = (t + 12582912.0) - 12582912.0
    t = tl.minimum(tl.maximum(t, -127.0), 127.0)
    return t.to(tl.int8)


@triton.jit
def quant_rows(x):
    """Quantize a 2-D fp32 block per row: returns (int8 codes, fp32 scale per row)."""
    s = int8_scale(tl.max(tl.abs(x), axis=1))
    sb, _ = tl.broadcast(s[:, None], x)
    return int8_codes(x, sb), s


@triton.jit
def quant_cols(x):
    """Quantize a 2-D fp32 block per column: returns (int8 codes, fp32 scale per column)."""
    s = int8_scale(tl.max(tl.abs(x), axis=0))
    sb, _ = tl.broadcast(s[None, :], x)
    return int8_codes(x, sb), s


def kernel_output(out: torch.Tensor) -> torch.Tensor:
    """The buffer the kernel stores its output into.

    On a GPU the kernel casts fp32 -> bf16 with round-to-nearest-even (``fptrunc``), as torch
    does. The interpreter's fp32 -> bf16 cast truncates instead, so under ``TRITON_INTERPRET``
    a bf16 output is written as fp32 and rounded by torch in :func:`finish_output`.
    """
    if interpreted() and out.dtype == torch.bfloat16:
        return torch.empty(out.shape, dtype=torch.float32, device=out.device)
    return out


def finish_output(out: torch.Tensor, kout: torch.Tensor) -> None:
    """Copy the kernel's buffer into ``out`` when :func:`kernel_output` substituted one."""
    if kout is not out:
        out.copy_(kout)
