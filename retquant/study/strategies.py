"""The quantization strategies the study compares: each a name, what it quantizes, and a
function that builds the quantized model from the fp32 checkpoint.

Families (one knob varied at a time; the table's ``what`` column says which):

- ``fp32``: the trained model;
- ``fp32-ft``: the trained model fine-tuned with the QAT schedule and data but no quantizer, the
  control for the QAT rows (a short checkpoint gains from more training whether quantized or not);
- ``ptq-linear``: projections (every ``nn.Linear``: q, k, v, g, o and the FFN) after PTQ,
  weights per output channel (min-max), activations dynamic per token or calibrated per tensor
  by an observer (min-max, percentile 99.99, MSE, ACIQ-Laplace); with float or int8 retention;
- ``ptq-w4``: 4-bit weights (per channel) by each weight observer, activations 8-bit per token;
- ``ret``: the retention operands only (projections float): presets int16 / int8 / int4;
- ``ret-gran``: int4 retention with one operand family's granularity changed (the others at
  their natural granularity: q, k per token, v and k_state per channel, score per token, state
  per channel);
- ``ret-smooth``: K-smoothing (subtract each chunk's mean key, add the exact correction back);
- ``ret-hadamard``: q, k rotated by an orthonormal Hadamard matrix first (exact in float);
- ``qat`` / ``qat-init``: PACT, LSQ, TQT fine-tunes from the checkpoint (``qat``), and the same
  quantizers with their initial ranges and no training (``qat-init``: their PTQ counterpart).

Example:
    >>> [s.name for s in build_strategies()][:3]
    ['fp32', 'fp32 fine-tuned (QAT control)', 'W8A8 token-dyn']
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from retquant.models import RetNetConfig, RetNetLM
from retquant.quant import Granularity, QuantSpec, RetentionQuantConfig, resolve_quant
from retquant.quantization import (
    LinearQuantConfig,
    PTQConfig,
    QATConfig,
    QuantizerConfig,
    calibrate,
    convert_,
    quantize_,
)
from retquant.study.hadamard import apply_hadamard_
from retquant.study.train import TrainConfig, run_steps

G = Granularity
ACT_OBSERVERS = ("minmax", "percentile", "mse", "aciq")
WEIGHT_OBSERVERS = ("minmax", "percentile", "mse", "aciq")
QAT_METHODS = ("pact", "lsq", "tqt")


@dataclass
class StudyContext:
    """What every strategy builds from: the fp32 weights, calibration batches, QAT data."""

    model_cfg: RetNetConfig
    state_dict: dict
    calib: list[torch.Tensor]  # [B, T] id batches for PTQ calibration (from the training split)
    qat_batches: Callable[[], Iterator[torch.Tensor]]  # a fresh seeded iterator per fine-tune
    train_cfg: TrainConfig
    qat_steps: int
    qat_lr: float

    def fresh(self) -> RetNetLM:
        """A new fp32 model with the checkpoint's weights, in eval mode."""
        model = RetNetLM(self.model_cfg)
        model.load_state_dict(self.state_dict)
        return model.eval()


@dataclass(frozen=True)
class Strategy:
    """One row of the study: ``build(ctx)`` returns the model to evaluate."""

    name: str
    family: str
    linears: str  # what the projections get, in words
    retention: str  # what the retention operands get, in words
    what: str  # the knob this row varies
    build: Callable[[StudyContext], nn.Module] = field(repr=False, compare=False)
    method: str = ""  # QAT quantizer (qat / qat-init rows)
    setting: str = ""  # QAT setting: "W4A8" or "ret int4"


def _qc(method: str, bits: int, granularity: Granularity, **kw) -> QuantizerConfig:
    return QuantizerConfig(method, QuantSpec(bits=bits, granularity=granularity), **kw)


def linear_ptq(weight: str = "minmax", wbits: int = 8, act: str = "dynamic") -> LinearQuantConfig:
    """PTQ projections: weights ``wbits`` per channel by ``weight``; 8-bit activations, per token
    when ``act`` is ``"dynamic"``, else per tensor calibrated by the observer ``act``."""
    a = _qc("dynamic", 8, G.TOKEN) if act == "dynamic" else _qc(act, 8, G.TENSOR)
    return LinearQuantConfig(weight=_qc(weight, wbits, G.CHANNEL), activation=a)


def linear_qat(method: str, wbits: int) -> LinearQuantConfig:
    """QAT projections: ``method`` on weights (``wbits`` per channel) and activations (8, tensor)."""
    return LinearQuantConfig(weight=_qc(method, wbits, G.CHANNEL), activation=_qc(method, 8, G.TENSOR))


def _ptq(linear, retention, *, hadamard: bool = False) -> Callable[[StudyContext], nn.Module]:
    def build(ctx: StudyContext) -> nn.Module:
        model = ctx.fresh()
        if hadamard:
            apply_hadamard_(model)
        quantize_(model, PTQConfig(linear=linear, retention=retention))
        if linear != "float":
            if linear.activation.method != "dynamic":  # static activation ranges need data
                calibrate(model, ctx.calib, progress=False)
            convert_(model)
        return model.eval()

    return build


def _qat(method: str, wbits: int, retention, *, train: bool) -> Callable[[StudyContext], nn.Module]:
    def build(ctx: StudyContext) -> nn.Module:
        model = quantize_(ctx.fresh(), QATConfig(linear=linear_qat(method, wbits), retention=retention))
        if train:
            run_steps(
                model, ctx.qat_batches(), ctx.qat_steps, ctx.train_cfg, lr=ctx.qat_lr, desc=f"QAT {method}"
            )
        else:  # the learnable ranges initialise on their first batch, as at the start of QAT
            with torch.no_grad():
                model(ctx.calib[0])
        return convert_(model.eval())

    return build


def _finetune_fp32(ctx: StudyContext) -> nn.Module:
    model = ctx.fresh()
    run_steps(model, ctx.qat_batches(), ctx.qat_steps, ctx.train_cfg, lr=ctx.qat_lr, desc="fine-tune fp32")
    return model.eval()


def _ret_gran(**granularities) -> RetentionQuantConfig:
    base = resolve_quant("int4")
    return replace(base, **{op: replace(getattr(base, op), granularity=g) for op, g in granularities.items()})


def retention_variants() -> list[tuple[str, str, RetentionQuantConfig]]:
    """``(name, what, config)`` of the int4 granularity rows (one operand family at a time)."""
    rows = []
    for g in ("tensor", "head", "block", "token"):
        rows.append((f"ret int4 q,k per {g}", f"q and k: one scale per {g}", _ret_gran(q=g, k=g)))
    for g in ("tensor", "head", "block", "channel"):
        rows.append((f"ret int4 v per {g}", f"v: one scale per {g}", _ret_gran(v=g)))
    for g in ("tensor", "head", "block", "channel"):
        rows.append((f"ret int4 k_state per {g}", f"decayed K of K^T V: per {g}", _ret_gran(k_state=g)))
    for g in ("block", "token"):
        rows.append((f"ret int4 score per {g}", f"scores P of P V: per {g}", _ret_gran(score=g)))
    for g in ("block", "channel"):
        rows.append((f"ret int4 state per {g}", f"state copy of Q S: per {g}", _ret_gran(state=g)))
    return rows


def build_strategies() -> list[Strategy]:
    """Every strategy of the study, in table order."""
    S, out = Strategy, []
    w8 = linear_ptq()
    out.append(S("fp32", "fp32", "float", "float", "the trained model", lambda ctx: ctx.fresh()))
    out.append(
        S(
            "fp32 fine-tuned (QAT control)",
            "fp32-ft",
            "float",
            "float",
            "the QAT schedule without quantizers: separates QAT's recovery from extra training",
            _finetune_fp32,
        )
    )
    out.append(
        S(
            "W8A8 token-dyn",
            "ptq-linear",
            "W8 chan minmax / A8 token dyn",
            "float",
            "projections only",
            _ptq(w8, "float"),
        )
    )
    out.append(
        S(
            "W8A8 token-dyn + ret int8",
            "ptq-linear",
            "W8 chan minmax / A8 token dyn",
            "int8",
            "projections + retention operands (the 1 % target)",
            _ptq(w8, "int8"),
        )
    )
    for obs in ACT_OBSERVERS:
        out.append(
            S(
                f"W8A8 act {obs} + ret int8",
                "ptq-linear",
                f"W8 chan minmax / A8 tensor {obs}",
                "int8",
                f"activation observer: {obs}",
                _ptq(linear_ptq(act=obs), "int8"),
            )
        )
    for obs in WEIGHT_OBSERVERS:
        out.append(
            S(
                f"W4A8 w {obs} + ret int8",
                "ptq-w4",
                f"W4 chan {obs} / A8 token dyn",
                "int8",
                f"4-bit weight observer: {obs}",
                _ptq(linear_ptq(weight=obs, wbits=4), "int8"),
            )
        )
    for preset in ("int16", "int8", "int4"):
        out.append(
            S(f"ret {preset}", "ret", "float", preset, "retention operands only", _ptq("float", preset))
        )
    for name, what, cfg in retention_variants():
        out.append(S(name, "ret-gran", "float", "int4 (one family changed)", what, _ptq("float", cfg)))
    for preset in ("int8", "int4"):
        cfg = replace(resolve_quant(preset), smooth_k=True)
        out.append(
            S(
                f"ret {preset} + smooth K",
                "ret-smooth",
                "float",
                f"{preset}, smooth_k",
                "K-smoothing (chunk mean of K subtracted, exact correction)",
                _ptq("float", cfg),
            )
        )
    for name, cfg in (
        ("int8", "int8"),
        ("int4", "int4"),
        ("int4 q,k per tensor", _ret_gran(q="tensor", k="tensor")),
    ):
        out.append(
            S(
                f"ret {name} + Hadamard",
                "ret-hadamard",
                "float",
                name,
                "q, k rotated by an orthonormal Hadamard matrix",
                _ptq("float", cfg, hadamard=True),
            )
        )
    for setting, wbits, ret in (("W4A8", 4, "int8"), ("ret int4", 8, "int4")):
        lin = f"W{wbits} chan / A8 tensor"
        for method in QAT_METHODS:
            for train in (False, True):
                fam = "qat" if train else "qat-init"
                tag = "QAT" if train else "init"
                out.append(
                    S(
                        f"{tag} {method} {setting}",
                        fam,
                        f"{lin} {method}",
                        ret,
                        "fine-tuned from fp32" if train else "learnable ranges at init, no training",
                        _qat(method, wbits, ret, train=train),
                        method=method,
                        setting=setting,
                    )
                )
    return out
