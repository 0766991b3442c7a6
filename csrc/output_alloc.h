// CPU output tensors from a cache of freed output buffers; see output_alloc.cpp.
#pragma once

#include <ATen/ATen.h>

namespace retquant {

at::Tensor empty_output(at::IntArrayRef sizes, at::ScalarType dtype);

// Unmap every cached (freed) buffer; live outputs are not affected.
void release_cached_outputs();

}  // namespace retquant
