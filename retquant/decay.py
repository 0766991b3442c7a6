"""The decay schedule of multi-scale retention and the per-chunk decay tables derived from it.

Everything that needs gamma gets it from here, so the float spec, the integer spec and the
kernels agree on every factor. Tables are computed in float64 and rounded once to float32, so
a kernel that loads them multiplies by exactly the numbers the PyTorch spec multiplies by. They
are always computed on the CPU and then moved to ``g_gamma``'s device: a GPU's float64 ``exp``
is not the CPU's (CUDA's is not correctly rounded), so computing them where ``g_gamma`` lives
would make the integer specification depend on the device.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch

from retquant.constants import CHUNK_SIZE, DECAY_BASE_EXP, FUSED_DECAY_MAX_LOG2


def default_g_gamma(num_heads: int, device=None) -> torch.Tensor:
    """RetNet's per-head log-decay, ``log(1 - 2**(-5 - h))``, as float64 of shape ``[H]``.

    A new tensor on every call (callers may write to it); the values are computed once per
    ``num_heads`` (a decode loop asks for them at every token).

    Example:
        >>> default_g_gamma(2)
        tensor([-0.0317, -0.0157], dtype=torch.float64)
    """
    if not isinstance(num_heads, int) or isinstance(num_heads, bool) or num_heads < 1:
        raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
    if torch.compiler.is_compiling():  # traced: tensor ops only (a compiled graph runs them once)
        return _default_g_gamma_tensor(num_heads).to(device)
    master = _default_g_gamma_master(num_heads)
    # a copy: the caller owns it (clone is ~2x cheaper than building a tensor from floats)
    return master.clone() if device is None else master.to(device, copy=True)


def _default_g_gamma_tensor(num_heads: int) -> torch.Tensor:
    # on the CPU (whatever the default device): log1p is not correctly rounded on every device
    # (see module doc)
    h = torch.arange(num_heads, dtype=torch.float64, device="cpu")
    return torch.log1p(-torch.pow(2.0, DECAY_BASE_EXP - h))


_DEFAULT_G_GAMMAS: dict[int, torch.Tensor] = {}  # per num_heads; never handed out (copies are)


def _default_g_gamma_master(num_heads: int) -> torch.Tensor:
    g = _DEFAULT_G_GAMMAS.get(num_heads)
    if g is None:
        g = _default_g_gamma_tensor(num_heads)
        # only a real tensor is kept: one built under a fake-tensor mode must not outlive it
        if type(g) is torch.Tensor and len(_DEFAULT_G_GAMMAS) < 64:
            _DEFAULT_G_GAMMAS[num_heads] = g
    return g


def decay_key(g_gamma: torch.Tensor) -> tuple[float, ...]:
    """The float64 values of ``g_gamma`` as a hashable tuple: the key of every decay-table
    cache. (A CUDA ``g_gamma`` is copied to the host, which waits for the GPU: pass a CPU one
    to a launcher that is called often.)

    Example:
        >>> decay_key(torch.tensor([-0.5, -0.25]))
        (-0.5, -0.25)
    """
    g = g_gamma
    if g.dtype != torch.float64 or g.device.type != "cpu":  # (a validated call's g_gamma is so)
        g = g.detach().to("cpu", torch.float64)
    return tuple(g.tolist())


def resolve_g_gamma(g_gamma, num_heads: int, device=None) -> torch.Tensor:
    """Validate a user ``g_gamma`` (log gamma per head) or build the default; float64 ``[H]``.

    gamma = exp(g_gamma) must lie in (0, 1), i.e. g_gamma must be finite and negative.
    """
    if g_gamma is None:
        return default_g_gamma(num_heads, device=device)
    if not isinstance(g_gamma, torch.Tensor):
        try:
            g_gamma = torch.as_tensor(g_gamma, dtype=torch.float64)
        except (TypeError, ValueError) as e:
            raise TypeError(f"g_gamma must be a tensor of shape [H]={num_heads}, got {g_gamma!r}") from e
    if not g_gamma.is_floating_point():
        raise TypeError(f"g_gamma must be a floating tensor (log gamma per head), got {g_gamma.dtype}")
    if g_gamma.shape != (num_heads,):
        raise ValueError(f"g_gamma must have shape [H]=[{num_heads}], got {list(g_gamma.shape)}")
    g = g_gamma.detach().to(device=device, dtype=torch.float64)
    values = g.tolist()  # H numbers: one transfer instead of two reductions (decode calls it per token)
    if not all(math.isfinite(x) and x < 0 for x in values):
        raise ValueError(f"g_gamma = log(gamma) must be finite and < 0 (gamma in (0, 1)); got {values}")
    return g


def fused_decay_ok(g_gamma: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Per head: may gamma**(a-b) be folded into row/column scales at this chunk size?"""
    return (chunk_size - 1) * g_gamma.abs() / math.log(2.0) <= FUSED_DECAY_MAX_LOG2


@dataclass(frozen=True)
class ChunkDecay:
    """float32 decay factors for one chunk length L, per head (leading dim H).

    row[h, a]    = gamma**a          (intra-chunk row factor of Q K^T)
    col[h, b]    = gamma**(-b)       (intra-chunk column factor; only used where ``fused``)
    mask[h, a, b]= gamma**(a-b) for a >= b else 0   (the guarded, unfactored form)
    inter[h, a]  = gamma**(a+1)      (row factor of Q S_{i-1})
    kdec[h, j]   = gamma**(L-1-j)    (applied to K before the state-update GEMM)
    chunk[h]     = gamma**L          (state decay across the chunk)
    fused[h]     = whether row/col may be used (see FUSED_DECAY_MAX_LOG2)
    """

    row: torch.Tensor
    col: torch.Tensor
    mask: torch.Tensor
    inter: torch.Tensor
    kdec: torch.Tensor
    chunk: torch.Tensor
    fused: torch.Tensor


def chunk_decay_tables(g_gamma: torch.Tensor, length: int, chunk_size: int) -> ChunkDecay:
    """Decay tables for a chunk holding ``length`` tokens in a schedule of ``chunk_size``.

    The guard decision depends on ``chunk_size`` only, so every chunk of a sequence (the short
    last one included) uses the same form.

    Example:
        >>> t = chunk_decay_tables(default_g_gamma(2), length=64, chunk_size=64)
        >>> t.row.shape, t.mask.shape
        (torch.Size([2, 64]), torch.Size([2, 64, 64]))
    """
    dev = g_gamma.device
    g = g_gamma.detach().to("cpu", torch.float64)[:, None]
    j = torch.arange(length, dtype=torch.float64)[None, :]
    diff = j[0][:, None] - j[0][None, :]
    causal = diff >= 0
    mask = torch.where(causal, torch.exp(g[:, :, None] * diff.clamp(min=0)), 0.0)
    return ChunkDecay(
        row=torch.exp(g * j).float().to(dev),
        col=torch.exp(-g * j).float().to(dev),
        mask=mask.float().to(dev),
        inter=torch.exp(g * (j + 1)).float().to(dev),
        kdec=torch.exp(g * (length - 1 - j)).float().to(dev),
        chunk=torch.exp(g[:, 0] * length).float().to(dev),
        fused=fused_decay_ok(g[:, 0], chunk_size).to(dev),
    )


def step_gamma(g_gamma: torch.Tensor) -> torch.Tensor:
    """gamma = exp(g_gamma) per head, in float64 on the CPU, rounded once to float32 and moved to
    ``g_gamma``'s device: the decode step's decay (the same number on every device).

    Example:
        >>> step_gamma(torch.tensor([-0.5], dtype=torch.float64))
        tensor([0.6065])
    """
    return torch.exp(g_gamma.detach().to("cpu", torch.float64)).float().to(g_gamma.device)


def last_chunk_lengths(seq_lengths, chunk_size: int = CHUNK_SIZE) -> set[int]:
    """The length (1..chunk_size) of each sequence's last chunk: the rows of
    :func:`kernel_decay_tables` a call needs besides the full chunk's.

    Example:
        >>> sorted(last_chunk_lengths([70, 128, 1], 64))
        [1, 6, 64]
    """
    return {(n - 1) % chunk_size + 1 for n in seq_lengths}


# Kernel decay tables per distinct (g_gamma, chunk size), and decode decays per distinct g_gamma,
# least recently used first. Bounded: a model with learned decays passes a new g_gamma at every
# call, and a table entry holds ~0.35 MB (H=8). The CPU kernels read them as they are; the
# Triton launchers keep device copies.
KERNEL_TABLE_CACHE_SIZE = 16
_KERNEL_TABLES: OrderedDict[tuple, dict] = OrderedDict()
_STEP_GAMMAS: OrderedDict[tuple, torch.Tensor] = OrderedDict()


_CACHE_LOCK = threading.Lock()


def _lru_entry(cache: OrderedDict, key, build):
    """``cache[key]``, built by ``build()`` when missing; keeps the KERNEL_TABLE_CACHE_SIZE most
    recently used keys. Under a lock: threads calling the ops with different decays would
    otherwise race between a lookup and another thread's eviction."""
    with _CACHE_LOCK:
        entry = cache.get(key)
        if entry is not None:
            cache.move_to_end(key)
            return entry
        entry = cache[key] = build()
        while len(cache) > KERNEL_TABLE_CACHE_SIZE:
            cache.popitem(last=False)
        return entry


def kernel_step_gamma(g_gamma: torch.Tensor) -> torch.Tensor:
    """:func:`step_gamma` as the CPU decode kernel reads it (float32, contiguous, on the CPU),
    cached per distinct decay like :func:`kernel_decay_tables`; shared: read, never write.

    Example:
        >>> kernel_step_gamma(torch.tensor([-0.5], dtype=torch.float64))
        tensor([0.6065])
    """

    def build():  # on the CPU whatever g_gamma's device: the kernel reads it from the host
        return step_gamma(g_gamma.detach().to("cpu", torch.float64)).contiguous()

    return _lru_entry(_STEP_GAMMAS, decay_key(g_gamma), build)


def kernel_decay_tables(g_gamma: torch.Tensor, lengths, chunk_size: int = CHUNK_SIZE) -> dict:
    """The chunk kernels' float32 CPU tables for one decay: ``row``, ``col``, ``mask``,
    ``inter``, ``fused`` (uint8) of a full chunk, and ``kdec``
    ``[H, C+1, C]`` / ``chunk`` ``[H, C+1]`` indexed by chunk length L, row L taken from
    :func:`chunk_decay_tables` at length L (so a kernel reads exactly the spec's numbers) and
    filled for L = ``chunk_size`` and every length in ``lengths`` (``filled`` says which). Cached
    (the :data:`KERNEL_TABLE_CACHE_SIZE` most recently used decays); shared: read, never write.

    Example:
        >>> t = kernel_decay_tables(default_g_gamma(2), {5})
        >>> t["kdec"].shape, sorted(t["filled"])
        (torch.Size([2, 65, 64]), [5, 64])
    """
    g = g_gamma.detach().to("cpu", torch.float64)

    def build():
        full = chunk_decay_tables(g, chunk_size, chunk_size)
        H, C = g.numel(), chunk_size
        return {
            "row": full.row.contiguous(),
            "col": full.col.contiguous(),
            "mask": full.mask.contiguous(),
            "inter": full.inter.contiguous(),
            "fused": full.fused.to(torch.uint8).contiguous(),
            "kdec": torch.zeros(H, C + 1, C),
            "chunk": torch.zeros(H, C + 1),
            "filled": set(),
        }

    entry = _lru_entry(_KERNEL_TABLES, (decay_key(g), chunk_size), build)
    with _CACHE_LOCK:  # rows are written before they are marked filled, one thread at a time
        for L in {chunk_size, *lengths}:
            if L not in entry["filled"]:
                t = chunk_decay_tables(g, L, chunk_size)
                entry["kdec"][:, L, :L] = t.kdec
                entry["chunk"][:, L] = t.chunk
                entry["filled"].add(L)
    return entry
