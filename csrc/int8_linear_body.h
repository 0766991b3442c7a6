// The per-task loop of the int8 linear layer (int8_linear.h), compiled once per ISA like
// chunk_body.h: the including file defines LIN_NS (namespace of this copy), LIN_GEMM (the ISA's
// GEMM of gemm.h) and LIN_SIGNED_A (1: A holds the codes, as gemm_avx2 reads them with
// a_signed; 0: code + 128), and sets the target pragma, so the copy / check / epilogue loops are
// vectorized for that ISA. Include <cstdint>, <cstdlib>, <cstring>, gemm.h and int8_linear.h
// first.

namespace retquant {
namespace LIN_NS {

// Rows per A block: 64 x K bytes (64 KB at K = 1024) stay in L2 while the block's weight panels
// run; the int32 buffer of one panel (64 x 64 x 4 = 16 KB at most) stays in L1 for the epilogue.
constexpr int kRowBlock = 64;
constexpr int kMaxPanel = 64;

// A per-thread buffer that grows to the largest size asked for (no allocation per call).
struct Buffer {
  void* p = nullptr;
  size_t n = 0;
  ~Buffer() { std::free(p); }
  void* get(size_t want) {
    if (want > n) {
      std::free(p);
      p = std::malloc(want);
      n = p != nullptr ? want : 0;
    }
    return p;
  }
};

// Rows [m0, m0 + rows) of the activation codes into dst [round_up(rows, 4)][k4] in the GEMM's A
// form, padding zero codes; returns whether a -128 was seen. (code ^ 0x80 is code + 128 as a
// byte, so -128 is the only code whose biased byte is 0: a byte min finds it, which vectorizes.)
static inline bool load_a(const LinearArgs& p, int64_t m0, int rows, uint8_t* dst) {
  const int k = p.k, k4 = p.k4;
  constexpr uint8_t kFlip = LIN_SIGNED_A ? 0x00 : 0x80;
  uint8_t lo = 0xFF;
  for (int i = 0; i < rows; ++i) {
    const uint8_t* __restrict__ src = reinterpret_cast<const uint8_t*>(p.a + (m0 + i) * k);
    uint8_t* __restrict__ d = dst + static_cast<int64_t>(i) * k4;
    for (int j = 0; j < k; ++j) {
      const uint8_t biased = src[j] ^ 0x80;
      lo = biased < lo ? biased : lo;
      d[j] = src[j] ^ kFlip;
    }
    for (int j = k; j < k4; ++j) d[j] = kFlip;
  }
  const int rows4 = round_up(rows, 4);
  std::memset(dst + static_cast<int64_t>(rows) * k4, kFlip, static_cast<size_t>(rows4 - rows) * k4);
  return lo == 0;
}

// out[i][j] = (float(c[i][j]) * as[i]) * ws[j] (+ bias[j]): two float32 products and the add,
// each rounded (-ffp-contract=off), in the order of the PyTorch reference.
template <bool kBias>
static inline void epilogue(const int32_t* c, int ldc, int rows, int cols, const float* as,
                            const float* __restrict__ ws, const float* __restrict__ bias,
                            float* out, int64_t ldo) {
  for (int i = 0; i < rows; ++i) {
    const int32_t* __restrict__ ci = c + static_cast<int64_t>(i) * ldc;
    float* __restrict__ o = out + i * ldo;
    const float s = as[i];
    for (int j = 0; j < cols; ++j) {
      float y = static_cast<float>(ci[j]) * s;
      y = y * ws[j];
      if (kBias) y = y + bias[j];
      o[j] = y;
    }
  }
}

static inline void copy_out(const int32_t* c, int ldc, int rows, int cols, int32_t* out,
                            int64_t ldo) {
  for (int i = 0; i < rows; ++i)
    std::memcpy(out + i * ldo, c + static_cast<int64_t>(i) * ldc, sizeof(int32_t) * cols);
}

static int linear_rows(const LinearArgs& p, int64_t m0, int64_t m1, int n0, int n1) {
  thread_local Buffer a_buf, c_buf;
  auto* a = static_cast<uint8_t*>(a_buf.get(static_cast<size_t>(kRowBlock) * p.k4 + 64));
  auto* c = static_cast<int32_t*>(c_buf.get(sizeof(int32_t) * kRowBlock * kMaxPanel));
  if (a == nullptr || c == nullptr) return -1;
  int status = 0;
  for (int64_t mb = m0; mb < m1; mb += kRowBlock) {
    const int rows = static_cast<int>(m1 - mb < kRowBlock ? m1 - mb : kRowBlock);
    if (load_a(p, mb, rows, a)) {
      status |= kLinearCodeRange;  // the call raises: skip the product
      continue;
    }
    // One GEMM call per weight panel (contiguous [k4/4][width][4], int8_linear.h): the GEMM
    // runs the block's row tiles on one panel, which stays in L1 (16 KB at K = 1024, width 16).
    for (int nb = n0; nb < n1; nb += p.panel) {
      const int width = p.n16 - nb < p.panel ? p.n16 - nb : p.panel;
      const int cols = n1 - nb < width ? n1 - nb : width;
      const int cols16 = round_up(cols, 16);
      GemmArgs g{a, p.k4, p.b + static_cast<int64_t>(nb) * p.k4, width, p.colsum + nb, c, cols16,
                 rows, cols16, p.k4};
      g.a_signed = LIN_SIGNED_A;
      LIN_GEMM(g);
      if (p.out_f == nullptr) {
        copy_out(c, cols16, rows, cols, p.out_i + mb * p.n + nb, p.n);
      } else if (p.bias != nullptr) {
        epilogue<true>(c, cols16, rows, cols, p.a_scale + mb, p.w_scale + nb, p.bias + nb,
                       p.out_f + mb * p.n + nb, p.n);
      } else {
        epilogue<false>(c, cols16, rows, cols, p.a_scale + mb, p.w_scale + nb, nullptr,
                        p.out_f + mb * p.n + nb, p.n);
      }
    }
  }
  return status;
}

}  // namespace LIN_NS
}  // namespace retquant
