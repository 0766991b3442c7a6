// Fused per-tensor STE quantize / backward (ste_tensor.h): parallel over element blocks, the
// loops of ste_tensor_body.h at the baseline ISA or with AVX2 (CPUID).
#include "ste_tensor.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <vector>

#include "cpu_isa.h"

#define ST_NS st_base
#include "ste_tensor_body.h"
#undef ST_NS

#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define ST_NS st_avx2
#include "ste_tensor_body.h"
#undef ST_NS
#pragma GCC pop_options

namespace retquant {
namespace {

constexpr int64_t kGrain = 1 << 15;  // elements per task

void check_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous(), name,
              " must be a contiguous float32 CPU tensor");
}

void check_scale(double s, int64_t qmax) {
  TORCH_CHECK(std::isfinite(s) && s > 0, "s must be a positive finite float32 scale, got ", s);
  TORCH_CHECK(qmax >= 1 && qmax <= 127, "qmax must be in [1, 127], got ", qmax);
}


}  // namespace

std::tuple<at::Tensor, int64_t> ste_tensor_codes(const at::Tensor& x, double s, int64_t qmax,
                                                 int64_t isa) {
  check_isa(isa, "ste_tensor_codes");
  check_float(x, "x");
  check_scale(s, qmax);
  at::Tensor codes = at::empty(x.sizes(), x.options().dtype(at::kChar));
  const float* xp = x.data_ptr<float>();
  int8_t* cp = codes.data_ptr<int8_t>();
  const float sf = static_cast<float>(s), q = static_cast<float>(qmax);
  const bool v = isa >= kIsaAvx2;  // the AVX-512 path has no copy of its own: AVX2 serves
  std::atomic<int> bad{0};
  at::parallel_for(0, x.numel(), kGrain, [&](int64_t b, int64_t e) {
    bad.fetch_or(v ? st_avx2::codes_of(xp + b, e - b, sf, q, cp + b)
                   : st_base::codes_of(xp + b, e - b, sf, q, cp + b));
  });
  return {codes, bad.load()};
}

std::tuple<at::Tensor, at::Tensor> ste_tensor_backward(const at::Tensor& x, const at::Tensor& g,
                                                        double s, int64_t qmax, double alpha,
                                                        int64_t mode, int64_t isa) {
  check_isa(isa, "ste_tensor_backward");
  check_float(x, "x");
  check_float(g, "g");
  check_scale(s, qmax);
  TORCH_CHECK(x.sizes() == g.sizes(), "g must have x's shape");
  TORCH_CHECK(mode == kSteLsq || mode == kSteTqt || mode == kStePact, "unknown mode ", mode);
  at::Tensor dx = at::empty(x.sizes(), x.options());
  const int64_t n = x.numel();
  const int64_t tasks = n == 0 ? 0 : (n + kGrain - 1) / kGrain;
  // one slot per fixed block, summed in block order: the result does not depend on threads
  std::vector<double> part(static_cast<size_t>(2 * tasks), 0.0);
  const float* xp = x.data_ptr<float>();
  const float* gp = g.data_ptr<float>();
  float* dp = dx.data_ptr<float>();
  const float sf = static_cast<float>(s), q = static_cast<float>(qmax), a = static_cast<float>(alpha);
  const bool v = isa >= kIsaAvx2;  // the AVX-512 path has no copy of its own: AVX2 serves
  at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t * kGrain, e = std::min(n, b + kGrain);
      double* sums = part.data() + 2 * t;
      if (v) {
        st_avx2::backward(xp + b, gp + b, e - b, sf, q, a, static_cast<int>(mode), dp + b, sums);
      } else {
        st_base::backward(xp + b, gp + b, e - b, sf, q, a, static_cast<int>(mode), dp + b, sums);
      }
    }
  });
  at::Tensor sums = at::zeros({2}, x.options().dtype(at::kDouble));
  double* sp = sums.data_ptr<double>();
  for (int64_t t = 0; t < tasks; ++t) {
    sp[0] += part[2 * t];
    sp[1] += part[2 * t + 1];
  }
  return {dx, sums};
}

TORCH_LIBRARY_FRAGMENT(retquant, m) {
  m.def("ste_tensor_codes(Tensor x, float s, int qmax, int isa) -> (Tensor, int)");
  m.def(
      "ste_tensor_backward(Tensor x, Tensor g, float s, int qmax, float alpha, int mode, int isa) -> "
      "(Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(retquant, CPU, m) {
  m.impl("ste_tensor_codes", &ste_tensor_codes);
  m.impl("ste_tensor_backward", &ste_tensor_backward);
}

}  // namespace retquant
