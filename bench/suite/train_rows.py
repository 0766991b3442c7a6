"""Training rows: the op's forward + backward (:mod:`bench.train`'s rows) and the small RetNet
LM's train step and forward (:mod:`bench.qat_lm`'s rows).

``train-op``: the float path's op with autograd against the plain PyTorch chunk loop with
autograd (whole batch; per (b, h) graph). ``train-op-int8``: ``quant="int8"`` (int8 forward,
straight-through backward) against int8 fake-quantization with torch ops. Each training row
also reports the bytes autograd saves for backward (``bench.train.saved_bytes``).
``train-lm``: fp32, fake-quant QAT and retquant QAT train steps (forward, backward, Adam);
``lm-forward``: the fp32 model against the converted int8 model, no grad.
"""

from __future__ import annotations

import torch
from torch import nn

from bench.cpu_peers import torch_chunk_retention, torch_chunk_retention_blocked
from bench.qat_lm import VOCAB, build, train_step
from bench.suite.rows import Row, chunk_ops, train_ops
from bench.train import Inputs, _fake_quant, _float_op, _int8_op, op_fwd_bwd, plain_fwd_bwd, saved_bytes
from retquant.quantization import convert_


def _saved_op(op, x: Inputs):
    """Bytes saved for backward by ``op(q, k, v)`` on leaves that require grad."""

    def measure():
        q, k, v = (t.detach().requires_grad_() for t in (x.q, x.k, x.v))
        return saved_bytes(lambda: op(q, k, v))

    return measure


def _peer_op(peer, x: Inputs):
    return lambda q, k, v: peer(q, k, v, x.g, x.scale)


def train_op_rows(x: Inputs) -> list[Row]:
    """Op forward + backward rows on float32 inputs ``x``."""
    B, T, H, K = x.q.shape
    ops = train_ops(B, T, H, K, x.v.shape[-1])

    def row(name, kind, peer, backend, fn, saved, peak="fp32"):
        return Row(name, kind, peer, backend, fn=fn, flops=ops, peak=peak, saved=saved)

    float_op, int8_op, fake = _float_op(x), _int8_op(x), _fake_quant(x)
    whole, blocked = _peer_op(torch_chunk_retention, x), _peer_op(torch_chunk_retention_blocked, x)
    return [
        row(
            "float path + autograd (chunk_retention)",
            "train-op",
            False,
            "float path",
            lambda: op_fwd_bwd(float_op, x),
            _saved_op(float_op, x),
        ),
        row(
            "fp32 PyTorch chunk + autograd, whole batch",
            "train-op",
            True,
            "torch fp32",
            lambda: plain_fwd_bwd(torch_chunk_retention, x),
            _saved_op(whole, x),
        ),
        row(
            "fp32 PyTorch chunk + autograd, per (b, h) graph",
            "train-op",
            True,
            "torch fp32",
            lambda: plain_fwd_bwd(torch_chunk_retention_blocked, x),
            _saved_op(blocked, x),
        ),
        row(
            "int8 op + autograd (quant=int8, STE backward)",
            "train-op-int8",
            False,
            "cpu int8",
            lambda: op_fwd_bwd(int8_op, x),
            _saved_op(int8_op, x),
            peak=None,  # mixed: int8 forward, fp32 backward: no single peak
        ),
        row(
            "int8 fake-quant emulation + autograd",
            "train-op-int8",
            True,
            "fake-quant",
            lambda: op_fwd_bwd(fake, x),
            _saved_op(fake, x),
        ),
    ]


def lm_ops(model: nn.Module, shape: dict) -> float:
    """Forward flop model of the LM: 2 x tokens x the weights of its ``nn.Linear`` layers, plus
    the output head (vocab x hidden, tied to the embedding), plus the retention chunk GEMMs of
    every layer."""
    B, T, H, D = shape["B"], shape["T"], shape["num_heads"], shape["hidden_size"]
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear)) + VOCAB * D
    K, V = D // H, 2 * D // H  # RetNetConfig's expand_k=1, expand_v=2
    return 2.0 * B * T * linear + shape["num_layers"] * chunk_ops(B, T, H, K, V)


def lm_rows(shape: dict) -> list[Row]:
    """Train step of the fp32, fake-quant and retquant QAT models; forward fp32 vs int8."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (shape["B"], shape["T"] + 1), generator=gen)
    models = {k: build(k, shape) for k in ("fp32", "fake", "qat")}
    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-4) for k, m in models.items()}
    for k in models:  # warm-up: the lazy initialisation of learnable ranges
        train_step(models[k], opts[k], ids)
    fwd = lm_ops(models["fp32"], shape)
    conv = convert_(build("qat", shape)).eval()
    conv.loss(ids)  # activation ranges initialised as a trained model would have them
    fp32_eval = build("fp32", shape).eval()

    def step(k):
        return lambda: train_step(models[k], opts[k], ids)

    def saved(k):
        return lambda: saved_bytes(lambda: models[k].loss(ids))

    def no_grad(m):
        def run():
            with torch.no_grad():
                return m(ids[:, :-1])

        return run

    def row(name, kind, peer, backend, fn, peak, sv=None, factor=3.0):
        return Row(name, kind, peer, backend, fn=fn, flops=factor * fwd, peak=peak, saved=sv)

    return [
        row(
            "retquant QAT train step (int8 kernels, STE)",
            "train-lm",
            False,
            "cpu int8",
            step("qat"),
            None,  # mixed: int8 forward GEMMs, fp32 backward: no single peak
            saved("qat"),
        ),
        row("fp32 train step", "train-lm", True, "fp32 model", step("fp32"), "fp32", saved("fp32")),
        row("fake-quant QAT train step", "train-lm", True, "fake-quant", step("fake"), "fp32", saved("fake")),
        row("converted int8 forward", "lm-forward", False, "cpu int8", no_grad(conv), "int8", factor=1.0),
        row("fp32 forward", "lm-forward", True, "fp32 model", no_grad(fp32_eval), "fp32", factor=1.0),
    ]
