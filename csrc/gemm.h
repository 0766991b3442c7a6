// Exact int8 GEMM on the operand layout shared by every ISA path (portable, AVX2, AVX-512 VNNI).
//
//   C[m][n] = sum_{r < r_end(m)} (A[m][r] - 128) * B(r, n)        (int32, exact)
//
// A is row-major uint8 holding biased codes (code + 128), B is packed as [R/4][ldb][4] int8 so
// that four consecutive reduction entries of one column are adjacent (the vpdpbusd layout), and
// colsum[n] = sum_r B(r, n). The VNNI path computes sum (code+128)*b with vpdpbusd and subtracts
// 128 * colsum; the AVX2 path (sign trick) and the portable path multiply the centered codes
// directly and do not read colsum. All are exact, so all give the same int32 results.
// Rows are processed in blocks of 4 (A and C must have rows up to a multiple of 4), columns in
// blocks of 16 (ldb, ldc multiples of 16), the reduction in steps of 4 (zero padded in B).
// colsum must cover the full reduction g.r; with causal_red, colsum_prefix[i][n] =
// sum_{r < 4i} B(r, n) ([R/4 + 1][ldb]) gives the correction of each truncated reduction.
#pragma once

#include <cstdint>

namespace retquant {

struct GemmArgs {
  const uint8_t* a;      // [M4][lda] biased codes
  int lda;
  const int8_t* b;       // [R4/4][ldb][4]
  int ldb;               // multiple of 16
  const int32_t* colsum; // [ldb]
  int32_t* c;            // [M4][ldc]
  int ldc;
  int m;                 // rows (rounded up to 4 internally)
  int n;                 // columns (rounded up to 16 internally)
  int r;                 // reduction length (multiple of 4)
  // Causal shortcuts for the intra-chunk products (rows are tokens):
  bool causal_cols = false;  // only columns n <= row are needed (Q K^T)
  bool causal_red = false;   // only reduction indices r <= row contribute (P V)
  const int32_t* colsum_prefix = nullptr;  // required with causal_red on the VNNI path
  // A stored as [R/4][lda][4] (four reduction entries of one row adjacent) instead of row-major:
  // lets K~^T V read the token-major codes after a 4-row interleave instead of a transpose.
  bool a_packed = false;
  // A holds the codes themselves (int8, padding 0) instead of code + 128 (padding 128): the AVX2
  // stages write it so, which saves the sign trick one vpxor per A broadcast. Only gemm_avx2
  // reads A this way; the other GEMMs require a_signed == false.
  bool a_signed = false;
};

// Address of A(m, r4 .. r4 + 3).
inline const uint8_t* a_at(const GemmArgs& g, int m, int r4) {
  return g.a_packed ? g.a + (r4 >> 2) * g.lda * 4 + m * 4 : g.a + m * g.lda + r4;
}

inline int round_up(int x, int m) { return (x + m - 1) / m * m; }

// The causal shortcuts for the row block [m0, m0 + 4), shared by every ISA's GEMM so that they
// compute (and leave unwritten) exactly the same entries: with causal_cols only the column
// blocks of 16 up to the block's last row are computed (n16: all columns, rounded up to 16);
// with causal_red the reduction stops after index m0 + 3.
inline int causal_col_end(const GemmArgs& g, int m0, int n16) {
  const int end = round_up(m0 + 4, 16);
  return g.causal_cols && end < n16 ? end : n16;
}
inline int causal_red_end(const GemmArgs& g, int m0) {
  return g.causal_red && m0 + 4 < g.r ? m0 + 4 : g.r;
}

void gemm_portable(const GemmArgs& g);
void gemm_avx2(const GemmArgs& g);
void gemm_vnni(const GemmArgs& g);

// Peak probes (gemm_bench.cpp): `iters` rounds of each SIMD GEMM's inner instruction sequence
// on registers only; return the int8 operations done (2 per multiply-add).
int64_t int8_peak_avx2(int64_t iters);
int64_t int8_peak_vnni(int64_t iters);

// The GEMM of an ISA code of cpu_isa.h (the caller has checked that the CPU supports it).
using GemmFn = void (*)(const GemmArgs&);
GemmFn gemm_for_isa(int64_t isa);

}  // namespace retquant
