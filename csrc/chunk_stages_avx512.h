// The per-element stages of the chunk kernel with AVX-512 intrinsics (the VNNI path): the same
// float32 operations in the same order as chunk_stages_portable.h, 16 lanes at a time, with
// masked loads and stores for widths that are not multiples of 16. Quantization, packing into
// the GEMM layouts and the column sums happen in one pass per operand.

#include "quant_avx512.h"
#include "chunk_prefetch.h"

// The A operands (qu8, pu8, kdp) hold code + 128: vpdpbusd's unsigned operand (gemm.h).
constexpr bool kSignedA = false;

// In-register transpose of a 16 x 16 matrix of 32-bit words (rows r[0..15]).
static inline void transpose16x16_epi32(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  for (int i = 0; i < 16; i += 8)
    for (int j = 0; j < 4; ++j) {
      t[i + j] = _mm512_shuffle_i32x4(r[i + j], r[i + j + 4], 0x88);
      t[i + j + 4] = _mm512_shuffle_i32x4(r[i + j], r[i + j + 4], 0xdd);
    }
  for (int j = 0; j < 8; ++j) {
    r[j] = _mm512_shuffle_i32x4(t[j], t[j + 8], 0x88);
    r[j + 8] = _mm512_shuffle_i32x4(t[j], t[j + 8], 0xdd);
  }
}

// Element types of q, k, v and o: float, or bfloat16 held as its 16 bits (exactly the upper half
// of the float32 it stands for; outputs rounded to nearest even, as torch's .to(bfloat16)).
static inline __m512 load16(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
static inline __m512 load16(const uint16_t* p, __mmask16 m) {
  const __m512i w = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}

// Output rows are not read again: full aligned vectors skip the read-for-ownership.
static inline void store16(float* p, __mmask16 m, __m512 x) {
  if (m == 0xFFFF && (reinterpret_cast<uintptr_t>(p) & 63) == 0) {
    _mm512_stream_ps(p, x);
  } else {
    _mm512_mask_storeu_ps(p, m, x);
  }
}
static inline void store16(uint16_t* p, __mmask16 m, __m512 x) {  // finite x: round half to even
  const __m512i u = _mm512_castps_si512(x);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)));
  _mm256_mask_storeu_epi16(p, m, _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16)));
}

// Codes + 128 of x[0, n_valid) / s (one row of Q or P, scale s from the row's amax) into
// dst[0, n_store); bytes in [n_valid, n_store) get 128 (code 0).
static inline void biased_codes_row(const float* x, float s, int n_valid, int n_store, uint8_t* dst) {
  const __m512 vs = _mm512_set1_ps(s);
  const bool in_range = scale_normal(s);
  const __m512i bias = _mm512_set1_epi32(128);
  for (int c = 0; c < n_store; c += 16) {
    const __mmask16 mv = lanes(n_valid - c);
    __m512i code = _mm512_setzero_si512();
    if (mv != 0) code = _mm512_maskz_mov_epi32(mv, group_codes(_mm512_loadu_ps(x + c), vs, in_range));
    _mm_mask_storeu_epi8(dst + c, lanes(n_store - c), _mm512_cvtepi32_epi8(_mm512_add_epi32(code, bias)));
  }
}

// Returns the inputs seen non-finite (kNonFiniteQ | kNonFiniteK).
template <typename T>
static inline int quant_token_rows(const T* qbase, const T* kbase, int64_t ldq, const T* vbase,
                                   int64_t ldv, int L, float scale, const float* kdec, Scratch& s) {
  const int K = s.K, K4 = s.K4, K16 = s.K16, C16 = s.C16;
  const __m512 vscale_q = _mm512_set1_ps(scale);
  for (int c = 0; c < K16; c += 16) _mm512_storeu_ps(s.kd_amax + c, _mm512_setzero_ps());
  __mmask16 bad_q = 0, bad_k = 0;
  for (int a = 0; a < L; ++a) {
    const T* qrow = qbase + a * ldq;
    const T* krow = kbase + a * ldq;
    prefetch_token_rows(qbase, kbase, ldq, vbase, ldv, a, L, s);
    // Q: scaled row and its amax, then the codes + 128.
    __m512 m = _mm512_setzero_ps();
    for (int c = 0; c < K; c += 16) {
      const __m512 raw = load16(qrow + c, lanes(K - c));
      bad_q |= nonfinite(raw);
      const __m512 x = _mm512_mul_ps(raw, vscale_q);
      _mm512_storeu_ps(s.qs + c, x);
      m = _mm512_max_ps(m, _mm512_abs_ps(x));
    }
    const float sqa = scale_from_amax(_mm512_reduce_max_ps(m));
    s.sq[a] = sqa;
    biased_codes_row(s.qs, sqa, K, K, s.qu8 + a * K4);
    // K: amax; K~ = K * kdec[a] and its column amax; then the codes and their sum.
    const __m512 f = _mm512_set1_ps(kdec[a]);
    float* kd = s.kd + a * K16;
    m = _mm512_setzero_ps();
    for (int c = 0; c < K; c += 16) {
      const __m512 x = load16(krow + c, lanes(K - c));
      bad_k |= nonfinite(x);
      m = _mm512_max_ps(m, _mm512_abs_ps(x));
      const __m512 d = _mm512_mul_ps(x, f);
      _mm512_storeu_ps(kd + c, d);
      _mm512_storeu_ps(s.kd_amax + c,
                       _mm512_max_ps(_mm512_loadu_ps(s.kd_amax + c), _mm512_abs_ps(d)));
    }
    const float ska = scale_from_amax(_mm512_reduce_max_ps(m));
    s.sk[a] = ska;
    const __m512 vsk = _mm512_set1_ps(ska);
    const bool k_in_range = scale_normal(ska);
    __m512i csum = _mm512_setzero_si512();
    int8_t* kq = s.kq + a * K16;
    for (int c = 0; c < K; c += 16) {
      const __m512i code = group_codes(load16(krow + c, lanes(K - c)), vsk, k_in_range);
      csum = _mm512_add_epi32(csum, code);
      _mm_mask_storeu_epi8(kq + c, lanes(K - c), _mm512_cvtepi32_epi8(code));
    }
    s.cs_k[a] = _mm512_reduce_add_epi32(csum);
  }
  for (int a = L; a < s.C4; ++a) std::memset(s.qu8 + a * K4, 128, K4);
  // kp[g][a] (4 bytes) = kq[a][4g .. 4g+3]: a transpose of 32-bit words, in 16 x 16 blocks in
  // registers; word columns past the last full block of 16 by gathers.
  const int G = K4 / 4;
  int g0 = 0;
  for (; g0 + 16 <= G; g0 += 16)
    for (int a0 = 0; a0 < L; a0 += 16) {
      __m512i r[16];
      for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_si512(s.kq + (a0 + i) * K16 + 4 * g0);
      transpose16x16_epi32(r);
      for (int j = 0; j < 16; ++j) _mm512_storeu_si512(s.kp + ((g0 + j) * C16 + a0) * 4, r[j]);
    }
  const __m512i rows = _mm512_mullo_epi32(
      _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32(K16));
  for (int g = g0; g < G; ++g)
    for (int a0 = 0; a0 < L; a0 += 16) {
      const __m512i w = _mm512_i32gather_epi32(rows, s.kq + a0 * K16 + 4 * g, 1);
      _mm512_storeu_si512(s.kp + (g * C16 + a0) * 4, w);
    }
  return (bad_q != 0 ? kNonFiniteQ : 0) | (bad_k != 0 ? kNonFiniteK : 0);
}

static inline void score_codes(int L, bool fused, const float* row, const float* col,
                               const float* mask, Scratch& s) {
  const int C = s.C, C4 = s.C4, C16 = s.C16;
  for (int b = 0; b < L; b += 16) {
    const __mmask16 mb = lanes(L - b);
    _mm512_storeu_ps(s.cb + b, _mm512_mul_ps(_mm512_maskz_loadu_ps(mb, s.sk + b),
                                             _mm512_maskz_loadu_ps(mb, col + b)));
  }
  for (int a = 0; a < L; ++a) {
    const int32_t* acc = s.acc_qk + a * C16;
    const int nb = a + 1;
    __m512 m = _mm512_setzero_ps();
    if (fused) {
      const __m512 ra = _mm512_set1_ps(s.sq[a] * row[a]);
      for (int b = 0; b < nb; b += 16) {
        const __mmask16 mb = lanes(nb - b);
        const __m512 x = _mm512_cvtepi32_ps(_mm512_loadu_si512(acc + b));
        const __m512 pv = _mm512_maskz_mul_ps(mb, _mm512_mul_ps(x, ra), _mm512_loadu_ps(s.cb + b));
        _mm512_storeu_ps(s.P + b, pv);
        m = _mm512_max_ps(m, _mm512_abs_ps(pv));
      }
    } else {
      const float* ma = mask + a * C;
      const __m512 sqa = _mm512_set1_ps(s.sq[a]);
      for (int b = 0; b < nb; b += 16) {
        const __mmask16 mb = lanes(nb - b);
        const __m512 x = _mm512_cvtepi32_ps(_mm512_loadu_si512(acc + b));
        const __m512 y = _mm512_mul_ps(_mm512_mul_ps(x, sqa), _mm512_loadu_ps(s.sk + b));
        const __m512 pv = _mm512_maskz_mul_ps(mb, y, _mm512_maskz_loadu_ps(mb, ma + b));
        _mm512_storeu_ps(s.P + b, pv);
        m = _mm512_max_ps(m, _mm512_abs_ps(pv));
      }
    }
    const float spa = scale_from_amax(_mm512_reduce_max_ps(m));
    s.sp[a] = spa;
    biased_codes_row(s.P, spa, nb, C4, s.pu8 + a * C4);
  }
  for (int a = L; a < C4; ++a) std::memset(s.pu8 + a * C4, 128, C4);
}

// Column amax; returns false if any element is inf or NaN.
template <typename T>
static inline bool col_amax(const T* x, int64_t ldx, int rows, int n, float* amax) {
  __mmask16 bad = 0;
  for (int c = 0; c < n; c += 16) {
    const __mmask16 mc = lanes(n - c);
    __m512 m = _mm512_setzero_ps();
    for (int r = 0; r < rows; ++r) {
      const __m512 x_rc = load16(x + r * ldx + c, mc);
      bad |= nonfinite(x_rc);
      m = _mm512_max_ps(m, _mm512_abs_ps(x_rc));
    }
    _mm512_storeu_ps(amax + c, m);
  }
  return bad == 0;
}

template <typename T>
static inline void quant_cols_packed(const T* x, int64_t ldx, int rows, int rows4, int n, int ld,
                                     const float* amax, float* scale, int8_t* dst, int32_t* colsum,
                                     int32_t* prefix, bool biased) {
  const __m512i bias = _mm512_set1_epi32(biased ? 128 : 0);
  const __m128i pad = _mm_set1_epi8(static_cast<char>(biased ? 0x80 : 0));
  for (int c = 0; c < ld; c += 16) {
    const __mmask16 mc = lanes(n - c);
    const __m512 sc = vscale(_mm512_maskz_loadu_ps(mc, amax + c));
    _mm512_storeu_ps(scale + c, sc);
    const bool in_range = all_normal(sc);
    __m512i cs = _mm512_setzero_si512();
    for (int r0 = 0; r0 < rows4; r0 += 4) {
      __m128i b[4];
      for (int i = 0; i < 4; ++i) {
        const int r = r0 + i;
        if (r < rows) {
          const __m512i code = group_codes(load16(x + r * ldx + c, mc), sc, in_range);
          cs = _mm512_add_epi32(cs, code);
          b[i] = _mm512_cvtepi32_epi8(_mm512_add_epi32(code, bias));
        } else {
          b[i] = pad;
        }
      }
      const __m128i lo01 = _mm_unpacklo_epi8(b[0], b[1]), hi01 = _mm_unpackhi_epi8(b[0], b[1]);
      const __m128i lo23 = _mm_unpacklo_epi8(b[2], b[3]), hi23 = _mm_unpackhi_epi8(b[2], b[3]);
      __m128i* d = reinterpret_cast<__m128i*>(dst + (static_cast<int64_t>(r0 / 4) * ld + c) * 4);
      _mm_storeu_si128(d + 0, _mm_unpacklo_epi16(lo01, lo23));
      _mm_storeu_si128(d + 1, _mm_unpackhi_epi16(lo01, lo23));
      _mm_storeu_si128(d + 2, _mm_unpacklo_epi16(hi01, hi23));
      _mm_storeu_si128(d + 3, _mm_unpackhi_epi16(hi01, hi23));
      if (prefix != nullptr) _mm512_storeu_si512(prefix + (r0 / 4 + 1) * ld + c, cs);
    }
    if (prefix != nullptr) _mm512_storeu_si512(prefix + c, _mm512_setzero_si512());
    if (colsum != nullptr) _mm512_storeu_si512(colsum + c, cs);
  }
}

template <typename T>
static inline void write_output(T* out, int64_t ldo, int L, const float* inter, Scratch& s) {
  const int V = s.V, V16 = s.V16;
  for (int a = 0; a < L; ++a) {
    const int32_t* apv = s.acc_pv + a * V16;
    const int32_t* aqs = s.acc_qs + a * V16;
    T* o = out + a * ldo;
    const __m512 spa = _mm512_set1_ps(s.sp[a]), qi = _mm512_set1_ps(s.sq[a] * inter[a]);
    for (int v = 0; v < V; v += 16) {
      const __m512 intra = _mm512_mul_ps(
          _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_loadu_si512(apv + v)), spa), _mm512_loadu_ps(s.sv + v));
      const __m512 inter_v = _mm512_mul_ps(
          _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_loadu_si512(aqs + v)), qi), _mm512_loadu_ps(s.sS + v));
      store16(o + v, lanes(V - v), _mm512_add_ps(intra, inter_v));
    }
  }
}

// Columns [v0, v0 + 16 NV) of the state update, rows walked inside so the column scales and the
// running column amax stay in registers. Lanes past V stay 0 (acc_kv is 0 there: V's padded
// codes are 0), so no mask is needed for the amax.
template <int NV>
static inline void update_block(float chunk_decay, int v0, Scratch& s) {
  const int K = s.K, V = s.V, V16 = s.V16;
  __m512 sv[NV], am[NV];
  __mmask16 m[NV];
  for (int j = 0; j < NV; ++j) {
    sv[j] = _mm512_loadu_ps(s.sv + v0 + 16 * j);
    am[j] = _mm512_setzero_ps();
    m[j] = lanes(V - v0 - 16 * j);
  }
  const __m512 cd = _mm512_set1_ps(chunk_decay);
  for (int k = 0; k < K; ++k) {
    const int32_t* acc = s.acc_kv + k * V16 + v0;
    float* Sk = s.S + static_cast<int64_t>(k) * V + v0;
    const __m512 sk = _mm512_set1_ps(s.skd[k]);
    for (int j = 0; j < NV; ++j) {
      const __m512 d =
          _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_loadu_si512(acc + 16 * j)), sk), sv[j]);
      const __m512 sn = _mm512_add_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m[j], Sk + 16 * j), cd), d);
      _mm512_mask_storeu_ps(Sk + 16 * j, m[j], sn);
      am[j] = _mm512_max_ps(am[j], _mm512_abs_ps(sn));
    }
  }
  for (int j = 0; j < NV; ++j) _mm512_storeu_ps(s.Samax + v0 + 16 * j, am[j]);
}

// Orders write_output's streaming stores before the caller reads the output.
static inline void finish_stores() { _mm_sfence(); }

static inline void update_state(float chunk_decay, Scratch& s) {
  int v0 = 0;
  for (; v0 + 64 <= s.V; v0 += 64) update_block<4>(chunk_decay, v0, s);
  for (; v0 < s.V; v0 += 16) update_block<1>(chunk_decay, v0, s);
}
