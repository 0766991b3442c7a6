"""Validation perplexity and bits per byte over fixed windows.

Every window ``[T + 1]`` scores its ``T`` next-byte predictions (the first byte of a window has no
context, the same for every strategy). With the byte tokenizer a token is a byte, so
bits per byte = mean NLL / ln 2 and perplexity = exp(mean NLL) (per byte).

Example:
    >>> from retquant.models import RetNetConfig, RetNetLM
    >>> m = RetNetLM(RetNetConfig(vocab_size=256, hidden_size=32, num_layers=1, num_heads=2))
    >>> r = evaluate(m, torch.randint(0, 256, (3, 17)), batch_size=2)
    >>> sorted(r)
    ['bpb', 'nll', 'ppl', 'tokens', 'window_nll']
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


@torch.no_grad()
def evaluate(model, windows: torch.Tensor, *, batch_size: int = 8) -> dict:
    """Mean next-byte NLL (nats), perplexity and bits per byte of ``model`` on ``windows``."""
    if not isinstance(windows, torch.Tensor) or windows.dim() != 2 or windows.shape[1] < 2:
        raise ValueError("windows must be an integer tensor [N, T + 1] with T >= 1")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    was_training = model.training
    model.eval()
    per_window = []
    for i in range(0, windows.shape[0], batch_size):
        ids = windows[i : i + batch_size]
        logits = model(ids[:, :-1])
        nll = F.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="none")
        # summed in float64: thousands of windows must not lose the last digits
        per_window += nll.double().view(ids.shape[0], -1).mean(1).tolist()
    model.train(was_training)
    count = windows.shape[0] * (windows.shape[1] - 1)
    mean = sum(per_window) / len(per_window)  # equal-length windows: the mean over all bytes
    return {
        "nll": mean,
        "ppl": math.exp(mean),
        "bpb": mean / math.log(2),
        "tokens": count,
        "window_nll": per_window,
    }


def paired_delta(rows_nll: list[float], base_nll: list[float]) -> tuple[float, float]:
    """``(Δ perplexity %, its standard error %)`` of a strategy against the baseline evaluated
    on the same windows: the mean per-window NLL difference d gives Δ = exp(mean d) - 1, and
    the paired standard error std(d) / sqrt(n) (delta method) the noise of that figure.

    Example:
        >>> round(paired_delta([1.1, 1.3], [1.0, 1.2])[0], 2)
        10.52
    """
    if len(rows_nll) != len(base_nll) or len(base_nll) < 2:
        raise ValueError("paired_delta needs the same >= 2 windows for both")
    d = [a - b for a, b in zip(rows_nll, base_nll)]
    n = len(d)
    m = sum(d) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in d) / (n - 1))
    return 100.0 * (math.exp(m) - 1.0), 100.0 * math.exp(m) * sd / math.sqrt(n)
