// 16 float32 lanes as two ymm registers (AVX2 + FMA): the vector type of float_chunk_body.h.
// Included inside the AVX2 copy's namespace, under its target pragma (float_chunk_avx2.cpp).

// A tile of kTileRows rows x 16 columns keeps 12 ymm accumulators, two B vectors and one
// broadcast in flight: 15 of the 16 ymm registers, and 12 independent FMA chains cover the
// FMA latency (4 cycles) times the two FMA pipes.
constexpr int kTileRows = 6;

struct Vec {
  __m256 lo, hi;
};

static inline Vec vzero() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
static inline Vec vset(float x) {
  const __m256 b = _mm256_set1_ps(x);
  return {b, b};
}
static inline Vec vload(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
static inline Vec vmul(Vec a, Vec b) { return {_mm256_mul_ps(a.lo, b.lo), _mm256_mul_ps(a.hi, b.hi)}; }
// a * b + c with one rounding (FMA: the float path needs no bit-exactness).
static inline Vec vfma(Vec a, Vec b, Vec c) {
  return {_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)};
}
static inline void vstore(float* p, Vec x) {
  _mm256_storeu_ps(p, x.lo);
  _mm256_storeu_ps(p + 8, x.hi);
}

// bfloat16 is the upper half of a float32: widening is a 16-bit shift, exact.
static inline __m256 bf16x8_to_f32(const uint16_t* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
static inline Vec vload(const uint16_t* p) { return {bf16x8_to_f32(p), bf16x8_to_f32(p + 8)}; }

// Round to nearest even like torch's .to(bfloat16): add 0x7FFF + the kept lowest bit, keep the
// upper 16 bits; NaN becomes 0x7FC0 (the rounding add could carry a NaN into inf or -0).
static inline __m256i f32x8_to_bf16_bits(__m256 x) {
  const __m256i u = _mm256_castps_si256(x);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i r = _mm256_add_epi32(u, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7FFF)));
  const __m256i bits = _mm256_srli_epi32(r, 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(x, x, _CMP_UNORD_Q));
  return _mm256_blendv_epi8(bits, _mm256_set1_epi32(0x7FC0), nan);
}
static inline void vstore(uint16_t* p, Vec x) {
  // packus works per 128-bit lane: [lo0-3 hi0-3 | lo4-7 hi4-7]; the permute restores the order.
  const __m256i packed = _mm256_packus_epi32(f32x8_to_bf16_bits(x.lo), f32x8_to_bf16_bits(x.hi));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm256_permute4x64_epi64(packed, 0xD8));
}

#include "float_transpose_avx2.h"
