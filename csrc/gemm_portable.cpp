// Plain C++ int8 GEMM (any CPU): forced with RETQUANT_CPU_ISA=portable, and the path of CPUs
// without AVX2. Written for what GCC vectorizes at the baseline ISA (SSE2): the codes are
// widened once per call to int16 (A row-major, each block of 16 B columns column-major), so
// every output is a dot product of two contiguous int16 rows, which GCC turns into pmaddwd;
// four rows share each B column load. 3.7x the row-by-row loop on packed bytes, which GCC
// could not vectorize (that loop was 78% of the portable kernel's time).
#include <c10/util/Exception.h>

#include <cstdlib>

#include "gemm.h"

namespace retquant {
namespace {

// A per-thread buffer that grows to the largest size asked for (no allocation per call).
struct Int16Buffer {
  int16_t* p = nullptr;
  size_t n = 0;
  ~Int16Buffer() { std::free(p); }
  int16_t* get(size_t want) {
    if (want > n) {
      std::free(p);
      p = static_cast<int16_t*>(std::malloc(want * sizeof(int16_t)));
      n = p != nullptr ? want : 0;
    }
    return p;
  }
};

}  // namespace

void gemm_portable(const GemmArgs& g) {
  const int m4 = round_up(g.m, 4), n16 = round_up(g.n, 16), R = g.r;
  thread_local Int16Buffer a_buf, b_buf;
  int16_t* a16 = a_buf.get(static_cast<size_t>(m4) * R);  // [m4][R] codes
  int16_t* b16 = b_buf.get(static_cast<size_t>(16) * R);  // [16][R] one block of B columns
  TORCH_CHECK(a16 != nullptr && b16 != nullptr, "retquant portable GEMM: out of memory");
  for (int m = 0; m < m4; ++m)
    for (int r4 = 0; r4 < R; r4 += 4) {
      const uint8_t* a = a_at(g, m, r4);
      for (int j = 0; j < 4; ++j) a16[static_cast<int64_t>(m) * R + r4 + j] = static_cast<int16_t>(a[j] - 128);
    }
  for (int n0 = 0; n0 < n16; n0 += 16) {
    for (int r4 = 0; r4 < R; r4 += 4) {
      const int8_t* b = g.b + static_cast<int64_t>(r4 / 4) * g.ldb * 4 + n0 * 4;
      for (int n = 0; n < 16; ++n)
        for (int j = 0; j < 4; ++j) b16[n * R + r4 + j] = b[4 * n + j];
    }
    for (int m0 = 0; m0 < m4; m0 += 4) {
      if (n0 >= causal_col_end(g, m0, n16)) continue;  // the shortcuts of every ISA's GEMM
      const int r_end = causal_red_end(g, m0);
      const int16_t* a0 = a16 + static_cast<int64_t>(m0) * R;
      const int16_t *a1 = a0 + R, *a2 = a1 + R, *a3 = a2 + R;
      int32_t* c = g.c + static_cast<int64_t>(m0) * g.ldc + n0;
      for (int n = 0; n < 16; ++n) {
        const int16_t* b = b16 + n * R;
        int32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        for (int r = 0; r < r_end; ++r) {
          s0 += a0[r] * b[r];
          s1 += a1[r] * b[r];
          s2 += a2[r] * b[r];
          s3 += a3[r] * b[r];
        }
        c[n] = s0;
        c[g.ldc + n] = s1;
        c[2 * g.ldc + n] = s2;
        c[3 * g.ldc + n] = s3;
      }
    }
  }
}

}  // namespace retquant
