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
#pragma GCC pop_options

namespace retquant {
int recurrent_tasks_avx2(const RecurrentParams& p, int64_t begin, int64_t end) {
  return rec_avx2::run_tasks(p, begin, end);
}
}  // namespace retquant
