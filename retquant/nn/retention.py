"""``MultiScaleRetention``: the token mixer of a RetNet layer, on retquant's (quantizable) ops.

Per head h, with ``x`` the layer input::

    q, k = rotate(x W_q), rotate(x W_k)        (RotaryPosition, per head, K = head_k_dim)
    v, g = x W_v, x W_g
    o_n  = sum_{m <= n} gamma_h**(n-m) (scale * q_n . k_m) v_m      gamma_h = 1 - 2**(-5-h)
    y    = W_o( silu(g) * RMSNorm_head(o) )

``scale`` is ``K**-0.5``; the retention core is :func:`retquant.ops.chunk_retention` (or the
parallel / recurrent form) called with ``quant=self.retention_quant``.

How the float output relates to the two reference implementations (measured in
``tests/test_nn_retention.py``):

- **torchscale** (``torchscale.component.multiscale_retention.MultiScaleRetention``, with
  ``RetNetRelPos``): same projections, decay, rotation (``rotary_style="retnet"``), per-head RMS
  norm without affine weight and swish gate. It multiplies ``k`` (not ``q``) by ``scale`` — the
  same product — and it *normalises the scores*: the decay mask row by ``sqrt(sum_m gamma**(n-m))``
  and then ``q.k`` row by ``max(1, |sum_m score_nm|)`` (in the chunkwise and recurrent forms by
  other per-row factors). Every such factor multiplies all of a head's output row ``o_n`` by one
  positive number, which the per-head RMS norm divides out again, except where ``eps`` matters:
  ``RMSNorm(c o) = c o / sqrt(c**2 ms(o) + eps)``. So the layer outputs agree to rounding when
  ``eps`` is negligible against ``c**2 * mean(o**2)`` (``norm_eps=0`` gives the same function), and
  differ by an amount that grows with ``eps`` otherwise. Measured (D=24, H=3, T=21, float64,
  torchscale 0.3.0's parallel and recurrent forms): max abs diff 2e-8 with eps=0 (torchscale's
  RMSNorm rounds to float32), 3e-2 on outputs of magnitude 0.28 with eps=1e-6, because its
  normalised rows have mean squares of 2e-5 (median) down to 1e-7, i.e. close to eps. Its
  normalisation guards the fp16 range, which retquant's float32 state does not need. Its
  decoding keeps a row scaling inside the state, so states are not interchangeable (outputs are).
- **fla** (``fla.layers.MultiScaleRetention``): same projections (``q_proj``, ``k_proj``,
  ``v_proj``, ``g_proj``, ``o_proj``), ``scale`` on q, the same decay and ops, the per-head
  RMS norm with one affine weight shared by the heads, swish gate. Differences: the rotation is
  GPT-NeoX rotary (``rotary_style="rope"`` here), ``norm_eps`` defaults to 1e-5 (1e-6 here), and
  fla has options this layer lacks (short convolutions, feature maps, grouped kv heads,
  padding masks). With ``rotary_style="rope"`` and the same ``norm_eps`` the function is the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from retquant.decay import default_g_gamma
from retquant.nn.norm import RMSNorm
from retquant.nn.position import RotaryPosition
from retquant.ops import (
    RetentionDecoder,
    chunk_retention,
    fused_recurrent_retention,
    parallel_retention,
)
from retquant.quant.config import resolve_quant

MODES = ("chunk", "parallel", "recurrent")


def _positive_int(name: str, n) -> int:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"{name} must be a positive int, got {n!r}")
    return n


class RetentionCache:
    """One layer's decoding state: a :class:`retquant.ops.RetentionDecoder` (the ``[B, H, K, V]``
    float32 state, updated in place) and ``position``, the position of the next token.

    Made by :meth:`MultiScaleRetention.init_cache`; advanced by :meth:`MultiScaleRetention.step`.
    """

    def __init__(self, decoder: RetentionDecoder, position: int):
        self.decoder = decoder
        self.position = position

    @property
    def state(self) -> torch.Tensor:
        return self.decoder.state


class MultiScaleRetention(nn.Module):
    """Multi-scale retention layer (RetNet's token mixer); see the module docstring for the math.

    Args:
        hidden_size: D, features of the input and output.
        num_heads: H; head h decays with ``gamma_h = 1 - 2**(-5-h)`` (:mod:`retquant.decay`).
        expand_k, expand_v: key / value width as a multiple of D (K = D*expand_k / H per head).
        quant: retention quantization, ``None`` (float), a preset name or a
            :class:`retquant.RetentionQuantConfig`; kept in the plain attribute
            ``retention_quant`` that a model-level quantizer may set.
        backend: passed to the ops (``None``: ``RETQUANT_BACKEND`` or automatic).
        use_rotary, rotary_style, rotary_base: the position rotation of q and k
            (:class:`retquant.nn.RotaryPosition`; ``"retnet"`` = torchscale, ``"rope"`` = fla).
        norm_eps, norm_affine: the per-head RMS norm of the retention output.
        bias: bias of the five projections.

    ``q_proj, k_proj, v_proj, g_proj, o_proj`` are plain :class:`torch.nn.Linear` attributes.

    Example:
        >>> msr = MultiScaleRetention(32, 4, quant="int8")
        >>> y, state = msr(torch.randn(2, 10, 32), output_final_state=True)
        >>> y.shape, state.shape
        (torch.Size([2, 10, 32]), torch.Size([2, 4, 8, 16]))
        >>> cache = msr.init_cache(2, state=state, position=10)
        >>> with torch.no_grad():
        ...     msr.step(torch.randn(2, 32), cache).shape
        torch.Size([2, 32])
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        *,
        expand_k: float = 1.0,
        expand_v: float = 2.0,
        quant=None,
        backend: str | None = None,
        use_rotary: bool = True,
        rotary_style: str = "retnet",
        rotary_base: float = 10000.0,
        norm_eps: float = 1e-6,
        norm_affine: bool = True,
        bias: bool = False,
    ):
        super().__init__()
        D, H = _positive_int("hidden_size", hidden_size), _positive_int("num_heads", num_heads)
        dims = {}
        for name, ratio in (("expand_k", expand_k), ("expand_v", expand_v)):
            if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not ratio > 0:
                raise ValueError(f"{name} must be a positive number, got {ratio!r}")
            width = int(D * ratio)
            if width < H or width % H:
                raise ValueError(
                    f"hidden_size * {name} = {D} * {ratio} -> {width} must be a positive multiple of "
                    f"num_heads={H}"
                )
            dims[name] = width
        self.hidden_size, self.num_heads = D, H
        self.key_dim, self.value_dim = dims["expand_k"], dims["expand_v"]
        self.head_k_dim, self.head_v_dim = self.key_dim // H, self.value_dim // H
        self.q_proj = nn.Linear(D, self.key_dim, bias=bias)
        self.k_proj = nn.Linear(D, self.key_dim, bias=bias)
        self.v_proj = nn.Linear(D, self.value_dim, bias=bias)
        self.g_proj = nn.Linear(D, self.value_dim, bias=bias)
        self.o_proj = nn.Linear(self.value_dim, D, bias=bias)
        self.g_norm = RMSNorm(self.head_v_dim, eps=norm_eps, elementwise_affine=norm_affine)
        self.rotary = (
            RotaryPosition(self.head_k_dim, base=rotary_base, style=rotary_style) if use_rotary else None
        )
        # A plain float64 tensor, not a buffer: model.to(bfloat16) must not round the decays.
        self.g_gamma = default_g_gamma(H)
        self.retention_quant = resolve_quant(quant)
        self.backend = backend
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torchscale's RetNet initialisation: Xavier-uniform, gain 2**-2.5 for q, k, v, g."""
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.g_proj):
            nn.init.xavier_uniform_(proj.weight, gain=2**-2.5)
        nn.init.xavier_uniform_(self.o_proj.weight)
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.g_proj, self.o_proj):
            if proj.bias is not None:
                nn.init.zeros_(proj.bias)

    # -- the pieces shared by forward and step ------------------------------------------------

    def _check_x(self, x) -> tuple[int, int]:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"x must be a floating torch.Tensor [B, T, hidden_size={self.hidden_size}]")
        if x.dim() != 3 or x.shape[-1] != self.hidden_size or x.shape[0] < 1 or x.shape[1] < 1:
            raise ValueError(f"x must have shape [B, T, hidden_size={self.hidden_size}], got {list(x.shape)}")
        return x.shape[0], x.shape[1]

    def _check_state(self, state, batch_size: int) -> None:
        want = [batch_size, self.num_heads, self.head_k_dim, self.head_v_dim]
        if not isinstance(state, torch.Tensor) or list(state.shape) != want:
            got = list(state.shape) if isinstance(state, torch.Tensor) else type(state).__name__
            raise ValueError(f"state must have shape [B, H, K, V]={want}, got {got}")

    def _project(self, x: torch.Tensor, position_offset: int):
        """``q, k [B, T, H, K]`` (rotated), ``v [B, T, H, V]``, ``g [B, T, H*V]``."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_k_dim)
        k = self.k_proj(x).view(B, T, self.num_heads, self.head_k_dim)
        v = self.v_proj(x).view(B, T, self.num_heads, self.head_v_dim)
        if self.rotary is not None:
            q, k = self.rotary(q, k, position_offset)
        return q, k, v, self.g_proj(x)

    def _output(self, o: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Per-head RMS norm, swish gate, output projection: ``o [..., H, V] -> [..., D]``."""
        o = self.g_norm(o).flatten(-2)
        return self.o_proj(F.silu(g) * o)

    # -- sequences -----------------------------------------------------------------------------

    def forward(
        self,
        x: torch.Tensor,
        *,
        state: torch.Tensor | None = None,
        position_offset: int = 0,
        mode: str = "chunk",
        output_final_state: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x [B, T, D]`` -> ``(y [B, T, D], final_state [B, H, K, V] float32 or None)``.

        ``state`` continues from an earlier call (tokens then sit at positions
        ``position_offset ..``); ``mode`` picks the form: ``"chunk"`` (training, prefill),
        ``"parallel"`` (no state in or out) or ``"recurrent"`` (fused_recurrent over T; with
        ``quant`` it quantizes each token on its own, exactly as :meth:`step` does).
        """
        B, _ = self._check_x(x)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not isinstance(output_final_state, bool):
            raise TypeError(f"output_final_state must be a bool, got {output_final_state!r}")
        if not isinstance(position_offset, int) or isinstance(position_offset, bool) or position_offset < 0:
            raise ValueError(f"position_offset must be a non-negative int, got {position_offset!r}")
        if state is not None:
            self._check_state(state, B)
        if mode == "parallel" and (state is not None or output_final_state):
            raise ValueError("mode='parallel' takes no state and returns none: use mode='chunk'")
        q, k, v, g = self._project(x, position_offset)
        common = {"g_gamma": self.g_gamma, "quant": self.retention_quant, "backend": self.backend}
        if mode == "parallel":
            o, final = parallel_retention(q, k, v, **common)[0], None
        else:
            op = chunk_retention if mode == "chunk" else fused_recurrent_retention
            o, final = op(q, k, v, initial_state=state, output_final_state=output_final_state, **common)
        return self._output(o, g), final

    # -- token by token ------------------------------------------------------------------------

    def init_cache(
        self, batch_size: int, *, state: torch.Tensor | None = None, position: int = 0, device=None
    ) -> RetentionCache:
        """A decoding cache for ``batch_size`` sequences, starting from ``state`` (e.g. the
        ``final_state`` of a chunk prefill; zeros if None) with the next token at ``position``.

        The decoder is built with the current ``retention_quant``; make a new cache after
        changing it.
        """
        B = _positive_int("batch_size", batch_size)
        if not isinstance(position, int) or isinstance(position, bool) or position < 0:
            raise ValueError(f"position must be a non-negative int, got {position!r}")
        if state is not None:
            self._check_state(state, B)
        if device is None:  # the projections' device (after convert_ they hold buffers, not weights)
            tensors = [*self.q_proj.parameters(), *self.q_proj.buffers()]
            device = tensors[0].device if tensors else torch.device("cpu")
        decoder = RetentionDecoder(
            B,
            self.num_heads,
            self.head_k_dim,
            self.head_v_dim,
            g_gamma=self.g_gamma,
            quant=self.retention_quant,
            backend=self.backend,
            initial_state=state,
            device=device,
        )
        return RetentionCache(decoder, position)

    def step(self, x: torch.Tensor, cache: RetentionCache) -> torch.Tensor:
        """One token per sequence: ``x [B, D]`` -> ``y [B, D]``; updates ``cache`` in place.

        O(1) in the number of tokens seen: the retention runs on the cached state (on the CPU,
        the C++ decode kernel; it is forward-only, so call this under ``torch.no_grad()``).
        """
        if not isinstance(cache, RetentionCache):
            raise TypeError(f"cache must be a RetentionCache from init_cache, got {type(cache).__name__}")
        if not isinstance(x, torch.Tensor) or x.dim() != 2:
            got = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must have shape [B, hidden_size={self.hidden_size}], got {got}")
        B = cache.decoder.shape[0]
        if list(x.shape) != [B, self.hidden_size]:
            raise ValueError(
                f"x must have shape [B, hidden_size]={[B, self.hidden_size]} (B of the cache), "
                f"got {list(x.shape)}"
            )
        q, k, v, g = self._project(x[:, None], cache.position)
        o = cache.decoder.step(q[:, 0], k[:, 0], v[:, 0])
        cache.position += 1
        return self._output(o, g[:, 0])

    def extra_repr(self) -> str:
        return (
            f"hidden_size={self.hidden_size}, num_heads={self.num_heads}, head_k_dim={self.head_k_dim}, "
            f"head_v_dim={self.head_v_dim}, retention_quant={self.retention_quant!r}"
        )
