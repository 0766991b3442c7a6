// Quantized recurrent retention (decode), per retquant/spec/int_recurrent.py: the
// (sequence, head) grid over torch's threads; the loop body is recurrent_body.h, compiled here
// for the baseline ISA, in recurrent_avx2.cpp for AVX2 and in recurrent_avx512.cpp for AVX-512
// (p.isa, a kIsa* code of cpu_isa.h checked against CPUID by the caller).
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "chunk_retention.h"
#include "cpu_isa.h"
#include "gemm.h"
#include "parallel_tasks.h"
#include "token_check.h"

#define RQ_BODY_NS rec_portable
#define RQ_STAGES "recurrent_stages_portable.h"
#include "recurrent_body.h"
#undef RQ_BODY_NS
#undef RQ_STAGES

namespace retquant {

uint32_t max_abs_bits_portable(const float* x, int64_t n) {
  uint32_t m = 0;
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t a = rec_portable::abs_bits(x[i]);
    m = a > m ? a : m;
  }
  return m;
}

int recurrent_tasks_avx2(const RecurrentParams& p, int64_t begin, int64_t end);
int recurrent_tasks_avx512(const RecurrentParams& p, int64_t begin, int64_t end);

// Calls so far, for the direction of the next one.
static std::atomic<uint32_t> calls{0};

int recurrent_tasks(const RecurrentParams& p, int64_t begin, int64_t end) {
  if (p.isa == kIsaAvx512) return recurrent_tasks_avx512(p, begin, end);
  if (p.isa == kIsaAvx2) return recurrent_tasks_avx2(p, begin, end);
  return rec_portable::run_tasks(p, begin, end);
}

int recurrent_retention_cpu(const RecurrentParams& params) {
  // Rejected tokens: return before any state is written (the state may be updated in place).
  const int bad_tokens = scan_recurrent_tokens(params);
  if (bad_tokens != 0) return bad_tokens;
  // Decode calls come one token after another on the same states: every other call walks each
  // thread's (sequence, head) range backwards, so a call starts on the states the previous one
  // touched last, still in that core's L2 (the grid splits the same way on every call). When the
  // states outgrow L2, a fixed order would evict each one just before it is needed again. This
  // pays off when the same states are stepped call after call (one decoder, the benchmark's
  // loop); a model with a decoder per layer steps the other layers' states in between, which
  // evict them anyway. Which direction a call takes changes no result (independent tasks).
  RecurrentParams p = params;
  p.reverse = (calls.fetch_add(1, std::memory_order_relaxed) & 1u) != 0;
  return run_task_grid(p.N * p.H, "recurrent", [&p](int64_t begin, int64_t end) {
    return recurrent_tasks(p, begin, end);
  });
}

}  // namespace retquant
