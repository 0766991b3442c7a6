// CPU output tensors from a cache of freed output buffers; see output_alloc.cpp.
#pragma once

#include <ATen/ATen.h>

namespace retquant {

at::Tensor empty_output(at::IntArrayRef sizes, at::ScalarType dtype);

}  // namespace retquant
