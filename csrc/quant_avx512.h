// AVX-512 forms of quant.h (16 lanes), shared by chunk_stages_avx512.h and
// recurrent_stages_avx512.h. Like quant.h: no include guard, included inside each ISA copy's
// namespace after quant.h, with <immintrin.h> included first and the AVX-512 target active.

// Mask of the first n lanes (all 16 when n >= 16, none when n <= 0).
static inline __mmask16 lanes(int n) {
  return n >= 16 ? static_cast<__mmask16>(0xFFFF)
                 : static_cast<__mmask16>(n > 0 ? (1u << n) - 1u : 0u);
}

// Lanes of x that are inf or NaN (fpclass: QNaN | +Inf | -Inf | SNaN).
static inline __mmask16 nonfinite(__m512 x) { return _mm512_fpclass_ps_mask(x, 0x99); }

// Codes of x / s: a true division (as the spec), clamp to +-127, round half to even.
static inline __m512i vcodes(__m512 x, __m512 s) {
  __m512 t = _mm512_div_ps(x, s);
  t = _mm512_min_ps(_mm512_max_ps(t, _mm512_set1_ps(-kQmax)), _mm512_set1_ps(kQmax));
  return _mm512_cvt_roundps_epi32(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

// The same codes without the clamp, valid when |x| <= amax of x's group and s = fl(amax / 127)
// is a normal float: then |x / s| <= 127 (1 + 2^-23), which rounds to at most 127 anyway.
static inline __m512i vcodes_in_range(__m512 x, __m512 s) {
  return _mm512_cvt_roundps_epi32(_mm512_div_ps(x, s), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

// Whether the clamp-free codes apply to every lane's group (scale_normal of quant.h).
static inline bool all_normal(__m512 s) {
  return _mm512_cmp_ps_mask(s, _mm512_set1_ps(kMinNormal), _CMP_GE_OQ) == 0xFFFF;
}

// vcodes or, where it is exact, the cheaper vcodes_in_range.
static inline __m512i group_codes(__m512 x, __m512 s, bool in_range) {
  return in_range ? vcodes_in_range(x, s) : vcodes(x, s);
}

// scale_from_amax on 16 lanes.
static inline __m512 vscale(__m512 amax) {
  const __m512 s = _mm512_div_ps(amax, _mm512_set1_ps(kQmax));
  const __mmask16 pos = _mm512_cmp_ps_mask(s, _mm512_setzero_ps(), _CMP_GT_OQ);
  return _mm512_mask_blend_ps(pos, _mm512_set1_ps(1.f), s);
}
