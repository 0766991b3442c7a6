// 16 float32 lanes as one zmm register (AVX-512F): the vector type of float_chunk_body.h.
// Included inside the AVX-512 copy's namespace, under its target pragma
// (float_chunk_avx512.cpp). The same operations as float_vec_avx2.h, one register wide.

// 12 zmm accumulators (of 32 registers) per tile: enough independent FMA chains for two
// 512-bit FMA pipes of latency 4, with room for the B vector and the broadcast.
constexpr int kTileRows = 12;

struct Vec {
  __m512 x;
};

static inline Vec vzero() { return {_mm512_setzero_ps()}; }
static inline Vec vset(float x) { return {_mm512_set1_ps(x)}; }
static inline Vec vload(const float* p) { return {_mm512_loadu_ps(p)}; }
static inline Vec vmul(Vec a, Vec b) { return {_mm512_mul_ps(a.x, b.x)}; }
// a * b + c with one rounding (FMA: the float path needs no bit-exactness).
static inline Vec vfma(Vec a, Vec b, Vec c) { return {_mm512_fmadd_ps(a.x, b.x, c.x)}; }
static inline void vstore(float* p, Vec x) { _mm512_storeu_ps(p, x.x); }

// bfloat16 is the upper half of a float32: widening is a 16-bit shift, exact.
static inline Vec vload(const uint16_t* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return {_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))};
}

// Round to nearest even like torch's .to(bfloat16): add 0x7FFF + the kept lowest bit, keep the
// upper 16 bits; NaN becomes 0x7FC0 (the rounding add could carry a NaN into inf or -0).
static inline void vstore(uint16_t* p, Vec x) {
  const __m512i u = _mm512_castps_si512(x.x);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF)));
  const __mmask16 nan = _mm512_cmp_ps_mask(x.x, x.x, _CMP_UNORD_Q);
  const __m512i bits = _mm512_mask_blend_epi32(nan, _mm512_srli_epi32(r, 16), _mm512_set1_epi32(0x7FC0));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(bits));
}

#include "float_transpose_avx2.h"
