"""The C++ quantize ops (retquant.backends.cpu_quant) against the spec's codes and scales, bit
for bit: per-token q (times scale) and k, per-(chunk, channel) v with packed sequences."""

from __future__ import annotations

import pytest
import torch

from retquant.backends import cpu_extension
from retquant.backends.cpu_quant import quantize_tokens, quantize_v_chunks
from retquant.decay import default_g_gamma
from retquant.quant.config import RetentionQuantConfig
from retquant.quant.primitives import compute_qparams, quantize
from retquant.quant.spec import QuantSpec
from retquant.spec.int_chunk import int_chunk_retention

_ERR = cpu_extension.load_error()
pytestmark = pytest.mark.skipif(_ERR is not None, reason=f"CPU extension unavailable: {_ERR}")
SPEC = QuantSpec(bits=8)
C = 64


def _spec_tokens(x: torch.Tensor, mul: float):
    xm = x.float() * mul
    scale, zero = compute_qparams(xm, SPEC, (-1,))
    return quantize(xm, SPEC, scale, zero), scale[..., 0]


def _spec_v(v: torch.Tensor, offsets: list[int]):
    codes, scales = [], []
    for s, e in zip(offsets[:-1], offsets[1:]):
        for t in range(s, e, C):
            chunk = v[t : min(t + C, e)].float()
            scale, zero = compute_qparams(chunk, SPEC, (0,))
            codes.append(quantize(chunk, SPEC, scale, zero))
            scales.append(scale[0])
    return torch.cat(codes), torch.stack(scales)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(70, 3, 33), (5, 1, 1), (200, 2, 128), (9, 4, 7)])
def test_tokens_match_primitives(shape, dtype):
    g = torch.Generator().manual_seed(sum(shape))
    x = (torch.randn(shape, generator=g) * torch.rand(shape[0], 1, 1, generator=g) * 5).to(dtype)
    x[0, 0] = 0.0  # an all-zero row: scale 1
    for mul in (1.0, shape[2] ** -0.5, 0.3):
        codes, scales = quantize_tokens(x, mul)
        want_codes, want_scales = _spec_tokens(x, mul)
        assert torch.equal(codes, want_codes) and torch.equal(scales, want_scales)
    assert scales[0, 0].item() == 1.0


def test_tokens_and_v_match_the_chunk_spec_trace():
    # the codes the spec's own chunk algorithm quantizes (dense call, two sequences of 150 tokens)
    B, T, H, K, V = 2, 150, 2, 32, 24
    g = torch.Generator().manual_seed(1)
    q, k, v = (
        torch.randn(B, T, H, K, generator=g),
        torch.randn(B, T, H, K, generator=g),
        torch.randn(B, T, H, V, generator=g),
    )
    scale = K**-0.5
    _, _, tr = int_chunk_retention(q, k, v, default_g_gamma(H), scale, RetentionQuantConfig(), trace=True)
    n = -(-T // C)

    def chunked(codes):  # [B*T, H, D] -> the trace's [B, H, n, C, D] (zero padded)
        x = codes.view(B, T, H, -1).transpose(1, 2)
        return torch.nn.functional.pad(x, (0, 0, 0, n * C - T)).reshape(B, H, n, C, -1)

    assert torch.equal(chunked(quantize_tokens(q.reshape(B * T, H, K), scale)[0]), tr.q_codes)
    assert torch.equal(chunked(quantize_tokens(k.reshape(B * T, H, K))[0]), tr.k_codes)
    v_codes, v_scales = quantize_v_chunks(v.reshape(B * T, H, V), torch.tensor([0, T, 2 * T]))
    assert torch.equal(chunked(v_codes), tr.v_codes)
    assert v_scales.shape == (B * n, H, V)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("offsets", [[0, 1], [0, 64], [0, 65], [0, 3, 130, 131, 300]])
def test_v_chunks_match_primitives(offsets, dtype):
    T, H, V = offsets[-1], 3, 19
    g = torch.Generator().manual_seed(T)
    v = (torch.randn(T, H, V, generator=g) * 3).to(dtype)
    v[:, 1, 4] = 0.0  # an all-zero channel: scale 1
    codes, scales = quantize_v_chunks(v, torch.tensor(offsets))
    want_codes, want_scales = _spec_v(v, offsets)
    assert torch.equal(codes, want_codes) and torch.equal(scales, want_scales)


def test_nonfinite_and_bad_arguments_raise():
    x = torch.randn(10, 2, 8)
    for bad in (float("nan"), float("inf")):
        y = x.clone()
        y[7, 1, 5] = bad
        with pytest.raises(ValueError, match="^q holds inf or NaN"):
            quantize_tokens(y, 0.5, name="q")
        with pytest.raises(ValueError, match="^v holds inf or NaN"):
            quantize_v_chunks(y, torch.tensor([0, 4, 10]))
    with pytest.raises(ValueError, match="overflows float32"):
        quantize_tokens(torch.full((3, 2, 8), 1e37), 100.0, name="q")
    with pytest.raises(TypeError, match="float32 or bfloat16"):
        quantize_tokens(x.double())
    with pytest.raises(ValueError, match=r"shape \[T, H, D\]"):
        quantize_tokens(x[0])
    with pytest.raises(ValueError, match="offsets must increase strictly from 0 to T_total=10"):
        quantize_v_chunks(x, torch.tensor([0, 4, 9]))
    with pytest.raises(ValueError, match="chunk_size"):
        quantize_v_chunks(x, torch.tensor([0, 10]), chunk_size=0)
    with pytest.raises(TypeError, match="mul must be a finite float"):
        quantize_tokens(x, float("inf"))


def test_noncontiguous_input():
    x = torch.randn(8, 40, 3).transpose(1, 2)  # [8, 3, 40] strided
    codes, scales = quantize_tokens(x, 0.7)
    want = _spec_tokens(x, 0.7)
    assert torch.equal(codes, want[0]) and torch.equal(scales, want[1])
