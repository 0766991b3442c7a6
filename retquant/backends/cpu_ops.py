"""The CPU kernels as two PyTorch custom ops, so ``torch.compile`` sees each call as one op.

``torch.ops.retquant.cpu_chunk_int8`` takes tokens as contiguous ``[T_total, H, D]`` (float32
or bfloat16, read and written as such) with sequence ``offsets [N + 1]`` (int64) and returns
``(o [T_total, H, V] in q's dtype, final_state [N, H, K, V] float32)``;
``torch.ops.retquant.cpu_recurrent_int8`` takes the ops' own ``[B, T, H, D]`` tensors (any float
dtype and strides) with ``cu_seqlens`` or ``None`` and returns ``(o [B, T, H, V] in q's dtype,
final_state)``. Each has a fake (meta) implementation giving the output shapes, which is what a
compiler traces; at run time it builds the decay tables, calls the C++ op
(``retquant::chunk_fwd`` / ``retquant::recurrent_call``) and raises the ``ValueError`` of
:func:`retquant.validate.check_quant_inputs` when the kernel saw inf, NaN or an input outside the
accepted range. Eager calls go to the same Python functions directly (:func:`chunk`,
:func:`recurrent`).

Example:
    >>> from retquant.decay import default_g_gamma
    >>> q = k = v = torch.randn(100, 2, 32)
    >>> off = torch.tensor([0, 100])
    >>> o, s = torch.ops.retquant.cpu_chunk_int8(q, k, v, off, 0.17, default_g_gamma(2), None)
    >>> o.shape, s.shape
    (torch.Size([100, 2, 32]), torch.Size([1, 2, 32, 32]))
"""

from __future__ import annotations

import torch

from retquant import decay
from retquant.backends import cpu_extension
from retquant.constants import CHUNK_SIZE
from retquant.decay import kernel_decay_tables, kernel_step_gamma
from retquant.validate import check_quant_inputs, nonfinite_error, range_error

# csrc/chunk_retention.h: per input, the non-finite flag and the out-of-range flag
_STATUS_BITS = ((1, 16, "q"), (2, 32, "k"), (4, 64, "v"), (8, 128, "initial_state"))


def raise_nonfinite(status: int) -> None:
    """The kernels flag inf/NaN and out-of-range inputs while reading them (no extra pass): raise
    the ValueError :func:`retquant.validate.check_quant_inputs` raises for the first of them."""
    for finite_bit, range_bit, name in _STATUS_BITS:
        if status & finite_bit:
            raise nonfinite_error(name)
        if status & range_bit:
            raise range_error(name)


def raise_recurrent_status(status: int, initial_state: torch.Tensor | None) -> None:
    """:func:`raise_nonfinite` for the decode kernel, which checks the state while reading it with
    one flag for "inf/NaN" and "magnitude >= 2**100" (no extra pass): on that error path the
    state is scanned once here to raise the matching error."""
    if status & 8 and initial_state is not None:
        check_quant_inputs(None, None, None, initial_state, 1.0)
    raise_nonfinite(status)


def last_chunk_lengths(offsets: torch.Tensor, chunk_size: int = CHUNK_SIZE) -> set[int]:
    """:func:`retquant.decay.last_chunk_lengths` of the sequences of token ``offsets``."""
    return decay.last_chunk_lengths((offsets[1:] - offsets[:-1]).tolist(), chunk_size)


def chunk_args(q, k, v, offsets, scale, g_gamma, initial_state, isa: int) -> tuple:
    """Arguments of ``retquant::chunk_fwd`` / ``chunk_fwd_debug`` up to ``isa`` (an ISA code,
    :func:`retquant.backends.cpu_extension.isa_code`)."""
    t = kernel_decay_tables(g_gamma, last_chunk_lengths(offsets))
    tables = (t["row"], t["col"], t["mask"], t["inter"], t["kdec"], t["chunk"], t["fused"])
    return (q, k, v, offsets, scale, *tables, initial_state, isa)


OUTPUT_CACHE_ENV = "RETQUANT_OUTPUT_CACHE_MB"


def release_cached_outputs() -> None:
    """Give back to the OS the freed output buffers the CPU kernels keep for reuse
    (``csrc/output_alloc.cpp``); outputs still in use are not affected.

    Outputs of 2 MiB or more come from that cache: buffers are mapped in size classes (8 per
    power of two, so nearby shapes share them) and freed ones are kept, up to
    ``RETQUANT_OUTPUT_CACHE_MB`` MiB (default 128; read once, at the first such output; 0
    disables the cache), least recently freed evicted first.

    Example:
        >>> release_cached_outputs()
        >>> cached_output_bytes()
        0
    """
    if cpu_extension.load_error() is None:
        cpu_extension.ops().release_cached_outputs()


def cached_output_bytes() -> int:
    """Bytes of freed output buffers the cache holds now (at most the ``RETQUANT_OUTPUT_CACHE_MB``
    cap; 0 when the extension is not built).

    Example:
        >>> isinstance(cached_output_bytes(), int)
        True
    """
    if cpu_extension.load_error() is not None:
        return 0
    return int(cpu_extension.ops().cached_output_bytes())


def output_shapes(q: torch.Tensor, v: torch.Tensor, offsets: torch.Tensor):
    """``(o [T, H, V], final_state [N, H, K, V])`` shapes of a kernel on ``[T, H, D]`` tokens."""
    T, H, K = q.shape
    return (T, H, v.shape[2]), (offsets.shape[0] - 1, H, K, v.shape[2])


def cached_outputs(q: torch.Tensor, v: torch.Tensor, offsets: torch.Tensor):
    """``o`` (q's dtype) and the float32 final state from freed outputs: a fresh large buffer
    page-faults for longer than the kernels compute (csrc/output_alloc.cpp)."""
    ops = cpu_extension.ops()
    out_shape, state_shape = output_shapes(q, v, offsets)
    return ops.empty_cached(list(out_shape), q.dtype), ops.empty_cached(list(state_shape), torch.float32)


def chunk_int8(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    offsets: torch.Tensor,
    scale: float,
    g_gamma: torch.Tensor,
    initial_state: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    ops = cpu_extension.ops()
    out, final = cached_outputs(q, v, offsets)
    args = chunk_args(q, k, v, offsets, scale, g_gamma, initial_state, cpu_extension.isa_code())
    raise_nonfinite(ops.chunk_fwd(*args, out, final))
    return out, final


def recurrent_int8(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor | None,
    scale: float,
    g_gamma: torch.Tensor,
    initial_state: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    # One C++ call converts, allocates and runs the kernel (retquant::recurrent_call): a decode
    # step's Python budget is a handful of torch calls.
    o, final, status = cpu_extension.ops().recurrent_call(
        q, k, v, cu_seqlens, scale, kernel_step_gamma(g_gamma), initial_state, cpu_extension.isa_code()
    )
    if status:
        raise_recurrent_status(status, initial_state)
    return o, final


def outputs_like(q, k, v, offsets, scale, g_gamma, initial_state):
    """The fake implementation of the token-row CPU kernel custom ops: empty outputs of the right
    shapes."""
    out_shape, state_shape = output_shapes(q, v, offsets)
    return q.new_empty(out_shape), q.new_empty(state_shape, dtype=torch.float32)


def recurrent_outputs_like(q, k, v, cu_seqlens, scale, g_gamma, initial_state):
    """The fake implementation of ``cpu_recurrent_int8`` (``[B, T, H, D]`` inputs)."""
    B, T, H, K = q.shape
    N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    return q.new_empty(B, T, H, v.shape[3]), q.new_empty(N, H, K, v.shape[3], dtype=torch.float32)


cpu_chunk_int8 = torch.library.custom_op("retquant::cpu_chunk_int8", chunk_int8, mutates_args=())
cpu_recurrent_int8 = torch.library.custom_op("retquant::cpu_recurrent_int8", recurrent_int8, mutates_args=())
cpu_chunk_int8.register_fake(outputs_like)
cpu_recurrent_int8.register_fake(recurrent_outputs_like)


def chunk(*args):
    """:func:`chunk_int8` as the custom op under torch.compile, called directly otherwise (the
    dispatcher round trip of a Python custom op costs ~20-40 us: a decode step's budget)."""
    return cpu_chunk_int8(*args) if torch.compiler.is_compiling() else chunk_int8(*args)


def recurrent(*args):
    """:func:`recurrent_int8`, like :func:`chunk`."""
    return cpu_recurrent_int8(*args) if torch.compiler.is_compiling() else recurrent_int8(*args)
