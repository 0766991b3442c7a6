"""Quantizers for quantization-aware training and post-training calibration.

Learnable quantizers (PACT, LSQ, TQT), fixed- and dynamic-range quantizers and PTQ observers,
all behind one interface (:class:`retquant.qat.base.Quantizer`) built on
:class:`retquant.QuantSpec` and the arithmetic of :mod:`retquant.quant.primitives`.
"""
