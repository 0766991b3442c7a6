"""The float (``quant=None``) chunkwise retention forward on the CPU: one fused C++ kernel.

:func:`chunk_float` takes tokens as contiguous ``[T_total, H, D]`` with sequence ``offsets
[N + 1]`` (int64) and returns ``(o [T_total, H, V] in q's dtype, final_state [N, H, K, V]
float32)``, accumulating in float32 (``csrc/float_chunk_body.h``). float32 and bfloat16 are read
and written as they are (bfloat16 ``o`` rounded to nearest even like ``.to(torch.bfloat16)``);
float16 is computed in float32 and ``o`` converted back. The decay factors are the tables of
:func:`retquant.decay.kernel_decay_tables`, the numbers every
other path multiplies by. inf/NaN inputs are not checked here: they propagate as in the float64
specification. ``torch.ops.retquant.cpu_chunk_float`` is the same function as a custom op with a
fake implementation, for ``torch.compile``.

Instruction set: ``RETQUANT_CPU_ISA`` = ``auto`` (default: the best this CPU has), ``avx512``
(``vnni`` means the same here), ``avx2`` or ``portable``, read at each call; asking for one the
CPU lacks is an error (:func:`isa_level`).

Example:
    >>> from retquant.decay import default_g_gamma
    >>> q = k = v = torch.randn(100, 2, 32)
    >>> o, s = chunk_float(q, k, v, torch.tensor([0, 100]), 32**-0.5, default_g_gamma(2), None)
    >>> o.shape, s.shape
    (torch.Size([100, 2, 32]), torch.Size([1, 2, 32, 32]))
"""

from __future__ import annotations

import torch

from retquant.backends import cpu_extension, cpu_ops
from retquant.decay import kernel_decay_tables
from retquant.validate import RetentionCall

ISA_NAMES = ("portable", "avx2", "avx512")  # kFloatIsa* of csrc/float_chunk.h, by code
KERNEL_DTYPES = (torch.float32, torch.bfloat16)  # read and written by the kernel as they are
SUPPORTED_DTYPES = (*KERNEL_DTYPES, torch.float16)  # float16: through float32


def best_isa() -> str:
    """The widest instruction set of the float kernel this CPU runs (CPUID).

    Example:
        >>> best_isa() in ISA_NAMES
        True
    """
    return ISA_NAMES[int(cpu_extension.ops().float_chunk_isa())]


def isa_level() -> int:
    """The ``isa`` argument of ``retquant::float_chunk_fwd`` for ``RETQUANT_CPU_ISA``
    (:func:`retquant.backends.cpu_extension.requested_isa`); forcing an ISA the float kernel
    cannot run on this CPU is a ``RuntimeError``.

    Example:
        >>> isa_level() in (0, 1, 2)
        True
    """
    name = cpu_extension.requested_isa()
    best = ISA_NAMES.index(best_isa())
    if name == "auto":
        return best
    level = ISA_NAMES.index(name)
    if level > best:
        raise RuntimeError(
            f"{cpu_extension.ISA_ENV}={name} but this CPU's widest float-kernel ISA is {ISA_NAMES[best]}"
        )
    return level


def supported(call: RetentionCall) -> str | None:
    """``None`` if :func:`chunk_float` can run the float forward of ``call``, else why not.

    Example:
        >>> from retquant.validate import validate_call
        >>> q = k = v = torch.randn(1, 8, 2, 16)
        >>> supported(validate_call(q, k, v)) is None
        True
    """
    if call.quant is not None:
        return "the float CPU kernel runs quant=None calls only"
    if call.q.device.type != "cpu":
        return f"the float CPU kernel needs CPU tensors, got {call.q.device}"
    if call.q.dtype not in SUPPORTED_DTYPES:
        names = "/".join(str(d).removeprefix("torch.") for d in SUPPORTED_DTYPES)
        return f"the float CPU kernel takes {names} inputs, got {call.q.dtype}"
    return cpu_extension.load_error()


def _tables(g_gamma: torch.Tensor, offsets: torch.Tensor):
    t = kernel_decay_tables(g_gamma, cpu_ops.last_chunk_lengths(offsets))
    return t["mask"], t["inter"], t["kdec"], t["chunk"]


def chunk_float(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    offsets: torch.Tensor,
    scale: float,
    g_gamma: torch.Tensor,
    initial_state: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float chunkwise retention of the packed sequences ``offsets`` delimits in ``[T_total, H,
    D]`` tokens: ``(o [T_total, H, V] in q's dtype, final_state [N, H, K, V] float32)``.

    ``q, k, v`` share one dtype (float32, bfloat16, float16) and must be contiguous; ``g_gamma``
    is log gamma per head ``[H]``; ``initial_state`` float32 ``[N, H, K, V]`` or ``None``.

    Example:
        >>> q = k = v = torch.randn(10, 1, 8)
        >>> o, s = chunk_float(q, k, v, torch.tensor([0, 4, 10]), 0.35, torch.tensor([-0.1]), None)
        >>> o.shape, s.shape
        (torch.Size([10, 1, 8]), torch.Size([2, 1, 8, 8]))
    """
    ops = cpu_extension.ops()
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.dim() != 3 or v.dim() != 3:
        raise ValueError(f"q and v must be [T_total, H, D], got {list(q.shape)} and {list(v.shape)}")
    if offsets.dim() != 1 or offsets.numel() < 2:
        raise ValueError(f"offsets must be [N + 1] with N >= 1, got shape {list(offsets.shape)}")
    if q.dtype == torch.float16:
        o, final = chunk_float(q.float(), k.float(), v.float(), offsets, scale, g_gamma, initial_state)
        return o.to(torch.float16), final
    if not isinstance(g_gamma, torch.Tensor) or g_gamma.shape != (q.shape[1],):
        raise ValueError(f"g_gamma must be a tensor [H]={q.shape[1]}, got {g_gamma!r}")
    out, final = cpu_ops.cached_outputs(q, v, offsets)
    ops.float_chunk_fwd(
        q, k, v, offsets, scale, *_tables(g_gamma, offsets), initial_state, isa_level(), out, final
    )
    return out, final


cpu_chunk_float = torch.library.custom_op("retquant::cpu_chunk_float", chunk_float, mutates_args=())
cpu_chunk_float.register_fake(cpu_ops.outputs_like)
