"""How one tensor is quantized: a frozen dataclass, validated at construction."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from retquant.quant.ranges import check_bits, int_range


class Granularity(str, Enum):
    """Which elements share one scale.

    In the chunked layout ``[B, H, N_chunks, C, D]`` of the retention operands:

    - ``TENSOR``: one scale for the whole tensor;
    - ``HEAD``: one per (batch, head);
    - ``BLOCK``: one per (batch, head, chunk) — a C x D block;
    - ``TOKEN``: one per token (row), shared over the feature dim;
    - ``CHANNEL``: one per feature (column) within each chunk, shared over the chunk's tokens.
    """

    TENSOR = "tensor"
    HEAD = "head"
    BLOCK = "block"
    TOKEN = "token"
    CHANNEL = "channel"


class Rounding(str, Enum):
    NEAREST = "nearest"  # round half to even, as torch.round and the kernels' cvt instructions
    STOCHASTIC = "stochastic"  # floor(x / s + u), u ~ U[0, 1)


@dataclass(frozen=True)
class QuantSpec:
    """Quantization of one tensor.

    Args:
        bits: 4, 8 or 16.
        symmetric: zero point 0 and range ±(2**(b-1) - 1); else full range with a zero point.
        granularity: which elements share a scale (see :class:`Granularity`).
        rounding: ``"nearest"`` (half to even) or ``"stochastic"``.
        static_range: ``None`` for dynamic ranges (computed from the data at run time), or a
            calibrated ``(lo, hi)`` used for every group (values outside are clipped).

    Example:
        >>> QuantSpec(bits=8, granularity="token")
        QuantSpec(bits=8, symmetric=True, granularity=<Granularity.TOKEN: 'token'>, ...)
    """

    bits: int = 8
    symmetric: bool = True
    granularity: Granularity = Granularity.TOKEN
    rounding: Rounding = Rounding.NEAREST
    static_range: tuple[float, float] | None = None

    def __post_init__(self):
        check_bits(self.bits)
        if not isinstance(self.symmetric, bool):
            raise TypeError(f"symmetric must be a bool, got {self.symmetric!r}")
        object.__setattr__(self, "granularity", _enum(Granularity, self.granularity, "granularity"))
        object.__setattr__(self, "rounding", _enum(Rounding, self.rounding, "rounding"))
        if self.static_range is not None:
            try:
                lo, hi = (float(x) for x in self.static_range)
            except (TypeError, ValueError) as e:
                raise TypeError(
                    f"static_range must be None or a (lo, hi) pair of floats, got {self.static_range!r}"
                ) from e
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ValueError(f"static_range must be finite with lo < hi, got {(lo, hi)}")
            if self.symmetric and max(abs(lo), abs(hi)) == 0:
                raise ValueError("static_range must not be (0, 0)")
            object.__setattr__(self, "static_range", (lo, hi))

    @property
    def qmin(self) -> int:
        return int_range(self.bits, self.symmetric)[0]

    @property
    def qmax(self) -> int:
        return int_range(self.bits, self.symmetric)[1]

    @property
    def dynamic(self) -> bool:
        return self.static_range is None


def _enum(cls, value, name):
    if isinstance(value, cls):
        return value
    try:
        return cls(value)
    except ValueError:
        choices = [m.value for m in cls]
        raise ValueError(f"{name} must be one of {choices}, got {value!r}") from None
