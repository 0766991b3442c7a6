"""Quantizers for quantization-aware training and post-training calibration.

Learnable quantizers (PACT, LSQ, TQT), fixed- and dynamic-range quantizers and PTQ observers,
all behind one interface (:class:`retquant.qat.base.Quantizer`) built on
:class:`retquant.QuantSpec` and the arithmetic of :mod:`retquant.quant.primitives`.
"""

from retquant.qat.base import LearnableQuantizer, QuantizedTensor, Quantizer, range_qparams, reduce_dims
from retquant.qat.calibrate import calibrate
from retquant.qat.dynamic import DynamicQuantizer
from retquant.qat.fixed import FixedQuantizer, ste_quantize
from retquant.qat.lsq import LSQQuantizer, lsq_quantize
from retquant.qat.observed import ObservedQuantizer
from retquant.qat.observers import (
    ACIQObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    Observer,
    PercentileObserver,
    SamplingObserver,
    aciq_clip_ratio,
)
from retquant.qat.pact import PACTQuantizer, pact_quantize
from retquant.qat.tqt import TQTQuantizer, tqt_quantize, tqt_scale

__all__ = [
    "ACIQObserver",
    "DynamicQuantizer",
    "FixedQuantizer",
    "LSQQuantizer",
    "LearnableQuantizer",
    "MSEObserver",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "ObservedQuantizer",
    "Observer",
    "PACTQuantizer",
    "PercentileObserver",
    "QuantizedTensor",
    "Quantizer",
    "SamplingObserver",
    "TQTQuantizer",
    "aciq_clip_ratio",
    "calibrate",
    "lsq_quantize",
    "pact_quantize",
    "range_qparams",
    "reduce_dims",
    "ste_quantize",
    "tqt_quantize",
    "tqt_scale",
]
