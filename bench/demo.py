"""Run every retention form (float and int8) on one shape; print error vs float64 and time.

python -m bench.demo [--B 2 --T 1024 --H 4 --K 64 --V 64 --threads N --repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from retquant.metrics import compare
from retquant.ops import chunk_retention, fused_recurrent_retention, parallel_retention


def _time(fn, repeats):
    times = []
    out = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--B", type=int, default=2)
    ap.add_argument("--T", type=int, default=1000)
    ap.add_argument("--H", type=int, default=4)
    ap.add_argument("--K", type=int, default=64)
    ap.add_argument("--V", type=int, default=64)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--backend", default=None, help="auto/reference/cpu/triton (default: RETQUANT_BACKEND or auto)"
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(args.B, args.T, args.H, args.K, generator=g)
    k = torch.randn(args.B, args.T, args.H, args.K, generator=g)
    v = torch.randn(args.B, args.T, args.H, args.V, generator=g)
    print(
        f"shape B={args.B} T={args.T} H={args.H} K={args.K} V={args.V}; "
        f"threads={torch.get_num_threads()}; median of {args.repeats}"
    )
    ref, _ = chunk_retention(q.double(), k.double(), v.double(), backend="reference")
    rows = [
        ("parallel  float64", lambda: parallel_retention(q.double(), k.double(), v.double())[0]),
        ("recurrent float64", lambda: fused_recurrent_retention(q.double(), k.double(), v.double())[0]),
        ("chunk     float64", lambda: chunk_retention(q.double(), k.double(), v.double())[0]),
    ]
    for preset in ("int16", "int8", "int8_smooth", "int4"):
        rows.append(
            (
                f"chunk     {preset}",
                lambda p=preset: chunk_retention(q, k, v, quant=p, backend=args.backend)[0],
            )
        )
    rows.append(
        ("recurrent int8", lambda: fused_recurrent_retention(q, k, v, quant="int8", backend=args.backend)[0])
    )
    rows.append(
        ("parallel  int8", lambda: parallel_retention(q, k, v, quant="int8", backend=args.backend)[0])
    )
    print(f"{'form':<20} {'time [ms]':>10}  error vs float64 chunk")
    for name, fn in rows:
        out, t = _time(fn, args.repeats)
        print(f"{name:<20} {t * 1e3:>10.1f}  {compare(out, ref)}")


if __name__ == "__main__":
    main()
