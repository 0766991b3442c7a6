"""The study end to end: data, fp32 training (cached), every strategy, the op-level sweeps,
and the results dict that :mod:`retquant.study.report` writes out.

Example:
    >>> cfg = StudyConfig.preset("tiny")
    >>> results = run_study(cfg, texts_dir="tests/data/shakespeare", cache_dir="/tmp/c")  # doctest: +SKIP
"""

from __future__ import annotations

import platform
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from retquant.backends import cpu_extension
from retquant.models import RetNetConfig
from retquant.study import data as D
from retquant.study.evaluate import evaluate, paired_delta
from retquant.study.op_sweep import capture_qkv, chunk_sweep, decode_growth
from retquant.study.strategies import StudyContext, build_strategies
from retquant.study.train import TrainConfig, train_or_load

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class StudyConfig:
    """Sizes of one study run (see :meth:`preset` for ``quick``, ``full`` and ``tiny``)."""

    mode: str
    hidden_size: int
    num_layers: int
    num_heads: int
    train: TrainConfig
    eval_windows: int | None  # None: every validation window
    eval_batch: int = 8
    calib_batches: int = 2
    qat_steps: int = 30
    qat_lr: float = 5e-4
    sweep_windows: int = 2
    sweep_buckets: int = 4
    decode_buckets: int = 8
    strategies: tuple[str, ...] | None = field(default=None)  # None: all

    @staticmethod
    def preset(mode: str) -> StudyConfig:
        """``quick`` (≤ 10 min on 2 cores), ``full`` (≈ 1 h: bigger model, longer training) or
        ``tiny`` (seconds; for tests)."""
        if mode == "quick":
            return StudyConfig("quick", 128, 2, 4, TrainConfig(steps=800, batch_size=8, seq_len=256), 192)
        if mode == "full":
            return StudyConfig(
                "full",
                256,
                4,
                8,
                TrainConfig(steps=2000, batch_size=16, seq_len=512, lr=2e-3, warmup=100),
                256,
                qat_steps=200,
                calib_batches=4,
                sweep_windows=4,
                decode_buckets=16,
            )
        if mode == "tiny":
            return StudyConfig(
                "tiny",
                32,
                1,
                2,
                TrainConfig(steps=3, batch_size=2, seq_len=32, warmup=1),
                4,
                eval_batch=4,
                calib_batches=1,
                qat_steps=1,
                sweep_windows=1,
                sweep_buckets=2,
                decode_buckets=2,
            )
        raise ValueError(f"mode must be 'quick', 'full' or 'tiny', got {mode!r}")

    def model_config(self) -> RetNetConfig:
        return RetNetConfig(
            vocab_size=D.VOCAB_SIZE,
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
        )


def git_state() -> tuple[str, bool]:
    """``(commit, dirty)`` of the code (changes under ``results/`` do not count as dirty)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!results"],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
    except OSError:
        return "unknown", True
    if head.returncode != 0:
        return "unknown", True
    return head.stdout.strip(), bool(status.stdout.strip())


def _isa() -> str:
    try:
        return cpu_extension.isa()
    except (RuntimeError, ValueError) as e:
        return f"unavailable ({e})"


def run_study(
    cfg: StudyConfig,
    *,
    texts_dir: Path | str,
    cache_dir: Path | str,
    command: str = "python -m retquant.study",
    source: str = f"{D.PACKAGE}=={D.VERSION} sdist",
) -> dict:
    """Run the whole study; returns the results dict (see :func:`retquant.study.report.write_all`)."""
    t_start = time.perf_counter()
    commit, dirty = git_state()  # at the start: the code that runs, not an edit made meanwhile
    timings = {}
    splits = D.split_works(D.load_works(texts_dir))
    tokens = {k: D.encode(v) for k, v in splits.text.items()}
    T = cfg.train.seq_len
    windows = D.eval_windows(tokens["validation"], T, cfg.eval_windows)

    t = time.perf_counter()
    model, train_info = train_or_load(
        cfg.model_config(), cfg.train, tokens["train"], cache_dir=cache_dir, data_digest=splits.digest()
    )
    timings["train"] = time.perf_counter() - t

    # calibration batches come from the training split (a user calibrates on data they own,
    # never on the evaluation text); QAT sees the training split with its own seed
    calib_iter = D.train_batches(tokens["train"], T, cfg.eval_batch, cfg.train.seed + 1)
    ctx = StudyContext(
        model_cfg=cfg.model_config(),
        state_dict=model.state_dict(),
        calib=[next(calib_iter) for _ in range(cfg.calib_batches)],
        qat_batches=lambda: D.train_batches(tokens["train"], T, cfg.train.batch_size, cfg.train.seed + 2),
        train_cfg=cfg.train,
        qat_steps=cfg.qat_steps,
        qat_lr=cfg.qat_lr,
    )
    strategies = build_strategies()
    if cfg.strategies is not None:
        unknown = set(cfg.strategies) - {s.name for s in strategies}
        if unknown:
            raise ValueError(f"unknown strategies {sorted(unknown)}")
        strategies = [s for s in strategies if s.name in cfg.strategies or s.family == "fp32"]

    rows = []
    bar = tqdm(strategies, desc="strategies")
    for s in bar:
        bar.set_postfix_str(s.name)
        t = time.perf_counter()
        torch.manual_seed(cfg.train.seed)  # stochastic pieces (none by default) start alike
        qmodel = s.build(ctx)
        built = time.perf_counter() - t
        r = evaluate(qmodel, windows, batch_size=cfg.eval_batch)
        rows.append(
            {
                "name": s.name,
                "family": s.family,
                "linears": s.linears,
                "retention": s.retention,
                "what": s.what,
                "method": s.method,
                "setting": s.setting,
                **r,
                "seconds_build": built,
                "seconds_eval": time.perf_counter() - t - built,
            }
        )
    fp = rows[0]["window_nll"]
    for r in rows:  # paired over the same windows: the noise of each Δ is its standard error
        r["delta_ppl_pct"], r["delta_ppl_se_pct"] = paired_delta(r["window_nll"], fp)
    timings["strategies"] = sum(r["seconds_build"] + r["seconds_eval"] for r in rows)

    t = time.perf_counter()
    sweep_ids = D.eval_windows(tokens["validation"], T, cfg.sweep_windows)[:, :-1]
    captures = capture_qkv(ctx.fresh(), sweep_ids)
    op_rows = chunk_sweep(captures, buckets=cfg.sweep_buckets)
    dec_rows = decode_growth(captures, buckets=cfg.decode_buckets)
    timings["op_sweep"] = time.perf_counter() - t

    timings["total"] = time.perf_counter() - t_start
    return {
        "meta": {
            "mode": cfg.mode,
            "command": command,
            "commit": commit,
            "dirty": dirty,
            "cpu": cpu_extension.cpu_name(),
            "isa": _isa(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "seconds_total": timings["total"],
            "timings": timings,
        },
        "config": {
            "model": asdict(cfg.model_config()),
            "train": asdict(cfg.train),
            "study": {k: v for k, v in asdict(cfg).items() if k != "train"},
        },
        "data": {
            "source": source,
            "tokenizer": "bytes (UTF-8, vocab 256)",
            "split_rule": f"sorted work names; index % {D.SPLIT_PERIOD} == {D.VALIDATION_SLOT} -> "
            f"validation, == {D.TEST_SLOT} -> test, else train",
            "works": {k: list(v) for k, v in splits.works.items()},
            "bytes": splits.sizes(),
            "digest": splits.digest(),
        },
        "train": train_info,
        "eval": {"windows": int(windows.shape[0]), "seq_len": T, "tokens": rows[0]["tokens"]},
        "strategies": rows,
        "op_sweep": op_rows,
        "decode": dec_rows,
    }
