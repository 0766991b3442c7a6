"""Bad input raises a clear TypeError/ValueError naming the argument."""

import re

import pytest
import torch

from retquant.ops import chunk_retention, fused_recurrent_retention, parallel_retention
from retquant.quant import QuantSpec

B, T, H, K, V = 2, 20, 2, 8, 6


def good():
    return torch.randn(B, T, H, K), torch.randn(B, T, H, K), torch.randn(B, T, H, V)


def packed():
    return torch.randn(1, T, H, K), torch.randn(1, T, H, K), torch.randn(1, T, H, V)


def nan_at(x):
    x = x.clone()
    x[0, 3, 1, 2] = float("nan")
    return x


def inf_at(x):
    x = x.clone()
    x[1, 0, 0, 0] = float("inf")
    return x


q, k, v = good()
pq, pk, pv = packed()
CASES = [
    # (id, call, exception, message fragment)
    ("q rank 3", lambda: chunk_retention(q[0], k, v), ValueError, "q must have rank 4"),
    ("v rank 5", lambda: chunk_retention(q, k, v[None]), ValueError, "v must have rank 4"),
    ("q not a tensor", lambda: chunk_retention(q.tolist(), k, v), TypeError, "q must be a torch.Tensor"),
    ("integer q", lambda: chunk_retention(q.long(), k, v), TypeError, "q must be a floating"),
    ("mixed dtypes", lambda: chunk_retention(q, k.double(), v), TypeError, "share one dtype"),
    ("k batch differs", lambda: chunk_retention(q, k[:1], v), ValueError, "k must have q's shape"),
    ("k head dim differs", lambda: chunk_retention(q, k[..., :4], v), ValueError, "k must have q's shape"),
    ("v length differs", lambda: chunk_retention(q, k, v[:, :10]), ValueError, "v must have shape"),
    ("v heads differ", lambda: chunk_retention(q, k, v[:, :, :1]), ValueError, "v must have shape"),
    (
        "nan q with quant",
        lambda: chunk_retention(nan_at(q), k, v, quant="int8"),
        ValueError,
        "q holds inf or NaN",
    ),
    (
        "inf v with quant",
        lambda: chunk_retention(q, k, inf_at(v), quant="int8"),
        ValueError,
        "v holds inf or NaN",
    ),
    (
        "initial_state shape",
        lambda: chunk_retention(q, k, v, initial_state=torch.zeros(B, H, V, K)),
        ValueError,
        "initial_state must have shape",
    ),
    (
        "initial_state N",
        lambda: chunk_retention(q, k, v, initial_state=torch.zeros(B + 1, H, K, V)),
        ValueError,
        "initial_state must have shape",
    ),
    (
        "initial_state int",
        lambda: chunk_retention(q, k, v, initial_state=torch.zeros(B, H, K, V, dtype=torch.long)),
        TypeError,
        "initial_state must be a floating",
    ),
    (
        "cu_seqlens with B>1",
        lambda: chunk_retention(q, k, v, cu_seqlens=torch.tensor([0, 5, T])),
        ValueError,
        "batch size must be 1",
    ),
    (
        "cu_seqlens not from 0",
        lambda: chunk_retention(pq, pk, pv, cu_seqlens=torch.tensor([1, 5, T])),
        ValueError,
        "must start at 0",
    ),
    (
        "cu_seqlens not increasing",
        lambda: chunk_retention(pq, pk, pv, cu_seqlens=torch.tensor([0, 9, 5, T])),
        ValueError,
        "strictly increasing",
    ),
    (
        "cu_seqlens not ending at T",
        lambda: chunk_retention(pq, pk, pv, cu_seqlens=torch.tensor([0, 5, T - 1])),
        ValueError,
        "must end at T",
    ),
    (
        "cu_seqlens float",
        lambda: chunk_retention(pq, pk, pv, cu_seqlens=torch.tensor([0.0, 5.0, T])),
        TypeError,
        "cu_seqlens must be an integer",
    ),
    (
        "cu_seqlens 2-D",
        lambda: chunk_retention(pq, pk, pv, cu_seqlens=torch.tensor([[0, T]])),
        ValueError,
        "cu_seqlens must be 1-D",
    ),
    (
        "varlen initial_state N",
        lambda: chunk_retention(
            pq, pk, pv, cu_seqlens=torch.tensor([0, 5, T]), initial_state=torch.zeros(1, H, K, V)
        ),
        ValueError,
        "initial_state must have shape",
    ),
    (
        "gamma >= 1",
        lambda: chunk_retention(q, k, v, g_gamma=torch.tensor([0.1, -0.1])),
        ValueError,
        "g_gamma",
    ),
    (
        "gamma = 0 (log -inf)",
        lambda: chunk_retention(q, k, v, g_gamma=torch.tensor([-float("inf"), -0.1])),
        ValueError,
        "g_gamma",
    ),
    (
        "g_gamma wrong shape",
        lambda: chunk_retention(q, k, v, g_gamma=torch.tensor([-0.1])),
        ValueError,
        "g_gamma must have shape",
    ),
    ("bits 3", lambda: QuantSpec(bits=3), ValueError, "bits must be one of"),
    ("bits 12 in config", lambda: chunk_retention(q, k, v, quant="int12"), ValueError, "quant preset"),
    (
        "negative scale",
        lambda: chunk_retention(q, k, v, scale=-1.0),
        ValueError,
        "scale must be finite and > 0",
    ),
    ("nan scale", lambda: chunk_retention(q, k, v, scale=float("nan")), ValueError, "scale must be finite"),
    (
        "unknown backend",
        lambda: chunk_retention(q, k, v, backend="cuda"),
        ValueError,
        "backend must be one of",
    ),
    (
        "output_final_state not bool",
        lambda: chunk_retention(q, k, v, output_final_state="yes"),
        TypeError,
        "output_final_state must be a bool",
    ),
    ("head_first", lambda: chunk_retention(q, k, v, head_first=True), ValueError, "head_first"),
    (
        "recurrent reverse not bool",
        lambda: fused_recurrent_retention(q, k, v, reverse=1),
        TypeError,
        "reverse",
    ),
    (
        "attentions with quant",
        lambda: parallel_retention(q, k, v, output_attentions=True, quant="int8"),
        ValueError,
        "output_attentions",
    ),
    ("empty T", lambda: chunk_retention(q[:, :0], k[:, :0], v[:, :0]), ValueError, "non-empty"),
    (
        # the shape the user passed and the transposed layout's expected shape, not K/V swapped
        "transposed initial_state shape",
        lambda: fused_recurrent_retention(
            q, k, v, initial_state=torch.zeros(B, H, K, V), transpose_state_layout=True
        ),
        ValueError,
        re.escape(f"initial_state must have shape [N, H, V, K]={[B, H, V, K]}, got {[B, H, K, V]}"),
    ),
]


@pytest.mark.parametrize("call,exc,msg", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_named(call, exc, msg):
    with pytest.raises(exc, match=msg):
        call()


def test_there_are_enough_cases():
    assert len(CASES) >= 15


def test_meta_tensors_without_quant_infer_shapes():
    o, s = chunk_retention(q.to("meta"), k.to("meta"), v.to("meta"), output_final_state=True)
    assert o.shape == v.shape and s.shape == (B, H, K, V) and o.is_meta


def test_transposed_initial_state_is_used_transposed():
    s = torch.randn(B, H, V, K)
    o_t, f_t = fused_recurrent_retention(
        q, k, v, initial_state=s, output_final_state=True, transpose_state_layout=True
    )
    o, f = fused_recurrent_retention(q, k, v, initial_state=s.transpose(-1, -2), output_final_state=True)
    assert torch.equal(o_t, o) and torch.equal(f_t, f.transpose(-1, -2))


def test_env_backend_is_validated(monkeypatch):
    monkeypatch.setenv("RETQUANT_BACKEND", "gpu")
    with pytest.raises(ValueError, match="RETQUANT_BACKEND must be one of"):
        chunk_retention(q, k, v)
