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

}  // namespace

RQ_VNNI void gemm_vnni(const GemmArgs& g) {
  const int m4 = round_up(g.m, 4), n16 = round_up(g.n, 16);
  for (int m0 = 0; m0 < m4; m0 += 4) {
    int n_end = n16;
    if (g.causal_cols && round_up(m0 + 4, 16) < n16) n_end = round_up(m0 + 4, 16);
    const int r_end = g.causal_red ? (m0 + 4 < g.r ? m0 + 4 : g.r) : g.r;
    int n0 = 0;
    for (; n0 + 64 <= n_end; n0 += 64) tile<4>(g, m0, n0, r_end);
    switch ((n_end - n0) / 16) {
      case 3: tile<3>(g, m0, n0, r_end); break;
      case 2: tile<2>(g, m0, n0, r_end); break;
      case 1: tile<1>(g, m0, n0, r_end); break;
      default: break;
    }
  }
}

}  // namespace retquant
