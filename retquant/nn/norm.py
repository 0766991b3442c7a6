"""``RMSNorm``: root-mean-square normalisation over the last dimension (RetNet's norm)."""

from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """``y = x / sqrt(mean(x**2, -1) + eps) * weight`` over the last dimension.

    Computed in float32 at least (float64 inputs stay float64) and returned in ``x``'s dtype, so
    a bfloat16 model does not square and average in bfloat16.

    Args:
        dim: size of the normalised (last) dimension.
        eps: added to the mean square.
        elementwise_affine: learn a per-feature ``weight`` (initialised to ones).

    Example:
        >>> norm = RMSNorm(8)
        >>> y = norm(torch.randn(2, 3, 8))
        >>> y.shape, bool(torch.allclose(y.pow(2).mean(-1), torch.ones(2, 3), atol=1e-4))
        (torch.Size([2, 3, 8]), True)
    """

    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = True):
        super().__init__()
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps >= 0:
            raise ValueError(f"eps must be a non-negative number, got {eps!r}")
        self.dim, self.eps = dim, float(eps)
        self.elementwise_affine = bool(elementwise_affine)
        self.weight = nn.Parameter(torch.ones(dim)) if self.elementwise_affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1:] != (self.dim,):
            raise ValueError(f"x must have shape [..., {self.dim}] (last dim = dim), got {list(x.shape)}")
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.weight is not None:
            y = y * self.weight.to(y.dtype)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
