// The chunk kernel body compiled for AVX-512 (quantization and epilogues vectorize 16-wide), with
// the VNNI integer GEMM. Called only when CPUID reports AVX-512 VNNI. All headers that define
// inline code shared with other files are included before the target pragma.
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "chunk_retention.h"
#include "gemm.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,bmi2")
#define RQ_BODY_NS avx512
#define RQ_GEMM gemm_vnni
#define RQ_STAGES "chunk_stages_avx512.h"
#include "chunk_body.h"
#pragma GCC pop_options

namespace retquant {
int chunk_tasks_avx512(const ChunkParams& p, int64_t begin, int64_t end) {
  return avx512::run_tasks(p, begin, end);
}
}  // namespace retquant
