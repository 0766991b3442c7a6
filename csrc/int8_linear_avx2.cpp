// The int8 linear layer's task loop (int8_linear_body.h) compiled for AVX2 (copy, code check and
// epilogue 8-wide), with the sign-trick GEMM reading the codes themselves (gemm_avx2.cpp,
// a_signed). Called only when CPUID reports AVX2 and FMA; -ffp-contract=off keeps the epilogue's
// multiply and add apart, as the reference computes them.
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "gemm.h"
#include "int8_linear.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define LIN_NS lin_avx2
#define LIN_GEMM gemm_avx2
#define LIN_SIGNED_A 1
#include "int8_linear_body.h"
#pragma GCC pop_options

namespace retquant {
int linear_rows_avx2(const LinearArgs& p, int64_t m0, int64_t m1, int n0, int n1) {
  return lin_avx2::linear_rows(p, m0, m1, n0, n1);
}
}  // namespace retquant
