"""Where the CPU decode step's time goes: a fixed cost per call and a cost per (sequence, head).

    python -m bench.decode_profile [--threads 2] [--H 8 --K 128 --V 128] [--repeats 7]

Times the int8 decode kernel (the registered op ``retquant::recurrent_fwd``, state updated in
place, as ``RetentionDecoder.step`` calls it) and the in-place fp32 PyTorch step
(:func:`bench.cpu.decode_step_fp32`) at B = 1, 2, 4, 8, fits ``time = fixed + per_head * B * H``
by least squares, and times a 1 x 1 x 16 x 16 state (almost no work: the call's own cost), there
also through ``RetentionDecoder.step`` and the public ``fused_recurrent_retention`` (argument
checks, a new state tensor per call: what each API adds to the kernel op per token); at B = 4
it splits the public op's time into the kernel in place, the same kernel writing a new state
(``retquant::recurrent_call``) and the Python path around it; and on one thread it splits the
kernel itself into its stages (``retquant::decode_stage_seconds``: the token quantization, the
state update pass, q . S as a pass of its own, and the kernel as it runs, which on AVX2
interleaves the update and q . S per block of columns). The
state grows from 0.5 to 4 MiB over the sweep (past the L2 of two cores at B >= 2): a per-head
cost that does not rise with B says the state's trips beyond L2 are not what bounds the kernel.
Medians of ``--repeats`` rounds of 64 tokens each (the int8 op and the fp32 step in turn).
"""

from __future__ import annotations

import argparse
import statistics

import torch

from bench.cpu import api_decode_loops, decode_step_fp32, kernel_decode_loop
from bench.cpu_peers import interleaved_median_times
from retquant.backends import cpu_extension
from retquant.backends.cpu_extension import cpu_name
from retquant.decay import default_g_gamma, step_gamma

STEPS = 64


def _per_token_times(B, H, K, V, repeats, gen) -> tuple[float, float]:
    """Seconds per token of the int8 kernel op and of the fp32 step at one shape."""
    q, k = (torch.randn(STEPS, B, H, K, generator=gen) for _ in range(2))
    v = torch.randn(STEPS, B, H, V, generator=gen)
    S0 = torch.randn(B, H, K, V, generator=gen)
    gamma = step_gamma(default_g_gamma(H))
    scale = K**-0.5
    S_f32 = S0.clone()
    op_steps = kernel_decode_loop(q, k, v, S0.clone(), gamma, scale)

    def fp32_steps():
        for t in range(STEPS):
            decode_step_fp32(q[t], k[t], v[t], S_f32, gamma, scale)

    t_op, t_f32 = interleaved_median_times([op_steps, fp32_steps], repeats)
    return t_op / STEPS, t_f32 / STEPS


def _api_call_times(repeats, gen) -> tuple[float, float]:
    """Seconds per token of ``RetentionDecoder.step`` and of ``fused_recurrent_retention`` (int8,
    cpu, state passed in and returned) on a 1 x 1 x 16 x 16 state."""
    B, H, K, V = 1, 1, 16, 16
    q, k = (torch.randn(STEPS, B, 1, H, K, generator=gen) for _ in range(2))
    v = torch.randn(STEPS, B, 1, H, V, generator=gen)
    S0 = torch.randn(B, H, K, V, generator=gen)
    loops = api_decode_loops(q, k, v, S0, default_g_gamma(H), K**-0.5)
    t_dec, t_op = interleaved_median_times(list(loops), repeats)
    return t_dec / STEPS, t_op / STEPS


def _public_op_split(B, H, K, V, repeats, gen) -> tuple[float, float, float]:
    """Seconds per token at one shape of: the kernel op updating the state in place; the same
    kernel writing a new state tensor per token (``retquant::recurrent_call``, what the public op
    runs, without its Python); the public ``fused_recurrent_retention`` (int8, cpu)."""
    q, k = (torch.randn(STEPS, B, 1, H, K, generator=gen) for _ in range(2))
    v = torch.randn(STEPS, B, 1, H, V, generator=gen)
    S0 = torch.randn(B, H, K, V, generator=gen)
    g_gamma, scale = default_g_gamma(H), K**-0.5
    gamma = step_gamma(g_gamma)
    isa = cpu_extension.isa_code()
    qf, kf, vf = (x.view(STEPS, B, H, -1) for x in (q, k, v))
    in_place = kernel_decode_loop(qf, kf, vf, S0.clone(), gamma, scale)

    def new_state():
        S = S0
        for t in range(STEPS):
            _, S, _ = torch.ops.retquant.recurrent_call(q[t], k[t], v[t], None, scale, gamma, S, isa)

    _, public = api_decode_loops(q, k, v, S0, g_gamma, scale)
    times = interleaved_median_times([in_place, new_state, public], repeats)
    return tuple(t / STEPS for t in times)


def _stage_times(H, K, V, repeats, gen) -> list[float]:
    """Seconds per head per token, one thread, medians of ``repeats`` calls of
    ``retquant::decode_stage_seconds`` at this ISA: the token quantization, the state update pass,
    q . S as a second pass, the kernel as it runs; raises if the two-pass run and the kernel wrote
    different bits."""
    q, k = (torch.randn(STEPS, H, K, generator=gen) for _ in range(2))
    v = torch.randn(STEPS, H, V, generator=gen)
    S0 = torch.randn(H, K, V, generator=gen)
    gamma, isa = step_gamma(default_g_gamma(H)), cpu_extension.isa_code()
    runs = [torch.ops.retquant.decode_stage_seconds(q, k, v, K**-0.5, gamma, S0, isa) for _ in range(repeats)]
    if not all(r[4] == 1.0 for r in runs):
        raise RuntimeError("decode_stage_seconds: the two-pass stages and the kernel disagree")
    quant, update, two_passes, kernel = (statistics.median(r[i] for r in runs) / H for i in range(4))
    return [quant, update - quant, two_passes - update, kernel]


def _fit(xs, ys) -> tuple[float, float]:
    """Least-squares ``y = a + b x``; returns ``(a, b)``."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--H", type=int, default=8)
    ap.add_argument("--K", type=int, default=128)
    ap.add_argument("--V", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    H, K, V = args.H, args.K, args.V
    gen = torch.Generator().manual_seed(0)
    print(
        f"machine: {cpu_name()}; threads={torch.get_num_threads()}; kernel ISA={cpu_extension.isa()}; "
        f"H={H} K={K} V={V}; median of {args.repeats} interleaved rounds x {STEPS} tokens"
    )
    tiny_op, tiny_f32 = _per_token_times(1, 1, 16, 16, args.repeats, gen)
    print(
        f"1 x 1 x 16 x 16 state (the call's own cost): int8 op {tiny_op * 1e6:.1f} us, "
        f"fp32 step {tiny_f32 * 1e6:.1f} us"
    )
    t_dec, t_pub = _api_call_times(args.repeats, gen)
    print(
        f"  the same state through RetentionDecoder.step: {t_dec * 1e6:.1f} us, through "
        f"fused_recurrent_retention (checks, new state): {t_pub * 1e6:.1f} us"
    )
    print(f"{'B':>2} {'state MiB':>9} | {'int8 op us':>10} {'fp32 us':>8} {'ratio':>6} | {'us/head':>8}")
    heads, t_op, t_f32 = [], [], []
    for B in (1, 2, 4, 8):
        a, b = _per_token_times(B, H, K, V, args.repeats, gen)
        heads.append(B * H)
        t_op.append(a * 1e6)
        t_f32.append(b * 1e6)
        print(
            f"{B:>2} {B * H * K * V * 4 / 2**20:>9.2f} | {a * 1e6:>10.1f} {b * 1e6:>8.1f} {b / a:>5.2f}x | "
            f"{a * 1e6 / (B * H):>8.2f}"
        )
    fixed, per_head = _fit(heads, t_op)
    ffixed, fper_head = _fit(heads, t_f32)
    print(
        f"fit, int8 op: {fixed:.1f} us fixed + {per_head:.2f} us per head "
        f"({per_head * 1e3 / (K * V):.3f} ns per state element); fp32 step: {ffixed:.1f} us fixed + "
        f"{fper_head:.2f} us per head"
    )
    print(f"per-head ratio (fixed costs excluded): {fper_head / per_head:.2f}x")
    B = 4
    t_in, t_new, t_pub = _public_op_split(B, H, K, V, args.repeats, gen)
    print(
        f"public op at B={B}: kernel op in place {t_in * 1e6:.1f} us; the same kernel writing a new "
        f"state (recurrent_call) {t_new * 1e6:.1f} us; fused_recurrent_retention {t_pub * 1e6:.1f} us "
        f"(new state +{(t_new - t_in) * 1e6:.1f} us, Python path +{(t_pub - t_new) * 1e6:.1f} us)"
    )
    quant, update, dot, kernel = (t * 1e6 for t in _stage_times(H, K, V, args.repeats, gen))
    print(
        f"kernel stages, one thread, {H} heads, per head per token: token quantization {quant:.2f} us, "
        f"state update pass {update:.2f} us, q . S as a second pass {dot:.2f} us "
        f"(sum {quant + update + dot:.2f} us); the kernel as it runs {kernel:.2f} us"
    )


if __name__ == "__main__":
    main()
