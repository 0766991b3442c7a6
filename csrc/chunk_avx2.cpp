// The chunk kernel body compiled for AVX2 + FMA (quantization and epilogues 8-wide,
// chunk_stages_avx2.h), with the sign-trick int8 GEMM (gemm_avx2.cpp). Called only when CPUID
// reports AVX2 and FMA. All headers that define inline code shared with other files are included
// before the target pragma; -ffp-contract=off keeps FMA from fusing the spec's multiply-adds.
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "chunk_retention.h"
#include "gemm.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma,bmi2")
#define RQ_BODY_NS avx2
#define RQ_GEMM gemm_avx2
#define RQ_STAGES "chunk_stages_avx2.h"
#include "chunk_body.h"
#pragma GCC pop_options

namespace retquant {
int chunk_tasks_avx2(const ChunkParams& p, int64_t begin, int64_t end) {
  return avx2::run_tasks(p, begin, end);
}
}  // namespace retquant
