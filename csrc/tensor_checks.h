// Argument checks shared by the torch bindings (ops.cpp) and the benchmark ops (decode_bench.cpp).
#pragma once

#include <ATen/ATen.h>

namespace retquant {

// A contiguous float32 CPU tensor of rank `dim`; `name` names the argument in the error.
inline void check_f32(const at::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == at::kFloat, name, " must be float32, got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(t.dim() == dim, name, " must have rank ", dim, ", got ", t.dim());
}

}  // namespace retquant
