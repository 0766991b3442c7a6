// The int8 linear layer's GEMM (int8_linear.cpp, per-ISA bodies int8_linear_{isa}.cpp):
//
//   y[m][n] = (float(acc[m][n]) * a_scale[m]) * w_scale[n] + bias[n]     (float32, no FMA)
//   acc[m][n] = sum_k a[m][k] * w[n][k]                                  (int32, exact)
//
// with symmetric codes in [-127, 127] (-128 is rejected: it breaks the AVX2 sign trick, gemm.h).
// The weight is packed once into panels of `panel` columns (16, or 64 for the VNNI GEMM's 4x64
// tiles), each in the B layout of gemm.h ([K4/4][width][4], zero padded; width = panel except
// for a last narrower one), so that one panel is contiguous: with [K4/4][N16][4] over all
// columns, consecutive reduction steps of one column tile are N16 * 4 bytes apart, 4 KB at
// N = 1024, all in one L1 set (the tile thrashed L1: 10% slower). Column sums serve the VNNI
// path. Any panel width (a multiple of 16) is correct for every ISA. Each task copies a block of
// activation rows into the A layout (padded, biased for VNNI / portable), checking the codes on
// the way, runs the ISA's GEMM panel by panel into a small int32 buffer and applies the epilogue
// from there (no [M, N] int32 intermediate: it would cost a write and a read of 4 bytes per
// output).
#pragma once

#include <cstdint>

namespace retquant {

struct LinearArgs {
  const int8_t* a;         // [M][K] activation codes, row-major
  int64_t m;
  int k, k4;               // reduction length, rounded up to 4
  const int8_t* b;         // packed weight: panels of [k4/4][width][4], panel j at j * panel * k4
  const int32_t* colsum;   // [n16] column sums of the packed weight
  int n, n16;
  int panel;               // columns per panel (a multiple of 16 up to 64)
  const float* a_scale;    // [M]   (null: raw int32 output)
  const float* w_scale;    // [N]
  const float* bias;       // [N] or null
  float* out_f;            // [M][N] float32 output (with a_scale)
  int32_t* out_i;          // [M][N] int32 output (without)
};

// Status flag of a task: an activation code is -128 (out of the accepted range).
constexpr int kLinearCodeRange = 1;

// Rows [m0, m1) x columns [n0, n1) of the output (n0 a multiple of the panel width) with one ISA's GEMM;
// returns kLinearCodeRange or 0, or -1 when its scratch could not be allocated.
int linear_rows_portable(const LinearArgs& p, int64_t m0, int64_t m1, int n0, int n1);
int linear_rows_avx2(const LinearArgs& p, int64_t m0, int64_t m1, int n0, int n1);
int linear_rows_avx512(const LinearArgs& p, int64_t m0, int64_t m1, int n0, int n1);

}  // namespace retquant
