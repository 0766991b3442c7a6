"""``fused_chunk_retention``: fla's other chunkwise entry point (fla's own layer imports it).

fla's fused and two-pass chunk kernels compute one function with one signature; so do retquant's
backends, so it is :func:`retquant.ops.chunk_retention` itself.

Example:
    >>> import torch
    >>> q = k = v = torch.randn(1, 70, 2, 16)
    >>> o, _ = fused_chunk_retention(q, k, v, quant="int8")
    >>> o.shape
    torch.Size([1, 70, 2, 16])
"""

from retquant.ops.retention.chunk import chunk_retention

fused_chunk_retention = chunk_retention

__all__ = ["fused_chunk_retention"]
