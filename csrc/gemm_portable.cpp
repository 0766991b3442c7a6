// Plain C++ int8 GEMM (any CPU): the reference path, forced with RETQUANT_CPU_ISA=portable.
#include "gemm.h"

namespace retquant {

void gemm_portable(const GemmArgs& g) {
  const int m4 = round_up(g.m, 4), n16 = round_up(g.n, 16);
  for (int m0 = 0; m0 < m4; m0 += 4) {
    const int n_end = g.causal_cols ? (round_up(m0 + 4, 16) < n16 ? round_up(m0 + 4, 16) : n16) : n16;
    const int r_end = g.causal_red ? (m0 + 4 < g.r ? m0 + 4 : g.r) : g.r;
    for (int i = 0; i < 4; ++i) {
      int32_t* c = g.c + (m0 + i) * g.ldc;
      for (int n = 0; n < n_end; ++n) c[n] = 0;
      for (int r4 = 0; r4 < r_end; r4 += 4) {
        const int8_t* b = g.b + (r4 / 4) * g.ldb * 4;
        const uint8_t* a = a_at(g, m0 + i, r4);
        const int a0 = a[0] - 128, a1 = a[1] - 128, a2 = a[2] - 128, a3 = a[3] - 128;
        for (int n = 0; n < n_end; ++n) {
          const int8_t* bn = b + 4 * n;
          c[n] += a0 * bn[0] + a1 * bn[1] + a2 * bn[2] + a3 * bn[3];
        }
      }
    }
  }
}

}  // namespace retquant
