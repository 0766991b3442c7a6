// recurrent_body.h compiled for AVX2 + FMA (8-wide state update, requantization and q . S,
// interleaved per block of columns: recurrent_stages_avx2.h). Called only when CPUID has AVX2.
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "chunk_retention.h"
#include "gemm.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define RQ_BODY_NS rec_avx2
#define RQ_STAGES "recurrent_stages_avx2.h"
#include "recurrent_body.h"

namespace retquant {
// max_abs_bits_portable (token_check.h) 8 lanes at a time, four vectors per step.
uint32_t max_abs_bits_avx2(const float* x, int64_t n) {
  __m256i m[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(),
                  _mm256_setzero_si256()};
  int64_t i = 0;
  for (; i + 32 <= n; i += 32)
    for (int j = 0; j < 4; ++j) m[j] = rec_avx2::max_abs_bits8(m[j], _mm256_loadu_ps(x + i + 8 * j));
  for (; i < n; i += 8) {
    const int left = n - i < 8 ? static_cast<int>(n - i) : 8;
    m[0] = rec_avx2::max_abs_bits8(m[0], rec_avx2::load8(x + i, left));  // lanes past n read 0
  }
  return rec_avx2::hmax_u32(_mm256_max_epu32(_mm256_max_epu32(m[0], m[1]), _mm256_max_epu32(m[2], m[3])));
}
}  // namespace retquant
#pragma GCC pop_options

namespace retquant {
int recurrent_tasks_avx2(const RecurrentParams& p, int64_t begin, int64_t end) {
  return rec_avx2::run_tasks(p, begin, end);
}
}  // namespace retquant
