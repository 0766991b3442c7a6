"""The fused per-tensor STE ops (csrc/ste_tensor.cpp) on every ISA the CPU runs: codes
bit-identical to the primitives, backward equal to the quantizers' own torch formulas."""

import math

import pytest
import torch

from retquant import QuantSpec
from retquant.backends import cpu_extension
from retquant.backends.ste_tensor import ste_backward, ste_codes
from retquant.qat import lsq_quantize, pact_quantize, tqt_quantize
from retquant.qat.tqt import tqt_scale
from retquant.quant.primitives import quantize
from tests.conftest import float32_sum_error_bound, range_grad_terms

_ERR = cpu_extension.load_error()
pytestmark = pytest.mark.skipif(_ERR is not None, reason=f"CPU extension unavailable: {_ERR}")


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("n", [1, 7, 100_003])
def test_codes_equal_primitives(isa, bits, n, gen):
    spec = QuantSpec(bits=bits, granularity="tensor")
    x = torch.randn(n, generator=gen) * 3
    x[: min(n, 4)] = torch.tensor([0.125, -0.375, 1e30, -1e30])[: min(n, 4)]  # ties and far outside
    s = torch.tensor(0.25 if n < 10 else 0.0371)
    want = quantize(x, spec, s, torch.zeros((), dtype=torch.int32))
    assert torch.equal(ste_codes(x, float(s), spec.qmax), want), f"{isa} seed={gen.initial_seed()}"


@pytest.mark.parametrize("mode", ["lsq", "tqt", "pact"])
@pytest.mark.parametrize("bits", [4, 8])
def test_backward_equals_the_quantizers_autograd(isa, mode, bits, gen):
    spec = QuantSpec(bits=bits, granularity="tensor")
    x = (torch.randn(3001, 7, generator=gen) * (2 if bits == 4 else 40)).requires_grad_(True)  # clipped too
    g = torch.randn(3001, 7, generator=gen)
    if mode == "lsq":
        p = torch.tensor(0.21, requires_grad=True)
        lsq_quantize(x, p, spec, grad_scale=0.3).x_hat.backward(g)
        s, alpha, dp = 0.21, 0.0, lambda sums: sums[0] * 0.3
    elif mode == "tqt":
        p = torch.tensor(0.4, requires_grad=True)
        tqt_quantize(x, p, spec).x_hat.backward(g)
        s = float(tqt_scale(p, spec.bits))
        alpha, dp = 0.0, lambda sums: sums[0] * (s * math.log(2.0))
    else:
        p = torch.tensor(2.5, requires_grad=True)
        pact_quantize(x, p, spec).x_hat.backward(g)
        s, alpha, dp = float(torch.tensor(2.5) / spec.qmax), 2.5, lambda sums: sums[1]
    dx, sums = ste_backward(x.detach(), g, s, spec.qmax, mode, alpha)
    assert torch.equal(dx, x.grad), f"{mode} {isa}: dx (seed={gen.initial_seed()})"
    # The range gradient is a sum whose clipped parts cancel (PACT: + above, - below), so the
    # quantizer's float32 autograd sum is only good to float32 summation error. The kernel's
    # float64 sums must equal the same exact terms summed in float64 ...
    terms = range_grad_terms(mode, x, g, s, spec.qmax, alpha)
    got = sums[1] if mode == "pact" else sums[0]
    assert abs(got.item() - terms.sum().item()) <= 1e-12 * terms.abs().sum().item(), (mode, isa)
    # ... and the quantizer's own float32 autograd within the error bound of a float32 sum
    factor = abs(dp(torch.ones(2, dtype=torch.float64)).item())
    bound = float32_sum_error_bound(terms) * factor
    assert abs(dp(sums).item() - p.grad.item()) <= bound, (mode, isa, dp(sums).item(), p.grad.item(), bound)


def test_errors():
    with pytest.raises(TypeError, match="float32 CPU tensor"):
        ste_codes(torch.ones(3, dtype=torch.float64), 0.1, 127)
    with pytest.raises(ValueError, match="mode must be one of"):
        ste_backward(torch.ones(3), torch.ones(3), 0.1, 127, "adaround")
    with pytest.raises(ValueError, match="g must have x's shape"):
        ste_backward(torch.ones(3), torch.ones(4), 0.1, 127, "lsq")
    with pytest.raises(RuntimeError, match="positive finite"):
        ste_codes(torch.ones(3), 0.0, 127)
