// The float chunk kernel body for AVX-512F (one zmm register per 16-lane row of a tile): the
// AVX2 body's code with 512-bit vectors (float_vec_avx512.h). Called only when CPUID reports
// AVX-512F. All headers that define inline code shared with other files are included before the
// target pragma.
#include <immintrin.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "chunk_retention.h"
#include "float_chunk.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
#define RQ_FLOAT_NS float_avx512
#define RQ_FLOAT_VEC "float_vec_avx512.h"
#include "float_chunk_body.h"
#pragma GCC pop_options

namespace retquant {
int float_chunk_tasks_avx512(const FloatChunkParams& p, int64_t begin, int64_t end) {
  return float_avx512::run_tasks(p, begin, end);
}
}  // namespace retquant
