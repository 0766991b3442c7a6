// Torch bindings: the retquant::* ops (TORCH_LIBRARY), argument checks, pointer plumbing.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>

#include "chunk_retention.h"
#include "cpu_isa.h"
#include "float_chunk.h"
#include "gemm.h"
#include "output_alloc.h"
#include "quantize_rows.h"
#include "tensor_checks.h"

namespace retquant {
namespace {

// q, k, v, out of the chunk op: float32, or all four bfloat16.
void check_tokens(const at::Tensor& t, const char* name, at::ScalarType dtype) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == dtype, name, " must be ", dtype, " like q, got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(t.dim() == 3, name, " must have rank 3, got ", t.dim());
}

void check_offsets(const at::Tensor& off, int64_t T) {
  TORCH_CHECK(off.device().is_cpu() && off.scalar_type() == at::kLong && off.is_contiguous() &&
                  off.dim() == 1 && off.numel() >= 2,
              "offsets must be a contiguous int64 CPU tensor [N + 1]");
  const int64_t* o = off.data_ptr<int64_t>();
  TORCH_CHECK(o[0] == 0 && o[off.numel() - 1] == T, "offsets must run from 0 to T_total");
  for (int64_t i = 1; i < off.numel(); ++i) TORCH_CHECK(o[i] > o[i - 1], "offsets must increase");
}

ChunkParams chunk_params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                         const at::Tensor& offsets, double scale, const at::Tensor& row,
                         const at::Tensor& col, const at::Tensor& mask, const at::Tensor& inter,
                         const at::Tensor& kdec, const at::Tensor& chunk_decay,
                         const at::Tensor& fused, const c10::optional<at::Tensor>& init,
                         int64_t isa, at::Tensor& out, at::Tensor& final_state) {
  const at::ScalarType dt = q.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16, "q must be float32 or bfloat16, got ", dt);
  check_tokens(q, "q", dt); check_tokens(k, "k", dt); check_tokens(v, "v", dt);
  const int64_t T = q.size(0), H = q.size(1), K = q.size(2), V = v.size(2);
  TORCH_CHECK(k.sizes() == q.sizes(), "k must have q's shape");
  TORCH_CHECK(v.size(0) == T && v.size(1) == H, "v must be [T, H, V]");
  check_offsets(offsets, T);
  const int64_t N = offsets.numel() - 1;
  check_f32(row, "row", 2);
  const int64_t C = row.size(1);
  TORCH_CHECK(row.size(0) == H && C >= 1 && C <= 1024, "row must be [H, C]");
  check_f32(col, "col", 2); check_f32(inter, "inter", 2); check_f32(mask, "mask", 3);
  check_f32(kdec, "kdec", 3); check_f32(chunk_decay, "chunk_decay", 2);
  TORCH_CHECK(col.sizes() == row.sizes() && inter.sizes() == row.sizes(), "col/inter must be [H, C]");
  TORCH_CHECK(mask.size(0) == H && mask.size(1) == C && mask.size(2) == C, "mask must be [H, C, C]");
  TORCH_CHECK(kdec.size(0) == H && kdec.size(1) == C + 1 && kdec.size(2) == C, "kdec must be [H, C+1, C]");
  TORCH_CHECK(chunk_decay.size(0) == H && chunk_decay.size(1) == C + 1, "chunk_decay must be [H, C+1]");
  TORCH_CHECK(fused.scalar_type() == at::kByte && fused.is_contiguous() && fused.numel() == H,
              "fused must be uint8 [H]");
  check_tokens(out, "out", dt);
  TORCH_CHECK(out.size(0) == T && out.size(1) == H && out.size(2) == V, "out must be [T, H, V]");
  check_f32(final_state, "final_state", 4);
  TORCH_CHECK(final_state.size(0) == N && final_state.size(1) == H && final_state.size(2) == K &&
                  final_state.size(3) == V, "final_state must be [N, H, K, V]");
  const float* init_ptr = nullptr;
  if (init.has_value()) {
    check_f32(*init, "initial_state", 4);
    TORCH_CHECK(init->sizes() == final_state.sizes(), "initial_state must be [N, H, K, V]");
    init_ptr = init->data_ptr<float>();
  }
  check_isa(isa, "chunk_fwd");
  ChunkParams p{};
  p.q = q.data_ptr(); p.k = k.data_ptr(); p.v = v.data_ptr(); p.bf16 = dt == at::kBFloat16;
  p.offsets = offsets.data_ptr<int64_t>(); p.N = N;
  p.H = static_cast<int>(H); p.K = static_cast<int>(K); p.V = static_cast<int>(V);
  p.C = static_cast<int>(C); p.scale = static_cast<float>(scale);
  p.row = row.data_ptr<float>(); p.col = col.data_ptr<float>(); p.mask = mask.data_ptr<float>();
  p.inter = inter.data_ptr<float>(); p.kdec = kdec.data_ptr<float>();
  p.chunk_decay = chunk_decay.data_ptr<float>(); p.fused = fused.data_ptr<uint8_t>();
  p.init = init_ptr; p.out = out.data_ptr(); p.final_state = final_state.data_ptr<float>();
  p.isa = static_cast<int>(isa);
  return p;
}

int64_t chunk_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const at::Tensor& offsets, double scale, const at::Tensor& row,
                  const at::Tensor& col, const at::Tensor& mask, const at::Tensor& inter,
                  const at::Tensor& kdec, const at::Tensor& chunk_decay, const at::Tensor& fused,
                  const c10::optional<at::Tensor>& init, int64_t isa, at::Tensor out,
                  at::Tensor final_state) {
  return chunk_retention_cpu(chunk_params(q, k, v, offsets, scale, row, col, mask, inter, kdec,
                                          chunk_decay, fused, init, isa, out, final_state));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> chunk_fwd_debug(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& offsets,
    double scale, const at::Tensor& row, const at::Tensor& col, const at::Tensor& mask,
    const at::Tensor& inter, const at::Tensor& kdec, const at::Tensor& chunk_decay,
    const at::Tensor& fused, const c10::optional<at::Tensor>& init, int64_t isa,
    int64_t num_chunks) {
  const int64_t T = q.size(0), H = q.size(1), K = q.size(2), V = v.size(2);
  const int64_t N = offsets.numel() - 1, C = row.size(1);
  at::Tensor out = at::full({T, H, V}, NAN, q.options());
  at::Tensor fin = at::full({N, H, K, V}, NAN, q.options().dtype(at::kFloat));
  auto io = q.options().dtype(at::kInt);
  at::Tensor qk = at::zeros({N, H, num_chunks, C, C}, io);
  at::Tensor pv = at::zeros({N, H, num_chunks, C, V}, io);
  at::Tensor qs = at::zeros({N, H, num_chunks, C, V}, io);
  at::Tensor kv = at::zeros({N, H, num_chunks, K, V}, io);
  ChunkParams p = chunk_params(q, k, v, offsets, scale, row, col, mask, inter, kdec, chunk_decay,
                               fused, init, isa, out, fin);
  const int64_t* o = offsets.data_ptr<int64_t>();
  for (int64_t i = 0; i < N; ++i)
    TORCH_CHECK((o[i + 1] - o[i] + C - 1) / C <= num_chunks, "num_chunks too small");
  p.dbg_qk = qk.data_ptr<int32_t>(); p.dbg_pv = pv.data_ptr<int32_t>();
  p.dbg_qs = qs.data_ptr<int32_t>(); p.dbg_kv = kv.data_ptr<int32_t>();
  p.dbg_chunks = num_chunks;
  chunk_retention_cpu(p);  // status unused: the tests pass finite inputs
  return {out, fin, qk, pv, qs, kv};
}

int64_t recurrent_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                      const at::Tensor& offsets, double scale, const at::Tensor& gamma,
                      const c10::optional<at::Tensor>& init, at::Tensor out, at::Tensor final_state,
                      int64_t isa) {
  check_isa(isa, "recurrent_fwd");
  check_f32(q, "q", 3); check_f32(k, "k", 3); check_f32(v, "v", 3);
  const int64_t T = q.size(0), H = q.size(1), K = q.size(2), V = v.size(2);
  TORCH_CHECK(k.sizes() == q.sizes() && v.size(0) == T && v.size(1) == H, "q/k/v shapes differ");
  check_offsets(offsets, T);
  const int64_t N = offsets.numel() - 1;
  check_f32(gamma, "gamma", 1);
  TORCH_CHECK(gamma.size(0) == H, "gamma must be [H]");
  check_f32(out, "out", 3);
  TORCH_CHECK(out.size(0) == T && out.size(1) == H && out.size(2) == V, "out must be [T, H, V]");
  check_f32(final_state, "final_state", 4);
  TORCH_CHECK(final_state.size(0) == N && final_state.size(1) == H && final_state.size(2) == K &&
                  final_state.size(3) == V, "final_state must be [N, H, K, V]");
  RecurrentParams p{};
  p.q = q.data_ptr<float>(); p.k = k.data_ptr<float>(); p.v = v.data_ptr<float>();
  p.offsets = offsets.data_ptr<int64_t>(); p.N = N;
  p.H = static_cast<int>(H); p.K = static_cast<int>(K); p.V = static_cast<int>(V);
  p.scale = static_cast<float>(scale); p.gamma = gamma.data_ptr<float>();
  p.init = nullptr;
  if (init.has_value()) {
    check_f32(*init, "initial_state", 4);
    TORCH_CHECK(init->sizes() == final_state.sizes(), "initial_state must be [N, H, K, V]");
    p.init = init->data_ptr<float>();
  }
  p.out = out.data_ptr<float>(); p.final_state = final_state.data_ptr<float>();
  p.isa = static_cast<int>(isa);
  return recurrent_retention_cpu(p);
}

// The eager decode call in one op, for the public ops' per-token Python budget: q, k [B, T, H, K]
// and v [B, T, H, V] of any float dtype and strides, the initial state likewise (converted to
// contiguous float32 here, which costs nothing where they already are), offsets [N + 1] (int64)
// or none for one sequence per batch row. Allocates o and the final state (from the output
// cache) and runs recurrent_fwd: (o [B, T, H, V] in q's dtype, final_state [N, H, K, V] float32,
// the kernel's status).
std::tuple<at::Tensor, at::Tensor, int64_t> recurrent_call(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const c10::optional<at::Tensor>& offsets, double scale, const at::Tensor& gamma,
    const c10::optional<at::Tensor>& init, int64_t isa) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "q, k, v must be [B, T, H, D]");
  const int64_t B = q.size(0), T = q.size(1), H = q.size(2), K = q.size(3), V = v.size(3);
  TORCH_CHECK(B >= 1 && T >= 1 && H >= 1 && K >= 1 && V >= 1, "q and v need non-empty dims");
  TORCH_CHECK(k.sizes() == q.sizes(), "k must have q's shape [B, T, H, K]");
  TORCH_CHECK(v.size(0) == B && v.size(1) == T && v.size(2) == H, "v must be [B, T, H, V]");
  for (const at::Tensor* x : {&q, &k, &v})
    TORCH_CHECK(at::isFloatingType(x->scalar_type()), "q, k, v must be floating, got ",
                x->scalar_type());
  auto rows = [](const at::Tensor& x) {
    return x.to(at::kFloat).contiguous().view({x.size(0) * x.size(1), x.size(2), x.size(3)});
  };
  if (offsets.has_value())
    TORCH_CHECK(at::isIntegralType(offsets->scalar_type(), /*includeBool=*/false),
                "offsets must be an integer tensor, got ", offsets->scalar_type());
  const at::Tensor off = offsets.has_value()
                             ? offsets->to(at::kLong).contiguous()
                             : at::arange(0, B * T + 1, T, at::TensorOptions().dtype(at::kLong));
  check_offsets(off, B * T);
  c10::optional<at::Tensor> s0;
  if (init.has_value()) {
    TORCH_CHECK(at::isFloatingType(init->scalar_type()), "initial_state must be floating, got ",
                init->scalar_type());
    s0 = init->to(at::kFloat).contiguous();
  }
  at::Tensor out = at::empty({B, T, H, V}, at::TensorOptions().dtype(at::kFloat));
  at::Tensor fin = empty_output({off.numel() - 1, H, K, V}, at::kFloat);
  const int64_t status = recurrent_fwd(rows(q), rows(k), rows(v), off, scale, gamma, s0,
                                       out.view({B * T, H, V}), fin, isa);
  return {out.to(q.scalar_type()), fin, status};
}

// The float chunk kernel (float_chunk.h): q, k, v, out float32 or all bfloat16; decay tables of
// retquant.decay (C = mask.size(1), a multiple of 16); isa: kFloatIsa* (must be available).
void float_chunk_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const at::Tensor& offsets, double scale, const at::Tensor& mask,
                     const at::Tensor& inter, const at::Tensor& kdec,
                     const at::Tensor& chunk_decay, const c10::optional<at::Tensor>& init,
                     int64_t isa, at::Tensor out, at::Tensor final_state) {
  const at::ScalarType dt = q.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16, "q must be float32 or bfloat16, got ", dt);
  check_tokens(q, "q", dt); check_tokens(k, "k", dt); check_tokens(v, "v", dt);
  const int64_t T = q.size(0), H = q.size(1), K = q.size(2), V = v.size(2);
  TORCH_CHECK(k.sizes() == q.sizes(), "k must have q's shape [T, H, K]");
  TORCH_CHECK(v.size(0) == T && v.size(1) == H, "v must be [T, H, V] with q's T and H");
  TORCH_CHECK(H >= 1 && K >= 1 && V >= 1, "q and v need H, K, V >= 1");
  check_offsets(offsets, T);
  const int64_t N = offsets.numel() - 1;
  check_f32(mask, "mask", 3);
  const int64_t C = mask.size(1);
  TORCH_CHECK(mask.size(0) == H && mask.size(2) == C && C >= 16 && C <= 1024 && C % 16 == 0,
              "mask must be [H, C, C] with C a multiple of 16");
  check_f32(inter, "inter", 2); check_f32(kdec, "kdec", 3); check_f32(chunk_decay, "chunk_decay", 2);
  TORCH_CHECK(inter.size(0) == H && inter.size(1) == C, "inter must be [H, C]");
  TORCH_CHECK(kdec.size(0) == H && kdec.size(1) == C + 1 && kdec.size(2) == C, "kdec must be [H, C+1, C]");
  TORCH_CHECK(chunk_decay.size(0) == H && chunk_decay.size(1) == C + 1, "chunk_decay must be [H, C+1]");
  check_tokens(out, "out", dt);
  TORCH_CHECK(out.size(0) == T && out.size(1) == H && out.size(2) == V, "out must be [T, H, V]");
  check_f32(final_state, "final_state", 4);
  TORCH_CHECK(final_state.size(0) == N && final_state.size(1) == H && final_state.size(2) == K &&
                  final_state.size(3) == V, "final_state must be [N, H, K, V]");
  FloatChunkParams p{};
  p.init = nullptr;
  if (init.has_value()) {
    check_f32(*init, "initial_state", 4);
    TORCH_CHECK(init->sizes() == final_state.sizes(), "initial_state must be [N, H, K, V]");
    p.init = init->data_ptr<float>();
  }
  p.q = q.data_ptr(); p.k = k.data_ptr(); p.v = v.data_ptr(); p.bf16 = dt == at::kBFloat16;
  p.offsets = offsets.data_ptr<int64_t>(); p.N = N;
  p.H = static_cast<int>(H); p.K = static_cast<int>(K); p.V = static_cast<int>(V);
  p.C = static_cast<int>(C); p.scale = static_cast<float>(scale);
  p.mask = mask.data_ptr<float>(); p.inter = inter.data_ptr<float>();
  p.kdec = kdec.data_ptr<float>(); p.chunk_decay = chunk_decay.data_ptr<float>();
  p.out = out.data_ptr(); p.final_state = final_state.data_ptr<float>();
  p.isa = static_cast<int>(isa);
  float_chunk_cpu(p);
}

int64_t float_chunk_isa() { return float_chunk_best_isa(); }

bool has_vnni() { return cpu_has_avx512_vnni(); }
bool has_avx2() { return cpu_has_avx2(); }

at::Tensor empty_cached(at::IntArrayRef size, at::ScalarType dtype) { return empty_output(size, dtype); }

}  // namespace

TORCH_LIBRARY(retquant, m) {
  m.def(
      "chunk_fwd(Tensor q, Tensor k, Tensor v, Tensor offsets, float scale, Tensor row, "
      "Tensor col, Tensor mask, Tensor inter, Tensor kdec, Tensor chunk_decay, Tensor fused, "
      "Tensor? initial_state, int isa, Tensor(a!) out, Tensor(b!) final_state) -> int");
  m.def(
      "chunk_fwd_debug(Tensor q, Tensor k, Tensor v, Tensor offsets, float scale, Tensor row, "
      "Tensor col, Tensor mask, Tensor inter, Tensor kdec, Tensor chunk_decay, Tensor fused, "
      "Tensor? initial_state, int isa, int num_chunks) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "recurrent_fwd(Tensor q, Tensor k, Tensor v, Tensor offsets, float scale, Tensor gamma, "
      "Tensor? initial_state, Tensor(a!) out, Tensor(b!) final_state, int isa) -> int");
  m.def(
      "recurrent_call(Tensor q, Tensor k, Tensor v, Tensor? offsets, float scale, Tensor gamma, "
      "Tensor? initial_state, int isa) -> (Tensor, Tensor, int)");
  // isa: a kIsa* code of csrc/cpu_isa.h (0 portable, 1 avx2, 2 avx512)
  m.def(
      "float_chunk_fwd(Tensor q, Tensor k, Tensor v, Tensor offsets, float scale, Tensor mask, "
      "Tensor inter, Tensor kdec, Tensor chunk_decay, Tensor? initial_state, int isa, "
      "Tensor(a!) out, Tensor(b!) final_state) -> ()");
  m.def("float_chunk_isa() -> int");
  m.def("has_vnni() -> bool");
  m.def("has_avx2() -> bool");
  m.def("empty_cached(int[] size, ScalarType dtype) -> Tensor");
  m.def("release_cached_outputs() -> ()", &release_cached_outputs);
  m.def("cached_output_bytes() -> int", &cached_output_bytes);
  m.def("quantize_tokens(Tensor x, float mul, Tensor(a!) codes, Tensor(b!) scales) -> int");
  m.def(
      "quantize_v_chunks(Tensor v, Tensor offsets, int chunk_size, Tensor(a!) codes, "
      "Tensor(b!) scales) -> int");
}

TORCH_LIBRARY_IMPL(retquant, CPU, m) {
  m.impl("chunk_fwd", &chunk_fwd);
  m.impl("chunk_fwd_debug", &chunk_fwd_debug);
  m.impl("recurrent_fwd", &recurrent_fwd);
  m.impl("recurrent_call", &recurrent_call);
  m.impl("quantize_tokens", &quantize_tokens);
  m.impl("quantize_v_chunks", &quantize_v_chunks);
  m.impl("float_chunk_fwd", &float_chunk_fwd);
}

// recurrent_call takes the caller's tensors as they are (no detach from Python: a decode step's
// budget); it has no gradient, so its outputs must not look differentiable either.
TORCH_LIBRARY_IMPL(retquant, Autograd, m) {
  m.impl("recurrent_call", torch::CppFunction::makeFallthrough());
}

TORCH_LIBRARY_IMPL(retquant, CompositeExplicitAutograd, m) {
  m.impl("has_vnni", &has_vnni);
  m.impl("float_chunk_isa", &float_chunk_isa);
  m.impl("has_avx2", &has_avx2);
  m.impl("empty_cached", &empty_cached);
}

}  // namespace retquant
