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

# The model-level API is imported on first use: it pulls in the modules, the ops and the
# backends, which ``import retquant`` alone does not need.
_MODEL_API = (
    "quantize_",
    "convert_",
    "calibrate",
    "report",
    "PTQConfig",
    "QATConfig",
    "LinearQuantConfig",
    "QuantizerConfig",
    "Rule",
)


def __getattr__(name):
    if name in _MODEL_API:
        import retquant.quantization as api

        return getattr(api, name)
    raise AttributeError(f"module 'retquant' has no attribute {name!r}")


__all__ = [
    *_MODEL_API,
    "PRESETS",
    "ErrorReport",
    "Granularity",
    "QuantSpec",
    "RetentionQuantConfig",
    "Rounding",
    "compare",
]
