"""Float chunkwise retention in plain PyTorch: the forward and its hand-written backward.

Per head, chunk i of L <= C tokens, local index j, Q already multiplied by ``scale``:

    O_i = (Q_i K_i^T * D) V_i + diag(g^(j+1)) Q_i S_{i-1}
    S_i = g^L S_{i-1} + K_i^T diag(g^(L-1-j)) V_i
    dQ_i = (dO_i V_i^T * D) K_i + diag(g^(j+1)) dO_i S_{i-1}^T
    dK_i = (dO_i V_i^T * D)^T Q_i + diag(g^(L-1-j)) V_i dS_i^T
    dV_i = (Q_i K_i^T * D)^T dO_i + diag(g^(L-1-j)) K_i dS_i
    dS_{i-1} = g^L dS_i + Q_i^T diag(g^(j+1)) dO_i        (from dS_last = dht back to dh0)

Every product runs as one ``bmm`` over all chunks of a group of (sequence, head) pairs (groups keep
the working set near the cache); the two recurrences are loops over chunks of one in-place
``addcmul_`` on ``[S, Hg, K, V]``. The backward recomputes the per-chunk states from q, k, v
(nothing but the inputs needs saving). Compute dtype: float64 for float64 inputs, else float32.
No autograd wiring here: the autograd Function calls these two functions.
"""

from __future__ import annotations

import math

import torch

from retquant.backends.chunk_layout import Group, gather, plan_groups, scatter
from retquant.backends.chunk_tables import DecayTables, chunk_factors, decay_tables

# Padded token-heads per group. One head of a T=4096 sequence (its chunks, states and scores,
# ~12 MB at K=V=128) is about what stays in the L3 cache; on Zen 3 (1 thread, B=4 T=4096 H=8,
# two interleaved runs on a busy shared machine) groups of 1 (b, h) pair ran the forward
# 1.0-1.2x faster than groups of 2-4 pairs and 1.1-2.1x faster than groups of 8-32.
GROUP_TOKENS = 4096


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64 (so gradcheck runs this very code); everything else runs in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check(q, k, v, g_gamma, initial_state, cu_seqlens):
    B, T, H, K = q.shape
    if k.shape != q.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"q, k, v shapes disagree: {list(q.shape)}, {list(k.shape)}, {list(v.shape)}")
    if g_gamma.shape != (H,):
        raise ValueError(f"g_gamma must have shape [H]=[{H}], got {list(g_gamma.shape)}")
    N = B if cu_seqlens is None else cu_seqlens.numel() - 1
    if cu_seqlens is not None and B != 1:
        raise ValueError(f"cu_seqlens needs B=1 (packed sequences), got B={B}")
    want = [N, H, K, v.shape[-1]]
    if initial_state is not None and list(initial_state.shape) != want:
        raise ValueError(f"initial_state must have shape [N,H,K,V]={want}, got {list(initial_state.shape)}")
    return N


def _flat(x: torch.Tensor) -> torch.Tensor:
    """[n, S, Hg, r, c] -> [n*S*Hg, r, c] (a view of a contiguous buffer)."""
    return x.view(-1, x.shape[-2], x.shape[-1])


def _heads(t: torch.Tensor, g: Group) -> torch.Tensor:
    return t[g.h0 : g.h1]


class _Workspace:
    """Buffers of one call, reused by every group: a fresh multi-MB allocation per group would
    pay a page fault per 4 KiB on first touch (measured: it doubled the cost of the layout copies)."""

    def __init__(self, dtype: torch.dtype, device: torch.device):
        self.dtype, self.device, self.bufs = dtype, device, {}

    def __call__(self, name: str, *shape: int) -> torch.Tensor:
        numel = math.prod(shape)
        buf = self.bufs.get(name)
        if buf is None or buf.numel() < numel:
            buf = self.bufs[name] = torch.empty(numel, dtype=self.dtype, device=self.device)
        return buf[:numel].view(shape)


def _states(kt, vc, S0, decay, g: Group, out):
    """``out [n+1, S, Hg, K, V]``: entry i is the state entering chunk i, entry n the final state."""
    torch.bmm(_flat(kt).transpose(1, 2), _flat(vc), out=_flat(out[1:]))
    if S0 is None:
        out[0].zero_()
    else:
        out[0].copy_(S0[g.s0 : g.s1, g.h0 : g.h1])
        out[1].addcmul_(out[0], decay[0])
    for i in range(1, g.n):  # S_i = g^L_i S_{i-1} + (increment already in out[i+1])
        out[i + 1].addcmul_(out[i], decay[i])
    return out


def _state_grads(qc, dod, dhT, decay, g: Group, need_dh0: bool, out):
    """``out [n+1, S, Hg, K, V]``: entry i+1 is dS_i (the gradient of the state leaving chunk i),
    entry 0 is dh0 (filled only when ``need_dh0``)."""
    n = g.n
    torch.bmm(_flat(qc).transpose(1, 2), _flat(dod), out=_flat(out[:-1]))  # Q_i^T diag(g^(j+1)) dO_i
    if dhT is None:
        out[-1].zero_()
        last = n - 2  # dS_{n-1} = 0 adds nothing to dS_{n-2}
    else:
        out[-1].copy_(dhT[g.s0 : g.s1, g.h0 : g.h1])
        last = n - 1
    stop = -1 if need_dh0 else 0
    for i in range(last, stop, -1):  # dS_{i-1} = g^L_i dS_i + increment (entry i)
        out[i].addcmul_(out[i + 1], decay[i])
    return out


def _masked_scores(a, b, mask, out):
    """``(a b^T) * mask`` over all chunks; ``mask [Hg, C, C]`` broadcast over chunks and sequences."""
    s = torch.bmm(_flat(a), _flat(b).transpose(1, 2), out=out)
    s.view(a.shape[:3] + s.shape[-2:]).mul_(mask)
    return s


def _group_tables(t: DecayTables, g: Group, dtype):
    kdec, decay = chunk_factors(_heads(t.powers, g), g.lengths, dtype)
    return _heads(t.mask, g), _heads(t.inter, g), kdec, decay


def _gather_all(ws: _Workspace, g: Group, **tensors):
    """Each named ``[B, T, H, D]`` tensor in the group's chunk-major layout, in its own buffer."""
    S, Hg = g.s1 - g.s0, g.h1 - g.h0
    return [gather(x, g, ws(name, g.n, S, Hg, g.C, x.shape[-1])) for name, x in tensors.items()]


@torch.no_grad()  # out= products; the autograd Function wraps these two functions
def chunk_fwd(
    q, k, v, g_gamma, scale, initial_state=None, cu_seqlens=None, chunk_size=64, output_final_state=True
):
    """Chunkwise retention forward.

    Returns ``(o [B, T, H, V] in q.dtype, final_state [N, H, K, V] or None)``; the state is float32
    (float64 for float64 inputs). ``N`` is B, or the number of packed sequences with ``cu_seqlens``.

    Example:
        >>> from retquant.decay import default_g_gamma
        >>> q = k = v = torch.randn(1, 100, 2, 16)
        >>> o, s = chunk_fwd(q, k, v, default_g_gamma(2), 16**-0.5)
        >>> o.shape, s.shape
        (torch.Size([1, 100, 2, 16]), torch.Size([1, 2, 16, 16]))
    """
    N = _check(q, k, v, g_gamma, initial_state, cu_seqlens)
    B, T, H, K = q.shape
    V = v.shape[-1]
    dt = compute_dtype(q.dtype)
    tables = decay_tables(g_gamma, chunk_size, scale, dt)
    o = torch.empty(B, T, H, V, dtype=q.dtype, device=q.device)
    final = torch.empty(N, H, K, V, dtype=dt, device=q.device) if output_final_state else None
    S0 = None if initial_state is None else initial_state.to(dt)
    ws = _Workspace(dt, q.device)
    first = 0 if S0 is not None else 1  # with no initial state chunk 0 has no inter-chunk term
    for g in plan_groups(B, T, H, cu_seqlens, chunk_size, GROUP_TOKENS, q.device):
        mask, inter, kdec, decay = _group_tables(tables, g, dt)
        qc, kc, vc = _gather_all(ws, g, q=q, k=k, v=v)
        nb, C = qc.shape[:3].numel(), g.C
        scores = _masked_scores(qc, kc, mask, ws("scores", nb, C, C))
        oc = ws("o", *vc.shape)
        torch.bmm(scores, _flat(vc), out=_flat(oc))
        st = _states(kc.mul_(kdec), vc, S0, decay, g, ws("st", g.n + 1, *vc.shape[1:3], K, V))
        qd = qc.mul_(inter)  # Q diag(g^(j+1)) (scale included)
        _flat(oc[first:]).baddbmm_(_flat(qd[first:]), _flat(st[first:-1]))
        scatter(oc, g, o)
        if final is not None:
            final[g.s0 : g.s1, g.h0 : g.h1] = st[-1]
    return o, final


@torch.no_grad()
def chunk_bwd(q, k, v, g_gamma, scale, do, initial_state=None, dht=None, cu_seqlens=None, chunk_size=64):
    """Gradients of :func:`chunk_fwd` for output gradient ``do`` and final-state gradient ``dht``.

    Returns ``(dq, dk, dv, dh0)``: dq/dk/dv in the inputs' dtype, ``dh0 [N, H, K, V]`` in the
    compute dtype, or None when ``initial_state`` is None. The per-chunk states are recomputed.

    Example:
        >>> from retquant.decay import default_g_gamma
        >>> q = k = v = torch.randn(1, 100, 2, 16)
        >>> dq, dk, dv, dh0 = chunk_bwd(q, k, v, default_g_gamma(2), 0.25, torch.ones_like(v))
        >>> dq.shape, dh0 is None
        (torch.Size([1, 100, 2, 16]), True)
    """
    N = _check(q, k, v, g_gamma, initial_state, cu_seqlens)
    if do.shape != v.shape:
        raise ValueError(f"do must have the shape of v {list(v.shape)}, got {list(do.shape)}")
    B, T, H, K = q.shape
    V = v.shape[-1]
    if dht is not None and dht.shape != (N, H, K, V):
        raise ValueError(f"dht must have shape [N, H, K, V]={[N, H, K, V]}, got {list(dht.shape)}")
    dt = compute_dtype(q.dtype)
    tables = decay_tables(g_gamma, chunk_size, scale, dt)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    dh0 = None if initial_state is None else torch.empty(N, H, K, V, dtype=dt, device=q.device)
    S0 = None if initial_state is None else initial_state.to(dt)
    dhT = None if dht is None else dht.to(dt)
    ws = _Workspace(dt, q.device)
    first = 0 if S0 is not None else 1
    for g in plan_groups(B, T, H, cu_seqlens, chunk_size, GROUP_TOKENS, q.device):
        mask, inter, kdec, decay = _group_tables(tables, g, dt)
        qc, kc, vc, doc = _gather_all(ws, g, q=q, k=k, v=v, do=do)
        nb, C, state_shape = qc.shape[:3].numel(), g.C, (g.n + 1, *qc.shape[1:3], K, V)
        kt = torch.mul(kc, kdec, out=ws("kt", *kc.shape))  # K diag(g^(L-1-j))
        st = _states(kt, vc, S0, decay, g, ws("st", *state_shape))
        dod = torch.mul(doc, inter, out=ws("dod", *doc.shape))  # diag(g^(j+1)) dO (scale included)
        ds = _state_grads(qc, dod, dhT, decay, g, dh0 is not None, ws("ds", *state_shape))
        if dh0 is not None:
            dh0[g.s0 : g.s1, g.h0 : g.h1] = ds[0]
        scores = _masked_scores(doc, vc, mask, ws("scores", nb, C, C))  # (dO V^T) * D: dQ and dK
        dqc = ws("grad", *qc.shape)
        torch.bmm(scores, _flat(kc), out=_flat(dqc))
        _flat(dqc[first:]).baddbmm_(_flat(dod[first:]), _flat(st[first:-1]).transpose(1, 2))
        scatter(dqc, g, dq)
        dkc = ws("grad", *kc.shape)
        torch.bmm(scores.transpose(1, 2), _flat(qc), out=_flat(dkc))
        _flat(dkc).baddbmm_(_flat(vc.mul_(kdec)), _flat(ds[1:]).transpose(1, 2))  # V diag(g^(L-1-j)) dS^T
        scatter(dkc, g, dk)
        scores = _masked_scores(qc, kc, mask, scores)  # (Q K^T) * D
        dvc = ws("grad", *vc.shape)
        torch.bmm(scores.transpose(1, 2), _flat(doc), out=_flat(dvc))
        _flat(dvc).baddbmm_(_flat(kt), _flat(ds[1:]))
        scatter(dvc, g, dv)
    return dq, dk, dv, dh0
