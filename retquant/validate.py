"""Argument checks shared by the public ops: clear errors before any kernel runs.

Two layers: :func:`check_static` looks only at types, shapes, dtypes and devices (what
torch.compile can trace without a graph break), :func:`validate_call` adds the checks that read
values (``cu_seqlens`` bounds, ``g_gamma`` range) and builds the :class:`RetentionCall` every
backend receives. The ops run the first in Python and the second inside their custom op.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

from retquant.constants import CHUNK_SIZE
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
        """Raise ``ValueError`` naming the first of q, k, v, initial_state holding inf or NaN.

        Quantized calls only (a float call propagates non-finite values like any matmul). Backends
        whose kernels detect non-finite inputs while reading them (``Backend.checks_finite``)
        skip this extra pass over the inputs.
        """
        if self.quant is None:
            return
        for x, name in ((self.q, "q"), (self.k, "k"), (self.v, "v"), (self.initial_state, "initial_state")):
            if x is not None:
                _check_finite(x, name)

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


def _check_finite(x: torch.Tensor, name: str) -> None:
    # One reduction pass: min and max propagate NaN and expose +-inf, so both are finite exactly
    # when every element is (torch.isfinite(x).all() materializes a bool tensor: 3x slower).
    lo, hi = torch.aminmax(x.detach())
    if not (bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))):
        raise nonfinite_error(name)


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
    and the float64 ``g_gamma [H]`` tensor (its values are checked by :func:`validate_call`)."""

    scale: float
    quant: RetentionQuantConfig | None
    g_gamma: torch.Tensor


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
    if g_gamma is None:
        g = default_g_gamma(H, device=q.device)
    elif isinstance(g_gamma, torch.Tensor):
        if not g_gamma.is_floating_point():
            raise TypeError(f"g_gamma must be a floating tensor (log gamma per head), got {g_gamma.dtype}")
        if g_gamma.shape != (H,):
            raise ValueError(f"g_gamma must have shape [H]=[{H}], got {list(g_gamma.shape)}")
        g = g_gamma.detach().to(device=q.device, dtype=torch.float64)
    else:
        g = resolve_g_gamma(g_gamma, H, device=q.device)
    return StaticArgs(scale=_check_scale(scale, K), quant=resolve_quant(quant), g_gamma=g)


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
    cs = None if cu_seqlens is None else _check_cu_seqlens(cu_seqlens, q.shape[0], q.shape[1])
    # Finiteness of the inputs is checked after backend selection (RetentionCall.check_finite, or
    # inside kernels that see every input element anyway): it is a full pass over the inputs.
    return RetentionCall(
        q=q,
        k=k,
        v=v,
        scale=static.scale,
        g_gamma=resolve_g_gamma(static.g_gamma if g_gamma is not None else None, q.shape[2], q.device),
        initial_state=initial_state,
        output_final_state=output_final_state,
        cu_seqlens=cs,
        quant=static.quant,
    )
