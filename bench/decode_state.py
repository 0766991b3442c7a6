"""Decode state design: carry the float32 state (the spec the kernels follow) or its int8 copy?

    python -m bench.decode_state [--B 2 --T 2048 --H 4 --K 64 --V 64]

Both designs quantize q, k, v per token and use the per-column int8 copy of the state for
``q . S``; they differ in what is carried to the next token: the float32 state, or the int8
copy (what a kernel storing an int8 state between tokens would carry: 4x less state memory).
Prints the relative L2 error of the outputs against float64, per window of tokens, and of the
final state. Inputs are random with RetNet's default decay per head.
"""

from __future__ import annotations

import argparse

import torch

from retquant.decay import default_g_gamma
from retquant.metrics import compare
from retquant.quant.config import resolve_quant
from retquant.spec.int_recurrent import int_recurrent_retention
from retquant.spec.naive import naive_chunk_retention


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in (("B", 2), ("T", 2048), ("H", 4), ("K", 64), ("V", 64), ("windows", 4)):
        ap.add_argument(f"--{name}", type=int, default=default)
    args = ap.parse_args(argv)
    B, T, H, K, V = args.B, args.T, args.H, args.K, args.V
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, T, H, d, generator=g) for d in (K, K, V))
    gg, scale, cfg = default_g_gamma(H), K**-0.5, resolve_quant("int8")
    o_ref, s_ref = naive_chunk_retention(q.double(), k.double(), v.double(), gg, scale)
    runs = {
        "float32 state carried (spec)": int_recurrent_retention(q, k, v, gg, scale, cfg),
        "int8 state carried": int_recurrent_retention(q, k, v, gg, scale, cfg, carry_quantized_state=True),
    }
    w = T // args.windows
    heads = [f"tokens {i * w}-{(i + 1) * w - 1}" for i in range(args.windows)]
    print(f"B={B} T={T} H={H} K={K} V={V}; rel L2 vs float64 of o per token window, and of the final state")
    print(f"{'design':32s}" + "".join(f"{h:>18s}" for h in heads) + f"{'final state':>14s}")
    for name, (o, s) in runs.items():
        errs = [
            compare(o[:, i * w : (i + 1) * w], o_ref[:, i * w : (i + 1) * w]).rel_l2
            for i in range(args.windows)
        ]
        print(f"{name:32s}" + "".join(f"{e:18.3e}" for e in errs) + f"{compare(s, s_ref).rel_l2:14.3e}")


if __name__ == "__main__":
    main()
