// Float32 CPU tensors whose pages are transparent huge pages where the OS allows (see .cpp).
#pragma once

#include <ATen/ATen.h>

namespace retquant {

at::Tensor empty_hugepage_f32(at::IntArrayRef sizes);

}  // namespace retquant
