// Fused per-tensor fake quantization for the learnable activation quantizers of QuantLinear
// (PACT, LSQ, TQT with one scale for the whole tensor): the codes in one pass, and the
// straight-through backward (the input's gradient and the two sums the range gradients are made
// of) in one pass, instead of a dozen elementwise torch ops each.
#pragma once

#include <ATen/ATen.h>

namespace retquant {

// Modes of ste_tensor_backward: which elements count as inside the quantizer's range.
constexpr int64_t kSteLsq = 0;   // -qmax <= x / s <= qmax
constexpr int64_t kSteTqt = 1;   // -qmax <= round(x / s) <= qmax
constexpr int64_t kStePact = 2;  // -alpha <= x <= alpha

// `isa`: a code of cpu_isa.h (the AVX2 loops serve AVX-512 too).
// (codes int8 = round_half_even(clamp(x / s, -qmax, qmax)), 1 if any x is inf/NaN else 0);
// x float32 contiguous.
std::tuple<at::Tensor, int64_t> ste_tensor_codes(const at::Tensor& x, double s, int64_t qmax,
                                                 int64_t isa);

// (dx = g inside else 0, sums float64 [2]): sums[0] = sum g * (inside ? round(t) - t : +-qmax),
// sums[1] = sum g * (above ? 1 : below ? -1 : 0), t = x / s.
std::tuple<at::Tensor, at::Tensor> ste_tensor_backward(const at::Tensor& x, const at::Tensor& g,
                                                        double s, int64_t qmax, double alpha,
                                                        int64_t mode, int64_t isa);

}  // namespace retquant
