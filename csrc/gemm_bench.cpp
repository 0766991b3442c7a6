// retquant::gemm_seconds: times the kernel's int8 GEMM stage alone (the benchmark's GEMM rate).
// Runs `reps` products of the given shape on fixed random codes, split over torch's threads.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <chrono>
#include <cstdint>
#include <vector>

#include "gemm.h"

namespace retquant {
namespace {

double gemm_seconds(int64_t m, int64_t n, int64_t r, int64_t reps, bool use_vnni) {
  TORCH_CHECK(m > 0 && n > 0 && r > 0 && reps > 0, "gemm_seconds: sizes must be positive");
  TORCH_CHECK(!use_vnni || cpu_has_avx512_vnni(), "this CPU has no AVX-512 VNNI");
  const int M = static_cast<int>(m), N = static_cast<int>(n), R = round_up(static_cast<int>(r), 4);
  const int M4 = round_up(M, 4), N16 = round_up(N, 16);
  const auto t0 = std::chrono::steady_clock::now();
  at::parallel_for(0, reps, 1, [&](int64_t begin, int64_t end) {
    std::vector<uint8_t> a(static_cast<size_t>(M4) * R);
    std::vector<int8_t> b(static_cast<size_t>(R) * N16);
    std::vector<int32_t> cs(N16, 0), c(static_cast<size_t>(M4) * N16);
    for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<uint8_t>((i * 37) & 0xff);
    for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<int8_t>((i * 11) % 255 - 127);
    const GemmArgs g{a.data(), R, b.data(), N16, cs.data(), c.data(), N16, M, N, R, false, false};
    for (int64_t i = begin; i < end; ++i) (use_vnni ? gemm_vnni : gemm_portable)(g);
  });
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(retquant, m) {
  m.def("gemm_seconds(int m, int n, int r, int reps, bool use_vnni) -> float", &gemm_seconds);
}

}  // namespace retquant
