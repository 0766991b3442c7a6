"""An independent, deliberately plain re-statement of the default int8 chunk algorithm.

One (batch, head) and one chunk at a time, in numpy float32 with int64 integer products, written
from the docstring of ``retquant.spec.int_chunk`` rather than from its code. The tests
require the vectorized PyTorch spec to equal it bit for bit.
"""

import numpy as np

from retquant.decay import chunk_decay_tables

F = np.float32


def _q_rows(x):
    """Per-row symmetric int8: (codes int64, scale float32 [rows, 1])."""
    s = (np.abs(x).max(axis=1, keepdims=True) / F(127)).astype(F)
    s = np.where(s > 0, s, F(1)).astype(F)
    return np.clip(np.rint(x / s), -127, 127).astype(np.int64), s


def _q_cols(x):
    c, s = _q_rows(np.ascontiguousarray(x.T))
    return c.T, s.T


def int8_chunk_loop(q, k, v, g_gamma, scale, initial_state=None, chunk_size=64):
    q = (q.float() * scale).numpy()
    k, v = k.float().numpy(), v.float().numpy()
    B, T, H, K = q.shape
    V = v.shape[-1]
    full = chunk_decay_tables(g_gamma, chunk_size, chunk_size)
    o = np.zeros((B, T, H, V), F)
    finals = np.zeros((B, H, K, V), F)
    for b in range(B):
        for h in range(H):
            S = np.zeros((K, V), F) if initial_state is None else initial_state[b, h].float().numpy().copy()
            for start in range(0, T, chunk_size):
                L = min(chunk_size, T - start)
                tab = chunk_decay_tables(g_gamma, L, chunk_size)
                Q, Kc, Vc = q[b, start : start + L, h], k[b, start : start + L, h], v[b, start : start + L, h]
                qi, sq = _q_rows(Q)
                ki, sk = _q_rows(Kc)
                vi, sv = _q_cols(Vc)
                acc = (qi @ ki.T).astype(F)
                if bool(full.fused[h]):
                    rowf = (sq[:, 0] * full.row[h, :L].numpy()).astype(F)
                    colf = (sk[:, 0] * full.col[h, :L].numpy()).astype(F)
                    P = (acc * rowf[:, None]).astype(F) * colf[None, :]
                else:
                    P = ((acc * sq).astype(F) * sk[:, 0][None, :]).astype(F) * full.mask[h, :L, :L].numpy()
                P = np.tril(P.astype(F))
                pi, sp = _q_rows(P)
                o_intra = ((pi @ vi).astype(F) * sp).astype(F) * sv
                si, ss = _q_cols(S)
                rowi = (sq[:, 0] * full.inter[h, :L].numpy()).astype(F)
                o_inter = ((qi @ si).astype(F) * rowi[:, None]).astype(F) * ss
                o[b, start : start + L, h] = o_intra + o_inter
                kd = Kc * tab.kdec[h].numpy()[:, None]
                kdi, skd = _q_cols(kd.astype(F))
                dS = ((kdi.T @ vi).astype(F) * skd.T).astype(F) * sv
                S = (S * tab.chunk[h].numpy()).astype(F) + dS
            finals[b, h] = S
    return o, finals
