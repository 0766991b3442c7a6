// The loops of ste_tensor.cpp, compiled twice like quantize_rows_body.h: for the baseline ISA and
// with the AVX2 target (chosen through CPUID). The including file defines ST_NS; everything is
// inside it, so the two copies share no inline code the linker could merge. The loops are
// written for GCC's vectorizer (selects, no branches; -fno-trapping-math lets it if-convert).
//
// Arithmetic as retquant/quant/primitives.py for a symmetric spec with one scale s:
//   t = x / s (one float32 division), code = round_half_even(clamp(t, -qmax, qmax)).

namespace retquant {
namespace ST_NS {

// Round-half-to-even of |t| < 2**22 by the exact IEEE magic-number addition (quant.h's trick;
// the clamp keeps |t| <= 32767 here).
static inline float rhe(float t) {
  constexpr float kMagic = 12582912.0f;  // 1.5 * 2**23
  return (t + kMagic) - kMagic;
}

// Returns 1 if any x is inf or NaN (an int OR, so the loop still vectorizes).
static int codes_of(const float* __restrict__ x, int64_t n, float s, float qmax,
                    int8_t* __restrict__ codes) {
  constexpr float kFloatMax = 3.40282347e+38f;
  int bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    bad |= !(std::fabs(x[i]) <= kFloatMax);
    float t = x[i] / s;
    t = t < -qmax ? -qmax : t;
    t = t > qmax ? qmax : t;
    codes[i] = static_cast<int8_t>(static_cast<int>(rhe(t)));
  }
  return bad;
}

// dx = g where inside; sums[0] += g * (inside ? rhe(t) - t : (below ? -qmax : qmax));
// sums[1] += g * (above - below). "inside" by mode (ste_tensor.h). Partial sums in 8 double
// lanes, so the loop vectorizes and the total does not depend on the thread split's rounding
// more than a float64 sum does.
static void backward(const float* __restrict__ x, const float* __restrict__ g, int64_t n,
                     float s, float qmax, float alpha, int mode, float* __restrict__ dx,
                     double* sums) {
  double l0[8] = {0, 0, 0, 0, 0, 0, 0, 0}, l1[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t i = 0; i < n; ++i) {
    const float t = x[i] / s;
    float tc = t < -qmax ? -qmax : t;
    tc = tc > qmax ? qmax : tc;
    const float r = rhe(tc);
    bool below, above;
    if (mode == 0) {  // LSQ: the scaled value against the code range
      below = t < -qmax;
      above = t > qmax;
    } else if (mode == 1) {  // TQT: the rounded value against the code range
      const float rt = rhe(t < -2 * qmax ? -2 * qmax : (t > 2 * qmax ? 2 * qmax : t));
      below = rt < -qmax;
      above = rt > qmax;
    } else {  // PACT: the value against the clip
      below = x[i] < -alpha;
      above = x[i] > alpha;
    }
    const bool inside = !(below || above);
    const float gi = g[i];
    dx[i] = inside ? gi : 0.0f;
    const float dt = inside ? r - t : (below ? -qmax : qmax);
    l0[i & 7] += static_cast<double>(gi) * static_cast<double>(dt);
    l1[i & 7] += above ? static_cast<double>(gi) : (below ? -static_cast<double>(gi) : 0.0);
  }
  for (int j = 0; j < 8; ++j) {
    sums[0] += l0[j];
    sums[1] += l1[j];
  }
}

}  // namespace ST_NS
}  // namespace retquant
