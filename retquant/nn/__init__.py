"""Modules: the multi-scale retention layer of a RetNet and its parts, and the int8 linear layers.

Example:
    >>> import torch
    >>> from retquant.nn import MultiScaleRetention
    >>> y, _ = MultiScaleRetention(32, 4, quant="int8")(torch.randn(1, 7, 32))
"""

from retquant.nn.ffn import GatedFFN
from retquant.nn.norm import RMSNorm
from retquant.nn.position import RotaryPosition
from retquant.nn.quant_linear import Int8Linear, QuantLinear
from retquant.nn.retention import MultiScaleRetention, RetentionCache

__all__ = [
    "GatedFFN",
    "Int8Linear",
    "MultiScaleRetention",
    "QuantLinear",
    "RMSNorm",
    "RetentionCache",
    "RotaryPosition",
]
