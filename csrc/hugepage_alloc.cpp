// Output buffers backed by transparent huge pages. A fresh multi-MB torch.empty is mmap'ed by
// malloc and unmapped on free, so every call page-faults its whole output in 4 KiB pages: at
// B=4 T=4096 H=8 V=128 (64 MiB) that costs more than the kernel's arithmetic. Asking for huge
// pages (madvise, honoured when THP is "madvise" or "always") cuts the faults 512-fold. Falls
// back to at::empty off Linux, for small tensors and when mmap fails.
#include <ATen/ATen.h>

#include "hugepage_alloc.h"

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace retquant {

at::Tensor empty_hugepage_f32(at::IntArrayRef sizes) {
  int64_t numel = 1;
  for (const int64_t s : sizes) numel *= s;
  const size_t bytes = static_cast<size_t>(numel) * sizeof(float);
  constexpr size_t kHuge = size_t{2} << 20;
#ifdef __linux__
  if (bytes >= 2 * kHuge) {
    const size_t len = bytes + kHuge;  // room to start on a 2 MiB boundary
    void* base = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base != MAP_FAILED) {
      const uintptr_t b = reinterpret_cast<uintptr_t>(base);
      void* data = reinterpret_cast<void*>((b + kHuge - 1) / kHuge * kHuge);
      madvise(data, bytes, MADV_HUGEPAGE);  // advisory: normal pages if refused
      return at::from_blob(
          data, sizes, [base, len](void*) { munmap(base, len); },
          at::TensorOptions().dtype(at::kFloat).device(at::kCPU));
    }
  }
#endif
  return at::empty(sizes, at::TensorOptions().dtype(at::kFloat).device(at::kCPU));
}

}  // namespace retquant
