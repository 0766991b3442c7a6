// The loops of quantize_rows.cpp, compiled twice like chunk_body.h: for the baseline ISA and
// with the AVX2 target (chosen through CPUID). The including file defines QR_NS and QR_AVX2. Everything is
// inside QR_NS, so the two copies share no inline code the linker could merge.
//
// Arithmetic exactly as retquant/quant/primitives.py with the default int8 spec (quant.h):
// x * mul rounded to float32, scale = amax / 127 (1 for an all-zero group), code =
// round_half_even(x / scale) clamped to +-127. The amax is kept in 8 independent lanes so the
// compiler vectorizes it (max is exact and order-free, so the lanes change no bit).

namespace retquant {
namespace QR_NS {

#include "quant.h"

constexpr float kFloatMax = 3.40282347e+38f;

// 1 unless x is finite (the comparison is false for NaN); an int, so OR-reductions vectorize.
static inline int not_finite(float x) { return !(std::fabs(x) <= kFloatMax); }

static inline float widen(float x) { return x; }
static inline float widen(uint16_t b) {  // bfloat16 bits: the upper half of a float32
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// max |t[i]| over n floats: 8 independent lanes (max is exact and order-free, so the lanes
// change no bit), with AVX2 intrinsics in the AVX2 copy (GCC does not vectorize a float max
// reduction without -ffast-math).
static inline float row_amax(const float* t, int n) {
  float lane[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  int i = 0;
#if QR_AVX2
  const __m256 sign = _mm256_set1_ps(-0.f);
  __m256 m = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) m = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(t + i)), m);
  _mm256_storeu_ps(lane, m);
#endif
  for (; i < n; ++i) {
    const float a = std::fabs(t[i]);
    lane[i & 7] = a > lane[i & 7] ? a : lane[i & 7];
  }
  float r = 0.f;
  for (int j = 0; j < 8; ++j) r = lane[j] > r ? lane[j] : r;
  return r;
}

// codes[i] = quant_code(t[i], scale) for n elements, with one scale (sv null) or one per element
// (sv[i]). The AVX2 copy does 8 at a time with the same operations (one correctly rounded
// division, clamp to +-127, round half to even: _mm256_round_ps), so the bytes are the same; GCC
// does not vectorize quant_code's clamp itself.
static inline void codes_row(const float* t, const float* sv, float scale, int n, int8_t* codes) {
  int i = 0;
#if QR_AVX2
  const __m256 lo = _mm256_set1_ps(-kQmax), hi = _mm256_set1_ps(kQmax), s1 = _mm256_set1_ps(scale);
  for (; i + 8 <= n; i += 8) {
    const __m256 s8 = sv != nullptr ? _mm256_loadu_ps(sv + i) : s1;
    __m256 x = _mm256_div_ps(_mm256_loadu_ps(t + i), s8);
    x = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
    x = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256i c = _mm256_cvtps_epi32(x);
    const __m128i w16 = _mm_packs_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(codes + i), _mm_packs_epi16(w16, w16));
  }
#endif
  for (; i < n; ++i) codes[i] = static_cast<int8_t>(quant_code(t[i], sv != nullptr ? sv[i] : scale));
}

// Per row of n elements (rows [r0, r1) of x): tmp = x * mul, scale, codes; returns the flags
// kQuantNonFinite (x not finite) | kQuantProductNonFinite (x * mul not finite).
template <typename T>
static int token_rows(const T* __restrict__ x, int64_t r0, int64_t r1, int n, float mul,
                      float* __restrict__ tmp, int8_t* __restrict__ codes,
                      float* __restrict__ scales) {
  int bad_x = 0, bad_p = 0;
  for (int64_t r = r0; r < r1; ++r) {
    const T* __restrict__ xr = x + r * n;
    for (int i = 0; i < n; ++i) {
      const float xv = widen(xr[i]);
      tmp[i] = xv * mul;
      bad_x |= not_finite(xv);
      bad_p |= not_finite(tmp[i]);
    }
    const float s = scale_from_amax(row_amax(tmp, n));
    scales[r] = s;
    codes_row(tmp, nullptr, s, n, codes + r * n);
  }
  if (bad_x) return kQuantNonFinite;
  return bad_p ? kQuantProductNonFinite : 0;
}

// One chunk of L token rows of w = H * V channels (row stride w): the column amax over the
// chunk, the scales, then the codes (rows widened into tmp); flags as token_rows (mul = 1).
template <typename T>
static int v_chunk(const T* v, int L, int64_t w, float* amax, float* tmp, int8_t* codes,
                   float* scales) {
  int bad = 0;
  for (int64_t c = 0; c < w; ++c) amax[c] = 0.f;
  for (int a = 0; a < L; ++a) {
    const T* vr = v + a * w;
    for (int64_t c = 0; c < w; ++c) {
      const float x = widen(vr[c]);
      bad |= not_finite(x);
      const float m = std::fabs(x);
      amax[c] = m > amax[c] ? m : amax[c];
    }
  }
  for (int64_t c = 0; c < w; ++c) scales[c] = scale_from_amax(amax[c]);
  for (int a = 0; a < L; ++a) {
    const T* vr = v + a * w;
    for (int64_t c = 0; c < w; ++c) tmp[c] = widen(vr[c]);
    codes_row(tmp, scales, 0.f, static_cast<int>(w), codes + a * w);
  }
  return bad ? kQuantNonFinite : 0;
}

}  // namespace QR_NS
}  // namespace retquant
