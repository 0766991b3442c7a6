"""Drop-in retention ops with fla's signatures: ``from retquant.ops import chunk_retention``."""

from retquant.ops.retention import (
    chunk_retention,
    fused_chunk_retention,
    fused_recurrent_retention,
    naive_retention,
    parallel_retention,
)
from retquant.ops.retention.decode import RetentionDecoder

__all__ = [
    "RetentionDecoder",
    "chunk_retention",
    "fused_chunk_retention",
    "fused_recurrent_retention",
    "naive_retention",
    "parallel_retention",
]
