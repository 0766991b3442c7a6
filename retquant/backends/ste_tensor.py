"""Fused per-tensor fake quantization on the CPU extension (``csrc/ste_tensor.cpp``).

The learnable activation quantizers (PACT, LSQ, TQT) with one scale per tensor cost a dozen
elementwise torch passes each way; these two ops do the forward codes and the straight-through
backward in one pass each, with the arithmetic of :mod:`retquant.quant.primitives`:

- :func:`ste_codes`: ``round_half_even(clamp(x / s, -qmax, qmax))`` as int8, bit-identical to
  ``quantize(x, spec, s, 0)`` for a symmetric spec;
- :func:`ste_backward`: ``dx = g`` where ``x`` is inside the quantizer's range (by ``mode``: LSQ
  ``|x / s| <= qmax``, TQT ``|round(x / s)| <= qmax``, PACT ``|x| <= alpha``), else 0, and the
  float64 sums ``[sum g * (inside ? round(x/s) - x/s : ±qmax), sum g * (above - below)]`` from
  which LSQ's step, TQT's log2 threshold and PACT's clip get their gradients.

Example:
    >>> x = torch.tensor([0.26, -9.0, 1.0])
    >>> ste_codes(x, 0.25, 7)
    tensor([ 1, -7,  4], dtype=torch.int8)
"""

from __future__ import annotations

import torch

from retquant.backends import cpu_extension
from retquant.validate import nonfinite_error

MODES = {"lsq": 0, "tqt": 1, "pact": 2}


def available() -> bool:
    """Whether the extension (and so these ops) can run here."""
    return cpu_extension.load_error() is None


def _check(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dtype != torch.float32 or x.device.type != "cpu":
        raise TypeError(f"{name} must be a float32 CPU tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    return x.contiguous()


def ste_codes(x: torch.Tensor, s: float, qmax: int, *, name: str = "x") -> torch.Tensor:
    """int8 codes of ``x`` with the one scale ``s`` (a positive float32 value), ``|code| <= qmax``;
    ``ValueError`` naming ``name`` if ``x`` holds inf or NaN."""
    codes, bad = cpu_extension.ops().ste_tensor_codes(
        _check(x, name), float(s), int(qmax), cpu_extension.isa_code()
    )
    if bad:
        raise nonfinite_error(name)
    return codes


def ste_backward(
    x: torch.Tensor, g: torch.Tensor, s: float, qmax: int, mode: str, alpha: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dx, sums float64 [2])`` of the straight-through backward (see the module docstring).

    Example:
        >>> dx, sums = ste_backward(torch.tensor([0.26, 9.0]), torch.ones(2), 0.25, 7, "lsq")
        >>> dx.tolist(), round(sums[1].item())
        ([1.0, 0.0], 1)
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {sorted(MODES)}, got {mode!r}")
    x, g = _check(x, "x"), _check(g, "g")
    if x.shape != g.shape:
        raise ValueError(f"g must have x's shape {list(x.shape)}, got {list(g.shape)}")
    return cpu_extension.ops().ste_tensor_backward(
        x, g, float(s), int(qmax), float(alpha), MODES[mode], cpu_extension.isa_code()
    )
