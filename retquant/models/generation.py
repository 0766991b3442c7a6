"""Token generation for :class:`retquant.models.RetNetLM`: chunk prefill, then O(1) decoding.

The prompt runs once through the chunk form (``forward_state``), which yields every layer's
retention state; each new token then costs one :meth:`RetNetLM.step`, whose retention is a
:class:`retquant.ops.RetentionDecoder` update of that state (on the CPU, the C++ decode kernel,
int8 when the model's retention quantization is the int8 preset). Rotary positions continue
from the prompt length.

With a quantized retention the two phases quantize differently (per chunk in the prefill, per
token in the decode), so the generated logits equal those of the recurrent form run over the
continuation from the prefill state, and are close to — not bit-equal to — a chunk re-run of
the whole prefix.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def generate(
    model,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    *,
    greedy: bool = True,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    return_logits: bool = False,
):
    """Extend ``input_ids [B, T]`` by ``max_new_tokens`` tokens.

    Args:
        model: a :class:`retquant.models.RetNetLM`.
        greedy: take the arg-max token; otherwise sample from ``softmax(logits / temperature)``
            with ``generator``.
        return_logits: also return the logits that chose each new token, ``[B, N, vocab]``.

    Returns:
        ``[B, T + max_new_tokens]`` token ids (and the logits when ``return_logits``).

    Example:
        >>> from retquant.models import RetNetConfig, RetNetLM
        >>> model = RetNetLM(RetNetConfig(vocab_size=40, hidden_size=16, num_layers=1, num_heads=2))
        >>> generate(model, torch.zeros(1, 3, dtype=torch.long), 5).shape
        torch.Size([1, 8])
    """
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative int, got {max_new_tokens!r}")
    if not greedy and not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    logits, states = model.forward_state(input_ids, mode="chunk")
    B, T = input_ids.shape
    caches = model.init_cache(B, states=states, position=T)
    tokens, chosen = [input_ids], []
    last = logits[:, -1]
    for i in range(max_new_tokens):
        chosen.append(last)
        if greedy:
            nxt = last.argmax(-1)
        else:
            probs = torch.softmax(last.float() / temperature, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator)[:, 0]
        tokens.append(nxt[:, None].to(input_ids.dtype))
        if i + 1 < max_new_tokens:  # the last token needs no step: nothing reads its logits
            last = model.step(nxt, caches)
    out = torch.cat(tokens, dim=1)
    if not return_logits:
        return out
    vocab = logits.shape[-1]
    return out, torch.stack(chosen, 1) if chosen else logits.new_zeros(B, 0, vocab)
