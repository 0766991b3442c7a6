"""The ``torch`` backend: the fast float path (``quant=None``) in batched PyTorch, any device.

All three forms run the chunkwise algorithm of :mod:`retquant.backends.torch_chunk` (the forms
are the same function; the recurrent form's token loop and the parallel form's T x T scores would
only be slower), computed in float32 for float32/bfloat16/float16 inputs and in float64 for
float64 ones. Quantized calls are not its job: it declines them.
"""

from __future__ import annotations

from retquant.backends.registry import Backend, register_backend
from retquant.backends.torch_chunk import chunk_fwd
from retquant.validate import RetentionCall


def unsupported(op: str, call: RetentionCall) -> str | None:
    if call.quant is not None:
        return "the torch backend runs the float path only (quant=None)"
    return None


def run(call: RetentionCall):
    """Any form of ``call`` through the chunkwise float algorithm: ``(o, final or None)``."""
    return chunk_fwd(
        call.q,
        call.k,
        call.v,
        call.g_gamma,
        call.scale,
        call.initial_state,
        call.cu_seqlens,
        output_final_state=call.output_final_state,
    )


register_backend(
    Backend(
        name="torch",
        impls={"chunk": run, "fused_recurrent": run, "parallel": run},
        unsupported=unsupported,
    )
)
