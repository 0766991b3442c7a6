// The int8 linear layer's task loop (int8_linear_body.h) for the baseline ISA, with the plain
// C++ GEMM (gemm_portable.cpp, biased A): any CPU, and RETQUANT_CPU_ISA=portable.
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "gemm.h"
#include "int8_linear.h"

#define LIN_NS lin_portable
#define LIN_GEMM gemm_portable
#define LIN_SIGNED_A 0
#include "int8_linear_body.h"

namespace retquant {
int linear_rows_portable(const LinearArgs& p, int64_t m0, int64_t m1, int n0, int n1) {
  return lin_portable::linear_rows(p, m0, m1, n0, n1);
}
}  // namespace retquant
