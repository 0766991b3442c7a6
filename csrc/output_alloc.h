// CPU output tensors from a cache of freed output buffers; see output_alloc.cpp.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace retquant {

at::Tensor empty_output(at::IntArrayRef sizes, at::ScalarType dtype);

// Unmap every cached (freed) buffer; live outputs are not affected.
void release_cached_outputs();

// Bytes of freed buffers the cache holds now (at most the cap, RETQUANT_OUTPUT_CACHE_MB).
int64_t cached_output_bytes();

}  // namespace retquant
