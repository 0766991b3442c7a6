"""Rows of the op forward (``fwd``), the decode step (``decode``) and the GPU forward (``gpu-fwd``).

Forward: the C++ int8 kernel, the float path (``quant=None``, auto backend), the reference
(``backend="reference"``, the Python integer spec: slow, so only on the smallest shape), and
the plain PyTorch chunk peers of :mod:`bench.cpu_peers` in fp32 (whole batch, per (b, h)) and
bf16 (per (b, h); emulated and very slow on CPUs without native bf16, so there only on the
smallest shape, at most 2 repeats). Decode: ``RetentionDecoder`` int8 against the fp32 in-place
step of :mod:`bench.cpu`. GPU: Triton int8 (``backend="triton"``), fla's bf16 op and a bf16
PyTorch chunk, only with CUDA (otherwise listed as skipped).
"""

from __future__ import annotations

import torch

from bench.cpu import decode_step_fp32
from bench.cpu_peers import torch_chunk_retention, torch_chunk_retention_blocked
from bench.suite.rows import Row, chunk_ops, decode_ops, skipped
from bench.train import Inputs
from retquant.metrics import compare
from retquant.ops import RetentionDecoder, chunk_retention

DECODE_STEPS = 32


def _rel(ref):
    return lambda out: compare(out.double(), ref).rel_l2


def fwd_rows(x: Inputs, smallest: bool, bf16_native: bool, ref: torch.Tensor | None) -> list[Row]:
    """The op forward rows on inputs ``x`` (float32); ``ref``: float64 output for accuracy."""
    B, T, H, K = x.q.shape
    V = x.v.shape[-1]
    ops = chunk_ops(B, T, H, K, V)
    chk = _rel(ref) if ref is not None else None
    q, k, v, g, s = x.q, x.k, x.v, x.g, x.scale

    def row(name, peer, backend, fn, peak, **kw):
        return Row(name, "fwd", peer, backend, fn=fn, flops=ops, peak=peak, check=chk, **kw)

    rows = [
        row(
            "int8 C++ kernel (chunk_retention quant=int8, backend=cpu)",
            False,
            "cpu int8",
            lambda: chunk_retention(q, k, v, s, g_gamma=g, quant="int8", backend="cpu")[0],
            "int8",
        ),
        row(
            "float path (chunk_retention quant=None)",
            False,
            "float path",
            lambda: chunk_retention(q, k, v, s, g_gamma=g)[0],
            "fp32",
        ),
    ]
    name = "reference int8 spec (backend=reference)"
    if smallest:
        rows.append(
            row(
                name,
                False,
                "reference",
                lambda: chunk_retention(q, k, v, s, g_gamma=g, quant="int8", backend="reference")[0],
                "int8",
                max_repeats=2,
                note="Python spec; smallest shape only, 2 repeats",
            )
        )
    else:
        rows.append(skipped(name, "fwd", False, "reference", "slow Python spec: smallest shape only"))
    rows += [
        row(
            "fp32 PyTorch chunk, whole batch",
            True,
            "torch fp32",
            lambda: torch_chunk_retention(q, k, v, g, s),
            "fp32",
        ),
        row(
            "fp32 PyTorch chunk, per (b, h)",
            True,
            "torch fp32",
            lambda: torch_chunk_retention_blocked(q, k, v, g, s),
            "fp32",
        ),
    ]
    name = "bf16 PyTorch chunk, per (b, h)"
    if bf16_native or smallest:
        qb, kb, vb = q.bfloat16(), k.bfloat16(), v.bfloat16()
        rows.append(
            row(
                name,
                True,
                "torch bf16",
                lambda: torch_chunk_retention_blocked(qb, kb, vb, g, s),
                "fp32",
                max_repeats=None if bf16_native else 2,
                note="" if bf16_native else "bf16 emulated here: smallest shape only, 2 repeats",
            )
        )
    else:
        rows.append(
            skipped(name, "fwd", True, "torch bf16", "bf16 is emulated on this CPU: smallest shape only")
        )
    return rows


def decode_rows(x: Inputs) -> list[Row]:
    """Per-token decode, ``DECODE_STEPS`` tokens per call (times are divided by it)."""
    B, _, H, K = x.q.shape
    V = x.v.shape[-1]
    gen = torch.Generator().manual_seed(1)
    q, k = (torch.randn(DECODE_STEPS, B, H, K, generator=gen) for _ in range(2))
    v = torch.randn(DECODE_STEPS, B, H, V, generator=gen)
    S0 = torch.randn(B, H, K, V, generator=gen)
    gamma = torch.exp(x.g).float()
    dec = RetentionDecoder(
        B, H, K, V, scale=x.scale, g_gamma=x.g, quant="int8", backend="cpu", initial_state=S0
    )
    S = S0.clone()

    def int8_steps():
        for t in range(DECODE_STEPS):
            dec.step(q[t], k[t], v[t])

    def fp32_steps():
        for t in range(DECODE_STEPS):
            decode_step_fp32(q[t], k[t], v[t], S, gamma, x.scale)

    ops = decode_ops(B, H, K, V)
    n = DECODE_STEPS
    return [
        Row(
            "int8 RetentionDecoder.step (backend=cpu)",
            "decode",
            False,
            "cpu int8",
            int8_steps,
            ops,
            "int8",
            calls=n,
        ),
        Row(
            "fp32 PyTorch step, in place (mul_, baddbmm_, bmm)",
            "decode",
            True,
            "torch fp32",
            fp32_steps,
            ops,
            "fp32",
            calls=n,
        ),
    ]


def gpu_rows(x: Inputs) -> list[Row]:
    """Triton int8, fla bf16 and a bf16 PyTorch chunk on CUDA copies of ``x``; skipped rows
    (with the reason) when there is no CUDA device or the package is missing."""
    names = [
        ("Triton int8 (chunk_retention quant=int8, backend=triton)", False, "triton int8"),
        ("fla chunk_retention bf16", True, "fla"),
        ("bf16 PyTorch chunk (bench.torch_chunk)", True, "torch bf16 cuda"),
    ]
    if not torch.cuda.is_available():
        return [skipped(n, "gpu-fwd", p, b, "no CUDA device") for n, p, b in names]
    from bench.torch_chunk import torch_chunk_retention as cuda_chunk

    B, T, H, K = x.q.shape
    ops = chunk_ops(B, T, H, K, x.v.shape[-1])
    q, k, v = (t.cuda().bfloat16() for t in (x.q, x.k, x.v))
    g = x.g.cuda()

    def synced(fn):
        def run():
            out = fn()
            torch.cuda.synchronize()
            return out

        return run

    rows = []
    try:
        import triton  # noqa: F401

        rows.append(
            Row(
                *names[0][:1],
                "gpu-fwd",
                False,
                names[0][2],
                synced(
                    lambda: chunk_retention(q, k, v, x.scale, g_gamma=g, quant="int8", backend="triton")[0]
                ),
                ops,
                None,
            )
        )
    except ImportError as e:
        rows.append(skipped(*names[0][:1], "gpu-fwd", False, names[0][2], f"triton not installed ({e})"))
    try:
        from fla.ops.retention import chunk_retention as fla_chunk

        rows.append(
            Row(
                names[1][0], "gpu-fwd", True, "fla", synced(lambda: fla_chunk(q, k, v, scale=x.scale)[0]), ops
            )
        )
    except ImportError as e:
        rows.append(skipped(names[1][0], "gpu-fwd", True, "fla", f"fla not installed ({e})"))
    if T % 64:
        rows.append(skipped(names[2][0], "gpu-fwd", True, names[2][2], "T not a multiple of 64"))
    else:
        rows.append(
            Row(
                names[2][0],
                "gpu-fwd",
                True,
                names[2][2],
                synced(lambda: cuda_chunk(q, k, v, g, x.scale)),
                ops,
            )
        )
    return rows
