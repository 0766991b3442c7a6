"""Modules: the multi-scale retention layer of a RetNet and its parts.

Example:
    >>> import torch
    >>> from retquant.nn import MultiScaleRetention
    >>> y, _ = MultiScaleRetention(32, 4, quant="int8")(torch.randn(1, 7, 32))
"""

from retquant.nn.ffn import GatedFFN
from retquant.nn.norm import RMSNorm
from retquant.nn.position import RotaryPosition
from retquant.nn.retention import MultiScaleRetention, RetentionCache

__all__ = ["GatedFFN", "MultiScaleRetention", "RMSNorm", "RetentionCache", "RotaryPosition"]
