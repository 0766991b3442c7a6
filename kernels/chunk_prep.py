"""Host-side preparation shared by the chunk kernels' launchers: argument checks, sequence and
chunk offsets (dense or varlen), the decay tables, and the output/trace buffers."""

from __future__ import annotations

import functools
from collections import OrderedDict
from dataclasses import dataclass

import torch

from retquant.decay import decay_key, kernel_decay_tables, last_chunk_lengths

# Launch constants kept per (sequence lengths, chunk size, device): N + 1 + NC int32 each.
SEQUENCE_TABLE_CACHE_SIZE = 32
# Device copies of the decay tables per (decay, chunk size, device), ~0.3 MB each at H=8: more
# than the CPU tables keep, so a model with many fixed per-layer decays hits here every call.
DEVICE_DECAY_CACHE_SIZE = 32
_DEVICE_DECAY: OrderedDict[tuple, tuple] = OrderedDict()


@dataclass(frozen=True)
class SequenceTables:
    """What a launch needs beside its inputs, on the device: ``cu`` [N+1] token offsets,
    ``choff`` [N] first global chunk of each sequence, ``chunk_seq`` [NC] sequence of each global
    chunk (cached per lengths); the decay tables of
    :func:`retquant.decay.kernel_decay_tables` (``row``, ``col``, ``mask``, ``inter`` of a full
    chunk, ``fused`` as int32, and ``kdec`` [H, C+1, C] / ``chunk`` [H, C+1] indexed by chunk
    length, the rows of this call's lengths filled); ``dummy`` a one-float buffer for pointer
    arguments a launch does not use."""

    cu: torch.Tensor
    choff: torch.Tensor
    chunk_seq: torch.Tensor
    row: torch.Tensor
    col: torch.Tensor
    mask: torch.Tensor
    inter: torch.Tensor
    fused: torch.Tensor
    kdec: torch.Tensor
    chunk: torch.Tensor
    dummy: torch.Tensor


@dataclass
class ChunkLaunch:
    """Everything a chunk kernel launch needs, on the inputs' device: the inputs, the sizes,
    the cached :class:`SequenceTables` and the output/trace buffers."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    H: int
    K: int
    V: int
    N: int
    NC: int
    C: int
    scale: float
    tables: SequenceTables
    h0: torch.Tensor | None
    out: torch.Tensor
    final: torch.Tensor | None
    trace: dict | None


def check_block_v(block_v) -> None:
    """``block_v`` must be None or a power of two >= 16."""
    if block_v is not None and (not isinstance(block_v, int) or block_v < 16 or block_v & (block_v - 1)):
        raise ValueError(f"block_v must be a power of two >= 16, got {block_v!r}")


def sequence_lengths(q, k, v, cu_seqlens) -> list[int]:
    """Check the ``[B, T, H, *]`` shapes and return the length of every sequence."""
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"expected q, k [B, T, H, K] and v [B, T, H, V]; got {list(q.shape)}, "
            f"{list(k.shape)}, {list(v.shape)}"
        )
    B, T = q.shape[:2]
    if cu_seqlens is None:
        return [T] * B
    if B != 1:
        raise ValueError(f"with cu_seqlens the batch size must be 1, got B={B}")
    bounds = cu_seqlens.tolist()
    return [e - s for s, e in zip(bounds[:-1], bounds[1:], strict=True)]


@functools.lru_cache(maxsize=SEQUENCE_TABLE_CACHE_SIZE)
def token_offsets(lengths: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``cu`` [N+1] int32 token offsets of these sequence lengths on ``device``, and a one-float
    buffer there for pointer arguments a launch does not use (the chunk and decode launchers)."""
    cu = torch.tensor([0, *lengths], dtype=torch.int64).cumsum(0).to(device=device, dtype=torch.int32)
    return cu, torch.empty(1, dtype=torch.float32, device=device)


@functools.lru_cache(maxsize=SEQUENCE_TABLE_CACHE_SIZE)
def _chunk_offsets(lengths: tuple, c: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``choff`` [N] first global chunk of each sequence, ``chunk_seq`` [NC] sequence of each
    global chunk, int32 on ``device``."""
    nchunks = [-(-n // c) for n in lengths]
    i32 = {"dtype": torch.int32, "device": device}
    return (
        torch.tensor([0, *nchunks[:-1]], dtype=torch.int64).cumsum(0).to(**i32),
        torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(nchunks)).to(**i32),
    )


def _decay(g_gamma: torch.Tensor, lengths: list[int], c: int, device: torch.device) -> tuple:
    """Device copies of :func:`kernel_decay_tables` (computed on the CPU: the spec's numbers),
    made again only when the call needs a chunk length the copy does not hold yet. Always real
    copies (on a CPU device too), so a cached copy never changes under a launch."""
    lasts = last_chunk_lengths(lengths, c)
    g = g_gamma.detach().to("cpu", torch.float64)  # one device-to-host copy for a CUDA g_gamma
    key = (decay_key(g), c, device)
    hit = _DEVICE_DECAY.get(key)
    if hit is None or not lasts <= hit[0]:  # the copy lacks a length this call needs
        t = kernel_decay_tables(g, lasts, c)
        filled = frozenset(t["filled"])  # read before copying: rows only ever get added
        names = ("row", "col", "mask", "inter", "kdec", "chunk")
        copies = [t[n].to(device, copy=True) for n in names]
        hit = (filled, [*copies, t["fused"].to(device=device, dtype=torch.int32, copy=True)])
        _DEVICE_DECAY[key] = hit
        while len(_DEVICE_DECAY) > DEVICE_DECAY_CACHE_SIZE:
            _DEVICE_DECAY.popitem(last=False)
    _DEVICE_DECAY.move_to_end(key)
    return tuple(hit[1])


def launch_tables(g_gamma: torch.Tensor, lengths: list[int], c: int, device: torch.device) -> SequenceTables:
    """The :class:`SequenceTables` of one call, from the two caches (host work per call on a
    hit: the keys, of which the decay's copies a CUDA ``g_gamma`` to the host)."""
    cu, dummy = token_offsets(tuple(lengths), device)
    choff, chunk_seq = _chunk_offsets(tuple(lengths), c, device)
    row, col, mask, inter, kdec, chunk, fused = _decay(g_gamma, lengths, c, device)
    return SequenceTables(cu, choff, chunk_seq, row, col, mask, inter, fused, kdec, chunk, dummy)


def prepare_chunk_launch(
    q,
    k,
    v,
    g_gamma,
    scale,
    initial_state,
    output_final_state,
    cu_seqlens,
    out,
    final_out,
    trace,
    chunk_size,
) -> ChunkLaunch:
    """Validate shapes, build offsets, tables and buffers for one chunk-kernel call."""
    lengths = sequence_lengths(q, k, v, cu_seqlens)
    B, T, H, K = q.shape
    V = v.shape[-1]
    dev = q.device
    N = len(lengths)
    c = chunk_size
    i32 = {"dtype": torch.int32, "device": dev}
    nc = sum(-(-n // c) for n in lengths)
    if out is None:
        out = torch.empty(B, T, H, V, dtype=q.dtype, device=dev)
    if output_final_state and final_out is None:
        final_out = torch.empty(N, H, K, V, dtype=torch.float32, device=dev)
    tr = None
    if trace:
        tr = {
            "acc_qk": torch.empty(nc, H, c, c, **i32),
            "acc_pv": torch.empty(nc, H, c, V, **i32),
            "acc_qs": torch.empty(nc, H, c, V, **i32),
            "acc_kv": torch.empty(nc, H, K, V, **i32),
        }
    return ChunkLaunch(
        q=q.contiguous(),
        k=k.contiguous(),
        v=v.contiguous(),
        H=H,
        K=K,
        V=V,
        N=N,
        NC=nc,
        C=c,
        scale=float(torch.tensor(scale, dtype=torch.float32)),
        tables=launch_tables(g_gamma, lengths, c, dev),
        h0=None if initial_state is None else initial_state.to(torch.float32).contiguous(),
        out=out,
        final=final_out if output_final_state else None,
        trace=tr,
    )


# An int8 ``tl.dot`` on an NVIDIA GPU needs a reduced dimension of at least 32 (the int8 MMA
# shapes; Triton asserts it at compile time), other dimensions at least 16.
DOT_MIN_DIM = 16
INT8_DOT_MIN_REDUCED = 32


def block(n: int, least: int = DOT_MIN_DIM) -> int:
    """Smallest power of two >= max(n, least); the padding lanes are masked to zero."""
    p = least
    while p < n:
        p *= 2
    return p


def launch_over_v(kernel, tuned, args, meta, rest, p: ChunkLaunch, block_v, gpu_bv: int) -> None:
    """Launch on the grid ``(cdiv(V, BV), *rest)``: a fixed ``BV`` when it is given, in the
    interpreter (no autotuner there) and for trace runs (``gpu_bv`` caps it on a GPU), else the
    autotuned variant ``tuned``."""
    import triton

    from retquant.kernels.quant_int8 import interpreted

    if block_v is not None or interpreted() or p.trace is not None:
        bv = block_v or (block(p.V) if interpreted() else min(block(p.V), gpu_bv))
        kernel[(triton.cdiv(p.V, bv), *rest)](*args, BV=bv, **meta)
    else:
        tuned[lambda m: (triton.cdiv(p.V, m["BV"]), *rest)](*args, **meta)


def state_meta(p: ChunkLaunch) -> dict:
    """Compile-time arguments of the kernels that carry the state across chunks."""
    return {
        "C": p.C,
        "BK": block(p.K, INT8_DOT_MIN_REDUCED),  # K is reduced in Q K^T and Q S
        "USE_H0": p.h0 is not None,
        "STORE_HT": p.final is not None,
        "TRACE": p.trace is not None,
        "enable_fp_fusion": False,  # no FMA contraction: every float step rounds as in the spec
    }
