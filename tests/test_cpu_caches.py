"""The CPU backend's caches stay bounded: decay tables per g_gamma, freed output buffers."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from retquant import decay
from retquant.backends import cpu_extension, cpu_ops
from retquant.ops import chunk_retention, fused_recurrent_retention
from retquant.quant.config import RetentionQuantConfig
from retquant.spec.int_chunk import int_chunk_retention

_ERR = cpu_extension.load_error()
pytestmark = pytest.mark.skipif(_ERR is not None, reason=f"CPU extension unavailable: {_ERR}")


def test_decay_table_cache_is_bounded_lru():
    # A model with learned decays passes a new g_gamma per call: the cache must not grow with them.
    H, K, V = 2, 16, 8
    q, k, v = torch.randn(1, 70, H, K), torch.randn(1, 70, H, K), torch.randn(1, 70, H, V)
    decay._KERNEL_TABLES.clear()
    for i in range(3 * decay.KERNEL_TABLE_CACHE_SIZE):
        g = torch.tensor([-0.01 - 1e-4 * i, -0.2 - 1e-3 * i], dtype=torch.float64)
        o, s = chunk_retention(q, k, v, output_final_state=True, g_gamma=g, quant="int8", backend="cpu")
        assert len(decay._KERNEL_TABLES) <= decay.KERNEL_TABLE_CACHE_SIZE
        if i % 7 == 0:  # results stay right, for entries computed fresh and evicted alike
            o_ref, s_ref, _ = int_chunk_retention(q, k, v, g, K**-0.5, RetentionQuantConfig())
            assert torch.equal(o, o_ref) and torch.equal(s, s_ref)
    assert len(decay._KERNEL_TABLES) == decay.KERNEL_TABLE_CACHE_SIZE
    # least recently used goes first: a hit moves its entry to the back
    first = next(iter(decay._KERNEL_TABLES))
    decay.kernel_decay_tables(torch.tensor(first[0], dtype=torch.float64), ())
    assert next(reversed(decay._KERNEL_TABLES)) == first


def test_decode_decay_cache_is_bounded_and_keyed_by_value():
    # The decode kernel's float32 gamma per distinct g_gamma: bounded like the tables, and a new
    # decay (or one evicted and computed again) gives the specification's result.
    H, K, V = 2, 16, 8
    q, k, v = torch.randn(1, 1, H, K), torch.randn(1, 1, H, K), torch.randn(1, 1, H, V)
    s0 = torch.randn(1, H, K, V)
    decay._STEP_GAMMAS.clear()
    for i in range(3 * decay.KERNEL_TABLE_CACHE_SIZE):
        g = torch.tensor([-0.01 - 1e-4 * i, -0.2 - 1e-3 * i], dtype=torch.float64)
        kw = dict(initial_state=s0, output_final_state=True, g_gamma=g, quant="int8")
        o, s = fused_recurrent_retention(q, k, v, backend="cpu", **kw)
        assert len(decay._STEP_GAMMAS) <= decay.KERNEL_TABLE_CACHE_SIZE
        if i % 7 == 0 or i == 3 * decay.KERNEL_TABLE_CACHE_SIZE - 1:
            o_ref, s_ref = fused_recurrent_retention(q, k, v, backend="reference", **kw)
            assert torch.equal(o, o_ref) and torch.equal(s, s_ref)
    assert len(decay._STEP_GAMMAS) == decay.KERNEL_TABLE_CACHE_SIZE
    # the entry is the float32 gamma of its key, and a hit hands out the same tensor
    key, gamma = next(reversed(decay._STEP_GAMMAS.items()))
    assert torch.equal(gamma, torch.exp(torch.tensor(key, dtype=torch.float64)).float())
    assert decay.kernel_step_gamma(torch.tensor(key, dtype=torch.float64)) is gamma


def _chunk_out(T: int) -> torch.Tensor:
    # one sequence, H=2, V=512 float32: T * 4 KiB of output (>= 2 MiB from T = 512)
    q = torch.randn(1, T, 2, 8)
    return chunk_retention(q, q, torch.randn(1, T, 2, 512), quant="int8", backend="cpu")[0]


def test_output_cache_stays_under_its_cap_with_varying_shapes():
    cpu_ops.release_cached_outputs()
    assert cpu_ops.cached_output_bytes() == 0
    cap = 128 << 20  # the default; this process does not set RETQUANT_OUTPUT_CACHE_MB
    for T in range(520, 12000, 379):  # 2 - 47 MiB outputs, every one a new shape
        o = _chunk_out(T)
        del o
        assert 0 < cpu_ops.cached_output_bytes() <= cap
    # nearby shapes share a size class: the buffer freed at T=3000 serves T=2900
    o = _chunk_out(3000)
    ptr = o.data_ptr()
    del o
    o = _chunk_out(2900)
    assert o.data_ptr() == ptr and torch.isfinite(o).all()
    del o
    cpu_ops.release_cached_outputs()
    assert cpu_ops.cached_output_bytes() == 0


@pytest.mark.parametrize("mib", ["0", "8", "lots"])
def test_output_cache_size_knob(mib):
    # read once per process, so each value runs in a fresh interpreter
    script = (
        "import torch; from retquant.backends import cpu_ops; from retquant.ops import chunk_retention\n"
        "for T in (600, 1200, 2400, 600):\n"
        "    q = torch.randn(1, T, 2, 8)\n"
        "    o = chunk_retention(q, q, torch.randn(1, T, 2, 512), quant='int8', backend='cpu')[0]\n"
        "    del o\n"
        "    print(cpu_ops.cached_output_bytes())\n"
    )
    env = dict(os.environ, RETQUANT_OUTPUT_CACHE_MB=mib)
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    if mib == "lots":
        assert r.returncode != 0 and "RETQUANT_OUTPUT_CACHE_MB must be a whole number" in r.stderr
        return
    assert r.returncode == 0, r.stderr
    held = [int(x) for x in r.stdout.split()]
    assert all(0 <= b <= int(mib) << 20 for b in held)
    assert (max(held) == 0) == (mib == "0")
