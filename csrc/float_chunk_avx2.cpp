// The float chunk kernel body for AVX2 + FMA (two ymm registers per 16-lane row of a tile).
// Called only when CPUID reports AVX2 and FMA. All headers that define inline code shared with
// other files are included before the target pragma.
#include <immintrin.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "chunk_retention.h"
#include "float_chunk.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define RQ_FLOAT_NS float_avx2
#define RQ_FLOAT_VEC "float_vec_avx2.h"
#include "float_chunk_body.h"
#pragma GCC pop_options

namespace retquant {
int float_chunk_tasks_avx2(const FloatChunkParams& p, int64_t begin, int64_t end) {
  return float_avx2::run_tasks(p, begin, end);
}
}  // namespace retquant
