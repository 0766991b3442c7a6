"""Compile the Triton kernels for Hopper (sm_90) without a GPU and report their resources.

    python -m bench.compile_sm90 [--quick]

Triton compiles ahead of time for a named target with its bundled ``ptxas``, so this checks on
any machine that every kernel lowers to a cubin (int8 ``tl.dot`` -> ``wgmma ... s32.s8.s8``)
and prints registers and spill stack per configuration — what an autotune config costs before a
GPU is at hand — and, for the exactness contract, the count of correctly rounded divisions
(``div.rn.f32``) and of fp32 FMAs (must be 0: the kernels launch with ``enable_fp_fusion=False``).
Must run without ``TRITON_INTERPRET`` (interpreted kernels cannot be compiled).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

TARGET = ("cuda", 90, 32)
_TYPES = {
    "H": "i32", "K": "i32", "V": "i32", "scale": "fp32",
    "q_ptr": "*bf16", "k_ptr": "*bf16", "v_ptr": "*bf16", "o_ptr": "*bf16",
    "cu_ptr": "*i32", "choff_ptr": "*i32", "fused_ptr": "*i32", "cseq_ptr": "*i32",
    "tqk_ptr": "*i32", "tpv_ptr": "*i32", "tqs_ptr": "*i32", "tkv_ptr": "*i32",
    "sq_ptr": "*i8", "ss_ptr": "*fp32",
}  # fmt: skip
_STATE = {"USE_H0": True, "STORE_HT": True}


def _cases(quick: bool):
    from retquant.kernels.chunk_prep import INT8_DOT_MIN_REDUCED, block
    from retquant.kernels.chunk_retention_fused import chunk_retention_fused_kernel as fused
    from retquant.kernels.chunk_retention_out import chunk_retention_out_kernel as out
    from retquant.kernels.chunk_retention_state import chunk_retention_state_kernel as state
    from retquant.kernels.recurrent_retention_step import recurrent_retention_step_kernel as rec

    base = {"C": 64, "BK": 128, "TRACE": False}
    # K=16 as the launchers pad it: the kernels that reduce over K (Q K^T, Q S) need BK >= 32
    small_k = {**base, "BK": block(16, INT8_DOT_MIN_REDUCED)}
    cases = [
        (out, {**base, "BV": 64}, 8),
        (state, {**base, **_STATE, "BV": 32}, 4),
        (fused, {**base, **_STATE, "BV": 32}, 8),
        (rec, {"BK": 128, "BVF": 128, "BV": 32, **_STATE}, 4),
        (out, {**small_k, "BV": 16}, 4),
        (fused, {**small_k, **_STATE, "BV": 16}, 4),
    ]
    if not quick:
        cases += [(out, {**base, "BV": bv}, w) for bv in (32, 128) for w in (4, 8)] + [
            (state, {**base, **_STATE, "BV": bv}, w) for bv in (16, 64) for w in (4, 8)
        ]
    return cases


def _resources(cubin: bytes) -> str:
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        res = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True)
    m = re.search(r"REG:(\d+) STACK:(\d+)", res.stdout)
    return f"regs {m.group(1)}, spill stack {m.group(2)} B" if m else "resources unknown"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one configuration per kernel, and K=16")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        sys.exit("bench.compile_sm90: unset TRITON_INTERPRET (interpreted kernels do not compile)")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget(*TARGET)
    for fn, consts, warps in _cases(args.quick):
        sig = {n: "constexpr" if n in consts else _TYPES.get(n, "*fp32") for n in fn.arg_names}
        k = triton.compile(
            ASTSource(fn, sig, constexprs=consts),
            target=target,
            options={"num_warps": warps, "num_stages": 2, "enable_fp_fusion": False},
        )
        ptx = k.asm["ptx"]
        wgmma = len(re.findall(r"wgmma\.mma_async\S*s32\.s8\.s8", ptx))
        n_div = ptx.count("div.rn.f32")
        n_fma = len(re.findall(r"fma\.rn\S*\.f32", ptx))
        shown = {n: v for n, v in consts.items() if n in ("BK", "BV")}
        print(
            f"{fn.__name__:<34} {shown} warps={warps}: sm_90 cubin ok, "
            f"{wgmma} int8 wgmma, div.rn {n_div}, fma {n_fma}, {_resources(k.asm['cubin'])}"
        )


if __name__ == "__main__":
    main()
