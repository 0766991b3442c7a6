// The per-(sequence, head) chunk loop, compiled twice: once for the baseline ISA (portable path)
// and once with the AVX-512 target (the VNNI path), by chunk_portable.cpp / chunk_avx512.cpp,
// each of which defines RQ_BODY_NS and RQ_GEMM before including this file. Only C functions and
// SSE2 intrinsics are used here (no std:: templates), so the two copies share no inline code.
//
// Follows retquant/ops/retention/int_chunk.py (default int8 config) step by step, in the spec's
// float32 operation order, so the integer accumulators are identical and the outputs match:
//   Q, K per token; V per channel of the chunk; acc = Q K^T with the fused-decay epilogue;
//   P per row; O = P V (intra) + (Q S_{i-1}) (inter, S per column); S = S * g^L + K~^T V.

namespace retquant {
namespace RQ_BODY_NS {

#include "quant.h"

// Interleave four int8 rows into the [n][4] packed layout of gemm.h (n multiple of 16).
static inline void pack4(const int8_t* r0, const int8_t* r1, const int8_t* r2, const int8_t* r3,
                         int n, int8_t* dst) {
  for (int i = 0; i < n; i += 16) {
    const __m128i a0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(r0 + i));
    const __m128i a1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(r1 + i));
    const __m128i a2 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(r2 + i));
    const __m128i a3 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(r3 + i));
    const __m128i lo01 = _mm_unpacklo_epi8(a0, a1), hi01 = _mm_unpackhi_epi8(a0, a1);
    const __m128i lo23 = _mm_unpacklo_epi8(a2, a3), hi23 = _mm_unpackhi_epi8(a2, a3);
    __m128i* d = reinterpret_cast<__m128i*>(dst + 4 * i);
    _mm_storeu_si128(d + 0, _mm_unpacklo_epi16(lo01, lo23));
    _mm_storeu_si128(d + 1, _mm_unpackhi_epi16(lo01, lo23));
    _mm_storeu_si128(d + 2, _mm_unpacklo_epi16(hi01, hi23));
    _mm_storeu_si128(d + 3, _mm_unpackhi_epi16(hi01, hi23));
  }
}

// Quantize rows [0, rows) of x (row stride ldx, n columns) with one scale per column into
// row-major int8 codes (row stride ldq); column sums of the codes into colsum[0, n).
static inline void quant_cols(const float* x, int ldx, int rows, int n, const float* scale,
                              int8_t* codes, int ldq, int32_t* colsum) {
  for (int c = 0; c < n; ++c) colsum[c] = 0;
  for (int r = 0; r < rows; ++r) {
    const float* xr = x + static_cast<int64_t>(r) * ldx;
    int8_t* qr = codes + r * ldq;
    for (int c = 0; c < n; ++c) {
      const int code = quant_code(xr[c], scale[c]);
      qr[c] = static_cast<int8_t>(code);
      colsum[c] += code;
    }
  }
}

// amax over rows of each column.
static inline void col_amax(const float* x, int64_t ldx, int rows, int n, float* amax) {
  for (int c = 0; c < n; ++c) amax[c] = 0.f;
  for (int r = 0; r < rows; ++r) {
    const float* xr = x + r * ldx;
    for (int c = 0; c < n; ++c) {
      const float a = std::fabs(xr[c]);
      amax[c] = a > amax[c] ? a : amax[c];
    }
  }
}

// max |x[i]|: 16 independent lanes so the loop vectorizes (max is exact in any order).
static inline float row_amax(const float* x, int n) {
  float lane[16] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  int i = 0;
  for (; i + 16 <= n; i += 16)
    for (int l = 0; l < 16; ++l) {
      const float a = std::fabs(x[i + l]);
      lane[l] = a > lane[l] ? a : lane[l];
    }
  float m = 0.f;
  for (; i < n; ++i) {
    const float a = std::fabs(x[i]);
    m = a > m ? a : m;
  }
  for (int l = 0; l < 16; ++l) m = lane[l] > m ? lane[l] : m;
  return m;
}

// Prefetch one token row of n floats (the rows of a chunk are H * D floats apart).
static inline void prefetch_row(const float* x, int n) {
  for (int i = 0; i < n; i += 16) __builtin_prefetch(x + i);
}

// Scratch laid out in one malloc'd arena, sized for (C, K, V).
struct Scratch {
  int C, K, V, K4, V16, C4, C16;
  float *qs, *kd, *sq, *sk, *sp, *sv, *sS, *skd, *amax, *P;
  float* S;  // the current head's carried state (owned by run_tasks)
  float* Samax;  // its per-column amax, kept current by the state update (owned by run_tasks)
  uint8_t *qu8, *pu8, *kdp, *kdu8;  // kdp: K~ codes, 4 token rows interleaved
  int8_t *kq, *kp, *vq, *vp, *Sq, *Sp;
  int32_t *cs_k, *cs_v, *cs_s, *acc_qk, *acc_pv, *acc_qs, *acc_kv;
  void* arena;
};

static inline bool scratch_init(Scratch& s, int C, int K, int V) {
  s.C = C; s.K = K; s.V = V;
  s.K4 = round_up(K, 4); s.V16 = round_up(V, 16); s.C4 = round_up(C, 4); s.C16 = round_up(C, 16);
  const int64_t K16 = round_up(K, 16), W = s.V16 > K16 ? s.V16 : K16;
  const int64_t f32 = 2LL * s.C4 * K16 + 3LL * s.C16 + 4 * W + s.K4 + s.C4 * s.C16;
  const int64_t u8 = 1LL * s.C4 * s.K4 + s.C4 * s.C4 + s.C4 * K16 + s.C4 * K16 +
                     1LL * s.C16 * K16 + s.K4 * s.C16 + 2LL * s.C4 * s.V16 + 2LL * s.K4 * s.V16 + 64;
  const int64_t i32 = 2LL * W + s.C16 + s.C4 * s.C16 + 2LL * s.C4 * s.V16 + s.K4 * s.V16 + 64;
  const int64_t bytes = 4 * f32 + u8 + 4 * i32 + 64 * 32;  // + 64-byte rounding of each take
  s.arena = std::calloc(static_cast<size_t>(bytes), 1);
  if (s.arena == nullptr) return false;
  char* p = static_cast<char*>(s.arena);
  auto take = [&p](int64_t nbytes) {
    char* r = p;
    p += (nbytes + 63) / 64 * 64;
    return r;
  };
  s.qs = reinterpret_cast<float*>(take(4 * s.C4 * K16));
  s.kd = reinterpret_cast<float*>(take(4 * s.C4 * K16));
  s.sq = reinterpret_cast<float*>(take(4 * s.C16));
  s.sk = reinterpret_cast<float*>(take(4 * s.C16));
  s.sp = reinterpret_cast<float*>(take(4 * s.C16));
  s.sv = reinterpret_cast<float*>(take(4 * W));
  s.sS = reinterpret_cast<float*>(take(4 * W));
  s.skd = reinterpret_cast<float*>(take(4 * W));
  s.amax = reinterpret_cast<float*>(take(4 * (W + s.K4)));
  s.P = reinterpret_cast<float*>(take(4 * s.C4 * s.C16));
  s.S = nullptr;
  s.Samax = nullptr;
  s.qu8 = reinterpret_cast<uint8_t*>(take(s.C4 * s.K4));
  s.pu8 = reinterpret_cast<uint8_t*>(take(s.C4 * s.C4));
  s.kdp = reinterpret_cast<uint8_t*>(take(s.C4 * K16));
  s.kdu8 = reinterpret_cast<uint8_t*>(take(s.C4 * K16));
  s.kq = reinterpret_cast<int8_t*>(take(s.C16 * K16));
  s.kp = reinterpret_cast<int8_t*>(take(s.K4 * s.C16));
  s.vq = reinterpret_cast<int8_t*>(take(s.C4 * s.V16));
  s.vp = reinterpret_cast<int8_t*>(take(s.C4 * s.V16));
  s.Sq = reinterpret_cast<int8_t*>(take(s.K4 * s.V16));
  s.Sp = reinterpret_cast<int8_t*>(take(s.K4 * s.V16));
  s.cs_k = reinterpret_cast<int32_t*>(take(4 * s.C16));
  s.cs_v = reinterpret_cast<int32_t*>(take(4 * W));
  s.cs_s = reinterpret_cast<int32_t*>(take(4 * W));
  s.acc_qk = reinterpret_cast<int32_t*>(take(4 * s.C4 * s.C16));
  s.acc_pv = reinterpret_cast<int32_t*>(take(4 * s.C4 * s.V16));
  s.acc_qs = reinterpret_cast<int32_t*>(take(4 * s.C4 * s.V16));
  s.acc_kv = reinterpret_cast<int32_t*>(take(4 * s.K4 * s.V16));
  std::memset(s.qu8, 128, s.C4 * s.K4);
  return true;
}

// One chunk of L tokens starting at global token index t0, for head h.
static void chunk_step(const ChunkParams& p, Scratch& s, int64_t t0, int L, int h,
                       int64_t dbg_base) {
  const int C = s.C, K = s.K, V = s.V, K4 = s.K4, V16 = s.V16, C4 = s.C4, C16 = s.C16;
  const int L4 = round_up(L, 4);
  const int H = p.H;
  const float* row = p.row + h * C;
  const float* col = p.col + h * C;
  const float* mask = p.mask + h * C * C;
  const float* inter = p.inter + h * C;
  const float* kdec = p.kdec + (static_cast<int64_t>(h) * (C + 1) + L) * C;
  const float chunk_decay = p.chunk_decay[h * (C + 1) + L];
  const bool fused = p.fused[h] != 0;
  const int64_t ldq = static_cast<int64_t>(H) * K, ldv = static_cast<int64_t>(H) * V;
  const float* qbase = p.q + (t0 * H + h) * K;
  const float* kbase = p.k + (t0 * H + h) * K;
  const float* vbase = p.v + (t0 * H + h) * V;

  // --- quantize Q (scaled) and K per token ------------------------------------------------
  for (int a = 0; a < L; ++a) {
    const float* qrow = qbase + a * ldq;
    const float* krow = kbase + a * ldq;
    if (a + 4 < L) {
      prefetch_row(qrow + 4 * ldq, K);
      prefetch_row(krow + 4 * ldq, K);
      prefetch_row(vbase + (a + 4) * ldv, V);
    }
    float* qa = s.qs + a * K;
    for (int k = 0; k < K; ++k) qa[k] = qrow[k] * p.scale;
    const float sqa = scale_from_amax(row_amax(qa, K));
    const float ska = scale_from_amax(row_amax(krow, K));
    s.sq[a] = sqa;
    s.sk[a] = ska;
    uint8_t* qu = s.qu8 + a * K4;
    for (int k = 0; k < K; ++k) qu[k] = static_cast<uint8_t>(quant_code(qa[k], sqa) + 128);
    int8_t* kq = s.kq + a * K4;
    int32_t csum = 0;
    for (int k = 0; k < K; ++k) {
      const int c = quant_code(krow[k], ska);
      kq[k] = static_cast<int8_t>(c);
      csum += c;
    }
    for (int k = K; k < K4; ++k) kq[k] = 0;
    s.cs_k[a] = csum;
    for (int g = 0; g < K4 / 4; ++g) std::memcpy(s.kp + (g * C16 + a) * 4, kq + 4 * g, 4);
  }
  // Padded token rows of the last chunk: code 0 (their products are never used).
  for (int a = L; a < C4; ++a) std::memset(s.qu8 + a * K4, 128, K4);

  // --- acc = Q K^T (causal columns only) and the fused-decay epilogue ---------------------
  RQ_GEMM({s.qu8, K4, s.kp, C16, s.cs_k, s.acc_qk, C16, L, L, K4, true, false});
  for (int a = 0; a < L; ++a) {
    const int32_t* acc = s.acc_qk + a * C16;
    float* Pa = s.P + a * C16;
    const int nb = a + 1;
    if (fused) {
      const float ra = s.sq[a] * row[a];
      for (int b = 0; b < nb; ++b)
        Pa[b] = (static_cast<float>(acc[b]) * ra) * (s.sk[b] * col[b]);
    } else {
      const float* ma = mask + a * C;
      const float sqa = s.sq[a];
      for (int b = 0; b < nb; ++b)
        Pa[b] = ((static_cast<float>(acc[b]) * sqa) * s.sk[b]) * ma[b];
    }
    const float spa = scale_from_amax(row_amax(Pa, nb));
    s.sp[a] = spa;
    uint8_t* pu = s.pu8 + a * C4;
    for (int b = 0; b < nb; ++b) pu[b] = static_cast<uint8_t>(quant_code(Pa[b], spa) + 128);
    for (int b = nb; b < C4; ++b) pu[b] = 128;
  }
  for (int a = L; a < C4; ++a) std::memset(s.pu8 + a * C4, 128, C4);

  // --- V per channel of the chunk (packed once for both P V and K~^T V) -------------------
  col_amax(vbase, ldv, L, V, s.amax);
  for (int v = 0; v < V; ++v) s.sv[v] = scale_from_amax(s.amax[v]);
  quant_cols(vbase, static_cast<int>(ldv), L, V, s.sv, s.vq, V16, s.cs_v);
  for (int a = L; a < L4; ++a) std::memset(s.vq + a * V16, 0, V16);  // zero reduction padding
  for (int a = 0; a < L4; a += 4)
    pack4(s.vq + a * V16, s.vq + (a + 1) * V16, s.vq + (a + 2) * V16, s.vq + (a + 3) * V16, V16,
          s.vp + a * V16);

  // --- O_intra = P V ----------------------------------------------------------------------
  RQ_GEMM({s.pu8, C4, s.vp, V16, s.cs_v, s.acc_pv, V16, L, V, L4, false, true});

  // --- S_{i-1} per column, O_inter = Q S ---------------------------------------------------
  for (int v = 0; v < V; ++v) s.sS[v] = scale_from_amax(s.Samax[v]);
  quant_cols(s.S, V, K, V, s.sS, s.Sq, V16, s.cs_s);
  for (int k = 0; k < K4; k += 4)
    pack4(s.Sq + k * V16, s.Sq + (k + 1) * V16, s.Sq + (k + 2) * V16, s.Sq + (k + 3) * V16, V16,
          s.Sp + k * V16);
  RQ_GEMM({s.qu8, K4, s.Sp, V16, s.cs_s, s.acc_qs, V16, L, V, K4, false, false});

  for (int a = 0; a < L; ++a) {
    const int32_t* apv = s.acc_pv + a * V16;
    const int32_t* aqs = s.acc_qs + a * V16;
    float* o = p.out + ((t0 + a) * H + h) * V;
    const float spa = s.sp[a], qi = s.sq[a] * inter[a];
    for (int v = 0; v < V; ++v) {
      const float intra = (static_cast<float>(apv[v]) * spa) * s.sv[v];
      const float inter_v = (static_cast<float>(aqs[v]) * qi) * s.sS[v];
      o[v] = intra + inter_v;
    }
  }

  // --- K~ = K * g^(L-1-j) per channel; dS = K~^T V; S = S * g^L + dS -----------------------
  for (int j = 0; j < L; ++j) {
    const float* kj = kbase + j * ldq;
    float* dj = s.kd + j * K;
    const float f = kdec[j];
    for (int k = 0; k < K; ++k) dj[k] = kj[k] * f;
  }
  col_amax(s.kd, K, L, K, s.amax);
  for (int k = 0; k < K; ++k) s.skd[k] = scale_from_amax(s.amax[k]);
  const int K16 = round_up(K, 16);
  for (int j = 0; j < L; ++j) {
    const float* dj = s.kd + j * K;
    uint8_t* du = s.kdu8 + j * K16;
    for (int k = 0; k < K; ++k) du[k] = static_cast<uint8_t>(quant_code(dj[k], s.skd[k]) + 128);
  }
  // Interleave groups of 4 token rows: A(k, j..j+3) adjacent, the layout a_packed reads.
  // Rows [L, L4) hold stale codes; they meet zero rows of vp, so they add nothing.
  const int8_t* kd8 = reinterpret_cast<const int8_t*>(s.kdu8);
  int8_t* kdp = reinterpret_cast<int8_t*>(s.kdp);
  for (int j = 0; j < L4; j += 4)
    pack4(kd8 + j * K16, kd8 + (j + 1) * K16, kd8 + (j + 2) * K16, kd8 + (j + 3) * K16, K16,
          kdp + j * K16);
  GemmArgs kv{s.kdp, K16, s.vp, V16, s.cs_v, s.acc_kv, V16, K, V, L4, false, false};
  kv.a_packed = true;
  RQ_GEMM(kv);
  // The column amax of the new state (for the next chunk's Q S) is taken while it is written,
  // row by row in the same order as col_amax, so S is read once per chunk.
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

  if (dbg_base >= 0) {  // integer accumulators for the tests ([.., C, C] and [.., C|K, V])
    for (int a = 0; a < L; ++a) {
      for (int b = 0; b <= a; ++b) p.dbg_qk[(dbg_base * C + a) * C + b] = s.acc_qk[a * C16 + b];
      for (int v = 0; v < V; ++v) {
        p.dbg_pv[(dbg_base * C + a) * V + v] = s.acc_pv[a * V16 + v];
        p.dbg_qs[(dbg_base * C + a) * V + v] = s.acc_qs[a * V16 + v];
      }
    }
    for (int k = 0; k < K; ++k)
      for (int v = 0; v < V; ++v) p.dbg_kv[(dbg_base * K + k) * V + v] = s.acc_kv[k * V16 + v];
  }
}

// Tasks [begin, end) of the (sequence, head group) grid: a task walks the chunks of one
// sequence and, per chunk, every head of its group, so the rows it loads (all heads of a token
// are adjacent in [T, H, D]) stream through memory instead of jumping H * D floats per token.
// Returns false when scratch allocation fails.
static bool run_tasks(const ChunkParams& p, int64_t begin, int64_t end) {
  Scratch s;
  if (!scratch_init(s, p.C, p.K, p.V)) return false;
  const int G = p.heads_per_task;
  const int groups = (p.H + G - 1) / G;
  const size_t kv = static_cast<size_t>(p.K) * p.V;
  float* states = static_cast<float*>(std::malloc((kv + p.V) * G * sizeof(float)));
  if (states == nullptr) {
    std::free(s.arena);
    return false;
  }
  for (int64_t task = begin; task < end; ++task) {
    const int64_t n = task / groups;
    const int h0 = static_cast<int>(task % groups) * G;
    const int h1 = h0 + G < p.H ? h0 + G : p.H;
    for (int h = h0; h < h1; ++h) {
      float* S = states + (h - h0) * kv;
      if (p.init != nullptr) {
        std::memcpy(S, p.init + (n * p.H + h) * kv, kv * sizeof(float));
      } else {
        std::memset(S, 0, kv * sizeof(float));
      }
      col_amax(S, p.V, p.K, p.V, states + kv * G + (h - h0) * p.V);
    }
    const int64_t start = p.offsets[n], stop = p.offsets[n + 1];
    int64_t ci = 0;
    for (int64_t t0 = start; t0 < stop; t0 += p.C, ++ci) {
      const int L = static_cast<int>(stop - t0 < p.C ? stop - t0 : p.C);
      for (int h = h0; h < h1; ++h) {
        s.S = states + (h - h0) * kv;
        s.Samax = states + kv * G + (h - h0) * p.V;
        const int64_t dbg = p.dbg_qk ? (n * p.H + h) * p.dbg_chunks + ci : -1;
        chunk_step(p, s, t0, L, h, dbg);
      }
    }
    for (int h = h0; h < h1; ++h)
      std::memcpy(p.final_state + (n * p.H + h) * kv, states + (h - h0) * kv, kv * sizeof(float));
  }
  std::free(states);
  std::free(s.arena);
  return true;
}

}  // namespace RQ_BODY_NS
}  // namespace retquant
