// The per-element stages of the chunk kernel in plain C++ (the portable path; the compiler
// vectorizes what it can for the baseline ISA). chunk_stages_avx2.h and chunk_stages_avx512.h
// hold the same stages with AVX2 and AVX-512 intrinsics; all must produce identical bytes (the
// tests compare each with the spec).

// The A operands (qu8, pu8, kdp) hold code + 128 (gemm.h), as gemm_portable reads them.
constexpr bool kSignedA = false;

// Element types of q, k, v and o: float, or bfloat16 (to_f32 / put).
#include "bf16_scalar.h"

// max |x[i]| over n floats (integer max of the magnitudes' bits: vectorizes, see quant.h).
static inline float row_amax(const float* x, int n) {
  uint32_t m = 0;
  for (int i = 0; i < n; ++i) {
    const uint32_t a = abs_bits(x[i]);
    m = a > m ? a : m;
  }
  return from_bits(m);
}

// Q rows (times `scale`) and K rows per token: Q codes + 128 into qu8 (padded rows: 128), K codes
// into kq (token-major) and kp (B of Q K^T: [K4/4][C16][4]), their row sums into cs_k;
// K~ = K * kdec[j] into kd with its column amax in kd_amax. vbase/ldv: unused here (prefetch).
// Returns the inputs seen non-finite (kNonFiniteQ | kNonFiniteK).
template <typename T>
static inline int quant_token_rows(const T* qbase, const T* kbase, int64_t ldq, const T* vbase,
                                   int64_t ldv, int L, float scale, const float* kdec, Scratch& s) {
  (void)vbase;
  (void)ldv;
  const int K = s.K, K4 = s.K4, K16 = s.K16, C16 = s.C16;
  for (int k = 0; k < K; ++k) s.kd_amax[k] = 0.f;
  uint32_t bad_q = 0, bad_k = 0;
  for (int a = 0; a < L; ++a) {
    const T* qrow = qbase + a * ldq;
    float* krow = s.kd + a * K16;  // K's row as float32, overwritten by K~ below
    for (int k = 0; k < K; ++k) {
      krow[k] = to_f32(kbase[a * ldq + k]);
      bad_q |= abs_bits(to_f32(qrow[k])) >= kInfBits;
      bad_k |= abs_bits(krow[k]) >= kInfBits;
    }
    for (int k = 0; k < K; ++k) s.qs[k] = to_f32(qrow[k]) * scale;
    const float sqa = scale_from_amax(row_amax(s.qs, K));
    const float ska = scale_from_amax(row_amax(krow, K));
    s.sq[a] = sqa;
    s.sk[a] = ska;
    uint8_t* qu = s.qu8 + a * K4;
    for (int k = 0; k < K; ++k) qu[k] = quant_u8(s.qs[k], sqa);
    int8_t* kq = s.kq + a * K16;
    int32_t csum = 0;
    for (int k = 0; k < K; ++k) {
      const int c = quant_code(krow[k], ska);
      kq[k] = static_cast<int8_t>(c);
      csum += c;
    }
    s.cs_k[a] = csum;
    for (int g = 0; g < K4 / 4; ++g) std::memcpy(s.kp + (g * C16 + a) * 4, kq + 4 * g, 4);
    float* kd = krow;
    const float f = kdec[a];
    for (int k = 0; k < K; ++k) {
      kd[k] = krow[k] * f;
      const float m = std::fabs(kd[k]);
      s.kd_amax[k] = m > s.kd_amax[k] ? m : s.kd_amax[k];
    }
  }
  for (int a = L; a < s.C4; ++a) std::memset(s.qu8 + a * K4, 128, K4);
  return (bad_q != 0 ? kNonFiniteQ : 0) | (bad_k != 0 ? kNonFiniteK : 0);
}

// The fused-decay epilogue of acc = Q K^T and the per-row quantization of the scores P into
// pu8 (codes + 128; columns past the diagonal and padded rows: 128).
static inline void score_codes(int L, bool fused, const float* row, const float* col,
                               const float* mask, Scratch& s) {
  const int C = s.C, C4 = s.C4, C16 = s.C16;
  for (int b = 0; b < L; ++b) s.cb[b] = s.sk[b] * col[b];
  for (int a = 0; a < L; ++a) {
    const int32_t* acc = s.acc_qk + a * C16;
    float* P = s.P;
    const int nb = a + 1;
    if (fused) {
      const float ra = s.sq[a] * row[a];
      for (int b = 0; b < nb; ++b) P[b] = (static_cast<float>(acc[b]) * ra) * s.cb[b];
    } else {
      const float* ma = mask + a * C;
      const float sqa = s.sq[a];
      for (int b = 0; b < nb; ++b) P[b] = ((static_cast<float>(acc[b]) * sqa) * s.sk[b]) * ma[b];
    }
    const float spa = scale_from_amax(row_amax(P, nb));
    s.sp[a] = spa;
    uint8_t* pu = s.pu8 + a * C4;
    for (int b = 0; b < nb; ++b) pu[b] = quant_u8(P[b], spa);
    for (int b = nb; b < C4; ++b) pu[b] = 128;
  }
  for (int a = L; a < C4; ++a) std::memset(s.pu8 + a * C4, 128, C4);
}

// amax over `rows` rows (stride ldx) of each of n columns; false if any element is inf or NaN.
template <typename T>
static inline bool col_amax(const T* x, int64_t ldx, int rows, int n, float* amax) {
  uint32_t bad = 0;
  for (int c = 0; c < n; ++c) amax[c] = 0.f;
  for (int r = 0; r < rows; ++r) {
    const T* xr = x + r * ldx;
    for (int c = 0; c < n; ++c) {
      const uint32_t a = abs_bits(to_f32(xr[c]));
      bad |= a >= kInfBits;
      amax[c] = from_bits(a) > amax[c] ? from_bits(a) : amax[c];
    }
  }
  return bad == 0;
}

// Per-column quantization of rows [0, rows) of x (stride ldx, n columns; scale[c] from amax[c])
// into the packed layout [rows4/4][ld][4] (element (r, c) at ((r/4)*ld + c)*4 + r%4). Rows
// [rows, rows4) and columns [n, ld) get code 0. biased: store code + 128 (an A operand);
// colsum (if not null): column sums of the codes (a B operand); prefix (if not null, with
// colsum): [rows4/4 + 1][ld] column sums over the first 4i rows.
template <typename T>
static inline void quant_cols_packed(const T* x, int64_t ldx, int rows, int rows4, int n, int ld,
                                     const float* amax, float* scale, int8_t* dst, int32_t* colsum,
                                     int32_t* prefix, bool biased) {
  const int bias = biased ? 128 : 0;
  for (int c = 0; c < n; ++c) scale[c] = scale_from_amax(amax[c]);
  if (colsum != nullptr)
    for (int c = 0; c < ld; ++c) colsum[c] = 0;
  if (prefix != nullptr)
    for (int c = 0; c < ld; ++c) prefix[c] = 0;
  const int8_t pad = static_cast<int8_t>(static_cast<uint8_t>(bias));  // code 0
  for (int r = 0; r < rows4; ++r) {
    int8_t* d = dst + (r / 4) * ld * 4 + r % 4;
    // (the padding tests hoisted out of the column loops: branch-free loops vectorize)
    const int nc = r < rows ? n : 0;
    const T* xr = x + r * ldx;
    for (int c = 0; c < nc; ++c) {
      const int code = quant_code(to_f32(xr[c]), scale[c]);
      if (colsum != nullptr) colsum[c] += code;
      d[4 * c] = static_cast<int8_t>(static_cast<uint8_t>(code + bias));
    }
    for (int c = nc; c < ld; ++c) d[4 * c] = pad;
    if (prefix != nullptr && r % 4 == 3)
      for (int c = 0; c < ld; ++c) prefix[(r / 4 + 1) * ld + c] = colsum[c];
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
    const float spa = s.sp[a], qi = s.sq[a] * inter[a];
    for (int v = 0; v < V; ++v) {
      const float intra = (static_cast<float>(apv[v]) * spa) * s.sv[v];
      const float inter_v = (static_cast<float>(aqs[v]) * qi) * s.sS[v];
      put(o + v, intra + inter_v);
    }
  }
}

// (write_output uses plain stores here: nothing to order.)
static inline void finish_stores() {}

// S = S * g^L + (acc_kv * s_K~[k]) * s_v[v], taking the new state's column amax as it is written.
static inline void update_state(float chunk_decay, Scratch& s) {
  const int K = s.K, V = s.V, V16 = s.V16;
  float* Samax = s.Samax;
  for (int v = 0; v < V; ++v) Samax[v] = 0.f;
  for (int k = 0; k < K; ++k) {
    const int32_t* acc = s.acc_kv + k * V16;
    float* Sk = s.S + k * V;
    const float sk = s.skd[k];
    for (int v = 0; v < V; ++v) {
      const float d = (static_cast<float>(acc[v]) * sk) * s.sv[v];
      const float sn = Sk[v] * chunk_decay + d;
      Sk[v] = sn;
      const float a = std::fabs(sn);
      Samax[v] = a > Samax[v] ? a : Samax[v];
    }
  }
}
