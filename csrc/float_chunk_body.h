// The per-(sequence, head) chunk loop of the float kernel (float_chunk.h), compiled once per ISA
// by float_chunk_{portable,avx2,avx512}.cpp. Each defines RQ_FLOAT_NS (the namespace of its
// copy) and RQ_FLOAT_VEC (its 16-lane vector header: float_vec_*.h, which also sets kTileRows)
// before including this file. Everything is defined inside RQ_FLOAT_NS with internal linkage and
// no std:: templates are instantiated, so copies compiled for different ISAs share no inline code
// the linker could merge.
//
// One chunk of L tokens is four products, all as "tiles": kTileRows output rows x 16 columns in
// registers, a broadcast of one A entry times one 16-float row of a B panel per step:
//   P = (Q~ K^T) ⊙ D               A = Q * scale,              B = K^T panels   (reduce over K)
//   O = Q^ S_{i-1} + P V           A = Q * scale * g^(a+1), P;  B = S, V panels  (one accumulator)
//   S = g^L S + K~^T V             A = K * g^(L-1-j) read down its columns; B = V panels
// The decay mask D is the g^(a-b) table, applied as the scores leave the registers; the
// row/column factorisation (DESIGN "Fused decay scaling") would save nothing here, since either
// way it is one multiply per score, and the table needs no range guard. The row factor g^(a+1)
// of Q S_{i-1} is folded into a second copy of Q's rows, so that O_inter and P V share one
// accumulator and O is written once, converted, straight from the registers.

namespace retquant {
namespace RQ_FLOAT_NS {

// Scalar conversions of the element types (tails, and the portable vector type).
#include "bf16_scalar.h"

#include RQ_FLOAT_VEC

constexpr int kPanel = 16;  // columns of a B panel = lanes of a Vec

static inline int imin(int a, int b) { return a < b ? a : b; }

// One task's operands, in the layouts the tiles read (64-byte aligned, zero-initialised).
struct Scratch {
  int C, K, V, NP;  // NP: 16-column panels covering V
  float* qs;        // [C][K]          Q * scale              (A of Q K^T)
  float* qi;        // [C][K]          Q * scale * g^(a+1)    (A of Q S_{i-1})
  float* kd;        // [C][K]          K * g^(L-1-j)          (A of K~^T V, read down columns)
  float* kr;        // [C][K]          K as float32           (transposed into kt)
  float* kt;        // [C/16][K][16]   K^T                    (B of Q K^T)
  float* vb;        // [NP][C][16]     V, zero beyond V       (B of P V and K~^T V)
  float* p;         // [C][C]          P = (Q K^T) ⊙ D        (A of P V)
  float* states;    // [G][NP][K][16]  the states of the task's G heads, zero beyond V
  float* s;         // the current head's state in `states` (B of Q S; updated in place)
  void* arena;
};

static inline bool scratch_init(Scratch& s, int C, int K, int V, int G) {
  s.C = C;
  s.K = K;
  s.V = V;
  s.NP = (V + kPanel - 1) / kPanel;
  const int64_t ck = static_cast<int64_t>(C) * K;
  const int64_t sizes[] = {ck, ck, ck, ck, ck, static_cast<int64_t>(s.NP) * C * kPanel,
                           static_cast<int64_t>(C) * C, static_cast<int64_t>(G) * s.NP * K * kPanel};
  int64_t floats = 0;
  for (int64_t n : sizes) floats += (n + 15) / 16 * 16;
  s.arena = std::calloc(static_cast<size_t>(floats) * sizeof(float) + 64, 1);
  if (s.arena == nullptr) return false;
  float* at = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(s.arena) + 63) / 64 * 64);
  float** dst[] = {&s.qs, &s.qi, &s.kd, &s.kr, &s.kt, &s.vb, &s.p, &s.states};
  for (int i = 0; i < 8; ++i) {
    *dst[i] = at;
    at += (sizes[i] + 15) / 16 * 16;
  }
  return true;
}

// f(Rows<m>{}) with the tile height m = rows (rows <= M): each tail height is its own unrolled
// instance, so no tile carries masked rows.
template <int M>
struct Rows {
  static constexpr int value = M;
};
template <int M, typename F>
static inline void with_rows(int rows, const F& f) {
  if constexpr (M > 1) {
    if (rows < M) {
      with_rows<M - 1>(rows, f);
      return;
    }
  }
  f(Rows<M>{});
}

// acc[i] += sum_{r < n} A(i, r) * B[r][0..16), A(i, r) = a[i * si + r * sr], B rows 16 apart.
template <int M>
static inline void madd(Vec (&acc)[M], const float* a, int64_t si, int64_t sr, const float* b,
                        int n) {
  for (int r = 0; r < n; ++r, a += sr, b += kPanel) {
    const Vec bv = vload(b);
#pragma GCC unroll 16
    for (int i = 0; i < M; ++i) acc[i] = vfma(vset(a[i * si]), bv, acc[i]);
  }
}

// Q rows (L of them, `ld` elements apart) -> qs = Q * scale and qi = qs * inter[a].
template <typename T>
static inline void pack_q(const T* q, int64_t ld, int L, float scale, const float* inter,
                          Scratch& s) {
  const int K = s.K, K16 = K / kPanel * kPanel;
  const Vec sc = vset(scale);
  for (int a = 0; a < L; ++a, q += ld) {
    float* qs = s.qs + static_cast<int64_t>(a) * K;
    float* qi = s.qi + static_cast<int64_t>(a) * K;
    const Vec g = vset(inter[a]);
    int k = 0;
    for (; k < K16; k += kPanel) {
      const Vec x = vmul(vload(q + k), sc);
      vstore(qs + k, x);
      vstore(qi + k, vmul(x, g));
    }
    for (; k < K; ++k) {
      qs[k] = to_f32(q[k]) * scale;
      qi[k] = qs[k] * inter[a];
    }
  }
}

// K rows -> kd = K * kdec[j] (token-major) and the K^T panels kt (through kr, in 8 x 8 blocks).
// The panel columns past a short last chunk are zeroed, so the masked scores there are 0 * 0.
template <typename T>
static inline void pack_k(const T* k, int64_t ld, int L, const float* kdec, Scratch& s) {
  const int K = s.K, K16 = K / kPanel * kPanel, K8 = K / 8 * 8, L8 = L / 8 * 8;
  for (int j = 0; j < L; ++j, k += ld) {
    float* kd = s.kd + static_cast<int64_t>(j) * K;
    float* kr = s.kr + static_cast<int64_t>(j) * K;
    const Vec g = vset(kdec[j]);
    int c = 0;
    for (; c < K16; c += kPanel) {
      const Vec x = vload(k + c);
      vstore(kd + c, vmul(x, g));
      vstore(kr + c, x);
    }
    for (; c < K; ++c) {
      kr[c] = to_f32(k[c]);
      kd[c] = kr[c] * kdec[j];
    }
  }
  // kt[(j / 16) * K * 16 + c * 16 + j % 16] = K[j][c]: a panel is [K][16], 8-row blocks land in
  // one half of its columns.
  auto kt_at = [&s, K](int j, int c) {
    return s.kt + static_cast<int64_t>(j / kPanel) * K * kPanel + c * kPanel + j % kPanel;
  };
  for (int j = 0; j < L8; j += 8) {
    for (int c = 0; c < K8; c += 8) transpose8(s.kr + static_cast<int64_t>(j) * K + c, K, kt_at(j, c), kPanel);
    for (int c = K8; c < K; ++c)
      for (int i = 0; i < 8; ++i) *kt_at(j + i, c) = s.kr[static_cast<int64_t>(j + i) * K + c];
  }
  for (int j = L8; j < L; ++j)
    for (int c = 0; c < K; ++c) *kt_at(j, c) = s.kr[static_cast<int64_t>(j) * K + c];
  for (int j = L; j % kPanel != 0; ++j)
    for (int c = 0; c < K; ++c) *kt_at(j, c) = 0.f;
}

// V rows -> the panels vb (columns past V stay zero from the arena's initialisation).
template <typename T>
static inline void pack_v(const T* v, int64_t ld, int L, Scratch& s) {
  const int C = s.C, V = s.V;
  for (int j = 0; j < L; ++j, v += ld) {
    for (int pi = 0; pi < s.NP; ++pi) {
      float* dst = s.vb + (static_cast<int64_t>(pi) * C + j) * kPanel;
      const int cols = imin(kPanel, V - pi * kPanel);
      if (cols == kPanel) {
        vstore(dst, vload(v + pi * kPanel));
      } else {
        for (int c = 0; c < cols; ++c) dst[c] = to_f32(v[pi * kPanel + c]);
      }
    }
  }
}

// Scores of rows m0 .. m0+M-1: causal, so only the column panels up to the tile's last row.
template <int M>
static inline void score_rows(Scratch& s, int m0, const float* mask) {
  const int C = s.C, K = s.K;
  for (int n0 = 0; n0 < m0 + M; n0 += kPanel) {
    Vec acc[M];
    for (int i = 0; i < M; ++i) acc[i] = vzero();
    madd<M>(acc, s.qs + static_cast<int64_t>(m0) * K, K, 1, s.kt + static_cast<int64_t>(n0) * K,
            K);
    for (int i = 0; i < M; ++i) {
      const int64_t at = static_cast<int64_t>(m0 + i) * C + n0;
      vstore(s.p + at, vmul(acc[i], vload(mask + at)));
    }
  }
}

// Output rows m0 .. m0+M-1, columns of panel pi: Q^ S_{i-1} + P V, written in T.
template <int M, typename T>
static inline void out_rows(Scratch& s, int m0, int pi, T* o, int64_t ldo) {
  const int C = s.C, K = s.K;
  Vec acc[M];
  for (int i = 0; i < M; ++i) acc[i] = vzero();
  madd<M>(acc, s.qi + static_cast<int64_t>(m0) * K, K, 1,
          s.s + static_cast<int64_t>(pi) * K * kPanel, K);
  // P[a][b] = 0 for b > a: the reduction over tokens stops at the tile's last row.
  madd<M>(acc, s.p + static_cast<int64_t>(m0) * C, C, 1,
          s.vb + static_cast<int64_t>(pi) * C * kPanel, m0 + M);
  const int cols = imin(kPanel, s.V - pi * kPanel);
  o += static_cast<int64_t>(m0) * ldo + pi * kPanel;
  for (int i = 0; i < M; ++i, o += ldo) {
    if (cols == kPanel) {
      vstore(o, acc[i]);
    } else {
      float row[kPanel];
      vstore(row, acc[i]);
      for (int c = 0; c < cols; ++c) put(o + c, row[c]);
    }
  }
}

// State rows k0 .. k0+M-1, columns of panel pi: S = g^L S + K~^T V over the chunk's L tokens.
// K~^T V is summed from zero and added to g^L S once: the carried state is larger than the
// chunk's terms (by ~sqrt(1 / (1 - g)) for slow heads), and adding the terms onto it one by one
// would round each at the state's scale (measured: twice the error at T = 4096).
template <int M>
static inline void state_rows(Scratch& s, int k0, int L, int pi, float decay) {
  float* S = s.s + (static_cast<int64_t>(pi) * s.K + k0) * kPanel;
  const Vec g = vset(decay);
  Vec acc[M];
  for (int i = 0; i < M; ++i) acc[i] = vzero();
  madd<M>(acc, s.kd + k0, 1, s.K, s.vb + static_cast<int64_t>(pi) * s.C * kPanel, L);
  for (int i = 0; i < M; ++i) vstore(S + i * kPanel, vfma(vload(S + i * kPanel), g, acc[i]));
}

// Rows of the (chunk, head) step after this one, to prefetch into L2 while this one computes:
// one head's rows are H * D elements apart, so the hardware prefetchers (which stop at page
// boundaries) fetch little of them.
struct Next {
  int64_t t0 = 0;
  int h = 0, rows = 0;  // rows = 0: nothing to prefetch
};

// A hint that *p is needed soon, into L2. Inline asm because GCC's vectorizer silently drops
// __builtin_prefetch from the loops it vectorizes (the prefetch loops below are such loops).
static inline void prefetch_l2(const char* p) {
#if defined(__x86_64__) || defined(__i386__)
  asm volatile("prefetcht1 %0" : : "m"(*p));
#else
  __builtin_prefetch(p, 0, 2);
#endif
}

// Lines of rows j = first, first + step, ... (< next.rows) of q, k, v (read) and out (written).
template <typename T>
static inline void prefetch_rows(const FloatChunkParams& p, const Next& next, int first, int step) {
  const int64_t ldk = static_cast<int64_t>(p.H) * p.K, ldv = static_cast<int64_t>(p.H) * p.V;
  const int64_t kbytes = static_cast<int64_t>(p.K) * sizeof(T), vbytes = p.V * static_cast<int64_t>(sizeof(T));
  const T* q = static_cast<const T*>(p.q) + (next.t0 * p.H + next.h) * p.K;
  const T* k = static_cast<const T*>(p.k) + (next.t0 * p.H + next.h) * p.K;
  const T* v = static_cast<const T*>(p.v) + (next.t0 * p.H + next.h) * p.V;
  const T* o = static_cast<const T*>(p.out) + (next.t0 * p.H + next.h) * p.V;
  for (int j = first; j < next.rows; j += step) {
    const char* qj = reinterpret_cast<const char*>(q + j * ldk);
    const char* kj = reinterpret_cast<const char*>(k + j * ldk);
    const char* vj = reinterpret_cast<const char*>(v + j * ldv);
    const char* oj = reinterpret_cast<const char*>(o + j * ldv);
    for (int64_t b = 0; b < kbytes; b += 64) {
      prefetch_l2(qj + b);
      prefetch_l2(kj + b);
    }
    for (int64_t b = 0; b < vbytes; b += 64) {
      prefetch_l2(vj + b);
      prefetch_l2(oj + b);  // the output rows too: their stores would each wait for the line
    }
  }
}

// One chunk of L tokens starting at global token t0, head h.
template <typename T>
static void chunk_step(const FloatChunkParams& p, Scratch& s, int64_t t0, int L, int h,
                       const Next& next) {
  const int C = s.C, K = s.K;
  const int64_t ldk = static_cast<int64_t>(p.H) * K, ldv = static_cast<int64_t>(p.H) * s.V;
  const float* mask = p.mask + static_cast<int64_t>(h) * C * C;
  const float* kdec = p.kdec + (static_cast<int64_t>(h) * (C + 1) + L) * C;
  const float decay = p.chunk_decay[h * (C + 1) + L];
  pack_q(static_cast<const T*>(p.q) + (t0 * p.H + h) * K, ldk, L, p.scale, p.inter + h * C, s);
  pack_k(static_cast<const T*>(p.k) + (t0 * p.H + h) * K, ldk, L, kdec, s);
  pack_v(static_cast<const T*>(p.v) + (t0 * p.H + h) * s.V, ldv, L, s);
  T* o = static_cast<T*>(p.out) + (t0 * p.H + h) * s.V;

  for (int m0 = 0; m0 < L; m0 += kTileRows)
    with_rows<kTileRows>(L - m0, [&](auto rows) { score_rows<decltype(rows)::value>(s, m0, mask); });
  // Panel by panel of V's columns, while that panel of V and of S is in L1: the output (which
  // reads S_{i-1}), then the state update of the same columns.
  for (int pi = 0; pi < s.NP; ++pi) {
    prefetch_rows<T>(p, next, pi, s.NP);
    for (int m0 = 0; m0 < L; m0 += kTileRows)
      with_rows<kTileRows>(L - m0, [&](auto rows) {
        out_rows<decltype(rows)::value, T>(s, m0, pi, o, ldv);
      });
    for (int k0 = 0; k0 < K; k0 += kTileRows)
      with_rows<kTileRows>(K - k0, [&](auto rows) {
        state_rows<decltype(rows)::value>(s, k0, L, pi, decay);
      });
  }
}

// The state [K][V] (or zero) -> the panels S ([NP][K][16]), and back.
static inline void load_state(const float* init, float* S, const Scratch& s) {
  for (int pi = 0; pi < s.NP; ++pi) {
    const int cols = imin(kPanel, s.V - pi * kPanel);
    for (int k = 0; k < s.K; ++k) {
      float* dst = S + (static_cast<int64_t>(pi) * s.K + k) * kPanel;
      for (int c = 0; c < kPanel; ++c)
        dst[c] = init != nullptr && c < cols ? init[static_cast<int64_t>(k) * s.V + pi * kPanel + c]
                                             : 0.f;
    }
  }
}

static inline void store_state(const float* S, float* out, const Scratch& s) {
  for (int pi = 0; pi < s.NP; ++pi) {
    const int cols = imin(kPanel, s.V - pi * kPanel);
    for (int k = 0; k < s.K; ++k) {
      const float* src = S + (static_cast<int64_t>(pi) * s.K + k) * kPanel;
      for (int c = 0; c < cols; ++c) out[static_cast<int64_t>(k) * s.V + pi * kPanel + c] = src[c];
    }
  }
}

// Tasks [begin, end) of the (sequence, head group) grid: a task walks the chunks of one sequence
// and, per chunk, each head of its group, so that the rows it reads (the heads of a token are
// adjacent in [T, H, D]) come from few pages, in order, and the next step's rows, prefetched
// during this one, mostly lie in pages just used.
template <typename T>
static int run_tasks_of(const FloatChunkParams& p, int64_t begin, int64_t end) {
  const int G = p.heads_per_task, groups = (p.H + G - 1) / G;
  Scratch s;
  if (!scratch_init(s, p.C, p.K, p.V, G)) return kOutOfMemory;
  const int64_t kv = static_cast<int64_t>(p.K) * p.V;
  const int64_t panels = static_cast<int64_t>(s.NP) * p.K * kPanel;  // one head's state
  auto rows_from = [&p](int64_t t0, int64_t stop) {
    return static_cast<int>(stop - t0 < p.C ? stop - t0 : p.C);
  };
  for (int64_t task = begin; task < end; ++task) {
    const int64_t n = task / groups;
    const int h0 = static_cast<int>(task % groups) * G, h1 = imin(h0 + G, p.H);
    for (int h = h0; h < h1; ++h)
      load_state(p.init != nullptr ? p.init + (n * p.H + h) * kv : nullptr,
                 s.states + (h - h0) * panels, s);
    const int64_t stop = p.offsets[n + 1];
    for (int64_t t0 = p.offsets[n]; t0 < stop; t0 += p.C) {
      for (int h = h0; h < h1; ++h) {
        Next next;  // the next head, else the next chunk, else the next task's first step
        if (h + 1 < h1) {
          next = {t0, h + 1, rows_from(t0, stop)};
        } else if (t0 + p.C < stop) {
          next = {t0 + p.C, h0, rows_from(t0 + p.C, stop)};
        } else if (task + 1 < end) {
          const int64_t n1 = (task + 1) / groups;
          next = {p.offsets[n1], static_cast<int>((task + 1) % groups) * G,
                  rows_from(p.offsets[n1], p.offsets[n1 + 1])};
        }
        s.s = s.states + (h - h0) * panels;
        chunk_step<T>(p, s, t0, rows_from(t0, stop), h, next);
      }
    }
    for (int h = h0; h < h1; ++h)
      store_state(s.states + (h - h0) * panels, p.final_state + (n * p.H + h) * kv, s);
  }
  std::free(s.arena);
  return 0;
}

static int run_tasks(const FloatChunkParams& p, int64_t begin, int64_t end) {
  return p.bf16 ? run_tasks_of<uint16_t>(p, begin, end) : run_tasks_of<float>(p, begin, end);
}

}  // namespace RQ_FLOAT_NS
}  // namespace retquant
