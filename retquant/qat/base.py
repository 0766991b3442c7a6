"""The one interface of every quantizer: :class:`Quantizer` returning a :class:`QuantizedTensor`.

Granularity (which elements share one scale) for the quantizers of this package:

- ``TENSOR``: one scale for the whole tensor;
- ``TOKEN``: one scale per row, shared over the last dim (activations ``[..., features]``);
  only :class:`~retquant.qat.DynamicQuantizer` takes it (a static or learned range per token
  would change meaning with every batch);
- ``CHANNEL``: one scale per index of dim 0, shared over the other dims (weights
  ``[out_features, in_features]``: one per output channel). Learnable quantizers then need
  ``num_channels`` (the size of dim 0) to shape their parameter.

``HEAD`` and ``BLOCK`` describe the chunked retention-operand layout ``[B, H, N, C, D]`` and are
refused here with a ``ValueError``: the retention ops quantize their own operands.

Scales and zero points keep the reduced dims (size 1), so they broadcast against ``x``
(``[1, ..., 1]`` per tensor, ``[..., 1]`` per token, ``[C, 1, ..., 1]`` per channel).
Codes always come from :func:`retquant.quant.primitives.quantize` and ``x_hat`` from
:func:`retquant.quant.primitives.dequantize`, so they equal what the kernels compute for the same
scale bit for bit.

Learnable quantizers initialise their parameter lazily from the first batch they see. Under
``torch.distributed`` (when ``torch.distributed.is_initialized()``) the initialised value is then
broadcast from rank 0, so every rank starts from the same parameter even when the ranks' first
batches differ (all ranks must run their first batch through the quantizer, as DDP does).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
from torch import Tensor, nn

from retquant.quant.primitives import compute_qparams
from retquant.quant.spec import Granularity, QuantSpec

# Smallest step a learned parameter may give: keeps x / scale finite if training drives a
# learned clip or step to zero or below (the primitives would otherwise divide by it).
MIN_STEP = 2.0**-100

_GRAN_HELP = "tensor: one scale; token: one per row of [..., features]; channel: one per index of dim 0"


class QuantizedTensor(NamedTuple):
    """What a quantizer returns.

    Attributes:
        x_hat: float32, ``x``'s shape; carries the quantizer's gradient (to ``x`` and to its
            learnable parameters); equals ``dequantize(codes, scale, zero)`` bit for bit.
        codes: int8 storage for 4/8 bits, int16 for 16 bits; no gradient.
        scale: float32, keepdim shape broadcastable against ``x``; detached.
        zero: int32, same shape as ``scale``; detached (zeros when symmetric).

    Example:
        >>> q = DynamicQuantizer(QuantSpec(bits=8, granularity="token"))
        >>> qt = q.quantize(torch.tensor([[0.5, -1.0]]))
        >>> qt.codes, qt.scale.shape
        (tensor([[  64, -127]], dtype=torch.int8), torch.Size([1, 1]))
    """

    x_hat: Tensor
    codes: Tensor
    scale: Tensor
    zero: Tensor


def check_granularity(owner: str, granularity: Granularity, allowed: tuple[Granularity, ...]) -> None:
    """``ValueError`` naming ``granularity`` unless it is one of ``allowed``."""
    if granularity in allowed:
        return
    names = [g.value for g in allowed]
    if granularity in (Granularity.HEAD, Granularity.BLOCK):
        why = "it is a retention-operand layout ([B, H, N, C, D]), quantized by the retention ops"
    elif granularity is Granularity.TOKEN:
        why = "a per-token range changes with every batch, so only DynamicQuantizer takes it"
    else:
        why = "it is not defined for this quantizer"
    raise ValueError(
        f"granularity must be one of {names} for {owner} ({_GRAN_HELP}), got {granularity.value!r}: {why}"
    )


def reduce_dims(granularity: Granularity, ndim: int) -> tuple[int, ...]:
    """The dims of an ``ndim``-dim tensor that share one scale under ``granularity``.

    Example:
        >>> reduce_dims(Granularity.CHANNEL, 3), reduce_dims(Granularity.TOKEN, 3)
        ((1, 2), (2,))
    """
    if granularity is Granularity.TENSOR:
        return tuple(range(ndim))
    if granularity is Granularity.TOKEN:
        return (ndim - 1,)
    if granularity is Granularity.CHANNEL:
        return tuple(range(1, ndim))
    check_granularity("reduce_dims", granularity, Quantizer.granularities)
    raise AssertionError  # unreachable: check_granularity raised


def group_view(t: Tensor, granularity: Granularity, ndim: int) -> Tensor:
    """A per-tensor (0-dim) or per-channel (``[C]``) tensor viewed with ``ndim`` keepdim dims."""
    if granularity is Granularity.CHANNEL:
        return t.reshape([-1] + [1] * (ndim - 1))
    return t.reshape([1] * ndim)


def range_qparams(lo: Tensor, hi: Tensor, spec: QuantSpec) -> tuple[Tensor, Tensor]:
    """Scale and zero point of the range ``[lo, hi]``, elementwise (same shape as ``lo``).

    Uses :func:`~retquant.quant.primitives.compute_qparams` on the pair ``(lo, hi)``, so the
    arithmetic is exactly that of a dynamic range whose min and max are ``lo`` and ``hi``
    (symmetric: ``max(|lo|, |hi|) / qmax``; asymmetric: ``lo`` clamped to ``<= 0``, ``hi`` to
    ``>= 0``, integer zero point).

    Example:
        >>> s, z = range_qparams(torch.tensor(0.0), torch.tensor(2.55), QuantSpec(symmetric=False))
        >>> z.item()
        -128
    """
    lo, hi = torch.broadcast_tensors(torch.as_tensor(lo).float(), torch.as_tensor(hi).float())
    pair = torch.stack([lo, hi], dim=-1)
    scale, zero = compute_qparams(pair, dataclasses.replace(spec, static_range=None), (-1,))
    return scale.squeeze(-1), zero.squeeze(-1)


def broadcast_from_rank0(t: Tensor) -> Tensor:
    """Overwrite ``t`` in place with rank 0's value when ``torch.distributed`` is initialised."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.broadcast(t, src=0)
    return t


def load_resizable(module: nn.Module, state_dict: dict, prefix: str, names: tuple[str, ...]) -> None:
    """Before loading ``state_dict``: give each buffer in ``names`` that is still ``None`` or empty
    (nothing observed or calibrated yet) the shape of its saved value, so a fresh module loads a
    calibrated one's state."""
    for name in names:
        key = prefix + name
        cur = module._buffers.get(name)
        if key in state_dict and (cur is None or cur.numel() == 0):
            saved = state_dict[key]
            device = cur.device if cur is not None else saved.device
            module._buffers[name] = torch.empty(saved.shape, dtype=saved.dtype, device=device)


class Quantizer(nn.Module):
    """Base class: ``quantize(x)`` gives a :class:`QuantizedTensor`, ``forward(x)`` its ``x_hat``.

    Args:
        spec: a :class:`~retquant.QuantSpec` (bits 4/8/16, symmetric or not, granularity,
            rounding). Its granularity is checked against the subclass's ``granularities``.
        generator: optional ``torch.Generator`` for stochastic rounding (reproducible noise).

    Subclasses implement :meth:`quantize` and :meth:`qparams`.

    Example:
        >>> q = DynamicQuantizer(QuantSpec(bits=4, granularity="tensor"))
        >>> torch.equal(q(x), q.quantize(x).x_hat)
        True
    """

    granularities: tuple[Granularity, ...] = (Granularity.TENSOR, Granularity.TOKEN, Granularity.CHANNEL)

    def __init__(self, spec: QuantSpec, *, generator: torch.Generator | None = None):
        super().__init__()
        if not isinstance(spec, QuantSpec):
            raise TypeError(f"spec must be a retquant.QuantSpec, got {type(spec).__name__}")
        check_granularity(type(self).__name__, spec.granularity, self.granularities)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be None or a torch.Generator, got {type(generator).__name__}")
        self.spec = spec
        self.generator = generator

    def quantize(self, x: Tensor) -> QuantizedTensor:
        raise NotImplementedError

    def qparams(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(scale, zero)``, detached, as :meth:`quantize` uses them for ``x``."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.quantize(x).x_hat

    def extra_repr(self) -> str:
        s = self.spec
        return (
            f"bits={s.bits}, symmetric={s.symmetric}, granularity={s.granularity.value!r}, "
            f"rounding={s.rounding.value!r}"
        )

    def _check_input(self, x) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"{type(self).__name__}: x must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{type(self).__name__}: x must be a floating-point tensor, got {x.dtype}")
        g = self.spec.granularity
        if g in (Granularity.TOKEN, Granularity.CHANNEL) and x.ndim == 0:
            raise ValueError(
                f"{type(self).__name__}: granularity={g.value!r} needs x with ndim >= 1, got a 0-dim x"
            )


class LearnableQuantizer(Quantizer):
    """Base of the quantizers with a learned range parameter (PACT, LSQ, TQT).

    The parameter has shape ``[]`` per tensor or ``[num_channels]`` per channel. It is filled from
    the first batch (:meth:`init_value`) unless an initial value was given, then broadcast from
    rank 0 under ``torch.distributed``; the buffer ``initialized`` records that it was done (so a
    loaded checkpoint is not re-initialised). The first call of ``quantize``, ``forward`` or
    ``qparams`` initialises; :meth:`maybe_init` does it explicitly (e.g. before building an
    optimizer's state from the parameter's value).
    """

    granularities = (Granularity.TENSOR, Granularity.CHANNEL)
    param_name: str = ""

    def __init__(
        self, spec: QuantSpec, num_channels: int | None = None, *, generator: torch.Generator | None = None
    ):
        super().__init__(spec, generator=generator)
        name = type(self).__name__
        if spec.static_range is not None:
            raise ValueError(
                f"spec.static_range must be None for {name}: its range is learned "
                f"(use FixedQuantizer for a static range), got {spec.static_range}"
            )
        if spec.granularity is Granularity.CHANNEL:
            if num_channels is None:
                raise ValueError(
                    f"num_channels is required for {name} with granularity='channel' (the size of dim 0)"
                )
            if isinstance(num_channels, bool) or not isinstance(num_channels, int) or num_channels < 1:
                raise ValueError(f"num_channels must be a positive int, got {num_channels!r}")
            self.param_shape: tuple[int, ...] = (num_channels,)
        else:
            if num_channels is not None:
                raise ValueError(
                    f"num_channels must be None for {name} with granularity={spec.granularity.value!r} "
                    f"(it is only for 'channel'), got {num_channels!r}"
                )
            self.param_shape = ()
        self.num_channels = num_channels
        self.register_buffer("initialized", torch.tensor(False))
        self._init_seen = False  # Python mirror of `initialized`: no device sync per call

    def init_value(self, x: Tensor) -> Tensor:
        """The parameter's initial value (shape ``param_shape``) from the first batch ``x``."""
        raise NotImplementedError

    def group_amax(self, x: Tensor, signed: bool = True) -> Tensor:
        """max |x| (or max x when ``signed`` is False) per group, shape ``param_shape``."""
        x = x.detach().float()
        v = x.abs() if signed else x
        if self.spec.granularity is Granularity.CHANNEL:
            return v.reshape(x.shape[0], -1).amax(1)
        return v.amax()

    def _set_initialized(self, value: Tensor | float) -> None:
        param = getattr(self, self.param_name)
        with torch.no_grad():
            param.copy_(torch.as_tensor(value, dtype=param.dtype).expand(param.shape))
            self.initialized.fill_(True)
        self._init_seen = True

    def maybe_init(self, x: Tensor) -> None:
        """Initialise the parameter from ``x`` if not done yet (rank 0's value under DDP)."""
        if self._init_seen:
            return
        if bool(self.initialized):
            self._init_seen = True
            return
        param = getattr(self, self.param_name)
        with torch.no_grad():
            value = self.init_value(x.detach()).to(device=param.device, dtype=param.dtype)
            param.copy_(value.expand(param.shape))
            broadcast_from_rank0(param.data)
            self.initialized.fill_(True)
        self._init_seen = True

    def param_view(self, x: Tensor) -> Tensor:
        """The learned parameter viewed keepdim against ``x`` (checked against dim 0 per channel)."""
        self._check_input(x)
        if self.num_channels is not None and x.shape[0] != self.num_channels:
            raise ValueError(
                f"{type(self).__name__}: x.shape[0] must equal num_channels={self.num_channels} "
                f"with granularity='channel', got x of shape {tuple(x.shape)}"
            )
        self.maybe_init(x)
        return group_view(getattr(self, self.param_name), self.spec.granularity, x.ndim)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self._init_seen = False  # re-read the loaded `initialized` buffer on the next call
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        extra = "" if self.num_channels is None else f", num_channels={self.num_channels}"
        return super().extra_repr() + extra
