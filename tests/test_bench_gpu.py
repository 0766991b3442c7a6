"""The GPU benchmark's pieces that run anywhere: its PyTorch baseline and its no-GPU exit."""

from __future__ import annotations

import pytest
import torch

from bench.torch_chunk import torch_chunk_retention
from retquant.decay import default_g_gamma
from retquant.ops import chunk_retention


def test_torch_chunk_baseline_matches_float64_spec():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 128, 3, 16, generator=g) for _ in range(3))
    o = torch_chunk_retention(q, k, v, default_g_gamma(3), 0.25)
    ref, _ = chunk_retention(q.double(), k.double(), v.double(), scale=0.25)
    assert torch.allclose(o.double(), ref, atol=1e-4, rtol=1e-4)


def test_torch_chunk_baseline_rejects_ragged_t():
    q = torch.randn(1, 65, 1, 16)
    with pytest.raises(ValueError, match="multiple of chunk_size"):
        torch_chunk_retention(q, q, q, default_g_gamma(1), 0.25)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU exit")
def test_gpu_bench_exits_with_a_message_without_gpu():
    from bench.gpu import main

    with pytest.raises(SystemExit, match="no CUDA GPU"):
        main([])
