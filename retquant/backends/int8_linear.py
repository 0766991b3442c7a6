"""Int8 linear layer kernels: the exact int8 product of activation and weight codes with the
dequantization epilogue, for ``QuantLinear`` (per-token or per-tensor activation scales,
per-output-channel or per-tensor weight scales):

    y[m, n] = (float(acc[m, n]) * a_scale[m]) * w_scale[n] + bias[n]
    acc[m, n] = sum_k a_codes[m, k] * w_codes[n, k]          (int32, exact)

in that order, each float32 operation rounded once, so the result is bit-identical to the
PyTorch expression ``((acc.float() * a_scale[:, None]) * w_scale[None, :]) + bias``.

Codes are symmetric int8 in [-127, 127] (4-bit codes in [-7, 7] stored as int8 work the same),
K at most :data:`MAX_K` = 133143 (longer int32 sums could overflow). A code of
-128 raises ``ValueError`` (the AVX2 sign-trick GEMM cannot multiply it exactly; the range is
checked while the codes are copied into the GEMM's layout, not in an extra pass).

Dispatch: CPU tensors run the C++ extension (``csrc/int8_linear*.cpp``: the int8 GEMM of
``RETQUANT_CPU_ISA``, VNNI / AVX2 sign trick / portable, over row blocks and torch's threads,
epilogue fused per block). Other devices, and CPU tensors when the extension cannot be built
(one warning), run :func:`int8_matmul_reference`: a float64 matmul of the codes, exact because
every partial sum is an integer below 2**53.

Weights: a raw ``w_codes`` tensor is packed into the GEMM's layout at every call (what QAT
wants: new codes each step; packing costs one pass over the weight). For a frozen weight,
:func:`pack_weight` once and pass the :class:`PackedInt8Weight` instead. The packed weight is a
snapshot: codes changed later are not seen (pack again).

Under ``torch.compile`` the calls go through custom ops (``retquant::int8_linear``,
``int8_linear_packed``, ``int8_matmul``, ``int8_matmul_packed``, ``quantize_per_token``; fake
impls give the shapes and check them), so a caller compiles with ``fullgraph=True``; eager calls
skip the dispatcher round trip.

Example:
    >>> a = torch.randint(-127, 128, (4, 64), dtype=torch.int8)
    >>> w = torch.randint(-127, 128, (32, 64), dtype=torch.int8)
    >>> y = int8_linear(a, torch.full((4,), 0.01), w, torch.full((32,), 0.02), torch.zeros(32))
    >>> y.shape, y.dtype
    (torch.Size([4, 32]), torch.float32)
    >>> torch.equal(int8_matmul(a, w), int8_matmul(a, pack_weight(w)))
    True
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from retquant.backends import cpu_extension
from retquant.quant.primitives import compute_qparams, quantize
from retquant.quant.spec import QuantSpec
from retquant.validate import nonfinite_error

_TOKEN_INT8 = QuantSpec(bits=8, granularity="token")
# Longest reduction whose int32 sums cannot overflow: K * 127 * 127 <= 2**31 - 1.
MAX_K = (2**31 - 1) // (127 * 127)
_warned_fallback = False


@dataclass(frozen=True)
class PackedInt8Weight:
    """Weight codes ``[N, K]`` ready for :func:`int8_linear` / :func:`int8_matmul`.

    On CPU (extension available): ``packed`` int8 ``[K4 * N16]`` (K, N rounded up to 4, 16;
    zero padded) in panels of ``panel`` output channels (16, or 64 for the VNNI GEMM), each
    ``[K4/4][width][4]``: four consecutive reduction entries of one channel adjacent
    (``csrc/gemm.h``'s B layout, ``csrc/int8_linear.h``), and ``colsum`` ``[N16]`` int32 (its
    column sums, for the VNNI path); ``codes`` is None. Any panel width is correct on every ISA
    (only speed differs), so a weight packed under one ``RETQUANT_CPU_ISA`` serves all.
    Elsewhere ``codes`` holds the contiguous ``[N, K]`` codes, ``packed`` and ``colsum`` are
    None and ``panel`` is 0. Build it with :func:`pack_weight`.
    """

    n: int
    k: int
    panel: int
    packed: torch.Tensor | None
    colsum: torch.Tensor | None
    codes: torch.Tensor | None

    @property
    def device(self) -> torch.device:
        return (self.codes if self.codes is not None else self.packed).device


def _use_extension(t: torch.Tensor) -> bool:
    """Whether a tensor on ``t``'s device runs the C++ extension (warns once when a CPU tensor
    cannot, with the build error)."""
    global _warned_fallback
    if t.device.type != "cpu":
        return False
    err = cpu_extension.load_error()
    if err is None:
        return True
    if not _warned_fallback:
        _warned_fallback = True
        warnings.warn(
            f"retquant int8_linear: {err}; CPU tensors run the exact PyTorch reference (slow)",
            RuntimeWarning,
            stacklevel=3,
        )
    return False


def _check_codes(t, name: str, dims: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be an int8 torch.Tensor {dims}, got {type(t).__name__}")
    if t.dtype != torch.int8:
        raise TypeError(f"{name} must be int8 {dims} (symmetric codes in [-127, 127]), got {t.dtype}")
    if t.dim() != 2:
        raise ValueError(f"{name} must have shape {dims}, got {list(t.shape)}")


def _check_range(t: torch.Tensor, name: str) -> None:
    """-128 raises on every path (the extension checks while copying: this is the others')."""
    if t.numel() and int(t.min()) < -127:
        raise ValueError(f"{name} must hold symmetric codes in [-127, 127], found -128")


def _check_pair(a: torch.Tensor, w: torch.Tensor | PackedInt8Weight) -> tuple[int, int, int]:
    """(M, N, K) after the dtype / shape / device checks of the two operands."""
    _check_codes(a, "a_codes", "[M, K]")
    if isinstance(w, PackedInt8Weight):
        n, k = w.n, w.k
        dev = w.device
    else:
        _check_codes(w, "w_codes", "[N, K]")
        (n, k), dev = w.shape, w.device
    if a.shape[1] != k:
        raise ValueError(
            f"a_codes [M, K] and w_codes [N, K] must share K: got a_codes {list(a.shape)} and "
            f"w_codes [{n}, {k}]"
        )
    if k > MAX_K:
        raise ValueError(f"K = {k} is too long for exact int32 sums (K <= {MAX_K}): split the reduction")
    if a.device != dev:
        raise ValueError(f"a_codes ({a.device}) and w_codes ({dev}) must be on the same device")
    return a.shape[0], n, k


def _vector(s, name: str, size: int, what: str, device, per_tensor: bool) -> torch.Tensor:
    """A scale (``per_tensor``: one element may broadcast) or the bias as a contiguous float32
    ``[size]``; ``what`` lists the accepted shapes for the error."""
    if not isinstance(s, torch.Tensor):
        raise TypeError(f"{name} must be a float32 torch.Tensor {what}, got {type(s).__name__}")
    if s.dtype != torch.float32:
        raise TypeError(f"{name} must be float32 {what}, got {s.dtype}")
    if s.device != device:
        raise ValueError(f"{name} must be on {device} like the codes, got {s.device}")
    if per_tensor and s.numel() == 1 and s.dim() <= 1:
        return s.detach().reshape(1).expand(size).contiguous()
    if tuple(s.shape) == (size,) or (per_tensor and tuple(s.shape) == (size, 1)):
        return s.detach().reshape(size).contiguous()
    raise ValueError(f"{name} must have shape {what}, got {list(s.shape)}")


def _scales(a_scale, w_scale, bias, m: int, n: int, device):
    """a_scale [M], w_scale [N], bias [N] or None, as the kernel takes them."""
    a_what = f"[M]=[{m}], [M, 1], [1] or [] (per token / per tensor)"
    w_what = f"[N]=[{n}], [N, 1], [1] or [] (per channel / per tensor)"
    sa = _vector(a_scale, "a_scale", m, a_what, device, True)
    sw = _vector(w_scale, "w_scale", n, w_what, device, True)
    b = None if bias is None else _vector(bias, "bias", n, f"[N]=[{n}] or None", device, False)
    return sa, sw, b


def pack_weight(w_codes: torch.Tensor) -> PackedInt8Weight:
    """Pack int8 weight codes ``[N, K]`` once for repeated :func:`int8_linear` calls (inference
    with a frozen weight). A snapshot: pack again after changing the codes.

    Example:
        >>> w = torch.randint(-127, 128, (48, 20), dtype=torch.int8)
        >>> pw = pack_weight(w)
        >>> (pw.n, pw.k)
        (48, 20)
    """
    _check_codes(w_codes, "w_codes", "[N, K]")
    n, k = w_codes.shape
    w = w_codes.detach().contiguous()
    if _use_extension(w):
        # the VNNI GEMM's widest tile is 64 columns, the AVX2 / portable ones' 16
        panel = 64 if cpu_extension.isa() == "avx512" else 16
        packed, colsum = cpu_extension.ops().int8_pack_weight(w, panel)
        return PackedInt8Weight(n, k, panel, packed, colsum, None)
    _check_range(w, "w_codes")
    return PackedInt8Weight(n, k, 0, None, None, w)


def int8_matmul_reference(a_codes: torch.Tensor, w_codes: torch.Tensor) -> torch.Tensor:
    """``a_codes [M, K] @ w_codes[N, K].T`` as int32 with plain PyTorch on any device: a float64
    matmul, exact while K * 127**2 < 2**53 (K < 5.5e11). The fallback path and the tests' truth.

    Example:
        >>> a = torch.tensor([[1, -2]], dtype=torch.int8)
        >>> int8_matmul_reference(a, torch.tensor([[3, 4]], dtype=torch.int8))
        tensor([[-5]], dtype=torch.int32)
    """
    return (a_codes.double() @ w_codes.double().t()).to(torch.int32)


def _matmul_impl(a: torch.Tensor, w: torch.Tensor | PackedInt8Weight) -> torch.Tensor:
    m, n, _ = _check_pair(a, w)
    a = a.detach().contiguous()
    if isinstance(w, PackedInt8Weight) and w.packed is not None:
        return cpu_extension.ops().int8_linear_fwd(
            a, w.packed, w.colsum, n, w.panel, None, None, None, cpu_extension.isa_code()
        )
    codes = w.codes if isinstance(w, PackedInt8Weight) else w.detach().contiguous()
    if _use_extension(a):
        return _matmul_impl(a, pack_weight(codes))
    _check_range(a, "a_codes")
    _check_range(codes, "w_codes")
    return int8_matmul_reference(a, codes)


def _linear_impl(a, a_scale, w, w_scale, bias):
    m, n, _ = _check_pair(a, w)
    sa, sw, b = _scales(a_scale, w_scale, bias, m, n, a.device)
    a = a.detach().contiguous()
    if isinstance(w, PackedInt8Weight) and w.packed is not None:
        isa = cpu_extension.isa_code()
        return cpu_extension.ops().int8_linear_fwd(a, w.packed, w.colsum, n, w.panel, sa, sw, b, isa)
    codes = w.codes if isinstance(w, PackedInt8Weight) else w.detach().contiguous()
    if _use_extension(a):
        return _linear_impl(a, sa, pack_weight(codes), sw, b)
    y = (_matmul_impl(a, codes).float() * sa[:, None]) * sw[None, :]
    return y if b is None else y + b


# Custom ops for torch.compile (the eager calls skip the dispatcher round trip, ~20-40 us).
@torch.library.custom_op("retquant::int8_linear", mutates_args=())
def _int8_linear_op(
    a_codes: torch.Tensor,
    a_scale: torch.Tensor,
    w_codes: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    return _linear_impl(a_codes, a_scale, w_codes, w_scale, bias)


@torch.library.custom_op("retquant::int8_linear_packed", mutates_args=())
def _int8_linear_packed_op(
    a_codes: torch.Tensor,
    a_scale: torch.Tensor,
    w_packed: torch.Tensor,
    w_colsum: torch.Tensor,
    n: int,
    panel: int,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    w = PackedInt8Weight(n, a_codes.shape[1], panel, w_packed, w_colsum, None)
    return _linear_impl(a_codes, a_scale, w, w_scale, bias)


@torch.library.custom_op("retquant::int8_matmul", mutates_args=())
def _int8_matmul_op(a_codes: torch.Tensor, w_codes: torch.Tensor) -> torch.Tensor:
    return _matmul_impl(a_codes, w_codes)


@torch.library.custom_op("retquant::int8_matmul_packed", mutates_args=())
def _int8_matmul_packed_op(
    a_codes: torch.Tensor, w_packed: torch.Tensor, w_colsum: torch.Tensor, n: int, panel: int
) -> torch.Tensor:
    return _matmul_impl(a_codes, PackedInt8Weight(n, a_codes.shape[1], panel, w_packed, w_colsum, None))


@_int8_linear_op.register_fake
def _(a_codes, a_scale, w_codes, w_scale, bias):
    m, n, _ = _check_pair(a_codes, w_codes)
    _scales(a_scale, w_scale, bias, m, n, a_codes.device)
    return a_codes.new_empty((m, n), dtype=torch.float32)


@_int8_linear_packed_op.register_fake
def _(a_codes, a_scale, w_packed, w_colsum, n, panel, w_scale, bias):
    _check_codes(a_codes, "a_codes", "[M, K]")
    m = a_codes.shape[0]
    _scales(a_scale, w_scale, bias, m, n, a_codes.device)
    return a_codes.new_empty((m, n), dtype=torch.float32)


@_int8_matmul_op.register_fake
def _(a_codes, w_codes):
    m, n, _ = _check_pair(a_codes, w_codes)
    return a_codes.new_empty((m, n), dtype=torch.int32)


@_int8_matmul_packed_op.register_fake
def _(a_codes, w_packed, w_colsum, n, panel):
    _check_codes(a_codes, "a_codes", "[M, K]")
    return a_codes.new_empty((a_codes.shape[0], n), dtype=torch.int32)


def int8_linear(
    a_codes: torch.Tensor,
    a_scale: torch.Tensor,
    w_codes: torch.Tensor | PackedInt8Weight,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(float(a_codes @ w_codes.T) * a_scale) * w_scale + bias`` as float32 ``[M, N]``,
    bit-identical to that PyTorch expression (int32 product exact, epilogue unfused).

    Args:
        a_codes: int8 ``[M, K]`` activation codes in [-127, 127] (flatten batch dims first).
        a_scale: float32 ``[M]`` / ``[M, 1]`` (per token) or ``[1]`` / ``[]`` (per tensor).
        w_codes: int8 ``[N, K]`` weight codes in [-127, 127], or a :func:`pack_weight` result.
        w_scale: float32 ``[N]`` / ``[N, 1]`` (per output channel) or ``[1]`` / ``[]``.
        bias: float32 ``[N]`` or None (no add at all, so -0.0 stays -0.0).

    Non-contiguous inputs are made contiguous; K needs no padding. ``TypeError`` for a wrong
    type or dtype, ``ValueError`` for shapes that do not match and for a -128 code.

    Example:
        >>> a = torch.tensor([[1, 2, 3]], dtype=torch.int8)
        >>> w = torch.tensor([[1, 1, 1], [0, 0, -1]], dtype=torch.int8)
        >>> int8_linear(a, torch.tensor([0.5]), w, torch.tensor([2.0, 1.0]), torch.tensor([0.0, 1.0]))
        tensor([[ 6.0000, -0.5000]])
    """
    if torch.compiler.is_compiling():
        if isinstance(w_codes, PackedInt8Weight) and w_codes.packed is not None:
            w = w_codes
            return _int8_linear_packed_op(a_codes, a_scale, w.packed, w.colsum, w.n, w.panel, w_scale, bias)
        codes = w_codes.codes if isinstance(w_codes, PackedInt8Weight) else w_codes
        return _int8_linear_op(a_codes, a_scale, codes, w_scale, bias)
    return _linear_impl(a_codes, a_scale, w_codes, w_scale, bias)


def int8_matmul(a_codes: torch.Tensor, w_codes: torch.Tensor | PackedInt8Weight) -> torch.Tensor:
    """The exact int32 product ``a_codes [M, K] @ w_codes [N, K].T`` -> ``[M, N]`` (codes in
    [-127, 127]; ``w_codes`` may be a :func:`pack_weight` result), for callers with their own
    epilogue.

    Example:
        >>> a = torch.tensor([[127, -127]], dtype=torch.int8)
        >>> int8_matmul(a, torch.tensor([[127, 127], [127, -127]], dtype=torch.int8))
        tensor([[    0, 32258]], dtype=torch.int32)
    """
    if torch.compiler.is_compiling():
        if isinstance(w_codes, PackedInt8Weight) and w_codes.packed is not None:
            w = w_codes
            return _int8_matmul_packed_op(a_codes, w.packed, w.colsum, w.n, w.panel)
        codes = w_codes.codes if isinstance(w_codes, PackedInt8Weight) else w_codes
        return _int8_matmul_op(a_codes, codes)
    return _matmul_impl(a_codes, w_codes)


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 codes of ``x [M, K]`` (float32 or bfloat16) with one scale per row:
    ``(codes int8 [M, K], scale float32 [M])``, bit-identical to
    :func:`retquant.quant.primitives.compute_qparams` / ``quantize`` with
    ``QuantSpec(bits=8, granularity="token")`` (scale = amax / 127, 1 for an all-zero row).
    CPU tensors use the extension's fused quantizer; inf / NaN raise ``ValueError``.

    Example:
        >>> codes, scale = quantize_per_token(torch.tensor([[0.5, -1.0], [0.0, 0.0]]))
        >>> codes.tolist(), scale[1].item()
        ([[64, -127], [0, 0]], 1.0)
    """
    if torch.compiler.is_compiling():
        return _quantize_per_token_op(x)
    return _quantize_per_token_impl(x)


def _check_float_rows(x) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a float32 or bfloat16 torch.Tensor [M, K], got {type(x).__name__}")
    if x.dtype not in (torch.float32, torch.bfloat16):
        raise TypeError(f"x must be float32 or bfloat16 [M, K], got {x.dtype}")
    if x.dim() != 2 or x.shape[1] == 0:
        raise ValueError(f"x must have shape [M, K] with K >= 1, got {list(x.shape)}")


def _quantize_per_token_impl(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    _check_float_rows(x)
    m, k = x.shape
    if m == 0:
        return torch.empty(0, k, dtype=torch.int8, device=x.device), x.new_empty(0, dtype=torch.float32)
    if _use_extension(x):
        from retquant.backends import cpu_quant

        codes, scales = cpu_quant.quantize_tokens(x.reshape(m, 1, k), 1.0, name="x")
        return codes.view(m, k), scales.view(m)
    x = x.detach()
    if not bool(torch.isfinite(x).all()):
        raise nonfinite_error("x")
    scale, zero = compute_qparams(x, _TOKEN_INT8, (1,))
    return quantize(x, _TOKEN_INT8, scale, zero), scale.view(m)


@torch.library.custom_op("retquant::quantize_per_token", mutates_args=())
def _quantize_per_token_op(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _quantize_per_token_impl(x)


@_quantize_per_token_op.register_fake
def _(x):
    _check_float_rows(x)
    return x.new_empty(x.shape, dtype=torch.int8), x.new_empty(x.shape[0], dtype=torch.float32)
