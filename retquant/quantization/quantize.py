"""``quantize_(model, config)``: swap a model's linear layers for quantized ones and set the
retention quantization of its retention layers; ``convert_`` freezes them for inference.

Flow:

- PTQ: ``quantize_(model, PTQConfig(...))`` → :func:`~retquant.qat.calibrate` over a few batches
  → ``convert_(model)``;
- QAT: ``quantize_(model, QATConfig(...))`` → train (the forward already runs the int8 kernels,
  the backward is STE with the learnable ranges' gradients) → ``convert_(model)``, whose eval
  outputs equal the QAT model's bit for bit.

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    >>> quantize_(model, QATConfig())
    Sequential(...)
    >>> y = model(torch.randn(4, 16))
    >>> convert_(model)
    Sequential(...)
"""

from __future__ import annotations

from torch import nn

from retquant.nn import Int8Linear, MultiScaleRetention, QuantLinear
from retquant.qat import (
    ACIQObserver,
    DynamicQuantizer,
    FixedQuantizer,
    LSQQuantizer,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    ObservedQuantizer,
    PACTQuantizer,
    PercentileObserver,
    Quantizer,
    TQTQuantizer,
)
from retquant.quant import Granularity
from retquant.quantization.config import FLOAT_RETENTION, ModelQuantConfig, QuantizerConfig

_LEARNABLE = {"pact": PACTQuantizer, "tqt": TQTQuantizer}


def build_quantizer(
    cfg: QuantizerConfig, num_channels: int | None = None, *, role: str = "weight"
) -> Quantizer:
    """The quantizer module a :class:`QuantizerConfig` describes (``num_channels``: the size of
    dim 0 of the tensor it will quantize, needed for per-channel learnable ranges; ``role``:
    ``"weight"`` or ``"activation"``, which sets LSQ's gradient scale).

    Example:
        >>> from retquant import QuantSpec
        >>> build_quantizer(QuantizerConfig("lsq", QuantSpec(granularity="channel")), 32).spec.bits
        8
    """
    spec, method = cfg.spec, cfg.method
    per_channel = spec.granularity is Granularity.CHANNEL
    if method == "dynamic":
        return DynamicQuantizer(spec)
    if method == "fixed":
        return FixedQuantizer(spec)
    if role not in ("weight", "activation"):
        raise ValueError(f"role must be 'weight' or 'activation', got {role!r}")
    if method == "lsq":
        return LSQQuantizer(spec, num_channels=num_channels if per_channel else None, role=role)
    if method in _LEARNABLE:
        return _LEARNABLE[method](spec, num_channels=num_channels if per_channel else None)
    if method == "minmax":
        observer = MinMaxObserver(per_channel=per_channel)
    elif method == "ema_minmax":
        observer = MovingAverageMinMaxObserver(momentum=cfg.momentum, per_channel=per_channel)
    elif method == "percentile":
        observer = PercentileObserver(percentile=cfg.percentile, per_channel=per_channel)
    elif method == "mse":
        observer = MSEObserver(spec)  # per channel when spec.granularity is "channel"
    else:
        observer = ACIQObserver(spec, prior=cfg.prior)
    return ObservedQuantizer(spec, observer)


def _targets(model: nn.Module):
    linears = [(n, m) for n, m in model.named_modules() if type(m) is nn.Linear]
    retentions = [(n, m) for n, m in model.named_modules() if isinstance(m, MultiScaleRetention)]
    return linears, retentions


def _check_rules(config: ModelQuantConfig, linears, retentions) -> None:
    names = {"linear": [n for n, _ in linears], "retention": [n for n, _ in retentions]}
    for i, rule in enumerate(config.rules):
        for kind in ("linear", "retention"):
            if getattr(rule, kind) is not None and not any(rule.matches(n) for n in names[kind]):
                some = ", ".join(names[kind][:6]) or "none"
                raise ValueError(
                    f"rules[{i}].pattern {rule.pattern!r} matches no {kind} layer of the model "
                    f"(its {kind} layers: {some}{', ...' if len(names[kind]) > 6 else ''})"
                )


def quantize_(model: nn.Module, config: ModelQuantConfig) -> nn.Module:
    """Quantize ``model`` in place as ``config`` says; returns it.

    Every ``nn.Linear`` becomes a :class:`~retquant.nn.QuantLinear` sharing its parameters
    (unless its config is ``"float"``); every :class:`~retquant.nn.MultiScaleRetention` gets its
    ``retention_quant``. PTQ weight quantizers are calibrated on the weights right away;
    activation observers wait for :func:`~retquant.qat.calibrate`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(config, ModelQuantConfig) or type(config) is ModelQuantConfig:
        raise TypeError(f"config must be a PTQConfig or a QATConfig, got {type(config).__name__}")
    linears, retentions = _targets(model)
    if not linears and not retentions:
        raise ValueError("model has no nn.Linear or MultiScaleRetention layer to quantize")
    _check_rules(config, linears, retentions)
    if linears and linears[0][0] == "":
        raise ValueError("quantize_ replaces submodules in place: wrap a bare nn.Linear in a container")
    # Build every replacement first, so that an error leaves the model untouched.
    swaps, retention = [], {name: config.retention_for(name) for name, _ in retentions}
    for name, lin in linears:
        lc = config.linear_for(name)
        if lc == FLOAT_RETENTION:
            continue
        wq = build_quantizer(lc.weight, num_channels=lin.out_features).to(lin.weight.device)
        aq = build_quantizer(lc.activation, role="activation").to(lin.weight.device)
        if isinstance(wq, ObservedQuantizer):  # weights are known now: calibrate on them
            wq(lin.weight.detach().float())
            wq.freeze()
        if isinstance(aq, ObservedQuantizer):  # no range until calibrate(): using it raises
            aq.freeze()
        swaps.append((name, QuantLinear.from_linear(lin, wq, aq)))
    for name, new in swaps:
        model.set_submodule(name, new)
    for name, layer in retentions:
        layer.retention_quant = retention[name]
    return model


def convert_(model: nn.Module) -> nn.Module:
    """Replace every :class:`~retquant.nn.QuantLinear` of ``model`` with its inference layer
    (:class:`~retquant.nn.Int8Linear`: int8 weight codes and scales as buffers); returns it.

    To load a saved converted model, rebuild its structure first:
    ``quantize_(fresh, config); convert_(fresh); fresh.load_state_dict(saved)``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, QuantLinear)]
    if not found and not any(isinstance(m, Int8Linear) for m in model.modules()):
        raise ValueError("model has no QuantLinear layer: run quantize_(model, config) first")
    for name, layer in found:
        model.set_submodule(name, layer.convert())
    return model
