"""torch.compile(fullgraph=True) and torch.export see each retention call as one custom op.

The checks (tests/compile_check.py) run in a fresh interpreter: torch.compile leaves
process-wide state behind that breaks the Triton interpreter tests run later in this process.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from retquant.backends import cpu_extension

_ERR = cpu_extension.load_error()


@pytest.mark.skipif(_ERR is not None, reason=f"CPU extension unavailable: {_ERR}")
def test_compile_fullgraph_export_and_opcheck():
    script = os.path.join(os.path.dirname(__file__), "compile_check.py")
    r = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "compile checks passed" in r.stdout


def test_import_does_not_pull_dynamo_or_triton():
    # torch._dynamo would import triton, fixing its interpreter mode before a user (or the Triton
    # tests) can set TRITON_INTERPRET=1; it is also a slow import nobody asked for.
    code = (
        "import sys, retquant, retquant.ops; "
        "print(sorted(m for m in ('torch._dynamo', 'triton') if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]"
