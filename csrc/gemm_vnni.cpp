// AVX-512 VNNI int8 GEMM (vpdpbusd, u8 x s8 -> s32 with the +128 / column-sum correction).
// Only this file's functions carry the AVX-512 target attribute; the rest of the extension is
// built for the baseline ISA, and this path is chosen at run time through CPUID.
#include <immintrin.h>

#include "gemm.h"

#define RQ_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

namespace retquant {

bool cpu_has_avx512_vnni() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
}

namespace {

// 4 rows x NB*16 columns. With a truncated reduction (r_end < g.r) the stored column sums do
// not apply, so the correction 128 * sum_{r < r_end} B(r, n) is accumulated alongside.
template <int NB>
RQ_VNNI inline void tile(const GemmArgs& g, int m0, int n0, int r_end) {
  __m512i acc[4][NB], run[NB];
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_setzero_si512();
  for (int j = 0; j < NB; ++j) run[j] = _mm512_setzero_si512();
  const bool partial = r_end < g.r;
  const __m512i bias = _mm512_set1_epi32(static_cast<int32_t>(0x80808080u));
  for (int r4 = 0; r4 < r_end; r4 += 4) {
    const int8_t* b = g.b + (r4 / 4) * g.ldb * 4 + n0 * 4;
    __m512i bv[NB];
    for (int j = 0; j < NB; ++j) bv[j] = _mm512_loadu_si512(b + 64 * j);
    if (partial)
      for (int j = 0; j < NB; ++j) run[j] = _mm512_dpbusd_epi32(run[j], bias, bv[j]);
    for (int i = 0; i < 4; ++i) {
      int32_t word;
      __builtin_memcpy(&word, a_at(g, m0 + i, r4), 4);
      const __m512i av = _mm512_set1_epi32(word);
      for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], av, bv[j]);
    }
  }
  for (int j = 0; j < NB; ++j) {
    const __m512i corr =
        partial ? run[j] : _mm512_slli_epi32(_mm512_loadu_si512(g.colsum + n0 + 16 * j), 7);
    for (int i = 0; i < 4; ++i)
      _mm512_storeu_si512(g.c + (m0 + i) * g.ldc + n0 + 16 * j,
                          _mm512_sub_epi32(acc[i][j], corr));
  }
}

// The hot case, 4 x 64 with the full reduction, with 16 named accumulators: GCC keeps them in
// registers (an array of them made it shuffle registers and spill around every vpdpbusd).
RQ_VNNI inline void tile_4x64(const GemmArgs& g, int m0, int n0) {
  __m512i c00 = _mm512_setzero_si512(), c01 = c00, c02 = c00, c03 = c00;
  __m512i c10 = c00, c11 = c00, c12 = c00, c13 = c00;
  __m512i c20 = c00, c21 = c00, c22 = c00, c23 = c00;
  __m512i c30 = c00, c31 = c00, c32 = c00, c33 = c00;
  const int8_t* b = g.b + n0 * 4;
  const int64_t b_step = static_cast<int64_t>(g.ldb) * 4;
  const uint8_t* a0 = a_at(g, m0, 0);
  const int64_t a_row = g.a_packed ? 4 : g.lda;  // A(m0 + i, r4..) = a0 + i * a_row
  const int64_t a_step = g.a_packed ? static_cast<int64_t>(g.lda) * 4 : 4;
  for (int r4 = 0; r4 < g.r; r4 += 4, b += b_step, a0 += a_step) {
    const __m512i b0 = _mm512_loadu_si512(b), b1 = _mm512_loadu_si512(b + 64);
    const __m512i b2 = _mm512_loadu_si512(b + 128), b3 = _mm512_loadu_si512(b + 192);
    int32_t w;
    __builtin_memcpy(&w, a0, 4);
    __m512i av = _mm512_set1_epi32(w);
    c00 = _mm512_dpbusd_epi32(c00, av, b0); c01 = _mm512_dpbusd_epi32(c01, av, b1);
    c02 = _mm512_dpbusd_epi32(c02, av, b2); c03 = _mm512_dpbusd_epi32(c03, av, b3);
    __builtin_memcpy(&w, a0 + a_row, 4);
    av = _mm512_set1_epi32(w);
    c10 = _mm512_dpbusd_epi32(c10, av, b0); c11 = _mm512_dpbusd_epi32(c11, av, b1);
    c12 = _mm512_dpbusd_epi32(c12, av, b2); c13 = _mm512_dpbusd_epi32(c13, av, b3);
    __builtin_memcpy(&w, a0 + 2 * a_row, 4);
    av = _mm512_set1_epi32(w);
    c20 = _mm512_dpbusd_epi32(c20, av, b0); c21 = _mm512_dpbusd_epi32(c21, av, b1);
    c22 = _mm512_dpbusd_epi32(c22, av, b2); c23 = _mm512_dpbusd_epi32(c23, av, b3);
    __builtin_memcpy(&w, a0 + 3 * a_row, 4);
    av = _mm512_set1_epi32(w);
    c30 = _mm512_dpbusd_epi32(c30, av, b0); c31 = _mm512_dpbusd_epi32(c31, av, b1);
    c32 = _mm512_dpbusd_epi32(c32, av, b2); c33 = _mm512_dpbusd_epi32(c33, av, b3);
  }
  const __m512i* cs = reinterpret_cast<const __m512i*>(g.colsum + n0);
  const __m512i k0 = _mm512_slli_epi32(_mm512_loadu_si512(cs), 7);
  const __m512i k1 = _mm512_slli_epi32(_mm512_loadu_si512(cs + 1), 7);
  const __m512i k2 = _mm512_slli_epi32(_mm512_loadu_si512(cs + 2), 7);
  const __m512i k3 = _mm512_slli_epi32(_mm512_loadu_si512(cs + 3), 7);
  int32_t* c = g.c + m0 * g.ldc + n0;
  const __m512i rows[4][4] = {{c00, c01, c02, c03}, {c10, c11, c12, c13},
                              {c20, c21, c22, c23}, {c30, c31, c32, c33}};
  for (int i = 0; i < 4; ++i, c += g.ldc) {
    _mm512_storeu_si512(c, _mm512_sub_epi32(rows[i][0], k0));
    _mm512_storeu_si512(c + 16, _mm512_sub_epi32(rows[i][1], k1));
    _mm512_storeu_si512(c + 32, _mm512_sub_epi32(rows[i][2], k2));
    _mm512_storeu_si512(c + 48, _mm512_sub_epi32(rows[i][3], k3));
  }
}

}  // namespace

RQ_VNNI void gemm_vnni(const GemmArgs& g) {
  const int m4 = round_up(g.m, 4), n16 = round_up(g.n, 16);
  for (int m0 = 0; m0 < m4; m0 += 4) {
    int n_end = n16;
    if (g.causal_cols && round_up(m0 + 4, 16) < n16) n_end = round_up(m0 + 4, 16);
    const int r_end = g.causal_red ? (m0 + 4 < g.r ? m0 + 4 : g.r) : g.r;
    int n0 = 0;
    if (r_end == g.r) {
      for (; n0 + 64 <= n_end; n0 += 64) tile_4x64(g, m0, n0);
    } else {
      for (; n0 + 64 <= n_end; n0 += 64) tile<4>(g, m0, n0, r_end);
    }
    switch ((n_end - n0) / 16) {
      case 3: tile<3>(g, m0, n0, r_end); break;
      case 2: tile<2>(g, m0, n0, r_end); break;
      case 1: tile<1>(g, m0, n0, r_end); break;
      default: break;
    }
  }
}

}  // namespace retquant
