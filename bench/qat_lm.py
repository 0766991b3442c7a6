"""One training step of the small RetNet LM: fp32, fake-quant QAT, retquant QAT; and the
inference forward of the converted int8 model against the fp32 model.

    python -m bench.qat_lm [--quick] [--threads N] [--repeats N] [--profile] [--json PATH]

- ``fp32``: the model as built (float linears, retention on the float path), forward + backward
  + Adam step;
- ``fake-quant QAT``: what QAT looks like without int8 kernels: each linear computes
  ``F.linear(aq(x), wq(w))`` on the quantize-dequantized float operands (the same LSQ quantizer
  modules), and q, k, v are int8 fake-quantized with torch ops before the float retention
  (:mod:`bench.fake_quant`'s emulation);
- ``retquant QAT``: ``quantize_(model, QATConfig(...))``: LSQ weights (per channel) with LSQ
  input activations (per tensor, the default) or dynamic per-token activations, int8 retention
  operands; int8 kernels forward, STE backward (each against the fake-quant peer with the same
  quantizers);
- ``fp32 forward`` vs ``int8 forward``: ``torch.no_grad()`` inference of the fp32 model and of
  the converted model (``convert_``).

Rows run round-robin (``--repeats`` rounds) so machine noise hits all alike; times are medians.
``--profile`` prints where the retquant QAT step spends its time (torch.profiler, self CPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from bench.fake_quant import fake_quant_operands
from retquant import QuantSpec
from retquant.backends import cpu_extension
from retquant.backends.cpu_extension import cpu_name
from retquant.models import RetNetConfig, RetNetLM
from retquant.nn import MultiScaleRetention
from retquant.quantization import (
    LinearQuantConfig,
    QATConfig,
    QuantizerConfig,
    build_quantizer,
    convert_,
    quantize_,
)

SHAPE = {"hidden_size": 256, "num_layers": 4, "num_heads": 8, "T": 512, "B": 8}
QUICK = {"hidden_size": 128, "num_layers": 2, "num_heads": 4, "T": 256, "B": 4}
VOCAB = 256  # bytes


class FakeQuantLinear(nn.Module):
    """The fake-quant peer of QuantLinear: the same quantizer modules, float ``F.linear``."""

    def __init__(self, linear: nn.Linear, wq: nn.Module, aq: nn.Module):
        super().__init__()
        self.weight, self.bias, self.wq, self.aq = linear.weight, linear.bias, wq, aq

    def forward(self, x):
        return F.linear(self.aq(x), self.wq(self.weight), self.bias)


class FakeQuantRetention(MultiScaleRetention):
    """q, k per token and v per (chunk, channel) int8 fake-quantized, float retention core."""

    def _project(self, x, position_offset):
        q, k, v, g = super()._project(x, position_offset)
        return (*fake_quant_operands(q, k, v), g)


# The two QAT linear configurations timed: LSQ weights (per channel) with LSQ input activations
# (per tensor: the QATConfig default), or with dynamic int8 per-token activations.
LINEAR = {
    "lsq": QATConfig().linear,
    "dyn": LinearQuantConfig(
        weight=QuantizerConfig("lsq", QuantSpec(granularity="channel")),
        activation=QuantizerConfig("dynamic", QuantSpec(granularity="token")),
    ),
}


def build(kind: str, shape: dict, linear: str = "lsq", seed: int = 0) -> RetNetLM:
    """``kind``: "fp32", "fake" (fake-quant peer) or "qat" (retquant); ``linear``: a LINEAR key."""
    torch.manual_seed(seed)
    cfg = RetNetConfig(
        vocab_size=VOCAB,
        hidden_size=shape["hidden_size"],
        num_layers=shape["num_layers"],
        num_heads=shape["num_heads"],
    )
    model = RetNetLM(cfg)
    if kind == "qat":
        quantize_(model, QATConfig(linear=LINEAR[linear]))
    elif kind == "fake":
        lin_cfg = LINEAR[linear]
        for name, m in list(model.named_modules()):
            if type(m) is nn.Linear:
                wq = build_quantizer(lin_cfg.weight, m.out_features)
                aq = build_quantizer(lin_cfg.activation, role="activation")
                model.set_submodule(name, FakeQuantLinear(m, wq, aq))
            elif type(m) is MultiScaleRetention:
                m.__class__ = FakeQuantRetention  # bench-only: same parameters, fake-quant q/k/v
    return model


def train_step(model, opt, ids):
    loss = model.loss(ids)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.repeats < 1:
        raise SystemExit("--repeats must be >= 1")
    torch.set_num_threads(args.threads)
    shape = QUICK if args.quick else SHAPE
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (shape["B"], shape["T"] + 1), generator=gen)
    isa = cpu_extension.isa() if cpu_extension.load_error() is None else "unavailable"
    print(f"# {cpu_name()}, CPU kernel ISA {isa}, {args.threads} threads, torch {torch.__version__}")
    print(f"# small RetNet LM: {shape}, vocab {VOCAB}; medians of {args.repeats}")

    kinds = {"fp32": ("fp32", "lsq")} | {f"{k} {lin}": (k, lin) for lin in LINEAR for k in ("fake", "qat")}
    models = {name: build(kind, shape, lin) for name, (kind, lin) in kinds.items()}
    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-4) for k, m in models.items()}
    steps = {k: (lambda k=k: train_step(models[k], opts[k], ids)) for k in models}
    for fn in steps.values():  # warm-up (and the lazy initialisation of learnable ranges)
        fn()
    infer = {"fp32": build("fp32", shape).eval()}
    for lin in LINEAR:
        conv = convert_(build("qat", shape, lin)).eval()
        conv.loss(ids)  # initialise activation ranges as a trained model would have them
        infer[f"int8 {lin}"] = conv
    times = {f"train {k}": [] for k in steps} | {f"forward {k}": [] for k in infer}
    for _ in range(args.repeats):
        for k, fn in steps.items():
            t0 = time.perf_counter()
            fn()
            times[f"train {k}"].append(time.perf_counter() - t0)
        with torch.no_grad():
            for k, m in infer.items():
                t0 = time.perf_counter()
                m(ids[:, :-1])
                times[f"forward {k}"].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    label = {"lsq": "LSQ W/channel + LSQ A/tensor", "dyn": "LSQ W/channel + dynamic A/token"}
    rows = [("train step fp32", med["train fp32"], 1.0, "(baseline)")]
    for lin in LINEAR:
        fake, ours = med[f"train fake {lin}"], med[f"train qat {lin}"]
        rows.append((f"train fake-quant QAT, {label[lin]}", fake, med["train fp32"] / fake, ""))
        rows.append(
            (
                f"train retquant QAT, {label[lin]}",
                ours,
                med["train fp32"] / ours,
                f"{fake / ours:.2f}x vs fake-quant",
            )
        )
    rows.append(("forward fp32 (no grad)", med["forward fp32"], 1.0, "(baseline)"))
    for lin in LINEAR:
        ms = med[f"forward int8 {lin}"]
        rows.append((f"forward converted int8, {label[lin]}", ms, med["forward fp32"] / ms, ""))
    print(f"{'row':58s} {'ms':>9s} {'speed vs fp32':>14s}")
    for name, ms, ratio, note in rows:
        print(f"{name:58s} {ms:9.1f} {ratio:13.2f}x  {note}")
    if args.profile:
        _profile(steps["qat lsq"], models["qat lsq"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"cpu": cpu_name(), "isa": isa, "threads": args.threads, "shape": shape, "ms": med},
                f,
                indent=1,
            )


def _profile(step, model):
    from torch.profiler import ProfilerActivity, profile

    model.train()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
