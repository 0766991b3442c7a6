"""bench.decode_profile: the least-squares split and a tiny end-to-end run."""

import pytest

from bench import decode_profile
from retquant.backends import cpu_extension


def test_fit_recovers_fixed_and_per_head_costs():
    heads = [8, 16, 32, 64]
    a, b = decode_profile._fit(heads, [12.5 + 3.0 * h for h in heads])
    assert a == pytest.approx(12.5) and b == pytest.approx(3.0)


def test_tiny_run_prints_the_fit(capsys):
    if cpu_extension.load_error() is not None:
        pytest.skip(f"CPU extension unavailable: {cpu_extension.load_error()}")
    decode_profile.main(["--H", "1", "--K", "16", "--V", "16", "--repeats", "1"])
    out = capsys.readouterr().out
    assert "fixed +" in out and "per head" in out and out.count("x |") == 4, out
    assert "RetentionDecoder.step:" in out and "fused_recurrent_retention (checks, new state):" in out, out
    assert "public op at B=4:" in out and "Python path +" in out, out
    assert "kernel stages, one thread" in out and "the kernel as it runs" in out, out
