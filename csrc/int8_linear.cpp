// The int8 linear layer's ops (int8_linear.h): retquant::int8_pack_weight packs weight codes
// [N, K] into gemm.h's B layout once; retquant::int8_linear_fwd runs the product with the
// epilogue (or raw int32) over a grid of (row block, column group) tasks. The Python layer
// (retquant/backends/int8_linear.py) checks shapes and dtypes and names the arguments; the checks
// here only guard memory safety, except the code range, which is found while the codes are read.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <tuple>

#include "cpu_isa.h"
#include "gemm.h"
#include "int8_linear.h"
#include "output_alloc.h"

namespace retquant {
namespace {

constexpr int64_t kRowBlock = 64;  // rows per task when there are enough (int8_linear_body.h)

void check_codes(const at::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kChar && t.is_contiguous() &&
                  t.dim() == dim,
              name, " must be a contiguous int8 CPU tensor of rank ", dim);
}

void check_vec(const c10::optional<at::Tensor>& t, const char* name, int64_t n) {
  if (!t.has_value()) return;
  TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat && t->is_contiguous() &&
                  t->dim() == 1 && t->size(0) == n,
              name, " must be a contiguous float32 CPU tensor [", n, "]");
}

void check_panel(int64_t panel) {
  TORCH_CHECK(panel >= 16 && panel <= 64 && panel % 16 == 0,
              "panel must be 16, 32, 48 or 64 columns, got ", panel);
}

// w [N, K] -> (packed [K4 * N16] in panels of `panel` columns (int8_linear.h), zero padded,
// colsum [N16]); parallel over 16-column groups, each column's 4-byte reduction groups
// scattered to their rows of its panel.
std::tuple<at::Tensor, at::Tensor> int8_pack_weight(const at::Tensor& w, int64_t panel) {
  check_codes(w, "w_codes", 2);
  check_panel(panel);
  const int64_t N = w.size(0), K = w.size(1);
  TORCH_CHECK(N < (1 << 30) && K < (1 << 30), "w_codes is too large for the int8 GEMM");
  const int64_t K4 = round_up(static_cast<int>(K), 4), N16 = round_up(static_cast<int>(N), 16);
  at::Tensor packed = at::zeros({K4 * N16}, w.options());
  at::Tensor colsum = at::zeros({N16}, w.options().dtype(at::kInt));
  const int8_t* src = w.data_ptr<int8_t>();
  int8_t* dst = packed.data_ptr<int8_t>();
  int32_t* cs = colsum.data_ptr<int32_t>();
  std::atomic<bool> bad{false};
  at::parallel_for(0, (N + 15) / 16, 1 + 65536 / (16 * K + 1), [&](int64_t g0, int64_t g1) {
    bool seen = false;
    for (int64_t n = g0 * 16; n < std::min(N, g1 * 16); ++n) {
      const int8_t* row = src + n * K;
      int32_t s = 0;
      for (int64_t k = 0; k < K; ++k) {
        s += row[k];
        seen |= row[k] == -128;
      }
      cs[n] = s;
      const int64_t p0 = n / panel * panel, width = std::min(panel, N16 - p0);
      int8_t* col = dst + p0 * K4 + (n - p0) * 4;
      int64_t k4 = 0;
      for (; k4 + 4 <= K; k4 += 4) std::memcpy(col + k4 * width, row + k4, 4);  // one 4-byte move
      if (k4 < K) std::memcpy(col + k4 * width, row + k4, static_cast<size_t>(K - k4));
    }
    if (seen) bad = true;
  });
  TORCH_CHECK_VALUE(!bad.load(), "w_codes must hold symmetric codes in [-127, 127], found -128 ",
                    "(the AVX2 int8 GEMM cannot multiply it exactly)");
  return {packed, colsum};
}

using RowsFn = int (*)(const LinearArgs&, int64_t, int64_t, int, int);

RowsFn rows_for_isa(int64_t isa) {
  return isa == kIsaAvx512 ? linear_rows_avx512 : (isa == kIsaAvx2 ? linear_rows_avx2 : linear_rows_portable);
}

// a [M, K] codes times the packed weight; with a_scale (and w_scale) the float32 epilogue, else
// the raw int32 product. n: the weight's output features (the packed layout pads them to 16).
at::Tensor int8_linear_fwd(const at::Tensor& a, const at::Tensor& packed, const at::Tensor& colsum,
                           int64_t n, int64_t panel, const c10::optional<at::Tensor>& a_scale,
                           const c10::optional<at::Tensor>& w_scale,
                           const c10::optional<at::Tensor>& bias, int64_t isa) {
  check_isa(isa, "int8_linear_fwd");
  check_codes(a, "a_codes", 2);
  check_codes(packed, "w_packed", 1);
  check_panel(panel);
  const int64_t M = a.size(0), K = a.size(1);
  const int64_t K4 = round_up(static_cast<int>(K), 4), N16 = round_up(static_cast<int>(n), 16);
  TORCH_CHECK(n >= 0 && n < (1 << 30) && K < (1 << 30), "int8_linear_fwd: sizes out of range");
  TORCH_CHECK(packed.size(0) == K4 * N16, "w_packed must hold ", K4 * N16, " codes for K = ", K,
              ", N = ", n);
  TORCH_CHECK(colsum.device().is_cpu() && colsum.scalar_type() == at::kInt && colsum.is_contiguous() &&
                  colsum.dim() == 1 && colsum.size(0) == N16,
              "w_colsum must be a contiguous int32 CPU tensor [", N16, "]");
  TORCH_CHECK(a_scale.has_value() == w_scale.has_value(), "give both a_scale and w_scale or neither");
  TORCH_CHECK(a_scale.has_value() || !bias.has_value(), "bias needs the scales");
  check_vec(a_scale, "a_scale", M);
  check_vec(w_scale, "w_scale", n);
  check_vec(bias, "bias", n);
  const bool raw = !a_scale.has_value();
  // from the freed-output cache (output_alloc.cpp): a fresh 4-16 MB output page-faults for ~20%
  // of the product's time at K = 256
  at::Tensor out = empty_output({M, n}, raw ? at::kInt : at::kFloat);
  if (M == 0 || n == 0) return out;

  LinearArgs p{};
  p.a = a.data_ptr<int8_t>(); p.m = M;
  p.k = static_cast<int>(K); p.k4 = static_cast<int>(K4);
  p.b = packed.data_ptr<int8_t>(); p.colsum = colsum.data_ptr<int32_t>();
  p.n = static_cast<int>(n); p.n16 = static_cast<int>(N16); p.panel = static_cast<int>(panel);
  p.a_scale = raw ? nullptr : a_scale->data_ptr<float>();
  p.w_scale = raw ? nullptr : w_scale->data_ptr<float>();
  p.bias = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  p.out_f = raw ? nullptr : out.data_ptr<float>();
  p.out_i = raw ? out.data_ptr<int32_t>() : nullptr;

  // Task grid: row blocks of 64 when there are at least 4 per thread, else smaller ones (down
  // to 4 rows) for balance; when even those are fewer than 2 per thread (small M), the columns
  // are split too, in whole panels.
  const int64_t threads = at::get_num_threads();
  int64_t mb = kRowBlock;
  if ((M + mb - 1) / mb < 4 * threads) {
    const int64_t share = (M + 4 * threads - 1) / (4 * threads);  // < 64 here
    mb = std::max<int64_t>(4, round_up(static_cast<int>(share), 4));
  }
  const int64_t row_blocks = (M + mb - 1) / mb;
  const int64_t units = (N16 + panel - 1) / panel;
  const int64_t col_groups =
      row_blocks >= 2 * threads ? 1 : std::min(units, (2 * threads + row_blocks - 1) / row_blocks);
  const RowsFn rows = rows_for_isa(isa);
  const int64_t ops_per_task = std::max<int64_t>(1, 2 * mb * K4 * N16 / col_groups);
  const int64_t grain = std::max<int64_t>(1, 2'000'000 / ops_per_task);  // ~10 us of work at least
  std::atomic<int> flags{0};
  std::atomic<bool> oom{false};
  at::parallel_for(0, row_blocks * col_groups, grain, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t rb = t / col_groups, cg = t % col_groups;
      const int n0 = static_cast<int>(cg * units / col_groups * panel);
      const int n1 = static_cast<int>(std::min<int64_t>(n, (cg + 1) * units / col_groups * panel));
      if (n0 >= n1) continue;
      const int r = rows(p, rb * mb, std::min(M, (rb + 1) * mb), n0, n1);
      if (r < 0) {
        oom = true;
      } else {
        flags.fetch_or(r);
      }
    }
  });
  TORCH_CHECK(!oom.load(), "retquant int8_linear: out of memory for its scratch buffers");
  TORCH_CHECK_VALUE(!(flags.load() & kLinearCodeRange),
                    "a_codes must hold symmetric codes in [-127, 127], found -128 ",
                    "(the AVX2 int8 GEMM cannot multiply it exactly)");
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(retquant, m) {
  // panel: columns per packed panel (16 for the AVX2 / portable GEMMs, 64 for VNNI's tiles)
  m.def("int8_pack_weight(Tensor w_codes, int panel) -> (Tensor, Tensor)");
  // isa: a kIsa* code of cpu_isa.h; without a_scale / w_scale the raw int32 product
  m.def(
      "int8_linear_fwd(Tensor a_codes, Tensor w_packed, Tensor w_colsum, int n, int panel, "
      "Tensor? a_scale, Tensor? w_scale, Tensor? bias, int isa) -> Tensor");
}

TORCH_LIBRARY_IMPL(retquant, CPU, m) {
  m.impl("int8_pack_weight", &int8_pack_weight);
  m.impl("int8_linear_fwd", &int8_linear_fwd);
}

}  // namespace retquant
