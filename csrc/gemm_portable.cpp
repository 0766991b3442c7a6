// Plain C++ int8 GEMM (any CPU): forced with RETQUANT_CPU_ISA=portable, and the path of CPUs
// without AVX2. Register-blocked like the SIMD paths: a 4 x 16 tile of int32 accumulators per
// pass over the reduction, so each B entry loaded is used four times and each A entry sixteen
// times (the unblocked row-by-row loop re-read B for every row: 78% of the portable kernel's time).
#include "gemm.h"

namespace retquant {
namespace {

// Columns [n0, n0 + 16) of rows [m0, m0 + 4) over reductions [0, r_end). The products of a
// row with one column's 4 reduction entries are formed in int16-range values (|code| <= 127)
// and summed in int32, a shape GCC vectorizes at the baseline ISA (pmaddwd).
void tile(const GemmArgs& g, int m0, int n0, int r_end) {
  int32_t acc[4][16] = {};
  for (int r4 = 0; r4 < r_end; r4 += 4) {
    const int8_t* b = g.b + static_cast<int64_t>(r4 / 4) * g.ldb * 4 + n0 * 4;
    for (int i = 0; i < 4; ++i) {
      const uint8_t* a = a_at(g, m0 + i, r4);
      const int a0 = a[0] - 128, a1 = a[1] - 128, a2 = a[2] - 128, a3 = a[3] - 128;
      for (int n = 0; n < 16; ++n)
        acc[i][n] += a0 * b[4 * n] + a1 * b[4 * n + 1] + a2 * b[4 * n + 2] + a3 * b[4 * n + 3];
    }
  }
  for (int i = 0; i < 4; ++i)
    for (int n = 0; n < 16; ++n) g.c[static_cast<int64_t>(m0 + i) * g.ldc + n0 + n] = acc[i][n];
}

}  // namespace

void gemm_portable(const GemmArgs& g) {
  const int m4 = round_up(g.m, 4), n16 = round_up(g.n, 16);
  for (int m0 = 0; m0 < m4; m0 += 4) {
    const int n_end = causal_col_end(g, m0, n16);
    const int r_end = causal_red_end(g, m0);
    for (int n0 = 0; n0 < n_end; n0 += 16) tile(g, m0, n0, r_end);
  }
}

}  // namespace retquant
