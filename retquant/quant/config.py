"""Which spec each operand of the quantized retention gets, and the named presets.

The chunkwise algorithm multiplies six quantized operands in four integer GEMMs:

=============  ======================  ======================  ==============================
GEMM           left operand            right operand           reduced over
=============  ======================  ======================  ==============================
``Q K^T``      ``q``                   ``k``                   features (K)
``P V``        ``score`` (P, per row)  ``v``                   tokens of the chunk
``Q S``        ``q``                   ``state`` (S_{i-1})     features (K)
``K^T V``      ``k_state`` (decayed K) ``v``                   tokens of the chunk
=============  ======================  ======================  ==============================

A scale can leave an integer GEMM only if it is constant along the reduced axis, so each
operand admits only the granularities in :data:`ALLOWED_GRANULARITY`; anything else is a
``ValueError`` at construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from retquant.quant.spec import Granularity, QuantSpec

G = Granularity

ALLOWED_GRANULARITY: dict[str, frozenset[Granularity]] = {
    "q": frozenset({G.TENSOR, G.HEAD, G.BLOCK, G.TOKEN}),
    "k": frozenset({G.TENSOR, G.HEAD, G.BLOCK, G.TOKEN}),
    "k_state": frozenset({G.TENSOR, G.HEAD, G.BLOCK, G.CHANNEL}),
    "v": frozenset({G.TENSOR, G.HEAD, G.BLOCK, G.CHANNEL}),
    # P and S are produced chunk by chunk, so their ranges can only cover one chunk's data.
    "score": frozenset({G.BLOCK, G.TOKEN}),
    "state": frozenset({G.BLOCK, G.CHANNEL}),
}


def _spec(bits: int, granularity: Granularity) -> QuantSpec:
    return QuantSpec(bits=bits, granularity=granularity)


@dataclass(frozen=True)
class RetentionQuantConfig:
    """Quantization of every operand of the chunkwise retention (see the module table).

    Args:
        q, k, k_state, v, score, state: one :class:`QuantSpec` each.
        smooth_k: subtract each chunk's mean key before quantizing K for ``Q K^T`` and add the
            exact correction ``(Q k_mean) * gamma**(a-b)`` back into the scores.

    The carried state itself stays float32; ``state`` only describes the copy that enters the
    ``Q S`` GEMM, so quantization error does not compound through the recurrence.

    Example:
        >>> cfg = RetentionQuantConfig.uniform(bits=4)
        >>> cfg.q.bits, cfg.v.granularity.value
        (4, 'channel')
    """

    q: QuantSpec = field(default_factory=lambda: _spec(8, G.TOKEN))
    k: QuantSpec = field(default_factory=lambda: _spec(8, G.TOKEN))
    k_state: QuantSpec = field(default_factory=lambda: _spec(8, G.CHANNEL))
    v: QuantSpec = field(default_factory=lambda: _spec(8, G.CHANNEL))
    score: QuantSpec = field(default_factory=lambda: _spec(8, G.TOKEN))
    state: QuantSpec = field(default_factory=lambda: _spec(8, G.CHANNEL))
    smooth_k: bool = False

    def __post_init__(self):
        for name, allowed in ALLOWED_GRANULARITY.items():
            spec = getattr(self, name)
            if not isinstance(spec, QuantSpec):
                raise TypeError(f"RetentionQuantConfig.{name} must be a QuantSpec, got {spec!r}")
            if spec.granularity not in allowed:
                raise ValueError(
                    f"RetentionQuantConfig.{name}: granularity {spec.granularity.value!r} varies "
                    f"along the GEMM's reduced axis; allowed: {sorted(g.value for g in allowed)}"
                )
        if not isinstance(self.smooth_k, bool):
            raise TypeError(f"smooth_k must be a bool, got {self.smooth_k!r}")
        # computed once: the ops read it on every call (and torch.compile reads a plain attribute)
        object.__setattr__(self, "_key", repr(self))
        _BY_KEY.setdefault(self._key, self)

    @property
    def key(self) -> str:
        """A string naming this configuration, as the retention custom ops take it (a torch op
        schema has no slot for a dataclass): its repr, which equal configurations share."""
        return self._key

    @classmethod
    def uniform(cls, bits: int, smooth_k: bool = False) -> RetentionQuantConfig:
        """All operands at ``bits``, each with its natural granularity."""
        base = cls()
        specs = {
            f.name: replace(getattr(base, f.name), bits=bits)
            for f in fields(cls)
            if f.name in ALLOWED_GRANULARITY
        }
        return cls(**specs, smooth_k=smooth_k)

    def operand_specs(self) -> dict[str, QuantSpec]:
        return {name: getattr(self, name) for name in ALLOWED_GRANULARITY}

    def is_default_int8(self) -> bool:
        """True for the configuration the fast kernels implement."""
        return self._key == _DEFAULT._key  # equal configurations share the key (their repr)


_BY_KEY: dict[str, RetentionQuantConfig] = {}  # every configuration made, by key (they are few)
_DEFAULT = RetentionQuantConfig()  # built once: is_default_int8 runs on every kernel call

PRESETS: dict[str, RetentionQuantConfig] = {
    "int8": RetentionQuantConfig.uniform(8),
    "int4": RetentionQuantConfig.uniform(4),
    "int16": RetentionQuantConfig.uniform(16),
    "int8_smooth": RetentionQuantConfig.uniform(8, smooth_k=True),
}


def resolve_quant(quant) -> RetentionQuantConfig | None:
    """``None`` (float path), a preset name, or a :class:`RetentionQuantConfig`.

    Example:
        >>> resolve_quant("int8") == RetentionQuantConfig()
        True
    """
    if quant is None or isinstance(quant, RetentionQuantConfig):
        return quant
    if isinstance(quant, str):
        if quant not in PRESETS:
            raise ValueError(f"quant preset must be one of {sorted(PRESETS)}, got {quant!r}")
        return PRESETS[quant]
    raise TypeError(
        f"quant must be None, a preset name {sorted(PRESETS)} or a RetentionQuantConfig, "
        f"got {type(quant).__name__}"
    )


def config_from_key(key: str) -> RetentionQuantConfig | None:
    """The configuration named by :attr:`RetentionQuantConfig.key` (``""``: the float path).

    Example:
        >>> config_from_key(PRESETS["int4"].key) == PRESETS["int4"]
        True
    """
    if key == "":
        return None
    if key not in _BY_KEY:
        raise ValueError(f"unknown quantization configuration key {key[:80]!r}")
    return _BY_KEY[key]
