"""TQT: trained power-of-two quantization thresholds (Jain et al. 2020, "Trained Quantization
Thresholds for Accurate and Efficient Fixed-Point Inference of Deep Neural Networks")."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from retquant.qat.base import LearnableQuantizer, QuantizedTensor
from retquant.quant.primitives import dequantize, quantize
from retquant.quant.spec import QuantSpec

_LN2 = math.log(2.0)


def tqt_scale(log2_t: Tensor, bits: int) -> Tensor:
    """The power-of-two scale ``2**ceil(log2 t) / 2**(bits - 1)`` (float32, exact).

    Example:
        >>> tqt_scale(torch.tensor(0.3), 8)  # t = 2**0.3 -> 2**1 / 128
        tensor(0.0156)
    """
    return torch.exp2(torch.ceil(log2_t.detach().float()) - (bits - 1))


class _TQTFunction(torch.autograd.Function):
    """q = clip(round(x / s), n, p) * s, s = 2**ceil(log2 t) / 2**(b-1), with the paper's gradients
    (ceil treated as identity, so ds/dlog2t = s ln 2):

    dq/dlog2t = s ln2 (round(x/s) - x/s) for n <= round(x/s) <= p, s ln2 n below, s ln2 p above;
    dq/dx = 1 for n <= round(x/s) <= p, else 0.
    The inside test uses round-to-nearest of x/s (the paper's condition); the value round(x/s) in
    the gradient is the code actually produced (so stochastic rounding uses its own draw).
    """

    @staticmethod
    def forward(ctx, x, log2_t, spec, generator):
        s = tqt_scale(log2_t, spec.bits)
        zero = torch.zeros_like(s, dtype=torch.int32)
        codes = quantize(x, spec, s, zero, generator)
        x_hat = dequantize(codes, s, zero)
        ctx.save_for_backward(x.detach(), s, codes)
        ctx.meta = (spec.qmin, spec.qmax, log2_t.shape, log2_t.dtype)
        ctx.mark_non_differentiable(codes, s, zero)
        return x_hat, codes, s, zero

    @staticmethod
    def backward(ctx, g, *_):
        x, s, codes = ctx.saved_tensors
        n, p, shape, dtype = ctx.meta
        t = x.float() / s
        r = torch.round(t)
        below, above = r < n, r > p
        inside = ~(below | above)
        dq = torch.where(inside, codes.float() - t, torch.where(below, float(n), float(p))) * (s * _LN2)
        dlog2t = (g * dq).sum_to_size(shape)
        return (g * inside).to(x.dtype), dlog2t.to(dtype), None, None


def tqt_quantize(
    x: Tensor, log2_t: Tensor, spec: QuantSpec, generator: torch.Generator | None = None
) -> QuantizedTensor:
    """Functional TQT: ``log2_t`` broadcastable keepdim against ``x``; symmetric specs only.

    Example:
        >>> spec = QuantSpec(bits=4, granularity="tensor")
        >>> tqt_quantize(torch.tensor([0.3, 5.0]), torch.tensor([0.0]), spec).codes  # s = 1/8
        tensor([2, 7], dtype=torch.int8)
    """
    _check_symmetric(spec)
    x_hat, codes, scale, zero = _TQTFunction.apply(x, log2_t, spec, generator)
    return QuantizedTensor(x_hat, codes, scale, zero)


def _check_symmetric(spec: QuantSpec) -> None:
    if not spec.symmetric:
        raise ValueError(
            "symmetric must be True for TQT: its thresholds are symmetric powers of two (no zero point)"
        )


class TQTQuantizer(LearnableQuantizer):
    """Learned log2 threshold (Jain et al. 2020), power-of-two scale; symmetric only.

    Mapping onto our integer range: the paper quantizes to ``[n, p] = [-2**(b-1), 2**(b-1) - 1]``
    with ``s = 2**ceil(log2 t) / 2**(b-1)``; we keep that ``s`` and ``p`` but use ``n = -p``, the
    restricted symmetric range ``±(2**(b-1) - 1)`` of every retquant kernel (the code ``-2**(b-1)``
    is dropped). The largest representable magnitude is then ``p * s = (1 - 2**(1-b)) *
    2**ceil(log2 t)``, just under the power of two at or above the threshold t.

    ``log2_t`` starts at log2 of the first batch's max |x| per group (the paper's weight
    initialisation; 0 for an all-zero group). Train it with Adam, as the paper does.

    Args:
        spec: symmetric, granularity ``"tensor"`` or ``"channel"``, ``static_range`` None.
        num_channels: size of dim 0, required with granularity ``"channel"``.
        generator: optional generator for stochastic rounding.

    Example:
        >>> q = TQTQuantizer(QuantSpec(bits=8, granularity="tensor"))
        >>> qt = q.quantize(torch.randn(8, 8))
        >>> torch.frexp(qt.scale).mantissa.eq(0.5).all()  # a power of two
        tensor(True)
    """

    param_name = "log2_t"

    def __init__(
        self,
        spec: QuantSpec,
        num_channels: int | None = None,
        *,
        generator: torch.Generator | None = None,
    ):
        _check_symmetric(spec)
        super().__init__(spec, num_channels, generator=generator)
        self.log2_t = nn.Parameter(torch.zeros(self.param_shape))

    def init_value(self, x: Tensor) -> Tensor:
        amax = self.group_amax(x)
        return torch.where(amax > 0, torch.log2(amax), 0.0)

    def qparams(self, x: Tensor) -> tuple[Tensor, Tensor]:
        s = tqt_scale(self.param_view(x), self.spec.bits)
        return s, torch.zeros_like(s, dtype=torch.int32)

    def quantize(self, x: Tensor) -> QuantizedTensor:
        return tqt_quantize(x, self.param_view(x), self.spec, self.generator)
