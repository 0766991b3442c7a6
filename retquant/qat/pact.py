"""PACT: a learned clipping value alpha (Choi et al. 2018, "PACT: Parameterized Clipping
Activation for Quantized Neural Networks")."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from retquant.qat.base import MIN_STEP, LearnableQuantizer, QuantizedTensor, range_qparams
from retquant.quant.primitives import dequantize, quantize
from retquant.quant.spec import QuantSpec


class _PACTFunction(torch.autograd.Function):
    """y = quantize(clip(x, lo, alpha)) with lo = -alpha (symmetric) or 0 (asymmetric).

    Backward, with the straight-through estimator on round as in the paper:
    dy/dx = 1 for lo <= x <= alpha, else 0; dy/dalpha = 1 for x > alpha, -1 for x < -alpha
    (symmetric only: there the lower clip moves with alpha), else 0.
    """

    @staticmethod
    def forward(ctx, x, alpha, spec, generator):
        a = alpha.detach().float().clamp_min(MIN_STEP)
        lo = -a if spec.symmetric else torch.zeros_like(a)
        scale, zero = range_qparams(lo, a, spec)
        codes = quantize(x, spec, scale, zero, generator)
        x_hat = dequantize(codes, scale, zero)
        ctx.save_for_backward(x.detach(), a)
        ctx.symmetric = spec.symmetric
        ctx.alpha_meta = (alpha.shape, alpha.dtype)
        ctx.mark_non_differentiable(codes, scale, zero)
        return x_hat, codes, scale, zero

    @staticmethod
    def backward(ctx, g, *_):
        x, a = ctx.saved_tensors
        shape, dtype = ctx.alpha_meta
        above = x > a
        below = x < (-a if ctx.symmetric else torch.zeros_like(a))
        dx = g * ~(above | below)
        dalpha = g * above
        if ctx.symmetric:
            dalpha = dalpha - g * below
        return dx.to(x.dtype), dalpha.sum_to_size(shape).to(dtype), None, None


def pact_quantize(
    x: Tensor, alpha: Tensor, spec: QuantSpec, generator: torch.Generator | None = None
) -> QuantizedTensor:
    """Functional PACT: ``alpha`` broadcastable keepdim against ``x`` (``[1, ..]`` or ``[C, 1, ..]``).

    Symmetric specs clip to ``[-alpha, alpha]`` with scale ``alpha / qmax``; asymmetric ones
    (the paper's ReLU case) clip to ``[0, alpha]``: zero point ``qmin`` and scale
    ``alpha / (qmax - qmin)``, so 0 maps onto the code ``qmin`` and alpha onto ``qmax``.

    Example:
        >>> spec = QuantSpec(bits=4, granularity="tensor")
        >>> pact_quantize(torch.tensor([0.2, 5.0]), torch.tensor([1.0]), spec).codes
        tensor([1, 7], dtype=torch.int8)
    """
    x_hat, codes, scale, zero = _PACTFunction.apply(x, alpha, spec, generator)
    return QuantizedTensor(x_hat, codes, scale, zero)


class PACTQuantizer(LearnableQuantizer):
    """Learned clip alpha (Choi et al. 2018), per tensor or per channel of dim 0.

    Symmetric: clip to ``[-alpha, alpha]``, scale ``alpha / qmax``. Asymmetric (the paper's
    activations after ReLU): clip to ``[0, alpha]`` onto the full integer range. Gradients are the
    paper's (see :func:`pact_quantize`). ``alpha`` starts at ``init_alpha`` or, if that is None, at
    the first batch's amax (max |x| when symmetric, max x when not) per group; an all-zero group
    starts at 1. (The paper adds an L2 penalty on alpha; add it to the loss if wanted.)

    Args:
        spec: granularity ``"tensor"`` or ``"channel"``; ``static_range`` must be None.
        num_channels: size of dim 0, required with granularity ``"channel"``.
        init_alpha: optional positive initial clip (a float, or a ``[C]`` tensor per channel).
        generator: optional generator for stochastic rounding.

    Example:
        >>> act = PACTQuantizer(QuantSpec(bits=4, symmetric=False, granularity="tensor"), init_alpha=6.0)
        >>> y = act(torch.relu(torch.randn(32, 64)))
        >>> y.sum().backward()  # act.alpha.grad: the count of elements above alpha
    """

    param_name = "alpha"

    def __init__(
        self,
        spec: QuantSpec,
        num_channels: int | None = None,
        init_alpha: float | Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ):
        super().__init__(spec, num_channels, generator=generator)
        self.alpha = nn.Parameter(torch.ones(self.param_shape))
        if init_alpha is not None:
            a = torch.as_tensor(init_alpha, dtype=torch.float32)
            if not (torch.isfinite(a).all() and (a > 0).all()):
                raise ValueError(f"init_alpha must be positive and finite, got {init_alpha!r}")
            try:
                a = a.expand(self.param_shape) if a.numel() == 1 else a.reshape(self.param_shape)
            except RuntimeError:
                raise ValueError(
                    f"init_alpha must be a scalar or have {math.prod(self.param_shape)} elements, "
                    f"got shape {tuple(a.shape)}"
                ) from None
            self._set_initialized(a)

    def init_value(self, x: Tensor) -> Tensor:
        amax = self.group_amax(x, signed=self.spec.symmetric)
        return torch.where(amax > 0, amax, 1.0)

    def qparams(self, x: Tensor) -> tuple[Tensor, Tensor]:
        a = self.param_view(x).detach().float().clamp_min(MIN_STEP)
        return range_qparams(-a if self.spec.symmetric else torch.zeros_like(a), a, self.spec)

    def quantize(self, x: Tensor) -> QuantizedTensor:
        return pact_quantize(x, self.param_view(x), self.spec, self.generator)
