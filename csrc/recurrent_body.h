// The recurrent (decode) loop per (sequence, head), compiled once per ISA like chunk_body.h: for
// the baseline ISA in recurrent_step.cpp, for AVX2 in recurrent_avx2.cpp and for AVX-512 in
// recurrent_avx512.cpp. Each defines RQ_BODY_NS and RQ_STAGES (recurrent_stages_portable.h /
// recurrent_stages_avx2.h / recurrent_stages_avx512.h).
//
// Per token (retquant/spec/int_recurrent.py): q (scaled), k, v quantized per token;
// S = S * gamma + float(k_int v_int) * (s_k s_v) (float32 state, exact int product); S's copy for
// q . S quantized per column; o = (float(q_int . S_int) * s_q) * s_S[v].
// Two passes over the K x V state per token: the update (writing the state straight into
// final_state and taking its column amax) and the quantized q . S (interleaved per block of
// columns where the stages allow, so the second pass reads from L1).

namespace retquant {
namespace RQ_BODY_NS {

#include "quant.h"
#include RQ_STAGES

#ifndef RQ_STAGES_FUSE_UPDATE_DOT
// The state update over all of S, then q . S (the stage headers that interleave the two per
// block of columns define update_and_dot themselves and RQ_STAGES_FUSE_UPDATE_DOT).
static inline bool update_and_dot(const float* src, float* S, int K, int V, float g,
                                  const int32_t* ki, const float* vf, float skv, float* amax,
                                  bool check, float* sS, const int32_t* qi, int32_t* acc) {
  const bool ok = update_state(src, S, K, V, g, ki, vf, skv, amax, check);
  state_dot(S, K, V, amax, sS, qi, acc);
  return ok;
}
#endif

// Returns kOutOfMemory when scratch allocation fails, else the non-finite input flags. kStages:
// RecurrentParams::stages (the kernel runs kDecodeKernel; the others stop after a stage, or run
// the update and q . S as two whole passes, for bench.decode_profile).
template <int kStages>
static int run_stages(const RecurrentParams& p, int64_t begin, int64_t end) {
  const int K = p.K, V = p.V, H = p.H;
  const size_t kv = static_cast<size_t>(K) * V;
  const size_t W = static_cast<size_t>(round_up(K > V ? K : V, 16));
  // floats: tmp row, v codes as floats, column amax, column scales; ints: q codes, k codes, acc
  float* fbuf = static_cast<float*>(std::calloc(4 * W, sizeof(float)));
  int32_t* ibuf = static_cast<int32_t*>(std::calloc(3 * W, sizeof(int32_t)));
  if (fbuf == nullptr || ibuf == nullptr) {
    std::free(fbuf);
    std::free(ibuf);
    return kOutOfMemory;
  }
  float *tmp = fbuf, *vf = fbuf + W, *amax = vf + W, *sS = amax + W;
  int32_t *qi = ibuf, *ki = ibuf + W, *acc = ki + W;
  int bad = 0;
  for (int64_t i = begin; i < end; ++i) {
    const int64_t task = p.reverse ? begin + end - 1 - i : i;
    const int64_t n = task / H;
    const int h = static_cast<int>(task % H);
    float* S = p.final_state + (n * H + h) * kv;  // updated in place after the first token
    const float* src = p.init != nullptr ? p.init + (n * H + h) * kv : nullptr;  // null: zeros
    const float g = p.gamma[h];
    for (int64_t t = p.offsets[n]; t < p.offsets[n + 1]; ++t) {
      float sq, sk, sv;
      bad |= quant_token(p.q + (t * H + h) * K, p.scale, true, K, tmp, qi, &sq) ? 0 : kNonFiniteQ;
      bad |= quant_token(p.k + (t * H + h) * K, 1.f, false, K, tmp, ki, &sk) ? 0 : kNonFiniteK;
      bad |= quant_token(p.v + (t * H + h) * V, 1.f, false, V, tmp, acc, &sv) ? 0 : kNonFiniteV;
      for (int v = 0; v < V; ++v) vf[v] = static_cast<float>(acc[v]);  // exact (|code| <= 127)
      if (kStages == kDecodeQuantize) continue;
      // The initial state (user input, possibly S itself when updated in place) is checked
      // while the first token reads it; later states are this kernel's own.
      const bool first = t == p.offsets[n];
      bool ok;
      if (kStages == kDecodeKernel) {
        ok = update_and_dot(src, S, K, V, g, ki, vf, sk * sv, amax, first, sS, qi, acc);
      } else {
        ok = update_state(src, S, K, V, g, ki, vf, sk * sv, amax, first);
        if (kStages == kDecodeTwoPasses) state_dot(S, K, V, amax, sS, qi, acc);
      }
      if (!ok) bad |= kNonFiniteState;
      src = S;
      if (kStages == kDecodeUpdate) continue;
      float* o = p.out + (t * H + h) * V;
      for (int v = 0; v < V; ++v) o[v] = (static_cast<float>(acc[v]) * sq) * sS[v];
    }
  }  // (every sequence has >= 1 token: offsets strictly increase, checked in ops.cpp)
  std::free(fbuf);
  std::free(ibuf);
  return bad;
}

static int run_tasks(const RecurrentParams& p, int64_t begin, int64_t end) {
  switch (p.stages) {
    case kDecodeQuantize: return run_stages<kDecodeQuantize>(p, begin, end);
    case kDecodeUpdate: return run_stages<kDecodeUpdate>(p, begin, end);
    case kDecodeTwoPasses: return run_stages<kDecodeTwoPasses>(p, begin, end);
    default: return run_stages<kDecodeKernel>(p, begin, end);
  }
}

}  // namespace RQ_BODY_NS
}  // namespace retquant
