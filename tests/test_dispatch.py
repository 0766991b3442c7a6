"""Backend selection: explicit choice, environment override, the preferred backend's warning."""

import warnings

import pytest
import torch

from retquant.backends import registry
from retquant.backends.registry import Backend
from retquant.ops import chunk_retention
from retquant.validate import validate_call


def _inputs():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(1, 10, 2, 8, generator=g) for _ in range(3)]


@pytest.fixture
def isolated_registry(monkeypatch):
    """A registry holding only the reference and torch backends, and a fresh warning memory."""
    keep = {name: registry._REGISTRY[name] for name in ("reference", "torch")}
    monkeypatch.setattr(registry, "_REGISTRY", keep)
    monkeypatch.setattr(registry, "_WARNED", set())
    monkeypatch.delenv("RETQUANT_BACKEND", raising=False)


def test_missing_requested_backend_is_an_error(isolated_registry):
    with pytest.raises(RuntimeError, match="backend 'cpu' was requested"):
        chunk_retention(*_inputs(), quant="int8", backend="cpu")


def test_env_var_requests_a_backend(isolated_registry, monkeypatch):
    monkeypatch.setenv("RETQUANT_BACKEND", "triton")
    with pytest.raises(RuntimeError, match="backend 'triton' was requested"):
        chunk_retention(*_inputs(), quant="int8")
    monkeypatch.setenv("RETQUANT_BACKEND", "reference")
    chunk_retention(*_inputs(), quant="int8")


def test_missing_preferred_backend_warns_once(isolated_registry):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        a = chunk_retention(*_inputs(), quant="int8")[0]
        b = chunk_retention(*_inputs(), quant="int8")[0]
    hits = [x for x in w if "preferred backend" in str(x.message)]
    assert len(hits) == 1 and "'cpu'" in str(hits[0].message)
    assert hits[0].filename == __file__  # points at the user's call, not into retquant
    ref = chunk_retention(*_inputs(), quant="int8", backend="reference")[0]
    assert torch.equal(a, ref) and torch.equal(b, ref)


def test_available_preferred_backend_is_used(isolated_registry):
    seen = []

    def impl(call):
        seen.append(call)
        return registry._REGISTRY["reference"].impls["chunk"](call)

    registry.register_backend(Backend("cpu", {"chunk": impl}, lambda op, call: None))
    chunk_retention(*_inputs(), quant="int8")
    assert len(seen) == 1
    chunk_retention(*_inputs())  # a cpu backend without float_path: the float path runs elsewhere
    assert len(seen) == 1


def test_float_path_backends():
    q, k, v = _inputs()
    call = validate_call(q, k, v)
    assert registry.select("chunk", call, "auto")[0] in ("cpu", "torch")
    call64 = validate_call(q.double(), k.double(), v.double())
    assert registry.select("chunk", call64, "auto")[0] == "reference"  # float64: the spec
    with pytest.raises(RuntimeError, match="float path only"):
        chunk_retention(q, k, v, quant="int8", backend="torch")


def test_backend_that_declines_gives_its_reason(isolated_registry):
    registry.register_backend(Backend("cpu", {}, lambda op, call: "no compiler found"))
    with pytest.raises(RuntimeError, match="no compiler found"):
        chunk_retention(*_inputs(), quant="int8", backend="cpu")
