// The per-(sequence, head) chunk loop, compiled once per ISA of cpu_isa.h: for the baseline ISA
// (portable path), with the AVX2 target and with the AVX-512 target, by chunk_portable.cpp /
// chunk_avx2.cpp / chunk_avx512.cpp. Each defines RQ_BODY_NS (namespace of its copy), RQ_GEMM
// (its int8 GEMM) and RQ_STAGES (the header holding its per-element stages:
// chunk_stages_portable.h, chunk_stages_avx2.h or chunk_stages_avx512.h) before including this
// file. Everything here and in the included headers is defined inside RQ_BODY_NS and no std::
// templates are instantiated, so the copies (compiled for different ISAs) share no inline code
// the linker could merge.
//
// Follows retquant/spec/int_chunk.py (default int8 config) step by step, in the spec's
// float32 operation order, so the integer accumulators are identical and the outputs match:
//   Q, K per token; V per channel of the chunk; acc = Q K^T with the fused-decay epilogue;
//   P per row; O = P V (intra) + (Q S_{i-1}) (inter, S per column); S = S * g^L + K~^T V.
// The stages write the GEMM operands directly in the layouts of gemm.h; their header's kSignedA
// says whether the A operands hold the codes or code + 128 (GemmArgs::a_signed).

namespace retquant {
namespace RQ_BODY_NS {

#include "chunk_scratch.h"
#include "quant.h"
#include RQ_STAGES

// `flag` if any of the n quantization scales is 2^25 or more (max |x| >= 127 * 2^25: outside the
// accepted range, chunk_retention.h); checked on the scales every ISA's stages compute alike.
static inline int scales_out_of_range(const float* scale, int n, int flag) {
  int bad = 0;
  for (int i = 0; i < n; ++i) bad |= !(scale[i] < kMaxInputScale);
  return bad ? flag : 0;
}

// One chunk of L tokens starting at global token index t0, for head h; T: element type of q,
// k, v and out (float, or uint16_t holding bfloat16).
template <typename T>
static void chunk_step(const ChunkParams& p, Scratch& s, int64_t t0, int L, int h,
                       int64_t dbg_base) {
  const int C = s.C, K = s.K, V = s.V, K4 = s.K4, K16 = s.K16, V16 = s.V16, C4 = s.C4;
  const int C16 = s.C16, L4 = round_up(L, 4);
  const int H = p.H;
  const int64_t ldq = static_cast<int64_t>(H) * K, ldv = static_cast<int64_t>(H) * V;
  const float* kdec = p.kdec + (static_cast<int64_t>(h) * (C + 1) + L) * C;
  // This head's first row of the chunk in q, k, v and out ([T_total, H, D]: rows ldq / ldv apart).
  const T* q0 = static_cast<const T*>(p.q) + (t0 * H + h) * K;
  const T* k0 = static_cast<const T*>(p.k) + (t0 * H + h) * K;
  const T* v0 = static_cast<const T*>(p.v) + (t0 * H + h) * V;
  T* o0 = static_cast<T*>(p.out) + (t0 * H + h) * V;

  // Q (scaled) and K per token -> A codes of Q K^T / Q S, B codes of Q K^T; K~ = K * g^(L-1-j)
  // and its column amax, read while the K rows are in cache.
  s.bad |= quant_token_rows(q0, k0, ldq, v0, ldv, L, p.scale, kdec, s);
  s.bad |= scales_out_of_range(s.sq, L, kRangeQ) | scales_out_of_range(s.sk, L, kRangeK);
  GemmArgs qk{s.qu8, K4, s.kp, C16, s.cs_k, s.acc_qk, C16, L, L, K4, true, false};
  qk.a_signed = kSignedA;
  RQ_GEMM(qk);
  score_codes(L, p.fused[h] != 0, p.row + h * C, p.col + h * C, p.mask + h * C * C, s);

  // V per channel of the chunk, packed once for both P V and K~^T V.
  if (!col_amax(v0, ldv, L, V, s.amax)) s.bad |= kNonFiniteV;
  quant_cols_packed(v0, ldv, L, L4, V, V16, s.amax, s.sv, s.vp, s.cs_v, s.cs_v_prefix, false);
  s.bad |= scales_out_of_range(s.sv, V, kRangeV);
  GemmArgs pv{s.pu8, C4, s.vp, V16, s.cs_v, s.acc_pv, V16, L, V, L4, false, true};
  pv.colsum_prefix = s.cs_v_prefix;
  pv.a_signed = kSignedA;
  RQ_GEMM(pv);

  // S_{i-1} per column (its amax was taken by the previous state update), O_inter = Q S.
  quant_cols_packed(s.S, V, K, K4, V, V16, s.Samax, s.sS, s.Sp, s.cs_s, nullptr, false);
  GemmArgs qs{s.qu8, K4, s.Sp, V16, s.cs_s, s.acc_qs, V16, L, V, K4, false, false};
  qs.a_signed = kSignedA;
  RQ_GEMM(qs);
  write_output(o0, ldv, L, p.inter + h * C, s);

  // dS = K~^T V (K~ as the A operand, 4 token rows interleaved); S = S * g^L + dS.
  quant_cols_packed(s.kd, K16, L, L4, K, K16, s.kd_amax, s.skd, reinterpret_cast<int8_t*>(s.kdp),
                    nullptr, nullptr, !kSignedA);
  GemmArgs kv{s.kdp, K16, s.vp, V16, s.cs_v, s.acc_kv, V16, K, V, L4, false, false};
  kv.a_packed = true;
  kv.a_signed = kSignedA;
  RQ_GEMM(kv);
  update_state(p.chunk_decay[h * (C + 1) + L], s);

  if (dbg_base >= 0) {  // integer accumulators for the tests ([.., C, C] and [.., C|K, V])
    for (int a = 0; a < L; ++a) {
      for (int b = 0; b <= a; ++b) p.dbg_qk[(dbg_base * C + a) * C + b] = s.acc_qk[a * C16 + b];
      for (int v = 0; v < V; ++v) {
        p.dbg_pv[(dbg_base * C + a) * V + v] = s.acc_pv[a * V16 + v];
        p.dbg_qs[(dbg_base * C + a) * V + v] = s.acc_qs[a * V16 + v];
      }
    }
    for (int k = 0; k < K; ++k)
      for (int v = 0; v < V; ++v) p.dbg_kv[(dbg_base * K + k) * V + v] = s.acc_kv[k * V16 + v];
  }
}



// Tasks [begin, end) of the (sequence, head group) grid: a task walks the chunks of one
// sequence and, per chunk, every head of its group, so the rows it loads (all heads of a token
// are adjacent in [T, H, D]) stream through memory instead of jumping H * D floats per token.
// Returns kOutOfMemory when scratch allocation fails, else the non-finite input flags.
template <typename T>
static int run_tasks_of(const ChunkParams& p, int64_t begin, int64_t end) {
  Scratch s;
  if (!scratch_init(s, p.C, p.K, p.V)) return kOutOfMemory;
  const int G = p.heads_per_task;
  const int groups = (p.H + G - 1) / G;
  const size_t kv = static_cast<size_t>(p.K) * p.V;
  const size_t V16 = static_cast<size_t>(s.V16);
  float* states = static_cast<float*>(std::calloc((kv + V16) * G, sizeof(float)));
  if (states == nullptr) {
    std::free(s.arena);
    return kOutOfMemory;
  }
  for (int64_t task = begin; task < end; ++task) {
    const int64_t n = task / groups;
    const int h0 = static_cast<int>(task % groups) * G;
    const int h1 = h0 + G < p.H ? h0 + G : p.H;
    for (int h = h0; h < h1; ++h) {
      float* S = states + (h - h0) * kv;
      if (p.init != nullptr) {
        std::memcpy(S, p.init + (n * p.H + h) * kv, kv * sizeof(float));
      } else {
        std::memset(S, 0, kv * sizeof(float));
      }
      // Column amax of the initial state, for the first chunk's Q S (and its range check).
      float* amax = states + kv * G + (h - h0) * V16;
      if (!col_amax(S, p.V, p.K, p.V, amax)) s.bad |= kNonFiniteState;
      for (int c = 0; c < p.V; ++c) s.bad |= amax[c] < kMaxStateAbs ? 0 : kRangeState;
    }
    const int64_t start = p.offsets[n], stop = p.offsets[n + 1];
    int64_t ci = 0;
    for (int64_t t0 = start; t0 < stop; t0 += p.C, ++ci) {
      const int L = static_cast<int>(stop - t0 < p.C ? stop - t0 : p.C);
      for (int h = h0; h < h1; ++h) {
        // The next step: the next head of this chunk, else the group's first head next chunk.
        const int64_t tn = h + 1 < h1 ? t0 : t0 + p.C;
        const int hn = h + 1 < h1 ? h + 1 : h0;
        s.pf_rows = tn < stop ? static_cast<int>(stop - tn < p.C ? stop - tn : p.C) : 0;
        if (s.pf_rows > 0) {
          s.pf_q = static_cast<const T*>(p.q) + (tn * p.H + hn) * p.K;
          s.pf_k = static_cast<const T*>(p.k) + (tn * p.H + hn) * p.K;
          s.pf_v = static_cast<const T*>(p.v) + (tn * p.H + hn) * p.V;
        }
        s.S = states + (h - h0) * kv;
        s.Samax = states + kv * G + (h - h0) * V16;
        const int64_t dbg = p.dbg_qk ? (n * p.H + h) * p.dbg_chunks + ci : -1;
        chunk_step<T>(p, s, t0, L, h, dbg);
      }
    }
    for (int h = h0; h < h1; ++h)
      std::memcpy(p.final_state + (n * p.H + h) * kv, states + (h - h0) * kv, kv * sizeof(float));
  }
  finish_stores();
  std::free(states);
  std::free(s.arena);
  return s.bad;
}

static int run_tasks(const ChunkParams& p, int64_t begin, int64_t end) {
  return p.bf16 ? run_tasks_of<uint16_t>(p, begin, end) : run_tasks_of<float>(p, begin, end);
}

}  // namespace RQ_BODY_NS
}  // namespace retquant
