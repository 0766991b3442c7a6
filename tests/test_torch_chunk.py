"""The float chunkwise path (retquant.backends.torch_chunk): forward against the float64 spec,
hand-written backward against autograd through the spec, gradcheck, odd shapes, varlen, bf16.

Every test prints its generator's seed (shown by pytest on failure) so a failure can be rerun.
"""

import pytest
import torch
from conftest import rand_qkv

import retquant.backends.torch_chunk as tc
from retquant.backends.chunk_layout import plan_groups
from retquant.decay import default_g_gamma
from retquant.metrics import compare
from retquant.spec.naive import naive_chunk_retention

F64 = torch.float64
TS = [1, 63, 64, 65, 130]


def _seed(gen):
    print(f"seed={gen.initial_seed()}")


def _inputs(gen, B, T, H, K, V, dtype=F64, n_states=None):
    q, k, v = rand_qkv(gen, B, T, H, K, V, dtype)
    s0 = torch.randn(n_states or B, H, K, V, generator=gen, dtype=F64)
    return q, k, v, s0


def _spec_grads(q, k, v, g, scale, s0, do, dht, chunk_size=64):
    """dq, dk, dv, dh0 by float64 autograd through the naive chunk loop (an independent path)."""
    leaves = [x.detach().to(F64).requires_grad_() for x in (q, k, v)]
    s = None if s0 is None else s0.detach().to(F64).requires_grad_()
    o, final = naive_chunk_retention(*leaves, g, scale, s, chunk_size=chunk_size)
    loss = (o * do.to(F64)).sum() + (0 if dht is None else (final * dht.to(F64)).sum())
    grads = torch.autograd.grad(loss, leaves + ([s] if s is not None else []))
    return (*grads[:3], grads[3] if s is not None else None)


def _close(a, b, tol=1e-12):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("T", TS)
@pytest.mark.parametrize("with_state", [False, True])
def test_forward_float64_matches_spec(gen, T, with_state):
    _seed(gen)
    B, H, K, V = 2, 3, 40, 24
    q, k, v, s0 = _inputs(gen, B, T, H, K, V)
    s0 = s0 if with_state else None
    g = default_g_gamma(H)
    o, final = tc.chunk_fwd(q, k, v, g, K**-0.5, s0)
    ro, rfinal = naive_chunk_retention(q, k, v, g, K**-0.5, s0)
    assert o.dtype == F64 and final.dtype == F64
    _close(o, ro)
    _close(final, rfinal)


@pytest.mark.parametrize("T", [65, 200])
def test_forward_float32_matches_spec(gen, T):
    _seed(gen)
    B, H, K, V = 2, 4, 64, 32
    q, k, v, s0 = _inputs(gen, B, T, H, K, V, torch.float32)
    g = default_g_gamma(H)
    o, final = tc.chunk_fwd(q, k, v, g, K**-0.5, s0.float())
    ro, rfinal = naive_chunk_retention(q, k, v, g, K**-0.5, s0)
    assert o.dtype == torch.float32 and final.dtype == torch.float32
    for out, ref in ((o, ro), (final, rfinal)):
        e = compare(out, ref)
        assert e.rel_l2 <= 1e-5 and e.cosine >= 1 - 1e-9, e


def test_no_final_state(gen):
    q, k, v, _ = _inputs(gen, 1, 10, 2, 8, 8)
    assert tc.chunk_fwd(q, k, v, default_g_gamma(2), 0.5, output_final_state=False)[1] is None


@pytest.mark.parametrize("T", TS)
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("with_dht", [False, True])
def test_backward_float64_matches_autograd_of_spec(gen, T, with_state, with_dht):
    _seed(gen)
    B, H, K, V = 2, 3, 40, 24
    q, k, v, s0 = _inputs(gen, B, T, H, K, V)
    s0 = s0 if with_state else None
    do = torch.randn(B, T, H, V, generator=gen, dtype=F64)
    dht = torch.randn(B, H, K, V, generator=gen, dtype=F64) if with_dht else None
    g = default_g_gamma(H)
    got = tc.chunk_bwd(q, k, v, g, K**-0.5, do, s0, dht)
    want = _spec_grads(q, k, v, g, K**-0.5, s0, do, dht)
    for name, a, b in zip(("dq", "dk", "dv", "dh0"), got, want):
        if b is None:
            assert a is None, name
        else:
            _close(a, b)


@pytest.mark.parametrize("chunk_size", [16, 32])
def test_other_chunk_sizes(gen, chunk_size):
    _seed(gen)
    q, k, v, s0 = _inputs(gen, 1, 50, 2, 12, 10)
    do = torch.randn(1, 50, 2, 10, generator=gen, dtype=F64)
    dht = torch.randn(1, 2, 12, 10, generator=gen, dtype=F64)
    g = default_g_gamma(2)
    o, final = tc.chunk_fwd(q, k, v, g, 0.3, s0, chunk_size=chunk_size)
    ro, rfinal = naive_chunk_retention(q, k, v, g, 0.3, s0, chunk_size=chunk_size)
    _close(o, ro)
    _close(final, rfinal)
    got = tc.chunk_bwd(q, k, v, g, 0.3, do, s0, dht, chunk_size=chunk_size)
    for a, b in zip(got, _spec_grads(q, k, v, g, 0.3, s0, do, dht, chunk_size)):
        _close(a, b)


class _Retention(torch.autograd.Function):
    """Test-only autograd wiring of chunk_fwd / chunk_bwd (the lead's Function does it for real)."""

    @staticmethod
    def forward(ctx, q, k, v, s0, g, scale, cu, C):
        ctx.save_for_backward(q, k, v, s0, g, cu)
        ctx.scale, ctx.C = scale, C
        return tc.chunk_fwd(q, k, v, g, scale, s0, cu, C)

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, s0, g, cu = ctx.saved_tensors
        dq, dk, dv, dh0 = tc.chunk_bwd(q, k, v, g, ctx.scale, do, s0, dht, cu, ctx.C)
        return dq, dk, dv, dh0, None, None, None, None


@pytest.mark.parametrize("varlen", [False, True])
def test_gradcheck_float64(gen, varlen):
    _seed(gen)
    H, K, V, C = 2, 5, 3, 4
    if varlen:
        cu = torch.tensor([0, 3, 4, 13], dtype=torch.int64)
        B, T, N = 1, 13, 3
    else:
        cu, B, T, N = None, 2, 9, 2
    q, k, v, s0 = _inputs(gen, B, T, H, K, V, n_states=N)
    # a faster decay than RetNet's so that every term of the gradient is well above rounding
    g = torch.tensor([-0.3, -0.05], dtype=F64)
    args = [x.requires_grad_() for x in (q, k, v, s0)]
    assert torch.autograd.gradcheck(lambda *a: _Retention.apply(*a, g, 0.7, cu, C), args)


def _packed(gen, lens, H, K, V, dtype=F64):
    T = sum(lens)
    q, k, v, s0 = _inputs(gen, 1, T, H, K, V, dtype, n_states=len(lens))
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int64)
    return q, k, v, s0, cu


@pytest.mark.parametrize("tokens", [1, 200, 10**6])
def test_varlen_equals_each_sequence_alone(gen, monkeypatch, tokens):
    _seed(gen)
    monkeypatch.setattr(tc, "GROUP_TOKENS", tokens)
    lens, H, K, V = [70, 1, 130], 2, 16, 8
    q, k, v, s0, cu = _packed(gen, lens, H, K, V)
    do = torch.randn(1, sum(lens), H, V, generator=gen, dtype=F64)
    dht = torch.randn(len(lens), H, K, V, generator=gen, dtype=F64)
    g = default_g_gamma(H)
    o, final = tc.chunk_fwd(q, k, v, g, 0.25, s0, cu)
    grads = tc.chunk_bwd(q, k, v, g, 0.25, do, s0, dht, cu)
    for i, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        sl = slice(a, b)
        oi, fi = naive_chunk_retention(q[:, sl], k[:, sl], v[:, sl], g, 0.25, s0[i : i + 1])
        _close(o[:, sl], oi)
        _close(final[i : i + 1], fi)
        want = _spec_grads(q[:, sl], k[:, sl], v[:, sl], g, 0.25, s0[i : i + 1], do[:, sl], dht[i : i + 1])
        for got, w in zip(grads[:3], want[:3]):
            _close(got[:, sl], w)
        _close(grads[3][i : i + 1], want[3])


@pytest.mark.parametrize("tokens", [1, 150, 10**6])
def test_group_size_does_not_change_results(gen, monkeypatch, tokens):
    _seed(gen)
    B, T, H, K, V = 3, 70, 4, 8, 6
    q, k, v, s0 = _inputs(gen, B, T, H, K, V)
    do = torch.randn(B, T, H, V, generator=gen, dtype=F64)
    g = default_g_gamma(H)
    monkeypatch.setattr(tc, "GROUP_TOKENS", tokens)
    _close(tc.chunk_fwd(q, k, v, g, 0.3, s0)[0], naive_chunk_retention(q, k, v, g, 0.3, s0)[0])
    for a, b in zip(tc.chunk_bwd(q, k, v, g, 0.3, do, s0), _spec_grads(q, k, v, g, 0.3, s0, do, None)):
        _close(a, b)


def test_bfloat16_inputs(gen):
    """bf16 q/k/v/dO are computed in float32: outputs and gradients are bf16, so they carry its
    rounding (2**-9 relative) on top of float32 arithmetic; bound: rel L2 <= 1e-2, cos >= 0.9999
    against float64 on the same (bf16-valued) inputs."""
    _seed(gen)
    B, T, H, K, V = 2, 130, 2, 32, 16
    q, k, v, s0 = _inputs(gen, B, T, H, K, V, torch.bfloat16)
    do = torch.randn(B, T, H, V, generator=gen).bfloat16()
    g = default_g_gamma(H)
    o, final = tc.chunk_fwd(q, k, v, g, K**-0.5, s0.float())
    assert o.dtype == torch.bfloat16 and final.dtype == torch.float32
    ro, rfinal = naive_chunk_retention(q, k, v, g, K**-0.5, s0)
    grads = tc.chunk_bwd(q, k, v, g, K**-0.5, do, s0.float())
    assert all(x.dtype == torch.bfloat16 for x in grads[:3]) and grads[3].dtype == torch.float32
    want = _spec_grads(q, k, v, g, K**-0.5, s0, do, None)
    for out, ref in [(o, ro), (final, rfinal), *zip(grads, want)]:
        e = compare(out, ref)
        assert e.rel_l2 <= 1e-2 and e.cosine >= 0.9999, e


def test_wrong_shapes_raise(gen):
    q, k, v, s0 = _inputs(gen, 2, 10, 2, 8, 4)
    g = default_g_gamma(2)
    with pytest.raises(ValueError, match="initial_state"):
        tc.chunk_fwd(q, k, v, g, 0.5, s0[:1])
    with pytest.raises(ValueError, match="q, k, v"):
        tc.chunk_fwd(q, k[:, :9], v, g, 0.5)
    with pytest.raises(ValueError, match="g_gamma"):
        tc.chunk_fwd(q, k, v, default_g_gamma(3), 0.5)
    with pytest.raises(ValueError, match="do"):
        tc.chunk_bwd(q, k, v, g, 0.5, q)
    with pytest.raises(ValueError, match="dht"):
        tc.chunk_bwd(q, k, v, g, 0.5, torch.zeros_like(v), dht=s0[:1])
    with pytest.raises(ValueError, match="cu_seqlens"):
        tc.chunk_fwd(q, k, v, g, 0.5, cu_seqlens=torch.tensor([0, 10]))


def test_many_short_sequences_share_groups():
    """100 packed sequences of 10 tokens: a few groups, not one Python iteration per sequence."""
    cu = torch.arange(0, 1001, 10)
    groups = plan_groups(1, 1000, 2, cu, 64, 4096, "cpu")
    assert len(groups) == 4 and all(g.h1 - g.h0 == 2 for g in groups)
    assert [g.s0 for g in groups] == [0, 32, 64, 96]
