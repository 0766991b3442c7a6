"""The main job: the benchmark suite (:mod:`bench.suite`).

    python -m bench                # default sweep (a few minutes on 2 cores)
    python -m bench --quick        # smallest shape, about a minute
    python -m bench --full         # T x K=V x (B, H) sweep
    python -m bench --help         # every option (--shape, --lm, --repeats, --threads, --out)

Writes bench/results/suite.{json,md,png} and prints the headline table. The single-topic
benchmarks stay runnable on their own: bench.demo (accuracy of every form), bench.cpu,
bench.float_cpu, bench.train, bench.linear, bench.qat_lm, bench.gpu (CUDA).
"""

from __future__ import annotations

from bench.suite.cli import main

if __name__ == "__main__":
    main()
