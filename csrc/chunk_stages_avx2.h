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

// Codes of x[0, n_valid) / s (one row of P, scale s from the row's amax) into
// dst[0, n_store); bytes in [n_valid, n_store) get code 0.
static inline void codes_row(const float* x, float s, int n_valid, int n_store, uint8_t* dst) {
  const Divisor8 d = divisor8(_mm256_set1_ps(s));
  for (int c = 0; c < n_store; c += 8) {
    __m256i code = _mm256_setzero_si256();
    if (c < n_valid) code = _mm256_and_si256(lanes8(n_valid - c), codes8(_mm256_loadu_ps(x + c), d));
    store_bytes8(dst + c, n_store - c, bytes8(code));
  }
}

// Rows per block of quant_token_rows: their amax first (no row waits on its own scale), then
// their codes, four K rows at a time (one 16-byte store per word group of kp).
constexpr int kRowBlock = 8;

// K codes of tokens a..a+n4-1 (n4 = kN when kN > 0: the full group) with scales sk[0, n4):
// 8 columns of the 4 tokens per step, the words (g, a..a+3) of kp being 16 adjacent bytes.
template <int kN, typename T>
static inline void k_codes4(const T* kbase, int64_t ldq, int a, const float* sk, Scratch& s,
                            int n4 = kN) {
  const int K = s.K, K4 = s.K4, C16 = s.C16;
  Divisor8 dd[4];
  for (int i = 0; i < 4; ++i) dd[i] = divisor8(_mm256_set1_ps(i < n4 ? sk[i] : 1.f));
  __m256i csum[4];
  for (int i = 0; i < 4; ++i) csum[i] = _mm256_setzero_si256();
  for (int c = 0; c < K4; c += 8) {  // codes past K are 0 (zero lanes): the zero padding
    __m256 x[4];
    __m256i code[4];
    for (int i = 0; i < 4; ++i)
      x[i] = (kN == 4 || i < n4) ? load8(kbase + (a + i) * ldq + c, K - c) : _mm256_setzero_ps();
    codes8x4(x, dd, code);
    for (int i = 0; i < 4; ++i) csum[i] = _mm256_add_epi32(csum[i], code[i]);
    const __m256i b = pack_codes4(code);
    int8_t* kp = s.kp + (static_cast<int64_t>(c / 4) * C16 + a) * 4;
    if (kN == 4) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(kp), _mm256_castsi256_si128(b));
      if (c + 4 < K4) _mm_storeu_si128(reinterpret_cast<__m128i*>(kp + C16 * 4), _mm256_extracti128_si256(b, 1));
    } else {
      std::memcpy(kp, &b, static_cast<size_t>(4 * n4));
      if (c + 4 < K4) {
        const __m128i hi = _mm256_extracti128_si256(b, 1);
        std::memcpy(kp + C16 * 4, &hi, static_cast<size_t>(4 * n4));
      }
    }
  }
  for (int i = 0; i < n4; ++i) s.cs_k[a + i] = hsum8(csum[i]);
}

// Q rows (times `scale`) and K rows per token: Q codes into qu8 (padding: 0, kSignedA), K
// codes straight into kp (B of Q K^T: [K4/4][C16][4], the 4-code words of 4 tokens stored
// together), their row sums into cs_k; K~ = K * kdec[j] into kd with its column amax in
// kd_amax. Returns the inputs seen non-finite (kNonFiniteQ | K).
template <typename T>
static inline int quant_token_rows(const T* qbase, const T* kbase, int64_t ldq, const T* vbase,
                                   int64_t ldv, int L, float scale, const float* kdec, Scratch& s) {
  const int K = s.K, K4 = s.K4, K16 = s.K16;
  const __m256 vscale_q = _mm256_set1_ps(scale);
  for (int c = 0; c < K16; c += 8) _mm256_storeu_ps(s.kd_amax + c, _mm256_setzero_ps());
  __m256i bits_q = _mm256_setzero_si256(), bits_k = _mm256_setzero_si256();
  alignas(32) float amax_q[kRowBlock], amax_k[kRowBlock];
  for (int a0 = 0; a0 < L; a0 += kRowBlock) {
    const int nrows = L - a0 < kRowBlock ? L - a0 : kRowBlock;
    // Pass 1: per row, the amax of |q| and |k| (as bits), K~ and its column amax.
    for (int i = 0; i < kRowBlock; ++i) {
      const int a = a0 + i;
      amax_q[i] = amax_k[i] = 0.f;
      if (i >= nrows) continue;
      const T* qrow = qbase + a * ldq;
      const T* krow = kbase + a * ldq;
      prefetch_token_rows(qbase, kbase, ldq, vbase, ldv, a, L, s);
      __m256i mq = _mm256_setzero_si256(), mk = _mm256_setzero_si256();
      const __m256 f = _mm256_set1_ps(kdec[a]);
      float* kd = s.kd + a * K16;
      for (int c = 0; c < K; c += 8) {
        mq = max_abs_bits8(mq, load8(qrow + c, K - c));
        const __m256 x = load8(krow + c, K - c);
        mk = max_abs_bits8(mk, x);
        const __m256 d = _mm256_mul_ps(x, f);
        _mm256_storeu_ps(kd + c, d);
        _mm256_storeu_ps(s.kd_amax + c, _mm256_max_ps(_mm256_loadu_ps(s.kd_amax + c), abs8(d)));
      }
      bits_q = _mm256_max_epu32(bits_q, mq);
      bits_k = _mm256_max_epu32(bits_k, mk);
      // fl(|x| * |scale|) is monotone in |x|: the amax of the scaled row from the raw amax.
      amax_q[i] = from_bits(hmax_u32(mq)) * std::fabs(scale);
      amax_k[i] = from_bits(hmax_u32(mk));
    }
    // The block's scales (8 rows per vector).
    const __m256 sq8 = vscale8(_mm256_load_ps(amax_q)), sk8 = vscale8(_mm256_load_ps(amax_k));
    alignas(32) float sq_blk[kRowBlock], sk_blk[kRowBlock];
    _mm256_store_ps(sq_blk, sq8);
    _mm256_store_ps(sk_blk, sk8);
    for (int i = 0; i < nrows; ++i) {
      s.sq[a0 + i] = sq_blk[i];
      s.sk[a0 + i] = sk_blk[i];
    }
    // Pass 2a: Q codes, 32 columns of a row per group.
    for (int i = 0; i < nrows; ++i) {
      const int a = a0 + i;
      const T* qrow = qbase + a * ldq;
      const Divisor8 d = divisor8(_mm256_set1_ps(sq_blk[i]));
      const Divisor8 dd[4] = {d, d, d, d};
      uint8_t* qu = s.qu8 + a * K4;
      for (int c0 = 0; c0 < K4; c0 += 32) {
        __m256 x[4];
        __m256i code[4];
        for (int j = 0; j < 4; ++j) {
          const int c = c0 + 8 * j;
          x[j] = c < K ? _mm256_mul_ps(load8(qrow + c, K - c), vscale_q) : _mm256_setzero_ps();
        }
        codes8x4(x, dd, code);
        // bytes in column order: dwords (0, 4, 1, 5, 2, 6, 3, 7) of the packed halves
        const __m256i b = _mm256_permutevar8x32_epi32(pack_codes4(code), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        const int left = K4 - c0;
        if (left >= 32) {
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(qu + c0), b);
        } else {
          alignas(32) uint8_t buf[32];
          _mm256_store_si256(reinterpret_cast<__m256i*>(buf), b);
          std::memcpy(qu + c0, buf, static_cast<size_t>(left));
        }
      }
    }
    // Pass 2b: K codes, 4 tokens x 8 columns per group: the words (g, a..a+3) of kp are 16
    // adjacent bytes, written in one store per word group.
    int i0 = 0;
    for (; i0 + 4 <= nrows; i0 += 4) k_codes4<4>(kbase, ldq, a0 + i0, sk_blk + i0, s);
    if (i0 < nrows) k_codes4<0>(kbase, ldq, a0 + i0, sk_blk + i0, s, nrows - i0);
  }
  for (int a = L; a < s.C4; ++a) std::memset(s.qu8 + a * K4, 0, K4);
  return (hmax_u32(bits_q) >= kInfBits ? kNonFiniteQ : 0) | (hmax_u32(bits_k) >= kInfBits ? kNonFiniteK : 0);
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
// (row r0 + i in byte i), so 8 columns x 4 rows are one 32-byte store: the rows' codes packed
// to bytes (row-major per 128-bit half) and each half's 4 x 4 bytes transposed by one shuffle.
// 16 columns (a cache line of a float row) per pass: the rows are a power-of-two stride apart and
// map to few L1 sets, so a line's second half would be evicted before a later pass came back
// for it. ld is a multiple of 16.
template <typename T>
static inline void quant_cols_packed(const T* x, int64_t ldx, int rows, int rows4, int n, int ld,
                                     const float* amax, float* scale, int8_t* dst, int32_t* colsum,
                                     int32_t* prefix, bool biased) {
  // byte 4 c + r of each half <- byte 4 r + c (4 rows x 4 columns -> 4 columns x 4 rows)
  const __m256i transpose = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,
                                             0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  const __m256i bias = _mm256_set1_epi8(biased ? static_cast<char>(0x80) : 0);  // code + 128
  for (int c0 = 0; c0 < ld; c0 += 16) {
    Divisor8 d[2];
    __m256i cs[2];
    for (int h = 0; h < 2; ++h) {
      const int c = c0 + 8 * h;
      const __m256 sc = vscale8(load8(amax + c, n - c));  // columns past n: amax 0, scale 1
      _mm256_storeu_ps(scale + c, sc);
      d[h] = divisor8(sc);
      cs[h] = _mm256_setzero_si256();
    }
    // The common case: 16 real columns with normal scales, whole groups of 4 rows.
    const bool fast_cols = n - c0 >= 16 && d[0].in_range && d[1].in_range;
    for (int r0 = 0; r0 < rows4; r0 += 4) {
      const bool fast = fast_cols && r0 + 4 <= rows;
      for (int h = 0; h < 2; ++h) {
        const int c = c0 + 8 * h;
        __m256 xv[4];
        __m256i code[4];
        if (fast) {
          for (int i = 0; i < 4; ++i) xv[i] = load8(x + (r0 + i) * ldx + c, 8);
          // codes8x4 with the scales' range test hoisted out of the row loop (fast_cols)
          const __m256 r[4] = {d[h].r, d[h].r, d[h].r, d[h].r};
          if (!codes8x4_fast(xv, r, code))
            for (int i = 0; i < 4; ++i) code[i] = vcodes8_in_range(xv[i], d[h].s);
        } else {  // rows past `rows`: x = 0, code 0
          for (int i = 0; i < 4; ++i)
            code[i] = r0 + i < rows ? codes8(load8(x + (r0 + i) * ldx + c, n - c), d[h]) : _mm256_setzero_si256();
        }
        for (int i = 0; i < 4; ++i) cs[h] = _mm256_add_epi32(cs[h], code[i]);
        // half 0 of the shuffled bytes holds the words of columns c..c+3, half 1 of c+4..c+7
        const __m256i w = _mm256_xor_si256(_mm256_shuffle_epi8(pack_codes4(code), transpose), bias);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + (static_cast<int64_t>(r0 / 4) * ld + c) * 4), w);
        if (prefix != nullptr)
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(prefix + (r0 / 4 + 1) * ld + c), cs[h]);
      }
    }
    for (int h = 0; h < 2; ++h) {
      const int c = c0 + 8 * h;
      if (prefix != nullptr) _mm256_storeu_si256(reinterpret_cast<__m256i*>(prefix + c), _mm256_setzero_si256());
      if (colsum != nullptr) _mm256_storeu_si256(reinterpret_cast<__m256i*>(colsum + c), cs[h]);
    }
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
