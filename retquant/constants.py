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

# The range of a quantized call (checked before any kernel runs, or by the kernels while they read
# their inputs; a ValueError names the tensor). Every element of q * scale (the float32 product),
# k and v must have a magnitude below QUANT_INPUT_MAX = 127 * 2**25 (~4.26e9; equivalently every
# quantization scale max|x| / 127 stays below 2**25), every element of initial_state below
# QUANT_STATE_MAX = 2**100 (~1.27e30). Within it no intermediate of the integer algorithm can
# overflow float32 (for K < 2**19 and T < 2**57): the scores |P| stay below K * 2**88 (the fused
# column factor is at most 2**24), the carried state below 2**101. Only an output whose quantized
# value itself exceeds float32's range overflows, to +-inf (NaN only where +inf and -inf meet, as
# in float arithmetic). Outside it, e.g. q, k ~ 1e19 with v ~ 1e-20, the true output can be finite
# while P = acc * s_q * row * s_k * col overflows, so such calls are rejected rather than computed.
QUANT_INPUT_MAX = 127.0 * 2.0**25
QUANT_STATE_MAX = 2.0**100
