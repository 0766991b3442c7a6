"""The peer of the quantized training path: int8 fake-quantization written with torch ops.

What a user emulating int8 QAT of retention writes without retquant's kernels: quantize and
dequantize ``q * scale`` and ``k`` per token and ``v`` per (chunk, channel) with ``amax``,
division, ``round``, ``clamp`` (the default int8 configuration's granularities), pass the
gradient straight through (``x + (fq(x) - x).detach()``), and run the float chunk op with
autograd through it. The float op is retquant's own float path, the fastest one available, so
the comparison credits the emulation with the best float kernel.

Example:
    >>> import torch
    >>> from retquant.decay import default_g_gamma
    >>> q = k = v = torch.randn(1, 128, 2, 16)
    >>> fake_quant_chunk_retention(q, k, v, default_g_gamma(2), 0.25).shape
    torch.Size([1, 128, 2, 16])
"""

from __future__ import annotations

import torch

from retquant.constants import CHUNK_SIZE
from retquant.ops import chunk_retention

QMAX = 127.0


def _fake_quant(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Symmetric int8 quantize-dequantize with one scale per slice along ``dim``, STE."""
    scale = x.detach().abs().amax(dim=dim, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny) / QMAX
    fq = torch.clamp(torch.round(x / scale), -QMAX, QMAX) * scale
    return x + (fq - x).detach()


def fake_quant_operands(q, k, v) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``q, k`` per token and ``v`` per (chunk, channel) fake-quantized (``[B, T, H, D]``, T a
    multiple of 64): the default int8 configuration's granularities."""
    B, T, H, V = v.shape
    if T % CHUNK_SIZE:
        raise ValueError(f"T={T} must be a multiple of {CHUNK_SIZE}")
    vf = _fake_quant(v.reshape(B, T // CHUNK_SIZE, CHUNK_SIZE, H, V), dim=2).reshape(B, T, H, V)
    return _fake_quant(q, dim=-1), _fake_quant(k, dim=-1), vf


def fake_quant_chunk_retention(q, k, v, g_gamma, scale: float) -> torch.Tensor:
    """``o [B, T, H, V]``: fake-quantized operands, then the float chunk op (T a multiple of 64)."""
    qf, kf, vf = fake_quant_operands(q * scale, k, v)
    return chunk_retention(qf, kf, vf, scale=1.0, g_gamma=g_gamma)[0]
