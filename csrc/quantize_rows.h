// Int8 quantization of token tensors for the autograd layer (quantize_rows.cpp), bit-identical
// to retquant/quant/primitives.py with the default int8 spec.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace retquant {

// Status of a quantize call: 0, or these flags (the Python side names the input in a ValueError).
constexpr int kQuantNonFinite = 1;         // the input holds inf or NaN
constexpr int kQuantProductNonFinite = 2;  // finite input, but input * mul overflows float32

// Per token: x [T, H, D] float32/bfloat16 times mul -> codes int8 [T, H, D], scales f32 [T, H].
int64_t quantize_tokens(const at::Tensor& x, double mul, at::Tensor codes, at::Tensor scales);

// Per (chunk, head, channel), chunks of chunk_size tokens numbered sequence by sequence (each
// sequence's last one may be short): v [T, H, V] -> codes int8 [T, H, V], scales f32
// [n_chunks, H, V].
int64_t quantize_v_chunks(const at::Tensor& v, const at::Tensor& offsets, int64_t chunk_size,
                          at::Tensor codes, at::Tensor scales);

}  // namespace retquant
