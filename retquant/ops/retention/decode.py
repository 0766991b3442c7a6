"""``RetentionDecoder``: token-by-token decoding with the retention state updated in place.

The per-token call of a serving loop. It validates its configuration once, keeps the float32
state ``[B, H, K, V]`` and, on the cpu backend with the int8 configuration, updates it in place
with the C++ decode kernel (no new state tensor per token, no per-call argument resolution).
On any other backend, and on the float path (``quant=None``), it runs
:func:`fused_recurrent_retention` for one token and copies the new state back, so the results are
the same as calling that op token by token.
"""

from __future__ import annotations

import torch

from retquant.backends import cpu, cpu_extension, cpu_ops, select_impl
from retquant.decay import step_gamma
from retquant.ops.retention.fused_recurrent import fused_recurrent_retention
from retquant.validate import check_quant_inputs, validate_call


class RetentionDecoder:
    """Decode one token per :meth:`step`, holding the retention state.

    Args:
        batch_size, num_heads, key_dim, value_dim: ``B, H, K, V``.
        scale, g_gamma, quant, backend: as for :func:`fused_recurrent_retention`.
        initial_state: optional ``[B, H, K, V]`` start state (copied); zeros otherwise.

    Example:
        >>> dec = RetentionDecoder(2, 4, 32, 48, quant="int8")
        >>> o = dec.step(torch.randn(2, 4, 32), torch.randn(2, 4, 32), torch.randn(2, 4, 48))
        >>> o.shape, dec.state.shape
        (torch.Size([2, 4, 48]), torch.Size([2, 4, 32, 48]))
    """

    def __init__(
        self,
        batch_size: int,
        num_heads: int,
        key_dim: int,
        value_dim: int,
        *,
        scale: float | None = None,
        g_gamma: torch.Tensor | None = None,
        quant="int8",
        backend: str | None = None,
        initial_state: torch.Tensor | None = None,
        device: torch.device | str = "cpu",
    ):
        for name, n in (
            ("batch_size", batch_size),
            ("num_heads", num_heads),
            ("key_dim", key_dim),
            ("value_dim", value_dim),
        ):
            if not isinstance(n, int) or isinstance(n, bool):
                raise TypeError(f"{name} must be a positive int, got {n!r}")
            if n < 1:
                raise ValueError(f"{name} must be a positive int, got {n!r}")
        B, H, K, V = batch_size, num_heads, key_dim, value_dim
        state = torch.zeros(B, H, K, V, device=device) if initial_state is None else initial_state
        # One validation of the whole configuration, on a token of zeros.
        zq, zv = torch.zeros(B, 1, H, K, device=device), torch.zeros(B, 1, H, V, device=device)
        call = validate_call(zq, zq, zv, scale, state, True, None, g_gamma, quant)
        self._impl = select_impl("fused_recurrent", call, backend)
        self.shape = (B, H, K, V)
        self.scale, self.g_gamma, self.quant, self.backend = call.scale, call.g_gamma, call.quant, backend
        self._check_state(state)
        self.state = state.detach().to(device=device, dtype=torch.float32).clone().contiguous()
        # The C++ decode kernel is the int8 one; the cpu backend's float path (quant=None) goes
        # through fused_recurrent_retention below, or it would silently quantize.
        self._kernel = self._impl is cpu.fused_recurrent and call.quant is not None
        if self._kernel:  # everything a step needs besides the tokens, resolved once
            self._ops = cpu_extension.ops()
            self._isa = cpu_extension.isa_code()  # RETQUANT_CPU_ISA as at construction
            self._offsets = torch.arange(B + 1, dtype=torch.int64)
            self._gamma = step_gamma(self.g_gamma).contiguous()
            self._qk_shape, self._v_shape = (B, H, K), (B, H, V)  # tokens; o is [B, H, V] too

    def reset(self, initial_state: torch.Tensor | None = None) -> None:
        """Zero the state, or copy ``initial_state`` ``[B, H, K, V]`` into it."""
        if initial_state is None:
            self.state.zero_()
        elif tuple(initial_state.shape) != self.shape:
            got = list(initial_state.shape)
            raise ValueError(f"initial_state must have shape [B, H, K, V]={list(self.shape)}, got {got}")
        else:
            self._check_state(initial_state)
            self.state.copy_(initial_state)

    def _check_state(self, state: torch.Tensor) -> None:
        # A start state for the quantized kernels: finite and in range, checked once here; the
        # per-step check of the state then only sees the decoder's own (in-range) updates.
        if self.quant is not None:
            check_quant_inputs(None, None, None, state, self.scale)

    def _check(self, x, name: str, dim: int) -> torch.Tensor:
        B, H = self.shape[:2]
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"{name} must be a floating torch.Tensor [B, H, {'KV'[dim == 3]}]")
        want = (B, H, self.shape[dim])
        if tuple(x.shape) != want:
            raise ValueError(
                f"{name} must have shape {list(want)} (one token per sequence), got {list(x.shape)}"
            )
        return x

    def step(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """One token per sequence: ``q, k [B, H, K]``, ``v [B, H, V]`` -> ``o [B, H, V]`` (q's dtype).

        Raises ``ValueError`` when q, k or v hold inf/NaN; the state is then left exactly as it was
        (every token of the step is checked before any of the state is written). A state holding
        inf/NaN (passed to the constructor or :meth:`reset`) raises too: :meth:`reset` it.
        """
        if self._kernel and self._ready_tokens(q, k, v):
            return self._kernel_step(q, k, v)
        q, k, v = self._check(q, "q", 2), self._check(k, "k", 2), self._check(v, "v", 3)
        if not self._kernel:
            o, final = fused_recurrent_retention(
                q[:, None],
                k[:, None],
                v[:, None],
                self.scale,
                self.state,
                True,
                g_gamma=self.g_gamma,
                quant=self.quant,
                backend=self.backend,
            )
            self.state.copy_(final)
            return o[:, 0]
        tokens = [x.float().contiguous() for x in (q, k, v)]  # (no copy where already so)
        return self._kernel_step(*tokens).to(q.dtype)

    def _ready_tokens(self, q, k, v) -> bool:
        # The serving loop's case, tested in a few attribute reads: plain float32 contiguous
        # tokens of the right shapes. Anything else goes through _check (its errors) and a
        # conversion; the kernel step is the same either way.
        return (
            type(q) is torch.Tensor
            and type(k) is torch.Tensor
            and type(v) is torch.Tensor
            and q.dtype is torch.float32
            and k.dtype is torch.float32
            and v.dtype is torch.float32
            and q.shape == self._qk_shape
            and k.shape == self._qk_shape
            and v.shape == self._v_shape
            and q.is_contiguous()
            and k.is_contiguous()
            and v.is_contiguous()
        )

    def _kernel_step(self, q, k, v) -> torch.Tensor:
        """The C++ decode kernel on checked float32 contiguous tokens; the state in place."""
        if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
            raise RuntimeError(
                "RetentionDecoder's cpu kernel is forward-only: step under torch.no_grad(), or "
                "construct it with backend='reference' to differentiate"
            )
        out = torch.empty(self._v_shape)
        status = self._ops.recurrent_fwd(
            q, k, v, self._offsets, self.scale, self._gamma, self.state, out, self.state, self._isa
        )
        if status:
            cpu_ops.raise_recurrent_status(status, self.state)
        return out
