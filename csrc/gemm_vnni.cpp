// AVX-512 VNNI int8 GEMM (vpdpbusd, u8 x s8 -> s32 with the +128 / column-sum correction).
// Only this file's functions carry the AVX-512 target attribute; the rest of the extension is
// built for the baseline ISA, and this path is chosen at run time through CPUID (cpu_isa.h).
#include <immintrin.h>

#include "gemm.h"

#define RQ_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

namespace retquant {

namespace {

// 4 rows x NB*16 columns over reductions [0, r_end), minus 128 * corr (the column sums of B over
// that range). Accumulators are named variables, not an array: GCC kept an array's elements
// shuffling between registers and the stack around every vpdpbusd (GEMM stage 1.1-1.5 TOP/s on
// two cores, 1.7-1.9 with named ones; the measured vpdpbusd peak is 1.85).
template <int NB>
RQ_VNNI inline void tile(const GemmArgs& g, int m0, int n0, int r_end, const int32_t* corr) {
  const __m512i z = _mm512_setzero_si512();
  __m512i c00 = z, c01 = z, c02 = z, c03 = z, c10 = z, c11 = z, c12 = z, c13 = z;
  __m512i c20 = z, c21 = z, c22 = z, c23 = z, c30 = z, c31 = z, c32 = z, c33 = z;
  const int8_t* b = g.b + n0 * 4;
  const int64_t b_step = static_cast<int64_t>(g.ldb) * 4;
  const uint8_t* a0 = a_at(g, m0, 0);
  const int64_t a_row = g.a_packed ? 4 : g.lda;  // A(m0 + i, r4..) = a0 + i * a_row
  const int64_t a_step = g.a_packed ? static_cast<int64_t>(g.lda) * 4 : 4;
  for (int r4 = 0; r4 < r_end; r4 += 4, b += b_step, a0 += a_step) {
    const __m512i b0 = _mm512_loadu_si512(b);
    const __m512i b1 = NB > 1 ? _mm512_loadu_si512(b + 64) : z;
    const __m512i b2 = NB > 2 ? _mm512_loadu_si512(b + 128) : z;
    const __m512i b3 = NB > 3 ? _mm512_loadu_si512(b + 192) : z;
#define RQ_ROW(i, c0, c1, c2, c3)                                 \
  {                                                               \
    int32_t w;                                                    \
    __builtin_memcpy(&w, a0 + (i) * a_row, 4);                    \
    const __m512i av = _mm512_set1_epi32(w);                      \
    c0 = _mm512_dpbusd_epi32(c0, av, b0);                         \
    if (NB > 1) c1 = _mm512_dpbusd_epi32(c1, av, b1);             \
    if (NB > 2) c2 = _mm512_dpbusd_epi32(c2, av, b2);             \
    if (NB > 3) c3 = _mm512_dpbusd_epi32(c3, av, b3);             \
  }
    RQ_ROW(0, c00, c01, c02, c03)
    RQ_ROW(1, c10, c11, c12, c13)
    RQ_ROW(2, c20, c21, c22, c23)
    RQ_ROW(3, c30, c31, c32, c33)
#undef RQ_ROW
  }
  const __m512i acc[4][4] = {{c00, c01, c02, c03}, {c10, c11, c12, c13},
                             {c20, c21, c22, c23}, {c30, c31, c32, c33}};
  for (int j = 0; j < NB; ++j) {
    const __m512i k = _mm512_slli_epi32(_mm512_loadu_si512(corr + n0 + 16 * j), 7);
    for (int i = 0; i < 4; ++i)
      _mm512_storeu_si512(g.c + (m0 + i) * g.ldc + n0 + 16 * j, _mm512_sub_epi32(acc[i][j], k));
  }
}

}  // namespace

RQ_VNNI void gemm_vnni(const GemmArgs& g) {
  const int m4 = round_up(g.m, 4), n16 = round_up(g.n, 16);
  for (int m0 = 0; m0 < m4; m0 += 4) {
    const int n_end = causal_col_end(g, m0, n16);
    const int r_end = causal_red_end(g, m0);
    const int32_t* corr = r_end < g.r ? g.colsum_prefix + (r_end / 4) * g.ldb : g.colsum;
    int n0 = 0;
    for (; n0 + 64 <= n_end; n0 += 64) tile<4>(g, m0, n0, r_end, corr);
    switch ((n_end - n0) / 16) {
      case 3: tile<3>(g, m0, n0, r_end, corr); break;
      case 2: tile<2>(g, m0, n0, r_end, corr); break;
      case 1: tile<1>(g, m0, n0, r_end, corr); break;
      default: break;
    }
  }
}

// The peak probe (gemm_bench.cpp): vpdpbusd on registers only, 12 independent accumulators.
RQ_VNNI int64_t int8_peak_vnni(int64_t iters) {
  __m512i a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(-5);
  __m512i c[12];
  for (int j = 0; j < 12; ++j) c[j] = _mm512_set1_epi32(j);
  for (int64_t i = 0; i < iters; ++i) {
    for (int j = 0; j < 12; ++j) c[j] = _mm512_dpbusd_epi32(c[j], a, b);
    __asm__ volatile("" : "+v"(a), "+v"(b));  // not loop-invariant to the compiler
  }
  __m512i s = c[0];
  for (int j = 1; j < 12; ++j) s = _mm512_add_epi32(s, c[j]);
  volatile int32_t sink = _mm512_reduce_add_epi32(s);
  (void)sink;
  return iters * 12 * 64 * 2;  // 12 chains x 64 byte products x (multiply + add)
}

}  // namespace retquant
