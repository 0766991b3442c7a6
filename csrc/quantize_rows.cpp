// Per-token (q, k) and per-(chunk, channel) (v) int8 quantization for the autograd layer, the
// V quantization of retquant/spec/int_chunk.py included: parallel over rows / chunks with
// at::parallel_for; the loops (quantize_rows_body.h) are compiled for the baseline ISA and for
// AVX2, the copy taken chosen once through CPUID.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <c10/util/Exception.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "quantize_rows.h"

#define QR_NS qr_base
#define QR_AVX2 0
#include "quantize_rows_body.h"
#undef QR_NS
#undef QR_AVX2

#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define QR_NS qr_avx2
#define QR_AVX2 1
#include "quantize_rows_body.h"
#undef QR_NS
#undef QR_AVX2
#pragma GCC pop_options

namespace retquant {
namespace {

bool use_avx2() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}

void check_io(const at::Tensor& x, const at::Tensor& codes, const char* name) {
  TORCH_CHECK(x.device().is_cpu() && x.is_contiguous() && x.dim() == 3, name,
              " must be a contiguous CPU tensor [T, H, D]");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, name,
              " must be float32 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK(codes.scalar_type() == at::kChar && codes.is_contiguous() && codes.sizes() == x.sizes(),
              "codes must be a contiguous int8 tensor of ", name, "'s shape");
}

void check_scales(const at::Tensor& s, at::IntArrayRef want) {
  TORCH_CHECK(s.scalar_type() == at::kFloat && s.is_contiguous() && s.sizes() == want,
              "scales must be a contiguous float32 tensor of shape ", want);
}

}  // namespace

int64_t quantize_tokens(const at::Tensor& x, double mul, at::Tensor codes, at::Tensor scales) {
  check_io(x, codes, "x");
  const int64_t rows = x.size(0) * x.size(1);
  check_scales(scales, {x.size(0), x.size(1)});
  const int n = static_cast<int>(x.size(2));
  const float m = static_cast<float>(mul);  // the float32 multiplier, as the spec's q * scale
  const bool bf16 = x.scalar_type() == at::kBFloat16, avx2 = use_avx2();
  const void* xp = x.data_ptr();
  int8_t* cp = codes.data_ptr<int8_t>();
  float* sp = scales.data_ptr<float>();
  std::atomic<int> flags{0};
  const int64_t grain = 1 + 16384 / (n + 1);  // about 16K elements per task
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    std::vector<float> tmp(static_cast<size_t>(n));
    int f;
    if (bf16) {
      const auto* p = static_cast<const uint16_t*>(xp);
      f = avx2 ? qr_avx2::token_rows(p, r0, r1, n, m, tmp.data(), cp, sp)
               : qr_base::token_rows(p, r0, r1, n, m, tmp.data(), cp, sp);
    } else {
      const auto* p = static_cast<const float*>(xp);
      f = avx2 ? qr_avx2::token_rows(p, r0, r1, n, m, tmp.data(), cp, sp)
               : qr_base::token_rows(p, r0, r1, n, m, tmp.data(), cp, sp);
    }
    flags.fetch_or(f);
  });
  return flags.load();
}

int64_t quantize_v_chunks(const at::Tensor& v, const at::Tensor& offsets, int64_t chunk_size,
                          at::Tensor codes, at::Tensor scales) {
  check_io(v, codes, "v");
  TORCH_CHECK(chunk_size >= 1, "chunk_size must be >= 1");
  TORCH_CHECK(offsets.device().is_cpu() && offsets.scalar_type() == at::kLong &&
                  offsets.is_contiguous() && offsets.dim() == 1 && offsets.numel() >= 2,
              "offsets must be a contiguous int64 CPU tensor [N + 1]");
  const int64_t T = v.size(0), w = v.size(1) * v.size(2);
  const int64_t* off = offsets.data_ptr<int64_t>();
  const int64_t N = offsets.numel() - 1;
  TORCH_CHECK(off[0] == 0 && off[N] == T, "offsets must run from 0 to T_total");
  // chunk -> first token: chunks are numbered sequence by sequence
  std::vector<int64_t> starts;
  for (int64_t s = 0; s < N; ++s) {
    TORCH_CHECK(off[s + 1] > off[s], "offsets must increase");
    for (int64_t t = off[s]; t < off[s + 1]; t += chunk_size) starts.push_back(t);
  }
  const int64_t n_chunks = static_cast<int64_t>(starts.size());
  check_scales(scales, {n_chunks, v.size(1), v.size(2)});
  std::vector<int64_t> ends(starts.size());
  for (int64_t s = 0, c = 0; s < N; ++s)
    for (int64_t t = off[s]; t < off[s + 1]; t += chunk_size, ++c)
      ends[c] = t + chunk_size < off[s + 1] ? t + chunk_size : off[s + 1];
  const bool bf16 = v.scalar_type() == at::kBFloat16, avx2 = use_avx2();
  const void* vp = v.data_ptr();
  int8_t* cp = codes.data_ptr<int8_t>();
  float* sp = scales.data_ptr<float>();
  std::atomic<int> flags{0};
  at::parallel_for(0, n_chunks, 1, [&](int64_t c0, int64_t c1) {
    std::vector<float> amax(static_cast<size_t>(w)), tmp(static_cast<size_t>(w));
    int f = 0;
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t t = starts[c];
      const int L = static_cast<int>(ends[c] - t);
      int8_t* cc = cp + t * w;
      float* sc = sp + c * w;
      if (bf16) {
        const auto* p = static_cast<const uint16_t*>(vp) + t * w;
        f |= avx2 ? qr_avx2::v_chunk(p, L, w, amax.data(), tmp.data(), cc, sc)
                  : qr_base::v_chunk(p, L, w, amax.data(), tmp.data(), cc, sc);
      } else {
        const auto* p = static_cast<const float*>(vp) + t * w;
        f |= avx2 ? qr_avx2::v_chunk(p, L, w, amax.data(), tmp.data(), cc, sc)
                  : qr_base::v_chunk(p, L, w, amax.data(), tmp.data(), cc, sc);
      }
    }
    flags.fetch_or(f);
  });
  return flags.load();
}

}  // namespace retquant
