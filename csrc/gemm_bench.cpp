// The GEMM microbenchmarks behind bench/cpu.py, both split over torch's threads:
//   retquant::gemm_seconds   times the kernel's int8 GEMM stage alone on one product shape;
//   retquant::int8_peak_gops the ISA's int8 peak: its GEMM's instruction sequence on registers
//                            only, so the GEMM stage can be reported as a fraction of it.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <vector>

#include "cpu_isa.h"
#include "gemm.h"

namespace retquant {
namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Runs `reps` products of the given shape on fixed random codes with the ISA's GEMM.
double gemm_seconds(int64_t m, int64_t n, int64_t r, int64_t reps, int64_t isa) {
  TORCH_CHECK(m > 0 && n > 0 && r > 0 && reps > 0, "gemm_seconds: sizes must be positive");
  check_isa(isa, "gemm_seconds");
  const GemmFn gemm = gemm_for_isa(isa);
  const int M = static_cast<int>(m), N = static_cast<int>(n), R = round_up(static_cast<int>(r), 4);
  const int M4 = round_up(M, 4), N16 = round_up(N, 16);
  const auto t0 = std::chrono::steady_clock::now();
  at::parallel_for(0, reps, 1, [&](int64_t begin, int64_t end) {
    std::vector<uint8_t> a(static_cast<size_t>(M4) * R);
    std::vector<int8_t> b(static_cast<size_t>(R) * N16);
    std::vector<int32_t> cs(N16, 0), c(static_cast<size_t>(M4) * N16);
    // codes in [-127, 127], as the kernel's quantizers produce; A in the form the ISA's chunk
    // stages write (the codes for AVX2, code + 128 otherwise: GemmArgs::a_signed)
    const bool a_signed = isa == kIsaAvx2;
    for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<uint8_t>(1 + (i * 37) % 255 + (a_signed ? 128 : 0));
    for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<int8_t>((i * 11) % 255 - 127);
    GemmArgs g{a.data(), R, b.data(), N16, cs.data(), c.data(), N16, M, N, R, false, false};
    g.a_signed = a_signed;
    for (int64_t i = begin; i < end; ++i) gemm(g);
  });
  return seconds_since(t0);
}

// GOP/s of the ISA's int8 inner loop over all of torch's threads (one probe per thread).
double int8_peak_gops(int64_t isa) {
  check_isa(isa, "int8_peak_gops");
  TORCH_CHECK(isa != kIsaPortable,
              "int8_peak_gops: the portable path has no SIMD int8 instruction sequence to probe");
  const int64_t threads = at::get_num_threads();
  const int64_t iters = 20'000'000;  // ~0.1-0.3 s per thread
  std::atomic<int64_t> ops{0};
  const auto t0 = std::chrono::steady_clock::now();
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      ops += isa == kIsaAvx512 ? int8_peak_vnni(iters) : int8_peak_avx2(iters);
  });
  return static_cast<double>(ops.load()) / seconds_since(t0) / 1e9;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(retquant, m) {
  // isa: a kIsa* code of cpu_isa.h (0 portable, 1 avx2, 2 avx512)
  m.def("gemm_seconds(int m, int n, int r, int reps, int isa) -> float", &gemm_seconds);
  m.def("int8_peak_gops(int isa) -> float", &int8_peak_gops);
}

}  // namespace retquant
