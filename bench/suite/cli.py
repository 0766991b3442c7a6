"""``python -m bench``: the command line of the benchmark suite (see :mod:`bench.suite`).

Default: two op shapes (B=2 H=4: T=512 K=V=64 and T=2048 K=V=128) and the small LM of
bench.qat_lm (hidden 256, 4 layers, 8 heads, B=8 T=512: the QAT library's benchmark shape), 5
repeats; a few minutes on 2 cores. ``--quick``: the smallest op shape and a tiny LM, 3 repeats
(about a minute). ``--full``: T in {512, 2048, 8192} x K=V in {64, 128} x (B, H) in {(2, 4),
(4, 8)} and the same LM.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from bench.qat_lm import SHAPE as LM_FULL
from bench.suite import machine, report
from bench.suite.kernel_rows import decode_rows, fwd_rows, gpu_rows
from bench.suite.layer_rows import layer_rows
from bench.suite.runner import add_ratios, runs_of, time_rows
from bench.suite.train_rows import lm_rows, train_op_rows
from bench.train import make_inputs
from retquant.backends import cpu_extension
from retquant.ops import chunk_retention

DEFAULT = [(2, 512, 4, 64, 64), (2, 2048, 4, 128, 128)]
QUICK = [(2, 512, 4, 64, 64)]
FULL = [(B, T, H, K, K) for B, H in ((2, 4), (4, 8)) for T in (512, 2048, 8192) for K in (64, 128)]
LM_QUICK = {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "T": 128, "B": 2}
OUT = Path(__file__).resolve().parents[1] / "results"


def _ints(text: str, n: int, what: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(x) for x in text.split(","))
    except ValueError:
        vals = ()
    if len(vals) != n or min(vals) < 1:
        raise argparse.ArgumentTypeError(
            f"{what} wants {n} positive integers separated by commas, got {text!r}"
        )
    return vals


def _shape(text: str) -> tuple[int, ...]:
    B, T, H, K, V = _ints(text, 5, "--shape B,T,H,K,V")
    if T % 64:
        raise argparse.ArgumentTypeError(f"--shape: T={T} must be a multiple of 64 (the chunk size)")
    return B, T, H, K, V


def _lm(text: str) -> dict:
    hidden, layers, heads, T, B = _ints(text, 5, "--lm hidden,layers,heads,T,B")
    if hidden % heads or T % 64:
        raise argparse.ArgumentTypeError(
            f"--lm: hidden must divide by heads and T be a multiple of 64: {text!r}"
        )
    return {"hidden_size": hidden, "num_layers": layers, "num_heads": heads, "T": T, "B": B}


def parse(argv) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smallest shape, tiny LM, 3 repeats")
    size.add_argument("--full", action="store_true", help="the full sweep (long)")
    ap.add_argument(
        "--shape", type=_shape, action="append", metavar="B,T,H,K,V", help="op shape (repeatable)"
    )
    ap.add_argument("--lm", type=_lm, metavar="hidden,layers,heads,T,B", help="the small LM's shape")
    ap.add_argument("--repeats", type=int, help="round-robin repeats (default 5, --quick 3)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", type=Path, default=OUT, help=f"output folder (default {OUT})")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 5
    if args.repeats < 1 or args.threads < 1:
        ap.error("--repeats and --threads must be >= 1")
    preset = QUICK if args.quick else FULL if args.full else DEFAULT
    args.shapes = args.shape or preset
    if args.lm is None:
        args.lm = LM_QUICK if args.quick else LM_FULL
    return args


def _label(shape) -> str:
    return "B={} T={} H={} K={} V={}".format(*shape)


def op_rows(shape, smallest: bool, bf16_native: bool) -> list:
    """Every op-level row of one shape (forward, decode, training, layer, GPU)."""
    x = make_inputs(shape, torch.float32)
    ref = None
    if smallest:
        ref = chunk_retention(
            x.q.double(), x.k.double(), x.v.double(), x.scale, g_gamma=x.g, backend="reference"
        )[0]
    return (
        fwd_rows(x, smallest, bf16_native, ref)
        + decode_rows(x)
        + train_op_rows(x)
        + layer_rows(*shape)
        + gpu_rows(x)
    )


def main(argv=None) -> dict:
    """Run the suite; print the headline; write the outputs; return the report."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    err = cpu_extension.load_error()  # builds the extension on first use
    if err is not None:
        raise SystemExit(f"the CPU extension is unavailable: {err}")
    info = machine.info()
    print(
        f"retquant benchmark suite: {info['cpu']}; ISA {info['isa']} "
        f"(CPU runs: {', '.join(info['cpu_isas'])}); threads {info['threads']}; "
        f"torch {info['torch']}; CUDA: {info['cuda'] or 'none'}",
        flush=True,
    )
    rate_runs = [machine.rates()]
    smallest = min(args.shapes, key=lambda s: s[0] * s[1] * s[2] * s[3] * s[4])
    plan = [(_label(s), s, lambda s=s: op_rows(s, s == smallest, info["native_bf16"])) for s in args.shapes]
    lm = args.lm
    plan.append(
        (
            f"LM hidden={lm['hidden_size']} layers={lm['num_layers']} heads={lm['num_heads']} "
            f"B={lm['B']} T={lm['T']}",
            lm,
            lambda: lm_rows(lm),
        )
    )
    groups = []
    # rows are built one shape at a time (inputs and models of one shape in memory at once), so
    # the progress bar's total grows as each shape's runs become known
    with tqdm(total=0, desc="bench", unit="run", disable=args.no_progress, file=sys.stderr) as bar:
        for i, (label, shape, make) in enumerate(plan):
            bar.set_postfix_str(f"{i + 1}/{len(plan)} {label}")
            rows = make()
            bar.total += runs_of(rows, args.repeats)
            bar.refresh()
            results = time_rows(rows, args.repeats, tick=lambda: bar.update(1))
            del rows
            groups.append(
                {
                    "label": label,
                    "shape": shape if isinstance(shape, dict) else dict(zip("BTHKV", shape)),
                    "rows": results,
                }
            )
    rate_runs.append(machine.rates())
    info["load_avg_end"] = machine.load_avg()
    rates = machine.best_rates(rate_runs)
    for g in groups:
        add_ratios(g["rows"], rates)
    rep = {
        "command": "python -m bench" + ("" if not argv else " " + shlex.join(argv)),
        "machine": info,
        "rates": rates,
        "rate_runs": rate_runs,
        "repeats": args.repeats,
        "wall_s": time.perf_counter() - t_start,
        "groups": groups,
    }
    paths = report.write(rep, args.out)
    print("\n" + report.machine_line(rep) + "\n")
    print(report.headline(rep))
    print("\nwrote " + ", ".join(str(p) for p in paths))
    return rep
