import math
import sys

import pytest
import torch

from retquant.backends import cpu_extension


@pytest.fixture
def gen():
    """A fresh, seeded generator per test (fresh random inputs, reproducible on failure: the
    seed is printed, and pytest shows it with a failure)."""
    seed = torch.seed() % 2**31
    print(f"gen seed={seed}")
    return torch.Generator().manual_seed(seed)


@pytest.fixture(params=list(cpu_extension.ISA_CODES))
def isa(request, monkeypatch):
    """Each CPU kernel ISA in turn, forced through RETQUANT_CPU_ISA; one the CPU cannot run is
    skipped with that reason (tests/test_cpu_backend.py has its own, which also records them)."""
    if request.param not in cpu_extension.cpu_isas():
        pytest.skip(f"this CPU cannot run the {request.param} kernels")
    monkeypatch.setenv(cpu_extension.ISA_ENV, request.param)
    return request.param


def rand_qkv(gen, B, T, H, K, V, dtype=torch.float32):
    q = torch.randn(B, T, H, K, generator=gen, dtype=dtype)
    k = torch.randn(B, T, H, K, generator=gen, dtype=dtype)
    v = torch.randn(B, T, H, V, generator=gen, dtype=dtype)
    return q, k, v


def assert_close(name, out, ref, rel, cos=None):
    """``out`` within relative L2 ``rel`` (and cosine >= ``cos``) of ``ref``; says what differed."""
    from retquant.metrics import compare

    r = compare(out, ref)
    worst = (out.double() - ref.double()).abs().flatten().argmax().item() if out.numel() else 0
    bound = f"rel_l2 <= {rel:g}" + ("" if cos is None else f", cos >= {cos}")
    msg = f"{name}: {r} (bound {bound}), worst at flat index {worst}"
    assert r.rel_l2 <= rel, msg
    if cos is not None:
        assert r.cosine >= cos, msg


def pytest_terminal_summary(terminalreporter):
    """One line naming the CPU kernel ISAs the bit-exactness tests ran and skipped (an ISA the
    machine lacks is skipped, not failed: this line shows what a green run covered)."""
    mod = sys.modules.get("tests.test_cpu_backend") or sys.modules.get("test_cpu_backend")
    if mod is None or not (mod.ISA_RAN or mod.ISA_SKIPPED):
        return
    ran = ", ".join(i for i in mod.ISAS if i in mod.ISA_RAN) or "none"
    skipped = ", ".join(i for i in mod.ISAS if i in mod.ISA_SKIPPED - mod.ISA_RAN) or "none"
    terminalreporter.write_line(f"CPU kernel ISAs tested: {ran}; skipped (not on this CPU): {skipped}")


def range_grad_terms(mode: str, x, g, s: float, qmax: int, alpha: float = 0.0):
    """The per-element terms (float64, exact) whose sum is a learnable range's gradient before
    the method's factor: LSQ / TQT ``g * (round(t) - t)`` inside and ``g * ±qmax`` outside
    (inside: ``|t| <= qmax`` for LSQ, ``|round(t)| <= qmax`` for TQT, t = x / s in float32);
    PACT ``+g`` above the clip, ``-g`` below, 0 inside."""
    x = x.detach().float()
    gd = g.detach().double()
    if mode == "pact":
        a = torch.tensor(alpha)
        return gd * (x > a) - gd * (x < -a)
    t = x / torch.tensor(s)
    r = torch.round(t)
    below, above = (t < -qmax, t > qmax) if mode == "lsq" else (r < -qmax, r > qmax)
    outside = torch.where(below, -float(qmax), float(qmax))
    return gd * torch.where(below | above, outside, r - t).double()


def float32_sum_error_bound(terms) -> float:
    """A bound on the rounding error of torch's float32 sum of ``terms`` (a cascade sum: about
    log2(n) roundings per term; 4x margin): 4 * ceil(log2 n) * 2**-24 * sum |term|."""
    n = max(terms.numel(), 2)
    return 4 * math.ceil(math.log2(n)) * 2.0**-24 * terms.abs().sum().item()
