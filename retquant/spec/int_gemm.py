"""Exact integer GEMM for the PyTorch specification.

The operands are integer codes (|a| <= 2**16, |b| <= 2**16). They are multiplied as float64:
every product is an integer below 2**32 and every partial sum an integer below 2**53, and all
such integers are exactly representable in float64, so the result is exact whatever order the
BLAS sums in. It equals the int32 accumulator of an int8 kernel (which cannot overflow for
8-bit codes: 127 * 127 * K < 2**31 for K < 133 000) and is returned as int64. A bound check
refuses shapes where exactness could not be guaranteed. Float64 BLAS is used rather than
``torch._int_mm`` because it takes any bit width, any batch shape and any size (``_int_mm`` is
2-D, int8 only and has shape constraints on some devices); the tests compare it with plain
int64 matmul.
"""

from __future__ import annotations

import torch

_EXACT_LIMIT = 2**53


def int_gemm(a: torch.Tensor, b: torch.Tensor, max_a: int, max_b: int) -> torch.Tensor:
    """Exact ``a @ b`` (batched) of integer tensors with |a| <= max_a, |b| <= max_b; int64.

    Example:
        >>> a = torch.tensor([[127, -127]], dtype=torch.int32)
        >>> int_gemm(a, a.T, 127, 127)
        tensor([[32258]])
    """
    inner = a.shape[-1]
    if max_a * max_b * inner >= _EXACT_LIMIT:
        raise ValueError(
            f"int_gemm: {max_a} * {max_b} * {inner} reaches 2**53; the float64 GEMM would not "
            "be exact for this reduction length"
        )
    return torch.matmul(a.to(torch.float64), b.to(torch.float64)).to(torch.int64)
