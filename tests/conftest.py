import sys

import pytest
import torch

from retquant.backends import cpu_extension


@pytest.fixture
def gen():
    """A fresh, seeded generator per test (fresh random inputs, reproducible on failure)."""
    return torch.Generator().manual_seed(torch.seed() % 2**31)


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
