// Scalar conversions of the kernels' element types (float, or bfloat16 held as its 16 bits:
// exactly the upper half of the float32 it stands for). to_f32 widens exactly; put stores float
// as is and bfloat16 rounded to nearest even like torch's .to(bfloat16), NaN as 0x7FC0 (the
// rounding add would carry a NaN's payload into the sign bit).
//
// No include guard, namespace or includes (like quant.h): included inside each ISA copy's
// namespace so the copies share no inline code; include <cstdint> and <cstring> first.

static inline float to_f32(float x) { return x; }
static inline float to_f32(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
static inline void put(float* d, float x) { *d = x; }
static inline void put(uint16_t* d, float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  *d = x != x ? static_cast<uint16_t>(0x7FC0)
              : static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}
