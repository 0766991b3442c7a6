"""The model-level API: ``quantize_(model, config)``, calibration, conversion and ``report``.

Example:
    >>> from retquant.quantization import quantize_, QATConfig, convert_, report
"""

from retquant.qat import calibrate
from retquant.quantization.config import (
    LinearQuantConfig,
    ModelQuantConfig,
    PTQConfig,
    QATConfig,
    QuantizerConfig,
    Rule,
)
from retquant.quantization.quantize import build_quantizer, convert_, quantize_
from retquant.quantization.report import describe_quantizer, describe_retention, report

__all__ = [
    "LinearQuantConfig",
    "ModelQuantConfig",
    "PTQConfig",
    "QATConfig",
    "QuantizerConfig",
    "Rule",
    "build_quantizer",
    "calibrate",
    "convert_",
    "describe_quantizer",
    "describe_retention",
    "quantize_",
    "report",
]
