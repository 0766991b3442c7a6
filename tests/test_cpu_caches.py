"""The CPU backend's caches stay bounded: decay tables per g_gamma, freed output buffers."""

from __future__ import annotations

import pytest
import torch

from retquant.backends import cpu_extension, cpu_ops
from retquant.ops import chunk_retention
from retquant.quant.config import RetentionQuantConfig
from retquant.spec.int_chunk import int_chunk_retention

_ERR = cpu_extension.load_error()
pytestmark = pytest.mark.skipif(_ERR is not None, reason=f"CPU extension unavailable: {_ERR}")


def test_decay_table_cache_is_bounded_lru():
    # A model with learned decays passes a new g_gamma per call: the cache must not grow with them.
    H, K, V = 2, 16, 8
    q, k, v = torch.randn(1, 70, H, K), torch.randn(1, 70, H, K), torch.randn(1, 70, H, V)
    cpu_ops._TABLE_CACHE.clear()
    for i in range(3 * cpu_ops.TABLE_CACHE_SIZE):
        g = torch.tensor([-0.01 - 1e-4 * i, -0.2 - 1e-3 * i], dtype=torch.float64)
        o, s = chunk_retention(q, k, v, output_final_state=True, g_gamma=g, quant="int8", backend="cpu")
        assert len(cpu_ops._TABLE_CACHE) <= cpu_ops.TABLE_CACHE_SIZE
        if i % 7 == 0:  # results stay right, for entries computed fresh and evicted alike
            o_ref, s_ref, _ = int_chunk_retention(q, k, v, g, K**-0.5, RetentionQuantConfig())
            assert torch.equal(o, o_ref) and torch.equal(s, s_ref)
    assert len(cpu_ops._TABLE_CACHE) == cpu_ops.TABLE_CACHE_SIZE
    # least recently used goes first: a hit moves its entry to the back
    first = next(iter(cpu_ops._TABLE_CACHE))
    cpu_ops.decay_tables(torch.tensor(first[0], dtype=torch.float64), ())
    assert next(reversed(cpu_ops._TABLE_CACHE)) == first
