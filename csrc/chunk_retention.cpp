// Quantized chunkwise retention forward: the (sequence, head) grid split over torch's threads.
// The per-task body is chunk_body.h, compiled for the baseline ISA and for AVX-512.
#include <ATen/Parallel.h>

#include "chunk_retention.h"
#include "parallel_tasks.h"

namespace retquant {

int chunk_tasks_portable(const ChunkParams& p, int64_t begin, int64_t end);
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
  return run_task_grid(p.N * groups, "chunk", [&p](int64_t begin, int64_t end) {
    return p.use_vnni ? chunk_tasks_avx512(p, begin, end) : chunk_tasks_portable(p, begin, end);
  });
}

}  // namespace retquant
