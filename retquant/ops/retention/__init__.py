"""Multi-scale retention: public ops (chunk, fused_recurrent, parallel) and their specs."""

from retquant.ops.retention.chunk import chunk_retention
from retquant.ops.retention.fused_recurrent import fused_recurrent_retention
from retquant.ops.retention.parallel import parallel_retention

__all__ = ["chunk_retention", "fused_recurrent_retention", "parallel_retention"]
