// The per-token stages of the decode kernel in plain C++ (the portable path);
// recurrent_stages_avx2.h and recurrent_stages_avx512.h hold the same stages with AVX2 and
// AVX-512 intrinsics, identical in bytes.

// Per-token quantization of n floats (times `mul` when `scaled`) into int codes and *scale;
// returns false if x holds inf or NaN (integer tests and max of the bits: quant.h).
static inline bool quant_token(const float* x, float mul, bool scaled, int n, float* tmp,
                               int32_t* codes, float* scale) {
  uint32_t bad = 0, m = 0;
  for (int i = 0; i < n; ++i) {
    bad |= abs_bits(x[i]) >= kInfBits;
    tmp[i] = scaled ? x[i] * mul : x[i];
    const uint32_t a = abs_bits(tmp[i]);
    m = a > m ? a : m;
  }
  const float s = scale_from_amax(from_bits(m));
  for (int j = 0; j < n; ++j) codes[j] = quant_code(tmp[j], s);
  *scale = s;
  return bad == 0;
}

// S = src * g + (float(k_int) * float(v_int)) * skv (src null: zeros) with the column amax of
// the new S; returns false if `check` and src holds inf, NaN or a magnitude >= 2^100
// (kStateLimitBits).
static inline bool update_state(const float* src, float* S, int K, int V, float g,
                                const int32_t* ki, const float* vf, float skv, float* amax,
                                bool check) {
  uint32_t bad = 0;
  for (int v = 0; v < V; ++v) amax[v] = 0.f;
  for (int k = 0; k < K; ++k) {
    const float kc = static_cast<float>(ki[k]);
    for (int v = 0; v < V; ++v) {
      const float old = src != nullptr ? src[k * V + v] : 0.f;
      bad |= abs_bits(old) >= kStateLimitBits;  // inf/NaN or |old| >= kMaxStateAbs
      const float s = old * g + (kc * vf[v]) * skv;
      S[k * V + v] = s;
      const float a = std::fabs(s);
      amax[v] = a > amax[v] ? a : amax[v];
    }
  }
  return !check || bad == 0;
}

// acc[v] = sum_k q_int[k] * S_int[k][v], S quantized per column (scales into sS).
static inline void state_dot(const float* S, int K, int V, const float* amax, float* sS,
                             const int32_t* qi, int32_t* acc) {
  for (int v = 0; v < V; ++v) {
    sS[v] = scale_from_amax(amax[v]);
    acc[v] = 0;
  }
  for (int k = 0; k < K; ++k)
    for (int v = 0; v < V; ++v) acc[v] += qi[k] * quant_code(S[k * V + v], sS[v]);
}
