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

// Scalar conversions of the element types (tails, and the portable vector type): bfloat16 is
// held as its 16 bits, the upper half of the float32 it stands for; it is written rounded to
// nearest even like torch's .to(bfloat16), NaN as 0x7FC0.
static inline float to_float(float x) { return x; }
static inline float to_float(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
static inline void from_float(float* d, float x) { *d = x; }
static inline void from_float(uint16_t* d, float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  *d = x != x ? static_cast<uint16_t>(0x7FC0)
              : static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

#include RQ_FLOAT_VEC

constexpr int kPanel = 16;  // columns of a B panel = lanes of a Vec

static inline int imin(int a, int b) { return a < b ? a : b; }

// One task's operands, in the layouts the tiles read (64-byte aligned, zero-initialised).
struct Scratch {
  int C, K, V, NP;  // NP: 16-column panels covering V
  float* qs;        // [C][K]          Q * scale              (A of Q K^T)
  float* qi;        // [C][K]          Q * scale * g^(a+1)    (A of Q S_{i-1})
  float* kd;        // [C][K]          K * g^(L-1-j)          (A of K~^T V, read down columns)
  float* kt;        // [C/16][K][16]   K^T                    (B of Q K^T)
  float* vb;        // [NP][C][16]     V, zero beyond V       (B of P V and K~^T V)
  float* s;         // [NP][K][16]     the state, zero beyond V (B of Q S; updated in place)
  float* p;         // [C][C]          P = (Q K^T) ⊙ D        (A of P V)
  void* arena;
};

static inline bool scratch_init(Scratch& s, int C, int K, int V) {
  s.C = C;
  s.K = K;
  s.V = V;
  s.NP = (V + kPanel - 1) / kPanel;
  const int64_t ck = static_cast<int64_t>(C) * K;
  const int64_t sizes[] = {ck, ck, ck, ck, static_cast<int64_t>(s.NP) * C * kPanel,
                           static_cast<int64_t>(s.NP) * K * kPanel, static_cast<int64_t>(C) * C};
  int64_t floats = 0;
  for (int64_t n : sizes) floats += (n + 15) / 16 * 16;
  s.arena = std::calloc(static_cast<size_t>(floats) * sizeof(float) + 64, 1);
  if (s.arena == nullptr) return false;
  float* at = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(s.arena) + 63) / 64 * 64);
  float** dst[] = {&s.qs, &s.qi, &s.kd, &s.kt, &s.vb, &s.s, &s.p};
  for (int i = 0; i < 7; ++i) {
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
      qs[k] = to_float(q[k]) * scale;
      qi[k] = qs[k] * inter[a];
    }
  }
}

// K rows -> kd = K * kdec[j] (token-major) and the K^T panels kt. The panel columns past a
// short last chunk are zeroed, so the masked scores there are exactly 0 * 0.
template <typename T>
static inline void pack_k(const T* k, int64_t ld, int L, const float* kdec, Scratch& s) {
  const int K = s.K, K16 = K / kPanel * kPanel;
  for (int j = 0; j < L; ++j, k += ld) {
    float* kd = s.kd + static_cast<int64_t>(j) * K;
    float* kt = s.kt + static_cast<int64_t>(j / kPanel) * K * kPanel + j % kPanel;
    const Vec g = vset(kdec[j]);
    float row[kPanel];
    int c = 0;
    for (; c < K16; c += kPanel) {
      const Vec x = vload(k + c);
      vstore(kd + c, vmul(x, g));
      vstore(row, x);
      for (int i = 0; i < kPanel; ++i) kt[(c + i) * kPanel] = row[i];
    }
    for (; c < K; ++c) {
      const float x = to_float(k[c]);
      kd[c] = x * kdec[j];
      kt[c * kPanel] = x;
    }
  }
  for (int j = L; j % kPanel != 0; ++j) {
    float* kt = s.kt + static_cast<int64_t>(j / kPanel) * K * kPanel + j % kPanel;
    for (int c = 0; c < K; ++c) kt[c * kPanel] = 0.f;
  }
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
        for (int c = 0; c < cols; ++c) dst[c] = to_float(v[pi * kPanel + c]);
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
      for (int c = 0; c < cols; ++c) from_float(o + c, row[c]);
    }
  }
}

// State rows k0 .. k0+M-1, columns of panel pi: S = g^L S + K~^T V over the chunk's L tokens.
template <int M>
static inline void state_rows(Scratch& s, int k0, int L, int pi, float decay) {
  float* S = s.s + (static_cast<int64_t>(pi) * s.K + k0) * kPanel;
  const Vec g = vset(decay);
  Vec acc[M];
  for (int i = 0; i < M; ++i) acc[i] = vmul(vload(S + i * kPanel), g);
  madd<M>(acc, s.kd + k0, 1, s.K, s.vb + static_cast<int64_t>(pi) * s.C * kPanel, L);
  for (int i = 0; i < M; ++i) vstore(S + i * kPanel, acc[i]);
}

// One chunk of L tokens starting at global token t0, head h.
template <typename T>
static void chunk_step(const FloatChunkParams& p, Scratch& s, int64_t t0, int L, int h) {
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

// The state [K][V] (or zero) -> the panels s.s, and back.
static inline void load_state(const float* init, Scratch& s) {
  for (int pi = 0; pi < s.NP; ++pi) {
    const int cols = imin(kPanel, s.V - pi * kPanel);
    for (int k = 0; k < s.K; ++k) {
      float* dst = s.s + (static_cast<int64_t>(pi) * s.K + k) * kPanel;
      for (int c = 0; c < kPanel; ++c)
        dst[c] = init != nullptr && c < cols ? init[static_cast<int64_t>(k) * s.V + pi * kPanel + c]
                                             : 0.f;
    }
  }
}

static inline void store_state(float* out, const Scratch& s) {
  for (int pi = 0; pi < s.NP; ++pi) {
    const int cols = imin(kPanel, s.V - pi * kPanel);
    for (int k = 0; k < s.K; ++k) {
      const float* src = s.s + (static_cast<int64_t>(pi) * s.K + k) * kPanel;
      for (int c = 0; c < cols; ++c) out[static_cast<int64_t>(k) * s.V + pi * kPanel + c] = src[c];
    }
  }
}

// Tasks [begin, end) of the grid, task = n * H + h: one head of one sequence, chunk after chunk,
// so its state stays in this core's cache for the whole sequence.
template <typename T>
static int run_tasks_of(const FloatChunkParams& p, int64_t begin, int64_t end) {
  Scratch s;
  if (!scratch_init(s, p.C, p.K, p.V)) return kOutOfMemory;
  const int64_t kv = static_cast<int64_t>(p.K) * p.V;
  for (int64_t task = begin; task < end; ++task) {
    const int64_t n = task / p.H;
    const int h = static_cast<int>(task % p.H);
    load_state(p.init != nullptr ? p.init + task * kv : nullptr, s);
    const int64_t stop = p.offsets[n + 1];
    for (int64_t t0 = p.offsets[n]; t0 < stop; t0 += p.C)
      chunk_step<T>(p, s, t0, static_cast<int>(stop - t0 < p.C ? stop - t0 : p.C), h);
    store_state(p.final_state + task * kv, s);
  }
  std::free(s.arena);
  return 0;
}

static int run_tasks(const FloatChunkParams& p, int64_t begin, int64_t end) {
  return p.bf16 ? run_tasks_of<uint16_t>(p, begin, end) : run_tasks_of<float>(p, begin, end);
}

}  // namespace RQ_FLOAT_NS
}  // namespace retquant
