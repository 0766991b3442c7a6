"""Integer ranges, specs and the quantize/dequantize arithmetic."""

import numpy as np
import pytest
import torch

from retquant.quant import (
    PRESETS,
    QuantSpec,
    RetentionQuantConfig,
    compute_qparams,
    dequantize,
    fake_quantize,
    int_range,
    quantize,
    resolve_quant,
)


def test_int_ranges():
    assert int_range(4, True) == (-7, 7)
    assert int_range(8, True) == (-127, 127)
    assert int_range(16, True) == (-32767, 32767)
    assert int_range(4, False) == (-8, 7)
    assert int_range(8, False) == (-128, 127)


@pytest.mark.parametrize("bits", [4, 8, 16])
def test_symmetric_roundtrip_error_is_half_a_step(gen, bits):
    x = torch.randn(64, 48, generator=gen)
    spec = QuantSpec(bits=bits)
    s, z = compute_qparams(x, spec, (1,))
    codes = quantize(x, spec, s, z)
    assert codes.abs().max().item() <= spec.qmax
    assert codes.abs().amax(1).eq(spec.qmax).all()  # the row max lands on qmax
    err = (dequantize(codes, s, z) - x).abs()
    # half a step, plus the float32 rounding of codes * scale and of x / scale
    assert (err <= s / 2 + x.abs() * 2.0**-22).all()


def test_codes_match_independent_numpy(gen):
    """float32 division, round half to even: numpy computes the same codes."""
    x = torch.randn(33, 70, generator=gen) * 3
    spec = QuantSpec(bits=8)
    s, z = compute_qparams(x, spec, (1,))
    xn = x.numpy()
    sn = (np.abs(xn).max(axis=1, keepdims=True) / np.float32(127)).astype(np.float32)
    want = np.clip(np.rint(xn / sn), -127, 127).astype(np.int8)
    assert np.array_equal(s.numpy(), sn)
    assert np.array_equal(quantize(x, spec, s, z).numpy(), want)


def test_round_half_to_even():
    spec = QuantSpec(bits=8, static_range=(-127.0, 127.0))
    x = torch.tensor([[0.5, 1.5, 2.5, -0.5, -1.5]])
    codes = quantize(x, spec, *compute_qparams(x, spec, (1,)))
    assert codes.tolist() == [[0, 2, 2, 0, -2]]


def test_asymmetric_covers_shifted_data(gen):
    x = torch.rand(16, 64, generator=gen) * 5 + 1  # all positive
    sym = fake_quantize(x, QuantSpec(bits=4), (1,))
    asym = fake_quantize(x, QuantSpec(bits=4, symmetric=False), (1,))
    assert (asym - x).norm() < (sym - x).norm()
    s, z = compute_qparams(x, QuantSpec(bits=8, symmetric=False), (1,))
    assert (z >= -128).all() and (z <= 127).all()


def test_all_zero_group_gets_unit_scale():
    x = torch.zeros(2, 5)
    s, z = compute_qparams(x, QuantSpec(bits=8), (1,))
    assert torch.equal(s, torch.ones(2, 1))
    assert quantize(x, QuantSpec(bits=8), s, z).eq(0).all()


def test_static_range_clips():
    spec = QuantSpec(bits=8, static_range=(-1.0, 1.0))
    x = torch.tensor([[-3.0, 0.25, 5.0]])
    out = fake_quantize(x, spec, (1,))
    assert out[0, 0].item() == -1.0 and out[0, 2].item() == 1.0


def test_stochastic_rounding_is_unbiased(gen):
    spec = QuantSpec(bits=8, rounding="stochastic", static_range=(-127.0, 127.0))
    x = torch.full((200_000,), 0.3)
    codes = quantize(x, spec, *compute_qparams(x, spec, ()), generator=gen).float()
    assert set(codes.unique().tolist()) == {0.0, 1.0}
    assert abs(codes.mean().item() - 0.3) < 0.01


def test_spec_rejects_bad_values():
    with pytest.raises(ValueError, match="bits"):
        QuantSpec(bits=6)
    with pytest.raises(TypeError, match="bits"):
        QuantSpec(bits=8.0)
    with pytest.raises(ValueError, match="granularity"):
        QuantSpec(granularity="row")
    with pytest.raises(ValueError, match="rounding"):
        QuantSpec(rounding="up")
    with pytest.raises(ValueError, match="static_range"):
        QuantSpec(static_range=(1.0, -1.0))


def test_config_enforces_the_integer_gemm_rule():
    with pytest.raises(ValueError, match="q: granularity 'channel'"):
        RetentionQuantConfig(q=QuantSpec(granularity="channel"))
    with pytest.raises(ValueError, match="v: granularity 'token'"):
        RetentionQuantConfig(v=QuantSpec(granularity="token"))
    with pytest.raises(TypeError):
        RetentionQuantConfig(k=8)


def test_presets_and_resolve():
    assert resolve_quant(None) is None
    assert resolve_quant("int4").q.bits == 4 and resolve_quant("int16").state.bits == 16
    assert PRESETS["int8"].is_default_int8()
    with pytest.raises(ValueError, match="preset"):
        resolve_quant("int3")
    with pytest.raises(TypeError, match="quant"):
        resolve_quant(8)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("symmetric", [True, False])
def test_scale_is_the_correctly_rounded_quotient_on_every_device(gen, device, symmetric):
    # PyTorch's CUDA kernels compute x / number as x * (1 / number); the spec must not (its
    # kernels divide with IEEE rounding). s is the correctly rounded span / n exactly when
    # |s * n - span| <= n * ulp(s) / 2, and float64 holds s * n exactly (24 + 7 bits).
    spec = QuantSpec(bits=8, symmetric=symmetric)
    n = spec.qmax if symmetric else spec.qmax - spec.qmin
    x = (torch.rand(4096, 16, generator=gen) * 2 - 1) * torch.exp(torch.randn(4096, 1, generator=gen) * 3)
    s, _ = compute_qparams(x.to(device), spec, (1,))
    s = s.cpu().double().flatten()
    # the dividend as the spec forms it: amax, or hi - lo rounded to float32
    span = (x.abs().amax(1) if symmetric else x.amax(1).clamp(min=0) - x.amin(1).clamp(max=0)).double()
    ulp = torch.from_numpy(np.spacing(s.float().numpy()).astype(np.float64))
    err = (s * n - span).abs()
    assert bool((err <= n * ulp / 2).all()), f"worst: {(err / (n * ulp)).max().item():.3f} ulp"
