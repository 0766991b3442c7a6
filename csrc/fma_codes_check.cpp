// retquant::fma_codes_mismatches: the exhaustive check behind codes8_fma (quant_avx2.h), the
// decode kernel's division-free codes. For every significand of the scale s in one binade
// [2^e, 2^(e+1)) and every half-integer h with |h| <= 127.5, the floats x within `window` ulps of
// fl(h s) (where the FMA form and the spec's rne(fl(x / s)) could only differ, see codes8_fma),
// plus a few random x per scale, it counts the lanes where the two codes differ. Zero for the
// binades the kernel uses the form in (s >= kFmaCodesMinScale); tests/test_fma_codes.py runs it.
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/library.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "cpu_isa.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace retquant {
namespace fma_check {

#include "quant.h"
#include "quant_avx2.h"

// Finite lanes of x where codes8_fma differs from the spec's code (a true division, rne); in the
// top binade h s can overflow to inf, which is no input of the kernel.
static inline int64_t mismatches8(__m256 x, __m256 s, __m256 r) {
  const __m256 spec = rint8(_mm256_div_ps(x, s));
  const __m256 finite = _mm256_cmp_ps(abs8(x), _mm256_set1_ps(__builtin_inff()), _CMP_LT_OQ);
  const __m256 differ = _mm256_cmp_ps(spec, codes8_fma(x, s, r), _CMP_NEQ_UQ);
  return __builtin_popcount(_mm256_movemask_ps(_mm256_and_ps(finite, differ)));
}

// Significands 8 first to 8 last (the low 23 bits of s; the binade's exponent bits in `high`).
static int64_t check_range(uint32_t high, int64_t first, int64_t last, int window) {
  int64_t bad = 0;
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int64_t m = 8 * first; m < 8 * last; m += 8) {
    const __m256 s = _mm256_castsi256_ps(
        _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(high + m)), lane));
    const __m256 r = _mm256_div_ps(_mm256_set1_ps(1.f), s);
    for (int j = -128; j < 128; ++j) {
      const __m256i x0 = _mm256_castps_si256(_mm256_mul_ps(_mm256_set1_ps(j + 0.5f), s));
      for (int k = -window; k <= window; ++k)
        bad += mismatches8(_mm256_castsi256_ps(_mm256_add_epi32(x0, _mm256_set1_epi32(k))), s, r);
    }
    // a few x uniform in [-128 s, 128 s] (xorshift, seeded by the significand)
    uint64_t st = static_cast<uint64_t>(m) * 0x9E3779B97F4A7C15ull + 1;
    for (int i = 0; i < 4; ++i) {
      alignas(32) float u[8];
      for (float& x : u) {
        st ^= st << 13;
        st ^= st >> 7;
        st ^= st << 17;
        x = static_cast<float>((static_cast<double>(st >> 11) * 0x1p-53 * 2 - 1) * 128);
      }
      bad += mismatches8(_mm256_mul_ps(_mm256_load_ps(u), s), s, r);
    }
  }
  return bad;
}

}  // namespace fma_check
}  // namespace retquant
#pragma GCC pop_options

namespace retquant {
namespace {

int64_t fma_codes_mismatches(int64_t exponent, int64_t window) {
  check_isa(kIsaAvx2, "fma_codes_mismatches");
  TORCH_CHECK(exponent >= -126 && exponent <= 126, "fma_codes_mismatches: exponent must be in ",
              "[-126, 126] (a normal binade of the scale), got ", exponent);
  TORCH_CHECK(window >= 0 && window <= 64, "fma_codes_mismatches: window must be in [0, 64], got ",
              window);
  const uint32_t high = static_cast<uint32_t>(127 + exponent) << 23;
  std::atomic<int64_t> bad{0};
  at::parallel_for(0, int64_t{1} << 20, int64_t{1} << 13, [&](int64_t begin, int64_t end) {
    bad += fma_check::check_range(high, begin, end, static_cast<int>(window));
  });
  return bad.load();
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(retquant, m) {
  m.def("fma_codes_mismatches(int exponent, int window) -> int", &fma_codes_mismatches);
}

}  // namespace retquant
