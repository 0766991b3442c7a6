// Quantized recurrent retention (decode): per retquant/ops/retention/int_recurrent.py.
//
// Per (sequence, head) and token: q (scaled), k, v quantized per token; the float32 state is
// S = S * gamma + float(k_int v_int^T) * (s_k * s_v); its copy for q . S is quantized per column
// and o = (float(q_int . S_int) * s_q) * s_S[v]. O(K V) work per token, no history.
#include <ATen/Parallel.h>

#include <cmath>
#include <algorithm>
#include <cstring>
#include <vector>

#include "chunk_retention.h"
#include <cmath>
#include <cstdint>

namespace retquant {

#include "quant.h"
namespace {

// Per-token quantization of n floats into int codes; returns the scale.
float quant_token(const float* x, float mul, bool scaled, int n, float* tmp, int32_t* codes) {
  float m = 0.f;
  for (int i = 0; i < n; ++i) {
    tmp[i] = scaled ? x[i] * mul : x[i];
    const float a = std::fabs(tmp[i]);
    m = a > m ? a : m;
  }
  const float s = scale_from_amax(m);
  for (int i = 0; i < n; ++i) codes[i] = quant_code(tmp[i], s);
  return s;
}

}  // namespace

void recurrent_retention_cpu(const RecurrentParams& p) {
  const int64_t tasks = p.N * p.H;
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    const int K = p.K, V = p.V, H = p.H;
    std::vector<float> S(static_cast<size_t>(K) * V), tmp(K > V ? K : V), amax(V), sS(V);
    std::vector<int32_t> qi(K), ki(K), vi(V), acc(V);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / H;
      const int h = static_cast<int>(task % H);
      const size_t kv = static_cast<size_t>(K) * V;
      if (p.init != nullptr) {
        std::memcpy(S.data(), p.init + (n * H + h) * kv, kv * sizeof(float));
      } else {
        std::fill(S.begin(), S.end(), 0.f);
      }
      const float g = p.gamma[h];
      for (int64_t t = p.offsets[n]; t < p.offsets[n + 1]; ++t) {
        const float sq = quant_token(p.q + (t * H + h) * K, p.scale, true, K, tmp.data(), qi.data());
        const float sk = quant_token(p.k + (t * H + h) * K, 1.f, false, K, tmp.data(), ki.data());
        const float sv = quant_token(p.v + (t * H + h) * V, 1.f, false, V, tmp.data(), vi.data());
        const float skv = sk * sv;
        for (int v = 0; v < V; ++v) amax[v] = 0.f;
        for (int k = 0; k < K; ++k) {
          float* Sk = S.data() + k * V;
          const int kc = ki[k];
          for (int v = 0; v < V; ++v) {
            const float upd = static_cast<float>(kc * vi[v]) * skv;
            Sk[v] = Sk[v] * g + upd;
            const float a = std::fabs(Sk[v]);
            amax[v] = a > amax[v] ? a : amax[v];
          }
        }
        for (int v = 0; v < V; ++v) {
          sS[v] = scale_from_amax(amax[v]);
          acc[v] = 0;
        }
        for (int k = 0; k < K; ++k) {
          const float* Sk = S.data() + k * V;
          const int qc = qi[k];
          for (int v = 0; v < V; ++v) acc[v] += qc * quant_code(Sk[v], sS[v]);
        }
        float* o = p.out + (t * H + h) * V;
        for (int v = 0; v < V; ++v) o[v] = (static_cast<float>(acc[v]) * sq) * sS[v];
      }
      std::memcpy(p.final_state + (n * H + h) * kv, S.data(), kv * sizeof(float));
    }
  });
}

}  // namespace retquant
