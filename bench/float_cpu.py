"""CPU benchmark of the float path: the fused fp32 C++ chunk kernel against fp32 PyTorch.

    python -m bench.float_cpu [--quick] [--B 4 --T 4096 --H 8 --K 128 --V 128] [--threads N]
                              [--repeats 5]

The kernel (:func:`retquant.backends.cpu_float.chunk_float`, float32 q/k/v/o, ISA from
``RETQUANT_CPU_ISA``) and the plain-PyTorch fp32 chunkwise retention of :mod:`bench.cpu`, on the
whole batch and one (batch, head) at a time, on the same inputs in one run; medians of
``--repeats`` runs, relative L2 and cosine against the float64 reference. ``python -m bench.cpu``
prints the same table after its int8 figures (:func:`report`).
"""

from __future__ import annotations

import torch

from bench.cpu_peers import (
    interleaved_median_times,
    parse_shape_args,
    torch_chunk_retention,
    torch_chunk_retention_blocked,
)
from retquant.backends import cpu_float
from retquant.backends.cpu_extension import cpu_name
from retquant.decay import default_g_gamma
from retquant.metrics import compare
from retquant.ops import chunk_retention


def report(q, k, v, g_gamma, scale, ref, repeats: int) -> float:
    """Print the float kernel against the fp32 PyTorch peers on ``[B, T, H, D]`` float32 inputs
    (``ref``: the float64 output); returns the speed-up over the faster peer."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    off = torch.arange(0, B * T + 1, T, dtype=torch.int64)
    flat = [x.reshape(B * T, H, -1) for x in (q, k, v)]
    cases = []  # (name, fn, error of its output); timed together below

    def run(name, fn):
        e = compare(fn().reshape(B, T, H, V).float(), ref)  # (also the warm-up call)
        cases.append((name, fn, e))

    isa = cpu_float.ISA_NAMES[cpu_float.isa_level()]
    run(f"fp32 fused C++ kernel ({isa})", lambda: cpu_float.chunk_float(*flat, off, scale, g_gamma, None)[0])
    run("fp32 PyTorch chunkwise, per (b, h)", lambda: torch_chunk_retention_blocked(q, k, v, g_gamma, scale))
    run("fp32 PyTorch chunkwise, all batched", lambda: torch_chunk_retention(q, k, v, g_gamma, scale))
    times = interleaved_median_times([fn for _, fn, _ in cases], repeats, warmup=0)
    rows = [(name, t, e.rel_l2, e.cosine) for (name, _, e), t in zip(cases, times)]
    print(f"{'float chunkwise retention (quant=None)':50s} {'ms':>9s} {'rel_l2':>10s} {'cosine':>10s}")
    for name, t, rel, cos in rows:
        print(f"{name:50s} {t * 1e3:9.1f} {rel:10.3e} {cos:10.7f}")
    best = min(rows[1:], key=lambda r: r[1])
    speedup = best[1] / rows[0][1]
    print(f"speed-up of the fp32 kernel over the faster fp32 PyTorch peer ({best[0]}): {speedup:.2f}x\n")
    return speedup


def main(argv=None):
    args = parse_shape_args(argv, __doc__)
    B, T, H, K, V = args.B, args.T, args.H, args.K, args.V
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(B, T, H, K, generator=gen)
    k = torch.randn(B, T, H, K, generator=gen)
    v = torch.randn(B, T, H, V, generator=gen)
    gg = default_g_gamma(H)
    print(f"machine: {cpu_name()}; torch {torch.__version__}; threads={torch.get_num_threads()}")
    print(f"shape: B={B} T={T} H={H} K={K} V={V} chunk=64; median of {args.repeats} interleaved rounds\n")
    ref = chunk_retention(q.double(), k.double(), v.double(), g_gamma=gg, backend="reference")[0]
    report(q, k, v, gg, K**-0.5, ref, args.repeats)


if __name__ == "__main__":
    main()
