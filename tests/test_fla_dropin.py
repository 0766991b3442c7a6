"""fla drop-in: fla's own retention test cases (shapes, initial state, varlen, dh0) against the
float64 specification, and fla 0.6's API surface.

Tolerances: the float path uses fla's (relative L2 0.005 for float16 inputs: fla's
``assert_close`` ratio). ``quant="int8"`` uses 0.03: the int8 spec's own error on randn inputs is
1.2e-2 relative L2 (README, bench/results/foundation.md), and its straight-through gradients
deviate from the float gradients by about as much; 0.03 leaves 2.5x of margin without hiding a
real error (a wrong scale or decay gives O(1)).
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from conftest import assert_close

from retquant.decay import default_g_gamma
from retquant.ops import (
    chunk_retention,
    fused_chunk_retention,
    fused_recurrent_retention,
    naive_retention,
    parallel_retention,
)
from retquant.spec.naive import naive_chunk_retention

TOL = {None: 0.005, "int8": 0.03}


def _ref(q, k, v, h0, cu=None):
    """float64 spec (per sequence for packed inputs): o, final."""
    g = default_g_gamma(q.shape[2])
    s = q.shape[-1] ** -0.5
    if cu is None:
        return naive_chunk_retention(q.double(), k.double(), v.double(), g, s, h0)
    outs, fins = [], []
    for i, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        o, f = naive_chunk_retention(
            q[:, a:b].double(), k[:, a:b].double(), v[:, a:b].double(), g, s, h0[i : i + 1]
        )
        outs.append(o)
        fins.append(f)
    return torch.cat(outs, 1), torch.cat(fins, 0)


def _grads(fn, tensors, do, dht, **kw):
    xs = [t.detach().clone().requires_grad_() for t in tensors]
    o, ht = fn(*xs[:3], initial_state=xs[3], output_final_state=True, **kw)
    ((o.float() * do).sum() + (ht.float() * dht).sum()).backward()
    return o, ht, [x.grad for x in xs]


@pytest.mark.parametrize("quant", [None, "int8"])
@pytest.mark.parametrize("fn", [chunk_retention, fused_recurrent_retention])
@pytest.mark.parametrize("T", [1, 15, 63, 300])
@pytest.mark.parametrize("K", [32, 100])
@pytest.mark.parametrize("expand_ratio", [1, 2])
def test_fla_chunk_and_recurrent(fn, T, K, expand_ratio, quant):
    torch.manual_seed(42)  # fla's seed
    B, H, V = 2, 2, K * expand_ratio
    dtype = torch.float16
    q, k, v = (torch.randn(B, T, H, d, dtype=dtype) for d in (K, K, V))
    h0 = torch.randn(B, H, K, V, dtype=dtype)
    do, dht = torch.randn(B, T, H, V), torch.randn(B, H, K, V)
    o, ht, grads = _grads(fn, (q, k, v, h0), do, dht, quant=quant)
    xs = [x.double().requires_grad_() for x in (q, k, v, h0)]
    ro, rht = _ref(*xs)
    ((ro * do.double()).sum() + (rht * dht.double()).sum()).backward()
    tol = TOL[quant]
    assert_close("o", o, ro, tol)
    assert_close("ht", ht, rht, tol)
    for name, a, x in zip(["dq", "dk", "dv", "dh0"], grads, xs):
        assert_close(name, a, x.grad, tol)


@pytest.mark.parametrize("quant", [None, "int8"])
@pytest.mark.parametrize("T", [63, 286, 300])
@pytest.mark.parametrize("K", [32, 100])
def test_fla_chunk_varlen(T, K, quant):
    torch.manual_seed(42)
    N, H, V = 2, 2, 2 * K
    cu = torch.cat(
        [torch.tensor([0]), torch.arange(16, T)[torch.randperm(T - 16)[: N - 1]], torch.tensor([T])]
    ).sort()[0]
    dtype = torch.float16
    q, k, v = (torch.randn(1, T, H, d, dtype=dtype) for d in (K, K, V))
    h0 = torch.randn(N, H, K, V, dtype=dtype)
    do, dht = torch.randn(1, T, H, V), torch.randn(N, H, K, V)
    o, ht, grads = _grads(chunk_retention, (q, k, v, h0), do, dht, cu_seqlens=cu, quant=quant)
    xs = [x.double().requires_grad_() for x in (q, k, v, h0)]
    ro, rht = _ref(*xs, cu)
    ((ro * do.double()).sum() + (rht * dht.double()).sum()).backward()
    tol = TOL[quant]
    assert_close("o", o, ro, tol)
    assert_close("ht", ht, rht, tol)
    for name, a, x in zip(["dq", "dk", "dv", "dh0"], grads, xs):
        assert_close(name, a, x.grad, tol)


@pytest.mark.parametrize("T", [1, 15, 63, 300])
@pytest.mark.parametrize("K", [32, 100])
def test_fla_parallel_against_naive(T, K):
    torch.manual_seed(42)
    q, k, v = (torch.randn(2, T, 2, d, dtype=torch.float16, requires_grad=True) for d in (K, K, 2 * K))
    do = torch.randn(2, T, 2, 2 * K, dtype=torch.float16)
    ref = naive_retention(*(x.double().transpose(1, 2) for x in (q, k, v))).transpose(1, 2)
    rg = torch.autograd.grad((ref * do.double()).sum(), (q, k, v))
    tri, _ = parallel_retention(q, k, v)
    tg = torch.autograd.grad((tri.float() * do.float()).sum(), (q, k, v))
    assert_close("o", tri, ref, 0.005)
    for name, a, b in zip(["dq", "dk", "dv"], tg, rg):
        assert_close(name, a, b, 0.005)


def test_fla_module_paths():
    for mod, name in [
        ("retquant.ops.retention.chunk", "chunk_retention"),
        ("retquant.ops.retention.fused_chunk", "fused_chunk_retention"),
        ("retquant.ops.retention.fused_recurrent", "fused_recurrent_retention"),
        ("retquant.ops.retention.parallel", "parallel_retention"),
        ("retquant.ops.retention.naive", "naive_retention"),
    ]:
        assert callable(getattr(importlib.import_module(mod), name))
    q = k = v = torch.randn(1, 70, 2, 16)
    assert torch.equal(fused_chunk_retention(q, k, v)[0], chunk_retention(q, k, v)[0])


def test_fused_recurrent_positional_order_and_state_v_first():
    g = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(1, 9, 2, 8, generator=g),
        torch.randn(1, 9, 2, 8, generator=g),
        torch.randn(1, 9, 2, 6, generator=g),
    )
    h0 = torch.randn(2, 2, 8, 6, generator=g)
    cu = torch.tensor([0, 4, 9])
    # fla 0.6: (q, k, v, scale, initial_state, output_final_state, reverse, state_v_first, cu_seqlens)
    o1, s1 = fused_recurrent_retention(q, k, v, None, h0, True, False, False, cu)
    o2, s2 = fused_recurrent_retention(q, k, v, initial_state=h0, output_final_state=True, cu_seqlens=cu)
    assert torch.equal(o1, o2) and torch.equal(s1, s2)
    o3, s3 = fused_recurrent_retention(q, k, v, None, h0.transpose(-1, -2), True, False, True, cu)
    assert torch.equal(o3, o1) and torch.equal(s3, s1.transpose(-1, -2))
    o4, s4 = fused_recurrent_retention(
        q,
        k,
        v,
        initial_state=h0.transpose(-1, -2),
        output_final_state=True,
        cu_seqlens=cu,
        transpose_state_layout=True,
    )
    assert torch.equal(o4, o1) and torch.equal(s4, s3)
    want = (
        r"state_v_first=True initial_state must have shape \[N, H, V, K\]=\[2, 2, 6, 8\], got \[2, 2, 8, 6\]"
    )
    with pytest.raises(ValueError, match=want):
        fused_recurrent_retention(q, k, v, None, h0, True, False, True, cu)
    with pytest.raises(ValueError, match="contradict"):
        fused_recurrent_retention(q, k, v, state_v_first=True, transpose_state_layout=False)


def test_chunk_size_and_scale_arguments():
    q = k = v = torch.randn(1, 20, 2, 16)
    with pytest.raises(ValueError, match="chunk_size must be 64"):
        chunk_retention(q, k, v, chunk_size=32)
    with pytest.raises(TypeError, match="chunk_size must be an int"):
        chunk_retention(q, k, v, chunk_size=64.0)
    ref = chunk_retention(q, k, v, scale=0.25)[0]
    for s in (
        np.float32(0.25),
        np.float64(0.25),
        torch.tensor(0.25),
        torch.tensor(0.25, dtype=torch.float64),
    ):
        assert torch.equal(chunk_retention(q, k, v, scale=s)[0], ref), type(s)
    with pytest.raises(TypeError, match="scale must be a real scalar"):
        chunk_retention(q, k, v, scale=torch.tensor([0.25]))
    with pytest.raises(TypeError, match="scale must be a real number"):
        chunk_retention(q, k, v, scale="0.25")


def test_meta_tensors_infer_shapes_with_and_without_quant():
    q = torch.empty(2, 100, 4, 32, device="meta")
    v = torch.empty(2, 100, 4, 48, device="meta")
    for quant in (None, "int8"):
        o, s = chunk_retention(q, q, v, output_final_state=True, quant=quant)
        assert o.shape == (2, 100, 4, 48) and o.device.type == "meta" and s.shape == (2, 4, 32, 48)
        o, _ = fused_recurrent_retention(q, q, v, quant=quant)
        assert o.shape == (2, 100, 4, 48)
