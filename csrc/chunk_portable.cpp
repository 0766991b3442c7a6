// The chunk kernel body for the baseline ISA: plain C++ (chunk_stages_portable.h), any CPU.

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "chunk_retention.h"
#include "gemm.h"

#define RQ_BODY_NS portable
#define RQ_GEMM gemm_portable
#define RQ_STAGES "chunk_stages_portable.h"
#include "chunk_body.h"

namespace retquant {
int chunk_tasks_portable(const ChunkParams& p, int64_t begin, int64_t end) {
  return portable::run_tasks(p, begin, end);
}
}  // namespace retquant
