"""RetentionDecoder: token-by-token decoding equals fused_recurrent_retention over the sequence."""

from __future__ import annotations

import pytest
import torch

from retquant.backends import cpu_extension
from retquant.ops import RetentionDecoder, fused_recurrent_retention

_NO_CPU = pytest.mark.skipif(cpu_extension.load_error() is not None, reason="no CPU extension")
CASES = [
    ("reference", "int8"),
    ("reference", None),
    pytest.param("cpu", "int8", marks=_NO_CPU),
    pytest.param("cpu", None, marks=_NO_CPU),  # the float path must not run the int8 kernel
    (None, None),
]


def _seq(B, T, H, K, V, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(B, T, H, K, generator=g),
        torch.randn(B, T, H, K, generator=g),
        torch.randn(B, T, H, V, generator=g),
    )


@pytest.mark.parametrize("backend, quant", CASES)
def test_steps_equal_the_recurrent_op(backend, quant):
    B, T, H, K, V = 2, 7, 3, 33, 20
    q, k, v = _seq(B, T, H, K, V)
    s0 = torch.randn(B, H, K, V)
    o_ref, s_ref = fused_recurrent_retention(
        q, k, v, initial_state=s0, output_final_state=True, quant=quant, backend=backend
    )
    dec = RetentionDecoder(B, H, K, V, quant=quant, backend=backend, initial_state=s0)
    outs = [dec.step(q[:, t], k[:, t], v[:, t]) for t in range(T)]
    o = torch.stack(outs, dim=1)
    if quant:  # the int8 spec carries the state in float32 between tokens: bit for bit
        assert torch.equal(o, o_ref) and torch.equal(dec.state, s_ref)
    else:  # the float reference keeps float64 inside one call; the decoder's state is float32
        torch.testing.assert_close(o, o_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(dec.state, s_ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(s0, s0.clone())  # the caller's initial state is copied, not updated
    dec.reset()
    assert dec.state.abs().max() == 0


def test_state_is_updated_in_place_on_the_kernel_path():
    if cpu_extension.load_error() is not None:
        pytest.skip("no CPU extension")
    dec = RetentionDecoder(1, 2, 16, 16, backend="cpu")
    ptr = dec.state.data_ptr()
    q, k, v = _seq(1, 1, 2, 16, 16)
    dec.step(q[:, 0], k[:, 0], v[:, 0])
    assert dec.state.data_ptr() == ptr and dec.state.abs().max() > 0
    # other dtypes and strides are converted for the kernel; o comes back in q's dtype
    o = dec.step(q[:, 0].bfloat16(), k[:, 0].bfloat16(), v[:, 0].transpose(1, 2).contiguous().transpose(1, 2))
    assert o.dtype == torch.bfloat16 and o.shape == (1, 2, 16)


@_NO_CPU
def test_ready_and_converted_tokens_agree():
    # Contiguous float32 tokens skip the per-step checks and conversions (the serving loop's
    # case); float64 and strided tokens take them. Both must give the op's answer bit for bit.
    B, T, H, K, V = 2, 5, 3, 24, 40
    q, k, v = _seq(B, T, H, K, V, seed=2)
    s0 = torch.randn(B, H, K, V)
    o_ref, s_ref = fused_recurrent_retention(q, k, v, initial_state=s0, output_final_state=True, quant="int8")
    ready = RetentionDecoder(B, H, K, V, backend="cpu", initial_state=s0)
    converted = RetentionDecoder(B, H, K, V, backend="cpu", initial_state=s0)
    for t in range(T):
        o_ready = ready.step(q[:, t].contiguous(), k[:, t].contiguous(), v[:, t].contiguous())
        o_conv = converted.step(q[:, t].double(), k[:, t], v[:, t])  # float64, then strided
        assert o_conv.dtype == torch.float64
        assert torch.equal(o_ready, o_ref[:, t]) and torch.equal(o_conv, o_ref[:, t].double())
    assert torch.equal(ready.state, s_ref) and torch.equal(converted.state, s_ref)


@pytest.mark.parametrize(
    "make, exc, msg",
    [
        (lambda: RetentionDecoder(0, 2, 16, 16), ValueError, "batch_size must be a positive int"),
        (lambda: RetentionDecoder(1, 2.0, 16, 16), TypeError, "num_heads must be a positive int"),
        (
            lambda: RetentionDecoder(1, 2, 16, 16, initial_state=torch.zeros(1, 2, 16, 15)),
            ValueError,
            "initial_state must have shape",
        ),
        (lambda: RetentionDecoder(1, 2, 16, 16, quant="int3"), ValueError, "quant"),
    ],
)
def test_bad_configuration(make, exc, msg):
    with pytest.raises(exc, match=msg):
        make()


def test_bad_tokens():
    dec = RetentionDecoder(2, 2, 16, 8)
    q = torch.randn(2, 2, 16)
    with pytest.raises(ValueError, match=r"k must have shape \[2, 2, 16\]"):
        dec.step(q, q[:1], torch.randn(2, 2, 8))
    with pytest.raises(ValueError, match=r"v must have shape \[2, 2, 8\]"):
        dec.step(q, q, torch.randn(2, 2, 16))
    with pytest.raises(TypeError, match="q must be a floating"):
        dec.step(q.long(), q, torch.randn(2, 2, 8))
    if cpu_extension.load_error() is None and dec._kernel:
        with pytest.raises(RuntimeError, match="forward-only"):
            dec.step(q.requires_grad_(), q, torch.randn(2, 2, 8))
        q = q.detach()
    bad = q.clone()
    bad[1, 1, 3] = float("nan")
    with pytest.raises(ValueError, match="q holds inf or NaN"):
        dec.step(bad, q, torch.randn(2, 2, 8))


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpu", marks=_NO_CPU)])
@pytest.mark.parametrize("name", ["q", "k", "v"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_rejected_step_leaves_the_state_as_it_was(backend, name, bad):
    # The kernel updates the state in place: a step that raises must not have written any of it
    # (other sequences/heads included), so the next step still gives the right answer.
    B, H, K, V = 3, 2, 16, 8
    q, k, v = (x[:, 0] for x in _seq(B, 1, H, K, V, seed=1))
    dec = RetentionDecoder(B, H, K, V, quant="int8", backend=backend, initial_state=torch.randn(B, H, K, V))
    dec.step(q, k, v)
    before = dec.state.clone()
    tokens = {"q": q.clone(), "k": k.clone(), "v": v.clone()}
    tokens[name][B - 1, H - 1, 3] = bad  # the last sequence's last head: after all the others
    with pytest.raises(ValueError, match=f"{name} holds inf or NaN"):
        dec.step(tokens["q"], tokens["k"], tokens["v"])
    assert torch.equal(dec.state, before)
    o = dec.step(q, k, v)
    o_ref, s_ref = fused_recurrent_retention(
        q[:, None], k[:, None], v[:, None], initial_state=before, output_final_state=True, quant="int8"
    )
    assert torch.equal(o, o_ref[:, 0]) and torch.equal(dec.state, s_ref)
