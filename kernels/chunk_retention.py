"""Entry point of the int8 chunk forward: prepares one call and runs the split (two-pass) or
the single-pass (fused) kernels; both give the same bits.

* ``"split"`` (default): pass 1 walks the chunks and stores each entering state as int8 codes
  with per-column scales (exactly the operand ``Q S`` needs); pass 2 computes all outputs
  chunk-parallel. Sequential work is only the ``K~^T V`` update, and pass 2 fills the GPU even
  at small batch x heads (fla's ``chunk_h`` + ``chunk_o`` layout).
* ``"fused"``: one program per (sequence, head, V block) walks the chunks and does all four
  products; no state round trip, but only ``N * H * V/BV`` programs run.
"""

from __future__ import annotations

import torch

from retquant.constants import CHUNK_SIZE
from retquant.kernels.chunk_prep import check_block_v, prepare_chunk_launch
from retquant.kernels.chunk_retention_fused import chunk_fused_launch
from retquant.kernels.chunk_retention_out import chunk_out_launch
from retquant.kernels.chunk_retention_state import chunk_state_launch

MODES = ("split", "fused")


def chunk_retention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g_gamma: torch.Tensor,
    scale: float,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    final_out: torch.Tensor | None = None,
    trace: bool = False,
    chunk_size: int = CHUNK_SIZE,
    block_v: int | None = None,
    mode: str = "split",
):
    """Int8 chunkwise retention on ``[B, T, H, *]`` inputs (``B == 1`` with ``cu_seqlens``).

    Returns ``(o in q's dtype [B, T, H, V], final fp32 [N, H, K, V] or None, trace)`` where
    ``trace`` is ``None`` or a dict of int32 accumulators ``acc_qk [NC, H, C, C]``, ``acc_pv``,
    ``acc_qs [NC, H, C, V]``, ``acc_kv [NC, H, K, V]`` over the ``NC`` chunks of all sequences
    (sequence-major). ``out``/``final_out`` are optional preallocated buffers the kernels fill.
    ``block_v`` fixes the V block (a power of two >= 16; default: whole V in the interpreter,
    autotuned on a GPU); ``mode`` is ``"split"`` or ``"fused"`` (see the module docstring).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    check_block_v(block_v)
    p = prepare_chunk_launch(
        q,
        k,
        v,
        g_gamma,
        scale,
        initial_state,
        output_final_state,
        cu_seqlens,
        out,
        final_out,
        trace,
        chunk_size,
    )
    if mode == "fused":
        chunk_fused_launch(p, block_v)
    else:
        s_codes, s_scales = chunk_state_launch(p, block_v)
        chunk_out_launch(p, s_codes, s_scales, block_v)
    return p.out, p.final, p.trace
