"""Modules: the quantized linear layer and the multi-scale retention layer of a RetNet."""
