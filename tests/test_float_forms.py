"""The three float64 forms agree with each other, and the public ops with fla's conventions."""

import pytest
import torch
from conftest import rand_qkv

from retquant.decay import default_g_gamma
from retquant.metrics import compare
from retquant.ops import chunk_retention, fused_recurrent_retention, parallel_retention
from retquant.spec.naive import (
    naive_chunk_retention,
    naive_parallel_retention,
    naive_recurrent_retention,
)

SHAPES = [(2, 100, 3, 32, 48), (1, 64, 2, 16, 16), (3, 130, 2, 20, 12), (1, 1, 1, 8, 4)]


def rel(a, b):
    return compare(a, b).rel_l2


@pytest.mark.parametrize("B,T,H,K,V", SHAPES)
@pytest.mark.parametrize("with_state", [False, True])
def test_three_forms_agree(gen, B, T, H, K, V, with_state):
    """Elementwise within 1e-10 of the magnitude of the terms each output sums (the parallel
    form on |q|, |k|, |v|, |s0|; float64 rounding leaves ~1e-15 of it): a norm-relative bound
    fails by chance where the terms cancel, e.g. the 4 outputs of the 1-token shape, which share
    one q . k factor."""
    q, k, v = rand_qkv(gen, B, T, H, K, V, torch.float64)
    s0 = torch.randn(B, H, K, V, generator=gen, dtype=torch.float64) if with_state else None
    g = default_g_gamma(H)
    op, sp, _ = naive_parallel_retention(q, k, v, g, K**-0.5, s0)
    mag_o, mag_s, _ = naive_parallel_retention(q.abs(), k.abs(), v.abs(), g, K**-0.5, _abs(s0))
    orr, sr = naive_recurrent_retention(q, k, v, g, K**-0.5, s0)
    for c in (64, 16, 7):
        oc, sc = naive_chunk_retention(q, k, v, g, K**-0.5, s0, chunk_size=c)
        _close(f"chunk {c} o", oc, op, mag_o)
        _close(f"chunk {c} state", sc, sp, mag_s)
    _close("recurrent o", orr, op, mag_o)
    _close("recurrent state", sr, sp, mag_s)


def _abs(x):
    return None if x is None else x.abs()


def _close(name, a, b, mag, bound=1e-10):
    ratio = ((a - b).abs() / mag).flatten()
    worst = ratio.argmax().item()
    assert ratio[worst] <= bound, f"{name}: |a - b| / mag = {ratio[worst].item():.3e} at flat index {worst}"


def test_parallel_matches_definition(gen):
    """o_n = sum_{m<=n} gamma^(n-m) (q_n.k_m) v_m, written as a plain double loop."""
    q, k, v = rand_qkv(gen, 1, 9, 2, 4, 3, torch.float64)
    g = torch.tensor([-0.3, -1.1], dtype=torch.float64)
    o, _, _ = naive_parallel_retention(q, k, v, g, 0.5)
    want = torch.zeros_like(o)
    for h in range(2):
        gam = torch.exp(g[h])
        for n in range(9):
            for m in range(n + 1):
                want[0, n, h] += gam ** (n - m) * (0.5 * q[0, n, h] @ k[0, m, h]) * v[0, m, h]
    assert rel(o, want) <= 1e-12


@pytest.mark.parametrize("op", ["chunk", "recurrent", "parallel"])
def test_varlen_equals_one_by_one(gen, op):
    lens = [37, 64, 5, 101]
    H, K, V = 2, 16, 24
    q, k, v = rand_qkv(gen, 1, sum(lens), H, K, V, torch.float64)
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()])
    s0 = torch.randn(len(lens), H, K, V, generator=gen, dtype=torch.float64)
    if op == "parallel":
        o, _ = parallel_retention(q, k, v, cu_seqlens=cu)
    elif op == "chunk":
        o, fs = chunk_retention(q, k, v, initial_state=s0, output_final_state=True, cu_seqlens=cu)
    else:
        o, fs = fused_recurrent_retention(q, k, v, initial_state=s0, output_final_state=True, cu_seqlens=cu)
    for i, (s, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        if op == "parallel":
            oi, _ = parallel_retention(q[:, s:e], k[:, s:e], v[:, s:e])
        else:
            oi, fi = chunk_retention(
                q[:, s:e], k[:, s:e], v[:, s:e], initial_state=s0[i : i + 1], output_final_state=True
            )
            assert rel(fs[i : i + 1], fi) <= 1e-10
        assert rel(o[:, s:e], oi) <= 1e-10


def test_public_ops_agree_and_keep_dtype(gen):
    q, k, v = rand_qkv(gen, 2, 70, 4, 32, 16)
    oc, sc = chunk_retention(q, k, v, output_final_state=True)
    orr, sr = fused_recurrent_retention(q, k, v, output_final_state=True)
    op, _ = parallel_retention(q, k, v)
    assert oc.dtype == torch.float32 and sc.dtype == torch.float32
    assert rel(oc, op) <= 1e-6 and rel(orr, op) <= 1e-6 and rel(sc, sr) <= 1e-6
    ob, _ = chunk_retention(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert ob.dtype == torch.bfloat16


def test_default_decay_is_retnet_schedule():
    g = default_g_gamma(4)
    want = torch.tensor([1 - 2.0 ** (-5 - h) for h in range(4)], dtype=torch.float64).log()
    assert torch.equal(g, want)
    # the caller owns the tensor: writing to it changes no later call
    g.zero_()
    assert torch.equal(default_g_gamma(4), want)


def test_default_decay_first_built_under_a_meta_device_is_real():
    # The values are cached per H; a first call while building a model on the meta device (or
    # under a fake-tensor mode) must not leave a meta tensor in the cache for later calls.
    H = 23  # a head count no other test asks for first
    with torch.device("meta"):
        g_meta = default_g_gamma(H, device="meta")
    assert g_meta.is_meta
    g = default_g_gamma(H)
    want = torch.log1p(-torch.pow(2.0, -5 - torch.arange(H, dtype=torch.float64)))
    assert g.device.type == "cpu" and torch.equal(g, want)


def test_custom_g_gamma_and_scale(gen):
    q, k, v = rand_qkv(gen, 1, 40, 2, 8, 8, torch.float64)
    g = torch.tensor([-0.7, -0.05], dtype=torch.float64)
    o, _ = chunk_retention(q, k, v, scale=0.3, g_gamma=g)
    want, _, _ = naive_parallel_retention(q, k, v, g, 0.3)
    assert rel(o, want) <= 1e-10
    o_default, _ = chunk_retention(q, k, v)
    assert rel(o_default, want) > 1e-3  # the arguments are really used


def test_reverse_and_transposed_state(gen):
    q, k, v = rand_qkv(gen, 1, 12, 2, 8, 6, torch.float64)
    s0 = torch.randn(1, 2, 6, 8, generator=gen, dtype=torch.float64)  # [N, H, V, K]
    o, s = fused_recurrent_retention(
        q, k, v, initial_state=s0, output_final_state=True, reverse=True, transpose_state_layout=True
    )
    of, sf = fused_recurrent_retention(
        q.flip(1), k.flip(1), v.flip(1), initial_state=s0.transpose(-1, -2), output_final_state=True
    )
    assert rel(o, of.flip(1)) <= 1e-12 and rel(s, sf.transpose(-1, -2)) <= 1e-12


def test_output_attentions(gen):
    q, k, v = rand_qkv(gen, 1, 10, 2, 8, 8)
    o, attn = parallel_retention(q, k, v, output_attentions=True)
    assert attn.shape == (1, 2, 10, 10)
    assert torch.all(attn.triu(1) == 0)
    assert rel(torch.einsum("bhts,bshv->bthv", attn.double(), v.double()), o) <= 1e-6
