// The float chunk kernel body for the baseline ISA: plain C++ 16-lane loops the compiler
// vectorizes (float_vec_portable.h), any CPU.
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "chunk_retention.h"
#include "float_chunk.h"

#define RQ_FLOAT_NS float_portable
#define RQ_FLOAT_VEC "float_vec_portable.h"
#include "float_chunk_body.h"

namespace retquant {
int float_chunk_tasks_portable(const FloatChunkParams& p, int64_t begin, int64_t end) {
  return float_portable::run_tasks(p, begin, end);
}
}  // namespace retquant
