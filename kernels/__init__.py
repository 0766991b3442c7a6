"""Triton kernels of retquant (installed as ``retquant.kernels``); one file per kernel."""
