"""Static-range quantization with a straight-through gradient (identity inside the range)."""

from __future__ import annotations

import torch
from torch import Tensor

from retquant.qat.base import (
    QuantizedTensor,
    Quantizer,
    group_view,
    load_resizable,
    range_qparams,
    reduce_dims,
)
from retquant.quant.primitives import compute_qparams, dequantize, quantize
from retquant.quant.spec import Granularity, QuantSpec


class _STEQuantize(torch.autograd.Function):
    """Codes and ``x_hat`` from the primitives for a given (scale, zero); straight-through gradient.

    ``clip=True``: the gradient to ``x`` is 1 where ``x`` lies in the representable interval
    ``[(qmin - zero) * scale, (qmax - zero) * scale]`` and 0 where it is clipped. ``clip=False``:
    identity (a dynamic range contains every element, nothing is clipped).
    """

    @staticmethod
    def forward(ctx, x, scale, zero, spec, generator, clip):
        codes = quantize(x, spec, scale, zero, generator)
        x_hat = dequantize(codes, scale, zero)
        ctx.clip = clip
        ctx.x_dtype = x.dtype
        if clip:
            # x / scale is the very division quantize() performs; integer bounds are exact
            t = x.detach().float() / scale
            zf = zero.float()
            ctx.save_for_backward((t >= spec.qmin - zf) & (t <= spec.qmax - zf))
        ctx.mark_non_differentiable(codes)
        return x_hat, codes

    @staticmethod
    def backward(ctx, g, _g_codes):
        if ctx.clip:
            (inside,) = ctx.saved_tensors
            g = g * inside
        return g.to(ctx.x_dtype), None, None, None, None, None


def ste_quantize(
    x: Tensor,
    spec: QuantSpec,
    scale: Tensor,
    zero: Tensor,
    *,
    clip: bool = True,
    generator: torch.Generator | None = None,
) -> QuantizedTensor:
    """Quantize ``x`` with a given (detached) ``scale``/``zero``; straight-through gradient to ``x``.

    Example:
        >>> spec = QuantSpec(bits=8, granularity="tensor")
        >>> s, z = range_qparams(torch.tensor(-1.0), torch.tensor(1.0), spec)
        >>> ste_quantize(torch.tensor([0.5, 3.0]), spec, s, z).codes
        tensor([ 64, 127], dtype=torch.int8)
    """
    scale = scale.detach()
    zero = zero.detach()
    x_hat, codes = _STEQuantize.apply(x, scale, zero, spec, generator, clip)
    return QuantizedTensor(x_hat, codes, scale, zero)


class FixedQuantizer(Quantizer):
    """A static (calibrated) range; straight-through gradient, zero where ``x`` is clipped.

    The range comes from ``spec.static_range`` (one ``(lo, hi)`` for every group) or from the
    ``lo``/``hi`` buffers (0-dim per tensor, ``[C]`` per channel of dim 0) given here or set later
    by calibration through :meth:`set_range`. Scale and zero point follow
    :func:`~retquant.quant.primitives.compute_qparams` for that range (symmetric: ``max(|lo|, |hi|)
    / qmax``). Granularity: ``"tensor"`` or ``"channel"``.

    Args:
        spec: the quantization spec.
        lo, hi: optional range tensors (not together with ``spec.static_range``).
        generator: optional generator for stochastic rounding.

    Example:
        >>> q = FixedQuantizer(QuantSpec(bits=8, granularity="tensor", static_range=(-1.0, 1.0)))
        >>> q(torch.tensor([0.5, 3.0]))  # 3.0 is clipped to 1.0
        tensor([0.5039, 1.0000])
        >>> w = FixedQuantizer(QuantSpec(granularity="channel"), lo=-torch.ones(4), hi=torch.ones(4))
    """

    granularities = (Granularity.TENSOR, Granularity.CHANNEL)

    def __init__(
        self,
        spec: QuantSpec,
        lo: Tensor | float | None = None,
        hi: Tensor | float | None = None,
        *,
        generator: torch.Generator | None = None,
    ):
        super().__init__(spec, generator=generator)
        if (lo is None) != (hi is None):
            raise ValueError(f"lo and hi must be given together, got lo={lo!r}, hi={hi!r}")
        if lo is not None and spec.static_range is not None:
            raise ValueError("give either spec.static_range or lo/hi to FixedQuantizer, not both")
        self.register_buffer("lo", None)
        self.register_buffer("hi", None)
        if lo is not None:
            self.set_range(lo, hi)

    @property
    def has_range(self) -> bool:
        return self.spec.static_range is not None or self.lo is not None

    def set_range(self, lo: Tensor | float, hi: Tensor | float) -> None:
        """Set the range: 0-dim tensors (or floats) per tensor, ``[C]`` tensors per channel."""
        if self.spec.static_range is not None:
            raise ValueError("set_range() cannot override spec.static_range; build the quantizer without it")
        lo = torch.as_tensor(lo).detach().float().clone()
        hi = torch.as_tensor(hi).detach().float().clone()
        if lo.shape != hi.shape:
            raise ValueError(
                f"lo and hi must have the same shape, got {tuple(lo.shape)} and {tuple(hi.shape)}"
            )
        if self.spec.granularity is Granularity.CHANNEL:
            if lo.ndim != 1:
                raise ValueError(
                    f"lo/hi must be [C] tensors with granularity='channel', got shape {tuple(lo.shape)}"
                )
        elif lo.numel() != 1:
            raise ValueError(f"lo/hi must be scalars with granularity='tensor', got shape {tuple(lo.shape)}")
        else:
            lo, hi = lo.reshape(()), hi.reshape(())
        if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
            raise ValueError("lo and hi must be finite")
        if (lo > hi).any():
            raise ValueError("lo must be <= hi everywhere")
        self.lo = lo
        self.hi = hi

    def _no_range_error(self) -> RuntimeError:
        return RuntimeError(
            f"{type(self).__name__} has no range: give spec.static_range or lo/hi, or call set_range()"
        )

    def qparams(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self._check_input(x)
        spec = self.spec
        if spec.static_range is not None:
            return compute_qparams(x.detach(), spec, reduce_dims(spec.granularity, x.ndim))
        if self.lo is None:
            raise self._no_range_error()
        if spec.granularity is Granularity.CHANNEL and self.lo.shape[0] != x.shape[0]:
            raise ValueError(
                f"{type(self).__name__}: x.shape[0] must equal the {self.lo.shape[0]} channels of its range, "
                f"got x of shape {tuple(x.shape)}"
            )
        scale, zero = range_qparams(self.lo.to(x.device), self.hi.to(x.device), spec)
        return group_view(scale, spec.granularity, x.ndim), group_view(zero, spec.granularity, x.ndim)

    def quantize(self, x: Tensor) -> QuantizedTensor:
        scale, zero = self.qparams(x)
        return ste_quantize(x, self.spec, scale, zero, clip=True, generator=self.generator)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        load_resizable(self, state_dict, prefix, ("lo", "hi"))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
