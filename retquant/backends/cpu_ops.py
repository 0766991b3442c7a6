"""The CPU kernels as two PyTorch custom ops, so ``torch.compile`` sees each call as one op.

``torch.ops.retquant.cpu_chunk_int8`` and ``torch.ops.retquant.cpu_recurrent_int8`` take tokens
as contiguous ``[T_total, H, D]`` (float32; the chunk op also bfloat16, read and written as
such) with sequence ``offsets [N + 1]`` (int64) and return ``(o [T_total, H, V] in q's dtype,
final_state [N, H, K, V] float32)``. Each has a fake (meta) implementation
giving the output shapes, which is what a compiler traces; at run time it builds the decay
tables, calls the C++ op (``retquant::chunk_fwd`` / ``retquant::recurrent_fwd``) and raises the
``ValueError`` of :func:`retquant.validate.nonfinite_error` when the kernel saw inf or NaN.
Eager calls go to the same Python functions directly (:func:`chunk`, :func:`recurrent`).

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

from retquant.backends import cpu_extension
from retquant.constants import CHUNK_SIZE
from retquant.decay import chunk_decay_tables
from retquant.validate import nonfinite_error

_TABLE_CACHE: dict[tuple, dict] = {}
_NONFINITE_BITS = ((1, "q"), (2, "k"), (4, "v"), (8, "initial_state"))  # csrc/chunk_retention.h


def raise_nonfinite(status: int) -> None:
    """The kernels flag inf/NaN inputs while reading them (no extra pass): name the first."""
    for bit, name in _NONFINITE_BITS:
        if status & bit:
            raise nonfinite_error(name)


def decay_tables(g_gamma: torch.Tensor, lengths, chunk_size: int = CHUNK_SIZE) -> dict:
    """The kernel's decay tables (row, col, mask, inter, kdec, chunk, fused; gamma) from
    :func:`retquant.decay.chunk_decay_tables`: kdec/chunk are indexed by chunk length L and
    filled for L = chunk_size and every length in ``lengths``. Cached per ``g_gamma``."""
    g = g_gamma.detach().to("cpu", torch.float64)
    key = (tuple(g.tolist()), chunk_size)
    entry = _TABLE_CACHE.get(key)
    if entry is None:
        full = chunk_decay_tables(g, chunk_size, chunk_size)
        H, C = g.numel(), chunk_size
        entry = {
            "row": full.row.contiguous(),
            "col": full.col.contiguous(),
            "mask": full.mask.contiguous(),
            "inter": full.inter.contiguous(),
            "fused": full.fused.to(torch.uint8).contiguous(),
            "gamma": torch.exp(g).float().contiguous(),  # per head, for the decode kernel
            "kdec": torch.zeros(H, C + 1, C),
            "chunk": torch.zeros(H, C + 1),
            "filled": set(),
        }
        _TABLE_CACHE[key] = entry
    for L in {chunk_size, *lengths}:
        if L not in entry["filled"]:
            t = chunk_decay_tables(g, L, chunk_size)
            entry["kdec"][:, L, :L] = t.kdec
            entry["chunk"][:, L] = t.chunk
            entry["filled"].add(L)
    return entry


def last_chunk_lengths(offsets: torch.Tensor, chunk_size: int = CHUNK_SIZE) -> set[int]:
    lens = (offsets[1:] - offsets[:-1]).tolist()
    return {(n - 1) % chunk_size + 1 for n in lens}


def chunk_args(q, k, v, offsets, scale, g_gamma, initial_state, isa: int) -> tuple:
    """Arguments of ``retquant::chunk_fwd`` / ``chunk_fwd_debug`` up to ``isa`` (an ISA code,
    :func:`retquant.backends.cpu_extension.isa_code`)."""
    t = decay_tables(g_gamma, last_chunk_lengths(offsets))
    tables = (t["row"], t["col"], t["mask"], t["inter"], t["kdec"], t["chunk"], t["fused"])
    return (q, k, v, offsets, scale, *tables, initial_state, isa)


def release_cached_outputs() -> None:
    """Give back to the OS the freed output buffers the CPU kernels keep for reuse (at most
    256 MiB, ``csrc/output_alloc.cpp``); outputs still in use are not affected.

    Example:
        >>> release_cached_outputs()
    """
    if cpu_extension.load_error() is None:
        cpu_extension.ops().release_cached_outputs()


def _shapes(q: torch.Tensor, v: torch.Tensor, offsets: torch.Tensor):
    T, H, K = q.shape
    return (T, H, v.shape[2]), (offsets.shape[0] - 1, H, K, v.shape[2])


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
    out_shape, state_shape = _shapes(q, v, offsets)
    # from freed outputs: a fresh one page-faults (csrc/output_alloc.cpp)
    out = ops.empty_cached(list(out_shape), q.dtype)
    final = ops.empty_cached(list(state_shape), torch.float32)
    args = chunk_args(q, k, v, offsets, scale, g_gamma, initial_state, cpu_extension.isa_code())
    raise_nonfinite(ops.chunk_fwd(*args, out, final))
    return out, final


def recurrent_int8(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    offsets: torch.Tensor,
    scale: float,
    g_gamma: torch.Tensor,
    initial_state: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    ops = cpu_extension.ops()
    out_shape, state_shape = _shapes(q, v, offsets)
    out = torch.empty(out_shape, dtype=torch.float32)
    final = ops.empty_cached(list(state_shape), torch.float32)
    gamma = decay_tables(g_gamma, ())["gamma"]
    status = ops.recurrent_fwd(
        q, k, v, offsets, scale, gamma, initial_state, out, final, cpu_extension.isa_code()
    )
    raise_nonfinite(status)
    return out, final


def _outputs_like(q, k, v, offsets, scale, g_gamma, initial_state):
    out_shape, state_shape = _shapes(q, v, offsets)
    return q.new_empty(out_shape), q.new_empty(state_shape, dtype=torch.float32)


cpu_chunk_int8 = torch.library.custom_op("retquant::cpu_chunk_int8", chunk_int8, mutates_args=())
cpu_recurrent_int8 = torch.library.custom_op("retquant::cpu_recurrent_int8", recurrent_int8, mutates_args=())
cpu_chunk_int8.register_fake(_outputs_like)
cpu_recurrent_int8.register_fake(_outputs_like)


def chunk(*args):
    """:func:`chunk_int8` as the custom op under torch.compile, called directly otherwise (the
    dispatcher round trip of a Python custom op costs ~20-40 us: a decode step's budget)."""
    return cpu_chunk_int8(*args) if torch.compiler.is_compiling() else chunk_int8(*args)


def recurrent(*args):
    """:func:`recurrent_int8`, like :func:`chunk`."""
    return cpu_recurrent_int8(*args) if torch.compiler.is_compiling() else recurrent_int8(*args)
