"""LSQ: a learned step size (Esser et al. 2020, "Learned Step Size Quantization")."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from retquant.qat.base import MIN_STEP, LearnableQuantizer, QuantizedTensor
from retquant.quant.primitives import dequantize, quantize
from retquant.quant.spec import Granularity, QuantSpec

_ROLES = ("weight", "activation")


class _LSQFunction(torch.autograd.Function):
    """v_bar = round(clip(v / s, -Qn, Qp)) * s with the paper's gradients:

    dv = 1 for -Qn <= v/s <= Qp, else 0;
    ds = (-v/s + round(v/s)) inside, -Qn below, Qp above; times the gradient scale g.
    ``round(v/s)`` is the code actually produced (so stochastic rounding uses its own draw).
    """

    @staticmethod
    def forward(ctx, x, step, spec, grad_scale, generator):
        s = step.detach().float().clamp_min(MIN_STEP)
        zero = torch.zeros_like(s, dtype=torch.int32)
        codes = quantize(x, spec, s, zero, generator)
        x_hat = dequantize(codes, s, zero)
        ctx.save_for_backward(x.detach(), s, codes)
        ctx.meta = (spec.qmin, spec.qmax, grad_scale, step.shape, step.dtype)
        ctx.mark_non_differentiable(codes, s, zero)
        return x_hat, codes, s, zero

    @staticmethod
    def backward(ctx, g, *_):
        x, s, codes = ctx.saved_tensors
        qmin, qmax, grad_scale, shape, dtype = ctx.meta
        t = x.float() / s  # the division quantize() performed
        below, above = t < qmin, t > qmax
        inside = ~(below | above)
        dt = torch.where(inside, codes.float() - t, torch.where(below, float(qmin), float(qmax)))
        ds = (g * dt).sum_to_size(shape) * grad_scale
        return (g * inside).to(x.dtype), ds.to(dtype), None, None, None


def lsq_quantize(
    x: Tensor,
    step: Tensor,
    spec: QuantSpec,
    grad_scale: float = 1.0,
    generator: torch.Generator | None = None,
) -> QuantizedTensor:
    """Functional LSQ: ``step`` broadcastable keepdim against ``x``; symmetric specs only.

    With our restricted symmetric range ``±(2**(b-1) - 1)``, ``Qn = Qp = qmax`` (the paper's
    signed range has ``Qn = 2**(b-1)``, one more code that our kernels do not use).

    Example:
        >>> spec = QuantSpec(bits=4, granularity="tensor")
        >>> lsq_quantize(torch.tensor([0.26, 9.0]), torch.tensor([0.25]), spec).codes
        tensor([1, 7], dtype=torch.int8)
    """
    _check_symmetric(spec)
    x_hat, codes, scale, zero = _LSQFunction.apply(x, step, spec, float(grad_scale), generator)
    return QuantizedTensor(x_hat, codes, scale, zero)


def _check_symmetric(spec: QuantSpec) -> None:
    if not spec.symmetric:
        raise ValueError(
            "symmetric must be True for LSQ: LSQ learns a step only, and the learned offset of LSQ+ "
            "is a real number that the kernels' integer zero point cannot represent exactly"
        )


class LSQQuantizer(LearnableQuantizer):
    """Learned step size s (Esser et al. 2020), per tensor or per channel of dim 0; symmetric.

    The step starts at ``2 * mean|v| / sqrt(Qp)`` on the first batch (per group; 1 for an all-zero
    group). Its gradient is scaled by ``g = 1 / sqrt(N * Qp)`` as in the paper, where N is:

    - ``role="weight"`` (default): the number of elements sharing one step (all weights per
      tensor, ``numel / C`` per output channel): the paper's N_W;
    - ``role="activation"``: the number of features, ``x.shape[-1]`` (the paper's N_F counts the
      features of one example; for token activations ``[..., features]`` that is one token's
      features, so it does not depend on batch size or sequence length).

    Args:
        spec: symmetric, granularity ``"tensor"`` or ``"channel"``, ``static_range`` None.
        num_channels: size of dim 0, required with granularity ``"channel"``.
        role: ``"weight"`` or ``"activation"``; only chooses N above.
        generator: optional generator for stochastic rounding.

    Example:
        >>> wq = LSQQuantizer(QuantSpec(bits=4, granularity="channel"), num_channels=16)
        >>> w = nn.Parameter(torch.randn(16, 32))
        >>> wq(w).square().sum().backward()  # gradients reach w and wq.step
    """

    param_name = "step"

    def __init__(
        self,
        spec: QuantSpec,
        num_channels: int | None = None,
        *,
        role: str = "weight",
        generator: torch.Generator | None = None,
    ):
        _check_symmetric(spec)
        super().__init__(spec, num_channels, generator=generator)
        if role not in _ROLES:
            raise ValueError(f"role must be one of {list(_ROLES)}, got {role!r}")
        self.role = role
        self.step = nn.Parameter(torch.ones(self.param_shape))

    def init_value(self, x: Tensor) -> Tensor:
        x = x.float()
        if self.spec.granularity is Granularity.CHANNEL:
            mean_abs = x.abs().reshape(x.shape[0], -1).mean(1)
        else:
            mean_abs = x.abs().mean()
        s = 2 * mean_abs / math.sqrt(self.spec.qmax)
        return torch.where(s > 0, s, 1.0)

    def grad_scale(self, x: Tensor) -> float:
        """g = 1 / sqrt(N * Qp), N as in the class docstring."""
        if self.role == "activation":
            n = x.shape[-1] if x.ndim else 1
        elif self.spec.granularity is Granularity.CHANNEL:
            n = x.numel() // max(x.shape[0], 1)
        else:
            n = x.numel()
        return 1.0 / math.sqrt(max(n, 1) * self.spec.qmax)

    def qparams(self, x: Tensor) -> tuple[Tensor, Tensor]:
        s = self.param_view(x).detach().float().clamp_min(MIN_STEP)
        return s, torch.zeros_like(s, dtype=torch.int32)

    def quantize(self, x: Tensor) -> QuantizedTensor:
        return lsq_quantize(x, self.param_view(x), self.spec, self.grad_scale(x), self.generator)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", role={self.role!r}"
