"""The decode kernel's division-free codes (codes8_fma in csrc/quant_avx2.h) against the spec's
true division, exhaustively where they could differ: every significand of the scale in a binade,
x within a few ulps of (half-integer) * scale (retquant::fma_codes_mismatches)."""

from __future__ import annotations

import time

import pytest
import torch

from retquant.backends import cpu_extension

pytestmark = pytest.mark.skipif(
    cpu_extension.load_error() is not None or "avx2" not in cpu_extension.cpu_isas(),
    reason="needs the CPU extension on a CPU with AVX2 + FMA",
)


@pytest.mark.parametrize("exponent", [-100, 0, 121])
def test_fma_codes_equal_the_division_where_the_kernel_uses_them(exponent):
    # scales from 2^-100 (kFmaCodesMinScale) to FLT_MAX / 127 (in the binade 2^121): the bottom, a
    # middle and the top binade; the rest scale exactly from these
    t0 = time.perf_counter()
    bad = torch.ops.retquant.fma_codes_mismatches(exponent, 2)
    print(f"binade 2^{exponent}: {bad} mismatches, {time.perf_counter() - t0:.1f} s")
    assert bad == 0


def test_the_check_finds_the_scales_below_the_bound():
    # below 2^-100 the residual x - t s can be subnormal and inexact: there the FMA form does
    # differ (why the kernel takes the division for such scales), so the check can fail
    assert torch.ops.retquant.fma_codes_mismatches(-126, 2) > 0


def test_bad_arguments():
    with pytest.raises(RuntimeError, match="exponent must be in"):
        torch.ops.retquant.fma_codes_mismatches(127, 2)
    with pytest.raises(RuntimeError, match="window must be in"):
        torch.ops.retquant.fma_codes_mismatches(0, -1)
