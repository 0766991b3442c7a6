"""CPU benchmark of the int8 linear layer kernel against float and int8 PyTorch peers.

    python -m bench.linear [--threads 2] [--repeats 7] [--M 4096] [--quick]

Shapes of a small RetNet LM train step (M = 8 x 512 tokens; (K, N) in {(256, 256), (256, 512),
(256, 1024), (512, 256), (1024, 256)}) and one larger (M = 4096, K = N = 1024). Timed, as the
median of ``--repeats`` runs after two warm-up calls:

- ``int8 packed``: :func:`retquant.backends.int8_linear.int8_linear` with a prepacked weight
  (inference: GEMM + epilogue, per-token activation and per-channel weight scales, bias);
- ``int8 raw w``: the same with raw weight codes, packed inside every call (QAT);
- ``quant+int8``: :func:`quantize_per_token` of a float32 input, then ``int8 packed``;
- ``fp32 F.linear`` and ``bf16 F.linear`` (``torch.nn.functional.linear``);
- ``torch._int_mm`` (int8 x int8 -> int32, no epilogue).

bf16 (emulated on CPUs without native bf16) and ``_int_mm`` (no fast path on AVX2) are so slow
on AVX2 machines that they are timed on the first 512 rows only, 3 runs (marked ``*``): a rate,
not the full product. GOP/s counts 2 M N K; ratios are against fp32 ``F.linear`` and against
the faster float peer.
"""

from __future__ import annotations

import argparse
import platform

import torch
import torch.nn.functional as F

from bench.cpu_peers import median_time
from retquant.backends import cpu_extension
from retquant.backends.cpu_extension import cpu_name
from retquant.backends.int8_linear import int8_linear, pack_weight, quantize_per_token

SHAPES = [(256, 256), (256, 512), (256, 1024), (512, 256), (1024, 256), (1024, 1024)]
SLOW_ROWS, SLOW_REPEATS = 512, 3


def _int_mm_runs() -> bool:
    try:
        torch._int_mm(torch.ones(32, 32, dtype=torch.int8), torch.ones(32, 32, dtype=torch.int8))
        return True
    except (RuntimeError, AttributeError):
        return False


def bench_shape(M: int, K: int, N: int, repeats: int, g: torch.Generator) -> dict[str, float]:
    """GOP/s of every variant on one shape (keys as the table's columns)."""
    x = torch.randn(M, K, generator=g)
    w = torch.randn(N, K, generator=g) / K**0.5
    bias = torch.randn(N, generator=g)
    a_codes, a_scale = quantize_per_token(x)
    w_codes, w_scale = quantize_per_token(w)  # per output channel: the rows of w
    pw = pack_weight(w_codes)
    gop = 2 * M * N * K / 1e9

    def rate(fn, rows=M, reps=repeats):
        return gop * rows / M / median_time(fn, reps, warmup=2)

    r = {
        "int8 packed": rate(lambda: int8_linear(a_codes, a_scale, pw, w_scale, bias)),
        "int8 raw w": rate(lambda: int8_linear(a_codes, a_scale, w_codes, w_scale, bias)),
        "quant+int8": rate(lambda: int8_linear(*quantize_per_token(x), pw, w_scale, bias)),
        "fp32": rate(lambda: F.linear(x, w, bias)),
    }
    xs, wb, bb = x[:SLOW_ROWS].bfloat16(), w.bfloat16(), bias.bfloat16()
    rows = xs.shape[0]
    r["bf16*"] = rate(lambda: F.linear(xs, wb, bb), rows, SLOW_REPEATS)
    if _int_mm_runs():
        a_s, wt = a_codes[:SLOW_ROWS].contiguous(), w_codes.t().contiguous()
        r["_int_mm*"] = rate(lambda: torch._int_mm(a_s, wt), rows, SLOW_REPEATS)
    return r


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--M", type=int, default=4096)
    ap.add_argument("--quick", action="store_true", help="M=512, 3 repeats (smoke run)")
    args = ap.parse_args(argv)
    if args.quick:
        args.M, args.repeats = 512, 3
    err = cpu_extension.load_error()
    if err is not None:
        raise SystemExit(f"the CPU extension is unavailable: {err}")
    torch.set_num_threads(args.threads)
    isa = cpu_extension.isa()
    print(
        f"machine: {platform.machine()}, {cpu_name()}; torch {torch.__version__}; "
        f"threads={torch.get_num_threads()}; kernel ISA={isa} (this CPU runs: "
        f"{', '.join(cpu_extension.cpu_isas())})"
    )
    peak = None
    if isa != "portable":
        peak = float(cpu_extension.ops().int8_peak_gops(cpu_extension.isa_code()))
        print(f"int8 peak (register-only inner loop, all threads): {isa} {peak:.0f} GOP/s")
    print(f"median of {args.repeats} runs; * = first {SLOW_ROWS} rows, {SLOW_REPEATS} runs (slow peers)")
    g = torch.Generator().manual_seed(0)
    cols = None
    for K, N in SHAPES:
        r = bench_shape(args.M, K, N, args.repeats, g)
        if cols is None:
            cols = list(r)
            head = "shape M x K x N      " + "".join(f"{c:>12}" for c in cols)
            print("\nGOP/s (2 M N K / time)\n" + head + "   %peak  vs fp32  vs best float")
        best_float = max(r["fp32"], r["bf16*"])
        pct = f"{100 * r['int8 packed'] / peak:6.0f}%" if peak else "      -"
        line = f"{args.M:>5} x {K:>4} x {N:>4}   " + "".join(f"{r[c]:12.1f}" for c in cols)
        line += f"  {pct}  {r['int8 packed'] / r['fp32']:6.2f}x  {r['int8 packed'] / best_float:9.2f}x"
        print(line, flush=True)
    print("ratios: int8 packed (GEMM + epilogue) over fp32 F.linear and over the faster float peer")


if __name__ == "__main__":
    main()
