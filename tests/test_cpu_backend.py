"""The C++/OpenMP CPU backend against the exact integer spec (bit for bit).

Integer accumulators are compared exactly through the ``chunk_fwd_debug`` op; outputs and final
states are compared with ``torch.equal`` (the kernels perform the spec's float32 operations in
the spec's order, compiled without FMA contraction, so not even one ulp may differ). Skipped with
the build error as reason when the extension cannot be built.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from retquant.backends import cpu, cpu_extension, cpu_ops
from retquant.constants import QUANT_INPUT_MAX
from retquant.ops import chunk_retention, fused_recurrent_retention, parallel_retention
from retquant.spec.int_chunk import int_chunk_retention
from retquant.validate import validate_call

_ERR = cpu_extension.load_error()
pytestmark = pytest.mark.skipif(_ERR is not None, reason=f"CPU extension unavailable: {_ERR}")

ISAS = list(cpu_extension.ISA_CODES)  # portable, avx2, avx512: every one this CPU can run
ISA_RAN: set[str] = set()  # reported by conftest.py's summary line
ISA_SKIPPED: set[str] = set()


@pytest.fixture(params=ISAS)
def isa(request, monkeypatch):
    if request.param not in cpu_extension.cpu_isas():
        ISA_SKIPPED.add(request.param)
        pytest.skip(f"this CPU cannot run the {request.param} kernels")
    ISA_RAN.add(request.param)
    monkeypatch.setenv(cpu_extension.ISA_ENV, request.param)
    return request.param


def _inputs(B, T, H, K, V, seed=0, init=False, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=g).to(dtype)
    k = torch.randn(B, T, H, K, generator=g).to(dtype)
    v = torch.randn(B, T, H, V, generator=g).to(dtype)
    s = torch.randn(B, H, K, V, generator=g) if init else None
    return q, k, v, s


# (B, T, H, K, V, initial state, g_gamma or None): odd T, K != V, all of {32, 64, 100, 128},
# and a head whose decay is too fast for the fused form (the guarded epilogue).
SHAPES = [
    (2, 150, 3, 100, 32, True, [-0.03, -0.5, -2.0]),
    (1, 64, 2, 64, 128, False, None),
    (3, 70, 2, 32, 64, True, None),
    (1, 200, 1, 128, 100, True, None),
    (2, 5, 2, 128, 128, False, None),
    (1, 130, 2, 17, 1000, True, None),  # K, V not multiples of 4 / 16, wide V
    (1, 70, 1, 256, 8, False, None),
    (2, 100, 2, 40, 72, True, [-0.05, -3.0]),  # K, V not multiples of 16 / 32 (AVX2 lanes: 8)
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:5])))
def test_chunk_matches_integer_spec(shape, isa):
    B, T, H, K, V, init, gg = shape
    q, k, v, s = _inputs(B, T, H, K, V, init=init)
    gg = None if gg is None else torch.tensor(gg, dtype=torch.float64)
    call = validate_call(q, k, v, initial_state=s, output_final_state=True, g_gamma=gg, quant="int8")
    o_ref, s_ref, tr = int_chunk_retention(q, k, v, call.g_gamma, call.scale, call.quant, s, trace=True)
    n = -(-T // 64)
    o, fin, qk, pv, qs, kv = cpu.chunk_raw(call, debug_chunks=n)
    assert torch.equal(o.view(B, T, H, V), o_ref)
    assert torch.equal(fin, s_ref)
    # integer accumulators: causal lower triangle of Q K^T, valid token rows of the rest
    valid = (torch.arange(n * 64) < T).view(n, 64)
    tri = torch.ones(64, 64, dtype=torch.bool).tril()
    m_qk = tri & valid[:, :, None] & valid[:, None, :]
    assert torch.equal(qk.long() * m_qk, tr.acc_qk * m_qk)
    rows = valid[:, :, None]
    assert torch.equal(pv.long() * rows, tr.acc_pv * rows)
    assert torch.equal(qs.long() * rows, tr.acc_qs * rows)
    assert torch.equal(kv.long(), tr.acc_kv)


@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[5], SHAPES[7]], ids=lambda s: "x".join(map(str, s[:5])))
def test_chunk_bf16_io_matches_integer_spec(shape, isa):
    # bfloat16 q, k, v are read as such (exactly their float32 values) and o is written in
    # bfloat16, rounded to nearest even like torch's .to(bfloat16) of the float32 output
    B, T, H, K, V, init, gg = shape
    q, k, v, s = _inputs(B, T, H, K, V, init=init, dtype=torch.bfloat16)
    gg = None if gg is None else torch.tensor(gg, dtype=torch.float64)
    call = validate_call(q, k, v, initial_state=s, output_final_state=True, g_gamma=gg, quant="int8")
    o_ref, s_ref, tr = int_chunk_retention(q, k, v, call.g_gamma, call.scale, call.quant, s, trace=True)
    n = -(-T // 64)
    o, fin, _, pv, qs, kv = cpu.chunk_raw(call, debug_chunks=n)
    assert o.dtype == torch.bfloat16
    assert torch.equal(o.view(B, T, H, V), o_ref.to(torch.bfloat16))
    assert torch.equal(fin, s_ref)
    assert torch.equal(kv.long(), tr.acc_kv)


@pytest.mark.parametrize("op", [chunk_retention, fused_recurrent_retention], ids=["chunk", "recurrent"])
def test_public_op_varlen_dtypes_noncontiguous(op, isa):
    lens = [70, 1, 130, 64]
    T = sum(lens)
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist())
    q, k, v, _ = _inputs(1, T, 2, 64, 96, seed=1)
    s = torch.randn(len(lens), 2, 64, 96)
    kw = dict(initial_state=s, output_final_state=True, cu_seqlens=cu, quant="int8")
    o_ref, f_ref = op(q, k, v, backend="reference", **kw)
    o, f = op(q, k, v, backend="cpu", **kw)
    assert torch.equal(o, o_ref) and torch.equal(f, f_ref)
    # non-contiguous views (q, and the state) give the same numbers
    qt = q.transpose(1, 2).contiguous().transpose(1, 2)
    st = s.transpose(2, 3).contiguous().transpose(2, 3)
    assert not (qt.is_contiguous() or st.is_contiguous())
    o2, f2 = op(qt, k, v, backend="cpu", **{**kw, "initial_state": st})
    assert torch.equal(o2, o) and torch.equal(f2, f)
    # half precisions: the kernel runs in float32; o comes back in q's dtype, state in float32
    for dt in (torch.bfloat16, torch.float16):
        qh, kh, vh, sh = q.to(dt), k.to(dt), v.to(dt), s.to(dt)
        kwh = {**kw, "initial_state": sh}
        oh_ref, fh_ref = op(qh, kh, vh, backend="reference", **kwh)
        oh, fh = op(qh, kh, vh, backend="cpu", **kwh)
        assert oh.dtype == dt and fh.dtype == torch.float32
        assert torch.equal(oh, oh_ref) and torch.equal(fh, fh_ref)


@pytest.mark.parametrize("varlen", [False, True])
def test_recurrent_matches_spec(varlen, isa):
    if varlen:
        q, k, v, _ = _inputs(1, 40, 3, 100, 64, seed=2)
        cu = torch.tensor([0, 3, 20, 40])
        s = torch.randn(3, 3, 100, 64)
    else:  # V = 72: a column block of 32 plus a partial one of 8 lanes (AVX2)
        q, k, v, s = _inputs(2, 17, 3, 100, 72, seed=2, init=True)
        cu = None
    kw = dict(initial_state=s, output_final_state=True, cu_seqlens=cu, quant="int8")
    o_ref, f_ref = fused_recurrent_retention(q, k, v, backend="reference", **kw)
    o, f = fused_recurrent_retention(q, k, v, backend="cpu", **kw)
    assert torch.equal(o, o_ref) and torch.equal(f, f_ref)


def test_recurrent_calls_in_either_direction_match_spec(isa):
    # Every other decode call walks each thread's (sequence, head) tasks backwards (L2 reuse,
    # csrc/recurrent_step.cpp): two calls in a row take both directions, with one and two threads;
    # packed sequences of 1, 3 and 5 tokens carry their state across tokens within a task
    q, k, v, _ = _inputs(1, 9, 5, 32, 40, seed=5)
    cu = torch.tensor([0, 1, 4, 9])
    s = torch.randn(3, 5, 32, 40, generator=torch.Generator().manual_seed(5))
    kw = dict(initial_state=s, output_final_state=True, cu_seqlens=cu, quant="int8")
    o_ref, f_ref = fused_recurrent_retention(q, k, v, backend="reference", **kw)
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            for _ in range(2):
                o, f = fused_recurrent_retention(q, k, v, backend="cpu", **kw)
                assert torch.equal(o, o_ref) and torch.equal(f, f_ref)
    finally:
        torch.set_num_threads(threads)


def test_recurrent_state_scales_around_the_fma_codes_bound(isa):
    # The AVX2 decode quantizes the state's columns without a division when every scale of a
    # block of 32 columns is >= 2^-100 (csrc/quant_avx2.h codes8_fma), with it otherwise: block 0
    # holds scales from 2^-103 up to just below the bound (the division), block 1 scales in
    # [2^-100, 2^-99) (the FMA form right at its bound), the last 8 columns normal ones. v is 0
    # on the first 64 columns, so the state there only decays and its scales stay where they are.
    B, T, H, K, V = 2, 5, 2, 64, 72
    q, k, v, s = _inputs(B, T, H, K, V, seed=4, init=True)
    col = torch.arange(64, dtype=torch.float64)
    exponent = torch.where(col < 32, -103 + 2.9 * col / 32, -99.75 + 0.7 * (col - 32) / 32)
    s[..., :64] *= (127 * 2.0**exponent).float() / s[..., :64].abs().amax(dim=2, keepdim=True)
    v[..., :64] = 0.0
    kw = dict(initial_state=s, output_final_state=True, quant="int8")
    o_ref, f_ref = fused_recurrent_retention(q, k, v, backend="reference", **kw)
    o, f = fused_recurrent_retention(q, k, v, backend="cpu", **kw)
    # the state decays by at most 2^-0.046 per token over 5 tokens (default g_gamma): the scales
    # of block 1 stay in [2^-100, 2^-99), those of block 0 below 2^-100
    scales = f_ref[..., :64].abs().amax(dim=2) / 127
    assert (scales[..., 32:] >= 2.0**-100).all() and (scales[..., 32:] < 2.0**-99).all()
    assert (scales[..., :32] < 2.0**-100).all()
    assert torch.equal(o, o_ref) and torch.equal(f, f_ref)


@pytest.mark.parametrize("tiny_scales", [False, True], ids=["normal", "tiny-scales"])
def test_decode_stage_profile_two_passes_match_the_kernel(tiny_scales, isa, gen):
    # bench.decode_profile times the decode's stages apart (retquant::decode_stage_seconds): the
    # update and q . S as two whole passes against the kernel as it runs (on AVX2 interleaved per
    # block of columns). The op reports whether both wrote the same state and outputs bit for bit;
    # V = 44 is one AVX2 block of 32 columns and a partial one; tiny scales take the division path.
    steps, H, K, V = 6, 3, 40, 44
    q, k = (torch.randn(steps, H, K, generator=gen) for _ in range(2))
    v = torch.randn(steps, H, V, generator=gen)
    state = torch.randn(H, K, V, generator=gen) * (2.0**-110 if tiny_scales else 1.0)
    if tiny_scales:
        v[:, :, :36] = 0.0  # those columns only decay: their scales stay below 2^-100
    gamma = torch.tensor([0.5, 0.9, 0.999])
    code = cpu_extension.ISA_CODES[isa]
    r = torch.ops.retquant.decode_stage_seconds(q, k, v, K**-0.5, gamma, state, code)
    assert len(r) == 5 and all(t > 0 for t in r[:4]), r
    assert r[4] == 1.0, f"{isa}: the two-pass stages and the kernel wrote different bits"
    with pytest.raises(RuntimeError, match="gamma must be"):
        torch.ops.retquant.decode_stage_seconds(q, k, v, 0.1, gamma[:2], state, code)
    with pytest.raises(RuntimeError, match="inf/NaN"):
        torch.ops.retquant.decode_stage_seconds(q, k, v * float("nan"), 0.1, gamma, state, code)


def _ties(B, T, H, D, seed):
    """Tokens whose codes are exact half-integer ties: every row and column holds 3 * 127 (so
    its scale is 3 exactly, whose reciprocal is inexact) and otherwise values 3 (n + 0.5), so
    x / s = n + 0.5 exactly, which rounds half to even, while x * fl(1/3) falls just below it."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randint(-127, 127, (B, T, H, D), generator=g).float() + 0.5) * 3.0
    x[:, :, :, 0] = 3.0 * 127
    x[:, 0] = 3.0 * 127
    return x


@pytest.mark.parametrize("op", [chunk_retention, fused_recurrent_retention], ids=["chunk", "recurrent"])
def test_half_integer_ties_match_spec(op, isa):
    # x / s exactly halfway between two codes: the SIMD paths' reciprocal shortcut must hand these
    # to the true division (csrc/quant_avx2.h codes8), and every path rounds them half to even.
    q, k, v = _ties(2, 70, 2, 40, 1), _ties(2, 70, 2, 40, 2), _ties(2, 70, 2, 72, 3)
    kw = dict(scale=1.0, output_final_state=True, quant="int8")
    o_ref, f_ref = op(q, k, v, backend="reference", **kw)
    o, f = op(q, k, v, backend="cpu", **kw)
    assert torch.equal(o, o_ref) and torch.equal(f, f_ref)


def test_outputs_fully_written(isa):
    """NaN-poisoned output buffers: every element must be overwritten by the kernel."""
    q, k, v, _ = _inputs(2, 99, 2, 100, 72, seed=3)
    call = validate_call(q, k, v, quant="int8")
    off = torch.tensor([0, 99, 198])
    out = torch.full((198, 2, 72), float("nan"))
    fin = torch.full((2, 2, 100, 72), float("nan"))
    tokens = (cpu.token_rows(q), cpu.token_rows(k), cpu.token_rows(v))
    args = cpu_ops.chunk_args(*tokens, off, call.scale, call.g_gamma, None, cpu_extension.isa_code(isa))
    torch.ops.retquant.chunk_fwd(*args, out, fin)
    assert torch.isfinite(out).all() and torch.isfinite(fin).all()
    out_bf = torch.full((198, 2, 72), float("nan"), dtype=torch.bfloat16)
    fin.fill_(float("nan"))
    bf_tokens = tuple(x.to(torch.bfloat16) for x in tokens)
    args = cpu_ops.chunk_args(*bf_tokens, off, call.scale, call.g_gamma, None, cpu_extension.isa_code(isa))
    torch.ops.retquant.chunk_fwd(*args, out_bf, fin)
    assert torch.isfinite(out_bf).all() and torch.isfinite(fin).all()
    gamma = torch.exp(call.g_gamma).float()
    out.fill_(float("nan"))
    fin.fill_(float("nan"))
    torch.ops.retquant.recurrent_fwd(
        cpu.token_rows(q),
        cpu.token_rows(k),
        cpu.token_rows(v),
        off,
        call.scale,
        gamma,
        None,
        out,
        fin,
        cpu_extension.isa_code(isa),
    )
    assert torch.isfinite(out).all() and torch.isfinite(fin).all()


def test_bad_inputs_raise_before_the_kernel():
    q, k, v, _ = _inputs(1, 10, 2, 32, 32)
    with pytest.raises(TypeError, match="torch.int32"):
        chunk_retention(q.to(torch.int32), k, v, quant="int8", backend="cpu")
    with pytest.raises(ValueError, match="initial_state"):
        chunk_retention(q, k, v, initial_state=torch.zeros(1, 2, 32, 31), quant="int8", backend="cpu")
    # the raw op checks too (no crash on a wrong dtype)
    with pytest.raises(RuntimeError, match="float32"):
        torch.ops.retquant.recurrent_fwd(
            cpu.token_rows(q).double(),
            cpu.token_rows(k),
            cpu.token_rows(v),
            torch.tensor([0, 10]),
            0.1,
            torch.ones(2),
            None,
            torch.empty(10, 2, 32),
            torch.empty(1, 2, 32, 32),
            0,
        )


def test_recurrent_call_rejects_bad_arguments():
    # The eager decode op (retquant::recurrent_call) converts its inputs itself: it must refuse
    # what it cannot convert faithfully, not truncate or cast it.
    q, k, v, s = _inputs(2, 3, 2, 16, 8, init=True)
    gamma = torch.full((2,), 0.9)
    call = torch.ops.retquant.recurrent_call
    ok = (q, k, v, None, 0.25, gamma, s, 0)
    o, f, status = call(*ok)
    assert o.shape == (2, 3, 2, 8) and f.shape == (2, 2, 16, 8) and status == 0
    cases = {
        "floating": (q.to(torch.int32), k, v, None, 0.25, gamma, s, 0),
        "initial_state must be floating": (q, k, v, None, 0.25, gamma, s.to(torch.int64), 0),
        "integer": (q, k, v, torch.tensor([0.0, 1.5, 3.0]), 0.25, gamma, s, 0),
        "k must have q's shape": (q, k.reshape(3, 2, 2, 16), v, None, 0.25, gamma, s, 0),
        "v must be": (q, k, v.reshape(3, 2, 2, 8), None, 0.25, gamma, s, 0),
        r"\[B, T, H, D\]": (q[0], k[0], v[0], None, 0.25, gamma, s, 0),
        "offsets must run": (q, k, v, torch.tensor([0, 5]), 0.25, gamma, s, 0),
        "initial_state must be": (q, k, v, None, 0.25, gamma, s[:, :, :8], 0),
    }
    for match, args in cases.items():
        with pytest.raises(RuntimeError, match=match):
            call(*args)


def test_backend_call_outputs_carry_no_gradient():
    # Called directly (not through the public ops' autograd), the cpu backend's kernels return
    # outputs that do not claim a gradient they cannot give: backward then raises, never runs
    # through to leave q.grad silently empty.
    q, k, v, s = (x.requires_grad_() for x in _inputs(1, 5, 2, 16, 8, init=True))
    for op in ("chunk", "fused_recurrent"):
        call = validate_call(q, k, v, initial_state=s, output_final_state=True, quant="int8")
        o, f = getattr(cpu, op)(call)
        assert not (o.requires_grad or f.requires_grad), op
        with pytest.raises(RuntimeError, match="does not require grad"):
            o.sum().backward()


@pytest.mark.parametrize("op", [chunk_retention, fused_recurrent_retention], ids=["chunk", "recurrent"])
@pytest.mark.parametrize("name", ["q", "k", "v", "initial_state"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
def test_kernels_flag_nonfinite_inputs(op, name, bad, isa):
    # The cpu backend skips the Python finiteness pass: its kernels flag inf/NaN while reading.
    # One bad element, in the last (partial) chunk, the second head, a column past 16.
    B, T, H, K, V = 2, 70, 2, 33, 20
    q, k, v, s = _inputs(B, T, H, K, V, init=True)
    x = {"q": q, "k": k, "v": v, "initial_state": s}[name]
    idx = (1, 1, K - 1, V - 1) if name == "initial_state" else (1, T - 3, 1, x.shape[-1] - 2)
    x[idx] = bad
    with pytest.raises(ValueError, match=f"^{name} holds inf or NaN"):
        op(q, k, v, initial_state=s, quant="int8", backend="cpu")
    x[idx] = 0.0
    op(q, k, v, initial_state=s, quant="int8", backend="cpu")  # finite again: runs


@pytest.mark.parametrize("name", ["q", "k", "v"])
def test_decode_token_scan_flags_every_position(name, isa):
    # The decode kernel scans all tokens before it writes any state (csrc/token_check.h; the AVX2
    # copy keeps four vector maxima over 32 floats per step, then a partial vector): elements in
    # each of the four, the middle and the last one (H K and H V are odd), inf/NaN, too large
    # (|q * scale| for q) and the largest accepted value.
    B, H, K, V = 3, 3, 37, 19
    scale = 0.25
    q, k, v, s = _inputs(B, 1, H, K, V, seed=6, init=True)
    x = {"q": q, "k": k, "v": v}[name].view(-1)  # the inputs are contiguous: a view
    limit = QUANT_INPUT_MAX / scale if name == "q" else QUANT_INPUT_MAX
    below = torch.tensor(limit, dtype=torch.float32).nextafter(torch.tensor(0.0)).item()
    kw = dict(scale=scale, initial_state=s, quant="int8", backend="cpu")
    for i in [0, 9, 18, 27, x.numel() // 2, x.numel() - 1]:
        keep = x[i].item()
        for bad, match in [
            (float("nan"), "holds inf or NaN"),
            (-float("inf"), "holds inf or NaN"),
            (-limit, "holds values too large"),
        ]:
            x[i] = bad
            with pytest.raises(ValueError, match=f"^{name} {match}"):
                fused_recurrent_retention(q, k, v, **kw)
        x[i] = -below
        o, _ = fused_recurrent_retention(q, k, v, **kw)
        assert torch.isfinite(o).all()
        x[i] = keep


def test_output_buffers_are_reused_safely(isa):
    # Outputs >= 2 MiB come from a cache of freed outputs (csrc/output_alloc.cpp): a live output is
    # never handed out twice, and a reused buffer is fully overwritten.
    a = _inputs(1, 4096, 2, 32, 64, seed=1)[:3]
    b = _inputs(1, 4096, 2, 32, 64, seed=2)[:3]
    o_a = chunk_retention(*a, quant="int8", backend="cpu")[0]
    o_b = chunk_retention(*b, quant="int8", backend="cpu")[0]
    assert o_a.data_ptr() != o_b.data_ptr()
    ptr_a, o_b_ref = o_a.data_ptr(), o_b.clone()
    del o_a
    o_b2 = chunk_retention(*b, quant="int8", backend="cpu")[0]
    assert o_b2.data_ptr() == ptr_a  # the freed output's buffer, holding a's values before
    assert torch.equal(o_b2, o_b_ref)
    del o_b
    cpu_ops.release_cached_outputs()  # unmaps the freed buffers only: live outputs keep theirs
    assert torch.equal(o_b2, o_b_ref)
    assert torch.equal(chunk_retention(*b, quant="int8", backend="cpu")[0], o_b_ref)


def test_unsupported_calls_have_reasons():
    q, k, v, _ = _inputs(1, 10, 2, 32, 32)
    with pytest.raises(RuntimeError, match="default int8"):
        chunk_retention(q, k, v, quant="int4", backend="cpu")
    with pytest.raises(RuntimeError, match="float64"):
        chunk_retention(q.double(), k.double(), v.double(), quant="int8", backend="cpu")
    with pytest.raises(RuntimeError, match="parallel"):
        parallel_retention(q, k, v, quant="int8", backend="cpu")
    # auto prefers cpu for CPU tensors and runs it silently when supported
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        o, _ = chunk_retention(q, k, v, quant="int8")
    assert torch.equal(o, chunk_retention(q, k, v, quant="int8", backend="cpu")[0])


def test_isa_env_var(monkeypatch):
    have = cpu_extension.cpu_isas()
    assert have[0] == "portable"
    monkeypatch.setenv(cpu_extension.ISA_ENV, "auto")
    assert cpu_extension.isa() == have[-1]  # the best this CPU has
    monkeypatch.setenv(cpu_extension.ISA_ENV, "portable")
    assert cpu_extension.isa() == "portable" and cpu_extension.isa_code() == 0
    monkeypatch.setenv(cpu_extension.ISA_ENV, "vnni")  # the old name of avx512
    if "avx512" in have:
        assert cpu_extension.isa() == "avx512"
    else:
        with pytest.raises(RuntimeError, match="RETQUANT_CPU_ISA=vnni"):
            cpu_extension.isa()
    monkeypatch.setenv(cpu_extension.ISA_ENV, "avx9000")
    with pytest.raises(ValueError, match="RETQUANT_CPU_ISA"):
        cpu_extension.isa()


@pytest.mark.parametrize("name", ["avx2", "avx512"])
def test_forcing_a_missing_isa_raises(name, monkeypatch):
    if name in cpu_extension.cpu_isas():
        pytest.skip(f"this CPU can run the {name} kernels")
    monkeypatch.setenv(cpu_extension.ISA_ENV, name)
    q, k, v, _ = _inputs(1, 10, 2, 32, 32)
    with pytest.raises(RuntimeError, match=f"{cpu_extension.ISA_ENV}={name}"):
        chunk_retention(q, k, v, quant="int8", backend="cpu")
    # the raw ops check the code against CPUID too
    call = validate_call(q, k, v, quant="int8")
    tokens = (cpu.token_rows(q), cpu.token_rows(k), cpu.token_rows(v))
    args = cpu_ops.chunk_args(*tokens, torch.tensor([0, 10]), call.scale, call.g_gamma, None, 9)
    with pytest.raises(RuntimeError, match="isa must be"):
        torch.ops.retquant.chunk_fwd(*args, torch.empty(10, 2, 32), torch.empty(1, 2, 32, 32))
    code = cpu_extension.ISA_CODES[name]
    with pytest.raises(RuntimeError, match=f"cannot run the {name} kernels"):
        torch.ops.retquant.gemm_seconds(4, 16, 4, 1, code)


_NO_COMPILER = """
import warnings, torch, retquant.ops
from retquant.ops import chunk_retention
q = torch.randn(1, 10, 2, 16)
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    chunk_retention(q, q, q, quant="int8")
    chunk_retention(q, q, q, quant="int8")
assert len(w) == 1 and "no C++ compiler" in str(w[0].message), [str(x.message) for x in w]
try:
    chunk_retention(q, q, q, quant="int8", backend="cpu")
except RuntimeError as e:
    assert "no C++ compiler" in str(e)
else:
    raise AssertionError("backend='cpu' without a compiler must raise")
print("ok")
"""


def test_missing_compiler_is_one_warning_then_reference(tmp_path):
    import os
    import subprocess
    import sys

    env = dict(os.environ, CXX=str(tmp_path / "no-such-c++"), TORCH_EXTENSIONS_DIR=str(tmp_path))
    env.pop("RETQUANT_BACKEND", None)
    r = subprocess.run(
        [sys.executable, "-c", _NO_COMPILER], env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr
