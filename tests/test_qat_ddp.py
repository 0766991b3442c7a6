"""Distributed QAT: two gloo ranks under torchrun train the quantized LM with DDP; the learnable
quantizer ranges stay synchronised (the worker asserts it and prints one OK line per rank)."""

import os
import pathlib
import subprocess
import sys

import pytest

WORKER = pathlib.Path(__file__).with_name("ddp_qat_worker.py")
ROOT = WORKER.parents[1]


@pytest.mark.parametrize("method", ["lsq", "pact"])
def test_ddp_qat_two_ranks(method):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(WORKER),
        method,
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert out.count("in sync") == 2, out[-4000:]
