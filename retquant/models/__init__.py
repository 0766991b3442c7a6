"""Small models built from :mod:`retquant.nn`: a RetNet language model.

Example:
    >>> import torch
    >>> from retquant.models import RetNetConfig, RetNetLM
    >>> model = RetNetLM(RetNetConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4))
    >>> model.loss(torch.randint(0, 64, (2, 10))).shape
    torch.Size([])
"""

from retquant.models.generation import generate
from retquant.models.retnet import RetNetBlock, RetNetConfig, RetNetLM

__all__ = ["RetNetBlock", "RetNetConfig", "RetNetLM", "generate"]
