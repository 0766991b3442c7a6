"""Run by tests/test_cpu_compile.py in a fresh interpreter (torch.compile leaves process-wide
state, e.g. an imported triton, that the Triton interpreter tests must not inherit).

Checks that torch.compile traces each CPU kernel call as one custom op, that the compiled model
matches eager bit for bit, and that the custom ops pass torch.library.opcheck. Exits non-zero on
the first failure.
"""

from __future__ import annotations

import torch

from retquant.decay import default_g_gamma
from retquant.ops import chunk_retention, fused_recurrent_retention


def _qkv(seed=0, T=100):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(2, T, 2, 32, generator=g),
        torch.randn(2, T, 2, 32, generator=g),
        torch.randn(2, T, 2, 48, generator=g),
    )


def check_one_op(fn, target: str) -> None:
    torch._dynamo.reset()
    q, k, v = _qkv()
    s0 = torch.randn(2, 2, 32, 48)
    seen: list = []

    def backend(gm: torch.fx.GraphModule, example_inputs):
        seen.extend(n.target for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward

    def model(q, k, v, s0):
        o, s = fn(q, k, v, initial_state=s0, output_final_state=True, quant="int8", backend="cpu")
        return o * 2, s

    o, s = torch.compile(model, backend=backend)(q, k, v, s0)
    o_ref, s_ref = model(q, k, v, s0)
    assert torch.equal(o, o_ref) and torch.equal(s, s_ref), f"{fn.__name__}: compiled != eager"
    hits = sum(target in str(t) for t in seen)  # the op packet or its .default overload
    assert hits == 1, f"{fn.__name__}: {target} appears {hits} times in {seen}"


def check_opcheck(op) -> None:
    # schema, fake (meta) implementation and dispatch consistency, as torch.library checks them
    q, k, v = (x.reshape(-1, 2, x.shape[-1]).contiguous() for x in _qkv(T=70))
    off = torch.tensor([0, 70, 140])
    torch.library.opcheck(op, (q, k, v, off, 32**-0.5, default_g_gamma(2), torch.randn(2, 2, 32, 48)))


if __name__ == "__main__":
    check_one_op(chunk_retention, "retquant.cpu_chunk_int8")
    check_one_op(fused_recurrent_retention, "retquant.cpu_recurrent_int8")
    check_opcheck(torch.ops.retquant.cpu_chunk_int8)
    check_opcheck(torch.ops.retquant.cpu_recurrent_int8)
    print("compile checks passed")
