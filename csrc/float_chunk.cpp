// Float chunkwise retention forward: CPUID and the (sequence, head) grid over torch's threads.
// The per-task body is float_chunk_body.h, compiled for the baseline ISA, AVX2 + FMA and AVX-512F.
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
  // One task per (sequence, head): its state stays in one core's cache for the whole sequence.
  run_task_grid(p.N * p.H, "float chunk", [&p](int64_t begin, int64_t end) {
    switch (p.isa) {
      case kFloatIsaAvx512: return float_chunk_tasks_avx512(p, begin, end);
      case kFloatIsaAvx2: return float_chunk_tasks_avx2(p, begin, end);
      default: return float_chunk_tasks_portable(p, begin, end);
    }
  });
}

}  // namespace retquant
