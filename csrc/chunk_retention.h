// Raw-pointer interface of the CPU retention kernels (the torch bindings live in ops.cpp).
#pragma once

#include <cstdint>

namespace retquant {

// Status of a kernel call: a negative value is a failure, else the inputs it saw holding inf or
// NaN, or'ed (the Python side names them in a ValueError; the outputs are then meaningless).
constexpr int kOutOfMemory = -1;
constexpr int kNonFiniteQ = 1, kNonFiniteK = 2, kNonFiniteV = 4, kNonFiniteState = 8;
// Finite inputs beyond the range of a quantized call (retquant/constants.py QUANT_INPUT_MAX,
// QUANT_STATE_MAX), where a float32 intermediate could overflow: |q * scale|, |k|, |v| must stay
// below 127 * 2^25, i.e. every quantization scale (max / 127) below 2^25; |initial state| < 2^100.
constexpr int kRangeQ = 16, kRangeK = 32, kRangeV = 64, kRangeState = 128;
constexpr float kMaxInputAbs = 4261412864.0f;  // 127 * 2^25
constexpr float kMaxInputScale = 33554432.0f;  // 2^25: scale < 2^25 <=> max |x| < 127 * 2^25
constexpr float kMaxStateAbs = 0x1p100f;
// x * kStateProbe is inf or NaN exactly when x is not finite or |x| >= kMaxStateAbs: the decode
// kernel's check of the state it reads anyway (kNonFiniteState then covers both; the Python side
// tells them apart on the error path).
constexpr float kStateProbe = 0x1p28f;
// The same test on the bits of |x| (portable and AVX2 paths): the bits of kMaxStateAbs, below
// those of every larger float, inf and NaN.
constexpr uint32_t kStateLimitBits = (127u + 100u) << 23;

// All tensors contiguous; tokens of every sequence are rows of [T_total, H, D]. q, k, v and out
// are float32, or all bfloat16 (bf16); everything else float32.
struct ChunkParams {
  const void* q;             // [T_total, H, K] (unscaled)
  const void* k;             // [T_total, H, K]
  const void* v;             // [T_total, H, V]
  const int64_t* offsets;    // [N + 1] token offsets of the sequences
  int64_t N;                 // number of sequences
  int H, K, V, C;            // heads, key dim, value dim, chunk size
  float scale;               // multiplies q (float32, as the spec does)
  const float* row;          // [H, C]    gamma^a
  const float* col;          // [H, C]    gamma^-b
  const float* mask;         // [H, C, C] gamma^(a-b), 0 above the diagonal
  const float* inter;        // [H, C]    gamma^(a+1)
  const float* kdec;         // [H, C+1, C] gamma^(L-1-j) for a chunk of length L
  const float* chunk_decay;  // [H, C+1]  gamma^L
  const uint8_t* fused;      // [H] fused-decay flag
  const float* init;         // [N, H, K, V] or nullptr
  void* out;                 // [T_total, H, V]
  float* final_state;        // [N, H, K, V]
  bool bf16 = false;         // element type of q, k, v, out
  int isa = 0;               // kIsa* of cpu_isa.h (checked against CPUID by the caller)
  int heads_per_task = 1;    // heads one task walks together (set by chunk_retention_cpu)
  // Optional integer accumulators (tests): [N, H, dbg_chunks, C, C|V] and [.., K, V].
  int32_t* dbg_qk = nullptr;
  int32_t* dbg_pv = nullptr;
  int32_t* dbg_qs = nullptr;
  int32_t* dbg_kv = nullptr;
  int64_t dbg_chunks = 0;
};

int chunk_retention_cpu(const ChunkParams& p);  // status (see above)

// Which of the decode's stages a call runs. The kernel runs them all (kDecodeKernel: the state
// update and q . S interleaved per block of columns where the ISA's stages do that); the others
// exist for bench.decode_profile, which times the stages apart: the token quantization only
// (nothing written), also the state update (o not written), or also q . S as a second pass over
// the whole state (o written as the kernel writes it).
constexpr int kDecodeQuantize = 1, kDecodeUpdate = 2, kDecodeTwoPasses = 3, kDecodeKernel = 4;

struct RecurrentParams {
  const float* q;            // [T_total, H, K]
  const float* k;
  const float* v;            // [T_total, H, V]
  const int64_t* offsets;    // [N + 1]
  int64_t N;
  int H, K, V;
  float scale;
  const float* gamma;        // [H] float32 exp(g_gamma)
  const float* init;         // [N, H, K, V] or nullptr
  float* out;                // [T_total, H, V]
  float* final_state;        // [N, H, K, V]; may be init itself (the update is in place)
  int isa = 0;               // kIsa* of cpu_isa.h (checked against CPUID by the caller)
  bool reverse = false;      // each thread walks its tasks last to first (recurrent_step.cpp)
  int stages = kDecodeKernel;  // kDecode* above
};

int recurrent_retention_cpu(const RecurrentParams& p);  // status (see above)
// Tasks [begin, end) of the (sequence, head) grid on the calling thread with p.isa's stages: no
// token scan, no threads (recurrent_retention_cpu adds both; bench.decode_profile times this).
int recurrent_tasks(const RecurrentParams& p, int64_t begin, int64_t end);

}  // namespace retquant
