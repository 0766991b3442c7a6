// The per-token stages of the decode kernel in plain C++ (the portable path);
// recurrent_stages_avx512.h holds the same stages with AVX-512 intrinsics, identical in bytes.

// Per-token quantization of n floats (times `mul` when `scaled`) into int codes and *scale;
// returns false if x holds inf or NaN (x * 0 is NaN exactly then).
static inline bool quant_token(const float* x, float mul, bool scaled, int n, float* tmp,
                               int32_t* codes, float* scale) {
  float probe = 0.f, m = 0.f;
  for (int i = 0; i < n; ++i) {
    probe += x[i] * 0.f;
    tmp[i] = scaled ? x[i] * mul : x[i];
    const float a = std::fabs(tmp[i]);
    m = a > m ? a : m;
  }
  const float s = scale_from_amax(m);
  for (int j = 0; j < n; ++j) codes[j] = quant_code(tmp[j], s);
  *scale = s;
  return probe == probe;
}

// S = src * g + (float(k_int) * float(v_int)) * skv (src null: zeros) with the column amax of
// the new S; returns false if `check` and src holds inf, NaN or a magnitude >= 2^100
// (kStateProbe).
static inline bool update_state(const float* src, float* S, int K, int V, float g,
                                const int32_t* ki, const float* vf, float skv, float* amax,
                                bool check) {
  float probe = 0.f;
  for (int v = 0; v < V; ++v) amax[v] = 0.f;
  for (int k = 0; k < K; ++k) {
    const float kc = static_cast<float>(ki[k]);
    for (int v = 0; v < V; ++v) {
      const float old = src != nullptr ? src[k * V + v] : 0.f;
      probe += (old * kStateProbe) * 0.f;
      const float s = old * g + (kc * vf[v]) * skv;
      S[k * V + v] = s;
      const float a = std::fabs(s);
      amax[v] = a > amax[v] ? a : amax[v];
    }
  }
  return !check || probe == probe;
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
