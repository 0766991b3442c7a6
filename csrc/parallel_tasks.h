// Runs a kernel's task grid over torch's threads and combines the per-range statuses
// (chunk_retention.h: negative = out of memory, else non-finite input flags, or'ed).
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <atomic>
#include <cstdint>

namespace retquant {

// tasks(begin, end) -> status for the ranges of [0, n); `kernel` names it in the OOM error.
template <typename Tasks>
int run_task_grid(int64_t n, const char* kernel, const Tasks& tasks) {
  std::atomic<bool> oom{false};
  std::atomic<int> flags{0};
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    const int r = tasks(begin, end);
    if (r < 0) {
      oom = true;
    } else {
      flags.fetch_or(r);
    }
  });
  TORCH_CHECK(!oom.load(), "retquant ", kernel, " kernel: out of memory for its scratch buffers");
  return flags.load();
}

}  // namespace retquant
