// The recurrent (decode) loop per (sequence, head), compiled twice like chunk_body.h (baseline
// ISA in recurrent_step.cpp, AVX-512 in recurrent_avx512.cpp); RQ_BODY_NS names the copy.
//
// Per token: q (scaled), k, v quantized per token; S = S * gamma + float(k_int v_int) * (s_k s_v)
// (float32 state, exact int product); S's copy for q . S quantized per column;
// o = (float(q_int . S_int) * s_q) * s_S[v]. Two passes over the K x V state per token.

namespace retquant {
namespace RQ_BODY_NS {

#include "quant.h"

// Per-token quantization of n floats (times `mul` when `scaled`) into int codes; returns scale.
static inline float quant_token(const float* x, float mul, bool scaled, int n, float* tmp,
                                int32_t* codes) {
  for (int i = 0; i < n; ++i) tmp[i] = scaled ? x[i] * mul : x[i];
  float lane[16] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  int i = 0;
  for (; i + 16 <= n; i += 16)
    for (int l = 0; l < 16; ++l) {
      const float a = std::fabs(tmp[i + l]);
      lane[l] = a > lane[l] ? a : lane[l];
    }
  float m = 0.f;
  for (; i < n; ++i) m = std::fabs(tmp[i]) > m ? std::fabs(tmp[i]) : m;
  for (int l = 0; l < 16; ++l) m = lane[l] > m ? lane[l] : m;
  const float s = scale_from_amax(m);
  for (int j = 0; j < n; ++j) codes[j] = quant_code(tmp[j], s);
  return s;
}

static bool run_tasks(const RecurrentParams& p, int64_t begin, int64_t end) {
  const int K = p.K, V = p.V, H = p.H;
  const size_t kv = static_cast<size_t>(K) * V, W = static_cast<size_t>(K > V ? K : V);
  float* fbuf = static_cast<float*>(std::malloc((kv + W + 2 * V) * sizeof(float)));
  int32_t* ibuf = static_cast<int32_t*>(std::malloc((2 * W + 2 * V) * sizeof(int32_t)));
  if (fbuf == nullptr || ibuf == nullptr) {
    std::free(fbuf);
    std::free(ibuf);
    return false;
  }
  float *S = fbuf, *tmp = fbuf + kv, *amax = tmp + W, *sS = amax + V;
  int32_t *qi = ibuf, *ki = ibuf + W, *vi = ki + W, *acc = vi + V;
  for (int64_t task = begin; task < end; ++task) {
    const int64_t n = task / H;
    const int h = static_cast<int>(task % H);
    if (p.init != nullptr) {
      std::memcpy(S, p.init + (n * H + h) * kv, kv * sizeof(float));
    } else {
      std::memset(S, 0, kv * sizeof(float));
    }
    const float g = p.gamma[h];
    for (int64_t t = p.offsets[n]; t < p.offsets[n + 1]; ++t) {
      const float sq = quant_token(p.q + (t * H + h) * K, p.scale, true, K, tmp, qi);
      const float sk = quant_token(p.k + (t * H + h) * K, 1.f, false, K, tmp, ki);
      const float sv = quant_token(p.v + (t * H + h) * V, 1.f, false, V, tmp, vi);
      const float skv = sk * sv;
      for (int v = 0; v < V; ++v) amax[v] = 0.f;
      for (int k = 0; k < K; ++k) {
        float* Sk = S + k * V;
        const int kc = ki[k];
        for (int v = 0; v < V; ++v) {
          const float upd = static_cast<float>(kc * vi[v]) * skv;
          const float s = Sk[v] * g + upd;
          Sk[v] = s;
          const float a = std::fabs(s);
          amax[v] = a > amax[v] ? a : amax[v];
        }
      }
      for (int v = 0; v < V; ++v) {
        sS[v] = scale_from_amax(amax[v]);
        acc[v] = 0;
      }
      for (int k = 0; k < K; ++k) {
        const float* Sk = S + k * V;
        const int qc = qi[k];
        for (int v = 0; v < V; ++v) acc[v] += qc * quant_code(Sk[v], sS[v]);
      }
      float* o = p.out + (t * H + h) * V;
      for (int v = 0; v < V; ++v) o[v] = (static_cast<float>(acc[v]) * sq) * sS[v];
    }
    std::memcpy(p.final_state + (n * H + h) * kv, S, kv * sizeof(float));
  }
  std::free(fbuf);
  std::free(ibuf);
  return true;
}

}  // namespace RQ_BODY_NS
}  // namespace retquant
