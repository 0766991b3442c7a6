"""QAT quantizers: codes and x_hat against the primitives, shapes, errors, and gradients.

What can be gradchecked: a quantizer's forward is piecewise constant in x and in its parameter, so
its true derivative is 0 almost everywhere and ``gradcheck`` of the quantizer itself would
(correctly) disagree with any straight-through estimator. What the papers define is the derivative
of a *surrogate*: the same expression with round(t) replaced by ``t + (round(t0) - t0)``, the
rounding offset frozen at the evaluation point (identity slope), the clips kept, and for TQT ceil
treated as identity. That surrogate is smooth away from the clip boundaries, so we gradcheck the
custom backward against finite differences of the surrogate in float64 (``_surrogate_gradcheck``),
on inputs at least 1e-2 away from every clip boundary. Independently, each gradient is compared
with its paper's formula on a small hand-computed case with values inside and outside the clip.
"""

import dataclasses
import math

import pytest
import torch
from torch import nn

from retquant.qat import (
    DynamicQuantizer,
    FixedQuantizer,
    LSQQuantizer,
    PACTQuantizer,
    QuantizedTensor,
    TQTQuantizer,
    lsq_quantize,
    pact_quantize,
    ste_quantize,
    tqt_quantize,
)
from retquant.quant import QuantSpec, dequantize, quantize, storage_dtype

KINDS = ("fixed", "dynamic", "pact", "lsq", "tqt")
SYMMETRIC_ONLY = ("lsq", "tqt")


def make(
    kind, bits=8, symmetric=True, granularity="tensor", rounding="nearest", channels=None, generator=None
):
    spec = QuantSpec(bits=bits, symmetric=symmetric, granularity=granularity, rounding=rounding)
    if kind == "fixed":
        if granularity == "channel":
            lo, hi = -torch.linspace(0.5, 1.5, channels), torch.linspace(0.5, 2.0, channels)
            return FixedQuantizer(spec, lo, hi, generator=generator)
        return FixedQuantizer(dataclasses.replace(spec, static_range=(-1.5, 2.0)), generator=generator)
    if kind == "dynamic":
        return DynamicQuantizer(spec, generator=generator)
    cls = {"pact": PACTQuantizer, "lsq": LSQQuantizer, "tqt": TQTQuantizer}[kind]
    return cls(spec, channels if granularity == "channel" else None, generator=generator)


CASES = [
    (kind, bits, sym)
    for kind in KINDS
    for bits in (4, 8, 16)
    for sym in (True, False)
    if sym or kind not in SYMMETRIC_ONLY
]


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize(
    ("kind", "bits", "symmetric", "granularity"),
    [
        (*case, g)
        for case in CASES
        for g in ("tensor", "channel", "token")
        if g != "token" or case[0] == "dynamic"  # token granularity is only for DynamicQuantizer
    ],
)
def test_codes_and_x_hat_are_the_primitives(gen, kind, bits, symmetric, granularity, rounding):
    x = torch.randn(6, 3, 5, generator=gen) * 1.5
    seed = int(torch.randint(0, 2**31, (), generator=gen))
    q = make(
        kind,
        bits,
        symmetric,
        granularity,
        rounding,
        channels=6,
        generator=torch.Generator().manual_seed(seed),
    )
    xr = x.clone().requires_grad_()
    qt = q.quantize(xr)
    assert isinstance(qt, QuantizedTensor)
    # the same (scale, zero) as qparams(), the same generator draw: the same codes as the primitives
    scale, zero = q.qparams(x)
    assert torch.equal(scale, qt.scale) and torch.equal(zero, qt.zero)
    ref = quantize(x, q.spec, scale, zero, torch.Generator().manual_seed(seed))
    assert torch.equal(qt.codes, ref)
    assert torch.equal(qt.x_hat, dequantize(qt.codes, qt.scale, qt.zero))  # bit for bit
    assert qt.codes.dtype == storage_dtype(bits) and qt.x_hat.dtype == torch.float32
    assert qt.scale.dtype == torch.float32 and qt.zero.dtype == torch.int32
    assert qt.x_hat.shape == x.shape and qt.x_hat.requires_grad
    assert not (qt.codes.requires_grad or qt.scale.requires_grad or qt.zero.requires_grad)
    want = {"tensor": (1, 1, 1), "channel": (6, 1, 1), "token": (6, 3, 1)}[granularity]
    assert tuple(qt.scale.shape) == want and qt.zero.shape == qt.scale.shape
    if symmetric:
        assert (qt.zero == 0).all()
    if rounding == "nearest":
        assert torch.equal(q(x), qt.x_hat)  # forward == quantize(x).x_hat


@pytest.mark.parametrize("kind", KINDS)
def test_two_dim_weight_per_channel(gen, kind):
    w = torch.randn(8, 16, generator=gen)
    q = make(kind, 4, True, "channel", channels=8)
    qt = q.quantize(w)
    assert tuple(qt.scale.shape) == (8, 1)
    assert qt.codes.abs().max() <= 7
    if kind in ("pact", "lsq", "tqt"):
        assert getattr(q, q.param_name).shape == (8,)


@pytest.mark.parametrize("kind", KINDS)
def test_stochastic_rounding_is_unbiased(kind):
    # seeded generator threaded through the quantizer: deterministic, so the bound below is exact
    g = torch.Generator().manual_seed(1234)
    # 50 values in [-0.8, 0.8], 4000 draws each: inside every quantizer's range (TQT's first-batch
    # range is p * s = 0.875 here), where stochastic rounding is unbiased
    x = ((torch.rand(50, generator=g) * 2 - 1) * 0.8).repeat(4000, 1)
    q = make(kind, 4, True, "tensor", "stochastic", generator=g)
    if kind in ("pact", "lsq", "tqt"):
        q.maybe_init(x)
    qt = q.quantize(x)
    s = qt.scale.item()
    assert (qt.x_hat - x).abs().max() < s * (1 + 1e-6)  # one of the two neighbours
    bias = (qt.x_hat.mean(0) - x[0]).abs().max().item()
    # per-element std of one draw <= s/2, of the mean <= s/2/sqrt(4000) ~ 0.008 s; allow 5 sigma
    assert bias < 0.04 * s, bias
    near = make(kind, 4, True, "tensor", "nearest")
    if kind in ("pact", "lsq", "tqt"):
        near.load_state_dict(q.state_dict())
    assert (near(x).mean(0) - x[0]).abs().max().item() > 0.1 * s  # nearest is biased: a real check


# ---- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("granularity", ["head", "block"])
def test_retention_layouts_are_refused(kind, granularity):
    with pytest.raises(ValueError, match="granularity.*retention-operand layout"):
        make(kind, granularity=granularity, channels=4)


@pytest.mark.parametrize("kind", ["fixed", "pact", "lsq", "tqt"])
def test_token_granularity_is_only_dynamic(kind):
    with pytest.raises(ValueError, match="granularity.*only DynamicQuantizer takes it"):
        make(kind, granularity="token")


@pytest.mark.parametrize("cls", [PACTQuantizer, LSQQuantizer, TQTQuantizer])
def test_num_channels(cls):
    with pytest.raises(ValueError, match="num_channels is required"):
        cls(QuantSpec(granularity="channel"))
    with pytest.raises(ValueError, match="num_channels must be None"):
        cls(QuantSpec(granularity="tensor"), 4)
    with pytest.raises(ValueError, match="num_channels must be a positive int"):
        cls(QuantSpec(granularity="channel"), 0)
    q = cls(QuantSpec(granularity="channel"), 4)
    with pytest.raises(ValueError, match=r"x.shape\[0\] must equal num_channels=4"):
        q(torch.randn(3, 2))


def test_other_argument_errors():
    with pytest.raises(ValueError, match="bits must be one of"):
        QuantSpec(bits=3)
    with pytest.raises(TypeError, match="spec must be a retquant.QuantSpec"):
        DynamicQuantizer("int8")
    for cls in (LSQQuantizer, TQTQuantizer):
        with pytest.raises(ValueError, match="symmetric must be True"):
            cls(QuantSpec(symmetric=False, granularity="tensor"))
    with pytest.raises(ValueError, match="static_range must be None for DynamicQuantizer"):
        DynamicQuantizer(QuantSpec(static_range=(-1.0, 1.0)))
    with pytest.raises(ValueError, match="static_range must be None for PACTQuantizer"):
        PACTQuantizer(QuantSpec(granularity="tensor", static_range=(-1.0, 1.0)))
    with pytest.raises(ValueError, match="init_alpha must be positive"):
        PACTQuantizer(QuantSpec(granularity="tensor"), init_alpha=-1.0)
    with pytest.raises(ValueError, match="role must be one of"):
        LSQQuantizer(QuantSpec(granularity="tensor"), role="bias")
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        DynamicQuantizer(QuantSpec()).quantize(torch.ones(2, 2, dtype=torch.int32))
    with pytest.raises(RuntimeError, match="FixedQuantizer has no range"):
        FixedQuantizer(QuantSpec(granularity="tensor"))(torch.ones(2))
    with pytest.raises(ValueError, match="lo must be <= hi"):
        FixedQuantizer(QuantSpec(granularity="tensor"), 1.0, -1.0)
    with pytest.raises(ValueError, match="lo/hi must be"):
        FixedQuantizer(QuantSpec(granularity="channel"), 1.0, 2.0)


# ---- gradients against each paper's formula on hand-computed cases ------------------------

G = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])  # upstream gradient, distinct per element


def _grads(fn, x, param=None):
    x = x.clone().requires_grad_()
    inputs = [x] if param is None else [x, param.clone().requires_grad_()]
    qt = fn(*inputs)
    (qt.x_hat * G[: x.numel()].reshape(x.shape)).sum().backward()
    return [t.grad for t in inputs]


def test_fixed_and_dynamic_ste_by_hand():
    spec = QuantSpec(bits=8, granularity="tensor", static_range=(-1.0, 1.0))
    x = torch.tensor([-1.5, -0.5, 0.99, 1.2, 0.0])
    (dx,) = _grads(FixedQuantizer(spec).quantize, x)
    assert dx.tolist() == [0.0, 2.0, 3.0, 0.0, 5.0]  # clipped at +-1: no gradient
    # asymmetric [0, 2.55]: scale 0.01, zero -128; x < 0 and x > 2.55 are clipped
    aspec = QuantSpec(bits=8, symmetric=False, granularity="tensor", static_range=(0.0, 2.55))
    (dx,) = _grads(FixedQuantizer(aspec).quantize, torch.tensor([-0.1, 1.0, 3.0]))
    assert dx.tolist() == [0.0, 2.0, 0.0]
    (dx,) = _grads(DynamicQuantizer(QuantSpec(bits=4, granularity="tensor")).quantize, x)
    assert dx.tolist() == G[:5].tolist()  # identity: a dynamic range clips nothing


def test_pact_gradients_by_hand():
    """Choi et al. 2018, eq. (3): dy/dalpha = 1 for x >= alpha (and -1 below -alpha when the
    clip is symmetric), 0 inside; dy/dx = 1 inside, 0 outside (STE on round)."""
    spec = QuantSpec(bits=4, granularity="tensor")
    x = torch.tensor([-2.0, -0.6, 0.3, 0.9, 1.5, 3.0])
    dx, da = _grads(lambda x, a: pact_quantize(x, a, spec), x, torch.tensor([1.0]))
    assert dx.tolist() == [0.0, 2.0, 3.0, 4.0, 0.0, 0.0]
    assert da.tolist() == [-1.0 + 5.0 + 6.0]
    aspec = QuantSpec(bits=4, symmetric=False, granularity="tensor")
    x = torch.tensor([-0.5, 0.2, 0.7, 1.5])
    dx, da = _grads(lambda x, a: pact_quantize(x, a, aspec), x, torch.tensor([1.0]))
    assert dx.tolist() == [0.0, 2.0, 3.0, 0.0]  # [0, alpha]: below 0 is clipped, no alpha grad
    assert da.tolist() == [4.0]
    # per channel: each alpha gets its own row's sum
    pc = QuantSpec(bits=4, granularity="channel")
    x = torch.tensor([[-2.0, 0.5, 3.0], [0.1, 0.2, 5.0]])
    x.requires_grad_()
    a = torch.tensor([[1.0], [4.0]], requires_grad=True)
    pact_quantize(x, a, pc).x_hat.sum().backward()
    assert a.grad.flatten().tolist() == [-1.0 + 1.0, 1.0]


def test_lsq_gradients_by_hand():
    """Esser et al. 2020, eq. (3) and the gradient scale g = 1/sqrt(N Qp):
    ds = -v/s + round(v/s) inside, -Qn below, Qp above; dv = 1 inside, 0 outside."""
    spec = QuantSpec(bits=4, granularity="tensor")  # Qn = Qp = 7 in our symmetric range
    s = 0.5
    x = torch.tensor([-5.0, -1.2, 0.3, 0.74, 2.0, 4.0])  # v/s = -10, -2.4, 0.6, 1.48, 4, 8
    terms = [-7, -2 - (-2.4), 1 - 0.6, 1 - 1.48, 4 - 4.0, 7]
    g = 1 / math.sqrt(6 * 7)
    q = LSQQuantizer(spec)
    q.maybe_init(x)  # the first-batch initialisation, then the step of this hand case
    q.step.data.fill_(s)
    xr = x.clone().requires_grad_()
    (q(xr) * G).sum().backward()
    assert xr.grad.tolist() == [0.0, 2.0, 3.0, 4.0, 5.0, 0.0]
    expected = sum(gi * t for gi, t in zip(G.tolist(), terms)) * g
    assert q.step.grad.item() == pytest.approx(expected, rel=1e-5)
    # the functional form with an explicit gradient scale
    _, ds = _grads(lambda x, st: lsq_quantize(x, st, spec, grad_scale=1.0), x, torch.tensor([s]))
    assert ds.item() == pytest.approx(expected / g, rel=1e-5)


def test_lsq_grad_scale_choice_of_n():
    spec_c = QuantSpec(bits=8, granularity="channel")
    w = torch.randn(4, 10)
    assert LSQQuantizer(spec_c, 4).grad_scale(w) == pytest.approx(1 / math.sqrt(10 * 127))
    x = torch.randn(2, 3, 10)
    act = LSQQuantizer(QuantSpec(bits=8, granularity="tensor"), role="activation")
    assert act.grad_scale(x) == pytest.approx(1 / math.sqrt(10 * 127))
    assert LSQQuantizer(QuantSpec(bits=8, granularity="tensor")).grad_scale(x) == pytest.approx(
        1 / math.sqrt(60 * 127)
    )


def test_tqt_gradients_by_hand():
    """Jain et al. 2020, eqs. (7)-(8): dq/dlog2t = s ln2 (round(x/s) - x/s) inside, s ln2 n or
    s ln2 p when round(x/s) falls below n or above p; dq/dx = 1 inside, 0 outside."""
    spec = QuantSpec(bits=4, granularity="tensor")  # our n = -7, p = 7
    s = 0.25  # log2 t = 0.3 -> 2**ceil(0.3) / 2**3
    x = torch.tensor([-3.0, -1.8, 0.3, 0.55, 1.8, 1.9])  # x/s = -12, -7.2, 1.2, 2.2, 7.2, 7.6
    terms = [-7, -7 - (-7.2), 1 - 1.2, 2 - 2.2, 7 - 7.2, 7]  # 7.6 rounds to 8 > p: clipped
    dx, dl = _grads(lambda x, l: tqt_quantize(x, l, spec), x, torch.tensor([0.3]))
    assert dx.tolist() == [0.0, 2.0, 3.0, 4.0, 5.0, 0.0]
    expected = s * math.log(2) * sum(gi * t for gi, t in zip(G.tolist(), terms))
    assert dl.item() == pytest.approx(expected, rel=1e-5)
    qt = tqt_quantize(x, torch.tensor([0.3]), spec)
    assert qt.scale.item() == s and qt.codes.tolist() == [-7, -7, 1, 2, 7, 7]


# ---- gradcheck of the custom backward against the smooth surrogate ---------------------------


def _surrogate_gradcheck(quantized, surrogate, inputs):
    """Analytic: the custom backward of ``quantized``. Numeric: finite differences of
    ``surrogate`` (``y - y.detach()`` is exactly 0, so the value is the surrogate's)."""

    def f(*inp):
        y = quantized(*inp).x_hat
        return y - y.detach() + surrogate(*inp).detach()

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


def _away_from(x, bounds, gap=1e-2):
    for b in bounds:
        x = torch.where((x - b).abs() < gap, x + 3 * gap, x)
    return x


def test_gradcheck_fixed_and_dynamic(gen):
    spec = QuantSpec(bits=4, granularity="tensor", static_range=(-1.0, 1.0))
    q = FixedQuantizer(spec)
    s = q.qparams(torch.zeros(1))[0].item()
    hi = 7 * s
    x = _away_from(torch.randn(12, generator=gen, dtype=torch.float64) * 1.5, (-hi, hi)).requires_grad_()
    _surrogate_gradcheck(q.quantize, lambda x: x.clamp(-hi, hi), (x,))
    dq = DynamicQuantizer(QuantSpec(bits=4, granularity="tensor"))
    _surrogate_gradcheck(dq.quantize, lambda x: x, (x,))


@pytest.mark.parametrize("symmetric", [True, False])
def test_gradcheck_pact(gen, symmetric):
    spec = QuantSpec(bits=4, symmetric=symmetric, granularity="channel")
    a = torch.tensor([[0.8], [1.3]], dtype=torch.float64)
    x = torch.randn(2, 8, generator=gen, dtype=torch.float64) * 1.5
    x = torch.stack([_away_from(x[i], (-a[i, 0], 0.0, a[i, 0])) for i in range(2)]).requires_grad_()
    a.requires_grad_()

    def surrogate(x, a):  # PACT: y = clip(x, lo, alpha) + a constant rounding offset
        lo = -a if symmetric else torch.zeros_like(a)
        return torch.minimum(torch.maximum(x, lo), a)

    _surrogate_gradcheck(lambda x, a: pact_quantize(x, a, spec), surrogate, (x, a))


def test_gradcheck_lsq(gen):
    spec = QuantSpec(bits=4, granularity="tensor")
    grad_scale = 0.3
    s0 = torch.tensor([[0.2]], dtype=torch.float64)
    x = torch.randn(3, 8, generator=gen, dtype=torch.float64)
    x = _away_from(x, (-7 * 0.2, 7 * 0.2)).requires_grad_()
    t0 = (x.detach().float() / s0.float()).double()
    r0 = torch.round(t0)
    below, above = t0 < -7, t0 > 7

    def surrogate(x, s):  # round(t) -> t + (round(t0) - t0); the step's gradient scaled by g
        s_eff = s0 + grad_scale * (s - s0)
        inside = (x / s_eff + (r0 - t0)) * s_eff
        return torch.where(below, -7 * s_eff, torch.where(above, 7 * s_eff, inside))

    s = s0.clone().requires_grad_()
    _surrogate_gradcheck(lambda x, s: lsq_quantize(x, s, spec, grad_scale), surrogate, (x, s))


def test_gradcheck_tqt(gen):
    spec = QuantSpec(bits=4, granularity="tensor")
    l0 = torch.tensor([[0.4]], dtype=torch.float64)  # s = 2**1 / 8 = 0.25
    s0 = 0.25
    x = torch.randn(3, 8, generator=gen, dtype=torch.float64) * 1.5
    x = _away_from(x, (-7.5 * s0, 7.5 * s0)).requires_grad_()  # round(x/s) leaves [n, p] at 7.5
    t0 = (x.detach().float() / s0).double()  # the quantizer rounds float32(x) / s, as in LSQ's
    r0 = torch.round(t0)
    below, above = r0 < -7, r0 > 7

    def surrogate(x, l):  # s(l) = s0 * 2**(l - l0): ceil treated as identity, as in the paper
        s = s0 * torch.exp2(l - l0)
        return torch.where(below, -7 * s, torch.where(above, 7 * s, x + (r0 - t0) * s))

    l = l0.clone().requires_grad_()
    _surrogate_gradcheck(lambda x, l: tqt_quantize(x, l, spec), surrogate, (x, l))


# ---- initialisation, distributed broadcast, state --------------------------------------------


def test_lazy_init_from_first_batch(gen):
    w = torch.randn(4, 9, generator=gen)
    pact = PACTQuantizer(QuantSpec(bits=8, granularity="channel"), 4)
    pact(w)
    assert torch.equal(pact.alpha.data, w.abs().amax(1))
    pact(w * 10)  # only the first batch initialises
    assert torch.equal(pact.alpha.data, w.abs().amax(1))
    lsq = LSQQuantizer(QuantSpec(bits=4, granularity="tensor"))
    lsq(w)
    assert lsq.step.item() == pytest.approx(2 * w.abs().mean().item() / math.sqrt(7), rel=1e-6)
    tqt = TQTQuantizer(QuantSpec(bits=8, granularity="channel"), 4)
    tqt(w)
    assert torch.allclose(tqt.log2_t.data, torch.log2(w.abs().amax(1)))
    given = PACTQuantizer(QuantSpec(granularity="tensor"), init_alpha=6.0)
    given(w)
    assert given.alpha.item() == 6.0
    # a loaded checkpoint is not re-initialised
    fresh = TQTQuantizer(QuantSpec(bits=8, granularity="channel"), 4)
    fresh.load_state_dict(tqt.state_dict())
    fresh(w * 100)
    assert torch.equal(fresh.log2_t.data, tqt.log2_t.data)


def test_lazy_init_broadcasts_from_rank0(monkeypatch):
    """Under torch.distributed the first-batch value is replaced by rank 0's (simulated here:
    the fake broadcast writes what rank 0 would have sent)."""
    import torch.distributed as dist

    calls = []

    def fake_broadcast(t, src):
        calls.append(src)
        t.fill_(0.125)

    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "broadcast", fake_broadcast)
    for cls in (PACTQuantizer, LSQQuantizer, TQTQuantizer):
        q = cls(QuantSpec(bits=8, granularity="tensor"))
        q(torch.randn(5, 5))
        assert getattr(q, q.param_name).item() == 0.125 and calls[-1] == 0
    assert len(calls) == 3


# ---- short training loops: the loss must go down ---------------------------------------------


@pytest.mark.parametrize("kind", ["pact", "lsq", "tqt"])
def test_learning_a_quantized_linear_map(kind):
    torch.manual_seed(0)  # seed logged here: 0
    x = torch.randn(64, 16)
    w_true = torch.randn(8, 16)
    y = x @ w_true.T
    w = nn.Parameter(torch.randn(8, 16) * 0.3)
    q = make(kind, 4, True, "channel", channels=8)
    q(w)  # initialise from the starting weights
    param0 = getattr(q, q.param_name).detach().clone()
    opt = torch.optim.Adam([w, *q.parameters()], lr=0.05)
    losses = []
    for _ in range(80):
        loss = (x @ q(w).T - y).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.05 * losses[0], (losses[0], losses[-1])
    assert not torch.equal(getattr(q, q.param_name).detach(), param0)  # the range was learned too


def test_learned_range_alone_lowers_the_error():
    """Only the quantizer's parameter trains on the 4-bit quantization MSE of fixed Laplace
    weights. LSQ and TQT start too wide (their gradients see the rounding error, so they shrink the
    range); PACT starts too narrow: its alpha gradient comes from the clipped values only (the
    paper's STE), so the MSE alone widens a too-narrow clip but never narrows a wide one."""
    torch.manual_seed(0)
    w = torch.distributions.Laplace(0.0, 1.0).sample((4096,))
    for q in (
        PACTQuantizer(QuantSpec(bits=4, granularity="tensor"), init_alpha=0.5),
        LSQQuantizer(QuantSpec(bits=4, granularity="tensor")),
        TQTQuantizer(QuantSpec(bits=4, granularity="tensor")),
    ):
        q(w * 3)  # a too-wide start for LSQ/TQT
        opt = torch.optim.Adam(q.parameters(), lr=0.05)
        first = None
        for _ in range(60):
            loss = (q(w) - w).square().mean()
            first = loss.item() if first is None else first
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert (q(w) - w).square().mean().item() < 0.7 * first, type(q).__name__


def test_ste_quantize_functional():
    spec = QuantSpec(bits=8, granularity="tensor")
    x = torch.tensor([0.5, 3.0], requires_grad=True)
    qt = ste_quantize(x, spec, torch.tensor(1 / 127), torch.tensor(0, dtype=torch.int32))
    assert qt.codes.tolist() == [64, 127]
    qt.x_hat.sum().backward()
    assert x.grad.tolist() == [1.0, 0.0]
