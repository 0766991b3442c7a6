"""retquant: quantized multi-scale retention with integer GEMMs and fused decay.

Example:
    >>> import torch, retquant
    >>> from retquant.ops import chunk_retention
    >>> q = k = v = torch.randn(1, 64, 2, 32)
    >>> o, _ = chunk_retention(q, k, v, quant="int8")
"""

from retquant.metrics import ErrorReport, compare
from retquant.quant import (
    PRESETS,
    Granularity,
    QuantSpec,
    RetentionQuantConfig,
    Rounding,
)

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "ErrorReport",
    "Granularity",
    "QuantSpec",
    "RetentionQuantConfig",
    "Rounding",
    "compare",
]
