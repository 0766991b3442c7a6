// 16 float32 lanes as a plain array (portable path: the compiler vectorizes the loops for the
// baseline ISA): the vector type of float_chunk_body.h, included inside its copy's namespace.

// Baseline x86-64 has 16 xmm registers of 4 lanes: 4 rows x 16 columns already fill them.
constexpr int kTileRows = 4;

struct Vec {
  float x[16];
};

static inline Vec vzero() {
  Vec r;
  for (int i = 0; i < 16; ++i) r.x[i] = 0.f;
  return r;
}
static inline Vec vset(float x) {
  Vec r;
  for (int i = 0; i < 16; ++i) r.x[i] = x;
  return r;
}
static inline Vec vload(const float* p) {
  Vec r;
  for (int i = 0; i < 16; ++i) r.x[i] = p[i];
  return r;
}
static inline Vec vmul(Vec a, Vec b) {
  for (int i = 0; i < 16; ++i) a.x[i] *= b.x[i];
  return a;
}
// a * b + c, rounded twice (the build has -ffp-contract=off and the baseline ISA has no FMA).
static inline Vec vfma(Vec a, Vec b, Vec c) {
  for (int i = 0; i < 16; ++i) c.x[i] += a.x[i] * b.x[i];
  return c;
}
static inline void vstore(float* p, Vec x) {
  for (int i = 0; i < 16; ++i) p[i] = x.x[i];
}
static inline Vec vload(const uint16_t* p) {
  Vec r;
  for (int i = 0; i < 16; ++i) r.x[i] = to_f32(p[i]);
  return r;
}
static inline void vstore(uint16_t* p, Vec x) {
  for (int i = 0; i < 16; ++i) put(p + i, x.x[i]);
}

// dst[c * ldd + r] = src[r * lds + c] for an 8 x 8 block (the K^T panels of Q K^T).
static inline void transpose8(const float* src, int64_t lds, float* dst, int64_t ldd) {
  for (int r = 0; r < 8; ++r)
    for (int c = 0; c < 8; ++c) dst[c * ldd + r] = src[r * lds + c];
}
