"""Post-training calibration: run a model over data, then freeze its observed quantizers."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from retquant.qat.observed import ObservedQuantizer


def _default_forward(model: nn.Module, batch: Any) -> Any:
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def calibrate(
    model: nn.Module,
    data: Iterable,
    *,
    num_batches: int | None = None,
    forward: Callable[[nn.Module, Any], Any] | None = None,
    progress: bool = True,
) -> nn.Module:
    """Run ``model`` over ``data`` so its :class:`ObservedQuantizer` s record ranges, then freeze them.

    The batches run under ``torch.no_grad()`` with the model in eval mode; each module's training
    flag is restored afterwards. Quantizers frozen without a range (as ``quantize_`` leaves the
    activation quantizers, so that forgetting to calibrate is an error) start observing; those
    with a range keep it (``reset()`` one to calibrate it again). Every ``ObservedQuantizer`` in
    the model is then frozen (and given its name in the model, for error messages); one that saw
    no data stays without a range (a warning names it; quantizing with it raises "was never
    calibrated").

    Args:
        model: the module holding observed quantizers.
        data: an iterable of batches (a list, a DataLoader, ...).
        num_batches: stop after this many batches (default: all of ``data``).
        forward: ``forward(model, batch)`` runs one batch; default: ``model(**batch)`` for a dict,
            ``model(*batch)`` for a tuple or list, ``model(batch)`` otherwise (pass your own for a
            loader yielding ``(inputs, labels)``).
        progress: show a tqdm progress bar.

    Returns:
        ``model``, calibrated.

    Example:
        >>> model = nn.Sequential(ObservedQuantizer(spec, MinMaxObserver()), nn.Linear(8, 4))
        >>> calibrate(model, [torch.randn(32, 8) for _ in range(4)], progress=False)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if num_batches is not None and (
        isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1
    ):
        raise ValueError(f"num_batches must be None or a positive int, got {num_batches!r}")
    if forward is not None and not callable(forward):
        raise TypeError(
            f"forward must be None or a callable forward(model, batch), got {type(forward).__name__}"
        )
    run = forward or _default_forward
    quantizers = [(name, m) for name, m in model.named_modules() if isinstance(m, ObservedQuantizer)]
    if not quantizers:
        warnings.warn("calibrate(): the model has no ObservedQuantizer; nothing to calibrate", stacklevel=2)
    for name, q in quantizers:
        q.name = name or q.name
        if not q.calibrating and not q.has_range:  # frozen before any data (as quantize_ leaves them)
            q.reset()

    total = len(data) if hasattr(data, "__len__") else None
    if num_batches is not None:
        total = num_batches if total is None else min(total, num_batches)
    batches = data if num_batches is None else itertools.islice(data, num_batches)

    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            for batch in tqdm(batches, total=total, disable=not progress, desc="calibrate", unit="batch"):
                run(model, batch)
    finally:
        for m, training in modes:
            m.training = training

    unseen = [name or type(q).__name__ for name, q in quantizers if not q.observer.has_data]
    for _, q in quantizers:
        q.freeze()
    if unseen:
        warnings.warn(
            f"calibrate(): no data reached {unseen}; they stay uncalibrated (quantizing with them raises)",
            stacklevel=2,
        )
    return model
