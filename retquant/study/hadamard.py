"""Hadamard rotation of q and k before the (quantized) retention: exact in float.

With ``H`` an orthonormal K x K Hadamard matrix (``H Hᵀ = I``), ``(Q H)(K H)ᵀ = Q Kᵀ``: every
score, hence the retention output, is unchanged in exact arithmetic, and the state
``Σ γ^(n-m) (k_m H) v_mᵀ = Hᵀ S`` is read back by ``q H`` unchanged too. What changes is the
*distribution* of the quantized operands: a few large channels of q or k are spread over all K
channels, so a per-token (or per-tensor) int4/int8 scale is set by a smaller maximum (the idea of
QuaRot / SpinQuant, applied here to the retention operands only).

Implementation: :func:`apply_hadamard_` switches each :class:`~retquant.nn.MultiScaleRetention`
of a model to the subclass :class:`HadamardRetention`, whose only change is ``_project``: q and k
(after the position rotation) are multiplied by ``H``. The subclass keeps every parameter and
buffer (the state dict is unchanged), so ``quantize_`` still finds the layers, and the sequence
forms and the token-by-token decoder (both call ``_project``) see the same rotation.

Example:
    >>> from retquant.models import RetNetConfig, RetNetLM
    >>> m = RetNetLM(RetNetConfig(vocab_size=50, hidden_size=32, num_layers=1, num_heads=2))
    >>> ids = torch.randint(0, 50, (1, 20))
    >>> ref = m(ids)
    >>> torch.allclose(apply_hadamard_(m)(ids), ref, atol=1e-5)
    True
"""

from __future__ import annotations

import math

import torch
from torch import nn

from retquant.nn import MultiScaleRetention


def hadamard_matrix(n: int, dtype=torch.float32) -> torch.Tensor:
    """The orthonormal Sylvester Hadamard matrix of order ``n`` (a power of two).

    Example:
        >>> h = hadamard_matrix(4)
        >>> torch.allclose(h @ h.T, torch.eye(4))
        True
    """
    if not isinstance(n, int) or n < 1 or n & (n - 1):
        raise ValueError(f"a Sylvester Hadamard matrix needs a power-of-two order, got {n!r}")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return (h / math.sqrt(n)).to(dtype)


class HadamardRetention(MultiScaleRetention):
    """:class:`MultiScaleRetention` whose q and k are rotated by an orthonormal Hadamard matrix
    (see the module docstring); made by :func:`apply_hadamard_`, not constructed directly."""

    hadamard: torch.Tensor

    def _project(self, x: torch.Tensor, position_offset: int):
        q, k, v, g = super()._project(x, position_offset)
        h = self.hadamard.to(device=q.device, dtype=q.dtype)
        return q @ h, k @ h, v, g


def apply_hadamard_(model: nn.Module) -> nn.Module:
    """Rotate q and k of every retention layer of ``model`` (in place); returns ``model``."""
    layers = [m for m in model.modules() if isinstance(m, MultiScaleRetention)]
    if not layers:
        raise ValueError("model has no MultiScaleRetention layer to rotate")
    for layer in layers:
        if isinstance(layer, HadamardRetention):
            raise ValueError("apply_hadamard_: the model is already rotated")
        # a plain attribute, not a buffer: the state dict stays that of the unrotated model
        layer.hadamard = hadamard_matrix(layer.head_k_dim)
        layer.__class__ = HadamardRetention
    return model
