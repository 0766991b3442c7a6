"""Float chunkwise forward and backward (interim: the float64 spec differentiated with torch.func;
the batched PyTorch implementation replaces it)."""

import torch

from retquant.spec.naive import naive_chunk_retention


def _dense(q, k, v, g, scale, h0, cu):
    if cu is None:
        return naive_chunk_retention(q, k, v, g, scale, h0)
    b = cu.tolist()
    outs, fins = [], []
    for i, (s, e) in enumerate(zip(b[:-1], b[1:])):
        o, f = naive_chunk_retention(
            q[:, s:e], k[:, s:e], v[:, s:e], g, scale, None if h0 is None else h0[i : i + 1]
        )
        outs.append(o)
        fins.append(f)
    return torch.cat(outs, 1), torch.cat(fins, 0)


def chunk_fwd(
    q, k, v, g_gamma, scale, initial_state=None, cu_seqlens=None, chunk_size=64, output_final_state=True
):
    o, f = _dense(q, k, v, g_gamma, scale, initial_state, cu_seqlens)
    sd = torch.float64 if q.dtype == torch.float64 else torch.float32
    return o.to(q.dtype), (f.to(sd) if output_final_state else None)


def chunk_bwd(q, k, v, g_gamma, scale, do, initial_state=None, dht=None, cu_seqlens=None, chunk_size=64):
    xs = [x.detach().double() for x in (q, k, v)]
    h0 = None if initial_state is None else initial_state.detach().double()

    def f(q, k, v, *h):
        return _dense(q, k, v, g_gamma, scale, h[0] if h else None, cu_seqlens)

    prim = xs + ([h0] if h0 is not None else [])
    (o, fin), vjp = torch.func.vjp(f, *prim)
    grads = vjp((do.double(), torch.zeros_like(fin) if dht is None else dht.double()))
    dq, dk, dv = (g.to(x.dtype) for g, x in zip(grads[:3], (q, k, v)))
    dh0 = grads[3].to(initial_state.dtype) if h0 is not None else None
    return dq, dk, dv, dh0
