"""Scales, zero points, quantize and dequantize: the arithmetic every backend reproduces.

All of it is float32 IEEE arithmetic with one correctly rounded operation per step (an exact
max/min, one division for the scale, one division per element, round-half-to-even), so a kernel
that performs the same operations gets the same integer codes bit for bit.

    scale  = amax / qmax                       (symmetric; amax = max |x| over the group)
    scale  = (hi - lo) / (qmax - qmin)         (asymmetric; lo <= 0 <= hi)
    zero   = clamp(qmin - round(lo / scale))   (asymmetric only; 0 when symmetric)
    code   = clamp(round(x / scale) + zero, qmin, qmax)
    x_hat  = (code - zero) * scale

An all-zero group gets scale 1 (its codes are 0), so no division by zero can occur. Every
division takes a divisor tensor on the dividend's device: PyTorch's CUDA kernels replace
``x / number`` (a Python number or a CPU scalar tensor) by ``x * (1 / number)``, which is not
the correctly rounded quotient (it differs in the last bit for some ``x``), so the
specification would change with the device. (``smooth_k``'s float32 channel means are sums in a
device-dependent order; that option is not bit-identical across devices.)
"""

from __future__ import annotations

import torch

from retquant.quant.ranges import storage_dtype
from retquant.quant.spec import QuantSpec, Rounding


def compute_qparams(
    x: torch.Tensor,
    spec: QuantSpec,
    reduce_dims: tuple[int, ...],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale (float32) and zero point (int32) for ``x``, shared along ``reduce_dims``.

    Both keep the reduced dims (size 1) so they broadcast against ``x``. Zero padding never
    changes a range: the symmetric amax ignores zeros and the asymmetric range always holds 0.

    Example:
        >>> s, z = compute_qparams(torch.tensor([[1.0, -2.0]]), QuantSpec(bits=8), (1,))
        >>> s.item() == 2.0 / 127, z.item()
        (True, 0)
    """
    x = x.float()
    keep = [1 if d in _norm_dims(reduce_dims, x.ndim) else n for d, n in enumerate(x.shape)]
    if spec.static_range is not None:
        lo = torch.full(keep, spec.static_range[0], dtype=torch.float32, device=x.device)
        hi = torch.full(keep, spec.static_range[1], dtype=torch.float32, device=x.device)
    else:
        dims = tuple(sorted(_norm_dims(reduce_dims, x.ndim)))
        hi = torch.amax(x, dim=dims, keepdim=True) if dims else x
        lo = torch.amin(x, dim=dims, keepdim=True) if dims else x
    if spec.symmetric:
        amax = torch.maximum(hi.abs(), lo.abs())
        scale = amax / _divisor(spec.qmax, amax)
        zero = torch.zeros_like(scale, dtype=torch.int32)
    else:
        lo = torch.clamp(lo, max=0.0)
        hi = torch.clamp(hi, min=0.0)
        scale = (hi - lo) / _divisor(spec.qmax - spec.qmin, hi)
        safe = torch.where(scale > 0, scale, 1.0)
        zero = torch.clamp(spec.qmin - torch.round(lo / safe), spec.qmin, spec.qmax).to(torch.int32)
    scale = torch.where(scale > 0, scale, 1.0)
    return scale, zero


def _divisor(n: int, like: torch.Tensor) -> torch.Tensor:
    """``n`` as a float32 tensor on ``like``'s device, so ``x / _divisor(n, x)`` is IEEE division
    on every device (see the module docstring)."""
    return torch.full((), float(n), dtype=torch.float32, device=like.device)


def quantize(
    x: torch.Tensor,
    spec: QuantSpec,
    scale: torch.Tensor,
    zero: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Integer codes of ``x`` (int8 storage for 4/8 bits, int16 for 16 bits).

    Example:
        >>> spec = QuantSpec(bits=8)
        >>> x = torch.tensor([[0.5, -1.0]])
        >>> quantize(x, spec, *compute_qparams(x, spec, (1,)))
        tensor([[  64, -127]], dtype=torch.int8)
    """
    t = x.float() / scale
    if spec.rounding is Rounding.STOCHASTIC:
        u = torch.rand(t.shape, generator=generator, device=t.device, dtype=t.dtype)
        t = torch.floor(t + u)
    else:
        t = torch.round(t)
    q = torch.clamp(t + zero.float(), spec.qmin, spec.qmax)
    return q.to(storage_dtype(spec.bits))


def centered(codes: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """``codes - zero`` as int32: the integers an integer GEMM multiplies."""
    return codes.to(torch.int32) - zero.to(torch.int32)


def dequantize(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """``(codes - zero) * scale`` in float32."""
    return centered(codes, zero).float() * scale


def fake_quantize(
    x: torch.Tensor,
    spec: QuantSpec,
    reduce_dims: tuple[int, ...],
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Quantize then dequantize ``x`` (float32 result), scales shared along ``reduce_dims``."""
    scale, zero = compute_qparams(x, spec, reduce_dims)
    return dequantize(quantize(x, spec, scale, zero, generator), scale, zero)


def _norm_dims(dims, ndim):
    return {d % ndim for d in dims}
