"""Model-level quantization configs: frozen dataclasses that :func:`quantize_` takes.

A model is quantized operand by operand:

- every ``nn.Linear`` gets a weight quantizer and an input-activation quantizer
  (:class:`LinearQuantConfig`, each a :class:`QuantizerConfig`: a method and a
  :class:`~retquant.QuantSpec`);
- every :class:`~retquant.nn.MultiScaleRetention` gets a :class:`~retquant.RetentionQuantConfig`
  for the six operands of its retention core (or ``"float"``);
- :class:`Rule` overrides either for the modules whose qualified name matches a glob pattern
  (mixed precision), the first matching rule winning.

:class:`PTQConfig` (observers, calibrate, convert) and :class:`QATConfig` (learnable quantizers,
train, convert) share these fields and differ in the methods they accept. Both are validated at
construction, so a bad config fails before any module is touched.

Example:
    >>> from retquant.quantization import PTQConfig, QATConfig, Rule, QuantizerConfig
    >>> cfg = QATConfig(rules=(Rule("layers.0.*", retention="float"),))
    >>> cfg.linear.weight.method, cfg.retention
    ('lsq', 'int8')
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from retquant.quant import Granularity, QuantSpec, RetentionQuantConfig, Rounding, resolve_quant

G = Granularity

OBSERVER_METHODS = frozenset({"minmax", "ema_minmax", "percentile", "mse", "aciq"})
LEARNABLE_METHODS = frozenset({"pact", "lsq", "tqt"})
FIXED_METHODS = frozenset({"dynamic", "fixed"})
METHODS = OBSERVER_METHODS | LEARNABLE_METHODS | FIXED_METHODS

# The integer GEMM of a linear layer reduces over in_features: a scale may vary per output
# channel (weight rows) or per token (activation rows), never along in_features.
LINEAR_GRANULARITY = {
    "weight": frozenset({G.TENSOR, G.CHANNEL}),
    "activation": frozenset({G.TENSOR, G.TOKEN}),
}
LINEAR_BITS = frozenset({4, 8})  # codes the int8 GEMM multiplies
ACIQ_PRIORS = ("laplace", "gaussian")
FLOAT_RETENTION = "float"  # the retention core on the float path


@dataclass(frozen=True)
class QuantizerConfig:
    """One quantizer: a method and the :class:`~retquant.QuantSpec` it quantizes with.

    Args:
        method: ``"dynamic"`` (range from the data at every call), ``"fixed"`` (the spec's
            ``static_range``), an observer calibrated on data (``"minmax"``, ``"ema_minmax"``,
            ``"percentile"``, ``"mse"``, ``"aciq"``) or a learnable quantizer (``"pact"``,
            ``"lsq"``, ``"tqt"``).
        spec: bits, symmetry, granularity and rounding.
        percentile: for ``"percentile"``, the percentile used as the clip, in (50, 100].
        momentum: for ``"ema_minmax"``, the weight of the running range, in [0, 1).
        prior: for ``"aciq"``, ``"laplace"`` or ``"gaussian"``.

    Example:
        >>> QuantizerConfig("percentile", QuantSpec(bits=8, granularity="tensor"), percentile=99.9)
        QuantizerConfig(method='percentile', ...)
    """

    method: str
    spec: QuantSpec = field(default_factory=QuantSpec)
    percentile: float = 99.99
    momentum: float = 0.9
    prior: str = "laplace"

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"QuantizerConfig.method must be one of {sorted(METHODS)}, got {self.method!r}")
        if not isinstance(self.spec, QuantSpec):
            raise TypeError(f"QuantizerConfig.spec must be a QuantSpec, got {type(self.spec).__name__}")
        if self.method == "fixed" and self.spec.static_range is None:
            raise ValueError("QuantizerConfig(method='fixed') needs spec.static_range=(lo, hi)")
        if self.method != "fixed" and self.spec.static_range is not None:
            raise ValueError(
                f"QuantizerConfig(method={self.method!r}) computes its own range; spec.static_range "
                "is only for method='fixed'"
            )
        for name, lo, hi, lo_open, hi_open in (
            ("percentile", 50, 100, True, False),
            ("momentum", 0, 1, False, True),
        ):
            v = getattr(self, name)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
            ok = ok and (lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi)
            if not ok:
                span = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
                raise ValueError(f"QuantizerConfig.{name} must be a number in {span}, got {v!r}")
        if self.prior not in ACIQ_PRIORS:
            raise ValueError(f"QuantizerConfig.prior must be one of {ACIQ_PRIORS}, got {self.prior!r}")

    def describe(self) -> str:
        """A short label, e.g. ``"int8 channel lsq"``."""
        s = self.spec
        sym = "" if s.symmetric else " asym"
        rnd = " stoch" if s.rounding.value == "stochastic" else ""
        return f"int{s.bits}{sym} {s.granularity.value} {self.method}{rnd}"


def _weight(method: str, bits: int = 8) -> QuantizerConfig:
    return QuantizerConfig(method, QuantSpec(bits=bits, granularity=G.CHANNEL))


def _activation(method: str, bits: int = 8, granularity: Granularity = G.TOKEN) -> QuantizerConfig:
    return QuantizerConfig(method, QuantSpec(bits=bits, granularity=granularity))


@dataclass(frozen=True)
class LinearQuantConfig:
    """The weight and input-activation quantizers of one linear layer.

    Both must be symmetric with 4 or 8 bits (the int8 GEMM multiplies signed codes in
    [-127, 127]), the weight's scale per tensor or per output channel and the activation's per
    tensor or per token (a scale must be constant along the GEMM's reduced axis, in_features).

    Example:
        >>> LinearQuantConfig(weight=QuantizerConfig("lsq", QuantSpec(bits=4, granularity="channel")))
        LinearQuantConfig(weight=QuantizerConfig(method='lsq', ...), ...)
    """

    weight: QuantizerConfig = field(default_factory=lambda: _weight("minmax"))
    activation: QuantizerConfig = field(default_factory=lambda: _activation("dynamic"))

    def __post_init__(self):
        for operand in ("weight", "activation"):
            q = getattr(self, operand)
            where = f"LinearQuantConfig.{operand}"
            if not isinstance(q, QuantizerConfig):
                raise TypeError(f"{where} must be a QuantizerConfig, got {type(q).__name__}")
            allowed = LINEAR_GRANULARITY[operand]
            if q.spec.granularity not in allowed:
                raise ValueError(
                    f"{where}.spec.granularity {q.spec.granularity.value!r} varies along in_features, the "
                    f"reduced axis of the linear's integer GEMM; allowed: {sorted(g.value for g in allowed)}"
                )
            if q.spec.granularity is G.TOKEN and q.method != "dynamic":
                raise ValueError(
                    f"{where}: granularity 'token' needs method='dynamic' (a calibrated or learned "
                    f"range cannot follow each token), got method={q.method!r}"
                )
            if q.spec.bits not in LINEAR_BITS:
                raise ValueError(f"{where}.spec.bits must be 4 or 8 (int8 GEMM codes), got {q.spec.bits}")
            if q.spec.rounding is not Rounding.NEAREST:
                raise ValueError(
                    f"{where}.spec.rounding must be 'nearest': with stochastic rounding the weight codes "
                    "of training and of the converted model would differ"
                )
            if not q.spec.symmetric:
                raise ValueError(
                    f"{where}.spec.symmetric must be True: the int8 GEMM multiplies signed codes "
                    "without zero points"
                )
        if self.weight.method in ("ema_minmax",):
            raise ValueError("LinearQuantConfig.weight: 'ema_minmax' tracks activations; use 'minmax'")


@dataclass(frozen=True)
class Rule:
    """Overrides for the modules whose qualified name matches ``pattern`` (``fnmatch`` glob).

    Args:
        pattern: e.g. ``"layers.0.*"``, ``"*.o_proj"``, ``"layers.3.retention"``.
        linear: a :class:`LinearQuantConfig` for matching linear layers, ``"float"`` to leave
            them unquantized, or ``None`` to keep the config's default.
        retention: a :class:`~retquant.RetentionQuantConfig` or preset name for matching
            retention layers, ``"float"`` for the float path, or ``None`` to keep the default.

    Example:
        >>> Rule("*.o_proj", linear="float")
        Rule(pattern='*.o_proj', linear='float', retention=None)
    """

    pattern: str
    linear: LinearQuantConfig | str | None = None
    retention: RetentionQuantConfig | str | None = None

    def __post_init__(self):
        if not isinstance(self.pattern, str) or not self.pattern:
            raise TypeError(f"Rule.pattern must be a non-empty glob string, got {self.pattern!r}")
        if not (
            self.linear is None
            or self.linear == FLOAT_RETENTION
            or isinstance(self.linear, LinearQuantConfig)
        ):
            raise TypeError(f"Rule.linear must be None, 'float' or a LinearQuantConfig, got {self.linear!r}")
        if self.retention is not None:
            _check_retention(self.retention, f"Rule({self.pattern!r}).retention")

    def matches(self, name: str) -> bool:
        return fnmatch.fnmatchcase(name, self.pattern)


def _check_retention(value, where: str) -> None:
    if value == FLOAT_RETENTION:
        return
    try:
        resolve_quant(value)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{where}: {e} (or 'float' for the float path)") from None


@dataclass(frozen=True)
class ModelQuantConfig:
    """Fields shared by :class:`PTQConfig` and :class:`QATConfig` (use those two).

    Args:
        linear: the default :class:`LinearQuantConfig` of every ``nn.Linear``, or ``"float"``.
        retention: the default retention quantization of every retention layer (a
            :class:`~retquant.RetentionQuantConfig`, a preset name, or ``"float"``).
        rules: :class:`Rule` overrides, first match wins; a rule matching no quantizable module
            is an error at :func:`quantize_` time.
    """

    linear: LinearQuantConfig | str = field(default_factory=LinearQuantConfig)
    retention: RetentionQuantConfig | str = "int8"
    rules: tuple[Rule, ...] = ()

    # methods each subclass accepts, per operand
    _weight_methods = METHODS
    _activation_methods = METHODS

    def __post_init__(self):
        name = type(self).__name__
        if not (self.linear == FLOAT_RETENTION or isinstance(self.linear, LinearQuantConfig)):
            raise TypeError(f"{name}.linear must be a LinearQuantConfig or 'float', got {self.linear!r}")
        _check_retention(self.retention, f"{name}.retention")
        if not isinstance(self.rules, tuple) or not all(isinstance(r, Rule) for r in self.rules):
            raise TypeError(f"{name}.rules must be a tuple of Rule, got {self.rules!r}")
        for where, lin in [(f"{name}.linear", self.linear)] + [
            (f"{name}.rules[{i}]({r.pattern!r}).linear", r.linear) for i, r in enumerate(self.rules)
        ]:
            if isinstance(lin, LinearQuantConfig):
                self._check_methods(lin, where)

    def _check_methods(self, lin: LinearQuantConfig, where: str) -> None:
        for operand, allowed in (("weight", self._weight_methods), ("activation", self._activation_methods)):
            method = getattr(lin, operand).method
            if method not in allowed:
                raise ValueError(
                    f"{where}.{operand}.method {method!r} is not a {type(self).__name__} method; "
                    f"allowed: {sorted(allowed)}"
                )

    def linear_for(self, name: str) -> LinearQuantConfig | str:
        """The linear config of the module called ``name`` (a rule's, else the default)."""
        for r in self.rules:
            if r.linear is not None and r.matches(name):
                return r.linear
        return self.linear

    def retention_for(self, name: str) -> RetentionQuantConfig | None:
        """The retention config of the layer called ``name``; ``None`` for the float path."""
        value = self.retention
        for r in self.rules:
            if r.retention is not None and r.matches(name):
                value = r.retention
                break
        return None if value == FLOAT_RETENTION else resolve_quant(value)


@dataclass(frozen=True)
class PTQConfig(ModelQuantConfig):
    """Post-training quantization: observers on activations, then :func:`calibrate`, then
    :func:`convert_`. Weights are quantized from their own values when :func:`quantize_` runs.

    Example:
        >>> PTQConfig(linear=LinearQuantConfig(activation=QuantizerConfig(
        ...     "mse", QuantSpec(bits=8, granularity="tensor")))).linear.activation.method
        'mse'
    """

    _weight_methods = frozenset({"dynamic", "fixed", "minmax", "percentile", "mse", "aciq"})
    _activation_methods = FIXED_METHODS | OBSERVER_METHODS


def _qat_linear() -> LinearQuantConfig:
    return LinearQuantConfig(weight=_weight("lsq"), activation=_activation("lsq", granularity=G.TENSOR))


@dataclass(frozen=True)
class QATConfig(ModelQuantConfig):
    """Quantization-aware training: learnable quantizers over the int8 kernels (STE backward);
    train, then :func:`convert_` gives a model with bit-identical outputs in eval mode.

    The default is LSQ on weights (per channel) and input activations (per tensor), int8
    retention operands.

    Example:
        >>> QATConfig(linear=LinearQuantConfig(weight=QuantizerConfig(
        ...     "pact", QuantSpec(bits=4, granularity="channel")))).linear.weight.spec.bits
        4
    """

    linear: LinearQuantConfig | str = field(default_factory=_qat_linear)
    _weight_methods = FIXED_METHODS | LEARNABLE_METHODS
    _activation_methods = FIXED_METHODS | LEARNABLE_METHODS
