// Float chunkwise retention forward: CPUID and the (sequence, head) grid over torch's threads.
// The per-task body is float_chunk_body.h, compiled for the baseline ISA, AVX2 + FMA and AVX-512F.
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include "float_chunk.h"
#include "parallel_tasks.h"

namespace retquant {

bool cpu_has_avx2_fma() {
  __builtin_cpu_init();  // libgcc reports AVX features only when the OS saves the ymm/zmm state
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

bool cpu_has_avx512f() { return cpu_has_avx2_fma() && __builtin_cpu_supports("avx512f"); }

int float_chunk_best_isa() {
  return cpu_has_avx512f() ? kFloatIsaAvx512 : cpu_has_avx2_fma() ? kFloatIsaAvx2 : kFloatIsaPortable;
}

void float_chunk_cpu(const FloatChunkParams& p) {
  TORCH_CHECK(p.isa >= kFloatIsaPortable && p.isa <= kFloatIsaAvx512,
              "isa must be 0 (portable), 1 (avx2) or 2 (avx512), got ", p.isa);
  TORCH_CHECK(p.isa <= float_chunk_best_isa(), "isa=", p.isa,
              p.isa == kFloatIsaAvx512 ? " (avx512): this CPU has no AVX-512F"
                                       : " (avx2): this CPU has no AVX2 + FMA");
  // Heads per task: as many as keep their states within kStateBudget (so the states stay in a
  // core's L2 while the task walks its heads chunk by chunk), fewer where that leaves less than
  // two tasks per thread (load balance).
  constexpr int64_t kStateBudget = 256 * 1024;
  FloatChunkParams q = p;
  const int64_t state_bytes = static_cast<int64_t>(p.K) * ((p.V + 15) / 16 * 16) * 4;
  int64_t G = kStateBudget / state_bytes;
  G = G < 1 ? 1 : (G > p.H ? p.H : G);
  const int64_t want = 2 * static_cast<int64_t>(at::get_num_threads());
  while (G > 1 && p.N * ((p.H + G - 1) / G) < want) G = (G + 1) / 2;
  q.heads_per_task = static_cast<int>(G);
  const int64_t tasks = p.N * ((p.H + G - 1) / G);
  run_task_grid(tasks, "float chunk", [&q](int64_t begin, int64_t end) {
    switch (q.isa) {
      case kFloatIsaAvx512: return float_chunk_tasks_avx512(q, begin, end);
      case kFloatIsaAvx2: return float_chunk_tasks_avx2(q, begin, end);
      default: return float_chunk_tasks_portable(q, begin, end);
    }
  });
}

}  // namespace retquant
