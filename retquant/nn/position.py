"""Relative position for retention: the rotation ("theta shift") RetNet applies to q and k.

Token ``n`` rotates each pair of features ``(x_a, x_b)`` of q and k by the angle ``n * theta_i``,
so ``q_n . k_m`` depends on ``n - m`` only (the position enters retention through that product
and the decay ``gamma**(n-m)``). Two conventions exist and both are offered:

- ``style="retnet"`` — torchscale's RetNet (``RetNetRelPos`` + ``theta_shift``): pairs are
  adjacent features ``(x_{2i}, x_{2i+1})`` and ``theta_i = 10000 ** (-i / (K/2 - 1))``
  (``torch.linspace(0, 1, K/2)`` in the exponent, so the last pair turns at exactly 1e-4).
- ``style="rope"`` — fla's ``RotaryEmbedding`` (the GPT-NeoX rotary, not interleaved): pairs are
  ``(x_i, x_{i+K/2})`` and ``theta_i = 10000 ** (-2i / K)``.

The RetNet paper writes the rotation as xPos; torchscale's RetNet and fla's layer both apply the
plain rotation without xPos's length-dependent scaling (the decay already plays that role), and so
does this module. ``position_offset`` gives the position of the first token (decoding, prefixes).
"""

from __future__ import annotations

import torch
from torch import nn

STYLES = ("retnet", "rope")


class RotaryPosition(nn.Module):
    """Rotate ``q`` and ``k`` ``[B, T, H, K]`` by their absolute positions.

    Args:
        head_dim: K, the per-head feature size of q and k (even).
        base: the frequency base (10000 in both conventions).
        style: ``"retnet"`` (torchscale's theta shift) or ``"rope"`` (fla's rotary).

    Example:
        >>> rot = RotaryPosition(8)
        >>> q = k = torch.randn(1, 5, 2, 8)
        >>> qr, kr = rot(q, k, position_offset=3)
        >>> qr.shape
        torch.Size([1, 5, 2, 8])
    """

    def __init__(self, head_dim: int, *, base: float = 10000.0, style: str = "retnet"):
        super().__init__()
        if not isinstance(head_dim, int) or isinstance(head_dim, bool) or head_dim < 2 or head_dim % 2:
            raise ValueError(
                f"head_dim must be an even int >= 2 (features rotate in pairs), got {head_dim!r}"
            )
        if style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}, got {style!r}")
        if not isinstance(base, (int, float)) or isinstance(base, bool) or not base > 1:
            raise ValueError(f"base must be a number > 1, got {base!r}")
        self.head_dim, self.base, self.style = head_dim, float(base), style
        half = head_dim // 2
        if style == "retnet":
            exponent = torch.linspace(0, 1, half, dtype=torch.float64)
        else:
            exponent = torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim
        # A plain float64 tensor, not a buffer (model.to(bfloat16) would round it): position * theta
        # keeps its precision at long positions; the angles are cast per call.
        self.theta = self.base**-exponent

    def angles(self, length: int, position_offset: int = 0, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cos, sin)``, each ``[length, K]`` float64, laid out to multiply q's last dimension."""
        pos = torch.arange(position_offset, position_offset + length, dtype=torch.float64, device=device)
        ang = pos[:, None] * self.theta.to(device)[None, :]
        # retnet: pair i occupies features 2i, 2i+1; rope: features i and i + K/2
        ang = ang.repeat_interleave(2, dim=-1) if self.style == "retnet" else torch.cat([ang, ang], dim=-1)
        return ang.cos(), ang.sin()

    def _rotate(self, x: torch.Tensor) -> torch.Tensor:
        """The partner of each feature with the sign of a +90 degree turn: ``(-x_b, x_a)``."""
        if self.style == "retnet":
            return torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((-x2, x1), dim=-1)

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, position_offset: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        for name, x in (("q", q), ("k", k)):
            if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[-1] != self.head_dim:
                got = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise ValueError(f"{name} must have shape [B, T, H, K={self.head_dim}], got {got}")
        if q.shape[:2] != k.shape[:2]:
            raise ValueError(f"q and k must share [B, T], got {list(q.shape)} and {list(k.shape)}")
        if not isinstance(position_offset, int) or isinstance(position_offset, bool) or position_offset < 0:
            raise ValueError(f"position_offset must be a non-negative int, got {position_offset!r}")
        cos, sin = self.angles(q.shape[1], position_offset, device=q.device)
        cos, sin = cos[:, None, :], sin[:, None, :]  # broadcast over heads

        def turn(x):
            ct = torch.promote_types(x.dtype, torch.float32)  # angles at least in float32
            return (x * cos.to(ct) + self._rotate(x) * sin.to(ct)).to(x.dtype)

        return turn(q), turn(k)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, base={self.base}, style={self.style!r}"
