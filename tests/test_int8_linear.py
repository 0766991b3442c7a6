"""The int8 linear layer's kernels (retquant.backends.int8_linear) against the PyTorch reference,
bit for bit (``torch.equal``), on every kernel ISA this CPU runs (the others are skipped with
the reason "this CPU cannot run the ... kernels", in pytest's -ra summary), plus the input
errors, the fallback path and a fullgraph compile. Random codes are fresh per run: the seed is
printed (pytest shows it with a failure) and named in every assertion message.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch

from retquant.backends import cpu_extension
from retquant.backends import int8_linear as lin
from retquant.backends.int8_linear import (
    int8_linear,
    int8_matmul,
    int8_matmul_reference,
    pack_weight,
    quantize_per_token,
)
from retquant.quant.primitives import compute_qparams, quantize
from retquant.quant.spec import QuantSpec

_ERR = cpu_extension.load_error()
pytestmark = pytest.mark.skipif(_ERR is not None, reason=f"CPU extension unavailable: {_ERR}")

MS, KS, NS = (1, 3, 17, 200), (1, 5, 64, 257), (1, 15, 33, 768)


@pytest.fixture
def seed():
    s = torch.seed() % 2**31
    print(f"seed = {s}")
    return s


def _codes(g, *shape, lo=-127, hi=127):
    return torch.randint(lo, hi + 1, shape, dtype=torch.int8, generator=g)


def _reference(a, sa, w, sw, bias):
    """The documented expression, scales broadcast as the caller passes them."""
    acc = int8_matmul_reference(a, w).float()
    sa = sa.reshape(-1, 1) if sa.numel() > 1 else sa.reshape(())
    sw = sw.reshape(1, -1) if sw.numel() > 1 else sw.reshape(())
    y = (acc * sa) * sw
    return y if bias is None else y + bias


def test_product_and_epilogue_all_shapes(isa, seed):
    """Every (M, K, N) of the odd-shape grid: the raw product, then the epilogue with one of the
    scale forms (per token / per tensor x per channel / per tensor, [M] or [M, 1], with and
    without bias) in turn, against the raw and the packed weight."""
    g = torch.Generator().manual_seed(seed)
    i = 0
    for M in MS:
        for K in KS:
            for N in NS:
                a, w = _codes(g, M, K), _codes(g, N, K)
                where = f"seed {seed}, isa {isa}, M={M} K={K} N={N}"
                ref = int8_matmul_reference(a, w)
                assert torch.equal(int8_matmul(a, w), ref), where
                pw = pack_weight(w)
                a_shapes = [(M,), (M, 1), (1,), ()]
                w_shapes = [(N,), (), (N, 1), (1,)]
                sa = torch.rand(a_shapes[i % 4], generator=g) + 0.01
                sw = torch.rand(w_shapes[(i // 4) % 4], generator=g) + 0.01
                bias = torch.randn(N, generator=g) if i % 3 else None
                want = _reference(a, sa, w, sw, bias)
                assert torch.equal(int8_linear(a, sa, w, sw, bias), want), f"{where}, case {i}"
                assert torch.equal(int8_linear(a, sa, pw, sw, bias), want), f"{where}, packed, case {i}"
                i += 1


def test_larger_shape_and_panel_width(isa, seed):
    """A layer-sized product with more than one row block and task; a weight packed in 64-column
    panels (the VNNI layout) gives the same result on every ISA."""
    g = torch.Generator().manual_seed(seed)
    a, w = _codes(g, 300, 200), _codes(g, 200, 200)
    sa, sw, b = torch.rand(300, generator=g), torch.rand(200, generator=g), torch.randn(200, generator=g)
    want = _reference(a, sa, w, sw, b)
    packed, colsum = cpu_extension.ops().int8_pack_weight(w, 64)
    pw64 = lin.PackedInt8Weight(200, 200, 64, packed, colsum, None)
    for weight in (w, pack_weight(w), pw64):
        assert torch.equal(int8_linear(a, sa, weight, sw, b), want), f"seed {seed}, isa {isa}"
    assert torch.equal(int8_matmul(a, pw64), int8_matmul_reference(a, w)), f"seed {seed}, isa {isa}"


def test_reused_output_buffers_are_fully_written(isa, seed):
    """Outputs of 2 MiB or more come from freed ones (csrc/output_alloc.cpp): a NaN-poisoned
    freed output must be overwritten everywhere, with one task grid by rows and one that splits
    the columns too (few rows)."""
    g = torch.Generator().manual_seed(seed)
    for M, N in [(600, 1000), (3, 200_000)]:
        a, w = _codes(g, M, 8), _codes(g, N, 8)
        sa, sw = torch.rand(M, generator=g), torch.rand(N, generator=g)
        want = _reference(a, sa, w, sw, None)
        for _ in range(2):
            y = int8_linear(a, sa, w, sw)
            assert torch.equal(y, want), f"seed {seed}, isa {isa}, {M}x{N}"
            y.fill_(float("nan"))
            del y


@pytest.mark.parametrize("pattern", ["+127", "-127", "alternating", "a+ w-"])
def test_extreme_codes(isa, pattern):
    """All products at +-127 * 127 with K = 2052 (sums up to 33e6, pairs of 32258 in the AVX2
    path's int16 step: no saturation)."""
    M, K, N = 9, 2052, 40
    ones = torch.ones(M, K, dtype=torch.int8)
    a, w = ones * 127, torch.ones(N, K, dtype=torch.int8) * 127
    if pattern == "-127":
        a, w = -a, -w
    elif pattern == "alternating":
        sign = 1 - 2 * (torch.arange(K) % 2).to(torch.int8)
        a, w = a * sign, w * sign
    elif pattern == "a+ w-":
        w = -w
    want = int8_matmul_reference(a, w)
    assert int(want.abs().max()) == K * 127 * 127
    assert torch.equal(int8_matmul(a, w), want), pattern
    s = torch.full((M,), 1e-3)
    assert torch.equal(int8_linear(a, s, w, torch.ones(N)), _reference(a, s, w, torch.ones(N), None))


def test_noncontiguous_and_empty(isa, seed):
    g = torch.Generator().manual_seed(seed)
    a = _codes(g, 33, 21).t()  # [21, 33], a transposed view
    w = _codes(g, 50, 66)[:, ::2]  # [50, 33], strided columns
    sa, sw = torch.rand(21, 2, generator=g)[:, 0], torch.rand(50, generator=g)
    assert not (a.is_contiguous() or w.is_contiguous() or sa.is_contiguous())
    assert torch.equal(int8_linear(a, sa, w, sw), _reference(a, sa, w, sw, None)), f"seed {seed}"
    empty = int8_linear(torch.empty(0, 33, dtype=torch.int8), torch.empty(0), w, sw)
    assert empty.shape == (0, 50) and empty.dtype == torch.float32
    assert int8_matmul(torch.empty(0, 33, dtype=torch.int8), w).shape == (0, 50)
    # K = 0: an empty reduction, acc = 0
    z = int8_linear(torch.empty(3, 0, dtype=torch.int8), torch.ones(3), torch.empty(4, 0, dtype=torch.int8),
                    torch.ones(4), torch.arange(4.0))  # fmt: skip
    assert torch.equal(z, torch.arange(4.0).expand(3, 4))


def test_minus_128_raises(isa):
    a, w = torch.zeros(6, 10, dtype=torch.int8), torch.zeros(5, 10, dtype=torch.int8)
    bad_a, bad_w = a.clone(), w.clone()
    bad_a[5, 9] = -128
    bad_w[4, 0] = -128
    s = torch.ones(1)
    with pytest.raises(ValueError, match="a_codes must hold symmetric codes"):
        int8_linear(bad_a, s, w, s)
    with pytest.raises(ValueError, match="a_codes must hold symmetric codes"):
        int8_matmul(bad_a, pack_weight(w))
    with pytest.raises(ValueError, match="w_codes must hold symmetric codes"):
        int8_linear(a, s, bad_w, s)
    with pytest.raises(ValueError, match="w_codes must hold symmetric codes"):
        pack_weight(bad_w)


def test_bad_arguments_raise():
    a, w = torch.zeros(4, 8, dtype=torch.int8), torch.zeros(3, 8, dtype=torch.int8)
    sa, sw = torch.ones(4), torch.ones(3)
    cases = [
        (TypeError, "a_codes must be int8", (a.float(), sa, w, sw)),
        (TypeError, "w_codes must be int8", (a, sa, w.to(torch.int16), sw)),
        (TypeError, "a_codes must be an int8 torch.Tensor", (a.tolist(), sa, w, sw)),
        (ValueError, r"a_codes must have shape \[M, K\]", (a[0], sa, w, sw)),
        (ValueError, "must share K", (a, sa, torch.zeros(3, 9, dtype=torch.int8), sw)),
        (TypeError, "a_scale must be float32", (a, sa.double(), w, sw)),
        (ValueError, r"a_scale must have shape \[M\]=\[4\]", (a, torch.ones(3), w, sw)),
        (ValueError, r"a_scale must have shape", (a, torch.ones(4, 2), w, sw)),
        (ValueError, r"w_scale must have shape \[N\]=\[3\]", (a, sa, w, torch.ones(4))),
        (TypeError, "w_scale must be float32", (a, sa, w, sw.half())),
        (ValueError, r"bias must have shape \[N\]=\[3\] or None", (a, sa, w, sw, torch.ones(1))),
        (TypeError, "bias must be float32", (a, sa, w, sw, torch.ones(3, dtype=torch.float64))),
    ]
    for err, msg, args in cases:
        with pytest.raises(err, match=msg):
            int8_linear(*args)
    with pytest.raises(ValueError, match="must share K"):
        int8_matmul(a, pack_weight(torch.zeros(3, 7, dtype=torch.int8)))
    long = torch.zeros(1, lin.MAX_K + 1, dtype=torch.int8)
    with pytest.raises(ValueError, match="too long for exact int32 sums"):
        int8_matmul(long, long)


def test_quantize_per_token_matches_primitives(seed):
    g = torch.Generator().manual_seed(seed)
    spec = QuantSpec(bits=8, granularity="token")
    for M, K in [(1, 1), (7, 5), (33, 257), (64, 64)]:
        x = torch.randn(M, K, generator=g) * torch.rand(M, 1, generator=g) * 10
        x[M // 2] = 0.0  # an all-zero row: scale 1
        for xd in (x, x.bfloat16()):
            scale, zero = compute_qparams(xd, spec, (1,))
            codes, s = quantize_per_token(xd)
            assert torch.equal(codes, quantize(xd, spec, scale, zero)), f"seed {seed}, {M}x{K} {xd.dtype}"
            assert torch.equal(s, scale.view(M)), f"seed {seed}, {M}x{K} {xd.dtype}"
    c, s = quantize_per_token(torch.randn(40, 6, generator=g).t())  # non-contiguous
    assert c.shape == (6, 40) and s.shape == (6,)
    c, s = quantize_per_token(torch.empty(0, 6))
    assert c.shape == (0, 6) and s.shape == (0,)
    with pytest.raises(ValueError, match="inf or NaN"):
        quantize_per_token(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(TypeError, match="x must be float32 or bfloat16"):
        quantize_per_token(torch.ones(2, 2, dtype=torch.float64))


def test_fallback_without_extension_warns_once(monkeypatch, seed):
    """With the extension unavailable, CPU tensors run the reference: same bits, one warning."""
    g = torch.Generator().manual_seed(seed)
    a, w = _codes(g, 17, 33), _codes(g, 15, 33)
    sa, sw, b = torch.rand(17, generator=g), torch.rand(15, generator=g), torch.randn(15, generator=g)
    x = torch.randn(5, 9, generator=g)
    want_y, want_q = int8_linear(a, sa, w, sw, b), quantize_per_token(x)
    monkeypatch.setattr(cpu_extension, "load_error", lambda: "no compiler (test)")
    monkeypatch.setattr(lin, "_warned_fallback", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pw = pack_weight(w)
        assert pw.packed is None and pw.codes is not None
        assert torch.equal(int8_linear(a, sa, w, sw, b), want_y), f"seed {seed}"
        assert torch.equal(int8_linear(a, sa, pw, sw, b), want_y), f"seed {seed}"
        assert all(torch.equal(p, q) for p, q in zip(quantize_per_token(x), want_q))
        bad = a.clone()
        bad[0, 0] = -128
        with pytest.raises(ValueError, match="a_codes must hold symmetric codes"):
            int8_matmul(bad, w)
    msgs = [str(c.message) for c in caught if "int8_linear" in str(c.message)]
    assert len(msgs) == 1 and "no compiler (test)" in msgs[0], msgs


def test_compile_fullgraph_and_opcheck():
    script = os.path.join(os.path.dirname(__file__), "int8_linear_compile_check.py")
    r = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "int8 linear compile checks passed" in r.stdout
