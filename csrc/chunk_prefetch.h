// Software prefetch of token rows for the SIMD chunk stages (chunk_stages_avx2.h and
// chunk_stages_avx512.h): the rows of q, k, v a step reads are H * D elements apart, a stride
// the hardware prefetchers follow late. Like quant.h: no include guard, included inside each
// ISA copy's namespace, with <immintrin.h> included first.

// Into L1: rows the current step reads a few tokens ahead.
template <typename T>
static inline void prefetch_row(const T* x, int n) {
  for (int i = 0; i < n; i += 64 / static_cast<int>(sizeof(T)))
    _mm_prefetch(reinterpret_cast<const char*>(x + i), _MM_HINT_T0);
}

// Into L2: the next (chunk, head) step's rows, a whole step of lead time over DRAM latency.
template <typename T>
static inline void prefetch_row_l2(const T* x, int n) {
  for (int i = 0; i < n; i += 64 / static_cast<int>(sizeof(T)))
    _mm_prefetch(reinterpret_cast<const char*>(x + i), _MM_HINT_T1);
}
