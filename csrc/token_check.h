// Checks every token of a recurrent (decode) call before the kernel writes any state, so a call
// rejected for its tokens leaves a state updated in place (RetentionDecoder) bit for bit as it
// was: the per-token checks inside recurrent_body.h come after earlier tokens and other heads
// have already been written. One pass over B * H * (2K + V) floats per decode step: small next
// to the K * V state update per head. The state is not scanned here (a second pass over K * V
// per head would cost as much as the step): the kernel checks it while reading it
// (kStateProbe), and RetentionDecoder checks the state it updates in place when it is set.
#pragma once

#include <ATen/Parallel.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "chunk_retention.h"
#include "cpu_isa.h"

namespace retquant {

// The largest bits of |x| over n floats (abs_bits of quant.h: a float's bits order like its
// magnitude, inf and NaN above every finite one, so this one integer max is both the amax and
// the finiteness probe): the baseline copy in recurrent_step.cpp, the AVX2 one in
// recurrent_avx2.cpp.
uint32_t max_abs_bits_portable(const float* x, int64_t n);
uint32_t max_abs_bits_avx2(const float* x, int64_t n);

// Non-finite flag | range flag of floats whose max_abs_bits is `bits` (times `mul`, as the kernel
// quantizes them) against the range bound `lim` (chunk_retention.h): the flags of every element's
// test, since |x * mul| rounds monotonically in |x| and inf or NaN times mul fails `< lim`.
inline int range_flags(uint32_t bits, float mul, float lim, int nonfinite, int range) {
  float amax;
  std::memcpy(&amax, &bits, 4);
  return (std::isfinite(amax) ? 0 : nonfinite) | (std::fabs(amax * mul) < lim ? 0 : range);
}

// Flags (chunk_retention.h) of q, k, v outside the accepted range.
inline int scan_recurrent_tokens(const RecurrentParams& p) {
  const int64_t T = p.offsets[p.N];
  const int64_t row_q = static_cast<int64_t>(p.H) * p.K, row_v = static_cast<int64_t>(p.H) * p.V;
  // the portable copy when the portable kernels are forced (tests run every path), else AVX2
  auto* max_bits = p.isa != kIsaPortable && cpu_has_avx2() ? max_abs_bits_avx2 : max_abs_bits_portable;
  std::atomic<int> flags{0};
  // Decode calls (a token or a few per sequence) stay on the calling thread.
  const int64_t grain = 1 + (int64_t{1} << 16) / (2 * row_q + row_v);
  at::parallel_for(0, T, grain, [&](int64_t begin, int64_t end) {
    const int64_t nq = (end - begin) * row_q, nv = (end - begin) * row_v;
    // (no element, no flag: not even 0 times a NaN scale)
    auto scan = [&](const float* x, int64_t n, float mul, int nonfinite, int range) {
      return n == 0 ? 0 : range_flags(max_bits(x, n), mul, kMaxInputAbs, nonfinite, range);
    };
    flags.fetch_or(scan(p.q + begin * row_q, nq, p.scale, kNonFiniteQ, kRangeQ) |
                   scan(p.k + begin * row_q, nq, 1.f, kNonFiniteK, kRangeK) |
                   scan(p.v + begin * row_v, nv, 1.f, kNonFiniteV, kRangeV));
  });
  return flags.load();
}

}  // namespace retquant
