"""C++/OpenMP sources of the CPU extension (installed as ``retquant._csrc``, built at first use)."""
