"""The plain-PyTorch CPU peers every CPU benchmark measures against, and shared timing helpers.

``torch_chunk_retention`` is chunkwise retention written the way a user would (made fast: the
intra-chunk products and state updates batched over all chunks); ``torch_chunk_retention_blocked``
runs it one (batch, head) at a time, which keeps its intermediates in cache.

Example:
    >>> from retquant.decay import default_g_gamma
    >>> q = k = v = torch.randn(1, 100, 2, 16)
    >>> torch_chunk_retention(q, k, v, default_g_gamma(2), 0.25).shape
    torch.Size([1, 100, 2, 16])
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from retquant.backends import cpu_extension
from retquant.constants import CHUNK_SIZE as C


def median_time(fn, repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds."""
    return interleaved_median_times([fn], repeats, warmup)[0]


def interleaved_median_times(fns, repeats: int, warmup: int = 1) -> list[float]:
    """Median wall time in seconds of each of ``fns``, timed in ``repeats`` rounds that run every
    function once in turn: on a shared machine whose speed drifts over seconds, the functions a
    table compares see the same conditions (timed one after the other, a slow spell lands on
    one of them and skews the ratio).

    Example:
        >>> t_a, t_b = interleaved_median_times([lambda: sum(range(100)), lambda: None], 3)
    """
    for fn in fns:
        for _ in range(warmup):
            fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


def _split(x: torch.Tensor, n: int) -> torch.Tensor:
    """[B, T, H, D] -> [B, H, n, C, D] (zero padded), contiguous."""
    B, T, H, D = x.shape
    xh = x.transpose(1, 2)
    if n * C != T:
        xh = torch.nn.functional.pad(xh, (0, 0, 0, n * C - T))
    return xh.reshape(B, H, n, C, D).contiguous()


def torch_chunk_retention(q, k, v, g_gamma, scale):
    """Plain-PyTorch chunkwise retention in q's dtype (what a user would write, made fast):
    intra-chunk products and state updates batched over all chunks, a loop of n cheap
    ``S = g^C S + dS_i`` steps, then one batched ``Q S`` with the row decay."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    dt = q.dtype
    n = -(-T // C)
    qc, kc, vc = _split(q * scale, n), _split(k, n), _split(v, n)
    j = torch.arange(C, dtype=torch.float64)
    g = g_gamma.view(H, 1)
    diff = j[:, None] - j[None, :]
    mask = torch.where(diff >= 0, torch.exp(g[:, :, None] * diff.clamp(min=0)), 0.0)
    mask = mask.to(dt).view(1, H, 1, C, C)
    inter = torch.exp(g * (j + 1)).to(dt).view(1, H, 1, C, 1)
    kdec = torch.exp(g * (C - 1 - j)).to(dt).view(1, H, 1, C, 1)
    gC = torch.exp(g_gamma * C).to(dt).view(1, H, 1, 1)
    o = (qc @ kc.transpose(-1, -2) * mask) @ vc
    dS = (kc * kdec).transpose(-1, -2) @ vc  # [B, H, n, K, V]
    states = torch.empty(B, H, n, K, V, dtype=dt)
    S = torch.zeros(B, H, K, V, dtype=dt)
    for i in range(n):
        states[:, :, i] = S
        S = torch.addcmul(dS[:, :, i], S, gC)
    o += (qc * inter) @ states
    return o.reshape(B, H, n * C, V)[:, :, :T].transpose(1, 2)


def torch_chunk_retention_blocked(q, k, v, g_gamma, scale):
    """:func:`torch_chunk_retention` one (batch, head) at a time, so that its intermediates
    (scores, per-chunk states) stay in cache: 2-2.5x faster than the all-batched call at
    B=4, H=8, T=4096 on this machine."""
    B, T, H, _ = q.shape
    out = torch.empty(B, T, H, v.shape[-1], dtype=q.dtype)
    for b in range(B):
        for h in range(H):
            sl = (slice(b, b + 1), slice(None), slice(h, h + 1))
            out[sl] = torch_chunk_retention(q[sl], k[sl], v[sl], g_gamma[h : h + 1], scale)
    return out


def parse_shape_args(argv, doc: str) -> argparse.Namespace:
    """The CPU benchmarks' command line (shape, threads, repeats, --quick), applied: threads set,
    the extension built (or a clear exit naming why not)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--B", type=int, default=4)
    ap.add_argument("--T", type=int, default=4096)
    ap.add_argument("--H", type=int, default=8)
    ap.add_argument("--K", type=int, default=128)
    ap.add_argument("--V", type=int, default=128)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="small shape B=2 T=512 H=4 (smoke run)")
    args = ap.parse_args(argv)
    if args.quick:
        args.B, args.T, args.H = 2, 512, 4
    if args.repeats < 1:
        raise SystemExit("--repeats must be >= 1")
    torch.set_num_threads(args.threads)
    err = cpu_extension.load_error()
    if err is not None:
        raise SystemExit(f"the CPU extension is unavailable: {err}")
    return args
