"""Error metrics shared by the tests, the demo, the benchmarks and the study."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ErrorReport:
    rel_l2: float
    cosine: float
    max_abs: float

    def __str__(self) -> str:
        return f"rel_l2={self.rel_l2:.3e} cos={self.cosine:.7f} max_abs={self.max_abs:.3e}"


def compare(out: torch.Tensor, ref: torch.Tensor) -> ErrorReport:
    """Relative L2 error, cosine similarity and max abs error of ``out`` against ``ref``.

    Both are flattened and compared in float64. A zero reference gives rel_l2 = ||out|| and
    cosine 1.0 only when both are zero.

    Example:
        >>> r = compare(torch.ones(4), torch.ones(4))
        >>> (r.rel_l2, r.cosine, r.max_abs)
        (0.0, 1.0, 0.0)
    """
    if out.shape != ref.shape:
        raise ValueError(f"compare: shapes differ, out {list(out.shape)} vs ref {list(ref.shape)}")
    a = out.detach().reshape(-1).to(torch.float64)
    b = ref.detach().reshape(-1).to(torch.float64)
    diff = a - b
    nb = b.norm().item()
    na = a.norm().item()
    rel = diff.norm().item() / nb if nb > 0 else diff.norm().item()
    if na == 0 and nb == 0:
        cos = 1.0
    elif na == 0 or nb == 0:
        cos = 0.0
    else:
        cos = float(torch.dot(a, b).item() / (na * nb))
    max_abs = diff.abs().max().item() if diff.numel() else 0.0
    return ErrorReport(rel_l2=rel, cosine=cos, max_abs=max_abs)
