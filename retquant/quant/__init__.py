"""Quantization primitives and the retention quantization config."""

from retquant.quant.config import PRESETS, RetentionQuantConfig, resolve_quant
from retquant.quant.primitives import (
    centered,
    compute_qparams,
    dequantize,
    fake_quantize,
    quantize,
)
from retquant.quant.ranges import SUPPORTED_BITS, int_range, storage_dtype
from retquant.quant.spec import Granularity, QuantSpec, Rounding

__all__ = [
    "PRESETS",
    "SUPPORTED_BITS",
    "Granularity",
    "QuantSpec",
    "RetentionQuantConfig",
    "Rounding",
    "centered",
    "compute_qparams",
    "dequantize",
    "fake_quantize",
    "int_range",
    "quantize",
    "resolve_quant",
    "storage_dtype",
]
