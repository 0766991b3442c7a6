// Checks every token of a recurrent (decode) call before the kernel writes any state, so a call
// rejected for its tokens leaves a state updated in place (RetentionDecoder) bit for bit as it
// was: the per-token checks inside recurrent_body.h come after earlier tokens and other heads
// have already been written. One pass over B * H * (2K + V) floats per decode step: small next
// to the K * V state update per head.
#pragma once

#include <ATen/Parallel.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>

#include "chunk_retention.h"

namespace retquant {

// Flags (kNonFiniteQ | kNonFiniteK | kNonFiniteV) of the inputs holding an element outside
// the accepted range: not finite (the comparison is false for NaN).
inline int scan_recurrent_tokens(const RecurrentParams& p) {
  const int64_t T = p.offsets[p.N];
  const int64_t row_q = static_cast<int64_t>(p.H) * p.K, row_v = static_cast<int64_t>(p.H) * p.V;
  const float lim = std::numeric_limits<float>::max();
  std::atomic<int> flags{0};
  // Decode calls (a token or a few per sequence) stay on the calling thread.
  const int64_t grain = 1 + (int64_t{1} << 16) / (2 * row_q + row_v);
  at::parallel_for(0, T, grain, [&](int64_t begin, int64_t end) {
    int bq = 0, bk = 0, bv = 0;
    const float scale = p.scale;
    for (int64_t i = begin * row_q; i < end * row_q; ++i) {
      bq |= !(std::fabs(p.q[i] * scale) <= lim);  // q as the kernel quantizes it: times scale
      bk |= !(std::fabs(p.k[i]) <= lim);
    }
    for (int64_t i = begin * row_v; i < end * row_v; ++i) bv |= !(std::fabs(p.v[i]) <= lim);
    flags.fetch_or((bq ? kNonFiniteQ : 0) | (bk ? kNonFiniteK : 0) | (bv ? kNonFiniteV : 0));
  });
  return flags.load();
}

}  // namespace retquant
