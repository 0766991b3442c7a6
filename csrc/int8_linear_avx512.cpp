// The int8 linear layer's task loop (int8_linear_body.h) compiled for AVX-512 (copy, code check
// and epilogue 16-wide), with the VNNI GEMM (gemm_vnni.cpp: biased A, column-sum correction).
// Called only when CPUID reports AVX-512 VNNI.
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "gemm.h"
#include "int8_linear.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma")
#define LIN_NS lin_avx512
#define LIN_GEMM gemm_vnni
#define LIN_SIGNED_A 0
#include "int8_linear_body.h"
#pragma GCC pop_options

namespace retquant {
int linear_rows_avx512(const LinearArgs& p, int64_t m0, int64_t m1, int n0, int n1) {
  return lin_avx512::linear_rows(p, m0, m1, n0, n1);
}
}  // namespace retquant
