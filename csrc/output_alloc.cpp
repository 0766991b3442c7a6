// Output buffers for the CPU kernels, from a small cache of freed ones. A fresh multi-MB
// torch.empty is mmap'ed by malloc and unmapped on free, so every call page-faults (and the OS
// zeroes) its whole output: at B=4 T=4096 H=8 V=128 (64 MiB) that took 15 ms of a 40 ms call
// on the 2-core test machine. Buffers of freed outputs are kept and handed out again, so a model
// calling the op repeatedly faults its output pages once. (Asking for transparent huge pages
// instead was as fast in steady state but can stall a first call on memory compaction.)
//
// Buffers are mapped in size classes (the request rounded up to the next of 8 steps per power of
// two: at most 12.5% more), and a cached buffer serves any request of its class, so calls whose
// shapes differ a little (varying sequence lengths) reuse buffers instead of filling the cache
// with near-duplicates. The cache holds at most RETQUANT_OUTPUT_CACHE_MB MiB (default 128, read
// once at the first output; 0 disables it), evicting the least recently freed buffers first.
// Falls back to at::empty off Linux, for small tensors and with the cache disabled.
#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

#include "output_alloc.h"

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace retquant {

#ifdef __linux__
namespace {

constexpr size_t kMinBytes = size_t{2} << 20;  // smaller outputs: malloc reuses them anyway
constexpr int64_t kDefaultCacheMiB = 128;      // two outputs of the benchmark's 64 MiB size
constexpr const char* kCacheEnv = "RETQUANT_OUTPUT_CACHE_MB";

// The cap in bytes, from the environment once (a bad value is an error at the first output).
size_t cache_cap() {
  static const size_t cap = [] {
    const char* env = std::getenv(kCacheEnv);
    int64_t mib = kDefaultCacheMiB;
    if (env != nullptr && *env != '\0') {
      char* end = nullptr;
      mib = std::strtoll(env, &end, 10);
      TORCH_CHECK(*end == '\0' && mib >= 0 && mib <= (int64_t{1} << 20), kCacheEnv,
                  " must be a whole number of MiB in [0, 1048576] (0 disables the cache), got '",
                  env, "'");
    }
    return static_cast<size_t>(mib) << 20;
  }();
  return cap;
}

// `bytes` rounded up to m * 2^e with m in 8..15 (8 classes per power of two).
size_t size_class(size_t bytes) {
  int e = 0;
  while ((bytes - 1) >> e >= 16) ++e;  // the 4 leading bits of bytes - 1, shifted down by e
  const size_t m = ((bytes - 1) >> e) + 1;
  return m << e;
}

struct Block {
  void* data;    // mmap'ed region
  size_t bytes;  // its length (a size class)
};

// Never destroyed: tensors may outlive static destructors at interpreter exit.
struct Cache {
  std::mutex mu;
  std::vector<Block> free_blocks;  // least recently freed first
  size_t cached = 0;
};
Cache& cache() {
  static Cache* c = new Cache();
  return *c;
}

void give_back(const Block& b) {
  std::vector<Block> evicted;
  {
    Cache& c = cache();
    std::lock_guard<std::mutex> lock(c.mu);
    if (b.bytes > cache_cap()) {
      evicted.push_back(b);
    } else {
      size_t drop = 0;
      while (c.cached + b.bytes > cache_cap()) {
        c.cached -= c.free_blocks[drop].bytes;
        evicted.push_back(c.free_blocks[drop++]);
      }
      c.free_blocks.erase(c.free_blocks.begin(), c.free_blocks.begin() + static_cast<int64_t>(drop));
      c.free_blocks.push_back(b);
      c.cached += b.bytes;
    }
  }
  for (const Block& e : evicted) munmap(e.data, e.bytes);  // outside the lock
}

bool take(size_t bytes, Block* out) {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  for (size_t i = c.free_blocks.size(); i-- > 0;) {  // the most recently freed: warmest pages
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

int64_t cached_output_bytes() {
#ifdef __linux__
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  return static_cast<int64_t>(c.cached);
#else
  return 0;
#endif
}

at::Tensor empty_output(at::IntArrayRef sizes, at::ScalarType dtype) {
  int64_t numel = 1;
  for (const int64_t s : sizes) numel *= s;
  const auto opts = at::TensorOptions().dtype(dtype).device(at::kCPU);
#ifdef __linux__
  const size_t bytes = static_cast<size_t>(numel) * at::elementSize(dtype);
  if (bytes >= kMinBytes && cache_cap() > 0) {
    const size_t cls = size_class(bytes);
    Block b{};
    if (take(cls, &b) || map_new(cls, &b))
      return at::from_blob(b.data, sizes, [b](void*) { give_back(b); }, opts);
  }
#endif
  return at::empty(sizes, opts);
}

}  // namespace retquant
