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
#include <limits>

#include "chunk_retention.h"

namespace retquant {

// Non-finite flag | range flag of n floats (times `mul`, as the kernel quantizes them) against
// the range bound `lim` (chunk_retention.h); comparisons are false for NaN.
inline int scan_range(const float* x, int64_t n, float mul, float lim, int nonfinite, int range) {
  constexpr float kMax = std::numeric_limits<float>::max();
  int bad_finite = 0, bad_range = 0;
  for (int64_t i = 0; i < n; ++i) {
    bad_finite |= !(std::fabs(x[i]) <= kMax);
    bad_range |= !(std::fabs(x[i] * mul) < lim);
  }
  return (bad_finite ? nonfinite : 0) | (bad_range ? range : 0);
}

// Flags (chunk_retention.h) of q, k, v outside the accepted range.
inline int scan_recurrent_tokens(const RecurrentParams& p) {
  const int64_t T = p.offsets[p.N];
  const int64_t row_q = static_cast<int64_t>(p.H) * p.K, row_v = static_cast<int64_t>(p.H) * p.V;
  std::atomic<int> flags{0};
  // Decode calls (a token or a few per sequence) stay on the calling thread.
  const int64_t grain = 1 + (int64_t{1} << 16) / (2 * row_q + row_v);
  at::parallel_for(0, T, grain, [&](int64_t begin, int64_t end) {
    const int64_t nq = (end - begin) * row_q, nv = (end - begin) * row_v;
    flags.fetch_or(scan_range(p.q + begin * row_q, nq, p.scale, kMaxInputAbs, kNonFiniteQ, kRangeQ) |
                   scan_range(p.k + begin * row_q, nq, 1.f, kMaxInputAbs, kNonFiniteK, kRangeK) |
                   scan_range(p.v + begin * row_v, nv, 1.f, kMaxInputAbs, kNonFiniteV, kRangeV));
  });
  return flags.load();
}

}  // namespace retquant
