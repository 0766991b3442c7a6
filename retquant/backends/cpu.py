"""The ``cpu`` backend: the C++/OpenMP int8 kernels (AVX-512 VNNI or portable) for CPU tensors.

Runs ``chunk`` and ``fused_recurrent`` with the default int8 configuration; for anything else,
or when the extension cannot be built, :func:`unsupported` returns the reason (``auto`` then
warns once and runs the reference; ``backend="cpu"`` raises). Importing this module never fails
and never compiles: the build happens on the first call that could use the kernels.

Inputs of any float dtype but float64 and any strides are converted to contiguous float32 for
the kernels; ``o`` comes back in q's dtype, the final state in float32 (as the reference does).
"""

from __future__ import annotations

import torch

from retquant.backends import cpu_extension
from retquant.backends.registry import Backend, register_backend
from retquant.constants import CHUNK_SIZE
from retquant.decay import chunk_decay_tables
from retquant.validate import RetentionCall, nonfinite_error

SUPPORTED_OPS = ("chunk", "fused_recurrent")
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

_TABLE_CACHE: dict[tuple, object] = {}


def unsupported(op: str, call: RetentionCall) -> str | None:
    """``None`` if the C++ kernels can run ``op`` on ``call``, else why not."""
    if op not in SUPPORTED_OPS:
        return f"the cpu backend implements {SUPPORTED_OPS}, not {op!r}"
    if call.quant is None:
        return "float retention (quant=None) is not implemented by the cpu backend"
    if not call.quant.is_default_int8():
        return "the cpu kernels implement the default int8 configuration only"
    if call.q.device.type != "cpu":
        return f"the cpu backend needs CPU tensors, got {call.q.device}"
    if call.q.dtype not in SUPPORTED_DTYPES:
        return f"the cpu kernels take float32/bfloat16/float16 inputs, got {call.q.dtype}"
    tensors = (call.q, call.k, call.v, call.initial_state)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return "the cpu kernels are forward-only (inputs require grad)"
    return cpu_extension.load_error()


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """[B, T, H, D] of any float dtype/strides -> contiguous float32 [B*T, H, D]."""
    B, T, H, D = x.shape
    return x.detach().to(torch.float32).contiguous().view(B * T, H, D)


def _offsets(call: RetentionCall) -> torch.Tensor:
    if call.cu_seqlens is not None:
        return call.cu_seqlens.to(torch.int64).contiguous()
    B, T = call.q.shape[:2]
    return torch.arange(0, B * T + 1, T, dtype=torch.int64)


def _init(call: RetentionCall) -> torch.Tensor | None:
    s = call.initial_state
    return None if s is None else s.detach().to(torch.float32).contiguous()


def decay_tables(g_gamma: torch.Tensor, lengths, chunk_size: int = CHUNK_SIZE):
    """The kernel's decay tables (row, col, mask, inter, kdec, chunk, fused) from
    :func:`retquant.decay.chunk_decay_tables`: kdec/chunk are indexed by chunk length L and
    filled for L = chunk_size and every length in ``lengths``."""
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


def _last_lengths(offsets: torch.Tensor, chunk_size: int):
    lens = (offsets[1:] - offsets[:-1]).tolist()
    return {(n - 1) % chunk_size + 1 for n in lens}


_NONFINITE_BITS = ((1, "q"), (2, "k"), (4, "v"), (8, "initial_state"))  # csrc/chunk_retention.h


def _raise_nonfinite(status: int) -> None:
    """The kernels flag inf/NaN inputs while reading them (no extra pass): name the first."""
    for bit, name in _NONFINITE_BITS:
        if status & bit:
            raise nonfinite_error(name)


def chunk_raw(call: RetentionCall, use_vnni: bool | None = None, debug_chunks: int = 0):
    """Run the chunk kernel on ``call``: ``(o f32 [B*T, H, V], final f32 [N, H, K, V])``, or with
    ``debug_chunks > 0`` also the four int32 accumulators (tests)."""
    ops = cpu_extension.ops()
    vnni = cpu_extension.use_vnni() if use_vnni is None else use_vnni
    q, k, v = _tokens(call.q), _tokens(call.k), _tokens(call.v)
    offsets = _offsets(call)
    t = decay_tables(call.g_gamma, _last_lengths(offsets, CHUNK_SIZE))
    args = (
        q,
        k,
        v,
        offsets,
        call.scale,
        t["row"],
        t["col"],
        t["mask"],
        t["inter"],
        t["kdec"],
        t["chunk"],
        t["fused"],
        _init(call),
        vnni,
    )
    if debug_chunks:
        return ops.chunk_fwd_debug(*args, debug_chunks)
    T, H, V = q.shape[0], q.shape[1], v.shape[2]
    out = ops.empty_f32([T, H, V])  # from freed outputs: a fresh one page-faults (csrc/output_alloc.cpp)
    final = torch.empty(offsets.numel() - 1, H, q.shape[2], V, dtype=torch.float32)
    _raise_nonfinite(ops.chunk_fwd(*args, out, final))
    return out, final


def recurrent_raw(call: RetentionCall):
    """Run the recurrent kernel on ``call``: ``(o f32 [B*T, H, V], final f32 [N, H, K, V])``."""
    ops = cpu_extension.ops()
    q, k, v = _tokens(call.q), _tokens(call.k), _tokens(call.v)
    offsets = _offsets(call)
    gamma = torch.exp(call.g_gamma.detach().to("cpu", torch.float64)).float().contiguous()
    T, H, V = q.shape[0], q.shape[1], v.shape[2]
    out = torch.empty(T, H, V, dtype=torch.float32)
    final = torch.empty(offsets.numel() - 1, H, q.shape[2], V, dtype=torch.float32)
    avx512 = cpu_extension.use_vnni()
    _raise_nonfinite(ops.recurrent_fwd(q, k, v, offsets, call.scale, gamma, _init(call), out, final, avx512))
    return out, final


def _finish(call: RetentionCall, out: torch.Tensor, final: torch.Tensor):
    o = out.view(call.q.shape[:3] + (call.v.shape[3],)).to(call.q.dtype)
    return o, (final if call.output_final_state else None)


def chunk(call: RetentionCall):
    return _finish(call, *chunk_raw(call))


def fused_recurrent(call: RetentionCall):
    return _finish(call, *recurrent_raw(call))


register_backend(
    Backend(
        name="cpu",
        impls={"chunk": chunk, "fused_recurrent": fused_recurrent},
        unsupported=unsupported,
        checks_finite=True,
    )
)
