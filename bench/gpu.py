"""GPU benchmark of the int8 Triton chunk retention against bf16 peers, in one run.

    python -m bench.gpu [--repeats 20] [--H 8 16] [--T 2048 8192 32768]

Times (median of CUDA-event repeats, after warm-up) at B=4, K=V=128:

* ``int8 split`` / ``int8 fused``: the Triton chunk forward (bf16 in/out, int8 GEMMs, fused
  decay) as two passes (state pass + chunk-parallel output pass; the default) and as one pass,
  each call including its host-side preparation (decay tables, offsets);
* ``int8 split krn``: the two split kernels alone, on a launch prepared once (the kernel time);
* ``fla bf16``: ``fla.ops.retention.chunk_retention`` when fla is importable;
* ``torch bf16``: a plain PyTorch chunkwise implementation (:mod:`bench.torch_chunk`).

Reports TFLOP/s-equivalent (the four chunk GEMMs: ``2 C (K + V) + 4 K V`` FLOPs per token and
head) and ``split gain`` = method time / int8-split time (> 1: the int8 kernel is faster; the
target against fla is >= 1.5 on an H100). First checks both modes against the integer spec on
a small shape. Exits with a message when there is no CUDA GPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch

from bench.torch_chunk import torch_chunk_retention
from retquant.constants import CHUNK_SIZE
from retquant.decay import default_g_gamma


def _cuda_time(fn, repeats: int, warmup: int = 3) -> float:
    """Median milliseconds of ``fn()`` over ``repeats`` CUDA-event timings."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _flops(B, T, H, K, V, c=CHUNK_SIZE) -> float:
    return float(B * H * T * (2 * c * (K + V) + 4 * K * V))


def _check_against_spec(chunk_fwd, mode: str) -> str:
    from retquant.quant.config import RetentionQuantConfig
    from retquant.spec.int_chunk import int_chunk_retention

    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(2, 200, 2, 128, device="cuda", generator=g) for _ in range(3))
    gg = default_g_gamma(2, device="cuda")
    o, f, tr = chunk_fwd(q, k, v, gg, 128**-0.5, None, True, trace=True, mode=mode)
    ro, rf, rtr = int_chunk_retention(q, k, v, gg, 128**-0.5, RetentionQuantConfig(), trace=True)
    n = -(-200 // CHUNK_SIZE)
    same = all(
        torch.equal(tr[name].view(2, n, 2, *tr[name].shape[2:]).transpose(1, 2).long(), getattr(rtr, name))
        for name in ("acc_qk", "acc_pv", "acc_qs", "acc_kv")
    )
    return (
        f"{mode}: check vs integer spec: max|o - spec| = {(o - ro).abs().max().item():.3g}, "
        f"max|state - spec| = {(f - rf).abs().max().item():.3g}, "
        f"int32 accumulators identical: {same}"
    )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--B", type=int, default=4)
    ap.add_argument("--H", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--T", type=int, nargs="+", default=[2048, 8192, 32768])
    ap.add_argument("--K", type=int, default=128)
    ap.add_argument("--V", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit(
            "bench.gpu: no CUDA GPU is available; this benchmark needs one "
            "(the kernels are tested on the CPU with TRITON_INTERPRET=1, not timed)."
        )
    try:
        from retquant.kernels.chunk_retention import chunk_retention_fwd
    except ImportError as e:
        sys.exit(f"bench.gpu: triton is not installed ({e}); pip install -e '.[triton]'")
    try:
        from fla.ops.retention import chunk_retention as fla_chunk
    except ImportError:
        fla_chunk = None

    print(
        f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}; "
        f"median of {args.repeats} CUDA-event timings"
    )
    for mode in ("split", "fused"):
        print(_check_against_spec(chunk_retention_fwd, mode))
    if fla_chunk is None:
        print("fla is not importable: its column is skipped")
    head = f"{'B':>2} {'H':>3} {'T':>6} | {'method':<15} {'ms':>9} {'TFLOP/s-eq':>10} {'split gain':>10}"  # noqa: E501
    print(head)
    print("-" * len(head))
    for H in args.H:
        for T in args.T:
            _bench_shape(args.B, H, T, args.K, args.V, args.repeats, chunk_retention_fwd, fla_chunk)


def _bench_shape(B, H, T, K, V, repeats, chunk_fwd, fla_chunk) -> None:
    """Time every method on one shape and print one row each (gain = its ms / split ms)."""
    from retquant.kernels.chunk_prep import prepare_chunk_launch
    from retquant.kernels.chunk_retention_out import chunk_out_launch
    from retquant.kernels.chunk_retention_state import chunk_state_launch

    gen = torch.Generator(device="cuda").manual_seed(T + H)
    kw = {"device": "cuda", "dtype": torch.bfloat16, "generator": gen}
    q = torch.randn(B, T, H, K, **kw)
    k = torch.randn(B, T, H, K, **kw)
    v = torch.randn(B, T, H, V, **kw)
    g_gamma = default_g_gamma(H, device="cuda")
    scale = K**-0.5
    prepared = prepare_chunk_launch(q, k, v, g_gamma, scale, None, False, None, None, None,
                                    False, CHUNK_SIZE)  # fmt: skip

    def split_kernels():
        chunk_out_launch(prepared, *chunk_state_launch(prepared))

    rows = [
        ("int8 split", lambda: chunk_fwd(q, k, v, g_gamma, scale, mode="split")),
        ("int8 split krn", split_kernels),
        ("int8 fused", lambda: chunk_fwd(q, k, v, g_gamma, scale, mode="fused")),
    ]
    if fla_chunk is not None:
        rows.append(("fla bf16", lambda: fla_chunk(q, k, v, scale=scale)))
    rows.append(("torch bf16", lambda: torch_chunk_retention(q, k, v, g_gamma, scale)))
    flops = _flops(B, T, H, K, V)
    base = None
    for name, fn in rows:
        ms = _cuda_time(fn, repeats)
        base = ms if base is None else base
        print(f"{B:>2} {H:>3} {T:>6} | {name:<15} {ms:>9.3f} {flops / ms / 1e9:>10.2f} {ms / base:>9.2f}x")
    torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
