"""The Triton backend against the exact integer spec, through the interpreter on CPU tensors.

Without CUDA, ``TRITON_INTERPRET=1`` is set before the kernels are loaded (they are imported
lazily by the backend), so every test runs the real kernels in the Triton interpreter. Outputs
and final states must equal the PyTorch spec bit for bit and the int32 accumulators of all four
GEMMs must be identical.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton", reason="triton is not installed (pip install -e '.[triton]')")

from retquant.decay import default_g_gamma  # noqa: E402
from retquant.kernels.chunk_retention import chunk_retention_fwd  # noqa: E402
from retquant.kernels.recurrent_retention_step import recurrent_retention_fwd  # noqa: E402
from retquant.ops import chunk_retention, fused_recurrent_retention  # noqa: E402
from retquant.quant.config import RetentionQuantConfig  # noqa: E402
from retquant.spec.int_chunk import int_chunk_retention  # noqa: E402
from retquant.spec.int_recurrent import int_recurrent_retention  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
CFG = RetentionQuantConfig()
C = 64


def _inputs(B, T, H, K, V, seed=0, dtype=torch.float32, state_n=None):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, T, H, K, generator=g) for _ in range(2))
    v = torch.randn(B, T, H, V, generator=g)
    h0 = torch.randn(state_n or B, H, K, V, generator=g)
    return (x.to(DEV, dtype) for x in (q, k, v)), h0.to(DEV)


def _poisoned(*shape, dtype=torch.float32):
    return torch.full(shape, float("nan"), dtype=dtype, device=DEV)


def _spec_trace(tr, B, n, H):
    """Kernel trace [B * n, H, ...] -> the spec's [B, H, n, ...] (int64)."""
    return {name: x.view(B, n, H, *x.shape[2:]).transpose(1, 2).long() for name, x in tr.items()}


def _check_chunk_vs_spec(q, k, v, g, h0, block_v=None, mode="split"):
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K**-0.5
    out = _poisoned(B, T, H, V)
    fin = _poisoned(B, H, K, V)
    o, final, tr = chunk_retention_fwd(
        q, k, v, g, scale, h0, True, out=out, final_out=fin, trace=True, block_v=block_v, mode=mode
    )
    ro, rfinal, rtr = int_chunk_retention(q, k, v, g, scale, CFG, h0, trace=True)
    assert o is out and final is fin
    assert torch.equal(o, ro)
    assert torch.equal(final, rfinal)
    got = _spec_trace(tr, B, -(-T // C), H)
    for name in ("acc_qk", "acc_pv", "acc_qs", "acc_kv"):
        assert torch.equal(got[name], getattr(rtr, name)), name


@pytest.mark.parametrize(
    "B, T, H, K, V, block_v",
    [
        (2, 100, 2, 32, 16, None),  # B > 1, odd T, two chunks, K != V
        (1, 37, 1, 16, 48, 16),  # one short chunk, V split into three blocks
        (1, 192, 2, 16, 32, 16),  # three full chunks, V in two blocks
    ],
)
@pytest.mark.parametrize("mode", ["split", "fused"])
def test_chunk_kernel_matches_integer_spec(B, T, H, K, V, block_v, mode):
    (q, k, v), h0 = _inputs(B, T, H, K, V)
    _check_chunk_vs_spec(q, k, v, default_g_gamma(H), h0, block_v, mode)


@pytest.mark.parametrize("mode", ["split", "fused"])
def test_chunk_kernel_guarded_decay_heads(mode):
    # gamma = e**-1 makes (C-1)|log2 gamma| > 24: that head takes the gamma**(a-b) table path.
    (q, k, v), h0 = _inputs(1, 130, 2, 16, 16, seed=1)
    g = torch.tensor([-1.0, -0.05], dtype=torch.float64)
    _check_chunk_vs_spec(q, k, v, g, h0, mode=mode)


@pytest.mark.parametrize("mode", ["split", "fused"])
def test_chunk_kernel_without_initial_state(mode):
    (q, k, v), _ = _inputs(1, 70, 2, 16, 16, seed=2)
    _check_chunk_vs_spec(q, k, v, default_g_gamma(2), None, mode=mode)


@pytest.mark.parametrize("mode", ["split", "fused"])
def test_chunk_kernel_varlen_three_sequences(mode):
    cu = torch.tensor([0, 40, 107, 171])
    (q, k, v), h0 = _inputs(1, 171, 2, 16, 32, seed=3, state_n=3)
    g = default_g_gamma(2)
    out = _poisoned(1, 171, 2, 32)
    o, final, tr = chunk_retention_fwd(q, k, v, g, 0.25, h0, True, cu.to(DEV), out=out, trace=True, mode=mode)
    chunk0 = 0
    for i, (s, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True)):
        ro, rf, rtr = int_chunk_retention(
            q[:, s:e], k[:, s:e], v[:, s:e], g, 0.25, CFG, h0[i : i + 1], trace=True
        )
        assert torch.equal(o[:, s:e], ro)
        assert torch.equal(final[i : i + 1], rf)
        n = -(-(e - s) // C)
        part = {name: x[chunk0 : chunk0 + n] for name, x in tr.items()}
        got = _spec_trace(part, 1, n, 2)
        for name in ("acc_qk", "acc_pv", "acc_qs", "acc_kv"):
            assert torch.equal(got[name], getattr(rtr, name)), (i, name)
        chunk0 += n


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_public_chunk_op_matches_reference_backend(dtype):
    cu = torch.tensor([0, 33, 98, 150])
    (q, k, v), h0 = _inputs(1, 150, 2, 32, 16, seed=4, dtype=dtype, state_n=3)
    kw = dict(initial_state=h0, output_final_state=True, cu_seqlens=cu, quant="int8")
    o, f = chunk_retention(q, k, v, backend="triton", **kw)
    ro, rf = chunk_retention(q, k, v, backend="reference", **kw)
    assert o.dtype == dtype and f.dtype == torch.float32
    assert torch.equal(o, ro)
    assert torch.equal(f, rf)


@pytest.mark.parametrize("fn", [chunk_retention, fused_recurrent_retention])
def test_training_output_is_inference_output_and_gradients_match_reference(fn):
    # one code path: with requires_grad the same kernel runs (output bit-identical), and the
    # saved codes are the spec's, so the straight-through gradients equal the reference backend's
    cu = torch.tensor([0, 5, 70])
    (q, k, v), h0 = _inputs(1, 70, 2, 16, 24, seed=12, state_n=2)
    kw = dict(initial_state=h0, output_final_state=True, cu_seqlens=cu, quant="int8")
    with torch.no_grad():
        o_inf, f_inf = fn(q, k, v, backend="triton", **kw)
    grads = {}
    for backend in ("triton", "reference"):
        xs = [x.clone().requires_grad_() for x in (q, k, v)]
        o, f = fn(*xs, backend=backend, **kw)
        if backend == "triton":
            assert torch.equal(o.detach(), o_inf) and torch.equal(f.detach(), f_inf)
        (o.sum() + f.square().sum()).backward()
        grads[backend] = [x.grad for x in xs]
    for a, b in zip(grads["triton"], grads["reference"]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("op", [chunk_retention, fused_recurrent_retention], ids=["chunk", "recurrent"])
def test_value_range_is_enforced_and_extremes_stay_exact(op):
    # q, k ~ 1e19 with v ~ 1e-20 (finite true output) would overflow the scores' float32
    # dequantization: rejected as on every backend (retquant.validate); just inside the range
    # (|q * scale|, |k|, |v| < 127 * 2**25) the kernels still equal the spec bit for bit.
    (q, k, v), h0 = _inputs(1, 70, 2, 16, 8, seed=9)
    with pytest.raises(ValueError, match="q holds values too large"):
        op(q * 1e19, k * 1e19, v * 1e-20, quant="int8", backend="triton")
    top = 0.999 * 127 * 2**25 / 4.0  # the inputs' largest |x| is below 4 (randn, seed 9)
    kw = dict(scale=1.0, initial_state=h0, output_final_state=True, quant="int8")
    o, f = op(q * top, k * top, v * top, backend="triton", **kw)
    ro, rf = op(q * top, k * top, v * top, backend="reference", **kw)
    assert torch.isfinite(o).all() and torch.equal(o, ro) and torch.equal(f, rf)


def test_public_chunk_op_no_final_state():
    (q, k, v), _ = _inputs(2, 65, 2, 16, 16, seed=5)
    o, f = chunk_retention(q, k, v, quant="int8", backend="triton")
    ro, _ = chunk_retention(q, k, v, quant="int8", backend="reference")
    assert f is None and torch.equal(o, ro)


@pytest.mark.parametrize(
    "B, T, H, K, V, block_v",
    [(2, 1, 2, 32, 16, None), (1, 5, 3, 16, 40, None), (1, 3, 2, 16, 40, 16)],
)
def test_recurrent_kernel_matches_integer_spec(B, T, H, K, V, block_v):
    (q, k, v), h0 = _inputs(B, T, H, K, V, seed=6)
    g = default_g_gamma(H)
    out, fin = _poisoned(B, T, H, V), _poisoned(B, H, K, V)
    o, f = recurrent_retention_fwd(q, k, v, g, K**-0.5, h0, True, out=out, final_out=fin, block_v=block_v)
    ro, rf = int_recurrent_retention(q, k, v, g, K**-0.5, CFG, h0)
    assert o is out and f is fin
    assert torch.equal(o, ro)
    assert torch.equal(f, rf)


def test_decode_steps_carry_state():
    (q, k, v), h0 = _inputs(1, 4, 2, 16, 16, seed=7)
    g = default_g_gamma(2)
    state, outs = h0, []
    for t in range(4):
        o, state = recurrent_retention_fwd(
            q[:, t : t + 1], k[:, t : t + 1], v[:, t : t + 1], g, 0.25, state, True
        )
        outs.append(o)
    ro, rf = int_recurrent_retention(q, k, v, g, 0.25, CFG, h0)
    assert torch.equal(torch.cat(outs, dim=1), ro)
    assert torch.equal(state, rf)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_public_recurrent_op_matches_reference_backend(dtype):
    cu = torch.tensor([0, 1, 4, 6])
    (q, k, v), h0 = _inputs(1, 6, 2, 16, 24, seed=8, dtype=dtype, state_n=3)
    kw = dict(initial_state=h0, output_final_state=True, cu_seqlens=cu, quant="int8")
    o, f = fused_recurrent_retention(q, k, v, backend="triton", **kw)
    ro, rf = fused_recurrent_retention(q, k, v, backend="reference", **kw)
    assert torch.equal(o, ro) and torch.equal(f, rf)


def test_public_recurrent_op_reverse_and_transposed_state():
    (q, k, v), h0 = _inputs(2, 4, 2, 16, 32, seed=9)
    h0t = h0.transpose(-1, -2).contiguous()  # [N, H, V, K]
    kw = dict(initial_state=h0t, output_final_state=True, reverse=True, quant="int8")
    kw["transpose_state_layout"] = True
    o, f = fused_recurrent_retention(q, k, v, backend="triton", **kw)
    ro, rf = fused_recurrent_retention(q, k, v, backend="reference", **kw)
    assert torch.equal(o, ro) and torch.equal(f, rf)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(quant=None), "quantized calls only"),
        (dict(quant="int4"), "default int8 configuration"),
    ],
)
def test_unsupported_configurations_raise_when_requested(kwargs, match):
    (q, k, v), _ = _inputs(1, 8, 1, 16, 16)
    with pytest.raises(RuntimeError, match=match):
        chunk_retention(q, k, v, backend="triton", **kwargs)


def test_float64_inputs_are_refused():
    (q, k, v), _ = _inputs(1, 8, 1, 16, 16, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="float32/float16/bfloat16"):
        chunk_retention(q, k, v, quant="int8", backend="triton")


def test_parallel_is_not_a_triton_op():
    from retquant.ops import parallel_retention

    (q, k, v), _ = _inputs(1, 8, 1, 16, 16)
    with pytest.raises(RuntimeError, match="not 'parallel'"):
        parallel_retention(q, k, v, quant="int8", backend="triton")


def test_launcher_rejects_bad_arguments():
    (q, k, v), _ = _inputs(1, 8, 1, 16, 16)
    g = default_g_gamma(1)
    with pytest.raises(ValueError, match="block_v"):
        chunk_retention_fwd(q, k, v, g, 0.25, block_v=24)
    with pytest.raises(ValueError, match="mode"):
        chunk_retention_fwd(q, k, v, g, 0.25, mode="tiled")
    with pytest.raises(ValueError, match="expected q, k"):
        chunk_retention_fwd(q, k[:, :4], v, g, 0.25)
    with pytest.raises(ValueError, match="expected q, k"):
        recurrent_retention_fwd(q, k, v[0], g, 0.25)


def test_missing_triton_is_a_reason_not_an_import_error():
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, warnings\n"
        "from retquant.ops import chunk_retention\n"
        "q = torch.randn(1, 8, 1, 16)\n"
        "try:\n"
        "    chunk_retention(q, q, q, quant='int8', backend='triton')\n"
        "except RuntimeError as e:\n"
        "    assert 'triton is not installed' in str(e), e\n"
        "else:\n"
        "    raise SystemExit('no error')\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


def test_cpu_tensors_without_interpreter_give_a_reason():
    code = (
        "import os; os.environ.pop('TRITON_INTERPRET', None)\n"
        "import torch\n"
        "from retquant.ops import chunk_retention\n"
        "q = torch.randn(1, 8, 1, 16)\n"
        "try:\n"
        "    chunk_retention(q, q, q, quant='int8', backend='triton')\n"
        "except RuntimeError as e:\n"
        "    assert 'TRITON_INTERPRET=1' in str(e), e\n"
        "else:\n"
        "    raise SystemExit('no error')\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


def test_interpreter_flag_set_after_triton_import_gives_a_reason():
    code = (
        "import os; os.environ.pop('TRITON_INTERPRET', None)\n"
        "import triton, torch\n"
        "os.environ['TRITON_INTERPRET'] = '1'\n"
        "from retquant.ops import chunk_retention\n"
        "q = torch.randn(1, 8, 1, 16)\n"
        "try:\n"
        "    chunk_retention(q, q, q, quant='int8', backend='triton')\n"
        "except RuntimeError as e:\n"
        "    assert 'after triton was imported' in str(e), e\n"
        "else:\n"
        "    raise SystemExit('no error')\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


def test_launch_tables_follow_the_decay_and_lengths():
    # the launchers cache offsets per lengths and decay tables per decay: a second decay or a
    # new length with the same shapes must not reuse the first one's tables
    (q, k, v), h0 = _inputs(1, 100, 2, 32, 16, seed=11)
    for g in (default_g_gamma(2), torch.tensor([-0.2, -0.01], dtype=torch.float64), default_g_gamma(2)):
        _check_chunk_vs_spec(q, k, v, g, h0)
        _check_chunk_vs_spec(q[:, :70], k[:, :70], v[:, :70], g, h0)
        o, f = recurrent_retention_fwd(q[:, :3], k[:, :3], v[:, :3], g, 0.25, h0, True)
        ro, rf = int_recurrent_retention(q[:, :3], k[:, :3], v[:, :3], g, 0.25, CFG, h0)
        assert torch.equal(o, ro) and torch.equal(f, rf)


def test_device_table_copies_follow_new_lengths_and_evictions():
    # kernels/chunk_prep keeps device copies of retquant.decay's CPU tables: a call needing a
    # chunk length the copy lacks re-copies, also after the CPU entry was evicted and rebuilt
    # with other rows (the copy's own record of its rows decides, not a count)
    from retquant import decay
    from retquant.kernels import chunk_prep

    g = torch.tensor([-0.3, -0.07], dtype=torch.float64)
    dev = torch.device("cpu")
    key = (decay.decay_key(g), C, dev)
    chunk_prep._DEVICE_DECAY.pop(key, None)
    kdec = chunk_prep._decay(g, [70], C, dev)[4]
    assert {6, C} <= chunk_prep._DEVICE_DECAY[key][0]
    decay._KERNEL_TABLES.clear()  # the CPU entry goes; the device copy stays
    kdec2 = chunk_prep._decay(g, [71], C, dev)[4]
    assert kdec2 is not kdec and chunk_prep._DEVICE_DECAY[key][0] == {7, C}
    want = decay.chunk_decay_tables(g, 7, C).kdec
    assert torch.equal(kdec2[:, 7, :7], want) and not kdec2[:, 7, 7:].any()
    assert chunk_prep._decay(g, [7], C, dev)[4] is kdec2  # a hit: no new copy
