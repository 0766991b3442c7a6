"""The float (quant=None) C++ chunk kernel against the float64 chunkwise specification.

Bounds:
- float32 in and out, elementwise: |out - ref| <= 2^-19 * mag, where mag is the same retention run
  on |q|, |k|, |v| and |initial_state| (the sum of the magnitudes of the terms each output adds
  up). Every output is a few fp32 dot products (Q K^T and Q S over K <= 128, P V over <= 64
  tokens) plus the carried state, itself a sum of such products; each rounding is at most 2^-24
  ~ 6e-8 of a partial sum, and a partial sum never exceeds mag, so the error is a small multiple
  of 2^-24 * mag (measured <= 4 * 2^-24 over 40 seeds of every shape). 2^-19 = 32 * 2^-24 leaves
  room for the summation order (FMA on AVX2/AVX-512) while any wrong factor or index (errors of
  1e-3 of mag and up) fails. A norm-relative bound would not do: with K = V = 1 the state is one
  number, a sum of 70 random terms that can cancel to far below mag, and its relative error
  then says nothing about the kernel (it reached 2.4e-5 in CI).
- bfloat16 in and out: 4e-3 relative L2 for o. The reference reads the same bf16 inputs, so the
  error is the final rounding of o to bf16: half an ulp of 8 significant bits, 2^-9 relative at
  most, ~1.6e-3 as an RMS over a binade; the state (float32) keeps the float32 bound.
Inputs are fresh random numbers each run; the seed is printed (shown by pytest on failure).
"""

from __future__ import annotations

import math
import random

import pytest
import torch

from retquant.backends import cpu_extension, cpu_float
from retquant.decay import default_g_gamma
from retquant.metrics import compare
from retquant.spec.naive import naive_chunk_retention
from retquant.validate import validate_call

_ERR = cpu_extension.load_error()
pytestmark = pytest.mark.skipif(_ERR is not None, reason=f"CPU extension unavailable: {_ERR}")

F32_BOUND = 2.0**-19  # of mag, elementwise (see the module docstring)
BF16_BOUND = 4e-3


@pytest.fixture(params=cpu_float.ISA_NAMES)
def isa(request, monkeypatch):
    if cpu_float.ISA_NAMES.index(request.param) > cpu_float.ISA_NAMES.index(cpu_float.best_isa()):
        pytest.skip(f"this CPU cannot run the {request.param} float kernel (best: {cpu_float.best_isa()})")
    monkeypatch.setenv(cpu_extension.ISA_ENV, request.param)
    return request.param


@pytest.fixture
def gen():
    seed = random.randrange(2**31)
    print(f"seed={seed}")
    return torch.Generator().manual_seed(seed)


def _inputs(gen, B, T, H, K, V, init, dtype=torch.float32):
    q, k = (torch.randn(B, T, H, K, generator=gen).to(dtype) for _ in range(2))
    v = torch.randn(B, T, H, V, generator=gen).to(dtype)
    s = torch.randn(B, H, K, V, generator=gen) if init else None
    return q, k, v, s


def _run(q, k, v, s, gg, scale, lengths=None):
    """The kernel on [B, T, H, D] inputs (B sequences of length T, or packed `lengths`)."""
    B, T, H, K = q.shape
    lengths = lengths or [T] * B
    off = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int64)
    flat = (x.reshape(-1, H, x.shape[-1]) for x in (q, k, v))
    o, fin = cpu_float.chunk_float(*flat, off, scale, gg, s)
    return o, fin


def _spec(q, k, v, gg, scale, s):
    """The float64 specification's (o, final state) and their magnitudes (the same run on |inputs|)."""
    ref = naive_chunk_retention(q, k, v, gg, scale, s)
    mag = naive_chunk_retention(q.abs(), k.abs(), v.abs(), gg, scale, None if s is None else s.abs())
    return (*ref, *mag)


def _check(o, ref, bound):
    e = compare(o.double(), ref)
    assert e.rel_l2 <= bound and e.cosine >= 1 - bound, f"rel_l2={e.rel_l2:.3e} cosine={e.cosine:.9f}"


def _check_f32(o, ref, mag):
    """Elementwise |o - ref| <= F32_BOUND * mag; says which element and by how much."""
    err = (o.double() - ref).abs()
    ratio = torch.where(mag > 0, err / mag, err * math.inf).flatten()
    worst = ratio.argmax().item()
    assert ratio[worst] <= F32_BOUND, (
        f"|o - ref| / mag = {ratio[worst].item():.3e} > {F32_BOUND:.3e} at flat index {worst} "
        f"(o {o.flatten()[worst].item():.9g}, ref {ref.flatten()[worst].item():.9g}, "
        f"mag {mag.flatten()[worst].item():.3e})"
    )


# (B, T, H, K, V, initial state, g_gamma or None = RetNet's): T of one token, one chunk +- 1 and
# several chunks; K != V, K and V not multiples of 8 or 16, 1, wide; log(0.5) heads (the decay
# the fused int8 epilogue must guard) beside slow ones.
SHAPES = [
    (1, 1, 1, 40, 72, False, None),
    (2, 63, 2, 40, 72, True, None),
    (1, 65, 3, 72, 40, True, None),
    (2, 200, 2, 128, 128, True, None),
    (1, 200, 2, 64, 96, False, [math.log(0.5), -0.03]),
    (3, 130, 2, 7, 3, True, [math.log(0.5), math.log(0.5)]),
    (1, 70, 1, 1, 1, True, None),  # K = V = 1: every vector loop is a tail
    (1, 130, 1, 256, 17, True, None),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:5])))
def test_float32_matches_float64_spec(shape, isa, gen):
    B, T, H, K, V, init, gg = shape
    q, k, v, s = _inputs(gen, B, T, H, K, V, init)
    gg = default_g_gamma(H) if gg is None else torch.tensor(gg, dtype=torch.float64)
    ref, ref_s, mag, mag_s = _spec(q, k, v, gg, K**-0.5, s)
    o, fin = _run(q, k, v, s, gg, K**-0.5)
    assert o.dtype == torch.float32 and fin.dtype == torch.float32
    _check_f32(o.view(B, T, H, V), ref, mag)
    _check_f32(fin, ref_s, mag_s)


@pytest.mark.parametrize("threads", [1, 2])
def test_head_groups(threads, isa, gen):
    """A task walks a group of heads chunk by chunk; the group size follows the thread count
    (at least two tasks per thread): 1 thread puts all 3 heads in one group, 2 threads groups of
    2 (the second group partial)."""
    B, T, H, K, V = 2, 100, 3, 40, 72
    q, k, v, s = _inputs(gen, B, T, H, K, V, True)
    gg = default_g_gamma(H)
    ref, ref_s, mag, mag_s = _spec(q, k, v, gg, 0.2, s)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        o, fin = _run(q, k, v, s, gg, 0.2)
    finally:
        torch.set_num_threads(before)
    _check_f32(o.view(B, T, H, V), ref, mag)
    _check_f32(fin, ref_s, mag_s)


def test_varlen_equals_each_sequence_alone(isa, gen):
    H, K, V = 2, 40, 72
    lengths = [65, 1, 130]
    q, k, v, _ = _inputs(gen, 1, sum(lengths), H, K, V, False)
    s = torch.randn(len(lengths), H, K, V, generator=gen)
    gg = default_g_gamma(H)
    o, fin = _run(q, k, v, s, gg, 0.3, lengths)
    start = 0
    for n, L in enumerate(lengths):
        sl = slice(start, start + L)
        ref, ref_s, mag, mag_s = _spec(q[:, sl], k[:, sl], v[:, sl], gg, 0.3, s[n : n + 1])
        _check_f32(o[sl], ref[0], mag[0])
        _check_f32(fin[n : n + 1], ref_s, mag_s)
        start += L


@pytest.mark.parametrize(
    "shape", [(2, 200, 2, 64, 64), (1, 70, 3, 40, 72)], ids=lambda s: "x".join(map(str, s))
)
def test_bfloat16_io(shape, isa, gen):
    B, T, H, K, V = shape
    q, k, v, s = _inputs(gen, B, T, H, K, V, True, torch.bfloat16)
    gg = torch.tensor([math.log(0.5), *default_g_gamma(H - 1).tolist()], dtype=torch.float64)
    ref, ref_s, _, mag_s = _spec(q, k, v, gg, K**-0.5, s)
    o, fin = _run(q, k, v, s, gg, K**-0.5)
    assert o.dtype == torch.bfloat16 and fin.dtype == torch.float32
    _check(o.view(B, T, H, V), ref, BF16_BOUND)
    _check_f32(fin, ref_s, mag_s)


def test_bfloat16_rounds_like_torch(isa, gen):
    """bf16 o is the float32 result rounded to nearest even, as .to(bfloat16) rounds it: the same
    inputs in float32 give o32 with o32.to(bf16) == o_bf16 up to the float32 summation order."""
    q, k, v, _ = _inputs(gen, 1, 100, 2, 32, 48, False, torch.bfloat16)
    gg = default_g_gamma(2)
    o16, _ = _run(q, k, v, None, gg, 0.2)
    o32, _ = _run(q.float(), k.float(), v.float(), None, gg, 0.2)
    same = (o32.to(torch.bfloat16) == o16).float().mean().item()
    assert same > 0.99, f"only {same:.4f} of the bf16 outputs equal the rounded float32 ones"


def test_float16_runs_through_float32(isa, gen):
    q, k, v, _ = _inputs(gen, 1, 90, 2, 32, 24, False, torch.float16)
    gg = default_g_gamma(2)
    ref, _ = naive_chunk_retention(q, k, v, gg, 0.2)
    o, fin = _run(q, k, v, None, gg, 0.2)
    assert o.dtype == torch.float16 and fin.dtype == torch.float32
    _check(o.view(1, 90, 2, 24), ref, 2e-3)  # float16 o: 2^-11 relative rounding


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_output_written(dtype, isa, gen):
    """Outputs poisoned with NaN before the call come back finite (no element left unwritten)."""
    T, H, K, V = 77, 3, 40, 72
    q, k, v, _ = _inputs(gen, 1, T, H, K, V, False, dtype)
    off = torch.tensor([0, 12, T])
    gg = default_g_gamma(H)
    out = torch.full((T, H, V), float("nan"), dtype=dtype)
    fin = torch.full((2, H, K, V), float("nan"))
    t = cpu_float._tables(gg, off)
    args = (q[0], k[0], v[0], off, 0.2, *t, None, cpu_float.isa_level(), out, fin)
    torch.ops.retquant.float_chunk_fwd(*args)
    assert torch.isfinite(out).all() and torch.isfinite(fin).all()


def test_custom_op_and_fake(gen):
    q, k, v, s = _inputs(gen, 1, 70, 2, 16, 8, True)
    off = torch.tensor([0, 70])
    gg = default_g_gamma(2)
    args = (q[0], k[0], v[0], off, 0.25, gg, s)
    o, fin = torch.ops.retquant.cpu_chunk_float(*args)
    o2, fin2 = cpu_float.chunk_float(*args)
    assert torch.equal(o, o2) and torch.equal(fin, fin2)
    torch.library.opcheck(torch.ops.retquant.cpu_chunk_float.default, args)


def test_supported_reasons():
    q = torch.randn(1, 8, 2, 16)
    assert cpu_float.supported(validate_call(q, q, q)) is None
    assert "quant=None" in cpu_float.supported(validate_call(q, q, q, quant="int8"))
    assert "float64" in cpu_float.supported(validate_call(q.double(), q.double(), q.double()))


def _good(T=10, H=2, K=8, V=6):
    q, k = torch.randn(T, H, K), torch.randn(T, H, K)
    return q, k, torch.randn(T, H, V), torch.tensor([0, 4, T]), 0.3, default_g_gamma(H), None


def _with(i, x):
    a = list(_good())
    a[i] = x
    return a


BAD = [
    ("q float64", _with(0, torch.randn(10, 2, 8).double()), TypeError, "share one dtype"),
    (
        "all float64",
        [x.double() if i < 3 else x for i, x in enumerate(_good())],
        RuntimeError,
        "q must be float32 or bfloat16",
    ),
    ("k other shape", _with(1, torch.randn(10, 2, 4)), RuntimeError, "k must have q's shape"),
    ("v other T", _with(2, torch.randn(9, 2, 6)), RuntimeError, "v must be"),
    ("q rank 4", _with(0, torch.randn(1, 10, 2, 8)), ValueError, "q and v must be"),
    (
        "k not contiguous",
        _with(1, torch.randn(10, 8, 2).transpose(1, 2)),
        RuntimeError,
        "k must be contiguous",
    ),
    (
        "offsets past T",
        _with(3, torch.tensor([0, 4, 11])),
        RuntimeError,
        "offsets must run from 0 to T_total",
    ),
    ("offsets int32", _with(3, torch.tensor([0, 4, 10], dtype=torch.int32)), RuntimeError, "offsets must be"),
    ("offsets empty", _with(3, torch.tensor([0])), ValueError, "offsets must be"),
    ("g_gamma wrong H", _with(5, default_g_gamma(3)), ValueError, "g_gamma must be"),
    ("initial_state shape", _with(6, torch.zeros(2, 2, 6, 8)), RuntimeError, "initial_state must be"),
    (
        "initial_state bf16",
        _with(6, torch.zeros(2, 2, 8, 6, dtype=torch.bfloat16)),
        RuntimeError,
        "initial_state must be float32",
    ),
]


@pytest.mark.parametrize("args, exc, msg", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input(args, exc, msg):
    with pytest.raises(exc, match=msg):
        cpu_float.chunk_float(*args)


def test_isa_env(monkeypatch):
    monkeypatch.setenv(cpu_extension.ISA_ENV, "avx9000")
    with pytest.raises(ValueError, match="RETQUANT_CPU_ISA"):
        cpu_float.isa_level()
    for name in ("portable", "avx2", "avx512", "vnni"):
        monkeypatch.setenv(cpu_extension.ISA_ENV, name)
        level = cpu_extension.ISA_CODES[cpu_extension.ISA_ALIASES.get(name, name)]
        if level > cpu_float.ISA_NAMES.index(cpu_float.best_isa()):
            with pytest.raises(RuntimeError, match="widest float-kernel ISA"):
                cpu_float.isa_level()
        else:
            assert cpu_float.isa_level() == level


def test_unavailable_isa_rejected_by_the_op():
    best = cpu_float.ISA_NAMES.index(cpu_float.best_isa())
    q, k, v, off, scale, gg, _ = _good()
    out, fin = torch.empty(10, 2, 6), torch.empty(2, 2, 8, 6)
    for isa in (best + 1, -1):
        if isa > 2:
            continue
        with pytest.raises(RuntimeError, match="isa"):
            torch.ops.retquant.float_chunk_fwd(
                q, k, v, off, scale, *cpu_float._tables(gg, off), None, isa, out, fin
            )
