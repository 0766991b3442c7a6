"""Distributed QAT: two gloo ranks under torchrun train the quantized LM with DDP; the learnable
quantizer ranges stay synchronised (the worker asserts it and prints one OK line per rank)."""

import os
import pathlib
import subprocess
import sys

import pytest

WORKER = pathlib.Path(__file__).with_name("ddp_qat_worker.py")
ROOT = WORKER.parents[1]


def _run(method: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd = [*launcher, str(WORKER), method]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


@pytest.mark.parametrize("method", ["lsq", "pact"])
def test_ddp_qat_two_ranks(method):
    r = _run(method)
    out = r.stdout + r.stderr
    first = ""
    if r.returncode != 0 and "AssertionError" not in out:
        # a launcher/rendezvous failure (not one of the worker's checks): one more try, and the
        # first failure stays visible in the message if the second fails too
        first = "\n--- first attempt ---\n" + out
        r = _run(method)
        out = r.stdout + r.stderr
    assert r.returncode == 0, out[-5000:] + first[-3000:]
    assert out.count("in sync") == 2, out[-5000:] + first[-3000:]  # the attempt that passed
