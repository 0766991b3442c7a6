"""Post-training calibration observers: record statistics of what passes, then give a range.

Every observer is an ``nn.Module`` whose ``forward(x)`` records statistics of ``x`` (without
gradient) and returns ``x`` itself, and whose :meth:`Observer.compute_range` returns ``(lo, hi)``:
0-dim tensors per tensor, ``[C]`` tensors per channel (per index of dim 0, as a weight
``[out_features, in_features]`` is quantized per output channel). ``compute_range`` on an
observer that never saw data raises ``RuntimeError`` naming it.

Observers that need the values themselves (percentile, MSE, ACIQ) keep a bounded uniform random
sample (see :class:`SamplingObserver`), so memory does not grow with the calibration set.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor, nn

from retquant.qat.base import load_resizable, range_qparams
from retquant.quant.primitives import dequantize, quantize
from retquant.quant.spec import Granularity, QuantSpec, Rounding

_PRIORS = ("laplace", "gaussian")


class Observer(nn.Module):
    """Base class. Subclasses implement ``_observe(rows)`` and ``_range() -> (lo, hi)`` on rows
    ``[R, n]``: R = 1 per tensor, R = C (dim 0) per channel.

    Args:
        per_channel: one range per index of dim 0 instead of one for the whole tensor.
    """

    _resizable: tuple[str, ...] = ()

    def __init__(self, per_channel: bool = False):
        super().__init__()
        if not isinstance(per_channel, bool):
            raise TypeError(f"per_channel must be a bool, got {per_channel!r}")
        self.per_channel = per_channel

    @property
    def has_data(self) -> bool:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or not x.is_floating_point():
            got = x.dtype if isinstance(x, Tensor) else type(x).__name__
            raise TypeError(f"{type(self).__name__}: x must be a floating-point tensor, got {got}")
        if x.numel() == 0:
            return x
        if self.per_channel:
            if x.ndim == 0:
                raise ValueError(f"{type(self).__name__}: per_channel needs x with ndim >= 1, got a 0-dim x")
            rows = x.detach().float().reshape(x.shape[0], -1)
        else:
            rows = x.detach().float().reshape(1, -1)
        with torch.no_grad():
            self._observe(rows)
        return x

    def compute_range(self) -> tuple[Tensor, Tensor]:
        """``(lo, hi)`` with ``lo <= hi``: 0-dim per tensor, ``[C]`` per channel."""
        if not self.has_data:
            raise RuntimeError(
                f"{type(self).__name__} never saw data: run calibration batches through it "
                "before compute_range()"
            )
        with torch.no_grad():
            lo, hi = self._range()
        if not self.per_channel:
            lo, hi = lo.reshape(()), hi.reshape(())
        return lo, hi

    def reset(self) -> None:
        """Forget everything observed."""
        for name in self._resizable:
            self._buffers[name] = torch.empty(0, device=self._buffers[name].device)

    def _check_rows(self, rows: Tensor, seen: Tensor) -> None:
        if seen.numel() and seen.shape[0] != rows.shape[0]:
            raise ValueError(
                f"{type(self).__name__}: per-channel observer saw {seen.shape[0]} channels before, "
                f"now x.shape[0] = {rows.shape[0]}"
            )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        load_resizable(self, state_dict, prefix, self._resizable)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"per_channel={self.per_channel}"


class MinMaxObserver(Observer):
    """Running min and max over everything seen (the range that clips nothing).

    Example:
        >>> obs = MinMaxObserver()
        >>> _ = obs(torch.tensor([-1.0, 2.0])); _ = obs(torch.tensor([3.0]))
        >>> obs.compute_range()
        (tensor(-1.), tensor(3.))
    """

    _resizable = ("min_val", "max_val")

    def __init__(self, per_channel: bool = False):
        super().__init__(per_channel)
        self.register_buffer("min_val", torch.empty(0))
        self.register_buffer("max_val", torch.empty(0))

    @property
    def has_data(self) -> bool:
        return self.min_val.numel() > 0

    def _observe(self, rows: Tensor) -> None:
        self._check_rows(rows, self.min_val)
        lo, hi = rows.amin(1), rows.amax(1)
        if self.has_data:
            lo, hi = torch.minimum(lo, self.min_val), torch.maximum(hi, self.max_val)
        self.min_val, self.max_val = lo, hi

    def _range(self):
        return self.min_val.clone(), self.max_val.clone()


class MovingAverageMinMaxObserver(MinMaxObserver):
    """Exponential moving average of each batch's min and max.

    The first batch sets the range; then ``range = momentum * range + (1 - momentum) * batch``
    (``momentum`` is the weight of the past, as in batch-norm style running statistics).

    Example:
        >>> obs = MovingAverageMinMaxObserver(momentum=0.5)
        >>> _ = obs(torch.tensor([-2.0, 2.0])); _ = obs(torch.tensor([-4.0, 4.0]))
        >>> obs.compute_range()
        (tensor(-3.), tensor(3.))
    """

    def __init__(self, momentum: float = 0.9, per_channel: bool = False):
        super().__init__(per_channel)
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum < 1:
            raise ValueError(f"momentum must be a float in [0, 1), got {momentum!r}")
        self.momentum = float(momentum)

    def _observe(self, rows: Tensor) -> None:
        self._check_rows(rows, self.min_val)
        lo, hi = rows.amin(1), rows.amax(1)
        if self.has_data:
            m = self.momentum
            lo = m * self.min_val + (1 - m) * lo
            hi = m * self.max_val + (1 - m) * hi
        self.min_val, self.max_val = lo, hi

    def extra_repr(self) -> str:
        return f"momentum={self.momentum}, " + super().extra_repr()


class SamplingObserver(MinMaxObserver):
    """Keeps the exact min/max and a bounded uniform random sample of the values (per row).

    Bounded memory: at most ``max_samples`` values per row (per tensor, or per channel), chosen
    uniformly without replacement among everything seen ("bottom-k" sampling: each value gets a
    random key, the ``max_samples`` smallest keys are kept, which is exact and vectorises). Until
    ``max_samples`` values have been seen the sample holds all of them, so statistics are exact.
    ``seed`` makes the sample (and so the range) reproducible.
    """

    _resizable = ("min_val", "max_val", "sample", "keys")

    def __init__(self, per_channel: bool = False, max_samples: int = 1 << 17, seed: int = 0):
        super().__init__(per_channel)
        if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1:
            raise ValueError(f"max_samples must be a positive int, got {max_samples!r}")
        self.max_samples = max_samples
        self.seed = seed
        # not persistent: a calibrated model's state dict holds its range, not the samples behind it
        self.register_buffer("sample", torch.empty(0), persistent=False)
        self.register_buffer("keys", torch.empty(0), persistent=False)
        self._gen: torch.Generator | None = None

    def reset(self) -> None:
        super().reset()
        self._gen = None

    def _observe(self, rows: Tensor) -> None:
        super()._observe(rows)
        if self._gen is None:
            self._gen = torch.Generator().manual_seed(self.seed)
        # the keys are drawn on the CPU (one generator whatever the device), then moved
        keys = torch.rand(rows.shape, generator=self._gen).to(rows.device)
        if self.sample.numel():
            rows = torch.cat([self.sample, rows], 1)
            keys = torch.cat([self.keys, keys], 1)
        if rows.shape[1] > self.max_samples:
            idx = keys.topk(self.max_samples, dim=1, largest=False).indices
            rows, keys = rows.gather(1, idx), keys.gather(1, idx)
        self.sample, self.keys = rows, keys

    def extra_repr(self) -> str:
        return super().extra_repr() + f", max_samples={self.max_samples}"


def _quantile_rows(x: Tensor, q: float) -> Tensor:
    """Per-row quantile with linear interpolation (torch.quantile's default) without its input
    size limit."""
    s = x.sort(dim=1).values
    pos = q * (s.shape[1] - 1)
    i = min(int(math.floor(pos)), s.shape[1] - 1)
    j = min(i + 1, s.shape[1] - 1)
    frac = pos - i
    return s[:, i] + (s[:, j] - s[:, i]) * frac


class PercentileObserver(SamplingObserver):
    """Range from percentiles: ``lo`` at ``100 - percentile``, ``hi`` at ``percentile``.

    Computed on the bounded random sample of :class:`SamplingObserver` (exact while fewer than
    ``max_samples`` values were seen; beyond, a high percentile such as 99.99 rests on about
    ``max_samples * (1 - percentile / 100)`` tail values, so raise ``max_samples`` for precision).

    Example:
        >>> obs = PercentileObserver(percentile=99.0)
        >>> _ = obs(torch.randn(10000))
        >>> lo, hi = obs.compute_range()  # about (-2.33, 2.33)
    """

    def __init__(
        self,
        percentile: float = 99.99,
        per_channel: bool = False,
        max_samples: int = 1 << 17,
        seed: int = 0,
    ):
        super().__init__(per_channel, max_samples, seed)
        if (
            isinstance(percentile, bool)
            or not isinstance(percentile, (int, float))
            or not 50 < percentile <= 100
        ):
            raise ValueError(f"percentile must be a number in (50, 100], got {percentile!r}")
        self.percentile = float(percentile)

    def _range(self):
        q = self.percentile / 100
        return _quantile_rows(self.sample, 1 - q), _quantile_rows(self.sample, q)

    def extra_repr(self) -> str:
        return f"percentile={self.percentile}, " + super().extra_repr()


def _per_channel_of(spec: QuantSpec, owner: str) -> bool:
    if not isinstance(spec, QuantSpec):
        raise TypeError(f"spec must be a retquant.QuantSpec, got {type(spec).__name__}")
    if spec.granularity not in (Granularity.TENSOR, Granularity.CHANNEL):
        raise ValueError(
            f"granularity must be 'tensor' or 'channel' for {owner} (a calibrated range is one per "
            f"tensor or one per index of dim 0), got {spec.granularity.value!r}"
        )
    return spec.granularity is Granularity.CHANNEL


class MSEObserver(SamplingObserver):
    """The clip that minimises the fake-quantization MSE of what was seen.

    The search scales the observed ``(min, max)`` by ``r`` for ``r`` in ``grid`` evenly spaced
    ratios in ``(0, 1]`` and keeps, per tensor or per channel, the ``r`` with the least mean
    squared error of ``dequantize(quantize(v))`` over the sample (round to nearest: stochastic
    noise would blur the search). The clip is never wider than min-max (``r = 1`` is in the grid,
    so the result is never worse than min-max on the sample).

    Args:
        spec: bits, symmetry and granularity (``"tensor"`` or ``"channel"``) of the quantizer the
            range is for.
        grid: number of candidate ratios.
        max_samples, seed: the bounded sample (see :class:`SamplingObserver`).

    Example:
        >>> obs = MSEObserver(QuantSpec(bits=4, granularity="tensor"))
        >>> _ = obs(torch.distributions.Laplace(0.0, 1.0).sample((20000,)))
        >>> lo, hi = obs.compute_range()  # well inside the min-max range
    """

    def __init__(self, spec: QuantSpec, grid: int = 100, max_samples: int = 1 << 16, seed: int = 0):
        super().__init__(_per_channel_of(spec, "MSEObserver"), max_samples, seed)
        if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
            raise ValueError(f"grid must be a positive int, got {grid!r}")
        self.spec = dataclasses.replace(spec, rounding=Rounding.NEAREST, static_range=None)
        self.grid = grid

    def mse(self, lo: Tensor, hi: Tensor) -> Tensor:
        """Per-row fake-quantization MSE of the sample for the range ``[lo, hi]`` (``[R]`` each)."""
        scale, zero = range_qparams(lo, hi, self.spec)
        scale, zero = scale[:, None], zero[:, None]
        err = dequantize(quantize(self.sample, self.spec, scale, zero), scale, zero) - self.sample
        return err.square().mean(1)

    def _range(self):
        lo0, hi0 = self.min_val, self.max_val
        best_lo, best_hi = lo0.clone(), hi0.clone()
        best = self.mse(lo0, hi0)
        for k in range(1, self.grid):  # r = 1 (k = grid) is the starting point above
            r = k / self.grid
            lo, hi = lo0 * r, hi0 * r
            err = self.mse(lo, hi)
            better = err < best
            best = torch.where(better, err, best)
            best_lo, best_hi = torch.where(better, lo, best_lo), torch.where(better, hi, best_hi)
        return best_lo, best_hi

    def extra_repr(self) -> str:
        return (
            f"bits={self.spec.bits}, symmetric={self.spec.symmetric}, grid={self.grid}, "
            + super().extra_repr()
        )


def aciq_clip_ratio(bits: int, prior: str = "laplace") -> float:
    """alpha* / b (Laplace) or alpha* / sigma (Gaussian): the clip minimising the analytic MSE.

    Banner et al. 2019 ("Post-training 4-bit quantization of convolution networks for
    rapid-deployment", ACIQ) model the error of quantizing a zero-mean variable clipped to
    ``[-alpha, alpha]`` with ``2**M`` levels as clipping noise plus uniform rounding noise
    ``alpha**2 / (3 * 4**M)``; the clipping noise is ``2 b**2 exp(-alpha / b)`` for Laplace(b) and
    ``(alpha**2 + sigma**2) erfc(alpha / (sigma sqrt 2)) - sqrt(2/pi) alpha sigma exp(-alpha**2 /
    (2 sigma**2))`` for Normal(0, sigma). The minimum is the root of the derivative, found here by
    bisection (it is increasing through a single sign change). ``M = bits``, as in the paper
    (our symmetric grid has ``2**M - 1`` levels; with that count alpha* would be about 2% smaller
    at 4 bits, 0.07% at 8 bits, 15% at 2 bits).

    Example:
        >>> round(aciq_clip_ratio(4, "laplace"), 2), round(aciq_clip_ratio(4, "gaussian"), 2)
        (5.03, 2.56)
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or bits < 1:
        raise ValueError(f"bits must be a positive int, got {bits!r}")
    if prior not in _PRIORS:
        raise ValueError(f"prior must be one of {list(_PRIORS)}, got {prior!r}")
    quant = 2.0 / (3.0 * 4.0**bits)  # d/da of a**2 / (3 * 4**M), divided by a

    if prior == "laplace":

        def slope(a):
            return -2.0 * math.exp(-a) + quant * a
    else:

        def slope(a):
            tail = 2.0 * a * math.erfc(a / math.sqrt(2.0)) - 2.0 * math.sqrt(2.0 / math.pi) * math.exp(
                -a * a / 2
            )
            return tail + quant * a

    lo, hi = 1e-6, 100.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if slope(mid) > 0:
            hi = mid
        else:
            lo = mid
    return 0.5 * (lo + hi)


class ACIQObserver(SamplingObserver):
    """Analytical clipping (ACIQ, Banner et al. 2019) under a Laplace or Gaussian prior.

    Fits the prior to the sample (mean mu; Laplace ``b = mean |v - mu|``, Gaussian ``sigma`` = the
    standard deviation), takes ``alpha = aciq_clip_ratio(spec.bits, prior) * (b or sigma)`` and
    returns ``[mu - alpha, mu + alpha]`` intersected with the observed min-max range (never wider
    than the data).

    Args:
        spec: bits, symmetry and granularity (``"tensor"`` or ``"channel"``).
        prior: ``"laplace"`` or ``"gaussian"``.
        max_samples, seed: the bounded sample (see :class:`SamplingObserver`).

    Example:
        >>> obs = ACIQObserver(QuantSpec(bits=4, granularity="tensor"), prior="laplace")
        >>> _ = obs(torch.distributions.Laplace(0.0, 1.0).sample((50000,)))
        >>> obs.compute_range()  # about (-5.03, 5.03)
    """

    def __init__(self, spec: QuantSpec, prior: str = "laplace", max_samples: int = 1 << 17, seed: int = 0):
        super().__init__(_per_channel_of(spec, "ACIQObserver"), max_samples, seed)
        if prior not in _PRIORS:
            raise ValueError(f"prior must be one of {list(_PRIORS)}, got {prior!r}")
        self.spec = spec
        self.prior = prior
        self.ratio = aciq_clip_ratio(spec.bits, prior)

    def _range(self):
        v = self.sample.double()
        mu = v.mean(1)
        spread = (v - mu[:, None]).abs().mean(1) if self.prior == "laplace" else v.std(1, correction=0)
        alpha = self.ratio * spread
        lo = torch.maximum((mu - alpha).float(), self.min_val)
        hi = torch.minimum((mu + alpha).float(), self.max_val)
        return lo, hi

    def extra_repr(self) -> str:
        return f"bits={self.spec.bits}, prior={self.prior!r}, " + super().extra_repr()
