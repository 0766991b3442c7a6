// Quantized chunkwise retention forward: the (sequence, head) grid split over torch's threads.
// The per-task body is chunk_body.h, compiled for the baseline ISA and for AVX-512.
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <atomic>

#include "chunk_retention.h"

namespace retquant {

bool chunk_tasks_portable(const ChunkParams& p, int64_t begin, int64_t end);
bool chunk_tasks_avx512(const ChunkParams& p, int64_t begin, int64_t end);

void chunk_retention_cpu(const ChunkParams& p) {
  std::atomic<bool> ok{true};
  at::parallel_for(0, p.N * p.H, 1, [&](int64_t begin, int64_t end) {
    const bool r = p.use_vnni ? chunk_tasks_avx512(p, begin, end)
                              : chunk_tasks_portable(p, begin, end);
    if (!r) ok = false;
  });
  TORCH_CHECK(ok.load(), "retquant chunk kernel: out of memory for its scratch buffers");
}

}  // namespace retquant
