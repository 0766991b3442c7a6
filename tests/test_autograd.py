"""The training path: gradients of every form, quantized (straight-through) and float.

Independent checks: the quantized gradients are compared with float64 autograd of the float
specification evaluated at operands dequantized here from the integer spec's own trace (chunk
layout, not the saved-operand code under test); the float gradients with gradcheck (numerical
derivatives of the float64 spec) and with float64 autograd of the spec.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_close, rand_qkv

from retquant.decay import default_g_gamma
from retquant.ops import chunk_retention, fused_recurrent_retention, parallel_retention
from retquant.quant import PRESETS, QuantSpec, RetentionQuantConfig
from retquant.spec.int_chunk import int_chunk_retention
from retquant.spec.int_recurrent import int_recurrent_retention
from retquant.spec.naive import naive_chunk_retention

FORMS = {
    "chunk": chunk_retention,
    "fused_recurrent": fused_recurrent_retention,
    "parallel": parallel_retention,
}


def _deq(codes, scale, zero):
    return ((codes.to(torch.int32) - zero.to(torch.int32)).float() * scale).double()


def _tokens(x, T):  # chunked [B, H, n, c, D] -> [B, T, H, D]
    B, H, n, c, D = x.shape
    return x.reshape(B, H, n * c, D)[:, :, :T].transpose(1, 2)


def _dequantized_by_spec(form, q, k, v, g, scale, config):
    """(q_hat of q*scale, k_hat, v_hat) in float64 from the spec's trace."""
    T = q.shape[1]
    if form == "fused_recurrent":
        _, _, tr = int_recurrent_retention(q, k, v, g, scale, config, trace=True)
        return tuple(_deq(*(getattr(tr, f"{n}_{f}") for f in ("codes", "scale", "zero"))) for n in "qkv")
    c = 64 if form == "chunk" else T
    _, _, tr = int_chunk_retention(q, k, v, g, scale, config, chunk_size=c, trace=True)
    qh = _tokens(_deq(tr.q_codes, tr.q_scale, tr.q_zero), T)
    kh = _deq(tr.k_codes, tr.k_scale, tr.k_zero)
    if tr.k_mean is not None:
        kh = (kh.float() + tr.k_mean).double()
    return qh, _tokens(kh, T), _tokens(_deq(tr.v_codes, tr.v_scale, tr.v_zero), T)


def _float64_grads(qh, kh, vh, g, h0, do, dht):
    """float64 autograd of the float spec at (qh, kh, vh) with scale 1."""
    xs = [x.detach().double().requires_grad_() for x in (qh, kh, vh)]
    h = None if h0 is None else h0.detach().double().requires_grad_()
    o, fin = naive_chunk_retention(*xs, g, 1.0, h)
    loss = (o * do.double()).sum() + (fin * dht.double()).sum()
    return torch.autograd.grad(loss, xs + ([h] if h is not None else []))


def _op_grads(fn, q, k, v, h0, do, dht, **kw):
    xs = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    h = None if h0 is None else h0.detach().clone().requires_grad_()
    extra = {} if fn is parallel_retention else {"initial_state": h, "output_final_state": True}
    o, fin = fn(*xs, **extra, **kw)
    loss = (o * do).sum() + ((fin * dht).sum() if fn is not parallel_retention else 0)
    loss.backward()
    return o.detach(), [x.grad for x in xs] + ([h.grad] if h is not None else [])


@pytest.mark.parametrize("preset", ["int8", "int4", "int16", "int8_smooth"])
@pytest.mark.parametrize("form", list(FORMS))
def test_quantized_grad_is_float_grad_at_dequantized_operands(gen, preset, form):
    B, T, H, K, V = 2, 75, 2, 24, 40
    q, k, v = rand_qkv(gen, B, T, H, K, V)
    g, scale = default_g_gamma(H), K**-0.5
    with_state = form != "parallel"
    h0 = torch.randn(B, H, K, V, generator=gen) if with_state else None
    do = torch.randn(B, T, H, V, generator=gen)
    dht = torch.randn(B, H, K, V, generator=gen) if with_state else torch.zeros(B, H, K, V)
    _, got = _op_grads(FORMS[form], q, k, v, h0, do, dht, quant=preset, backend="reference")
    qh, kh, vh = _dequantized_by_spec(form, q, k, v, g, scale, PRESETS[preset])
    want = list(_float64_grads(qh, kh, vh, g, h0, do, dht))
    want[0] = want[0] * scale  # d(q*scale)/dq
    for name, a, b in zip(["dq", "dk", "dv", "dh0"], got, want):
        assert_close(f"{form}/{preset} {name}", a, b, rel=2e-5)


@pytest.mark.parametrize("form", list(FORMS))
def test_int8_gradient_close_to_float_gradient(gen, form):
    q, k, v = rand_qkv(gen, 2, 300, 2, 64, 64)
    do = torch.randn(2, 300, 2, 64, generator=gen)
    dht = torch.zeros(2, 2, 64, 64)
    _, g8 = _op_grads(FORMS[form], q, k, v, None, do, dht, quant="int8")
    _, gf = _op_grads(FORMS[form], q.double(), k.double(), v.double(), None, do.double(), dht.double())
    for name, a, b in zip(["dq", "dk", "dv"], g8, gf):
        assert_close(f"{form} int8 {name} vs float", a, b, rel=0.05, cos=0.999)


def test_varlen_quantized_gradient_equals_per_sequence(gen):
    H, K, V = 2, 16, 24
    lens = [70, 5, 130]
    cu = torch.tensor(np.cumsum([0, *lens]))
    q, k, v = rand_qkv(gen, 1, sum(lens), H, K, V)
    h0 = torch.randn(3, H, K, V, generator=gen)
    do = torch.randn(1, sum(lens), H, V, generator=gen)
    dht = torch.randn(3, H, K, V, generator=gen)
    _, got = _op_grads(chunk_retention, q, k, v, h0, do, dht, quant="int8", cu_seqlens=cu)
    parts = []
    for i, (s, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        sl = slice(s, e)
        parts.append(
            _op_grads(
                chunk_retention,
                q[:, sl],
                k[:, sl],
                v[:, sl],
                h0[i : i + 1],
                do[:, sl],
                dht[i : i + 1],
                quant="int8",
            )[1]
        )
    for j, name in enumerate(["dq", "dk", "dv"]):
        assert_close(f"varlen {name}", got[j], torch.cat([p[j] for p in parts], dim=1), rel=1e-6)
    assert_close("varlen dh0", got[3], torch.cat([p[3] for p in parts], dim=0), rel=1e-6)


def test_static_range_zero_gradient_outside(gen):
    spec = QuantSpec(bits=8, granularity="token", static_range=(-0.3, 0.3))
    cfg = RetentionQuantConfig(q=spec, k=spec)
    q, k, v = rand_qkv(gen, 1, 90, 2, 16, 16)
    do = torch.randn(1, 90, 2, 16, generator=gen)
    _, (dq, dk, dv) = _op_grads(parallel_retention, q, k, v, None, do, None, quant=cfg, backend="reference")
    outside_q = (q * 16**-0.5).abs() > 0.3
    outside_k = k.abs() > 0.3
    assert outside_q.any() and (~outside_q).any() and outside_k.any()
    assert torch.all(dq[outside_q] == 0) and torch.all(dk[outside_k] == 0)
    assert (dq[~outside_q] != 0).float().mean() > 0.9 and (dk[~outside_k] != 0).float().mean() > 0.9


def _backends():
    """reference, and the cpu backend on every kernel ISA this CPU runs (``cpu/<isa>``)."""
    from retquant.backends import cpu_extension

    out = ["reference"]
    if cpu_extension.load_error() is None:
        out += [f"cpu/{isa}" for isa in cpu_extension.cpu_isas()]
    return out


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("form", ["chunk", "fused_recurrent"])
def test_training_output_is_inference_output(gen, backend, form, monkeypatch):
    backend, _, isa = backend.partition("/")
    if isa:
        monkeypatch.setenv("RETQUANT_CPU_ISA", isa)
    q, k, v = rand_qkv(gen, 2, 130, 2, 32, 48)
    h0 = torch.randn(2, 2, 32, 48, generator=gen)
    kw = dict(initial_state=h0, output_final_state=True, quant="int8", backend=backend)
    with torch.no_grad():
        o_inf, s_inf = FORMS[form](q, k, v, **kw)
    qg = q.clone().requires_grad_()
    o_tr, s_tr = FORMS[form](qg, k, v, **kw)
    assert o_tr.requires_grad
    assert torch.equal(o_tr.detach(), o_inf) and torch.equal(s_tr.detach(), s_inf)


def test_cpu_gradients_equal_reference_gradients(gen):
    if len(_backends()) == 1:
        pytest.skip("CPU extension unavailable")
    q, k, v = rand_qkv(gen, 2, 100, 2, 32, 40)
    h0 = torch.randn(2, 2, 32, 40, generator=gen)
    do, dht = torch.randn(2, 100, 2, 40, generator=gen), torch.randn(2, 2, 32, 40, generator=gen)
    o_c, g_c = _op_grads(chunk_retention, q, k, v, h0, do, dht, quant="int8", backend="cpu")
    o_r, g_r = _op_grads(chunk_retention, q, k, v, h0, do, dht, quant="int8", backend="reference")
    assert torch.equal(o_c, o_r)
    for a, b in zip(g_c, g_r):  # the same saved codes -> the same backward
        assert torch.equal(a, b)


@pytest.mark.parametrize("form", list(FORMS))
def test_float_path_gradcheck(form):
    g = torch.Generator().manual_seed(3)
    B, T, H, K, V = 1, 9, 2, 3, 2
    fn = FORMS[form]
    q, k, v = (
        torch.randn(B, T, H, d, generator=g, dtype=torch.float64, requires_grad=True) for d in (K, K, V)
    )
    if form == "parallel":
        assert torch.autograd.gradcheck(lambda q, k, v: fn(q, k, v)[0], (q, k, v))
        cu = torch.tensor([0, 4, 9])
        assert torch.autograd.gradcheck(lambda q, k, v: fn(q, k, v, cu_seqlens=cu)[0], (q, k, v))
        return
    h0 = torch.randn(B, H, K, V, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda *a: fn(*a[:3], initial_state=a[3], output_final_state=True), (q, k, v, h0)
    )
    cu = torch.tensor([0, 4, 9])
    h0v = torch.randn(2, H, K, V, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda *a: fn(*a[:3], initial_state=a[3], output_final_state=True, cu_seqlens=cu), (q, k, v, h0v)
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_float_path_grad_matches_float64_spec(gen, dtype):
    q, k, v = rand_qkv(gen, 2, 150, 2, 40, 24)
    h0 = torch.randn(2, 2, 40, 24, generator=gen)
    do, dht = torch.randn(2, 150, 2, 24, generator=gen), torch.randn(2, 2, 40, 24, generator=gen)
    lo = [x.to(dtype) for x in (q, k, v)]
    o, got = _op_grads(chunk_retention, *lo, h0, do.to(dtype), dht)
    assert o.dtype == dtype and all(x.dtype == dtype for x in got[:3])
    want = _float64_grads(q.double() * 40**-0.5, k, v, default_g_gamma(2), h0, do, dht)
    want = [want[0] * 40**-0.5, *want[1:]]
    bound = 1e-5 if dtype == torch.float32 else 2e-2  # bf16: inputs and grads rounded to 8 bits
    ref_inputs = [x.double() for x in lo] if dtype == torch.bfloat16 else None
    if ref_inputs is not None:  # compare at the rounded inputs, so only the grads' rounding counts
        want = _float64_grads(
            ref_inputs[0] * 40**-0.5, ref_inputs[1], ref_inputs[2], default_g_gamma(2), h0, do.to(dtype), dht
        )
        want = [want[0] * 40**-0.5, *want[1:]]
    for name, a, b in zip(["dq", "dk", "dv", "dh0"], got, want):
        assert_close(f"{dtype} {name}", a, b, rel=bound)


def test_g_gamma_requiring_grad_is_an_error(gen):
    q, k, v = rand_qkv(gen, 1, 10, 2, 8, 8)
    gg = default_g_gamma(2).requires_grad_()
    with pytest.raises(ValueError, match="g_gamma requires grad"):
        chunk_retention(q, k, v, g_gamma=gg)
    chunk_retention(q, k, v, g_gamma=gg.detach())


def test_static_score_range_with_grad_is_an_error(gen):
    cfg = RetentionQuantConfig(score=QuantSpec(bits=8, granularity="token", static_range=(-1.0, 1.0)))
    q, k, v = rand_qkv(gen, 1, 10, 2, 8, 8)
    chunk_retention(q, k, v, quant=cfg)  # inference is fine
    with pytest.raises(ValueError, match="score has a static range"):
        chunk_retention(q.requires_grad_(), k, v, quant=cfg)


def _saved_bytes(fn):
    seen = {}

    def pack(t):
        seen[(t.untyped_storage().data_ptr(), t.dtype, tuple(t.shape))] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def test_quantized_call_saves_codes_not_floats(gen):
    q, k, v = (x.requires_grad_() for x in rand_qkv(gen, 2, 256, 4, 64, 64))
    float_bytes = _saved_bytes(lambda: chunk_retention(q, k, v))
    int8_bytes = _saved_bytes(lambda: chunk_retention(q, k, v, quant="int8"))
    assert float_bytes >= 3 * q.numel() * 4  # q, k, v in fp32
    assert int8_bytes <= 0.3 * float_bytes, (int8_bytes, float_bytes)
