"""The project's shared constants: one place for each number the kernels and the spec agree on."""

# Chunk length of the chunkwise algorithm (tokens per chunk). Every backend uses it.
CHUNK_SIZE = 64

# RetNet's decay schedule: gamma_h = 1 - 2 ** (DECAY_BASE_EXP - h), h = 0 .. H-1.
DECAY_BASE_EXP = -5.0

# The intra-chunk decay gamma**(a-b) is factored as gamma**a * gamma**(-b) and folded into the
# row/column dequantization scales only while (C - 1) * |log2 gamma| stays at or below this bound
# (so gamma**(-b) <= 2**24 and gamma**a >= 2**-24: both factors are normal fp32 numbers far from
# overflow, and acc * row * col loses no more than a few ulp). Beyond it the epilogue multiplies by
# a precomputed gamma**(a-b) table instead (the guard).
FUSED_DECAY_MAX_LOG2 = 24.0
