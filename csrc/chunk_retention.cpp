// Quantized chunkwise retention forward: the (sequence, head) grid split over torch's threads.
// The per-task body is chunk_body.h, compiled once per ISA of cpu_isa.h (chunk_portable.cpp,
// chunk_avx2.cpp, chunk_avx512.cpp); p.isa picks the copy.
#include <ATen/Parallel.h>

#include "chunk_retention.h"
#include "cpu_isa.h"
#include "parallel_tasks.h"

namespace retquant {

int chunk_tasks_portable(const ChunkParams& p, int64_t begin, int64_t end);
int chunk_tasks_avx2(const ChunkParams& p, int64_t begin, int64_t end);
int chunk_tasks_avx512(const ChunkParams& p, int64_t begin, int64_t end);

int chunk_retention_cpu(const ChunkParams& params) {
  // Group heads so that there are at least two tasks per thread (load balance) and otherwise
  // as many heads per task as possible (contiguous loads of each token's rows).
  ChunkParams p = params;
  const int64_t want = 2 * static_cast<int64_t>(at::get_num_threads());
  int64_t groups = (want + p.N - 1) / p.N;
  groups = groups < 1 ? 1 : (groups > p.H ? p.H : groups);
  p.heads_per_task = static_cast<int>((p.H + groups - 1) / groups);
  groups = (p.H + p.heads_per_task - 1) / p.heads_per_task;
  auto* tasks = p.isa == kIsaAvx512 ? chunk_tasks_avx512
                : (p.isa == kIsaAvx2 ? chunk_tasks_avx2 : chunk_tasks_portable);
  return run_task_grid(p.N * groups, "chunk", [&p, tasks](int64_t begin, int64_t end) {
    return tasks(p, begin, end);
  });
}

}  // namespace retquant
