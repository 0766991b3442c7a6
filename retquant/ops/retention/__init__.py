"""Multi-scale retention, laid out as fla's ``fla.ops.retention``: one module per form
(``chunk``, ``fused_chunk``, ``fused_recurrent``, ``parallel``, ``naive``), each op
differentiable through :mod:`retquant.ops.retention.function`."""

from retquant.ops.retention.chunk import chunk_retention
from retquant.ops.retention.fused_chunk import fused_chunk_retention
from retquant.ops.retention.fused_recurrent import fused_recurrent_retention
from retquant.ops.retention.naive import naive_retention
from retquant.ops.retention.parallel import parallel_retention

__all__ = [
    "chunk_retention",
    "fused_chunk_retention",
    "fused_recurrent_retention",
    "naive_retention",
    "parallel_retention",
]
