// The instruction sets the CPU kernels are built for, as the integer codes the torch ops take
// (retquant/backends/cpu_extension.py holds the same table on the Python side), and the CPUID
// checks that decide which of them may run here.
#pragma once

#include <cstdint>

namespace retquant {

// Ordered from the most portable to the fastest: "auto" picks the largest one the CPU has.
constexpr int kIsaPortable = 0;  // baseline x86-64 / any CPU: plain C++ (chunk_portable.cpp)
constexpr int kIsaAvx2 = 1;      // AVX2 + FMA: sign-trick int8 GEMM (gemm_avx2.cpp)
constexpr int kIsaAvx512 = 2;    // AVX-512 F/BW/VL/VNNI: vpdpbusd GEMM (gemm_vnni.cpp)
constexpr int kIsaCount = 3;

bool cpu_has_avx2();         // avx2 and fma
bool cpu_has_avx512_vnni();  // avx512f, avx512bw, avx512vl, avx512vnni
bool cpu_supports_isa(int64_t isa);
const char* isa_name(int64_t isa);

// Raises (TORCH_CHECK, a RuntimeError in Python) naming the ISA when `isa` is not a known code
// or this CPU cannot execute it; `what` names the caller in the message.
void check_isa(int64_t isa, const char* what);

}  // namespace retquant
