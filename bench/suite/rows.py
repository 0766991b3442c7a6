"""The row registry's record and the flop models shared by the row builders.

A :class:`Row` is one timed entry of the suite: ``fn()`` runs it once; rows of the same ``kind``
and shape are compared with the fastest ``peer`` row among them. A row that cannot run here
carries ``skip`` (the reason) instead and is reported as skipped, never silently dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bench.cpu import gemm_shapes
from retquant.constants import CHUNK_SIZE as C

KINDS = ("fwd", "decode", "train-op", "train-op-int8", "layer-fwd", "train-lm", "lm-forward", "gpu-fwd")
KIND_DOC = {
    "fwd": "op forward: chunk_retention on [B, T, H, K] inputs",
    "decode": "decode step, per token (state [B, H, K, V] updated in place)",
    "train-op": "op forward + backward (float path vs plain PyTorch chunk with autograd)",
    "train-op-int8": "op forward + backward, quantized (int8 STE vs int8 fake-quant emulation)",
    "layer-fwd": "MultiScaleRetention layer forward (ours vs torchscale's component), no grad",
    "train-lm": "small RetNet LM train step (forward + backward + Adam)",
    "lm-forward": "small RetNet LM forward (no grad): fp32 vs converted int8",
    "gpu-fwd": "op forward on CUDA: Triton int8 vs fla and a bf16 PyTorch chunk",
}


@dataclass
class Row:
    """One timed entry.

    Attributes:
        name: what runs (unique within a shape).
        kind: one of :data:`KINDS`; ratios compare rows of one kind and shape.
        peer: True for the baselines (plain PyTorch, torchscale, fla, fake-quant emulation).
        backend: the backend or peer label (``cpu int8``, ``float path``, ``torchscale`` ...).
        fn: runs the row once (its result is passed to ``check``).
        flops: the row's operation count (model: see :func:`chunk_ops`), or None.
        peak: which measured machine rate the flops are compared with, ``"int8"`` or ``"fp32"``;
            None for rows that mix both (int8 forward, fp32 backward): no % of peak is shown.
        skip: the reason the row does not run here (then ``fn`` is None).
        max_repeats: cap on the timed repeats (slow rows), or None.
        check: maps ``fn()``'s result to its relative L2 error vs float64 (or None).
        saved: returns the bytes autograd saves for backward (training rows), or None.
        note: shown in the Markdown table.
        calls: how many operations one ``fn()`` runs (decode: tokens); times and flops are
            reported per operation.
    """

    name: str
    kind: str
    peer: bool
    backend: str
    fn: Callable | None = None
    flops: float | None = None
    peak: str | None = None
    skip: str | None = None
    max_repeats: int | None = None
    check: Callable | None = None
    saved: Callable | None = None
    note: str = ""
    calls: int = 1


def skipped(name: str, kind: str, peer: bool, backend: str, reason: str) -> Row:
    """A row that does not run here, with the reason."""
    return Row(name, kind, peer, backend, skip=reason)


def chunk_ops(B: int, T: int, H: int, K: int, V: int) -> float:
    """Operations (2 per multiply-add) of the chunk algorithm's four GEMMs per chunk
    (``bench.cpu.gemm_shapes``): the flop model of every forward row, float or int8."""
    n = -(-T // C)
    return 2.0 * B * H * n * sum(m * nn * r for _, m, nn, r in gemm_shapes(K, V))


def train_ops(B: int, T: int, H: int, K: int, V: int) -> float:
    """Flop model of forward + backward: 3x the forward GEMMs (the backward's products are
    about twice the forward's)."""
    return 3.0 * chunk_ops(B, T, H, K, V)


def decode_ops(B: int, H: int, K: int, V: int) -> float:
    """One decode token: ``S = g S + k v^T`` and ``o = q S`` (2 K V multiply-adds per head)."""
    return 4.0 * B * H * K * V
