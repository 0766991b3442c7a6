// The per-token stages of the decode kernel with AVX-512 intrinsics: the float32 operations of
// recurrent_stages_portable.h in the same order. The K x V state is walked in blocks of kBlock
// vectors of columns so the column amax and the q . S accumulators stay in registers (and the
// block, updated by the first pass, is still in L1/L2 for the second).

#include "quant_avx512.h"

constexpr int kBlock = 4;

static inline bool quant_token(const float* x, float mul, bool scaled, int n, float* tmp,
                               int32_t* codes, float* scale) {
  __m512 m = _mm512_setzero_ps();
  __mmask16 bad = 0;
  const __m512 vm = _mm512_set1_ps(mul);
  for (int i = 0; i < n; i += 16) {
    __m512 xi = _mm512_maskz_loadu_ps(lanes(n - i), x + i);
    bad |= nonfinite(xi);
    if (scaled) xi = _mm512_mul_ps(xi, vm);
    _mm512_storeu_ps(tmp + i, xi);
    m = _mm512_max_ps(m, _mm512_abs_ps(xi));
  }
  const float s = scale_from_amax(_mm512_reduce_max_ps(m));
  const __m512 vs = _mm512_set1_ps(s);
  const bool in_range = scale_normal(s);
  for (int i = 0; i < n; i += 16)
    _mm512_storeu_si512(codes + i, group_codes(_mm512_loadu_ps(tmp + i), vs, in_range));
  *scale = s;
  return bad == 0;
}

// Columns [v0, v0 + 16 NV) of the state update (masked past V: those lanes stay 0); returns
// the lanes where src held inf or NaN (checked only when src is the caller's initial state).
template <int NV, bool kCheck>
static inline __mmask16 update_block(const float* src, float* S, int K, int V, int v0, float g,
                                     const int32_t* ki, const float* vf, float skv, float* amax) {
  __m512 am[NV], vfv[NV];
  __mmask16 m[NV], bad = 0;
  for (int j = 0; j < NV; ++j) {
    am[j] = _mm512_setzero_ps();
    vfv[j] = _mm512_loadu_ps(vf + v0 + 16 * j);
    m[j] = lanes(V - v0 - 16 * j);
  }
  const __m512 vg = _mm512_set1_ps(g), vskv = _mm512_set1_ps(skv);
  for (int k = 0; k < K; ++k) {
    const __m512 kc = _mm512_set1_ps(static_cast<float>(ki[k]));
    float* row = S + static_cast<int64_t>(k) * V + v0;
    const float* old_row = src + static_cast<int64_t>(k) * V + v0;
    for (int j = 0; j < NV; ++j) {
      const __m512 old = src != nullptr ? _mm512_maskz_loadu_ps(m[j], old_row + 16 * j) : _mm512_setzero_ps();
      if (kCheck) bad |= nonfinite(_mm512_mul_ps(old, _mm512_set1_ps(kStateProbe)));
      const __m512 upd = _mm512_mul_ps(_mm512_mul_ps(kc, vfv[j]), vskv);
      const __m512 sn = _mm512_add_ps(_mm512_mul_ps(old, vg), upd);
      _mm512_mask_storeu_ps(row + 16 * j, m[j], sn);
      am[j] = _mm512_range_ps(am[j], sn, 0x0B);  // max(|am|, |sn|) in one instruction
    }
  }
  for (int j = 0; j < NV; ++j) _mm512_storeu_ps(amax + v0 + 16 * j, am[j]);
  return bad;
}

static inline bool update_state(const float* src, float* S, int K, int V, float g,
                                const int32_t* ki, const float* vf, float skv, float* amax,
                                bool check) {
  __mmask16 bad = 0;
  int v0 = 0;
  if (check && src != nullptr) {
    for (; v0 + 16 * kBlock <= V; v0 += 16 * kBlock)
      bad |= update_block<kBlock, true>(src, S, K, V, v0, g, ki, vf, skv, amax);
    for (; v0 < V; v0 += 16) bad |= update_block<1, true>(src, S, K, V, v0, g, ki, vf, skv, amax);
  } else {
    for (; v0 + 16 * kBlock <= V; v0 += 16 * kBlock)
      update_block<kBlock, false>(src, S, K, V, v0, g, ki, vf, skv, amax);
    for (; v0 < V; v0 += 16) update_block<1, false>(src, S, K, V, v0, g, ki, vf, skv, amax);
  }
  return bad == 0;
}

template <int NV>
static inline void dot_block(const float* S, int K, int V, int v0, const float* amax, float* sS,
                             const int32_t* qi, int32_t* acc) {
  __m512 sc[NV];
  __m512i ac[NV];
  __mmask16 m[NV];
  for (int j = 0; j < NV; ++j) {
    m[j] = lanes(V - v0 - 16 * j);
    sc[j] = vscale(_mm512_loadu_ps(amax + v0 + 16 * j));
    _mm512_storeu_ps(sS + v0 + 16 * j, sc[j]);
    ac[j] = _mm512_setzero_si512();
  }
  bool normal = true;
  for (int j = 0; j < NV; ++j) normal = normal && all_normal(sc[j]);
  if (normal) {
    for (int k = 0; k < K; ++k) {
      const __m512i qk = _mm512_set1_epi32(qi[k]);
      const float* row = S + static_cast<int64_t>(k) * V + v0;
      for (int j = 0; j < NV; ++j) {
        const __m512i c = vcodes_in_range(_mm512_maskz_loadu_ps(m[j], row + 16 * j), sc[j]);
        ac[j] = _mm512_add_epi32(ac[j], _mm512_mullo_epi32(c, qk));
      }
    }
  } else {
    for (int k = 0; k < K; ++k) {
      const __m512i qk = _mm512_set1_epi32(qi[k]);
      const float* row = S + static_cast<int64_t>(k) * V + v0;
      for (int j = 0; j < NV; ++j) {
        const __m512i c = vcodes(_mm512_maskz_loadu_ps(m[j], row + 16 * j), sc[j]);
        ac[j] = _mm512_add_epi32(ac[j], _mm512_mullo_epi32(c, qk));
      }
    }
  }
  for (int j = 0; j < NV; ++j) _mm512_storeu_si512(acc + v0 + 16 * j, ac[j]);
}

static inline void state_dot(const float* S, int K, int V, const float* amax, float* sS,
                             const int32_t* qi, int32_t* acc) {
  int v0 = 0;
  for (; v0 + 16 * kBlock <= V; v0 += 16 * kBlock) dot_block<kBlock>(S, K, V, v0, amax, sS, qi, acc);
  for (; v0 < V; v0 += 16) dot_block<1>(S, K, V, v0, amax, sS, qi, acc);
}
