// Symmetric int8 quantization with the exact float32 arithmetic of retquant/quant/primitives.py:
//   scale = amax / 127 (one fp32 division; a zero or underflowed scale becomes 1)
//   code  = clamp(round_half_even(x / scale), -127, 127)   (a true fp32 division per element)
// Compiled with -ffp-contract=off and without -ffast-math, so each step rounds once.
//
// No include guard, namespace or includes: it is included inside a namespace (per-ISA in
// chunk_body.h)
// (so each compiled copy gets its own inline functions); include <cmath> and <cstdint> first.

constexpr float kQmax = 127.0f;

// Bits of |x|. For non-NaN values they are ordered like the magnitudes, so an integer max over
// them is the float max of |x| and `abs_bits(x) >= kInfBits` tests for inf or NaN: integer
// reductions GCC vectorizes at the baseline ISA, where a float max reduction (NaN ordering) or
// a float probe sum (x * 0 accumulated: not associative) stays scalar. NaN inputs make the
// kernels raise, so what an amax is for them does not matter.
constexpr uint32_t kInfBits = 0x7F800000u;
inline uint32_t abs_bits(float x) {
  uint32_t u;
  __builtin_memcpy(&u, &x, 4);
  return u & 0x7FFFFFFFu;
}
inline float from_bits(uint32_t u) {
  float x;
  __builtin_memcpy(&x, &u, 4);
  return x;
}

// Scale of a group whose largest magnitude is `amax`.
inline float scale_from_amax(float amax) {
  float s = amax / kQmax;
  return s > 0.0f ? s : 1.0f;
}

// Round-half-to-even of |t| < 2**22 by the exact IEEE "magic number" addition (default rounding
// mode); vectorizes on any SSE2 CPU where std::nearbyint would be a libm call.
inline float round_half_even(float t) {
  constexpr float kMagic = 12582912.0f;  // 1.5 * 2**23
  return (t + kMagic) - kMagic;
}

// Integer code of x / s, as an int (|code| <= 127). clamp(round(t)) == round(clamp(t)) because
// the bounds are integers, and clamping first keeps |t| small for the rounding trick.
inline int quant_code(float x, float s) {
  float t = x / s;
  // Two selects (with -fno-trapping-math, cpu_extension.py, GCC if-converts them: the
  // quantization loops vectorize at the baseline ISA instead of branching per element).
  t = t < -kQmax ? -kQmax : t;
  t = t > kQmax ? kQmax : t;
  return static_cast<int>(round_half_even(t));
}

constexpr float kMinNormal = 1.17549435e-38f;  // FLT_MIN

// Whether a group with scale s may skip the clamp (the SIMD paths' in-range codes): when
// |x| <= amax of x's group and s = fl(amax / 127) is a normal float, |x / s| <= 127 (1 + 2^-23),
// which rounds to at most 127 anyway.
inline bool scale_normal(float s) { return s >= kMinNormal; }

// Biased (code + 128) byte: the unsigned operand of vpdpbusd.
inline uint8_t quant_u8(float x, float s) {
  return static_cast<uint8_t>(quant_code(x, s) + 128);
}

