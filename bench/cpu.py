"""CPU benchmark: the C++ int8 kernel against the best plain-PyTorch chunkwise retention.

    python -m bench.cpu [--quick] [--B 4 --T 4096 --H 8 --K 128 --V 128] [--threads N]
                        [--repeats 5]

Reports, in one run on one machine: the int8 CPU kernel (public op and kernel alone); a
plain-PyTorch fp32 and bf16 chunkwise retention (all chunks batched for the intra-chunk part
and the state updates, one short loop for the state recurrence, then one batched Q S), called
on the whole batch and one (batch, head) at a time (cache-sized intermediates); a
PyTorch int8 path on ``torch._int_mm``; the machine's int8 (``_int_mm``), fp32 and bf16 matmul
rates on the kernel's four GEMM shapes; the kernel's own GEMM-stage rate, per ISA the CPU can
run, as a fraction of that ISA's measured int8 peak; the decode step against an fp32 decode
step; and the float path's fused fp32 kernel against the fp32 PyTorch chunkwise retention
(:mod:`bench.float_cpu`). The kernel ISA is ``RETQUANT_CPU_ISA`` (default: the best the CPU has)
and is printed. Times are medians of ``--repeats`` rounds, each round running every row of a
table once in turn (``interleaved_median_times``); accuracy is relative L2 and cosine
against a float64 reference (``retquant.metrics.compare``).
"""

from __future__ import annotations

import platform

import torch

from bench import float_cpu
from bench.cpu_peers import (
    C,
    _split,
    interleaved_median_times,
    median_time,
    parse_shape_args,
    torch_chunk_retention,
    torch_chunk_retention_blocked,
)
from retquant.backends import cpu, cpu_extension
from retquant.backends.cpu_extension import cpu_name
from retquant.decay import default_g_gamma
from retquant.metrics import compare
from retquant.ops import RetentionDecoder, chunk_retention, fused_recurrent_retention
from retquant.validate import validate_call


def _q8(x: torch.Tensor, dim: int):
    s = x.abs().amax(dim=dim, keepdim=True) / 127.0
    s = torch.where(s > 0, s, 1.0)
    return torch.clamp(torch.round(x / s), -127, 127).to(torch.int8), s


def torch_int8_chunk_retention(q, k, v, g_gamma, scale):
    """The same int8 algorithm in PyTorch ops: quantization batched over all chunks, the four
    int8 products with ``torch._int_mm`` (2-D only, so one call per chunk and head)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    n = -(-T // C)
    qc, kc, vc = _split(q.float() * scale, n), _split(k.float(), n), _split(v.float(), n)
    j = torch.arange(C, dtype=torch.float64)
    g = g_gamma.view(H, 1)
    diff = j[:, None] - j[None, :]
    mask = torch.where(diff >= 0, torch.exp(g[:, :, None] * diff.clamp(min=0)), 0.0).float()
    inter = torch.exp(g * (j + 1)).float()
    kdec = torch.exp(g * (C - 1 - j)).float().view(1, H, 1, C, 1)
    gC = torch.exp(g_gamma * C).float()
    Qi, sq = _q8(qc, -1)
    Ki, sk = _q8(kc, -1)
    Vi, sv = _q8(vc, -2)
    Kd, skd = _q8(kc * kdec, -2)
    KdT = Kd.transpose(-1, -2).contiguous()
    KiT = Ki.transpose(-1, -2).contiguous()
    out = torch.empty(B, H, n, C, V)
    mm = torch._int_mm
    for b in range(B):
        for h in range(H):
            S = torch.zeros(K, V)
            for i in range(n):
                P = (mm(Qi[b, h, i], KiT[b, h, i]).float() * sq[b, h, i]) * sk[b, h, i].T
                P = P * mask[h]
                Pi, sp = _q8(P, -1)
                o = mm(Pi, Vi[b, h, i]).float() * sp * sv[b, h, i]
                Si, sS = _q8(S, -2)
                o += mm(Qi[b, h, i], Si).float() * (sq[b, h, i] * inter[h].view(C, 1)) * sS
                out[b, h, i] = o
                S = S * gC[h] + mm(KdT[b, h, i], Vi[b, h, i]).float() * skd[b, h, i].T * sv[b, h, i]
    return out.reshape(B, H, n * C, V)[:, :, :T].transpose(1, 2)


def gemm_shapes(K: int, V: int):
    """(name, m, n, r) of the kernel's four products per chunk (r = reduced length)."""
    return [("Q K^T", C, C, K), ("P V", C, V, C), ("Q S", C, V, K), ("K~^T V", K, V, C)]


def gemm_rates(K, V, batch, repeats, isas):
    """GOP/s of torch._int_mm (one 2-D call per product), fp32 and bf16 bmm on these shapes, and
    of the kernel's GEMM stage alone with each ISA of ``isas``."""
    rows = []
    for name, m, n, r in gemm_shapes(K, V):
        ops = 2.0 * m * n * r * batch
        a8 = torch.randint(-127, 128, (batch, m, r), dtype=torch.int8)
        b8 = torch.randint(-127, 128, (batch, r, n), dtype=torch.int8)

        def int_mm(a8=a8, b8=b8):
            for i in range(batch):
                torch._int_mm(a8[i], b8[i])

        af, bf = a8.float(), b8.float()
        ab, bb = af.bfloat16(), bf.bfloat16()
        t8 = median_time(int_mm, repeats)
        t32 = median_time(lambda af=af, bf=bf: torch.bmm(af, bf), repeats)
        t16 = median_time(lambda ab=ab, bb=bb: torch.bmm(ab, bb), repeats)
        kernel = []
        for isa in isas:
            code = cpu_extension.isa_code(isa)
            tk = median_time(
                lambda m=m, n=n, r=r, code=code: torch.ops.retquant.gemm_seconds(m, n, r, batch, code),
                repeats,
            )
            kernel.append(ops / tk / 1e9)
        rows.append((f"{name} {m}x{n}x{r}", ops / t8 / 1e9, ops / t32 / 1e9, ops / t16 / 1e9, kernel))
    return rows


def int8_peaks(isas) -> dict[str, float]:
    """GOP/s of each SIMD ISA's int8 inner loop on registers only (``retquant::int8_peak_gops``:
    ``vpdpbusd`` for avx512, the sign trick for avx2), best of 3; the portable path has none."""
    return {
        isa: max(torch.ops.retquant.int8_peak_gops(cpu_extension.isa_code(isa)) for _ in range(3))
        for isa in isas
        if isa != "portable"
    }


def decode_step_fp32(q, k, v, S, gamma, scale):
    """One fp32 decode step for [B, H, K]/[B, H, V] tokens: S = g S + k v^T; o = q S, in place
    and fused as a careful user writes it (the rank-1 update by ``baddbmm_``, no k v^T tensor)."""
    B, H, K, V = S.shape
    Sf = S.view(B * H, K, V)
    S.mul_(gamma.view(1, -1, 1, 1))
    Sf.baddbmm_(k.reshape(B * H, K, 1), v.reshape(B * H, 1, V))
    return torch.bmm((q * scale).reshape(B * H, 1, K), Sf).view(B, H, V)


def kernel_decode_loop(q, k, v, S, gamma, scale):
    """A per-token loop of the registered int8 decode op over tokens ``q, k [steps, B, H, K]``,
    ``v [steps, B, H, V]`` (contiguous per token), updating ``S`` in place (initial_state is
    final_state, as ``RetentionDecoder.step`` calls it); ``gamma`` float32 ``[H]``."""
    steps, B, H, _ = q.shape
    off = torch.arange(B + 1, dtype=torch.int64)
    out = torch.empty(B, H, v.shape[-1])
    isa = cpu_extension.isa_code()

    def op_steps():
        for t in range(steps):
            torch.ops.retquant.recurrent_fwd(q[t], k[t], v[t], off, scale, gamma, S, out, S, isa)

    return op_steps


def api_decode_loops(q, k, v, S0, g_gamma, scale):
    """Two per-token loops over tokens ``q, k [steps, B, 1, H, K]``, ``v [steps, B, 1, H, V]``:
    ``RetentionDecoder.step`` (int8, cpu, state in place: the serving API) and the public
    ``fused_recurrent_retention`` (int8, cpu; full argument checks, a new state tensor per token),
    both from state ``S0``."""
    steps, B, _, H, K = q.shape
    V = v.shape[-1]
    kw = dict(scale=scale, g_gamma=g_gamma, quant="int8", backend="cpu")
    dec = RetentionDecoder(B, H, K, V, initial_state=S0, **kw)
    qd, kd, vd = (x.view(steps, B, H, -1) for x in (q, k, v))  # per token: contiguous [B, H, D]

    def decoder_steps():
        for t in range(steps):
            dec.step(qd[t], kd[t], vd[t])

    def public_op_steps():
        S = S0
        for t in range(steps):
            _, S = fused_recurrent_retention(q[t], k[t], v[t], initial_state=S, output_final_state=True, **kw)
        return S

    return decoder_steps, public_op_steps


def main(argv=None):
    args = parse_shape_args(argv, __doc__)
    B, T, H, K, V = args.B, args.T, args.H, args.K, args.V
    R = args.repeats
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(B, T, H, K, generator=gen)
    k = torch.randn(B, T, H, K, generator=gen)
    v = torch.randn(B, T, H, V, generator=gen)
    gg = default_g_gamma(H)
    scale = K**-0.5
    isa = cpu_extension.isa()
    print(
        f"machine: {platform.processor() or platform.machine()}, {cpu_name()}; "
        f"torch {torch.__version__}; threads={torch.get_num_threads()}; kernel ISA={isa} "
        f"(this CPU runs: {', '.join(cpu_extension.cpu_isas())})"
    )
    print(f"shape: B={B} T={T} H={H} K={K} V={V} chunk={C}; median of {R} interleaved rounds\n")

    ref = chunk_retention(q.double(), k.double(), v.double(), g_gamma=gg, backend="reference")[0]
    n_chunks = -(-T // C)
    gemm_ops = 2.0 * B * H * n_chunks * sum(m * n * r for _, m, n, r in gemm_shapes(K, V))
    call = validate_call(q, k, v, g_gamma=gg, quant="int8")

    cases = []  # (name, fn, error of its output); timed together below

    def run(name, fn):
        e = compare(fn().float(), ref)  # (also the warm-up call)
        cases.append((name, fn, e))

    qb, kb, vb = q.bfloat16(), k.bfloat16(), v.bfloat16()
    run(
        "int8 C++ kernel (chunk_retention, backend=cpu)",
        lambda: chunk_retention(q, k, v, g_gamma=gg, quant="int8", backend="cpu")[0],
    )
    run("int8 C++ kernel alone (no arg checks)", lambda: cpu.chunk_raw(call)[0].view(B, T, H, V))
    run(
        "int8 C++ kernel, bf16 q/k/v/o (chunk_retention)",
        lambda: chunk_retention(qb, kb, vb, g_gamma=gg, quant="int8", backend="cpu")[0],
    )
    run("fp32 PyTorch chunkwise, all batched", lambda: torch_chunk_retention(q, k, v, gg, scale))
    run("bf16 PyTorch chunkwise, all batched", lambda: torch_chunk_retention(qb, kb, vb, gg, scale))
    run(
        "fp32 PyTorch chunkwise, per (b, h)",
        lambda: torch_chunk_retention_blocked(q, k, v, gg, scale),
    )
    run(
        "bf16 PyTorch chunkwise, per (b, h)",
        lambda: torch_chunk_retention_blocked(qb, kb, vb, gg, scale),
    )
    run("int8 PyTorch (torch._int_mm)", lambda: torch_int8_chunk_retention(q, k, v, gg, scale))
    times = interleaved_median_times([fn for _, fn, _ in cases], R, warmup=0)
    rows = [(name, t, gemm_ops / t / 1e9, e.rel_l2, e.cosine) for (name, _, e), t in zip(cases, times)]

    print(f"{'chunkwise retention':50s} {'ms':>9s} {'GOP/s*':>8s} {'rel_l2':>10s} {'cosine':>10s}")
    for name, t, rate, rel, cos in rows:
        print(f"{name:50s} {t * 1e3:9.1f} {rate:8.1f} {rel:10.3e} {cos:10.7f}")
    best = min(rows[3:7], key=lambda r: r[1])
    print(f"* GOP/s = the chunk algorithm's {gemm_ops / 1e9:.2f} GOP of products / time")
    print(
        f"speed-up of the int8 kernel over the best fp32/bf16 PyTorch ({best[0]}, {best[1] * 1e3:.1f} ms)"
        ":\n  "
        f"{best[1] / rows[0][1]:.2f}x with float32 q/k/v/o (kernel alone: {best[1] / rows[1][1]:.2f}x), "
        f"{best[1] / rows[2][1]:.2f}x with bf16 q/k/v/o\n"
    )

    batch = min(B * H * n_chunks, 512)
    isas = [i for i in cpu_extension.cpu_isas() if i != "portable" or isa == "portable"]
    peaks = int8_peaks(isas)
    print(
        "int8 peak (register-only inner loop, all threads): "
        + ", ".join(f"{i} {p:.0f} GOP/s" for i, p in peaks.items())
    )
    print(f"GEMM rates on the kernel's shapes (GOP/s, {batch} products per timing)")
    head = "".join(f" {'kernel ' + i:>14s}" for i in isas)
    print(f"{'shape m x n x reduced':24s} {'_int_mm':>9s} {'fp32 bmm':>9s} {'bf16 bmm':>9s}{head}")
    for name, r8, r32, r16, rk in gemm_rates(K, V, batch, R, isas):
        cells = "".join(
            f" {rate:8.1f}" + (f" ({rate / peaks[i]:3.0%})" if i in peaks else " " * 6)
            for i, rate in zip(isas, rk)
        )
        print(f"{name:24s} {r8:9.1f} {r32:9.1f} {r16:9.1f}{cells}")
    print(
        "(_int_mm: one 2-D call per product, as a PyTorch int8 path must; kernel <isa>: the C++ "
        "GEMM stage alone on the same shapes, same threads, with the fraction of that ISA's int8 "
        "peak)\n"
    )

    _decode(B, H, K, V, gg, scale, gen, R)
    print()

    float_cpu.report(q, k, v, gg, scale, ref, R)


def _decode(B, H, K, V, gg, scale, gen, R):
    """Per-token decode: the registered kernel op updating the state in place, RetentionDecoder
    (the serving API: checked tokens, state in place), the public op (full argument checks, a new
    state tensor per token) and an fp32 PyTorch step that also updates in place; all on the same
    pre-split per-token inputs."""
    steps = 64
    q = torch.randn(steps, B, 1, H, K, generator=gen)
    k = torch.randn(steps, B, 1, H, K, generator=gen)
    v = torch.randn(steps, B, 1, H, V, generator=gen)
    S0 = torch.randn(B, H, K, V, generator=gen)
    gamma = torch.exp(gg).float()
    decoder_steps, int8_steps = api_decode_loops(q, k, v, S0, gg, scale)

    def fp32_steps():
        S = S0.clone()
        for t in range(steps):
            decode_step_fp32(q[t, :, 0], k[t, :, 0], v[t, :, 0], S, gamma, scale)
        return S

    qf, kf, vf = (x.view(steps, B, H, -1) for x in (q, k, v))  # per token: contiguous [B, H, D]
    op_steps = kernel_decode_loop(qf, kf, vf, S0.clone(), gamma, scale)

    t_op, t_dec, t_i8, t_f32 = (
        t / steps for t in interleaved_median_times([op_steps, decoder_steps, int8_steps, fp32_steps], R)
    )
    print(
        f"decode step (B={B}, H={H}, K={K}, V={V}), per token, "
        f"median of {R} interleaved rounds x {steps} tokens"
    )
    print(f"  int8 kernel (registered op, state in place):    {t_op * 1e6:8.1f} us")
    print(f"  int8 RetentionDecoder.step (state in place):     {t_dec * 1e6:8.1f} us")
    print(f"  int8 fused_recurrent_retention(backend=cpu):     {t_i8 * 1e6:8.1f} us")
    print(f"  fp32 PyTorch step (in place: mul_, baddbmm_, bmm): {t_f32 * 1e6:7.1f} us")
    print(
        f"  speed-up over fp32: {t_f32 / t_op:.2f}x (kernel), {t_f32 / t_dec:.2f}x (RetentionDecoder), "
        f"{t_f32 / t_i8:.2f}x (fused_recurrent_retention)"
    )


if __name__ == "__main__":
    main()
