"""Validation perplexity and bits per byte over fixed windows.

Every window ``[T + 1]`` scores its ``T`` next-byte predictions (the first byte of a window has no
context, the same for every strategy). With the byte tokenizer a token is a byte, so
bits per byte = mean NLL / ln 2 and perplexity = exp(mean NLL) (per byte).

Example:
    >>> from retquant.models import RetNetConfig, RetNetLM
    >>> m = RetNetLM(RetNetConfig(vocab_size=256, hidden_size=32, num_layers=1, num_heads=2))
    >>> r = evaluate(m, torch.randint(0, 256, (3, 17)), batch_size=2)
    >>> sorted(r)
    ['bpb', 'nll', 'ppl', 'tokens']
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
    total, count = 0.0, 0
    for i in range(0, windows.shape[0], batch_size):
        ids = windows[i : i + batch_size]
        logits = model(ids[:, :-1])
        # summed in float64: thousands of windows must not lose the last digits
        nll = F.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="sum")
        total += float(nll.double())
        count += ids[:, 1:].numel()
    model.train(was_training)
    mean = total / count
    return {"nll": mean, "ppl": math.exp(mean), "bpb": mean / math.log(2), "tokens": count}
