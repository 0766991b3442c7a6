"""``GatedFFN``: the SwiGLU feed-forward block of a RetNet layer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GatedFFN(nn.Module):
    """``down_proj(silu(gate_proj(x)) * up_proj(x))`` (SwiGLU).

    The three projections are plain :class:`torch.nn.Linear` attributes named ``gate_proj``,
    ``up_proj`` and ``down_proj`` so a model-level quantizer can swap them by name.

    Args:
        hidden_size: input and output features.
        intermediate_size: features of the gated hidden layer.
        bias: whether the projections have a bias.

    Example:
        >>> ffn = GatedFFN(16, 40)
        >>> ffn(torch.randn(2, 5, 16)).shape
        torch.Size([2, 5, 16])
    """

    def __init__(self, hidden_size: int, intermediate_size: int, *, bias: bool = False):
        super().__init__()
        for name, n in (("hidden_size", hidden_size), ("intermediate_size", intermediate_size)):
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise ValueError(f"{name} must be a positive int, got {n!r}")
        self.hidden_size, self.intermediate_size = hidden_size, intermediate_size
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1:] != (self.hidden_size,):
            raise ValueError(f"x must have shape [..., hidden_size={self.hidden_size}], got {list(x.shape)}")
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
