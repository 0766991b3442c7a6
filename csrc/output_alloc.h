// Float32 CPU output tensors from a cache of freed output buffers; see output_alloc.cpp.
#pragma once

#include <ATen/ATen.h>

namespace retquant {

at::Tensor empty_output_f32(at::IntArrayRef sizes);

}  // namespace retquant
