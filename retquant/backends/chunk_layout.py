"""The chunk-major padded layout of the float chunkwise path.

A group of sequences and heads is copied into ``[n, S, Hg, C, D]`` (chunk, sequence, head, token
in chunk, feature), zero-padded to whole chunks. Chunk-major order makes "the states entering
chunks 0..n-1" and "the states leaving them" two contiguous slices of one ``[n+1, S, Hg, K, V]``
buffer, so every product over all chunks is one ``bmm`` on a plain view. Packed sequences
(``cu_seqlens``) are padded each to its own whole chunks, up to the longest one in the group, with
one ``index_put_`` (and read back with one gather); dense inputs are a strided copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Group:
    """Sequences ``s0:s1`` and heads ``h0:h1`` processed together, in ``n`` chunks of ``C``.

    Dense inputs: sequences are batch rows and ``index`` is None. Packed inputs: tokens
    ``t0:t1`` of the B=1 input, ``index`` = (sequence, chunk, position) of each of them.
    ``lengths[i, s]`` is the number of real tokens of sequence s in chunk i (0 past its end).
    """

    s0: int
    s1: int
    h0: int
    h1: int
    n: int
    C: int
    lengths: torch.Tensor
    t0: int = 0
    t1: int = 0
    index: tuple | None = None


def plan_groups(B, T, H, cu_seqlens, C, tokens_per_group, device) -> list[Group]:
    """Split the (sequence, head) pairs into groups of about ``tokens_per_group`` padded
    token-heads: heads first (as many as fit with the longest sequence), then runs of
    consecutive sequences (each group pads to its own longest one). A pair larger than the
    budget is a group of its own, so many short packed sequences share a few groups instead of
    one Python iteration each.

    Example:
        >>> [(g.s0, g.s1, g.h0, g.h1, g.n) for g in plan_groups(2, 100, 4, None, 64, 1024, "cpu")]
        [(0, 2, 0, 4, 2)]
    """
    if cu_seqlens is None:
        bounds = [(s * T, (s + 1) * T) for s in range(B)]
    else:
        cu = cu_seqlens.tolist()
        bounds = list(zip(cu[:-1], cu[1:]))
    chunks = [max(1, -(-(e - s) // C)) for s, e in bounds]
    hg = max(1, min(H, tokens_per_group // (max(chunks) * C)))
    groups = []
    s0 = 0
    while s0 < len(bounds):
        s1, n = s0 + 1, chunks[s0]
        while s1 < len(bounds) and (s1 + 1 - s0) * max(n, chunks[s1]) * C * hg <= tokens_per_group:
            n = max(n, chunks[s1])
            s1 += 1
        lens = torch.tensor([e - s for s, e in bounds[s0:s1]], device=device)
        lengths = (lens[None, :] - torch.arange(n, device=device)[:, None] * C).clamp(0, C)  # [n, S]
        extra = {}
        if cu_seqlens is not None:
            extra = dict(t0=bounds[s0][0], t1=bounds[s1 - 1][1], index=_token_index(lens, C))
        for h0 in range(0, H, hg):
            groups.append(Group(s0, s1, h0, min(h0 + hg, H), n, C, lengths, **extra))
        s0 = s1
    return groups


def _token_index(lens: torch.Tensor, C: int):
    """(sequence, chunk, position) of each packed token of sequences with lengths ``lens``."""
    seq = torch.repeat_interleave(torch.arange(len(lens), device=lens.device), lens)
    starts = torch.cumsum(lens, 0) - lens
    pos = torch.arange(int(lens.sum()), device=lens.device) - starts[seq]
    return seq, torch.div(pos, C, rounding_mode="floor"), pos % C


def gather(x: torch.Tensor, g: Group, out: torch.Tensor) -> torch.Tensor:
    """Copy the group's part of ``x [B, T, H, D]`` into ``out [n, S, Hg, C, D]`` (converting to
    its dtype, zero padding) and return ``out``."""
    n, C = g.n, g.C
    if g.index is not None:
        out.zero_()
        vals = x[0, g.t0 : g.t1, g.h0 : g.h1].to(out.dtype)
        out.permute(1, 0, 3, 2, 4).index_put_(g.index, vals)
        return out
    xs = x[g.s0 : g.s1, :, g.h0 : g.h1]
    T = x.shape[1]
    full = T // C
    if full:
        out[:full].copy_(xs[:, : full * C].unflatten(1, (full, C)).permute(1, 0, 3, 2, 4))
    if full < n:  # the short last chunk: real rows, then zeros
        r = T - full * C
        out[full, :, :, :r].copy_(xs[:, full * C :].permute(0, 2, 1, 3))
        out[full, :, :, r:].zero_()
    return out


def scatter(xc: torch.Tensor, g: Group, out: torch.Tensor) -> None:
    """Write the group's ``[n, S, Hg, C, D]`` back into ``out [B, T, H, D]`` (dropping padding)."""
    if g.index is not None:
        out[0, g.t0 : g.t1, g.h0 : g.h1] = xc.permute(1, 0, 3, 2, 4)[g.index]
        return
    os_ = out[g.s0 : g.s1, :, g.h0 : g.h1]
    T, C = out.shape[1], g.C
    full = T // C
    if full:
        os_[:, : full * C].unflatten(1, (full, C)).permute(1, 0, 3, 2, 4).copy_(xc[:full])
    if full < g.n:
        os_[:, full * C :].permute(0, 2, 1, 3).copy_(xc[full, :, :, : T - full * C])
