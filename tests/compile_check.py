"""Run by tests/test_compile.py in a fresh interpreter (torch.compile leaves process-wide state,
e.g. an imported triton, that the Triton interpreter tests must not inherit).

Checks, exiting non-zero on the first failure:
- ``torch.compile(fullgraph=True)`` of a small model calling every form with and without
  ``quant`` compiles with no graph break, traces each call as one ``retquant.retention`` op and
  matches eager bit for bit, forward and backward;
- ``torch.export`` of the chunk form (float and int8) with a dynamic T runs at other lengths and
  matches eager;
- ``torch.library.opcheck`` of the retention op and of the CPU kernels' own custom ops.
"""

from __future__ import annotations

import torch

from retquant.decay import default_g_gamma
from retquant.ops import chunk_retention, fused_recurrent_retention, parallel_retention


def _qkv(seed=0, T=100, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    shapes = ((2, T, 2, 32), (2, T, 2, 32), (2, T, 2, 48))
    return tuple(torch.randn(*s, generator=g).requires_grad_(requires_grad) for s in shapes)


def _model(q, k, v, s0):
    o1, s1 = chunk_retention(q, k, v, initial_state=s0, output_final_state=True, quant="int8")
    o2, s2 = chunk_retention(q, k, v, initial_state=s0, output_final_state=True)
    o3, _ = fused_recurrent_retention(q, k, v, quant="int8", backend="reference")
    o4, _ = parallel_retention(q, k, v)
    return o1 + o2 + o3 + o4, s1 + s2


def check_fullgraph() -> None:
    torch._dynamo.reset()
    seen: list = []

    def backend(gm: torch.fx.GraphModule, example_inputs):
        seen.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward

    q, k, v = _qkv(requires_grad=True)
    s0 = torch.randn(2, 2, 32, 48, requires_grad=True)
    o, s = torch.compile(_model, backend=backend, fullgraph=True)(q, k, v, s0)
    (o.sum() + s.square().sum()).backward()
    grads = [x.grad.clone() for x in (q, k, v, s0)]
    hits = sum("retquant.retention" in t and "backward" not in t for t in seen)
    assert hits == 4, f"expected 4 retquant.retention calls in the graph, got {hits}: {seen}"
    for x in (q, k, v, s0):
        x.grad = None
    o_ref, s_ref = _model(q, k, v, s0)
    (o_ref.sum() + s_ref.square().sum()).backward()
    assert torch.equal(o, o_ref) and torch.equal(s, s_ref), "compiled forward != eager"
    for g, x in zip(grads, (q, k, v, s0)):
        assert torch.equal(g, x.grad), "compiled backward != eager"
    # inductor too (the default backend), inference only
    torch._dynamo.reset()
    with torch.no_grad():
        q, k, v = _qkv(seed=1)
        s0 = torch.randn(2, 2, 32, 48)
        got = torch.compile(_model, fullgraph=True)(q, k, v, s0)
        want = _model(q, k, v, s0)
    assert all(torch.equal(a, b) for a, b in zip(got, want)), "inductor != eager"


class _Chunk(torch.nn.Module):
    def forward(self, q, k, v):
        o, s = chunk_retention(q, k, v, output_final_state=True)
        o8, _ = chunk_retention(q, k, v, quant="int8")
        return o + o8, s


def check_export() -> None:
    T = torch.export.Dim("T", min=2, max=8192)
    ep = torch.export.export(_Chunk(), _qkv(T=100), dynamic_shapes=({1: T}, {1: T}, {1: T}))
    for t in (37, 100, 300):
        qkv = _qkv(seed=t, T=t)
        got, want = ep.module()(*qkv), _Chunk()(*qkv)
        assert all(torch.equal(a, b) for a, b in zip(got, want)), f"exported != eager at T={t}"


def check_opcheck() -> None:
    q, k, v = _qkv(T=70, requires_grad=True)
    g = default_g_gamma(2)
    s0 = torch.randn(2, 2, 32, 48)
    for quant in ("", "int8"):
        key = "" if not quant else __import__("retquant").PRESETS[quant].key
        args = ("chunk", q, k, v, g, s0, None, 32**-0.5, key, "reference", True)
        torch.library.opcheck(torch.ops.retquant.retention.default, args)
    # the CPU kernels' own custom ops: the chunk op on [T, H, D] tokens with sequence offsets, the
    # decode op on [B, T, H, D] (dense, and packed with cu_seqlens)
    qkv = [x.detach() for x in _qkv(T=70)]
    q, k, v = (x.reshape(-1, 2, x.shape[-1]).contiguous() for x in qkv)
    off = torch.tensor([0, 70, 140])
    torch.library.opcheck(torch.ops.retquant.cpu_chunk_int8, (q, k, v, off, 32**-0.5, g, s0))
    rec = torch.ops.retquant.cpu_recurrent_int8
    torch.library.opcheck(rec, (*qkv, None, 32**-0.5, g, s0))
    packed = [x.reshape(1, -1, *x.shape[2:]) for x in qkv]
    torch.library.opcheck(rec, (*packed, off, 32**-0.5, g, s0))


if __name__ == "__main__":
    check_fullgraph()
    check_export()
    check_opcheck()
    print("compile checks passed")
