// CPUID checks of cpu_isa.h. Compiled for the baseline ISA: it runs before any dispatch.
#include "cpu_isa.h"

#include "gemm.h"

#include <c10/util/Exception.h>

namespace retquant {

bool cpu_has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

bool cpu_has_avx512_vnni() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
}

bool cpu_supports_isa(int64_t isa) {
  switch (isa) {
    case kIsaPortable: return true;
    case kIsaAvx2: return cpu_has_avx2();
    case kIsaAvx512: return cpu_has_avx512_vnni();
    default: return false;
  }
}

const char* isa_name(int64_t isa) {
  switch (isa) {
    case kIsaPortable: return "portable";
    case kIsaAvx2: return "avx2";
    case kIsaAvx512: return "avx512";
    default: return "unknown";
  }
}

void check_isa(int64_t isa, const char* what) {
  TORCH_CHECK(isa >= 0 && isa < kIsaCount, what, ": isa must be 0 (portable), 1 (avx2) or ",
              "2 (avx512), got ", isa);
  TORCH_CHECK(cpu_supports_isa(isa), what, ": this CPU cannot run the ", isa_name(isa),
              " kernels (",
              isa == kIsaAvx2 ? "needs AVX2 and FMA" : "needs AVX-512 F/BW/VL and VNNI", ")");
}

GemmFn gemm_for_isa(int64_t isa) {
  return isa == kIsaAvx512 ? gemm_vnni : (isa == kIsaAvx2 ? gemm_avx2 : gemm_portable);
}

}  // namespace retquant
