"""GPU benchmark of the int8 Triton chunk retention against bf16 peers, in one run.

    python -m bench.gpu [--repeats 20] [--H 8 16] [--T 2048 8192 32768]

Times (median of CUDA-event repeats, after warm-up) at B=4, K=V=128:

* ``int8 split`` / ``int8 fused``: the Triton chunk forward (bf16 in/out, int8 GEMMs, fused
  decay) as two passes (state pass + chunk-parallel output pass; the default) and as one pass,
  each call including its host-side preparation (decay tables, offsets);
* ``int8 split krn``: the two split kernels alone, on a launch prepared once (the kernel time),
  then each pass alone (``state pass``, ``output pass``);
* ``fla bf16``: ``fla.ops.retention.chunk_retention`` when fla is importable;
* ``torch bf16``: a plain PyTorch chunkwise implementation (:mod:`bench.torch_chunk`).

and one decode step (T=1 with an fp32 state, ``[B, H, K, V]``):

* ``int8 decode``: the Triton recurrent kernel through its launcher (host preparation included);
* ``fla decode``: ``fla.ops.retention.fused_recurrent_retention`` (bf16 q/k/v, fp32 state);
* ``torch fp32 step``: ``S = gamma S + k v^T; o = q S`` in place (``mul_``, ``baddbmm_``, ``bmm``).

Reports TFLOP/s-equivalent (the four chunk GEMMs: ``2 C (K + V) + 4 K V`` FLOPs per token and
head) and ``split gain`` = method time / int8-split time (> 1: the int8 kernel is faster; the
target against fla is >= 1.5 on an H100). First checks both modes against the integer spec on
a small shape. Exits with a message when there is no CUDA GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

from bench.torch_chunk import torch_chunk_retention
from retquant.constants import CHUNK_SIZE
from retquant.decay import default_g_gamma, step_gamma


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
    gg = default_g_gamma(2)  # on the CPU: the launchers key their table cache on its values
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
    ap.add_argument("--json", default=None, help="also write every row to this JSON file")
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
        from fla.ops.retention import fused_recurrent_retention as fla_decode
    except Exception as e:  # noqa: BLE001  (fla's import can fail in many ways; its rows are skipped)
        fla_chunk = fla_decode = None
        fla_error = f"{type(e).__name__}: {e}"

    import triton

    machine = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "repeats": args.repeats,
    }
    print(f"{'; '.join(f'{k} {v}' for k, v in machine.items())} (medians of CUDA-event timings)")
    checks = [_check_against_spec(chunk_retention_fwd, mode) for mode in ("split", "fused")]
    print("\n".join(checks))
    if fla_chunk is None:
        print(f"fla is not importable ({fla_error}): its rows are skipped")
    head = f"{'B':>2} {'H':>3} {'T':>6} | {'method':<15} {'ms':>9} {'TFLOP/s-eq':>10} {'split gain':>10}"  # noqa: E501
    print(head)
    print("-" * len(head))
    rows = []
    for H in args.H:
        for T in args.T:
            rows += _bench_shape(args.B, H, T, args.K, args.V, args.repeats, chunk_retention_fwd, fla_chunk)
    head = f"{'B':>2} {'H':>3} | {'decode method':<16} {'us':>9} {'GB/s':>8} {'int8 gain':>10}"
    print(head)
    print("-" * len(head))
    for H in args.H:
        rows += _bench_decode(args.B, H, args.K, args.V, args.repeats, fla_decode)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "checks": checks, "rows": rows}, f, indent=1)


def _bench_shape(B, H, T, K, V, repeats, chunk_fwd, fla_chunk) -> list[dict]:
    """Time every method on one shape and print one row each (gain = its ms / split ms)."""
    from retquant.kernels.chunk_prep import prepare_chunk_launch
    from retquant.kernels.chunk_retention_out import chunk_out_launch
    from retquant.kernels.chunk_retention_state import chunk_state_launch

    gen = torch.Generator(device="cuda").manual_seed(T + H)
    kw = {"device": "cuda", "dtype": torch.bfloat16, "generator": gen}
    q = torch.randn(B, T, H, K, **kw)
    k = torch.randn(B, T, H, K, **kw)
    v = torch.randn(B, T, H, V, **kw)
    g_gamma = default_g_gamma(H)  # on the CPU: no device-to-host wait for the cache key
    scale = K**-0.5
    prepared = prepare_chunk_launch(q, k, v, g_gamma, scale, None, False, None, None, None,
                                    False, CHUNK_SIZE)  # fmt: skip

    def split_kernels():
        chunk_out_launch(prepared, *chunk_state_launch(prepared))

    state = chunk_state_launch(prepared)
    rows = [
        ("int8 split", lambda: chunk_fwd(q, k, v, g_gamma, scale, mode="split")),
        ("int8 split krn", split_kernels),
        ("state pass", lambda: chunk_state_launch(prepared)),
        ("output pass", lambda: chunk_out_launch(prepared, *state)),
        ("int8 fused", lambda: chunk_fwd(q, k, v, g_gamma, scale, mode="fused")),
    ]
    if fla_chunk is not None:
        rows.append(("fla bf16", lambda: fla_chunk(q, k, v, scale=scale)))
    g_cuda = g_gamma.to("cuda")  # the PyTorch peer keeps its decay on the GPU
    rows.append(("torch bf16", lambda: torch_chunk_retention(q, k, v, g_cuda, scale)))
    flops = _flops(B, T, H, K, V)
    base = None
    out = []
    for name, fn in rows:
        ms = _cuda_time(fn, repeats)
        base = ms if base is None else base
        print(f"{B:>2} {H:>3} {T:>6} | {name:<15} {ms:>9.3f} {flops / ms / 1e9:>10.2f} {ms / base:>9.2f}x")
        out.append({"kind": "chunk", "B": B, "H": H, "T": T, "K": K, "V": V, "method": name, "ms": ms,
                    "tflops_eq": flops / ms / 1e9, "gain_vs_int8_split": ms / base})  # fmt: skip
    torch.cuda.empty_cache()
    return out


def _bench_decode(B, H, K, V, repeats, fla_decode) -> list[dict]:
    """Time one decode step (T=1, fp32 state in and out) per method; gain = its time / int8's."""
    from retquant.kernels.recurrent_retention_step import recurrent_retention_fwd

    gen = torch.Generator(device="cuda").manual_seed(H)
    kw = {"device": "cuda", "generator": gen}
    q, k, v = (torch.randn(B, 1, H, d, dtype=torch.bfloat16, **kw) for d in (K, K, V))
    state = torch.randn(B, H, K, V, **kw)
    g_gamma = default_g_gamma(H)  # on the CPU, as above
    gamma = step_gamma(g_gamma).to("cuda").view(1, H, 1, 1)
    scale = K**-0.5
    final = torch.empty_like(state)
    qf, kf, vf = (x.float().reshape(B * H, 1, -1) for x in (q * scale, k, v))
    s_fp32 = state.clone().view(B * H, K, V)

    def torch_step():
        s_fp32.view(B, H, K, V).mul_(gamma)
        s_fp32.baddbmm_(kf.transpose(1, 2), vf)
        return torch.bmm(qf, s_fp32)

    rows = [
        (
            "int8 decode",
            lambda: recurrent_retention_fwd(q, k, v, g_gamma, scale, state, True, final_out=final),
        ),  # fmt: skip
    ]
    if fla_decode is not None:
        rows.append(("fla decode", lambda: fla_decode(q, k, v, scale=scale, initial_state=state,
                                                      output_final_state=True)))  # fmt: skip
    rows.append(("torch fp32 step", torch_step))
    nbytes = 2 * 4 * B * H * K * V  # the fp32 state read and written: the step's floor
    base = None
    out = []
    for name, fn in rows:
        us = _cuda_time(fn, repeats * 5) * 1e3
        base = us if base is None else base
        print(f"{B:>2} {H:>3} | {name:<16} {us:>9.1f} {nbytes / us / 1e3:>8.1f} {us / base:>9.2f}x")
        out.append({"kind": "decode", "B": B, "H": H, "K": K, "V": V, "method": name, "us": us,
                    "gbps_state": nbytes / us / 1e3, "gain_vs_int8": us / base})  # fmt: skip
    return out


if __name__ == "__main__":
    main()
