"""The specifications every backend reproduces: the float64 forms of multi-scale retention
(:mod:`~retquant.spec.naive`) and the exact integer algorithms (:mod:`~retquant.spec.int_chunk`,
:mod:`~retquant.spec.int_recurrent`, on the exact GEMM of :mod:`~retquant.spec.int_gemm`).

They depend on nothing but torch, :mod:`retquant.quant` and :mod:`retquant.decay`; backends and
ops import them, never the other way round.
"""
