"""A small RetNet language model: embedding, N x (RMSNorm -> MSR -> +, RMSNorm -> SwiGLU -> +),
final RMSNorm, (tied) output head.

The retention of every layer runs on retquant's ops with ``config.retention_quant`` (``None``,
a preset name such as ``"int8"``, or a :class:`retquant.RetentionQuantConfig`); a model-level
quantizer may later set each layer's ``retention_quant`` and swap its ``nn.Linear`` modules.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from retquant.models.generation import generate
from retquant.nn import GatedFFN, MultiScaleRetention, RetentionCache, RMSNorm
from retquant.nn.retention import MODES
from retquant.quant.config import resolve_quant


@dataclass(frozen=True)
class RetNetConfig:
    """Shape and options of a :class:`RetNetLM`.

    ``intermediate_size`` of the SwiGLU block is ``int(hidden_size * ffn_multiplier)``; the
    retention widths are ``hidden_size * expand_k`` and ``hidden_size * expand_v``.

    Example:
        >>> cfg = RetNetConfig(vocab_size=100, hidden_size=32, num_layers=2, num_heads=4)
        >>> cfg.intermediate_size
        64
    """

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    ffn_multiplier: float = 2.0
    expand_k: float = 1.0
    expand_v: float = 2.0
    norm_eps: float = 1e-6
    tie_embeddings: bool = True
    retention_quant: object = None  # None | preset name | RetentionQuantConfig
    use_rotary: bool = True
    rotary_style: str = "retnet"
    backend: str | None = None
    init_std: float = 0.02  # embeddings (and an untied head)

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads"):
            n = getattr(self, name)
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise ValueError(f"RetNetConfig.{name} must be a positive int, got {n!r}")
        for name in ("ffn_multiplier", "init_std"):
            x = getattr(self, name)
            if not isinstance(x, (int, float)) or isinstance(x, bool) or not x > 0:
                raise ValueError(f"RetNetConfig.{name} must be a positive number, got {x!r}")
        if self.intermediate_size < 1:
            raise ValueError(f"hidden_size * ffn_multiplier must be >= 1, got {self.intermediate_size}")
        resolve_quant(self.retention_quant)  # a bad preset name fails here, not at the first call

    @property
    def intermediate_size(self) -> int:
        return int(self.hidden_size * self.ffn_multiplier)


class RetNetBlock(nn.Module):
    """Pre-norm residual block: ``x + MSR(norm(x))``, then ``x + FFN(norm(x))``."""

    def __init__(self, config: RetNetConfig):
        super().__init__()
        c = config
        self.retention_norm = RMSNorm(c.hidden_size, eps=c.norm_eps)
        self.retention = MultiScaleRetention(
            c.hidden_size,
            c.num_heads,
            expand_k=c.expand_k,
            expand_v=c.expand_v,
            quant=c.retention_quant,
            backend=c.backend,
            use_rotary=c.use_rotary,
            rotary_style=c.rotary_style,
            norm_eps=c.norm_eps,
        )
        self.ffn_norm = RMSNorm(c.hidden_size, eps=c.norm_eps)
        self.ffn = GatedFFN(c.hidden_size, c.intermediate_size)

    def forward(self, x, *, state=None, position_offset=0, mode="chunk", output_final_state=False):
        h, final = self.retention(
            self.retention_norm(x),
            state=state,
            position_offset=position_offset,
            mode=mode,
            output_final_state=output_final_state,
        )
        x = x + h
        return x + self.ffn(self.ffn_norm(x)), final

    def step(self, x: torch.Tensor, cache: RetentionCache) -> torch.Tensor:
        x = x + self.retention.step(self.retention_norm(x), cache)
        return x + self.ffn(self.ffn_norm(x))


class RetNetLM(nn.Module):
    """A RetNet language model over token ids.

    Example:
        >>> torch.manual_seed(0)
        <torch._C.Generator object at ...>
        >>> model = RetNetLM(RetNetConfig(vocab_size=50, hidden_size=32, num_layers=2, num_heads=4))
        >>> ids = torch.randint(0, 50, (2, 9))
        >>> model(ids).shape
        torch.Size([2, 9, 50])
        >>> model.generate(ids, 4).shape
        torch.Size([2, 13])
    """

    def __init__(self, config: RetNetConfig):
        super().__init__()
        if not isinstance(config, RetNetConfig):
            raise TypeError(f"config must be a RetNetConfig, got {type(config).__name__}")
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(RetNetBlock(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.lm_head = None
        if not config.tie_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
            nn.init.normal_(self.lm_head.weight, std=config.init_std)
        nn.init.normal_(self.embed.weight, std=config.init_std)

    def _check_ids(self, input_ids, name: str = "input_ids") -> None:
        if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"{name} must be an int64/int32 torch.Tensor [B, T]")
        if input_ids.dim() != 2 or input_ids.shape[0] < 1 or input_ids.shape[1] < 1:
            raise ValueError(f"{name} must have shape [B, T] with B, T >= 1, got {list(input_ids.shape)}")
        if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= self.config.vocab_size):
            raise ValueError(f"{name} must lie in [0, vocab_size={self.config.vocab_size})")

    def _check_states(self, states) -> None:
        # each tensor's own shape is checked by its layer, which knows K and V
        if states is not None and (not isinstance(states, (list, tuple)) or len(states) != len(self.layers)):
            n = len(self.layers)
            raise ValueError(f"states must be a list of {n} tensors [B, H, K, V] (one per layer)")

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm and output head: ``[..., D] -> [..., vocab]``."""
        h = self.norm(hidden)
        return h @ self.embed.weight.t() if self.lm_head is None else self.lm_head(h)

    def forward_state(
        self,
        input_ids: torch.Tensor,
        *,
        states: list[torch.Tensor] | None = None,
        position_offset: int = 0,
        mode: str = "chunk",
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and each layer's final retention state (``[B, H, K, V]`` float32).

        ``states`` (one per layer) continues an earlier call whose tokens ended at
        ``position_offset``; ``mode`` is ``"chunk"`` or ``"recurrent"`` (parallel keeps no state).
        """
        self._check_ids(input_ids)
        if mode not in ("chunk", "recurrent"):
            raise ValueError(f"mode must be 'chunk' or 'recurrent' (parallel keeps no state), got {mode!r}")
        self._check_states(states)
        x, finals = self.embed(input_ids), []
        for i, layer in enumerate(self.layers):
            state = None if states is None else states[i]
            x, final = layer(
                x, state=state, position_offset=position_offset, mode=mode, output_final_state=True
            )
            finals.append(final)
        return self.logits(x), finals

    def forward(self, input_ids: torch.Tensor, *, mode: str = "chunk") -> torch.Tensor:
        """``input_ids [B, T]`` -> logits ``[B, T, vocab]`` (``mode``: chunk, parallel, recurrent)."""
        self._check_ids(input_ids)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        x = self.embed(input_ids)
        for layer in self.layers:
            x, _ = layer(x, mode=mode)
        return self.logits(x)

    def loss(self, input_ids: torch.Tensor, *, mode: str = "chunk") -> torch.Tensor:
        """Mean next-token cross-entropy: position t predicts token t+1 (needs T >= 2)."""
        self._check_ids(input_ids)
        if input_ids.shape[1] < 2:
            raise ValueError(f"loss needs input_ids [B, T] with T >= 2, got {list(input_ids.shape)}")
        logits = self(input_ids[:, :-1], mode=mode)
        return F.cross_entropy(logits.flatten(0, 1).float(), input_ids[:, 1:].flatten())

    def init_cache(
        self, batch_size: int, *, states: list[torch.Tensor] | None = None, position: int = 0
    ) -> list[RetentionCache]:
        """One :class:`retquant.nn.RetentionCache` per layer (from ``states``, else zeros)."""
        self._check_states(states)
        return [
            layer.retention.init_cache(
                batch_size, state=None if states is None else states[i], position=position
            )
            for i, layer in enumerate(self.layers)
        ]

    def step(self, token_ids: torch.Tensor, caches: list[RetentionCache]) -> torch.Tensor:
        """One token per sequence: ``token_ids [B]`` -> logits ``[B, vocab]``; updates ``caches``."""
        if not isinstance(caches, (list, tuple)) or len(caches) != len(self.layers):
            raise ValueError(f"caches must be the list of {len(self.layers)} caches from init_cache")
        if not isinstance(token_ids, torch.Tensor) or token_ids.dim() != 1:
            raise ValueError("token_ids must be a 1-d integer tensor [B] (one token per sequence)")
        self._check_ids(token_ids[:, None], "token_ids")
        x = self.embed(token_ids)
        for layer, cache in zip(self.layers, caches):
            x = layer.step(x, cache)
        return self.logits(x)

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, **kwargs):
        """Prefill with the chunk form, then decode token by token on the O(1) recurrent state;
        see :func:`retquant.models.generation.generate` for the options."""
        return generate(self, input_ids, max_new_tokens, **kwargs)
