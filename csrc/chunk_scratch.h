// Per-thread scratch of the chunk kernel: every operand of the four integer GEMMs in the layout
// gemm.h reads, the per-token / per-channel scales and the integer accumulators, carved out of
// one calloc'd arena sized for (C, K, V). Included inside each ISA copy's namespace (see
// chunk_body.h) so that no inline code is shared between the copies.

struct Scratch {
  int C, K, V, K4, K16, V16, C4, C16;
  float* qs;       // [K16]       one scaled Q row
  float* kd;       // [C4][K16]   K~ = K * g^(L-1-j)
  float *sq, *sk, *cb, *sp;  // [C16] per-token scales; cb = s_k * g^-b (fused column scale)
  float *sv, *sS, *skd;      // [W]   per-channel scales of V, S_{i-1}, K~
  float *amax, *kd_amax;     // [W]   column amax of V and of K~
  float* P;        // [C16]       one row of decayed scores
  float* S;        // the current head's carried state [K][V] (owned by run_tasks)
  float* Samax;    // its per-column amax [V16], kept current by the state update
  uint8_t* qu8;    // [C4][K4]    Q codes + 128, or the codes (kSignedA) (A of Q K^T and Q S)
  uint8_t* pu8;    // [C4][C4]    P codes + 128, or the codes (kSignedA) (A of P V)
  uint8_t* kdp;    // [C4/4][K16][4] K~ codes (+ 128 unless kSignedA), 4 token rows interleaved
  int8_t* kq;      // [C16][K16]  K codes, token-major
  int8_t* kp;      // [K4/4][C16][4] K codes (B of Q K^T)
  int8_t* vp;      // [C4/4][V16][4] V codes (B of P V and K~^T V)
  int8_t* Sp;      // [K4/4][V16][4] S_{i-1} codes (B of Q S)
  int32_t *cs_k, *cs_v, *cs_s;  // column sums of the B operands
  int32_t* cs_v_prefix;  // [C4/4 + 1][V16] column sums of V's codes over its first 4i tokens
  int32_t *acc_qk, *acc_pv, *acc_qs, *acc_kv;
  int bad;         // inputs seen holding inf/NaN (kNonFinite* flags of chunk_retention.h)
  // Rows of the next (chunk, head) step, prefetched into L2 during this one (null: none).
  const void *pf_q, *pf_k, *pf_v;  // of the kernel's element type
  int pf_rows;
  void* arena;
};

static inline bool scratch_init(Scratch& s, int C, int K, int V) {
  s.C = C; s.K = K; s.V = V;
  s.K4 = round_up(K, 4); s.K16 = round_up(K, 16); s.V16 = round_up(V, 16);
  s.C4 = round_up(C, 4); s.C16 = round_up(C, 16);
  const int64_t K16 = s.K16, V16 = s.V16, C4 = s.C4, C16 = s.C16, K4 = s.K4;
  const int64_t W = V16 > K16 ? V16 : K16;
  int64_t bytes = 0;
  const int64_t sizes[] = {
      4 * K16, 4 * C4 * K16, 4 * C16, 4 * C16, 4 * C16, 4 * C16, 4 * W, 4 * W, 4 * W, 4 * W,
      4 * W, 4 * C16, C4 * K4, C4 * C4, C4 * K16, C16 * K16, K4 * C16, C4 * V16, K4 * V16,
      4 * C16, 4 * W, 4 * W, 4 * C4 * C16, 4 * C4 * V16, 4 * C4 * V16, 4 * K4 * V16,
      4 * (C4 / 4 + 1) * V16};
  for (int64_t n : sizes) bytes += (n + 63) / 64 * 64 + 64;  // 64-byte aligned, 64 bytes slack
  s.arena = std::calloc(static_cast<size_t>(bytes) + 64, 1);
  if (s.arena == nullptr) return false;
  char* p = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(s.arena) + 63) / 64 * 64);
  int i = 0;
  auto take = [&p, &i, &sizes]() {
    char* r = p;
    p += (sizes[i++] + 63) / 64 * 64 + 64;
    return r;
  };
  s.qs = reinterpret_cast<float*>(take());
  s.kd = reinterpret_cast<float*>(take());
  s.sq = reinterpret_cast<float*>(take());
  s.sk = reinterpret_cast<float*>(take());
  s.cb = reinterpret_cast<float*>(take());
  s.sp = reinterpret_cast<float*>(take());
  s.sv = reinterpret_cast<float*>(take());
  s.sS = reinterpret_cast<float*>(take());
  s.skd = reinterpret_cast<float*>(take());
  s.amax = reinterpret_cast<float*>(take());
  s.kd_amax = reinterpret_cast<float*>(take());
  s.P = reinterpret_cast<float*>(take());
  s.qu8 = reinterpret_cast<uint8_t*>(take());
  s.pu8 = reinterpret_cast<uint8_t*>(take());
  s.kdp = reinterpret_cast<uint8_t*>(take());
  s.kq = reinterpret_cast<int8_t*>(take());
  s.kp = reinterpret_cast<int8_t*>(take());
  s.vp = reinterpret_cast<int8_t*>(take());
  s.Sp = reinterpret_cast<int8_t*>(take());
  s.cs_k = reinterpret_cast<int32_t*>(take());
  s.cs_v = reinterpret_cast<int32_t*>(take());
  s.cs_s = reinterpret_cast<int32_t*>(take());
  s.acc_qk = reinterpret_cast<int32_t*>(take());
  s.acc_pv = reinterpret_cast<int32_t*>(take());
  s.acc_qs = reinterpret_cast<int32_t*>(take());
  s.acc_kv = reinterpret_cast<int32_t*>(take());
  s.cs_v_prefix = reinterpret_cast<int32_t*>(take());
  s.S = nullptr;
  s.Samax = nullptr;
  s.bad = 0;
  s.pf_q = s.pf_k = s.pf_v = nullptr;
  s.pf_rows = 0;
  std::memset(s.qu8, 128, C4 * K4);
  std::memset(s.kdp, 128, C4 * K16);
  return true;
}
