"""What the suite records about the machine, and the GEMM rates its roofline fractions use.

``int8`` peak: the extension's register-only int8 loop (``retquant::int8_peak_gops``, via
``bench.cpu.int8_peaks``; none for the portable path). ``fp32`` rate: a measured 1024^3
``torch.mm`` (fastest of repeats: a peak, like the int8 one). Both are measured in the same run
as the rows, at its start and its end; the suite divides by the higher of the two (on a shared
machine one of them may have been slowed by other work).
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import time
from pathlib import Path

import torch

from bench.cpu import int8_peaks
from bench.train import native_bf16
from retquant.backends import cpu_extension
from retquant.backends.cpu_extension import cpu_name

REPO = Path(__file__).resolve().parents[2]


def commit() -> dict:
    """The checkout's commit hash and whether the work tree has uncommitted changes."""

    def git(*args):
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()

    try:
        return {"hash": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.SubprocessError):
        return {"hash": "unknown (not a git checkout)", "dirty": None}


def info() -> dict:
    """CPU name, kernel ISA and the ISAs this CPU runs, threads, torch, bf16 support, GPU, date."""
    err = cpu_extension.load_error()
    bf16_ok, bf16_why = native_bf16()
    return {
        "cpu": cpu_name(),
        "arch": platform.machine(),
        "isa": cpu_extension.isa() if err is None else "unavailable",
        "cpu_isas": list(cpu_extension.cpu_isas()) if err is None else [],
        "extension_error": err,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "native_bf16": bf16_ok,
        "bf16": bf16_why,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "commit": commit(),
        "load_avg_start": load_avg(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def load_avg() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (other work on a shared machine skews timings)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def fp32_gemm_gflops(n: int = 1024, repeats: int = 10) -> float:
    """GFLOP/s of an ``n x n x n`` float32 ``torch.mm``, fastest of ``repeats``."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best / 1e9


def rates() -> dict[str, float | None]:
    """GOP/s the roofline fractions divide by: ``int8`` (None on the portable path or without
    the extension) and ``fp32``."""
    isa = cpu_extension.isa() if cpu_extension.load_error() is None else "portable"
    int8 = int8_peaks([isa]).get(isa) if isa != "portable" else None
    return {"int8": float(int8) if int8 else None, "fp32": fp32_gemm_gflops()}


def best_rates(runs: list[dict]) -> dict[str, float | None]:
    """Per rate, the highest of several :func:`rates` measurements (None stays None)."""
    return {k: max((r[k] for r in runs if r[k] is not None), default=None) for k in runs[0]}
