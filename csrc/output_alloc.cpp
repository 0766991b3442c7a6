// Output buffers for the CPU kernels, from a small cache of freed ones. A fresh multi-MB
// torch.empty is mmap'ed by malloc and unmapped on free, so every call page-faults (and the OS
// zeroes) its whole output: at B=4 T=4096 H=8 V=128 (64 MiB) that took 15 ms of a 40 ms call
// on the 2-core test machine. Buffers of freed outputs are kept (up to kCacheBytes in all) and
// handed out again for the same size, so a model calling the op repeatedly faults its output
// pages once. (Asking for transparent huge pages instead was as fast in steady state but can
// stall a first call on memory compaction.) Falls back to at::empty off Linux and for small
// tensors.
#include <ATen/ATen.h>

#include <mutex>
#include <vector>

#include "output_alloc.h"

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace retquant {

#ifdef __linux__
namespace {

constexpr size_t kMinBytes = size_t{2} << 20;    // smaller outputs: malloc reuses them anyway
constexpr size_t kCacheBytes = size_t{256} << 20;  // most bytes of freed buffers kept

struct Block {
  void* data;    // mmap'ed region
  size_t bytes;  // its length
};

// Never destroyed: tensors may outlive static destructors at interpreter exit.
struct Cache {
  std::mutex mu;
  std::vector<Block> free_blocks;
  size_t cached = 0;
};
Cache& cache() {
  static Cache* c = new Cache();
  return *c;
}

void give_back(const Block& b) {
  Cache& c = cache();
  {
    std::lock_guard<std::mutex> lock(c.mu);
    if (c.cached + b.bytes <= kCacheBytes) {
      c.free_blocks.push_back(b);
      c.cached += b.bytes;
      return;
    }
  }
  munmap(b.data, b.bytes);
}

bool take(size_t bytes, Block* out) {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  for (size_t i = 0; i < c.free_blocks.size(); ++i) {
    if (c.free_blocks[i].bytes == bytes) {
      *out = c.free_blocks[i];
      c.free_blocks.erase(c.free_blocks.begin() + static_cast<int64_t>(i));
      c.cached -= out->bytes;
      return true;
    }
  }
  return false;
}

bool map_new(size_t bytes, Block* out) {
  void* data = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (data == MAP_FAILED) return false;
  *out = Block{data, bytes};
  return true;
}

}  // namespace
#endif

void release_cached_outputs() {
#ifdef __linux__
  Cache& c = cache();
  std::vector<Block> blocks;
  {
    std::lock_guard<std::mutex> lock(c.mu);
    blocks.swap(c.free_blocks);
    c.cached = 0;
  }
  for (const Block& b : blocks) munmap(b.data, b.bytes);
#endif
}

at::Tensor empty_output(at::IntArrayRef sizes, at::ScalarType dtype) {
  int64_t numel = 1;
  for (const int64_t s : sizes) numel *= s;
  const auto opts = at::TensorOptions().dtype(dtype).device(at::kCPU);
#ifdef __linux__
  const size_t bytes = static_cast<size_t>(numel) * at::elementSize(dtype);
  Block b{};
  if (bytes >= kMinBytes && (take(bytes, &b) || map_new(bytes, &b)))
    return at::from_blob(b.data, sizes, [b](void*) { give_back(b); }, opts);
#endif
  return at::empty(sizes, opts);
}

}  // namespace retquant
