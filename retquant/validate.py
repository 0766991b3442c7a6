"""Argument checks shared by the public ops: clear errors before any kernel runs.

Shapes, dtypes, devices, ``scale``, ``g_gamma``, ``cu_seqlens`` and ``quant`` are checked by
:func:`validate_call` for every call. Quantized calls also have a value range
(:data:`retquant.constants.QUANT_INPUT_MAX`, :data:`~retquant.constants.QUANT_STATE_MAX`), which
every backend enforces with the same ``ValueError`` (:func:`check_quant_inputs`, or the kernels'
own checks while they read the inputs):

- ``q``, ``k``, ``v``, ``initial_state`` must be finite (inf/NaN would corrupt every value that
  shares its quantization scale);
- ``|q * scale|`` (the float32 product), ``|k|``, ``|v|`` must stay below ``127 * 2**25``
  (~4.26e9) and ``|initial_state|`` below ``2**100``: within these bounds no float32 intermediate
  (scores, dequantization products, the carried state) can overflow, so a finite true output
  comes out finite, bit-identical on every backend, and an output too large for float32 is
  ``+-inf`` as in float arithmetic. Beyond them (e.g. ``q, k ~ 1e19``, ``v ~ 1e-20``, whose true
  output is finite) the scores' dequantization ``acc * s_q * row * s_k * col`` would overflow.
- ``scale`` must be finite and > 0 with a float32 rounding that is finite and > 0 (the kernels
  multiply q by the float32 scale).


Two layers: :func:`check_static` looks only at types, shapes, dtypes and devices (what
torch.compile can trace without a graph break), :func:`validate_call` adds the checks that read
values (``cu_seqlens`` bounds, ``g_gamma`` range) and builds the :class:`RetentionCall` every
backend receives. The ops run the first in Python and the second inside their custom op; called
eagerly they run the value checks alone (:func:`complete_call`) on what the first returned.

Example:
    >>> q = torch.full((1, 4, 1, 8), 1e19); v = torch.full((1, 4, 1, 8), 1e-20)
    >>> try:
    ...     check_quant_inputs(q, q, v, None, 8**-0.5)
    ... except ValueError as e:
    ...     print(str(e)[:60])
    q holds values too large for quantized retention: |q * scale
"""

from __future__ import annotations

import math
import numbers
import struct
from dataclasses import dataclass

import torch

from retquant.constants import CHUNK_SIZE, QUANT_INPUT_MAX, QUANT_STATE_MAX
from retquant.decay import default_g_gamma, resolve_g_gamma
from retquant.quant.config import RetentionQuantConfig, resolve_quant


@dataclass(frozen=True)
class RetentionCall:
    """Validated arguments of one retention op call, as every backend receives them."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    scale: float
    g_gamma: torch.Tensor  # float64 [H]
    initial_state: torch.Tensor | None
    output_final_state: bool
    cu_seqlens: torch.Tensor | None
    quant: RetentionQuantConfig | None

    def check_finite(self) -> None:
        """Raise ``ValueError`` naming the first of q, k, v, initial_state holding inf or NaN or
        values outside the quantized range (:func:`check_quant_inputs`).

        Quantized calls only (a float call propagates non-finite values like any matmul). Backends
        whose kernels check their inputs while reading them (``Backend.checks_finite``) skip this
        extra pass over the inputs.
        """
        if self.quant is not None:
            check_quant_inputs(self.q, self.k, self.v, self.initial_state, self.scale)

    @property
    def num_sequences(self) -> int:
        return self.q.shape[0] if self.cu_seqlens is None else self.cu_seqlens.numel() - 1


def _check_tensor(x, name: str, shape_doc: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {shape_doc}, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor (float32/float16/bfloat16/float64), got {x.dtype}")
    if x.dim() != 4:
        raise ValueError(f"{name} must have rank 4 with shape {shape_doc}, got shape {list(x.shape)}")


def nonfinite_error(name: str) -> ValueError:
    """The error for a quantized call whose input ``name`` holds inf or NaN."""
    return ValueError(
        f"{name} holds inf or NaN values; quantization scales computed from them would "
        "corrupt every value that shares the scale"
    )


def range_error(name: str) -> ValueError:
    """The error for a quantized call whose finite input ``name`` exceeds the accepted range
    (the kernels report it without the largest value, which they do not keep)."""
    what, bound = _RANGE[name]
    return ValueError(
        f"{name} holds values too large for quantized retention: |{what}| must stay below {bound}"
    )


_INPUT_BOUND = "4261412864 (127 * 2**25)"
_RANGE = {
    "q": ("q * scale", _INPUT_BOUND),
    "k": ("k", _INPUT_BOUND),
    "v": ("v", _INPUT_BOUND),
    "initial_state": ("initial_state", "2**100"),
}


def check_quant_inputs(q, k, v, initial_state, scale: float) -> None:
    """Raise ``ValueError`` naming the first of q, k, v, initial_state (``None``: skipped) that
    holds inf/NaN or values outside the range of a quantized call (see the module docstring).

    One reduction pass per tensor: min and max propagate NaN and expose +-inf, and the largest
    magnitude decides the range (``torch.isfinite(x).all()`` materializes a bool tensor: 3x
    slower). q's bound applies to the float32 product ``q * scale``, as the kernels compute it.
    """
    for x, name in ((q, "q"), (k, "k"), (v, "v"), (initial_state, "initial_state")):
        if x is None:
            continue
        lo, hi = torch.aminmax(x.detach())
        if not (bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))):
            raise nonfinite_error(name)
        # float32 rounding is monotone, so this is the largest |x| (|x * scale|) the kernels see
        top = torch.maximum(lo.abs(), hi.abs()).float()
        if name == "q":
            top = top * scale
        if not bool(top < (QUANT_STATE_MAX if name == "initial_state" else QUANT_INPUT_MAX)):
            raise ValueError(f"{range_error(name)}, got {top.item():.3g}")


def _check_cu_seqlens_static(cu_seqlens, B: int) -> None:
    if not isinstance(cu_seqlens, torch.Tensor):
        raise TypeError(f"cu_seqlens must be a 1-D integer torch.Tensor, got {type(cu_seqlens).__name__}")
    if cu_seqlens.is_floating_point() or cu_seqlens.is_complex() or cu_seqlens.dtype == torch.bool:
        raise TypeError(f"cu_seqlens must be an integer tensor (int32/int64), got {cu_seqlens.dtype}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must be 1-D with N+1 >= 2 entries, got shape {list(cu_seqlens.shape)}")
    if B != 1:
        raise ValueError(f"with cu_seqlens the batch size must be 1 (packed sequences), got B={B}")


def _check_cu_seqlens(cu_seqlens, B: int, T: int) -> torch.Tensor:
    _check_cu_seqlens_static(cu_seqlens, B)
    cs = cu_seqlens.detach().to("cpu", torch.int64)
    if cs[0].item() != 0:
        raise ValueError(f"cu_seqlens must start at 0, got {cs[0].item()}")
    if not bool((cs[1:] > cs[:-1]).all()):
        raise ValueError(f"cu_seqlens must be strictly increasing, got {cs.tolist()}")
    if cs[-1].item() != T:
        raise ValueError(f"cu_seqlens must end at T={T}, got {cs[-1].item()}")
    return cs


def _check_scale(scale, K: int) -> float:
    """A real scalar (Python or numpy number, or a 0-d real tensor) or None (``K ** -0.5``)."""
    if scale is None:
        return K**-0.5
    if isinstance(scale, torch.Tensor):
        if scale.dim() != 0 or scale.is_complex() or scale.dtype == torch.bool:
            raise TypeError(
                f"scale must be a real scalar; got a tensor of shape {list(scale.shape)}, {scale.dtype}"
            )
        scale = scale.item()
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a real number or None, got {type(scale).__name__}")
    scale = float(scale)
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be finite and > 0, got {scale}")
    try:  # the kernels multiply by the float32 scale: it must not round to inf or 0
        scale32 = struct.unpack("f", struct.pack("f", scale))[0]
    except OverflowError:
        scale32 = math.inf
    if not 0 < scale32 < math.inf:
        raise ValueError(f"scale must round to a finite float32 > 0, got {scale}")
    return scale


def _check_chunk_size(chunk_size) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise TypeError(f"chunk_size must be an int, got {type(chunk_size).__name__}")
    if chunk_size != CHUNK_SIZE:
        raise ValueError(
            f"chunk_size must be {CHUNK_SIZE}: every retquant kernel (and the integer spec they "
            f"reproduce) is built for chunks of {CHUNK_SIZE} tokens; got {chunk_size}"
        )


@dataclass(frozen=True)
class StaticArgs:
    """What :func:`check_static` resolves: the float scale, the quantization config (or None)
    and the float64 ``g_gamma [H]`` tensor; ``g_gamma_checked``: its values are known valid (the
    default, or a non-tensor the check resolved), else :func:`complete_call` checks them."""

    scale: float
    quant: RetentionQuantConfig | None
    g_gamma: torch.Tensor
    g_gamma_checked: bool = False


def check_static(
    q,
    k,
    v,
    scale=None,
    initial_state=None,
    output_final_state=False,
    cu_seqlens=None,
    g_gamma=None,
    quant=None,
    chunk_size=CHUNK_SIZE,
) -> StaticArgs:
    """The checks of :func:`validate_call` that read no tensor values (types, shapes, dtypes,
    devices): torch.compile traces them without a graph break.

    Example:
        >>> q = k = v = torch.randn(1, 8, 2, 4)
        >>> check_static(q, k, v, quant="int8").scale
        0.5
    """
    _check_tensor(q, "q", "[B, T, H, K]")
    _check_tensor(k, "k", "[B, T, H, K]")
    _check_tensor(v, "v", "[B, T, H, V]")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    B, T, H, K = q.shape
    if k.shape != q.shape:
        raise ValueError(f"k must have q's shape [B, T, H, K]={list(q.shape)}, got {list(k.shape)}")
    if tuple(v.shape[:3]) != (B, T, H):
        raise ValueError(f"v must have shape [B, T, H, V] with B, T, H = {B}, {T}, {H}; got {list(v.shape)}")
    if min(B, T, H, K, v.shape[3]) < 1:
        raise ValueError(f"q, k, v must have non-empty dims, got q {list(q.shape)}, v {list(v.shape)}")
    if not isinstance(output_final_state, bool):
        raise TypeError(f"output_final_state must be a bool, got {output_final_state!r}")
    _check_chunk_size(chunk_size)
    n_seq = B
    if cu_seqlens is not None:
        _check_cu_seqlens_static(cu_seqlens, B)
        n_seq = cu_seqlens.shape[0] - 1
    if initial_state is not None:
        if not isinstance(initial_state, torch.Tensor) or not initial_state.is_floating_point():
            raise TypeError("initial_state must be a floating torch.Tensor of shape [N, H, K, V]")
        want = (n_seq, H, K, v.shape[3])
        if tuple(initial_state.shape) != want:
            raise ValueError(
                f"initial_state must have shape [N, H, K, V]={list(want)}, got {list(initial_state.shape)}"
            )
        if initial_state.device != q.device:
            raise ValueError(f"initial_state must be on {q.device}, got {initial_state.device}")
    checked = True
    if g_gamma is None:
        g = default_g_gamma(H, device=q.device)
    elif isinstance(g_gamma, torch.Tensor):
        if not g_gamma.is_floating_point():
            raise TypeError(f"g_gamma must be a floating tensor (log gamma per head), got {g_gamma.dtype}")
        if g_gamma.shape != (H,):
            raise ValueError(f"g_gamma must have shape [H]=[{H}], got {list(g_gamma.shape)}")
        g = g_gamma.detach().to(device=q.device, dtype=torch.float64)
        checked = False  # values: complete_call (reading them may wait for a device)
    else:
        g = resolve_g_gamma(g_gamma, H, device=q.device)
    scale = _check_scale(scale, K)
    return StaticArgs(scale=scale, quant=resolve_quant(quant), g_gamma=g, g_gamma_checked=checked)


def validate_call(
    q,
    k,
    v,
    scale=None,
    initial_state=None,
    output_final_state=False,
    cu_seqlens=None,
    g_gamma=None,
    quant=None,
    chunk_size=CHUNK_SIZE,
) -> RetentionCall:
    """Check every argument of a retention op; raise ``TypeError``/``ValueError`` naming it.

    Example:
        >>> q = k = v = torch.randn(1, 8, 2, 4)
        >>> validate_call(q, k, v, cu_seqlens=torch.tensor([0, 3, 8])).num_sequences
        2
    """
    static = check_static(
        q, k, v, scale, initial_state, output_final_state, cu_seqlens, g_gamma, quant, chunk_size
    )
    return complete_call(static, q, k, v, initial_state, output_final_state, cu_seqlens)


def complete_call(
    static: StaticArgs,
    q,
    k,
    v,
    initial_state,
    output_final_state: bool,
    cu_seqlens,
) -> RetentionCall:
    """The checks of :func:`validate_call` that :func:`check_static` leaves (values of
    ``cu_seqlens`` and of a user's ``g_gamma`` tensor, meta tensors with ``quant``), on the
    arguments ``static`` came from: a caller that ran check_static does not run it twice.

    Example:
        >>> q = k = v = torch.randn(1, 8, 2, 4)
        >>> complete_call(check_static(q, k, v), q, k, v, None, False, None).scale
        0.5
    """
    if static.quant is not None and q.device.type == "meta":
        # The quantization scales are functions of the values, which meta tensors do not have
        # (the ops themselves infer shapes on meta tensors through their fake implementation).
        raise ValueError(
            "quantized retention (quant set) needs tensors with values, got meta tensors; for "
            "shape inference call the public ops, or use quant=None (same output shapes)"
        )
    cs = None if cu_seqlens is None else _check_cu_seqlens(cu_seqlens, q.shape[0], q.shape[1])
    # Finiteness of the inputs is checked after backend selection (RetentionCall.check_finite, or
    # inside kernels that see every input element anyway): it is a full pass over the inputs.
    g = static.g_gamma if static.g_gamma_checked else resolve_g_gamma(static.g_gamma, q.shape[2], q.device)
    return RetentionCall(
        q=q,
        k=k,
        v=v,
        scale=static.scale,
        g_gamma=g,
        initial_state=initial_state,
        output_final_state=output_final_state,
        cu_seqlens=cs,
        quant=static.quant,
    )
