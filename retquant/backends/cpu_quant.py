"""Int8 quantization of token tensors with the C++ extension, for the autograd layer.

Two ops (``torch.ops.retquant.quantize_tokens`` / ``quantize_v_chunks``, ``csrc/quantize_rows.cpp``)
bit-identical to :func:`retquant.quant.primitives.compute_qparams` / ``quantize`` with the
default int8 spec (symmetric, scale = amax / 127 as one float32 division, codes =
round-half-even(x / scale) clamped to +-127, an all-zero group gets scale 1):

- :func:`quantize_tokens`: one scale per token and head (the ``q`` / ``k`` quantization of
  :mod:`retquant.spec.int_chunk`; q is multiplied by ``scale`` first, as the float32 product);
- :func:`quantize_v_chunks`: one scale per (chunk, head, channel), chunks of ``chunk_size``
  tokens numbered sequence by sequence (the ``v`` quantization of the spec).

Inputs are ``[T_total, H, D]`` float32 or bfloat16 CPU tensors (sequences packed along T, as the
kernels take them); inf/NaN raise ``ValueError`` naming the argument.
"""

from __future__ import annotations

import math
import struct

import torch

from retquant.backends import cpu_extension
from retquant.constants import CHUNK_SIZE
from retquant.validate import nonfinite_error

_DTYPES = (torch.float32, torch.bfloat16)
_NONFINITE, _PRODUCT_NONFINITE = 1, 2  # csrc/quantize_rows.h


def _check_tokens(x, name: str, dims: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {dims}, got {type(x).__name__}")
    if x.dtype not in _DTYPES:
        raise TypeError(f"{name} must be float32 or bfloat16, got {x.dtype}")
    if x.dim() != 3 or x.numel() == 0:
        raise ValueError(f"{name} must have shape {dims} with non-empty dims, got {list(x.shape)}")
    if x.device.type != "cpu":
        raise ValueError(f"{name} must be a CPU tensor, got {x.device}")
    return x.detach().contiguous()


def _raise(status: int, name: str, what: str) -> None:
    if status & _NONFINITE:
        raise nonfinite_error(name)
    if status & _PRODUCT_NONFINITE:
        raise ValueError(f"{what} overflows float32 (|{name}| too large for the multiplier)")


def quantize_tokens(
    x: torch.Tensor, mul: float = 1.0, *, name: str = "x"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token int8 codes of ``x * mul``: ``x [T, H, D]`` -> ``(codes int8 [T, H, D], scales
    float32 [T, H])``; ``mul`` is rounded to float32 and multiplies each element first (q's
    ``scale``; 1 for k). ``name`` names ``x`` in errors.

    Example:
        >>> x = torch.tensor([[[0.5, -1.0]]])
        >>> codes, scales = quantize_tokens(x)
        >>> codes, torch.equal(scales, torch.tensor([[1.0]]) / 127)
        (tensor([[[  64, -127]]], dtype=torch.int8), True)
    """
    x = _check_tokens(x, name, "[T, H, D]")
    if isinstance(mul, bool) or not isinstance(mul, (int, float)) or not math.isfinite(mul):
        raise TypeError(f"mul must be a finite float, got {mul!r}")
    try:
        struct.pack("f", mul)
    except OverflowError:
        raise ValueError(f"mul must be within float32's range, got {mul}") from None
    T, H, _ = x.shape
    codes = torch.empty(x.shape, dtype=torch.int8)
    scales = torch.empty(T, H, dtype=torch.float32)
    status = cpu_extension.ops().quantize_tokens(x, float(mul), codes, scales)
    _raise(status, name, f"{name} * {mul}")
    return codes, scales


def quantize_v_chunks(
    v: torch.Tensor, offsets: torch.Tensor, chunk_size: int = CHUNK_SIZE, *, name: str = "v"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(chunk, head, channel) int8 codes of ``v [T_total, H, V]`` packed by
    ``offsets [N + 1]`` (token offsets of the sequences, from 0 to T_total): ``(codes int8
    [T_total, H, V], scales float32 [n_chunks, H, V])`` where chunks of ``chunk_size`` tokens
    are numbered sequence by sequence, each sequence's last chunk possibly short.

    Example:
        >>> v = torch.arange(6.0).view(3, 1, 2)
        >>> codes, scales = quantize_v_chunks(v, torch.tensor([0, 2, 3]), chunk_size=64)
        >>> scales.shape, codes[:, 0, 0].tolist()
        (torch.Size([2, 1, 2]), [0, 127, 127])
    """
    v = _check_tokens(v, name, "[T_total, H, V]")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if not isinstance(offsets, torch.Tensor) or offsets.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"offsets must be an int32/int64 tensor [N + 1], got {offsets!r}")
    off = offsets.detach().to("cpu", torch.int64).contiguous()
    T = v.shape[0]
    if off.dim() != 1 or off.numel() < 2:
        raise ValueError(f"offsets must have shape [N + 1] with N >= 1, got {list(off.shape)}")
    if off[0].item() != 0 or off[-1].item() != T or not bool((off[1:] > off[:-1]).all()):
        raise ValueError(f"offsets must increase strictly from 0 to T_total={T}, got {off.tolist()}")
    lengths = off[1:] - off[:-1]
    n_chunks = int(((lengths + chunk_size - 1) // chunk_size).sum())
    codes = torch.empty(v.shape, dtype=torch.int8)
    scales = torch.empty(n_chunks, v.shape[1], v.shape[2], dtype=torch.float32)
    _raise(cpu_extension.ops().quantize_v_chunks(v, off, chunk_size, codes, scales), name, name)
    return codes, scales
