"""PTQ observers, the observed quantizer and calibrate()."""

import warnings

import pytest
import torch
from torch import nn

from retquant.qat import (
    ACIQObserver,
    FixedQuantizer,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    ObservedQuantizer,
    PercentileObserver,
    aciq_clip_ratio,
    calibrate,
)
from retquant.quant import QuantSpec

SPEC_T = QuantSpec(bits=8, granularity="tensor")
SPEC_C = QuantSpec(bits=8, granularity="channel")


def laplace(n, b=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, generator=g) - 0.5
    return -b * torch.sign(u) * torch.log1p(-2 * u.abs())  # inverse CDF of Laplace(0, b)


def all_observers(per_channel=False):
    spec = SPEC_C if per_channel else SPEC_T
    return [
        MinMaxObserver(per_channel=per_channel),
        MovingAverageMinMaxObserver(per_channel=per_channel),
        PercentileObserver(per_channel=per_channel),
        MSEObserver(spec),
        ACIQObserver(spec),
    ]


@pytest.mark.parametrize("per_channel", [False, True])
def test_forward_returns_x_and_ranges_have_the_right_shape(gen, per_channel):
    x = torch.randn(4, 6, generator=gen, requires_grad=True)
    for obs in all_observers(per_channel):
        assert obs(x) is x
        lo, hi = obs.compute_range()
        assert lo.shape == hi.shape == ((4,) if per_channel else ())
        assert (lo <= hi).all() and not lo.requires_grad


@pytest.mark.parametrize("obs", all_observers(), ids=lambda o: type(o).__name__)
def test_never_saw_data_names_the_observer(obs):
    with pytest.raises(RuntimeError, match=f"{type(obs).__name__} never saw data"):
        obs.compute_range()


def test_min_max_is_exact(gen):
    a, b = torch.randn(3, 5, generator=gen), torch.randn(3, 7, generator=gen)
    obs = MinMaxObserver()
    obs(a)
    obs(b)
    both = torch.cat([a, b], 1)
    assert obs.compute_range() == (both.min(), both.max())
    pc = MinMaxObserver(per_channel=True)
    pc(a)
    pc(b)
    lo, hi = pc.compute_range()
    assert torch.equal(lo, both.amin(1)) and torch.equal(hi, both.amax(1))
    with pytest.raises(ValueError, match="saw 3 channels before"):
        pc(torch.randn(4, 5))


def test_moving_average():
    obs = MovingAverageMinMaxObserver(momentum=0.75)
    obs(torch.tensor([-2.0, 4.0]))
    obs(torch.tensor([-6.0, 8.0]))
    lo, hi = obs.compute_range()
    assert lo.item() == 0.75 * -2 + 0.25 * -6 and hi.item() == 0.75 * 4 + 0.25 * 8
    with pytest.raises(ValueError, match="momentum must be"):
        MovingAverageMinMaxObserver(momentum=1.0)


def test_percentile_matches_torch_quantile(gen):
    # fewer values than max_samples: the sample holds everything, the result is torch.quantile's
    x = torch.randn(20000, generator=gen)
    obs = PercentileObserver(percentile=99.9)
    obs(x[:12000])
    obs(x[12000:])
    lo, hi = obs.compute_range()
    # (the observer interpolates in its own precision: equal to float32 rounding, not bit for bit)
    assert torch.allclose(hi, torch.quantile(x, 0.999), rtol=1e-4)
    assert torch.allclose(lo, torch.quantile(x, 0.001), rtol=1e-4)
    # bounded memory: a 4096-value sample of 40000 values stays close
    small = PercentileObserver(percentile=99.0, max_samples=4096, seed=1)
    y = torch.randn(40000, generator=gen)
    for chunk in y.split(5000):
        small(chunk)
    assert small.sample.shape == (1, 4096)
    lo, hi = small.compute_range()
    # The range is the sample's own percentiles, and the sample is a uniform draw from every
    # chunk seen (not, say, the first 4096 values). (How close the sample's 99 % quantile lands
    # to the population's is chance: a standard error of ~0.06, and a 0.3 bound failed ~3e-6 of
    # runs; the two checks below are what the observer controls.)
    sample = small.sample[0]
    assert torch.allclose(hi, torch.quantile(sample, 0.99), rtol=1e-5)
    assert torch.allclose(lo, torch.quantile(sample, 0.01), rtol=1e-5)
    ys, order = torch.sort(y)
    where = torch.searchsorted(ys, sample).clamp(max=len(y) - 1)
    assert torch.equal(ys[where], sample), "the sample holds values that were never observed"
    per_chunk = torch.bincount(order[where] // 5000, minlength=8)
    # each of the 8 chunks holds ~512 +- 21 of the sample's values: 256..768 is 12 sigma
    assert ((per_chunk > 256) & (per_chunk < 768)).all(), per_chunk.tolist()
    # per channel: one percentile per row of dim 0
    w = torch.randn(3, 500, generator=gen)
    pc = PercentileObserver(percentile=95.0, per_channel=True)
    pc(w)
    assert torch.allclose(pc.compute_range()[1], torch.quantile(w, 0.95, dim=1), rtol=1e-5)
    with pytest.raises(ValueError, match="percentile must be"):
        PercentileObserver(percentile=40)


def _mse(spec, lo, hi, x):
    return (FixedQuantizer(spec, lo, hi)(x) - x).square().mean().item()


def test_mse_clip_beats_min_max_at_4_bits():
    spec = QuantSpec(bits=4, granularity="tensor")
    x = laplace(50000)
    obs = MSEObserver(spec)
    obs(x)
    lo, hi = obs.compute_range()
    assert x.min() <= lo and hi <= x.max()  # never wider than min-max
    assert hi < 0.8 * x.max()  # a real clip on heavy-tailed data
    assert _mse(spec, lo, hi, x) < 0.8 * _mse(spec, x.min(), x.max(), x)
    # per channel: each row gets its own clip; a row of uniform data keeps (almost) its min-max
    w = torch.stack([laplace(4000, seed=1), torch.rand(4000) * 2 - 1])
    pc = MSEObserver(QuantSpec(bits=4, granularity="channel"))
    pc(w)
    lo, hi = pc.compute_range()
    assert hi[0] < 0.8 * w[0].max() and hi[1] > 0.85 * w[1].max()
    with pytest.raises(ValueError, match="granularity must be 'tensor' or 'channel' for MSEObserver"):
        MSEObserver(QuantSpec(bits=4, granularity="token"))


# Banner et al. 2019, "Post-training 4-bit quantization of convolution networks for
# rapid-deployment", the table of optimal clipping values for 2..8 bits
PAPER_LAPLACE = [2.83, 3.89, 5.03, 6.2, 7.41, 8.64, 9.89]
PAPER_GAUSSIAN = [1.71, 2.15, 2.55, 2.94, 3.29, 3.61, 3.92]


@pytest.mark.parametrize("bits", range(2, 9))
def test_aciq_matches_the_paper_table(bits):
    assert aciq_clip_ratio(bits, "laplace") == pytest.approx(PAPER_LAPLACE[bits - 2], abs=0.015)
    assert aciq_clip_ratio(bits, "gaussian") == pytest.approx(PAPER_GAUSSIAN[bits - 2], abs=0.015)


def test_aciq_observer_on_known_priors():
    obs = ACIQObserver(QuantSpec(bits=4, granularity="tensor"), prior="laplace")
    obs(laplace(100000, b=0.5))
    lo, hi = obs.compute_range()
    assert hi.item() == pytest.approx(5.03 * 0.5, rel=0.03) and lo.item() == pytest.approx(
        -5.03 * 0.5, rel=0.03
    )
    g = ACIQObserver(QuantSpec(bits=8, granularity="tensor"), prior="gaussian")
    g(torch.randn(100000, generator=torch.Generator().manual_seed(0)) * 2)
    lo, hi = g.compute_range()
    assert hi.item() == pytest.approx(3.92 * 2, rel=0.03)
    assert aciq_clip_ratio(16) > aciq_clip_ratio(8)  # 16 bits solves too
    with pytest.raises(ValueError, match="prior must be one of"):
        ACIQObserver(SPEC_T, prior="cauchy")


# ---- ObservedQuantizer and calibrate() -----------------------------------------------------


def test_observed_quantizer_lifecycle(gen):
    q = ObservedQuantizer(SPEC_T, MinMaxObserver())
    x = torch.randn(8, 4, generator=gen)
    with pytest.raises(RuntimeError, match="ObservedQuantizer .* was never calibrated"):
        q.quantize(x)
    assert q.calibrating and q(x) is x  # records, returns x itself
    with pytest.raises(RuntimeError, match="still calibrating"):
        q.quantize(x)
    q.freeze()
    assert not q.calibrating
    ref = FixedQuantizer(SPEC_T, x.min(), x.max())
    y = torch.randn(8, 4, generator=gen)
    assert torch.equal(q(y), ref(y)) and torch.equal(q.quantize(y).codes, ref.quantize(y).codes)
    # a fresh quantizer loads the frozen state and the range
    fresh = ObservedQuantizer(SPEC_T, MinMaxObserver())
    fresh.load_state_dict(q.state_dict())
    assert not fresh.calibrating and torch.equal(fresh(y), ref(y))
    # frozen before any data: still never calibrated
    empty = ObservedQuantizer(SPEC_T, MinMaxObserver()).freeze()
    with pytest.raises(RuntimeError, match="was never calibrated"):
        empty(x)
    with pytest.raises(ValueError, match="observer.per_channel must be True"):
        ObservedQuantizer(SPEC_C, MinMaxObserver())
    with pytest.raises(TypeError, match="observer must be"):
        ObservedQuantizer(SPEC_T, nn.Identity())


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.act_q = ObservedQuantizer(SPEC_T, MinMaxObserver())
        self.lin = nn.Linear(4, 3)
        self.w_q = ObservedQuantizer(SPEC_C, PercentileObserver(percentile=100.0, per_channel=True))
        self.unused = ObservedQuantizer(SPEC_T, MinMaxObserver())
        self.drop = nn.Dropout(0.5)
        self.modes = []

    def forward(self, x):
        self.modes.append(self.training)
        w = self.w_q(self.lin.weight)
        return self.drop(self.act_q(x) @ w.T)


def test_calibrate_tiny_model(gen):
    model = Tiny().train()
    batches = [torch.randn(5, 4, generator=gen) for _ in range(4)]
    with pytest.warns(UserWarning, match="no data reached \\['unused'\\]"):
        out = calibrate(model, batches, num_batches=3, progress=False)
    assert out is model
    assert model.modes == [False] * 3  # eval mode while calibrating, 3 of the 4 batches
    assert model.training and model.drop.training  # modes restored
    seen = torch.cat(batches[:3])
    assert not model.act_q.calibrating
    assert model.act_q.lo == seen.min() and model.act_q.hi == seen.max()
    assert torch.equal(model.w_q.hi, model.lin.weight.detach().amax(1))
    with pytest.raises(RuntimeError, match="ObservedQuantizer 'unused' .* was never calibrated"):
        model.unused(torch.randn(2))
    # after calibration the model quantizes and trains through the frozen ranges
    model.eval()
    y = model(batches[3])
    y.sum().backward()
    assert model.lin.weight.grad is not None
    # batches given as tuples are unpacked; a custom forward is used as given
    other = nn.Sequential(ObservedQuantizer(SPEC_T, MinMaxObserver()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        calibrate(other, [(b,) for b in batches], progress=False)
        calibrate(
            nn.Sequential(ObservedQuantizer(SPEC_T, MinMaxObserver())), batches, forward=lambda m, b: m(b)
        )
    with pytest.raises(ValueError, match="num_batches must be"):
        calibrate(other, batches, num_batches=0)
