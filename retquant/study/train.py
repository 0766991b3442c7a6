"""FP32 training of the study's RetNet LM, with a checkpoint cached on disk.

The checkpoint's file name is a hash of the model config, the training config and the training
data, so changing any of them trains again and an unchanged study reuses the weights.

Example:
    >>> from retquant.models import RetNetConfig
    >>> cfg = TrainConfig(steps=2, batch_size=2, seq_len=16)
    >>> model, info = train_or_load(  # doctest: +SKIP
    ...     RetNetConfig(vocab_size=256, hidden_size=32, num_layers=1, num_heads=2), cfg,
    ...     tokens, cache_dir="/tmp/ckpt")
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from retquant.models import RetNetConfig, RetNetLM
from retquant.study.data import train_batches


@dataclass(frozen=True)
class TrainConfig:
    """AdamW with linear warm-up and cosine decay to 10 % of ``lr``; gradient norm clipped at 1."""

    steps: int = 300
    batch_size: int = 8
    seq_len: int = 256
    lr: float = 3e-3
    warmup: int = 20
    weight_decay: float = 0.01
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "batch_size", "seq_len"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive int, got {v!r}")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")


def lr_at(step: int, cfg: TrainConfig, lr: float | None = None) -> float:
    """The learning rate of ``step`` (0-based) under ``cfg``'s schedule (peak ``lr`` or cfg.lr)."""
    peak = cfg.lr if lr is None else lr
    if step < cfg.warmup:
        return peak * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def run_steps(model, batches, steps: int, cfg: TrainConfig, *, lr: float, desc: str) -> list[float]:
    """``steps`` optimizer steps of ``model.loss`` on ``batches``; returns the losses.

    Shared by the fp32 training and the QAT fine-tunes (which pass their own ``lr`` and steps).
    """
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    sched = TrainConfig(**{**asdict(cfg), "steps": steps, "warmup": min(cfg.warmup, max(1, steps // 5))})
    model.train()
    losses = []
    bar = tqdm(range(steps), desc=desc, leave=False)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, sched, lr)
        loss = model.loss(next(batches))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses


# The code a trained checkpoint depends on: the model, its layers, this training loop and the data
# batching. Their source is part of the checkpoint key, so changing any of them retrains.
_TRAINING_SOURCES = (
    "models/retnet.py",
    "nn/retention.py",
    "nn/ffn.py",
    "nn/norm.py",
    "nn/position.py",
    "study/train.py",
    "study/data.py",
)


def _source_digest() -> str:
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for rel in _TRAINING_SOURCES:
        h.update((root / rel).read_bytes())
    return h.hexdigest()


def checkpoint_key(model_cfg: RetNetConfig, cfg: TrainConfig, data_digest: str) -> str:
    """The hash naming the checkpoint of this model, schedule, training data and training code."""
    text = repr(model_cfg) + repr(cfg) + data_digest + torch.__version__ + _source_digest()
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def train_or_load(
    model_cfg: RetNetConfig,
    cfg: TrainConfig,
    tokens: torch.Tensor,
    *,
    cache_dir: Path | str,
    data_digest: str,
) -> tuple[RetNetLM, dict]:
    """The fp32 model trained on ``tokens`` (from the cache when its checkpoint exists) and a
    dict describing the run (key, path, cached, seconds, first/last losses)."""
    if model_cfg.retention_quant is not None:
        raise ValueError("the study trains the float model: model_cfg.retention_quant must be None")
    key = checkpoint_key(model_cfg, cfg, data_digest)
    path = Path(cache_dir) / f"retnet-{key}.pt"
    torch.manual_seed(cfg.seed)
    model = RetNetLM(model_cfg)
    if path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["state_dict"])
        model.eval()
        return model, {**saved["info"], "cached": True, "path": str(path)}
    t0 = time.perf_counter()
    losses = run_steps(
        model,
        train_batches(tokens, cfg.seq_len, cfg.batch_size, cfg.seed),
        cfg.steps,
        cfg,
        lr=cfg.lr,
        desc="train fp32",
    )
    info = {
        "key": key,
        "seconds": time.perf_counter() - t0,
        "loss_first": losses[0],
        "loss_last10": sum(losses[-10:]) / len(losses[-10:]),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"state_dict": model.state_dict(), "info": info}, tmp)
    tmp.replace(path)  # atomic: a killed run never leaves a half-written checkpoint
    return model, {**info, "cached": False, "path": str(path)}
