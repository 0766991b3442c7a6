"""Training-path benchmark: the float path (the public op: the fused CPU float kernel or the
batched PyTorch forward, and the hand-written backward of :mod:`retquant.backends.torch_chunk`)
against the plain PyTorch chunk loop with autograd, and the quantized op (int8 kernel forward,
straight-through backward) against int8 fake-quantization written with torch ops
(:mod:`bench.fake_quant`).

    python -m bench.train [--quick] [--threads N] [--repeats N] [--json PATH]

Rows are ``Row(name, kind, fn)`` entries in :func:`rows_for` (kind "fwd", "fwd+bwd" or "int8
fwd+bwd"); add one there and it is timed, checked and printed like the rest. Each row's speed-up
is against the fastest *peer* row of the same kind (the plain PyTorch loops from bench.cpu; for
"int8 fwd+bwd" the fake-quant emulation). Rows run
round-robin, ``--repeats`` rounds, so machine noise hits every row alike; times are medians.
Accuracy: relative L2 of o (fwd) or of the worst of dq, dk, dv (fwd+bwd) against float64.
Saved activations (the plain loop's, the ops', the fake-quant peer's) are measured with
``torch.autograd.graph.saved_tensors_hooks``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch

from bench.cpu_peers import torch_chunk_retention, torch_chunk_retention_blocked
from bench.fake_quant import fake_quant_chunk_retention
from retquant.backends import torch_chunk
from retquant.decay import default_g_gamma
from retquant.metrics import compare
from retquant.ops import chunk_retention
from retquant.spec.naive import naive_chunk_retention

SHAPES = [(4, 4096, 8, 128, 128), (2, 1024, 4, 64, 64)]
QUICK_SHAPES = [(2, 1024, 4, 64, 64)]


@dataclass
class Row:
    """One timed entry: ``fn()`` returns o (fwd) or (dq, dk, dv) (fwd+bwd); ``peer`` rows are
    the plain-PyTorch baselines the others are compared with."""

    name: str
    kind: str
    fn: Callable
    peer: bool = False


@dataclass
class Inputs:
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    do: torch.Tensor
    g: torch.Tensor
    scale: float


def make_inputs(shape, dtype, seed=0) -> Inputs:
    B, T, H, K, V = shape
    gen = torch.Generator().manual_seed(seed)
    q, k, do = (torch.randn(B, T, H, d, generator=gen).to(dtype) for d in (K, K, V))
    v = torch.randn(B, T, H, V, generator=gen).to(dtype)
    return Inputs(q, k, v, do, default_g_gamma(H), K**-0.5)


def plain_fwd_bwd(peer, x: Inputs):
    """What a user writes: leaves that require grad, the chunk loop, ``.backward()``."""
    return op_fwd_bwd(lambda q, k, v: peer(q, k, v, x.g, x.scale), x)


def plain_per_head_fwd_bwd(x: Inputs):
    """The per-(b, h) loop with each slice's forward and backward done before the next (the
    cache-friendliest way to run the plain loop under autograd)."""
    grads = [torch.empty_like(t) for t in (x.q, x.k, x.v)]
    B, _, H, _ = x.q.shape
    for b in range(B):
        for h in range(H):
            sl = (slice(b, b + 1), slice(None), slice(h, h + 1))
            q, k, v = (t[sl].detach().requires_grad_() for t in (x.q, x.k, x.v))
            torch_chunk_retention(q, k, v, x.g[h : h + 1], x.scale).backward(x.do[sl])
            for dst, src in zip(grads, (q, k, v)):
                dst[sl] = src.grad
    return tuple(grads)


def ours_fwd(x: Inputs):
    return torch_chunk.chunk_fwd(x.q, x.k, x.v, x.g, x.scale)[0]


def ours_fwd_bwd(x: Inputs):
    torch_chunk.chunk_fwd(x.q, x.k, x.v, x.g, x.scale)
    return torch_chunk.chunk_bwd(x.q, x.k, x.v, x.g, x.scale, x.do)[:3]


def op_fwd_bwd(fn, x: Inputs):
    """A retquant op (or the fake-quant peer) as a user trains with it: leaves that require
    grad, ``.backward()``."""
    q, k, v = (t.detach().requires_grad_() for t in (x.q, x.k, x.v))
    fn(q, k, v).backward(x.do)
    return q.grad, k.grad, v.grad


def _float_op(x: Inputs):
    return lambda q, k, v: chunk_retention(q, k, v, x.scale, g_gamma=x.g)[0]


def _int8_op(x: Inputs):
    return lambda q, k, v: chunk_retention(q, k, v, x.scale, g_gamma=x.g, quant="int8")[0]


def _fake_quant(x: Inputs):
    return lambda q, k, v: fake_quant_chunk_retention(q, k, v, x.g, x.scale)


def rows_for(x: Inputs, tag: str) -> list[Row]:
    """The rows timed on inputs ``x`` (``tag`` names their dtype)."""

    def no_grad(fn):
        return lambda: _no_grad_call(fn)

    return [
        Row(
            f"{tag} plain chunk loop, whole batch",
            "fwd",
            no_grad(lambda: _peer(torch_chunk_retention, x)),
            True,
        ),
        Row(
            f"{tag} plain chunk loop, per (b, h)",
            "fwd",
            no_grad(lambda: _peer(torch_chunk_retention_blocked, x)),
            True,
        ),
        Row(f"{tag} torch_chunk.chunk_fwd", "fwd", lambda: ours_fwd(x)),
        Row(
            f"{tag} plain loop + autograd, whole batch",
            "fwd+bwd",
            lambda: plain_fwd_bwd(torch_chunk_retention, x),
            True,
        ),
        Row(
            f"{tag} plain loop + autograd, per (b, h) graph",
            "fwd+bwd",
            lambda: plain_fwd_bwd(torch_chunk_retention_blocked, x),
            True,
        ),
        Row(
            f"{tag} plain loop + autograd, per (b, h) fwd+bwd",
            "fwd+bwd",
            lambda: plain_per_head_fwd_bwd(x),
            True,
        ),
        Row(f"{tag} torch_chunk fwd + hand-written bwd", "fwd+bwd", lambda: ours_fwd_bwd(x)),
        Row(f"{tag} chunk_retention float path", "fwd", no_grad(lambda: _float_op(x)(x.q, x.k, x.v))),
        Row(f"{tag} chunk_retention float path + autograd", "fwd+bwd", lambda: op_fwd_bwd(_float_op(x), x)),
        Row(
            f"{tag} int8 fake-quant emulation + autograd",
            "int8 fwd+bwd",
            lambda: op_fwd_bwd(_fake_quant(x), x),
            True,
        ),
        Row(f"{tag} chunk_retention quant=int8 (STE)", "int8 fwd+bwd", lambda: op_fwd_bwd(_int8_op(x), x)),
    ]


def _peer(fn, x: Inputs):
    return fn(x.q, x.k, x.v, x.g, x.scale)


def _no_grad_call(fn):
    with torch.no_grad():
        return fn()


def reference(x: Inputs):
    """float64 o and (dq, dk, dv) by autograd through the naive chunk loop."""
    q, k, v = (t.detach().double().requires_grad_() for t in (x.q, x.k, x.v))
    o, _ = naive_chunk_retention(q, k, v, x.g, x.scale)
    o.backward(x.do.double())
    return o.detach(), (q.grad, k.grad, v.grad)


def accuracy(kind, out, ref) -> float:
    if kind == "fwd":
        return compare(out, ref[0]).rel_l2
    return max(compare(a, b).rel_l2 for a, b in zip(out, ref[1]))


def time_rows(rows: list[Row], repeats: int) -> dict[str, list[float]]:
    """Round-robin timing: each round runs every row once (after one warm-up round)."""
    times = {r.name: [] for r in rows}
    for _ in range(repeats):
        for r in rows:
            t0 = time.perf_counter()
            r.fn()
            times[r.name].append(time.perf_counter() - t0)
    return times


def saved_bytes(fn) -> int:
    """Bytes autograd holds for backward once ``fn()`` has built its graph: numel * element_size
    of every packed tensor still held when ``fn`` returns, each storage counted once (the largest
    view of it). Tensors packed by a graph that was discarded meanwhile (e.g. the quantize-
    dequantize branch of ``x + (fq(x) - x).detach()``) are not counted: their memory was freed,
    and counting them by address made the figure depend on where the allocator reused it."""
    packed: list[weakref.ref] = []

    def pack(t):
        packed.append(weakref.ref(t))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    seen: dict[int, int] = {}
    for ref in packed:
        t = ref()
        if t is not None:
            key = t.untyped_storage().data_ptr()
            seen[key] = max(seen.get(key, 0), t.numel() * t.element_size())
    del out
    return sum(seen.values())


def run_shape(shape, dtype, tag, repeats, check) -> list[dict]:
    x = make_inputs(shape, dtype)
    rows = rows_for(x, tag)
    ref = reference(x) if check else None
    results = []
    for r in rows:  # the warm-up round doubles as the accuracy check
        out = r.fn()
        results.append(
            {
                "name": r.name,
                "kind": r.kind,
                "peer": r.peer,
                "rel_l2": accuracy(r.kind, out, ref) if check else None,
            }
        )
    print(f"timing {len(rows)} rows x {repeats} rounds on {tag} {shape} ...", flush=True)
    times = time_rows(rows, repeats)
    for res in results:
        ts = times[res["name"]]
        res["ms"] = statistics.median(ts) * 1e3
        res["min_ms"] = min(ts) * 1e3
    for res in results:
        best = min((p for p in results if p["peer"] and p["kind"] == res["kind"]), key=lambda p: p["ms"])
        res["speedup_vs_best_peer"] = best["ms"] / res["ms"]
    return results


def print_table(shape, results):
    B, T, H, K, V = shape
    print(f"\nshape B={B} T={T} H={H} K={K} V={V}")
    print(f"{'row':52s} {'kind':12s} {'ms':>9s} {'min ms':>9s} {'vs best peer':>13s} {'rel_l2':>10s}")
    for r in results:
        rel = "-" if r["rel_l2"] is None else f"{r['rel_l2']:.2e}"
        print(
            f"{r['name']:52s} {r['kind']:12s} {r['ms']:9.1f} {r['min_ms']:9.1f} "
            f"{r['speedup_vs_best_peer']:12.2f}x {rel:>10s}"
        )


def plain_saved_bytes(shape) -> dict[str, int]:
    """Saved activations of the plain loop (whole batch and per (b, h) graph) and, for scale, of
    q, k, v alone (what an autograd Function on torch_chunk saves)."""
    x = make_inputs(shape, torch.float32)

    def graph(peer):
        q, k, v = (t.detach().requires_grad_() for t in (x.q, x.k, x.v))
        return lambda: peer(q, k, v, x.g, x.scale)

    def op(fn):
        q, k, v = (t.detach().requires_grad_() for t in (x.q, x.k, x.v))
        return lambda: fn(q, k, v)

    return {
        "plain whole batch": saved_bytes(graph(torch_chunk_retention)),
        "plain per (b, h) graph": saved_bytes(graph(torch_chunk_retention_blocked)),
        "chunk_retention float path": saved_bytes(op(_float_op(x))),
        "chunk_retention int8": saved_bytes(op(_int8_op(x))),
        "int8 fake-quant emulation": saved_bytes(op(_fake_quant(x))),
    }


def native_bf16() -> tuple[bool, str]:
    """Whether bf16 matmul has hardware support here (AVX512_BF16 or AMX), and why not."""
    flags = _cpuinfo("flags").split()
    have = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    cap = torch.backends.cpu.get_cpu_capability()
    if have:
        return True, f"{', '.join(have)} present (torch capability {cap})"
    return False, f"no avx512_bf16/amx_bf16 in /proc/cpuinfo flags (torch capability {cap}): bf16 is emulated"


def _cpuinfo(field: str) -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=f"only the small shape {QUICK_SHAPES[0]}")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--shape", metavar="B,T,H,K,V", help="time this one shape instead")
    ap.add_argument("--no-check", action="store_true", help="skip the float64 accuracy reference")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.threads < 1:
        raise SystemExit("--repeats and --threads must be >= 1")
    torch.set_num_threads(args.threads)
    bf16_ok, bf16_why = native_bf16()
    flags = set(_cpuinfo("flags").split())
    isa = ", ".join(
        f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16") if f in flags
    )
    print(
        f"cpu: {_cpuinfo('model name') or platform.processor()}; ISA: {isa}; "
        f"torch {torch.__version__} (capability {torch.backends.cpu.get_cpu_capability()}); "
        f"threads={torch.get_num_threads()}; {args.repeats} round-robin rounds, medians"
    )
    print(f"bf16 rows: {'timed' if bf16_ok else 'skipped'} ({bf16_why})")
    dtypes = [(torch.float32, "fp32")] + ([(torch.bfloat16, "bf16")] if bf16_ok else [])
    report = {
        "cpu": _cpuinfo("model name"),
        "isa": isa,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "bf16": bf16_why,
        "shapes": [],
    }
    shapes = QUICK_SHAPES if args.quick else SHAPES
    if args.shape:
        try:
            shapes = [tuple(int(x) for x in args.shape.split(","))]
        except ValueError:
            raise SystemExit(f"--shape wants five integers B,T,H,K,V, got {args.shape!r}") from None
        if len(shapes[0]) != 5 or min(shapes[0]) < 1:
            raise SystemExit(f"--shape wants five positive integers B,T,H,K,V, got {args.shape!r}")
    for shape in shapes:
        results = []
        for dtype, tag in dtypes:
            results += run_shape(shape, dtype, tag, args.repeats, not args.no_check)
        print_table(shape, results)
        saved = plain_saved_bytes(shape)
        print(
            "saved for backward: " + "; ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in saved.items()),
            flush=True,
        )
        report["shapes"].append({"shape": dict(zip("BTHKV", shape)), "rows": results, "saved_bytes": saved})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
