// The decode kernel's stages timed apart, behind bench/decode_profile.py:
//   retquant::decode_stage_seconds  one thread runs decode steps on given tokens and states once
//   per RecurrentParams::stages setting (chunk_retention.h), so the Python side can subtract:
//   the token quantization, the state update pass, q . S as a pass of its own, and the kernel
//   as it runs (on AVX2 the update and q . S interleaved per block of columns).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <chrono>
#include <cstring>
#include <vector>

#include "chunk_retention.h"
#include "cpu_isa.h"
#include "tensor_checks.h"

namespace retquant {
namespace {

// q, k [steps, H, K] and v [steps, H, V]: one token per head per step, as a decode call gets;
// state [H, K, V], gamma [H]. Returns the seconds per step of kDecodeQuantize, kDecodeUpdate,
// kDecodeTwoPasses and kDecodeKernel (each from a fresh copy of `state`, updated in place as
// RetentionDecoder does), then 1.0 if the two-pass and the kernel runs wrote the same outputs
// and final states bit for bit, else 0.0.
std::vector<double> decode_stage_seconds(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                         double scale, const at::Tensor& gamma,
                                         const at::Tensor& state, int64_t isa) {
  check_isa(isa, "decode_stage_seconds");
  check_f32(q, "q", 3); check_f32(k, "k", 3); check_f32(v, "v", 3);
  check_f32(gamma, "gamma", 1); check_f32(state, "state", 3);
  const int64_t steps = q.size(0), H = q.size(1), K = q.size(2), V = v.size(2);
  TORCH_CHECK(steps >= 1 && H >= 1 && K >= 1 && V >= 1, "decode_stage_seconds: empty q or v");
  TORCH_CHECK(k.sizes() == q.sizes() && v.size(0) == steps && v.size(1) == H,
              "decode_stage_seconds: k must be q's shape [steps, H, K], v [steps, H, V]");
  TORCH_CHECK(gamma.size(0) == H && state.size(0) == H && state.size(1) == K && state.size(2) == V,
              "decode_stage_seconds: gamma must be [H] and state [H, K, V]");
  const int64_t off[2] = {0, 1};
  // torch's allocations: 64-byte aligned as the kernel's state and outputs are in use (a 16-byte
  // aligned state splits vector loads and stores across cache lines: measured 20-30 % slower)
  const at::Tensor S = at::empty_like(state), out = at::empty({steps, H, V}, state.options());
  at::Tensor S_two, out_two;
  std::vector<double> result;
  for (const int stages : {kDecodeQuantize, kDecodeUpdate, kDecodeTwoPasses, kDecodeKernel}) {
    S.copy_(state);
    RecurrentParams p{};
    p.offsets = off; p.N = 1;
    p.H = static_cast<int>(H); p.K = static_cast<int>(K); p.V = static_cast<int>(V);
    p.scale = static_cast<float>(scale); p.gamma = gamma.data_ptr<float>();
    p.init = S.data_ptr<float>(); p.final_state = S.data_ptr<float>();
    p.isa = static_cast<int>(isa); p.stages = stages;
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t t = 0; t < steps; ++t) {
      p.q = q.data_ptr<float>() + t * H * K; p.k = k.data_ptr<float>() + t * H * K;
      p.v = v.data_ptr<float>() + t * H * V; p.out = out.data_ptr<float>() + t * H * V;
      const int status = recurrent_tasks(p, 0, H);
      TORCH_CHECK(status == 0, "decode_stage_seconds: the kernel returned status ", status,
                  " (out of memory, or inf/NaN in the inputs)");
    }
    result.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / steps);
    if (stages == kDecodeTwoPasses) {
      S_two = S.clone();
      out_two = out.clone();
    }
  }
  const auto bytes = [](const at::Tensor& x) { return static_cast<size_t>(x.numel()) * sizeof(float); };
  const bool same = std::memcmp(S.data_ptr(), S_two.data_ptr(), bytes(S)) == 0 &&
                    std::memcmp(out.data_ptr(), out_two.data_ptr(), bytes(out)) == 0;
  result.push_back(same ? 1.0 : 0.0);
  return result;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(retquant, m) {
  // isa: a kIsa* code of cpu_isa.h (0 portable, 1 avx2, 2 avx512)
  m.def(
      "decode_stage_seconds(Tensor q, Tensor k, Tensor v, float scale, Tensor gamma, Tensor state, "
      "int isa) -> float[]",
      &decode_stage_seconds);
}

}  // namespace retquant
