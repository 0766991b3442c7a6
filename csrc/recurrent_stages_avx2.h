// The per-token stages of the decode kernel with AVX2 intrinsics: the float32 operations of
// recurrent_stages_portable.h, 8 lanes at a time, bit for bit. The K x V state is walked in
// blocks of kBlock vectors of columns so that the column amax and the q . S accumulators stay in
// registers; the check of the state read in is an integer max of the bits of |x| (no serial add
// chain, no compare per vector); the state's codes for q . S take two FMAs instead of a division
// (codes8_fma of quant_avx2.h).

#include "quant_avx2.h"

constexpr int kBlock = 4;
constexpr int kAhead = 8;  // rows prefetched ahead in the state update

static inline bool quant_token(const float* x, float mul, bool scaled, int n, float* tmp,
                               int32_t* codes, float* scale) {
  __m256 m = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
  const __m256 vm = _mm256_set1_ps(mul);
  for (int i = 0; i < n; i += 8) {
    __m256 xi = load8(x + i, n - i);
    bad = _mm256_or_ps(bad, nonfinite8(abs8(xi)));
    if (scaled) xi = _mm256_mul_ps(xi, vm);
    _mm256_storeu_ps(tmp + i, xi);
    m = _mm256_max_ps(m, abs8(xi));
  }
  const float s = scale_from_amax(hmax8(m));
  const Divisor8 d = divisor8(_mm256_set1_ps(s));
  for (int i = 0; i < n; i += 8)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(codes + i), codes8(_mm256_loadu_ps(tmp + i), d));
  *scale = s;
  return !any8(bad);
}

// Vector j of a block row at p: whole when the block is (kFull, the branches and masks fold
// away), else only the lanes before V (`left`: V - its first column; the rest read as 0).
template <bool kFull>
static inline __m256 block_load(const float* p, int left) {
  return kFull ? _mm256_loadu_ps(p) : load8(p, left);
}
template <bool kFull>
static inline void block_store(float* p, int left, __m256 x) {
  if (kFull || left >= 8) {
    _mm256_storeu_ps(p, x);
  } else {
    _mm256_maskstore_ps(p, lanes8(left), x);
  }
}

// Columns [v0, v0 + 8 NV) of the state update (lanes past V stay 0); returns the lanes where
// src held inf, NaN or |x| >= 2^100 (checked only when src is the caller's initial state).
template <int NV, bool kFull, bool kCheck>
static inline __m256 update_block(const float* src, float* S, int K, int V, int v0, float g,
                                  const int32_t* ki, const float* vf, float skv, float* amax) {
  __m256 am[NV], vfv[NV];
  // The largest |old| seen, as bits (a float's bits order like its magnitude, inf and NaN above
  // every finite one): one integer max per vector instead of a compare and an or.
  __m256i old_bits = _mm256_setzero_si256();
  for (int j = 0; j < NV; ++j) {
    am[j] = _mm256_setzero_ps();
    vfv[j] = _mm256_loadu_ps(vf + v0 + 8 * j);
  }
  const int left = V - v0;
  const __m256 vg = _mm256_set1_ps(g), vskv = _mm256_set1_ps(skv);
  for (int k = 0; k < K; ++k) {
    const __m256 kc = _mm256_set1_ps(static_cast<float>(ki[k]));
    float* row = S + static_cast<int64_t>(k) * V + v0;
    const float* old_row = src + static_cast<int64_t>(k) * V + v0;
    // The block's rows are V floats apart (a stride the L2 streamer ramps up on slowly): fetch
    // the ones kAhead rows on while this one computes.
    if (src != nullptr && k + kAhead < K)
      for (int j = 0; j < NV; j += 2)
        _mm_prefetch(reinterpret_cast<const char*>(old_row + kAhead * V + 8 * j), _MM_HINT_T0);
    for (int j = 0; j < NV; ++j) {
      const __m256 old = src != nullptr ? block_load<kFull>(old_row + 8 * j, left - 8 * j) : _mm256_setzero_ps();
      if (kCheck) old_bits = _mm256_max_epu32(old_bits, _mm256_castps_si256(abs8(old)));
      const __m256 upd = _mm256_mul_ps(_mm256_mul_ps(kc, vfv[j]), vskv);
      const __m256 sn = _mm256_add_ps(_mm256_mul_ps(old, vg), upd);
      block_store<kFull>(row + 8 * j, left - 8 * j, sn);
      am[j] = _mm256_max_ps(am[j], abs8(sn));
    }
  }
  for (int j = 0; j < NV; ++j) _mm256_storeu_ps(amax + v0 + 8 * j, am[j]);
  // lanes where some |old| >= kMaxStateAbs, inf or NaN (bits of |x| are below 2^31: signed compare)
  return _mm256_castsi256_ps(
      _mm256_cmpgt_epi32(old_bits, _mm256_set1_epi32(static_cast<int>(kStateLimitBits) - 1)));
}

// Rows of q . S summed in float32 before each flush to the int32 accumulators: the products of
// codes (|c| <= 127) and every partial sum are integers below kExactRows * 127^2 < 2^24, so the
// FMAs are exact and the result is the spec's integer dot, without vpmulld (2 uops, latency 10
// on Zen 3) and without converting the codes to int32.
constexpr int kExactRows = 1024;

// Rows [0, K) of q . S over columns [v0, v0 + 8 NV) into ac, S's codes by codes8_fma (kFma: every
// column's scale allows it) or by the true division. The rows are walked last to first: the
// block's 128-byte row pieces are V floats apart, so at V = 128 they fall into 16 of L1's 64
// sets and only about the last half of the rows the update just wrote are still in L1; starting
// there reads them before the rest evicts them (the sum of exact integer products does not depend
// on the order). The code path is a template argument rather than a test per row: one loop
// without the other's registers (measured 2-5 % faster per head).
template <int NV, bool kFull, bool kFma>
static inline void dot_rows(const float* S, int K, int V, int v0, const __m256* s, const __m256* r,
                            const int32_t* qi, __m256i* ac) {
  __m256 fa[NV];
  const int left = V - v0;
  for (int k1 = K; k1 > 0; k1 -= kExactRows) {
    const int k0 = k1 > kExactRows ? k1 - kExactRows : 0;
    for (int j = 0; j < NV; ++j) fa[j] = _mm256_setzero_ps();
    for (int k = k1 - 1; k >= k0; --k) {
      const __m256 qk = _mm256_set1_ps(static_cast<float>(qi[k]));
      const float* row = S + static_cast<int64_t>(k) * V + v0;
      for (int j = 0; j < NV; ++j) {
        const __m256 x = block_load<kFull>(row + 8 * j, left - 8 * j);
        const __m256 c = kFma ? codes8_fma(x, s[j], r[j]) : _mm256_cvtepi32_ps(vcodes8(x, s[j]));
        fa[j] = _mm256_fmadd_ps(c, qk, fa[j]);
      }
    }
    for (int j = 0; j < NV; ++j) ac[j] = _mm256_add_epi32(ac[j], _mm256_cvtps_epi32(fa[j]));
  }
}

// acc over columns [v0, v0 + 8 NV): S's codes per column (scales into sS) times q's codes.
template <int NV, bool kFull>
static inline void dot_block(const float* S, int K, int V, int v0, const float* amax, float* sS,
                             const int32_t* qi, int32_t* acc) {
  __m256 s[NV], r[NV];
  __m256i ac[NV];
  bool fma = true;  // every column's scale allows codes8_fma
  for (int j = 0; j < NV; ++j) {
    s[j] = vscale8(_mm256_loadu_ps(amax + v0 + 8 * j));
    _mm256_storeu_ps(sS + v0 + 8 * j, s[j]);
    r[j] = _mm256_div_ps(_mm256_set1_ps(1.f), s[j]);
    fma = fma && fma_codes_apply8(s[j]);
    ac[j] = _mm256_setzero_si256();
  }
  if (fma) {
    dot_rows<NV, kFull, true>(S, K, V, v0, s, r, qi, ac);
  } else {
    dot_rows<NV, kFull, false>(S, K, V, v0, s, r, qi, ac);
  }
  for (int j = 0; j < NV; ++j) _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc + v0 + 8 * j), ac[j]);
}

#define RQ_STAGES_FUSE_UPDATE_DOT 1

// What a pass over the blocks of columns does: the update, q . S, or both per block (the kernel).
constexpr int kPassUpdate = 1, kPassDot = 2, kPassBoth = 3;

// One block of columns: the update, then q . S while the block's rows (16 KiB at K = 128) are
// still in L1 (kPassBoth); or only one of the two (kPassUpdate / kPassDot: bench.decode_profile's
// two-pass stages, q . S then reading the amax a whole update pass left).
template <int NV, bool kFull, bool kCheck, int kPass>
static inline __m256 update_dot_block(const float* src, float* S, int K, int V, int v0, float g,
                                      const int32_t* ki, const float* vf, float skv, float* amax,
                                      float* sS, const int32_t* qi, int32_t* acc) {
  __m256 bad = _mm256_setzero_ps();
  if (kPass & kPassUpdate) bad = update_block<NV, kFull, kCheck>(src, S, K, V, v0, g, ki, vf, skv, amax);
  if (kPass & kPassDot) dot_block<NV, kFull>(S, K, V, v0, amax, sS, qi, acc);
  return bad;
}

template <bool kCheck, int kPass>
static inline bool update_dot_blocks(const float* src, float* S, int K, int V, float g,
                                     const int32_t* ki, const float* vf, float skv, float* amax,
                                     float* sS, const int32_t* qi, int32_t* acc) {
  __m256 bad = _mm256_setzero_ps();
  int v0 = 0;
  for (; v0 + 8 * kBlock <= V; v0 += 8 * kBlock)
    bad = _mm256_or_ps(bad, update_dot_block<kBlock, true, kCheck, kPass>(src, S, K, V, v0, g, ki,
                                                                         vf, skv, amax, sS, qi, acc));
  for (; v0 < V; v0 += 8)
    bad = _mm256_or_ps(bad, update_dot_block<1, false, kCheck, kPass>(src, S, K, V, v0, g, ki, vf,
                                                                     skv, amax, sS, qi, acc));
  return !any8(bad);
}

// The state update and q . S, one block of columns at a time (update_dot_block).
static inline bool update_and_dot(const float* src, float* S, int K, int V, float g,
                                  const int32_t* ki, const float* vf, float skv, float* amax,
                                  bool check, float* sS, const int32_t* qi, int32_t* acc) {
  return check && src != nullptr
             ? update_dot_blocks<true, kPassBoth>(src, S, K, V, g, ki, vf, skv, amax, sS, qi, acc)
             : update_dot_blocks<false, kPassBoth>(src, S, K, V, g, ki, vf, skv, amax, sS, qi, acc);
}

// The update alone over all of S, and q . S alone: the two passes of the portable and AVX-512
// stages, here only for bench.decode_profile (recurrent_body.h's kDecodeUpdate, kDecodeTwoPasses).
static inline bool update_state(const float* src, float* S, int K, int V, float g,
                                const int32_t* ki, const float* vf, float skv, float* amax,
                                bool check) {
  return check && src != nullptr
             ? update_dot_blocks<true, kPassUpdate>(src, S, K, V, g, ki, vf, skv, amax, nullptr, nullptr, nullptr)
             : update_dot_blocks<false, kPassUpdate>(src, S, K, V, g, ki, vf, skv, amax, nullptr, nullptr, nullptr);
}

// (S and amax are only read; non-const for update_dot_blocks' signature)
static inline void state_dot(float* S, int K, int V, float* amax, float* sS, const int32_t* qi,
                             int32_t* acc) {
  update_dot_blocks<false, kPassDot>(nullptr, S, K, V, 0.f, nullptr, nullptr, 0.f, amax, sS, qi, acc);
}
