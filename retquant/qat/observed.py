"""A quantizer calibrated by an observer (post-training quantization)."""

from __future__ import annotations

import torch
from torch import Tensor

from retquant.qat.base import QuantizedTensor
from retquant.qat.fixed import FixedQuantizer
from retquant.qat.observers import Observer
from retquant.quant.spec import Granularity, QuantSpec


class ObservedQuantizer(FixedQuantizer):
    """Records data through ``observer`` while calibrating, then quantizes with its range.

    While :attr:`calibrating` (from construction until :meth:`freeze`), ``forward(x)`` passes
    ``x`` to the observer and returns ``x`` itself (float), so calibration sees the float model.
    :meth:`freeze` takes the observer's range and from then on the quantizer behaves as a
    :class:`FixedQuantizer` with that range (straight-through gradient, zero where clipped).
    :meth:`quantize` needs a frozen range: before any data was observed it raises
    ``RuntimeError("... was never calibrated")``, and while still calibrating it raises too (call
    :meth:`freeze`, or :func:`retquant.qat.calibrate` which freezes every observed quantizer).
    The frozen state and the range are saved in the ``state_dict``.

    Args:
        spec: granularity ``"tensor"`` or ``"channel"`` (then the observer must be per channel);
            ``static_range`` must be None (the observer supplies the range).
        observer: an :class:`~retquant.qat.observers.Observer`.
        generator: optional generator for stochastic rounding.

    Example:
        >>> q = ObservedQuantizer(QuantSpec(bits=8, granularity="tensor"), MinMaxObserver())
        >>> _ = q(torch.randn(16, 8))   # records, returns x
        >>> q.freeze()
        >>> q.quantize(torch.randn(16, 8)).codes.dtype
        torch.int8
    """

    def __init__(self, spec: QuantSpec, observer: Observer, *, generator: torch.Generator | None = None):
        super().__init__(spec, generator=generator)
        if spec.static_range is not None:
            raise ValueError(
                f"spec.static_range must be None for ObservedQuantizer (the observer supplies the range), "
                f"got {spec.static_range}"
            )
        if not isinstance(observer, Observer):
            raise TypeError(f"observer must be a retquant.qat Observer, got {type(observer).__name__}")
        per_channel = spec.granularity is Granularity.CHANNEL
        if observer.per_channel != per_channel:
            raise ValueError(
                f"observer.per_channel must be {per_channel} for granularity={spec.granularity.value!r}, "
                f"got {observer.per_channel}"
            )
        self.observer = observer
        self.name: str | None = None  # set by calibrate() to the module's name in the model
        self._frozen = False

    @property
    def calibrating(self) -> bool:
        return not self._frozen

    def freeze(self) -> ObservedQuantizer:
        """Stop observing; quantize from now on with the observed range (if any data was seen)."""
        self._frozen = True
        if self.observer.has_data:
            self.set_range(*self.observer.compute_range())
        return self

    def reset(self) -> ObservedQuantizer:
        """Forget the range and the observations; calibrate again."""
        self.observer.reset()
        self.lo = None
        self.hi = None
        self._frozen = False
        return self

    def _label(self) -> str:
        where = f" {self.name!r}" if self.name else ""
        return f"ObservedQuantizer{where} ({self.extra_repr()}, observer={type(self.observer).__name__})"

    def qparams(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.lo is None and not self.observer.has_data:
            raise RuntimeError(
                f"{self._label()} was never calibrated: run data through it (retquant.qat.calibrate) "
                "before quantizing"
            )
        if self.calibrating:
            raise RuntimeError(f"{self._label()} is still calibrating: call freeze() before quantizing")
        return super().qparams(x)

    def quantize(self, x: Tensor) -> QuantizedTensor:
        self.qparams(x)  # the errors above, before any work
        return super().quantize(x)

    def forward(self, x: Tensor) -> Tensor:
        if self.calibrating:
            return self.observer(x)
        return super().forward(x)

    def get_extra_state(self):
        return {"frozen": self._frozen}

    def set_extra_state(self, state) -> None:
        self._frozen = bool(state["frozen"])
