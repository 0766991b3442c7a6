"""The main job: every retention form's accuracy on a small shape, then the CPU benchmark.

    python -m bench            # demo (B=2 T=1000 H=4 K=V=64), then bench.cpu (B=4 T=4096 H=8 K=V=128)
    python -m bench --quick    # the same with bench.cpu's small shape

The GPU benchmark is separate: ``python -m bench.gpu`` (needs a CUDA device).
"""

from __future__ import annotations

import sys

from bench import cpu, demo


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv != ["--quick"]:
        raise SystemExit(
            f"usage: python -m bench [--quick]  (got {argv}); run bench.demo / bench.cpu for options"
        )
    print("== every form vs float64 (python -m bench.demo) ==", flush=True)
    demo.main([])
    print("\n== CPU benchmark (python -m bench.cpu" + (" --quick" if argv else "") + ") ==", flush=True)
    cpu.main(argv)


if __name__ == "__main__":
    main()
