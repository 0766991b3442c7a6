"""QuantLinear: int8 GEMM forward equal to the exact integer formula, STE gradients equal to the
autograd of the fake-quant float layer, conversion bit-identical, clear errors."""

import math

import pytest
import torch
import torch.nn.functional as F

from retquant import QuantSpec
from retquant.nn import Int8Linear, QuantLinear
from retquant.qat import DynamicQuantizer, FixedQuantizer, LSQQuantizer, PACTQuantizer, TQTQuantizer
from tests.conftest import assert_close, float32_sum_error_bound, range_grad_terms

W_CH = QuantSpec(bits=8, granularity="channel")
A_TOK = QuantSpec(bits=8, granularity="token")
A_TEN = QuantSpec(bits=8, granularity="tensor")


def _make(kind: str, K: int, N: int, bits: int = 8, bias: bool = True):
    wspec = QuantSpec(bits=bits, granularity="channel")
    aspec = QuantSpec(bits=bits, granularity="tensor")
    if kind == "dynamic":
        wq, aq = DynamicQuantizer(wspec), DynamicQuantizer(QuantSpec(bits=bits, granularity="token"))
    elif kind == "pact":
        wq, aq = PACTQuantizer(wspec, num_channels=N), PACTQuantizer(aspec)
    elif kind == "pact_clip":  # ranges well inside the data: clipping (and alpha's gradient) active
        wq = PACTQuantizer(wspec, num_channels=N, init_alpha=0.05)
        aq = PACTQuantizer(aspec, init_alpha=0.7)
    elif kind == "lsq":
        wq, aq = LSQQuantizer(wspec, num_channels=N), LSQQuantizer(aspec)
    elif kind == "tqt":
        wq, aq = TQTQuantizer(wspec, num_channels=N), TQTQuantizer(aspec)
    else:
        wq, aq = (
            DynamicQuantizer(wspec),
            FixedQuantizer(QuantSpec(bits=bits, granularity="tensor", static_range=(-2.0, 2.0))),
        )
    return QuantLinear(K, N, bias, weight_quantizer=wq, act_quantizer=aq)


def _exact(x_codes, x_scale, w_codes, w_scale, bias):
    acc = (x_codes.double() @ w_codes.double().t()).to(torch.int32)  # exact: |acc| < 2**53
    y = (acc.float() * x_scale.reshape(-1, 1)) * w_scale.reshape(1, -1)
    return y if bias is None else y + bias


@pytest.mark.parametrize("kind", ["dynamic", "pact", "pact_clip", "lsq", "tqt", "fixed"])
@pytest.mark.parametrize("bits", [8, 4])
def test_forward_is_the_exact_integer_formula_and_grads_match_fake_quant(kind, bits, gen):
    seed = gen.initial_seed()
    B, T, K, N = 2, 37, 45, 19
    torch.manual_seed(seed)
    lin = _make(kind, K, N, bits)
    x = torch.randn(B, T, K, generator=gen, requires_grad=True)
    y = lin(x)
    # independent forward: the quantizers' own codes, exact integer product, same epilogue
    x2 = x.detach().reshape(-1, K)
    aq, wq = lin.act_quantizer.quantize(x2), lin.weight_quantizer.quantize(lin.weight.detach())
    ref = _exact(aq.codes, aq.scale, wq.codes, wq.scale, lin.bias.detach())
    assert torch.equal(y.detach().reshape(-1, N), ref), f"seed={seed}"
    # independent backward: autograd of the float fake-quant layer (quantizer x_hat paths)
    g = torch.randn(y.shape, generator=gen)
    y.backward(g)
    got = {"x": x.grad.clone(), "w": lin.weight.grad.clone(), "b": lin.bias.grad.clone()}
    got.update({n: p.grad.clone() for n, p in lin.named_parameters() if "quantizer" in n})
    lin.zero_grad()
    x.grad = None
    x_hat = lin.act_quantizer(x.reshape(-1, K))
    x_hat.retain_grad()
    y_fq = F.linear(x_hat, lin.weight_quantizer(lin.weight), lin.bias)
    y_fq.backward(g.reshape(-1, N))
    want = {"x": x.grad, "w": lin.weight.grad, "b": lin.bias.grad}
    want.update({n: p.grad for n, p in lin.named_parameters() if "quantizer" in n})
    assert set(got) == set(want)
    if kind == "pact_clip":
        assert all(got[n].abs().sum() > 0 for n in got if "quantizer" in n), "no clipping: alpha untested"
    for name in want:
        if (
            name.startswith("act_quantizer.")
            and kind in FUSED
            and abs(got[name] - want[name]) <= (_float32_sum_bound(lin.act_quantizer, x2, x_hat.grad))
        ):
            continue  # the fused kernel sums in float64, the reference in float32 (see below)
        assert_close(f"grad {name} ({kind}, seed={seed})", got[name], want[name], rel=1e-5)


FUSED = ("pact", "pact_clip", "lsq", "tqt")  # per-tensor learnable activation ranges: fused CPU ops


def _float32_sum_bound(quantizer, x2, g_hat) -> float:
    """The reference's float32 sum of the activation range's gradient terms is good only to
    float32 summation error (its clipped terms cancel); the fused kernel sums them in float64.
    The bound: that error, times the method's factor (LSQ's gradient scale, TQT's s ln 2, 1 for
    PACT)."""
    mode = {"LSQQuantizer": "lsq", "TQTQuantizer": "tqt", "PACTQuantizer": "pact"}[type(quantizer).__name__]
    s = float(quantizer.qparams(x2)[0].reshape(()))
    alpha = float(quantizer.alpha.detach().clamp_min(2.0**-100)) if mode == "pact" else 0.0
    factor = quantizer.grad_scale(x2) if mode == "lsq" else s * math.log(2.0) if mode == "tqt" else 1.0
    terms = range_grad_terms(mode, x2, g_hat, s, quantizer.spec.qmax, alpha)
    return float32_sum_error_bound(terms) * factor


@pytest.mark.parametrize("kind", ["dynamic", "pact", "lsq", "tqt"])
def test_convert_is_bit_identical_in_eval(kind, gen):
    torch.manual_seed(gen.initial_seed())
    lin = _make(kind, 33, 40)
    x = torch.randn(5, 7, 33, generator=gen)
    lin(x).sum().backward()  # lazily initialised ranges are set by a training step
    lin.eval()
    with torch.no_grad():
        y = lin(x)
    conv = lin.convert()
    assert isinstance(conv, Int8Linear) and conv.weight_codes.dtype == torch.int8
    assert torch.equal(conv(x), y)
    # and it survives a state_dict round trip into a structurally equal layer
    fresh = _make(kind, 33, 40)
    fresh(x)
    fresh = fresh.convert()
    fresh.load_state_dict(conv.state_dict())
    assert torch.equal(fresh(x), y)


@pytest.mark.parametrize("kind", ["dynamic", "lsq"])
def test_saves_int8_codes_and_only_what_the_range_gradient_needs(kind, gen):
    lin = _make(kind, 64, 32)
    x = torch.randn(128, 64, generator=gen, requires_grad=True)
    lin(x)  # the first call initialises the learned ranges; measure a training step after it
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        lin(x)
    big = sorted(str(t.dtype) for t in saved if t.numel() >= 128 * 64)
    # dynamic ranges: the codes only; a learned range's gradient needs the float input as well
    assert big == (["torch.int8"] if kind == "dynamic" else ["torch.float32", "torch.int8"]), big


@pytest.mark.parametrize("kind", ["dynamic", "lsq", "pact"])
@pytest.mark.parametrize("bits", [8, 4])
def test_inf_input_is_an_error_and_leaves_the_ranges_alone(kind, bits):
    lin = _make(kind, 8, 4, bits)
    x = torch.randn(3, 8)
    x[1, 2] = float("inf")
    with pytest.raises(ValueError, match="inf or NaN"):
        lin(x)
    assert all(torch.isfinite(p).all() for p in lin.parameters())
    lin(torch.randn(3, 8))  # and the layer still works


def test_int8_linear_survives_model_to_bfloat16(gen):
    lin = _make("lsq", 16, 8)
    x = torch.randn(5, 16, generator=gen)
    lin(x)
    conv = lin.convert().to(torch.bfloat16)
    y = conv(x.to(torch.bfloat16))
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="act_quantizer"):
        QuantLinear(8, 4, weight_quantizer=DynamicQuantizer(W_CH), act_quantizer=DynamicQuantizer(W_CH))
    with pytest.raises(ValueError, match="weight_quantizer"):
        QuantLinear(8, 4, weight_quantizer=DynamicQuantizer(A_TOK), act_quantizer=DynamicQuantizer(A_TOK))
    with pytest.raises(ValueError, match="symmetric"):
        QuantLinear(
            8,
            4,
            weight_quantizer=DynamicQuantizer(QuantSpec(symmetric=False, granularity="channel")),
            act_quantizer=DynamicQuantizer(A_TOK),
        )
    with pytest.raises(ValueError, match="bits=16"):
        QuantLinear(
            8,
            4,
            weight_quantizer=DynamicQuantizer(QuantSpec(bits=16, granularity="channel")),
            act_quantizer=DynamicQuantizer(A_TOK),
        )
    with pytest.raises(ValueError, match="rounding must be 'nearest'"):
        QuantLinear(
            8,
            4,
            weight_quantizer=DynamicQuantizer(QuantSpec(rounding="stochastic", granularity="channel")),
            act_quantizer=DynamicQuantizer(A_TOK),
        )
    with pytest.raises(TypeError, match="weight_quantizer"):
        QuantLinear(8, 4, weight_quantizer="int8", act_quantizer=DynamicQuantizer(A_TOK))
    lin = QuantLinear(8, 4, weight_quantizer=DynamicQuantizer(W_CH), act_quantizer=DynamicQuantizer(A_TOK))
    with pytest.raises(ValueError, match=r"in_features=8"):
        lin(torch.randn(3, 7))
    with pytest.raises(TypeError, match="floating-point"):
        lin(torch.ones(3, 8, dtype=torch.int64))
