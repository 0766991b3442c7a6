// AVX2 forms of quant.h (8 lanes) and the lane helpers shared by chunk_stages_avx2.h and
// recurrent_stages_avx2.h. Like quant.h: no include guard, included inside each ISA copy's
// namespace after quant.h, with <immintrin.h> included first and the AVX2 target active.
// AVX2 has no mask registers: lane masks are vectors of all-ones / all-zeros int32 lanes, and
// partial loads and stores of 8- and 16-bit elements go through a small zeroed buffer.

// All-ones in the first n int32 lanes (all 8 when n >= 8, none when n <= 0).
static inline __m256i lanes8(int n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

static inline __m256 abs8(__m256 x) {
  return _mm256_and_ps(x, _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF)));
}

// Lanes whose magnitude ax = |x| is at least `bound` or NaN: !(ax < bound) (unordered compares
// true for NaN).
static inline __m256 at_least8(__m256 ax, float bound) {
  return _mm256_cmp_ps(ax, _mm256_set1_ps(bound), _CMP_NLT_UQ);
}
// Lanes whose magnitude is inf or NaN.
static inline __m256 nonfinite8(__m256 ax) { return at_least8(ax, __builtin_inff()); }
static inline bool any8(__m256 m) { return _mm256_movemask_ps(m) != 0; }

static inline float hmax8(__m256 x) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
  return _mm_cvtss_f32(m);
}

static inline int32_t hsum8(__m256i x) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(x), _mm256_extracti128_si256(x, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

static inline uint32_t hmax_u32(__m256i x) {
  __m128i m = _mm_max_epu32(_mm256_castsi256_si128(x), _mm256_extracti128_si256(x, 1));
  m = _mm_max_epu32(m, _mm_shuffle_epi32(m, 0x4E));
  m = _mm_max_epu32(m, _mm_shuffle_epi32(m, 0xB1));
  return static_cast<uint32_t>(_mm_cvtsi128_si32(m));
}

// The running max of the bits of |x| (abs_bits of quant.h, 8 lanes): for a row it is both the
// amax (as bits) and the finiteness probe (inf and NaN have the largest bits), one vpmaxud per
// vector instead of a compare, an or and a float max.
static inline __m256i max_abs_bits8(__m256i m, __m256 x) {
  return _mm256_max_epu32(m, _mm256_castps_si256(abs8(x)));
}

// Codes of x / s: a true division (as the spec), clamp to +-127, round half to even
// (vcvtps2dq rounds with MXCSR, round-to-nearest-even unless a caller changed it, the same
// assumption as the portable path's magic-number rounding).
static inline __m256i vcodes8(__m256 x, __m256 s) {
  __m256 t = _mm256_div_ps(x, s);
  t = _mm256_min_ps(_mm256_max_ps(t, _mm256_set1_ps(-kQmax)), _mm256_set1_ps(kQmax));
  return _mm256_cvtps_epi32(t);
}

// The same codes without the clamp, exact when |x| <= amax of x's group and s is normal
// (scale_normal of quant.h).
static inline __m256i vcodes8_in_range(__m256 x, __m256 s) {
  return _mm256_cvtps_epi32(_mm256_div_ps(x, s));
}

static inline bool all_normal8(__m256 s) {
  return _mm256_movemask_ps(_mm256_cmp_ps(s, _mm256_set1_ps(kMinNormal), _CMP_GE_OQ)) == 0xFF;
}

// A group's divisor prepared once per scale: the scale, its reciprocal, and whether the
// clamp-free codes apply (every lane's scale normal).
struct Divisor8 {
  __m256 s, r;
  bool in_range;
};
static inline Divisor8 divisor8(__m256 s) {
  return {s, _mm256_div_ps(_mm256_set1_ps(1.f), s), all_normal8(s)};
}

// Half-integer margin of codes8 (see there): 2^-12, ten times the worst-case distance
// 127 * (3 * 2^-24) between x * fl(1/s) and fl(x / s).
constexpr float kTieMargin = 1.0f / 4096.0f;

// Round to nearest even (explicit, not MXCSR), as a float.
static inline __m256 rint8(__m256 t) {
  return _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
// |t - rint(t)|, and the lanes where such a distance is near 0.5 (a reduction may take the max
// of distances first: one compare per row).
static inline __m256 tie_dist8(__m256 t, __m256 n) { return abs8(_mm256_sub_ps(t, n)); }
static inline __m256 near_tie8(__m256 dist) {
  return _mm256_cmp_ps(dist, _mm256_set1_ps(0.5f - kTieMargin), _CMP_GT_OQ);
}

// The codes of the spec, rne(fl(x / s)) clamped to +-127, mostly without a division (vdivps has
// a throughput of one per ~4-5 cycles on Zen 3 and was the largest single cost of the decode
// step). In the clamp-free case |x / s| <= 127 (1 + 2^-23); t = fl(x * fl(1/s)) is then within
// 127 * (2^-23 + 2^-48) of x / s, and fl(x / s) within 127 * 2^-24 of it, so both lie within
// 2.3e-5 of each other. If t is farther than kTieMargin from every half-integer (its distance
// 0.5 - |t - rint(t)| is computed exactly: t - rint(t) is exact by Sterbenz' lemma), fl(x / s)
// lies strictly between the same two half-integers and rounds to the same integer rint(t).
// Otherwise (rare: about 2 * kTieMargin of random lanes) the vector takes the true division.
// near_tie8 compares |t - n| with 0.5 - kTieMargin (exact) instead of forming the distance:
// for |t - n| >= 0.25, 0.5 - |t - n| is exact (Sterbenz), so both forms decide alike.
static inline __m256i codes8(__m256 x, const Divisor8& d) {
  if (!d.in_range) return vcodes8(x, d.s);
  const __m256 t = _mm256_mul_ps(x, d.r);
  const __m256 n = rint8(t);
  if (any8(near_tie8(tie_dist8(t, n)))) return vcodes8_in_range(x, d.s);
  return _mm256_cvtps_epi32(n);  // n is an integer: exact
}

// Smallest scale for which codes8_fma is exact (see there): below it the residual's rounding in
// the subnormal range (up to 2^-150) is no longer small against the scale (the exhaustive check
// finds different codes from 2^-103 down).
constexpr float kFmaCodesMinScale = 0x1p-100f;

// The spec's codes rne(fl(x / s)), as floats, with two FMAs instead of a division and without a
// near-tie test, for s >= kFmaCodesMinScale (a normal scale) and |x / s| <= 128. Let z = x / s,
// r = fl(1 / s) = (1 + e) / s with |e| <= 2^-24, and t = fl(x r), within about 1.15 ulp of z.
// The first FMA gives the residual x - t s = s (z - t) rounded once: relative error <= 2^-24,
// or an absolute one <= 2^-150 in the subnormal range, which is <= 2^-50 s, small against
// |x| >= s / 4 (for |z| < 1/4 the code is 0 either way). Before the second FMA rounds it,
// t + fl(x - t s) r = z + (z - t) e + (rounding of the residual) r lies within about 2^-46 |z|
// of z, so it rounds to fl(z) (Markstein's correction step) unless z is that close to a rounding
// midpoint; and two adjacent floats give different codes only when one of them is a
// half-integer h. So a code can differ only for z within 2^-46 |z| of h +- half an ulp, i.e. x
// within about 1.5 ulp of fl(h s) (2 at a binade edge of x). Those x were checked exhaustively
// for every significand of s in the binades 2^-100, 2^-60, 2^-1, 2^0, 2^1, 2^30, 2^120 and
// 2^121 (the top one: s <= FLT_MAX / 127), x within 16 ulps of fl(h s) for every half-integer
// |h| <= 127.5, with no difference (the binades scale exactly): fma_codes_mismatches(e, 16) of
// fma_codes_check.cpp for each; tests/test_fma_codes.py runs it for the bottom, a middle and the
// top binade.
static inline __m256 codes8_fma(__m256 x, __m256 s, __m256 r) {
  const __m256 t = _mm256_mul_ps(x, r);
  return rint8(_mm256_fmadd_ps(_mm256_fnmadd_ps(t, s, x), r, t));
}

// Whether every lane's scale allows codes8_fma.
static inline bool fma_codes_apply8(__m256 s) {
  return _mm256_movemask_ps(_mm256_cmp_ps(s, _mm256_set1_ps(kFmaCodesMinScale), _CMP_GE_OQ)) == 0xFF;
}

// codes8 of four vectors x[i] / s_i given the reciprocals r[i] of normal scales, with one
// near-tie test for the four instead of one per vector. False on a near tie (rare; c is then
// unset), for the caller's exact path.
static inline bool codes8x4_fast(const __m256 x[4], const __m256 r[4], __m256i c[4]) {
  __m256 n[4], dist = _mm256_setzero_ps();
  for (int i = 0; i < 4; ++i) {
    const __m256 t = _mm256_mul_ps(x[i], r[i]);
    n[i] = rint8(t);
    dist = _mm256_max_ps(dist, tie_dist8(t, n[i]));
  }
  if (any8(near_tie8(dist))) return false;
  for (int i = 0; i < 4; ++i) c[i] = _mm256_cvtps_epi32(n[i]);  // integers: exact
  return true;
}

// codes8 of four vectors, x[i] with divisor d[i]: codes8x4_fast where every scale is normal and
// no lane is near a tie, else codes8 per vector.
static inline void codes8x4(const __m256 x[4], const Divisor8 d[4], __m256i c[4]) {
  if (d[0].in_range && d[1].in_range && d[2].in_range && d[3].in_range) {
    const __m256 r[4] = {d[0].r, d[1].r, d[2].r, d[3].r};
    if (codes8x4_fast(x, r, c)) return;
  }
  for (int i = 0; i < 4; ++i) c[i] = codes8(x[i], d[i]);
}

// Four vectors of codes (int32 lanes in [-128, 127]) as bytes: each 128-bit half holds 4 lanes
// of each vector in turn, lanes 0-3 in half 0 (c0[0:4], c1[0:4], c2[0:4], c3[0:4]) and lanes
// 4-7 in half 1.
static inline __m256i pack_codes4(const __m256i c[4]) {
  return _mm256_packs_epi16(_mm256_packs_epi32(c[0], c[1]), _mm256_packs_epi32(c[2], c[3]));
}

// scale_from_amax on 8 lanes.
static inline __m256 vscale8(__m256 amax) {
  const __m256 s = _mm256_div_ps(amax, _mm256_set1_ps(kQmax));
  const __m256 pos = _mm256_cmp_ps(s, _mm256_setzero_ps(), _CMP_GT_OQ);
  return _mm256_blendv_ps(_mm256_set1_ps(1.f), s, pos);
}

// The first n floats at p (n < 8: the rest 0, nothing past p + n read).
static inline __m256 load8(const float* p, int n) {
  if (n >= 8) return _mm256_loadu_ps(p);
  return _mm256_maskload_ps(p, lanes8(n));
}

// bfloat16 (held as its 16 bits) widened exactly to float32.
static inline __m256 load8(const uint16_t* p, int n) {
  __m128i h;
  if (n >= 8) {
    h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  } else {
    uint16_t buf[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    if (n > 0) std::memcpy(buf, p, static_cast<size_t>(n) * 2);
    h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(buf));
  }
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

// The 8 int32 lanes (each in [-128, 127]) as 8 signed bytes in the low half of the result.
static inline __m128i bytes8(__m256i x) {
  const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(x), _mm256_extracti128_si256(x, 1));
  return _mm_packs_epi16(w, w);
}

// Stores the first n (<= 8) bytes of the low half of b.
static inline void store_bytes8(void* dst, int n, __m128i b) {
  if (n >= 8) {
    _mm_storel_epi64(reinterpret_cast<__m128i*>(dst), b);
  } else if (n > 0) {
    uint8_t buf[16];
    _mm_storeu_si128(reinterpret_cast<__m128i*>(buf), b);
    std::memcpy(dst, buf, static_cast<size_t>(n));
  }
}
