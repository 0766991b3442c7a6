// Quantized chunkwise retention forward: one (sequence, head) per task, chunks in order.
//
// Follows retquant/ops/retention/int_chunk.py (default int8 config) step by step, with the same
// float32 operation order, so the integer accumulators are identical and the outputs match:
//   Q, K per token; V per channel of the chunk; acc = Q K^T with the fused-decay epilogue;
//   P per row; O = P V (intra) + (Q S_{i-1}) (inter, S per column); S = S * g^L + K~^T V.
// The decay factors come precomputed from retquant.decay.chunk_decay_tables (never recomputed).
#include <ATen/Parallel.h>
#include <algorithm>

#include <cmath>
#include <cstring>
#include <vector>

#include "chunk_retention.h"
#include "gemm.h"
#include "quant.h"

namespace retquant {
namespace {

// Per-task scratch, sized once for (C, K, V).
struct Scratch {
  int C, K, V, K4, V16;
  std::vector<float> qs, kf, kd;             // scaled q, k, decayed k  [C][K]
  std::vector<float> sq, sk, sp, sv, sS, skd, amax;
  std::vector<uint8_t> qu8, pu8, kdT;        // biased A operands
  std::vector<int8_t> kp, vp, Sp;            // packed B operands
  std::vector<int32_t> cs_k, cs_v, cs_s;     // column sums of B
  std::vector<int32_t> acc_qk, acc_pv, acc_qs, acc_kv;
  std::vector<float> P, S;

  Scratch(int C_, int K_, int V_) : C(C_), K(K_), V(V_), K4(round_up(K_, 4)), V16(round_up(V_, 16)) {
    const int C16 = round_up(C, 16), C4 = round_up(C, 4);
    qs.assign(C * K, 0.f); kf.assign(C * K, 0.f); kd.assign(C * K, 0.f);
    sq.assign(C, 1.f); sk.assign(C16, 1.f); sp.assign(C, 1.f);
    sv.assign(V16, 1.f); sS.assign(V16, 1.f); skd.assign(K4, 1.f); amax.assign(V16 > K4 ? V16 : K4, 0.f);
    qu8.assign(C4 * K4, 128); pu8.assign(C4 * C4, 128); kdT.assign(K4 * C4, 128);
    kp.assign(K4 * C16, 0); vp.assign(C4 * V16, 0); Sp.assign(K4 * V16, 0);
    cs_k.assign(C16, 0); cs_v.assign(V16, 0); cs_s.assign(V16, 0);
    acc_qk.assign(C4 * C16, 0); acc_pv.assign(C4 * V16, 0); acc_qs.assign(C4 * V16, 0);
    acc_kv.assign(K4 * V16, 0);
    P.assign(C * C, 0.f); S.assign(K * V, 0.f);
  }
};

using GemmFn = void (*)(const GemmArgs&);

// One chunk of L tokens starting at global token index t0, for head h.
void chunk_step(const ChunkParams& p, Scratch& s, GemmFn gemm, int64_t t0, int L, int h,
                int64_t dbg_base) {
  const int C = s.C, K = s.K, V = s.V, K4 = s.K4, V16 = s.V16;
  const int C16 = round_up(C, 16), C4 = round_up(C, 4), L4 = round_up(L, 4);
  const int H = p.H;
  const float* row = p.row + h * C;
  const float* col = p.col + h * C;
  const float* mask = p.mask + h * C * C;
  const float* inter = p.inter + h * C;
  const float* kdec = p.kdec + (h * (C + 1) + L) * C;
  const float chunk_decay = p.chunk_decay[h * (C + 1) + L];
  const bool fused = p.fused[h] != 0;

  // --- quantize Q (scaled) and K per token ------------------------------------------------
  for (int a = 0; a < L; ++a) {
    const float* qrow = p.q + ((t0 + a) * H + h) * K;
    const float* krow = p.k + ((t0 + a) * H + h) * K;
    float* qa = s.qs.data() + a * K;
    float* ka = s.kf.data() + a * K;
    float mq = 0.f, mk = 0.f;
    for (int k = 0; k < K; ++k) {
      qa[k] = qrow[k] * p.scale;
      ka[k] = krow[k];
      const float aq = std::fabs(qa[k]), ak = std::fabs(ka[k]);
      mq = aq > mq ? aq : mq;
      mk = ak > mk ? ak : mk;
    }
    const float sqa = scale_from_amax(mq), ska = scale_from_amax(mk);
    s.sq[a] = sqa;
    s.sk[a] = ska;
    uint8_t* qu = s.qu8.data() + a * K4;
    int32_t csum = 0;
    for (int k = 0; k < K; ++k) {
      qu[k] = quant_u8(qa[k], sqa);
      const int kc = quant_code(ka[k], ska);
      csum += kc;
      s.kp[((k >> 2) * C16 + a) * 4 + (k & 3)] = static_cast<int8_t>(kc);
    }
    s.cs_k[a] = csum;
  }
  // Padded token rows of the last chunk: code 0 (their products are never used).
  for (int a = L; a < C4; ++a) std::memset(s.qu8.data() + a * K4, 128, K4);

  // --- acc = Q K^T (causal columns only) and the fused-decay epilogue ---------------------
  gemm({s.qu8.data(), K4, s.kp.data(), C16, s.cs_k.data(), s.acc_qk.data(), C16, L, L, K4,
        /*causal_cols=*/true, /*causal_red=*/false});
  for (int a = 0; a < L; ++a) {
    const int32_t* acc = s.acc_qk.data() + a * C16;
    float* Pa = s.P.data() + a * C;
    float m = 0.f;
    if (fused) {
      const float ra = s.sq[a] * row[a];
      for (int b = 0; b <= a; ++b) {
        Pa[b] = (static_cast<float>(acc[b]) * ra) * (s.sk[b] * col[b]);
        const float ab = std::fabs(Pa[b]);
        m = ab > m ? ab : m;
      }
    } else {
      const float* ma = mask + a * C;
      for (int b = 0; b <= a; ++b) {
        Pa[b] = ((static_cast<float>(acc[b]) * s.sq[a]) * s.sk[b]) * ma[b];
        const float ab = std::fabs(Pa[b]);
        m = ab > m ? ab : m;
      }
    }
    const float spa = scale_from_amax(m);
    s.sp[a] = spa;
    uint8_t* pu = s.pu8.data() + a * C4;
    for (int b = 0; b <= a; ++b) pu[b] = quant_u8(Pa[b], spa);
    for (int b = a + 1; b < C4; ++b) pu[b] = 128;
  }
  for (int a = L; a < C4; ++a) std::memset(s.pu8.data() + a * C4, 128, C4);

  // --- V per channel of the chunk (packed for both P V and K~^T V) ------------------------
  for (int v = 0; v < V; ++v) s.amax[v] = 0.f;
  for (int a = 0; a < L; ++a) {
    const float* vrow = p.v + ((t0 + a) * H + h) * V;
    for (int v = 0; v < V; ++v) {
      const float av = std::fabs(vrow[v]);
      s.amax[v] = av > s.amax[v] ? av : s.amax[v];
    }
  }
  for (int v = 0; v < V; ++v) {
    s.sv[v] = scale_from_amax(s.amax[v]);
    s.cs_v[v] = 0;
  }
  for (int a = 0; a < L; ++a) {
    const float* vrow = p.v + ((t0 + a) * H + h) * V;
    int8_t* dst = s.vp.data() + (a >> 2) * V16 * 4 + (a & 3);
    for (int v = 0; v < V; ++v) {
      const int c = quant_code(vrow[v], s.sv[v]);
      s.cs_v[v] += c;
      dst[v * 4] = static_cast<int8_t>(c);
    }
  }
  for (int a = L; a < L4; ++a) {  // zero reduction padding
    int8_t* dst = s.vp.data() + (a >> 2) * V16 * 4 + (a & 3);
    for (int v = 0; v < V16; ++v) dst[v * 4] = 0;
  }

  // --- O_intra = P V ----------------------------------------------------------------------
  gemm({s.pu8.data(), C4, s.vp.data(), V16, s.cs_v.data(), s.acc_pv.data(), V16, L, V, L4,
        false, /*causal_red=*/true});

  // --- S_{i-1} per column, O_inter = Q S ---------------------------------------------------
  for (int v = 0; v < V; ++v) s.amax[v] = 0.f;
  for (int k = 0; k < K; ++k) {
    const float* Sk = s.S.data() + k * V;
    for (int v = 0; v < V; ++v) {
      const float a = std::fabs(Sk[v]);
      s.amax[v] = a > s.amax[v] ? a : s.amax[v];
    }
  }
  for (int v = 0; v < V; ++v) {
    s.sS[v] = scale_from_amax(s.amax[v]);
    s.cs_s[v] = 0;
  }
  for (int k = 0; k < K; ++k) {
    const float* Sk = s.S.data() + k * V;
    int8_t* dst = s.Sp.data() + (k >> 2) * V16 * 4 + (k & 3);
    for (int v = 0; v < V; ++v) {
      const int c = quant_code(Sk[v], s.sS[v]);
      s.cs_s[v] += c;
      dst[v * 4] = static_cast<int8_t>(c);
    }
  }
  gemm({s.qu8.data(), K4, s.Sp.data(), V16, s.cs_s.data(), s.acc_qs.data(), V16, L, V, K4,
        false, false});

  for (int a = 0; a < L; ++a) {
    const int32_t* apv = s.acc_pv.data() + a * V16;
    const int32_t* aqs = s.acc_qs.data() + a * V16;
    float* o = p.out + ((t0 + a) * H + h) * V;
    const float spa = s.sp[a], qi = s.sq[a] * inter[a];
    for (int v = 0; v < V; ++v) {
      const float intra = (static_cast<float>(apv[v]) * spa) * s.sv[v];
      const float inter_v = (static_cast<float>(aqs[v]) * qi) * s.sS[v];
      o[v] = intra + inter_v;
    }
  }

  // --- K~ = K * g^(L-1-j) per channel; dS = K~^T V; S = S * g^L + dS -----------------------
  for (int k = 0; k < K; ++k) s.amax[k] = 0.f;
  for (int j = 0; j < L; ++j) {
    const float* kj = s.kf.data() + j * K;
    float* dj = s.kd.data() + j * K;
    for (int k = 0; k < K; ++k) {
      dj[k] = kj[k] * kdec[j];
      const float a = std::fabs(dj[k]);
      s.amax[k] = a > s.amax[k] ? a : s.amax[k];
    }
  }
  for (int k = 0; k < K; ++k) s.skd[k] = scale_from_amax(s.amax[k]);
  for (int j = 0; j < L; ++j) {
    const float* dj = s.kd.data() + j * K;
    for (int k = 0; k < K; ++k) s.kdT[k * C4 + j] = quant_u8(dj[k], s.skd[k]);
  }
  gemm({s.kdT.data(), C4, s.vp.data(), V16, s.cs_v.data(), s.acc_kv.data(), V16, K, V, L4,
        false, false});
  for (int k = 0; k < K; ++k) {
    const int32_t* acc = s.acc_kv.data() + k * V16;
    float* Sk = s.S.data() + k * V;
    const float sk = s.skd[k];
    for (int v = 0; v < V; ++v) {
      const float d = (static_cast<float>(acc[v]) * sk) * s.sv[v];
      Sk[v] = Sk[v] * chunk_decay + d;
    }
  }

  if (dbg_base >= 0) {  // integer accumulators for the tests ([.., C, C] and [.., C|K, V])
    for (int a = 0; a < L; ++a) {
      for (int b = 0; b <= a; ++b) p.dbg_qk[dbg_base * C * C + a * C + b] = s.acc_qk[a * C16 + b];
      for (int v = 0; v < V; ++v) {
        p.dbg_pv[(dbg_base * C + a) * V + v] = s.acc_pv[a * V16 + v];
        p.dbg_qs[(dbg_base * C + a) * V + v] = s.acc_qs[a * V16 + v];
      }
    }
    for (int k = 0; k < K; ++k)
      for (int v = 0; v < V; ++v) p.dbg_kv[(dbg_base * K + k) * V + v] = s.acc_kv[k * V16 + v];
  }
}

}  // namespace

void chunk_retention_cpu(const ChunkParams& p) {
  const int64_t tasks = p.N * p.H;
  const GemmFn gemm = p.use_vnni ? gemm_vnni : gemm_portable;
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    Scratch s(p.C, p.K, p.V);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / p.H;
      const int h = static_cast<int>(task % p.H);
      const size_t kv = static_cast<size_t>(p.K) * p.V;
      if (p.init != nullptr) {
        std::memcpy(s.S.data(), p.init + (n * p.H + h) * kv, kv * sizeof(float));
      } else {
        std::fill(s.S.begin(), s.S.end(), 0.f);
      }
      const int64_t start = p.offsets[n], stop = p.offsets[n + 1];
      int64_t ci = 0;
      for (int64_t t0 = start; t0 < stop; t0 += p.C, ++ci) {
        const int L = static_cast<int>(stop - t0 < p.C ? stop - t0 : p.C);
        const int64_t dbg = p.dbg_qk ? (n * p.H + h) * p.dbg_chunks + ci : -1;
        chunk_step(p, s, gemm, t0, L, h, dbg);
      }
      std::memcpy(p.final_state + (n * p.H + h) * kv, s.S.data(), kv * sizeof(float));
    }
  });
}

}  // namespace retquant
