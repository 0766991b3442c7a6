"""Timing of a shape's rows: a warm-up round (which also checks accuracy and measures memory),
then round-robin repeats (each round runs every row once, so machine noise hits all alike),
medians, and the ratios against the best peer and the machine's measured rates.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import sys
import time

from torch.profiler import ProfilerActivity, profile

from bench.suite.rows import Row
from retquant.backends import cpu_extension, cpu_ops


@contextlib.contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 (the profiler's native start/stop log lines)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_alloc_bytes(fn) -> int:
    """Peak of the bytes held (allocated net of freed) by torch's CPU allocator during one
    ``fn()``, at operator granularity: the profiler attributes each allocation and free to the
    innermost operator around it (its self memory) or to a ``[memory]`` event; their running
    sum in start order peaks here. The CPU kernels' large outputs bypass that allocator (the
    extension maps them itself and keeps freed ones for reuse, csrc/output_alloc.cpp), so the
    cache is emptied first and what it holds after the call -- every such buffer the call
    mapped -- is added (an upper bound for them: all counted as held at once)."""
    ext = cpu_extension.load_error() is None
    if ext:
        cpu_ops.release_cached_outputs()
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
        del out
    cur = peak = 0
    for e in sorted(prof.events(), key=lambda e: e.time_range.start):
        cur += e.self_cpu_memory_usage
        peak = max(peak, cur)
    return peak + (cpu_ops.cached_output_bytes() if ext else 0)


def time_rows(rows: list[Row], repeats: int, tick=None, memory: bool = True) -> list[dict]:
    """Run ``rows`` (one shape) and return one result dict per row (skipped rows included).

    ``tick()`` is called after every run (the progress bar). A row whose ``fn`` raises is
    reported as skipped with the error, the others still run.
    """
    results = {r.name: _base(r) for r in rows}
    live = [r for r in rows if r.skip is None]
    for r in list(live):  # warm-up round: accuracy, memory
        res = results[r.name]
        try:
            out = r.fn()
            if r.check is not None:
                res["rel_l2"] = float(r.check(out))
            del out
            if memory:
                res["peak_alloc_mib"] = peak_alloc_bytes(r.fn) / 2**20
            if r.saved is not None:
                res["saved_mib"] = r.saved() / 2**20
        except Exception as e:  # noqa: BLE001 -- a failing row is reported, the suite goes on
            res["skip"] = f"error: {type(e).__name__}: {e}"
            live.remove(r)
        if tick:
            tick()
    times: dict[str, list[float]] = {r.name: [] for r in live}
    for i in range(repeats):
        for r in live:
            if results[r.name]["skip"] is not None or (r.max_repeats is not None and i >= r.max_repeats):
                continue
            t0 = time.perf_counter()
            try:
                r.fn()
            except Exception as e:  # noqa: BLE001 -- reported as skipped, the suite goes on
                results[r.name]["skip"] = f"error while timing: {type(e).__name__}: {e}"
                continue
            times[r.name].append(time.perf_counter() - t0)
            if tick:
                tick()
    for r in live:
        res = results[r.name]
        if res["skip"] is not None or not times[r.name]:
            continue
        res["ms"] = statistics.median(times[r.name]) * 1e3 / r.calls
        res["min_ms"] = min(times[r.name]) * 1e3 / r.calls
        res["repeats"] = len(times[r.name])
    return [results[r.name] for r in rows]


def runs_of(rows: list[Row], repeats: int) -> int:
    """How many ``fn()`` calls :func:`time_rows` makes (for the progress bar's total)."""
    n = 0
    for r in rows:
        if r.skip is None:
            n += 1 + (repeats if r.max_repeats is None else min(repeats, r.max_repeats))
    return n


def add_ratios(results: list[dict], rates: dict[str, float | None]) -> None:
    """``vs_best_peer`` (best peer's ms / row's ms, > 1 = faster than every peer) per kind, and
    ``roofline`` (the row's flops per second / the measured rate named by its ``peak``)."""
    best: dict[str, dict] = {}
    for r in results:
        if r["peer"] and "ms" in r and (r["kind"] not in best or r["ms"] < best[r["kind"]]["ms"]):
            best[r["kind"]] = r
    for r in results:
        if "ms" not in r:
            continue
        b = best.get(r["kind"])
        r["best_peer"] = b["name"] if b else None
        r["vs_best_peer"] = b["ms"] / r["ms"] if b else None
        rate = rates.get(r["peak"]) if r["peak"] else None
        if r["flops"] and rate:
            r["gops"] = r["flops"] / (r["ms"] * 1e-3) / 1e9
            r["roofline"] = r["gops"] / rate


def _base(r: Row) -> dict:
    return {
        "name": r.name,
        "kind": r.kind,
        "peer": r.peer,
        "backend": r.backend,
        "flops": r.flops,
        "peak": r.peak,
        "note": r.note,
        "skip": r.skip,
        "ops_per_call": r.calls,
    }


def finite_positive(x) -> bool:
    """True for a finite number > 0 (the tests' check of every ratio)."""
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0
