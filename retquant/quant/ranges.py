"""Integer ranges of every supported bit width: the one place they are defined.

Symmetric quantization uses the restricted range [-(2**(b-1) - 1), 2**(b-1) - 1] so that
-x quantizes to -q (and the +128 offset trick of VNNI kernels stays inside uint8).
Asymmetric quantization uses the full range [-2**(b-1), 2**(b-1) - 1] with an integer zero point.
"""

from __future__ import annotations

import torch

SUPPORTED_BITS = (4, 8, 16)


def check_bits(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise TypeError(f"bits must be an int in {SUPPORTED_BITS}, got {bits!r}")
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {bits}")
    return bits


def int_range(bits: int, symmetric: bool) -> tuple[int, int]:
    """(qmin, qmax) for ``bits``.

    Example:
        >>> int_range(8, symmetric=True), int_range(8, symmetric=False)
        ((-127, 127), (-128, 127))
    """
    check_bits(bits)
    qmax = 2 ** (bits - 1) - 1
    return (-qmax, qmax) if symmetric else (-qmax - 1, qmax)


def storage_dtype(bits: int) -> torch.dtype:
    """Smallest torch integer dtype that holds a ``bits``-bit code (int4 codes live in int8)."""
    check_bits(bits)
    return torch.int8 if bits <= 8 else torch.int16


def max_centered_magnitude(bits: int, symmetric: bool) -> int:
    """Largest |q - zero_point| an operand can contribute to an integer GEMM."""
    qmin, qmax = int_range(bits, symmetric)
    return qmax if symmetric else qmax - qmin
