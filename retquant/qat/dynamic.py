"""Dynamic-range quantization: the range is measured on the data at every call."""

from __future__ import annotations

import torch
from torch import Tensor

from retquant.qat.base import QuantizedTensor, Quantizer, reduce_dims
from retquant.qat.fixed import ste_quantize
from retquant.quant.primitives import compute_qparams
from retquant.quant.spec import QuantSpec


class DynamicQuantizer(Quantizer):
    """Range from the data of each call: exactly :func:`~retquant.quant.primitives.compute_qparams`
    (amax per group when symmetric, min/max with a zero point when not).

    Granularity ``"tensor"``, ``"token"`` (per row, shared over the last dim) or ``"channel"``
    (per index of dim 0). The gradient to ``x`` is the identity: the range holds every element,
    so nothing is clipped (the dependence of the scale on ``x`` is not differentiated, as usual
    for straight-through estimators).

    Example:
        >>> q = DynamicQuantizer(QuantSpec(bits=8, granularity="token"))
        >>> q.quantize(torch.tensor([[0.5, -1.0], [2.0, 1.0]])).codes
        tensor([[  64, -127],
                [ 127,   64]], dtype=torch.int8)
    """

    def __init__(self, spec: QuantSpec, *, generator: torch.Generator | None = None):
        super().__init__(spec, generator=generator)
        if spec.static_range is not None:
            raise ValueError(
                f"spec.static_range must be None for DynamicQuantizer (use FixedQuantizer for a "
                f"static range), got {spec.static_range}"
            )

    def qparams(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self._check_input(x)
        return compute_qparams(x.detach(), self.spec, reduce_dims(self.spec.granularity, x.ndim))

    def quantize(self, x: Tensor) -> QuantizedTensor:
        scale, zero = self.qparams(x)
        return ste_quantize(x, self.spec, scale, zero, clip=False, generator=self.generator)
