// AVX2 int8 GEMM with the sign trick: a . b = |b| (unsigned) x sign(b).a (signed), so one
// vpsignb + vpmaddubsw + vpmaddwd per 32 byte products. Exact because every code is in
// [-127, 127]: a pair sum is at most 2 * 127 * 127 = 32258 < 32767, so vpmaddubsw never
// saturates. (The +128 offset that the VNNI path uses would: 255 * 127 * 2 > 32767.) The A
// operand holds the codes (g.a_signed, as the AVX2 stages write it) or arrives biased (code +
// 128, gemm.h; code = byte ^ 0x80 read as int8, in register), so no column-sum correction is
// needed and colsum / colsum_prefix are not read.
// Only this file's functions carry the AVX2 target attribute (chosen at run time by CPUID).
#include <immintrin.h>

#include "gemm.h"

#define RQ_AVX2 __attribute__((target("avx2,fma")))

namespace retquant {
namespace {

// One step of the sign trick: acc += per-int32-lane sum of the 4 products a[i] * b[i], where
// |b| = babs and a holds the signed codes (4 per lane).
RQ_AVX2 inline __m256i dot4(__m256i acc, __m256i a, __m256i b, __m256i babs, __m256i ones) {
  const __m256i p16 = _mm256_maddubs_epi16(babs, _mm256_sign_epi8(a, b));
  return _mm256_add_epi32(acc, _mm256_madd_epi16(p16, ones));
}

// 4 rows x 16 columns (two ymm of 8 int32 each) over reductions [0, r_end). Accumulators are
// named variables so that GCC keeps all eight in registers (see gemm_vnni.cpp); |b| is taken
// once per B vector and shared by the four rows.
template <bool kSigned>
RQ_AVX2 inline void tile(const GemmArgs& g, int m0, int n0, int r_end) {
  const __m256i z = _mm256_setzero_si256(), ones = _mm256_set1_epi16(1);
  const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80));
  __m256i c00 = z, c01 = z, c10 = z, c11 = z, c20 = z, c21 = z, c30 = z, c31 = z;
  const int8_t* b = g.b + n0 * 4;
  const int64_t b_step = static_cast<int64_t>(g.ldb) * 4;
  const uint8_t* a0 = a_at(g, m0, 0);
  const int64_t a_row = g.a_packed ? 4 : g.lda;  // A(m0 + i, r4..) = a0 + i * a_row
  const int64_t a_step = g.a_packed ? static_cast<int64_t>(g.lda) * 4 : 4;
  for (int r4 = 0; r4 < r_end; r4 += 4, b += b_step, a0 += a_step) {
    const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b));
    const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 32));
    const __m256i b0a = _mm256_abs_epi8(b0), b1a = _mm256_abs_epi8(b1);
#define RQ_ROW(i, c0, c1)                                                   \
  {                                                                         \
    int32_t w;                                                              \
    __builtin_memcpy(&w, a0 + (i) * a_row, 4);                              \
    const __m256i aw = _mm256_set1_epi32(w);                                \
    const __m256i av = kSigned ? aw : _mm256_xor_si256(aw, flip);           \
    c0 = dot4(c0, av, b0, b0a, ones);                                       \
    c1 = dot4(c1, av, b1, b1a, ones);                                       \
  }
    RQ_ROW(0, c00, c01)
    RQ_ROW(1, c10, c11)
    RQ_ROW(2, c20, c21)
    RQ_ROW(3, c30, c31)
#undef RQ_ROW
  }
  int32_t* c = g.c + static_cast<int64_t>(m0) * g.ldc + n0;
  const int64_t ldc = g.ldc;
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(c), c00);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + 8), c01);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + ldc), c10);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + ldc + 8), c11);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + 2 * ldc), c20);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + 2 * ldc + 8), c21);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + 3 * ldc), c30);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + 3 * ldc + 8), c31);
}

}  // namespace

RQ_AVX2 void gemm_avx2(const GemmArgs& g) {
  const int m4 = round_up(g.m, 4), n16 = round_up(g.n, 16);
  for (int m0 = 0; m0 < m4; m0 += 4) {
    const int n_end = causal_col_end(g, m0, n16);
    const int r_end = causal_red_end(g, m0);
    for (int n0 = 0; n0 < n_end; n0 += 16) {
      if (g.a_signed) {
        tile<true>(g, m0, n0, r_end);
      } else {
        tile<false>(g, m0, n0, r_end);
      }
    }
  }
}

// The peak probe (gemm_bench.cpp): the tile's instruction sequence on registers only, as the
// tile uses it (4 A vectors x 2 B vectors, |b| shared by the 4), 8 independent accumulator chains.
// Every operand is distinct, so the compiler cannot share a vpsignb or vpmaddubsw between chains.
RQ_AVX2 int64_t int8_peak_avx2(int64_t iters) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i a0 = _mm256_set1_epi8(3), a1 = _mm256_set1_epi8(-7), a2 = _mm256_set1_epi8(11);
  __m256i a3 = _mm256_set1_epi8(-13), b0 = _mm256_set1_epi8(-5), b1 = _mm256_set1_epi8(9);
  __m256i c[8];
  for (int j = 0; j < 8; ++j) c[j] = _mm256_set1_epi32(j);
  for (int64_t i = 0; i < iters; ++i) {
    const __m256i b0a = _mm256_abs_epi8(b0), b1a = _mm256_abs_epi8(b1);
    c[0] = dot4(c[0], a0, b0, b0a, ones);
    c[1] = dot4(c[1], a0, b1, b1a, ones);
    c[2] = dot4(c[2], a1, b0, b0a, ones);
    c[3] = dot4(c[3], a1, b1, b1a, ones);
    c[4] = dot4(c[4], a2, b0, b0a, ones);
    c[5] = dot4(c[5], a2, b1, b1a, ones);
    c[6] = dot4(c[6], a3, b0, b0a, ones);
    c[7] = dot4(c[7], a3, b1, b1a, ones);
    // new operands each round, as the tile loads them (not loop-invariant to the compiler)
    __asm__ volatile("" : "+x"(a0), "+x"(a1), "+x"(a2), "+x"(a3), "+x"(b0), "+x"(b1));
  }
  __m256i s = c[0];
  for (int j = 1; j < 8; ++j) s = _mm256_add_epi32(s, c[j]);
  volatile int32_t sink = _mm256_extract_epi32(s, 0);
  (void)sink;
  return iters * 8 * 32 * 2;  // 8 chains x 32 byte products x (multiply + add)
}

}  // namespace retquant
