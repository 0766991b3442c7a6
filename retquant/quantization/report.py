"""``report(model)``: a table of what is quantized how, module by module."""

from __future__ import annotations

from torch import nn

from retquant.nn import Int8Linear, MultiScaleRetention, QuantLinear
from retquant.qat import ObservedQuantizer, Quantizer
from retquant.quant import PRESETS, RetentionQuantConfig

_SHORT_OPERAND = {"q": "q", "k": "k", "k_state": "ks", "v": "v", "score": "p", "state": "s"}


def describe_quantizer(q: Quantizer) -> str:
    """``"int8 channel LSQ"``-style label of a quantizer module.

    Example:
        >>> from retquant.qat import DynamicQuantizer
        >>> from retquant import QuantSpec
        >>> describe_quantizer(DynamicQuantizer(QuantSpec(granularity="token")))
        'int8 token dynamic'
    """
    s = q.spec
    kind = type(q).__name__.removesuffix("Quantizer").lower() or "quantizer"
    if isinstance(q, ObservedQuantizer):
        kind = type(q.observer).__name__.removesuffix("Observer").lower()
        kind += " (calibrating)" if q.calibrating else ("" if q.has_range else " (uncalibrated)")
    sym = "" if s.symmetric else " asym"
    rnd = " stochastic" if s.rounding.value == "stochastic" else ""
    return f"int{s.bits}{sym} {s.granularity.value} {kind}{rnd}"


def describe_retention(cfg: RetentionQuantConfig | None) -> str:
    """A preset's name, ``"float"``, or the bits and granularity of each operand.

    Example:
        >>> describe_retention(RetentionQuantConfig.uniform(4))
        'int4'
    """
    if cfg is None:
        return "float"
    for name, preset in PRESETS.items():
        if cfg == preset:
            return name
    parts = [f"{_SHORT_OPERAND[n]}:int{s.bits}/{s.granularity.value}" for n, s in cfg.operand_specs().items()]
    return " ".join(parts) + (" smooth_k" if cfg.smooth_k else "")


def report(model: nn.Module, *, show: bool = True) -> str:
    """The table of every linear and retention layer of ``model``: module, kind, weight,
    activation, retention. Printed unless ``show=False``; returned as a string.

    Example:
        >>> _ = report(nn.Sequential(nn.Linear(4, 4)), show=False)
    """
    rows = []
    for name, m in model.named_modules():
        if isinstance(m, QuantLinear):
            rows.append(
                (
                    name,
                    "QuantLinear",
                    describe_quantizer(m.weight_quantizer),
                    describe_quantizer(m.act_quantizer),
                    "",
                )
            )
        elif isinstance(m, Int8Linear):
            per = "per-channel" if m.weight_scale.numel() > 1 else "per-tensor"
            rows.append(
                (
                    name,
                    "Int8Linear",
                    f"int{m.weight_bits} codes, {per} scale",
                    describe_quantizer(m.act_quantizer),
                    "",
                )
            )
        elif type(m) is nn.Linear:
            rows.append((name, "Linear", "float", "float", ""))
        elif isinstance(m, MultiScaleRetention):
            rows.append((name, "MultiScaleRetention", "", "", describe_retention(m.retention_quant)))
    header = ("module", "kind", "weight", "activation", "retention")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    text = "\n".join(
        [line.format(*header), line.format(*("-" * w for w in widths))] + [line.format(*r) for r in rows]
    )
    if show:
        print(text)
    return text
