// The per-element stages of the chunk kernel with AVX2 intrinsics (the AVX2 path): the same
// float32 operations in the same order as chunk_stages_portable.h, 8 lanes at a time, with the
// passes fused as in chunk_stages_avx512.h (quantization, packing into the GEMM layouts and the
// column sums in one pass per operand). Lanes past a row's end are loaded as 0 (masked loads)
// or computed and then cleared, so the integer results are those of the other paths.

#include "quant_avx2.h"
#include "chunk_prefetch.h"

// Output rows are not read again: full aligned vectors skip the read-for-ownership.
static inline void store8(float* p, int n, __m256 x) {
  if (n >= 8) {
    if ((reinterpret_cast<uintptr_t>(p) & 31) == 0) {
      _mm256_stream_ps(p, x);
    } else {
      _mm256_storeu_ps(p, x);
    }
  } else if (n > 0) {
    _mm256_maskstore_ps(p, lanes8(n), x);
  }
}

// bfloat16 out: round to nearest even (finite x; non-finite inputs raise upstream).
static inline void store8(uint16_t* p, int n, __m256 x) {
  const __m256i u = _mm256_castps_si256(x);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF))), 16);
  const __m128i h = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
  if (n >= 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), h);
  } else if (n > 0) {
    uint16_t buf[8];
    _mm_storeu_si128(reinterpret_cast<__m128i*>(buf), h);
    std::memcpy(p, buf, static_cast<size_t>(n) * 2);
  }
}

// The A operands of this path hold the codes themselves, not code + 128 (GemmArgs::a_signed:
// one vpxor less per A broadcast in gemm_avx2); their padding is code 0, i.e. byte 0.
constexpr bool kSignedA = true;

// Codes of x[0, n_valid) / s (one row of Q or P, scale s from the row's amax) into
// dst[0, n_store); bytes in [n_valid, n_store) get code 0.
static inline void codes_row(const float* x, float s, int n_valid, int n_store, uint8_t* dst) {
  const Divisor8 d = divisor8(_mm256_set1_ps(s));
  for (int c = 0; c < n_store; c += 8) {
    __m256i code = _mm256_setzero_si256();
    if (c < n_valid) code = _mm256_and_si256(lanes8(n_valid - c), codes8(_mm256_loadu_ps(x + c), d));
    store_bytes8(dst + c, n_store - c, bytes8(code));
  }
}

// Q rows (times `scale`) and K rows per token: Q codes into qu8 (padding: 0, kSignedA), K
// codes straight into kp (B of Q K^T: [K4/4][C16][4], each 4-code word stored to its token's
// slot, no token-major copy to transpose), their row sums into cs_k; K~ = K * kdec[j] into kd
// with its column amax in kd_amax. Returns the inputs seen non-finite (kNonFiniteQ | K).
template <typename T>
static inline int quant_token_rows(const T* qbase, const T* kbase, int64_t ldq, const T* vbase,
                                   int64_t ldv, int L, float scale, const float* kdec, Scratch& s) {
  const int K = s.K, K4 = s.K4, K16 = s.K16, C16 = s.C16, V = s.V;
  const __m256 vscale_q = _mm256_set1_ps(scale);
  for (int c = 0; c < K16; c += 8) _mm256_storeu_ps(s.kd_amax + c, _mm256_setzero_ps());
  __m256 bad_q = _mm256_setzero_ps(), bad_k = _mm256_setzero_ps();
  for (int a = 0; a < L; ++a) {
    const T* qrow = qbase + a * ldq;
    const T* krow = kbase + a * ldq;
    if (a + 4 < L) {
      prefetch_row(qrow + 4 * ldq, K);
      prefetch_row(krow + 4 * ldq, K);
    }
    prefetch_row(vbase + a * ldv, V);  // V is read right after this stage
    if (a < s.pf_rows) {
      prefetch_row_l2(static_cast<const T*>(s.pf_q) + a * ldq, K);
      prefetch_row_l2(static_cast<const T*>(s.pf_k) + a * ldq, K);
      prefetch_row_l2(static_cast<const T*>(s.pf_v) + a * ldv, V);
    }
    // Q: scaled row and its amax, then the codes (over K4 bytes: the reduction's zero padding).
    __m256 m = _mm256_setzero_ps();
    for (int c = 0; c < K; c += 8) {
      const __m256 raw = load8(qrow + c, K - c);
      bad_q = _mm256_or_ps(bad_q, nonfinite8(abs8(raw)));
      const __m256 x = _mm256_mul_ps(raw, vscale_q);
      _mm256_storeu_ps(s.qs + c, x);
      m = _mm256_max_ps(m, abs8(x));
    }
    const float sqa = scale_from_amax(hmax8(m));
    s.sq[a] = sqa;
    codes_row(s.qs, sqa, K, K4, s.qu8 + a * K4);
    // K: amax; K~ = K * kdec[a] and its column amax; then the codes and their sum.
    const __m256 f = _mm256_set1_ps(kdec[a]);
    float* kd = s.kd + a * K16;
    m = _mm256_setzero_ps();
    for (int c = 0; c < K; c += 8) {
      const __m256 x = load8(krow + c, K - c);
      const __m256 ax = abs8(x);
      bad_k = _mm256_or_ps(bad_k, nonfinite8(ax));
      m = _mm256_max_ps(m, ax);
      const __m256 d = _mm256_mul_ps(x, f);
      _mm256_storeu_ps(kd + c, d);
      _mm256_storeu_ps(s.kd_amax + c, _mm256_max_ps(_mm256_loadu_ps(s.kd_amax + c), abs8(d)));
    }
    const float ska = scale_from_amax(hmax8(m));
    s.sk[a] = ska;
    const Divisor8 dk = divisor8(_mm256_set1_ps(ska));
    __m256i csum = _mm256_setzero_si256();
    int32_t* kp = reinterpret_cast<int32_t*>(s.kp) + a;  // word (g, a) at kp[g * C16]
    for (int c = 0; c < K4; c += 8) {  // codes past K are 0 (zero lanes): the zero padding
      const __m256i code = codes8(load8(krow + c, K - c), dk);
      csum = _mm256_add_epi32(csum, code);
      const __m128i b = bytes8(code);
      kp[(c / 4) * C16] = _mm_cvtsi128_si32(b);
      if (c + 4 < K4) kp[(c / 4 + 1) * C16] = _mm_extract_epi32(b, 1);
    }
    s.cs_k[a] = hsum8(csum);
  }
  for (int a = L; a < s.C4; ++a) std::memset(s.qu8 + a * K4, 0, K4);
  return (any8(bad_q) ? kNonFiniteQ : 0) | (any8(bad_k) ? kNonFiniteK : 0);
}

// The fused-decay epilogue of acc = Q K^T and the per-row quantization of the scores P into
// pu8 (codes; columns past the diagonal and padded rows: 0).
static inline void score_codes(int L, bool fused, const float* row, const float* col,
                               const float* mask, Scratch& s) {
  const int C = s.C, C4 = s.C4, C16 = s.C16;
  for (int b = 0; b < L; b += 8)
    _mm256_storeu_ps(s.cb + b, _mm256_mul_ps(load8(s.sk + b, L - b), load8(col + b, L - b)));
  for (int a = 0; a < L; ++a) {
    const int32_t* acc = s.acc_qk + a * C16;
    const int nb = a + 1;
    __m256 m = _mm256_setzero_ps();
    if (fused) {
      const __m256 ra = _mm256_set1_ps(s.sq[a] * row[a]);
      for (int b = 0; b < nb; b += 8) {
        const __m256 x = _mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(acc + b)));
        const __m256 y = _mm256_mul_ps(_mm256_mul_ps(x, ra), _mm256_loadu_ps(s.cb + b));
        const __m256 pv = _mm256_and_ps(y, _mm256_castsi256_ps(lanes8(nb - b)));  // causal mask
        _mm256_storeu_ps(s.P + b, pv);
        m = _mm256_max_ps(m, abs8(pv));
      }
    } else {
      const float* ma = mask + a * C;
      const __m256 sqa = _mm256_set1_ps(s.sq[a]);
      for (int b = 0; b < nb; b += 8) {
        const __m256 x = _mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(acc + b)));
        const __m256 y = _mm256_mul_ps(_mm256_mul_ps(x, sqa), _mm256_loadu_ps(s.sk + b));
        const __m256 pv = _mm256_mul_ps(y, load8(ma + b, nb - b));
        const __m256 pm = _mm256_and_ps(pv, _mm256_castsi256_ps(lanes8(nb - b)));
        _mm256_storeu_ps(s.P + b, pm);
        m = _mm256_max_ps(m, abs8(pm));
      }
    }
    const float spa = scale_from_amax(hmax8(m));
    s.sp[a] = spa;
    codes_row(s.P, spa, nb, C4, s.pu8 + a * C4);
  }
  for (int a = L; a < C4; ++a) std::memset(s.pu8 + a * C4, 0, C4);
}

// amax over `rows` rows of columns [c0, c0 + 8 NV), rows walked inside so the NV running maxima
// stay in registers; lanes past n are 0. Returns the lanes seen inf or NaN.
template <int NV, typename T>
static inline __m256 col_amax_block(const T* x, int64_t ldx, int rows, int n, int c0, float* amax) {
  __m256 m[NV], bad = _mm256_setzero_ps();
  for (int j = 0; j < NV; ++j) m[j] = _mm256_setzero_ps();
  for (int r = 0; r < rows; ++r)
    for (int j = 0; j < NV; ++j) {
      const __m256 ax = abs8(load8(x + r * ldx + c0 + 8 * j, n - c0 - 8 * j));
      bad = _mm256_or_ps(bad, nonfinite8(ax));
      m[j] = _mm256_max_ps(m[j], ax);
    }
  for (int j = 0; j < NV; ++j) _mm256_storeu_ps(amax + c0 + 8 * j, m[j]);
  return bad;
}

// Column amax (written up to n rounded up to 8); returns false if any element is inf or NaN.
template <typename T>
static inline bool col_amax(const T* x, int64_t ldx, int rows, int n, float* amax) {
  __m256 bad = _mm256_setzero_ps();
  int c = 0;
  for (; c + 32 <= n; c += 32) bad = _mm256_or_ps(bad, col_amax_block<4>(x, ldx, rows, n, c, amax));
  for (; c < n; c += 8) bad = _mm256_or_ps(bad, col_amax_block<1>(x, ldx, rows, n, c, amax));
  return !any8(bad);
}

// Per-column quantization into the packed layout [rows4/4][ld][4] (see chunk_stages_portable.h
// for the contract). The four codes of one column in a group of 4 rows become one int32 word
// (row r0 + i in byte i), so 8 columns x 4 rows are one 32-byte store.
template <typename T>
static inline void quant_cols_packed(const T* x, int64_t ldx, int rows, int rows4, int n, int ld,
                                     const float* amax, float* scale, int8_t* dst, int32_t* colsum,
                                     int32_t* prefix, bool biased) {
  const __m256i bias = _mm256_set1_epi32(biased ? 128 : 0), low = _mm256_set1_epi32(0xFF);
  for (int c = 0; c < ld; c += 8) {
    const __m256 sc = vscale8(load8(amax + c, n - c));  // columns past n: amax 0, scale 1
    _mm256_storeu_ps(scale + c, sc);
    const Divisor8 d = divisor8(sc);
    __m256i cs = _mm256_setzero_si256();
    for (int r0 = 0; r0 < rows4; r0 += 4) {
      __m256i w = _mm256_setzero_si256();
      for (int i = 0; i < 4; ++i) {
        __m256i code = _mm256_setzero_si256();
        if (r0 + i < rows) {
          code = codes8(load8(x + (r0 + i) * ldx + c, n - c), d);
          cs = _mm256_add_epi32(cs, code);
        }
        const __m256i byte = _mm256_and_si256(_mm256_add_epi32(code, bias), low);
        w = _mm256_or_si256(w, _mm256_slli_epi32(byte, 8 * i));
      }
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + (static_cast<int64_t>(r0 / 4) * ld + c) * 4), w);
      if (prefix != nullptr)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(prefix + (r0 / 4 + 1) * ld + c), cs);
    }
    if (prefix != nullptr) _mm256_storeu_si256(reinterpret_cast<__m256i*>(prefix + c), _mm256_setzero_si256());
    if (colsum != nullptr) _mm256_storeu_si256(reinterpret_cast<__m256i*>(colsum + c), cs);
  }
}

// O = (acc_pv * s_p) * s_v + (acc_qs * (s_q * g^(a+1))) * s_S for the L rows of the chunk.
template <typename T>
static inline void write_output(T* out, int64_t ldo, int L, const float* inter, Scratch& s) {
  const int V = s.V, V16 = s.V16;
  for (int a = 0; a < L; ++a) {
    const int32_t* apv = s.acc_pv + a * V16;
    const int32_t* aqs = s.acc_qs + a * V16;
    T* o = out + a * ldo;
    const __m256 spa = _mm256_set1_ps(s.sp[a]), qi = _mm256_set1_ps(s.sq[a] * inter[a]);
    for (int v = 0; v < V; v += 8) {
      const __m256 pv = _mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(apv + v)));
      const __m256 qs = _mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(aqs + v)));
      const __m256 intra = _mm256_mul_ps(_mm256_mul_ps(pv, spa), _mm256_loadu_ps(s.sv + v));
      const __m256 inter_v = _mm256_mul_ps(_mm256_mul_ps(qs, qi), _mm256_loadu_ps(s.sS + v));
      store8(o + v, V - v, _mm256_add_ps(intra, inter_v));
    }
  }
}

// Orders write_output's streaming stores before the caller reads the output.
static inline void finish_stores() { _mm_sfence(); }

// Columns [v0, v0 + 8 NV) of S = S * g^L + (acc_kv * s_K~[k]) * s_v[v], rows walked inside so
// the column scales and the running column amax stay in registers. Lanes past V stay 0 (acc_kv
// is 0 there: V's padded codes are 0, and S is loaded masked).
template <int NV>
static inline void update_block(float chunk_decay, int v0, Scratch& s) {
  const int K = s.K, V = s.V, V16 = s.V16;
  __m256 sv[NV], am[NV];
  for (int j = 0; j < NV; ++j) {
    sv[j] = _mm256_loadu_ps(s.sv + v0 + 8 * j);
    am[j] = _mm256_setzero_ps();
  }
  const __m256 cd = _mm256_set1_ps(chunk_decay);
  for (int k = 0; k < K; ++k) {
    const int32_t* acc = s.acc_kv + k * V16 + v0;
    float* Sk = s.S + static_cast<int64_t>(k) * V + v0;
    const __m256 sk = _mm256_set1_ps(s.skd[k]);
    for (int j = 0; j < NV; ++j) {
      const __m256 x = _mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(acc + 8 * j)));
      const __m256 d = _mm256_mul_ps(_mm256_mul_ps(x, sk), sv[j]);
      const int left = V - v0 - 8 * j;
      const __m256 sn = _mm256_add_ps(_mm256_mul_ps(load8(Sk + 8 * j, left), cd), d);
      if (left >= 8) {
        _mm256_storeu_ps(Sk + 8 * j, sn);
      } else {
        _mm256_maskstore_ps(Sk + 8 * j, lanes8(left), sn);
      }
      am[j] = _mm256_max_ps(am[j], abs8(sn));
    }
  }
  for (int j = 0; j < NV; ++j) _mm256_storeu_ps(s.Samax + v0 + 8 * j, am[j]);
}

static inline void update_state(float chunk_decay, Scratch& s) {
  int v0 = 0;
  for (; v0 + 32 <= s.V; v0 += 32) update_block<4>(chunk_decay, v0, s);
  for (; v0 < s.V; v0 += 8) update_block<1>(chunk_decay, v0, s);
}
