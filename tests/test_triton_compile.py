"""Every Triton kernel compiles for Hopper (sm_90) on this machine, GPU or not, and the chunk
kernels' int8 ``tl.dot`` lowers to int8 ``wgmma``, with correctly rounded divisions and no FMA
contraction in the PTX (runs ``python -m bench.compile_sm90``). The K=16 cases take ``BK`` from
the launchers' padding rule: an int8 ``tl.dot`` with a reduced dimension under 32 does not
compile for the GPU."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="triton is not installed (pip install -e '.[triton]')")


def test_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run(
        [sys.executable, "-m", "bench.compile_sm90", "--quick"],
        capture_output=True, text=True, timeout=600, env=env,
        cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [ln for ln in r.stdout.splitlines() if "sm_90 cubin ok" in ln]
    assert len(lines) == 6, r.stdout  # four kernels at K=128, two at K=16 (BK padded to 32)
    for ln in lines:
        if ln.startswith("chunk_"):
            assert int(re.search(r"(\d+) int8 wgmma", ln).group(1)) > 0, ln
        # exactness on the GPU: IEEE divisions for the quantizers, no FMA contraction
        assert int(re.search(r"div\.rn (\d+)", ln).group(1)) > 0, ln
        assert int(re.search(r"fma (\d+)", ln).group(1)) == 0, ln
