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

// The prefetches of quant_token_rows at token row a of L: the q and k rows 4 tokens ahead into
// L1, this token's v row (read right after that stage) into L1, and row a of the next
// (chunk, head) step (s.pf_*, s.pf_rows rows) into L2.
template <typename T>
static inline void prefetch_token_rows(const T* qbase, const T* kbase, int64_t ldq, const T* vbase,
                                       int64_t ldv, int a, int L, const Scratch& s) {
  if (a + 4 < L) {
    prefetch_row(qbase + (a + 4) * ldq, s.K);
    prefetch_row(kbase + (a + 4) * ldq, s.K);
  }
  prefetch_row(vbase + a * ldv, s.V);
  if (a < s.pf_rows) {
    prefetch_row_l2(static_cast<const T*>(s.pf_q) + a * ldq, s.K);
    prefetch_row_l2(static_cast<const T*>(s.pf_k) + a * ldq, s.K);
    prefetch_row_l2(static_cast<const T*>(s.pf_v) + a * ldv, s.V);
  }
}
