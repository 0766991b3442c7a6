import pytest
import torch


@pytest.fixture
def gen():
    """A fresh, seeded generator per test (fresh random inputs, reproducible on failure)."""
    return torch.Generator().manual_seed(torch.seed() % 2**31)


def rand_qkv(gen, B, T, H, K, V, dtype=torch.float32):
    q = torch.randn(B, T, H, K, generator=gen, dtype=dtype)
    k = torch.randn(B, T, H, K, generator=gen, dtype=dtype)
    v = torch.randn(B, T, H, V, generator=gen, dtype=dtype)
    return q, k, v
