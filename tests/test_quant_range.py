"""The value range of quantized calls (retquant.validate, QUANT_INPUT_MAX / QUANT_STATE_MAX).

Beyond it a float32 intermediate could overflow while the true output is finite (e.g. q, k ~ 1e19
and v ~ 1e-20: the scores' dequantization acc * s_q * row * s_k * col exceeds float32), so every
backend rejects such calls with the same ValueError; within it the kernels stay bit-identical to
the spec, and only an output too large for float32 overflows, to inf (not NaN).
"""

from __future__ import annotations

import struct

import pytest
import torch

from retquant.backends import cpu_extension
from retquant.constants import QUANT_INPUT_MAX, QUANT_STATE_MAX
from retquant.ops import RetentionDecoder, chunk_retention, fused_recurrent_retention, parallel_retention
from retquant.validate import check_quant_inputs

_NO_CPU = pytest.mark.skipif(cpu_extension.load_error() is not None, reason="no CPU extension")
BACKENDS = ["reference", pytest.param("cpu", marks=_NO_CPU)]
OPS = {"chunk": chunk_retention, "recurrent": fused_recurrent_retention}


@pytest.fixture(autouse=True)
def _portable(monkeypatch):
    # the ISA this machine may lack is covered by test_cpu_backend's fixture; here the checks
    monkeypatch.setenv(cpu_extension.ISA_ENV, "portable")


def _f32(x: float) -> float:
    return struct.unpack("f", struct.pack("f", x))[0]


def test_bounds_are_the_scale_bound():
    # the kernels check scale = max / 127 < 2**25 where they have scales, |x| < 127 * 2**25
    # elsewhere: the same rule, since float32 division by 127 is monotone
    below = torch.tensor(QUANT_INPUT_MAX).nextafter(torch.tensor(0.0)).item()
    assert _f32(QUANT_INPUT_MAX / 127) == 2.0**25
    assert _f32(below / 127) < 2.0**25 and _f32(below) == below
    assert QUANT_STATE_MAX == 2.0**100


def test_concrete_overflow_case_is_rejected_everywhere():
    # True output: q.k * scale ~ K * 1e38 / sqrt(K) scores times v = 1e-20: ~1e19 per token, finite.
    # The quantized path would compute P = acc * s_q * s_k ~ 1e39 -> inf, then NaN outputs.
    B, T, H, K, V = 1, 5, 1, 16, 4
    q = k = torch.full((B, T, H, K), 1e19)
    v = torch.full((B, T, H, V), 1e-20)
    o64 = chunk_retention(q.double(), k.double(), v.double())[0]
    assert torch.isfinite(o64).all() and o64.abs().max() > 1e18
    for backend in ("reference", "cpu") if cpu_extension.load_error() is None else ("reference",):
        for op in OPS.values():
            with pytest.raises(
                ValueError, match=r"q holds values too large .*\|q \* scale\| must stay below"
            ):
                op(q, k, v, quant="int8", backend=backend)
    with pytest.raises(ValueError, match="q holds values too large"):
        parallel_retention(q, k, v, quant="int8", backend="reference")
    dec = RetentionDecoder(B, H, K, V)
    with pytest.raises(ValueError, match="q holds values too large"):
        dec.step(q[:, 0], k[:, 0], v[:, 0])
    assert not dec.state.any()  # rejected before any of the state was written


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("name", ["q", "k", "v", "initial_state"])
def test_each_input_is_range_checked(backend, op, name):
    # packed sequences, the large value in the second sequence's last chunk (the kernels check
    # while reading, chunk by chunk)
    T, H, K, V = 150, 2, 16, 8
    cu = torch.tensor([0, 40, T])
    g = torch.Generator().manual_seed(0)
    x = {
        "q": torch.randn(1, T, H, K, generator=g),
        "k": torch.randn(1, T, H, K, generator=g),
        "v": torch.randn(1, T, H, V, generator=g),
        "initial_state": torch.randn(2, H, K, V, generator=g),
    }
    scale = 0.5
    too_big = {"q": QUANT_INPUT_MAX / scale, "initial_state": QUANT_STATE_MAX}.get(name, QUANT_INPUT_MAX)
    idx = (1, H - 1, K - 1, V - 1) if name == "initial_state" else (0, T - 2, H - 1, 2)
    x[name][idx] = -too_big
    args = dict(scale=scale, initial_state=x["initial_state"], cu_seqlens=cu, quant="int8", backend=backend)
    with pytest.raises(ValueError, match=f"^{name} holds values too large for quantized retention"):
        OPS[op](x["q"], x["k"], x["v"], **args)
    # the largest accepted magnitude runs, finite
    below = torch.tensor(too_big, dtype=torch.float32).nextafter(torch.tensor(0.0)).item()
    x[name][idx] = -below
    o, s = OPS[op](x["q"], x["k"], x["v"], output_final_state=True, **args)
    assert torch.isfinite(o).all() and torch.isfinite(s).all()


def test_q_times_scale_overflowing_float32_is_rejected():
    q = torch.full((1, 3, 1, 8), 3e38)  # finite; times 2 it is inf in float32
    for backend in ("reference", "cpu") if cpu_extension.load_error() is None else ("reference",):
        with pytest.raises(ValueError, match="q holds values too large"):
            chunk_retention(q, q * 1e-30, q * 1e-30, scale=2.0, quant="int8", backend=backend)
    # float64 values beyond float32's range are rejected, not rounded to inf
    with pytest.raises(ValueError, match="k holds values too large"):
        chunk_retention(
            q.double() * 1e-30, q.double() * 1e10, q.double() * 1e-30, quant="int8", backend="reference"
        )


@pytest.mark.parametrize("bad", [1e39, 1e-50, 3.5e38], ids=["over", "under", "rounds-to-inf"])
def test_scale_must_round_to_a_finite_positive_float32(bad):
    q = torch.randn(1, 4, 1, 8)
    with pytest.raises(ValueError, match="scale must round to a finite float32 > 0"):
        chunk_retention(q, q, q, scale=bad, quant="int8")


@pytest.mark.skipif(cpu_extension.load_error() is not None, reason="no CPU extension")
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("big", ["tokens", "state"])
def test_extreme_accepted_inputs_are_finite_and_bit_identical(op, big):
    # |q * scale|, |k|, |v| just below 127 * 2**25 (mixed signs), or a state near 2**100: true
    # outputs within float32, no intermediate overflows, and the kernel equals the spec bit for bit.
    B, T, H, K, V = 2, 130, 2, 64, 32
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.rand(B, T, H, d, generator=g) * 2 - 1 for d in (K, K, V))
    s0 = torch.rand(B, H, K, V, generator=g) * 2 - 1
    if big == "tokens":
        top = 0.999 * QUANT_INPUT_MAX
        q, k, v = q * top, k * top, v * top
    else:
        s0 = s0 * 0.999 * QUANT_STATE_MAX
    args = dict(scale=1.0, initial_state=s0, output_final_state=True, quant="int8")
    o_ref, s_ref = OPS[op](q, k, v, backend="reference", **args)
    o_cpu, s_cpu = OPS[op](q, k, v, backend="cpu", **args)
    assert torch.isfinite(o_ref).all() and torch.isfinite(s_ref).all()
    assert torch.equal(o_cpu, o_ref) and torch.equal(s_cpu, s_ref)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", OPS)
def test_an_overflowing_output_is_inf_not_nan(backend, op):
    # q * scale ~ 4e9 against a state ~ 1e30 (both in range): q . S ~ K * 4e39 > float32's max.
    B, T, H, K, V = 1, 3, 1, 16, 4
    q = torch.full((B, T, H, K), 4e9)
    k, v = torch.ones(B, T, H, K), torch.ones(B, T, H, V)
    s0 = torch.full((B, H, K, V), 1e30)
    o, s = OPS[op](
        q, k, v, scale=1.0, initial_state=s0, output_final_state=True, quant="int8", backend=backend
    )
    assert torch.isinf(o).all() and (o > 0).all()
    assert torch.isfinite(s).all()
    ref = OPS[op](q, k, v, scale=1.0, initial_state=s0, output_final_state=True, quant="int8")
    assert torch.equal(o, ref[0]) and torch.equal(s, ref[1])


def test_check_quant_inputs_skips_none_and_names_the_first():
    x = torch.ones(1, 2, 1, 4)
    check_quant_inputs(x, None, x, None, 1.0)
    with pytest.raises(ValueError, match="^k holds inf or NaN"):
        check_quant_inputs(x, x * float("nan"), x * 1e20, None, 1.0)
