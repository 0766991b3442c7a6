// recurrent_body.h compiled for AVX-512 (16-wide state update and requantization).
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "chunk_retention.h"
#include "gemm.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")
#define RQ_BODY_NS rec_avx512
#define RQ_STAGES "recurrent_stages_avx512.h"
#include "recurrent_body.h"
#pragma GCC pop_options

namespace retquant {
int recurrent_tasks_avx512(const RecurrentParams& p, int64_t begin, int64_t end) {
  return rec_avx512::run_tasks(p, begin, end);
}
}  // namespace retquant
