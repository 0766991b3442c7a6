// Raw-pointer interface of the float (unquantized) chunkwise retention forward on the CPU; the
// torch binding (argument checks) is float_chunk_fwd in ops.cpp.
//
// Per sequence and head, chunks of C tokens (the last may hold L < C), fp32 accumulation:
//   O_i = (Q_i K_i^T ⊙ D) V_i + diag(g^(j+1)) Q_i S_{i-1},   S_i = g^L S_{i-1} + K_i^T diag(g^(L-1-j)) V_i
// with Q already multiplied by `scale`; every decay factor is read from the tables of
// retquant/decay.py (chunk_decay_tables), so they are the numbers every other path uses.
#pragma once

#include <cstdint>

namespace retquant {

// Instruction sets of the float kernel (the `isa` argument of the op).
constexpr int kFloatIsaPortable = 0, kFloatIsaAvx2 = 1, kFloatIsaAvx512 = 2;

// All tensors contiguous; tokens of every sequence are rows of [T_total, H, D].
struct FloatChunkParams {
  const void* q;             // [T_total, H, K] (unscaled), float32 or bfloat16 (bf16)
  const void* k;             // [T_total, H, K]
  const void* v;             // [T_total, H, V]
  const int64_t* offsets;    // [N + 1] token offsets of the sequences
  int64_t N;                 // number of sequences
  int H, K, V, C;            // heads, key dim, value dim, chunk size (a multiple of 16)
  float scale;               // multiplies q
  const float* mask;         // [H, C, C]   g^(a-b), 0 above the diagonal
  const float* inter;        // [H, C]      g^(a+1)
  const float* kdec;         // [H, C+1, C] g^(L-1-j) for a chunk of length L
  const float* chunk_decay;  // [H, C+1]    g^L
  const float* init;         // [N, H, K, V] float32 or nullptr (zero state)
  void* out;                 // [T_total, H, V] in q's dtype
  float* final_state;        // [N, H, K, V] float32
  bool bf16 = false;         // element type of q, k, v, out
  int isa = kFloatIsaPortable;
  int heads_per_task = 1;    // heads one task walks together (set by float_chunk_cpu)
};

// Runs the (sequence, head group) grid over torch's threads; raises (TORCH_CHECK) when scratch
// allocation fails or `isa` is not available on this CPU.
void float_chunk_cpu(const FloatChunkParams& p);

// The best kFloatIsa* this CPU runs (CPUID, and the OS saving the wide registers).
int float_chunk_best_isa();
bool cpu_has_avx2_fma();
bool cpu_has_avx512f();

// Tasks [begin, end) of the grid (task = n * groups + head group) for one ISA; 0, or kOutOfMemory of
// chunk_retention.h.
int float_chunk_tasks_portable(const FloatChunkParams& p, int64_t begin, int64_t end);
int float_chunk_tasks_avx2(const FloatChunkParams& p, int64_t begin, int64_t end);
int float_chunk_tasks_avx512(const FloatChunkParams& p, int64_t begin, int64_t end);

}  // namespace retquant
