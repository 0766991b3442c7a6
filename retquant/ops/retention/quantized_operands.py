"""The quantized operands of a retention call, kept for its backward instead of fp32 q, k, v.

For a quantized call the autograd layer saves the integer codes of ``q * scale``, ``k`` and
``v`` in token layout ``[B, T, H, D]`` (int8 for 4/8 bits, int16 for 16 bits) with their
scales (float32) and zero points (int32; none for symmetric specs) per *slot*, and a clip mask
(bool) only for static ranges. The backward evaluates the float gradient at the dequantized
operands ``(code - zero) * scale`` (straight-through estimator), zero where a static range
clipped.

Slots. An op quantizes in chunks of ``c`` tokens (``chunk``: 64; ``fused_recurrent``: 1, each
token its own group; ``parallel``: the whole sequence, ``c = T``). Scales live in
``[B, H, n_slots, R, P]``: R = c for per-token scales, else 1; P = D for per-channel scales,
else 1. Dense inputs: token t is row ``t % c`` of slot ``t // c``. Packed inputs (``cu_seqlens``,
B = 1): each sequence's chunks follow the previous sequences', and ``n_slots = ceil(T / c) + N``
bounds their number from shapes alone (what a fake implementation under torch.compile knows);
unused slots hold scale 1.

Example:
    >>> from retquant.validate import validate_call
    >>> q = k = v = torch.randn(1, 100, 2, 16)
    >>> call = validate_call(q, k, v, quant="int8")
    >>> saved = default_int8_operands("chunk", call)
    >>> q_hat, k_hat, v_hat, masks = dequantize_operands("chunk", call.quant, saved, None)
    >>> q_hat.shape, saved[0].dtype
    (torch.Size([1, 100, 2, 16]), torch.int8)
"""

from __future__ import annotations

import torch

from retquant.backends import cpu, cpu_extension, cpu_quant
from retquant.constants import CHUNK_SIZE
from retquant.quant.config import RetentionQuantConfig
from retquant.quant.primitives import compute_qparams, quantize
from retquant.quant.ranges import storage_dtype
from retquant.quant.spec import Granularity, QuantSpec
from retquant.validate import RetentionCall

OPERANDS = ("q", "k", "v")
# Per operand, in this order: codes, scale, zero (empty when symmetric), clip mask (empty when
# the range is dynamic); then k_mean (empty unless smooth_k). 13 tensors in all.
FIELDS = ("codes", "scale", "zero", "mask")
NUM_SAVED = len(OPERANDS) * len(FIELDS) + 1

_EMPTY_SHAPE = (0,)


def slot_chunk(op: str, T: int) -> int:
    """Tokens per quantization group along time for ``op`` (see the module doc)."""
    return {"chunk": CHUNK_SIZE, "fused_recurrent": 1, "parallel": T}[op]


def slot_count(op: str, B: int, T: int, num_seqs: int | None) -> int:
    """Number of slots: ``ceil(T / c)`` dense, ``+ N`` with N packed sequences."""
    c = slot_chunk(op, T)
    n = -(-T // c)
    return n if num_seqs is None else n + num_seqs


def _spec(op: str, config: RetentionQuantConfig, name: str) -> QuantSpec:
    spec = getattr(config, name)
    if op == "fused_recurrent":  # the decode spec quantizes each token on its own
        return QuantSpec(spec.bits, spec.symmetric, Granularity.TOKEN, spec.rounding, spec.static_range)
    return spec


def _smooth(op: str, config: RetentionQuantConfig) -> bool:
    """Whether k was smoothed (the decode spec quantizes single tokens: nothing to smooth)."""
    return config.smooth_k and op != "fused_recurrent"


def param_shape(op: str, spec: QuantSpec, B: int, H: int, T: int, D: int, n_slots: int) -> tuple:
    """Shape of the saved scale / zero point of an operand quantized by ``spec``."""
    c = slot_chunk(op, T)
    rows = c if spec.granularity is Granularity.TOKEN else 1
    cols = D if spec.granularity is Granularity.CHANNEL else 1
    return (B, H, n_slots, rows, cols)


def saved_shapes(op: str, config: RetentionQuantConfig, B, T, H, K, V, num_seqs):
    """``[(shape, dtype)] * NUM_SAVED`` of what :func:`default_int8_operands` or
    :func:`from_traces` returns: the fake implementation's outputs."""
    n_slots = slot_count(op, B, T, num_seqs)
    out = []
    for name, D in zip(OPERANDS, (K, K, V)):
        spec = _spec(op, config, name)
        p = param_shape(op, spec, B, H, T, D, n_slots)
        out.append(((B, T, H, D), storage_dtype(spec.bits)))
        out.append((p, torch.float32))
        out.append((_EMPTY_SHAPE if spec.symmetric else p, torch.int32))
        out.append((_EMPTY_SHAPE if spec.dynamic else (B, T, H, D), torch.bool))
    out.append(((B, H, n_slots, 1, K) if _smooth(op, config) else _EMPTY_SHAPE, torch.float32))
    return out


def slot_index(op: str, B: int, T: int, cu_seqlens: torch.Tensor | None, device) -> tuple:
    """``(slot [T], row [T])`` of each token (int64, on ``device``)."""
    c = slot_chunk(op, T)
    t = torch.arange(T, device=device)
    if cu_seqlens is None:
        return t // c, t % c
    cs = cu_seqlens.to(device=device, dtype=torch.int64)
    seq = torch.bucketize(t, cs[1:], right=True)  # sequence of each token
    lens = cs[1:] - cs[:-1]
    base = torch.cumsum((lens + c - 1) // c, 0) - (lens + c - 1) // c  # first slot per sequence
    local = t - cs[seq]
    return base[seq] + local // c, local % c


def _gather(p: torch.Tensor, slot: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
    """Slot-layout ``[B, H, n, R, P]`` -> per token ``[B, T, H, P]``."""
    B, H, n, R, P = p.shape
    g = p[:, :, slot, 0] if R == 1 else p.reshape(B, H, n * R, P)[:, :, slot * R + row]
    return g.transpose(1, 2)


def _scatter(tok: torch.Tensor, slot, row, shape, fill) -> torch.Tensor:
    """Per-token ``[B, T, H, P]`` (token-granular params) -> slot layout ``shape``."""
    B, H, n, R, P = shape
    out = torch.full((B, H, n * R, P), fill, dtype=tok.dtype, device=tok.device)
    out[:, :, slot * R + row] = tok.transpose(1, 2)
    return out.view(shape)


def _quantize_operand(op, spec, x, slot, row, n_slots):
    """Codes and params of ``x [B, T, H, D]`` (float32) for the token / channel granularities
    the kernels implement, exactly as the spec computes them."""
    B, T, H, D = x.shape
    shape = param_shape(op, spec, B, H, T, D, n_slots)
    if spec.granularity is Granularity.TOKEN:
        scale, zero = compute_qparams(x, spec, (-1,))
        codes = quantize(x, spec, scale, zero)
        zero_s = _scatter(zero, slot, row, shape, 0) if not spec.symmetric else None
        return codes, _scatter(scale, slot, row, shape, 1.0), zero_s
    if spec.granularity is not Granularity.CHANNEL:
        raise ValueError(f"saving {spec.granularity.value}-granular operands needs the reference backend")
    c = slot_chunk(op, T)
    padded = torch.zeros(B, H, n_slots * c, D, dtype=x.dtype, device=x.device)
    padded[:, :, slot * c + row] = x.transpose(1, 2)
    scale, zero = compute_qparams(padded.view(B, H, n_slots, c, D), spec, (3,))
    codes = quantize(x, spec, _gather(scale, slot, row), _gather(zero, slot, row))
    return codes, scale, (None if spec.symmetric else zero)


def _clip_mask(spec, x, scale_tok, zero_tok) -> torch.Tensor | None:
    """Where a static range left ``x`` unclipped (the straight-through estimator's pass band)."""
    if spec.dynamic:
        return None
    z = zero_tok.float() if zero_tok is not None else 0.0
    return (x >= (spec.qmin - z) * scale_tok) & (x <= (spec.qmax - z) * scale_tok)


def _inputs_quantized(call: RetentionCall, k_mean_tok=None):
    """The float32 tensors the quantizers saw: ``q * scale``, ``k`` (minus its chunk mean with
    smooth_k), ``v``."""
    k = call.k.float() if k_mean_tok is None else call.k.float() - k_mean_tok
    return call.q.float() * call.scale, k, call.v.float()


def _pack(op, config, B, T, H, K, V, num_seqs, parts: dict, k_mean) -> list[torch.Tensor]:
    out = []
    for (shape, dtype), key in zip(
        saved_shapes(op, config, B, T, H, K, V, num_seqs), [f"{o}_{f}" for o in OPERANDS for f in FIELDS]
    ):
        t = parts.get(key)
        out.append(t if t is not None else torch.empty(shape, dtype=dtype, device=parts["q_codes"].device))
    out.append(k_mean if k_mean is not None else torch.empty(_EMPTY_SHAPE, device=parts["q_codes"].device))
    return out


def _num_seqs(call: RetentionCall):
    return None if call.cu_seqlens is None else call.cu_seqlens.numel() - 1


def _cpu_int8_parts(op: str, call: RetentionCall, slot, row, n_slots) -> dict | None:
    """The default int8 operands by the C++ quantize ops (one pass per operand, bit-identical to
    the spec's primitives), or None where they do not apply (other device, extension missing)."""
    if call.q.device.type != "cpu" or not call.quant.is_default_int8() or cpu_extension.load_error():
        return None
    B, T, H, K = call.q.shape
    V = call.v.shape[-1]
    c = slot_chunk(op, T)

    parts = {}
    for name, x, mul in (("q", call.q, call.scale), ("k", call.k, 1.0)):
        codes, scales = cpu_quant.quantize_tokens(cpu.token_rows(x, keep_bf16=True), mul, name=name)
        parts[f"{name}_codes"] = codes.view(B, T, H, K)
        parts[f"{name}_scale"] = _scatter(scales.view(B, T, H, 1), slot, row, (B, H, n_slots, c, 1), 1.0)
    if op == "fused_recurrent":  # v per token too
        codes, scales = cpu_quant.quantize_tokens(cpu.token_rows(call.v, keep_bf16=True), 1.0, name="v")
        parts["v_scale"] = _scatter(scales.view(B, T, H, 1), slot, row, (B, H, n_slots, 1, 1), 1.0)
    else:
        v_rows = cpu.token_rows(call.v, keep_bf16=True)
        codes, scales = cpu_quant.quantize_v_chunks(v_rows, cpu.token_offsets(call), c, name="v")
        n = scales.shape[0] // B  # chunks are numbered sequence by sequence = slot order
        v_scale = torch.ones(B, H, n_slots, 1, V)
        v_scale[:, :, :n, 0] = scales.view(B, n, H, V).transpose(1, 2)
        parts["v_scale"] = v_scale
    parts["v_codes"] = codes.view(B, T, H, V)
    return parts


def default_int8_operands(op: str, call: RetentionCall) -> list[torch.Tensor]:
    """Saved operands of a call the int8 kernels ran (token / channel granularities), computed
    with the spec's arithmetic, so the codes are the ones the kernel multiplied: by the C++
    quantize ops for CPU tensors, else by the spec's primitives."""
    B, T, H, K = call.q.shape
    V = call.v.shape[-1]
    n_slots = slot_count(op, B, T, _num_seqs(call))
    slot, row = slot_index(op, B, T, call.cu_seqlens, call.q.device)
    fast = _cpu_int8_parts(op, call, slot, row, n_slots)
    if fast is not None:
        return _pack(op, call.quant, B, T, H, K, V, _num_seqs(call), fast, None)
    parts = {}
    for name, x in zip(OPERANDS, _inputs_quantized(call)):
        spec = _spec(op, call.quant, name)
        codes, scale, zero = _quantize_operand(op, spec, x, slot, row, n_slots)
        parts[f"{name}_codes"], parts[f"{name}_scale"], parts[f"{name}_zero"] = codes, scale, zero
        z_tok = None if zero is None else _gather(zero, slot, row)
        parts[f"{name}_mask"] = _clip_mask(spec, x, _gather(scale, slot, row), z_tok)
    return _pack(op, call.quant, B, T, H, K, V, _num_seqs(call), parts, None)


def _token_layout(x: torch.Tensor, T: int) -> torch.Tensor:
    """Chunked ``[B, H, n, c, D]`` -> ``[B, T, H, D]``."""
    B, H, n, c, D = x.shape
    return x.reshape(B, H, n * c, D)[:, :, :T].transpose(1, 2)


def from_traces(op: str, call: RetentionCall, traces: list) -> list[torch.Tensor]:
    """Saved operands from the reference spec's traces (one per sequence): the exact codes it
    multiplied, stochastic rounding included."""
    B, T, H, K = call.q.shape
    V = call.v.shape[-1]
    num_seqs = _num_seqs(call)
    n_slots = slot_count(op, B, T, num_seqs)
    bounds = [0, T] if call.cu_seqlens is None else call.cu_seqlens.tolist()
    dev = call.q.device
    shapes = dict(
        zip(
            [f"{o}_{f}" for o in OPERANDS for f in FIELDS],
            saved_shapes(op, call.quant, B, T, H, K, V, num_seqs),
        )
    )
    parts = {}
    for name in OPERANDS:
        spec = _spec(op, call.quant, name)
        codes, scale_t, zero_t = [], None, None
        (_, _, _, R, P), _ = shapes[f"{name}_scale"]
        scale_t = torch.ones(B, H, n_slots, R, P, device=dev)
        if not spec.symmetric:
            zero_t = torch.zeros(B, H, n_slots, R, P, dtype=torch.int32, device=dev)
        base = 0
        for tr, s, e in zip(traces, bounds[:-1], bounds[1:]):
            c_codes, c_scale, c_zero = (getattr(tr, f"{name}_{f}") for f in ("codes", "scale", "zero"))
            if op == "fused_recurrent":  # [B, L, H, D] codes, [B, L, H, 1] params: a slot per token
                codes.append(c_codes)
                c_scale, c_zero = (x.permute(0, 2, 1, 3)[:, :, :, None] for x in (c_scale, c_zero))
            else:
                codes.append(_token_layout(c_codes, e - s))
            n = c_scale.shape[2] if op == "fused_recurrent" else c_codes.shape[2]
            rows = c_scale.shape[3]
            scale_t[:, :, base : base + n, :rows] = c_scale.expand(B, H, n, rows, P)
            if zero_t is not None:
                zero_t[:, :, base : base + n, :rows] = c_zero.expand(B, H, n, rows, P)
            base += n
        parts[f"{name}_codes"] = torch.cat(codes, dim=1)
        parts[f"{name}_scale"], parts[f"{name}_zero"] = scale_t, zero_t
    k_mean = None
    if _smooth(op, call.quant):
        k_mean = torch.zeros(B, H, n_slots, 1, K, device=dev)
        base = 0
        for tr in traces:
            n = tr.k_mean.shape[2]
            k_mean[:, :, base : base + n] = tr.k_mean
            base += n
    slot, row = slot_index(op, B, T, call.cu_seqlens, dev)
    k_mean_tok = None if k_mean is None else _gather(k_mean, slot, row)
    for name, x in zip(OPERANDS, _inputs_quantized(call, k_mean_tok)):
        spec = _spec(op, call.quant, name)
        z = parts[f"{name}_zero"]
        z_tok = None if z is None else _gather(z, slot, row)
        parts[f"{name}_mask"] = _clip_mask(spec, x, _gather(parts[f"{name}_scale"], slot, row), z_tok)
    return _pack(op, call.quant, B, T, H, K, V, num_seqs, parts, k_mean)


def _spans(op: str, B: int, T: int, cu_seqlens) -> list[tuple[int, int, int]]:
    """``(first token, length, first slot)`` of each sequence (dense: one span for every row)."""
    c = slot_chunk(op, T)
    if cu_seqlens is None:
        return [(0, T, 0)]
    bounds = cu_seqlens.tolist()
    spans, base = [], 0
    for a, e in zip(bounds[:-1], bounds[1:]):
        spans.append((a, e - a, base))
        base += -(-(e - a) // c)
    return spans


def _apply_per_slot(x: torch.Tensor, p: torch.Tensor, c: int, spans, fn) -> None:
    """``fn(x_view, p_view)`` in place on ``x [B, T, H, D]`` with the slot-layout parameter ``p
    [B, H, n, R, P]`` broadcast to it: per sequence, its whole chunks as one ``[B, n, c, H, D]``
    view and its short last chunk as another (no per-token index tensors, no full-size copies)."""
    B, T, H, D = x.shape
    pv = p.permute(0, 2, 3, 1, 4)  # [B, n, R, H, P]
    for a, L, b0 in spans:
        n_full, tail = divmod(L, c)
        if n_full:
            fn(x[:, a : a + n_full * c].view(B, n_full, c, H, D), pv[:, b0 : b0 + n_full])
        if tail:
            rows = tail if pv.shape[2] > 1 else 1
            fn(
                x[:, a + n_full * c : a + L].view(B, 1, tail, H, D),
                pv[:, b0 + n_full : b0 + n_full + 1, :rows],
            )


def dequantize_operands(op: str, config: RetentionQuantConfig, saved: list[torch.Tensor], cu_seqlens):
    """``(q_hat, k_hat, v_hat, masks)``: float32 ``[B, T, H, D]`` dequantized operands (q_hat is
    of ``q * scale``; k_hat has the chunk mean added back with smooth_k) and the clip masks
    (``None`` where the range is dynamic). The arithmetic of the spec's dequantization,
    ``float(code - zero) * scale`` (the subtraction is exact in float32 for these codes)."""
    if len(saved) != NUM_SAVED:
        raise ValueError(f"expected {NUM_SAVED} saved tensors, got {len(saved)}")
    B, T, H, _ = saved[0].shape
    c = slot_chunk(op, T)
    spans = _spans(op, B, T, cu_seqlens)
    hats, masks = [], []
    for i, name in enumerate(OPERANDS):
        codes, scale, zero, mask = saved[4 * i : 4 * i + 4]
        spec = _spec(op, config, name)
        x = codes.to(torch.float32)
        if not spec.symmetric:
            _apply_per_slot(x, zero, c, spans, lambda xv, zv: xv.sub_(zv))
        _apply_per_slot(x, scale, c, spans, lambda xv, sv: xv.mul_(sv))
        hats.append(x)
        masks.append(None if spec.dynamic else mask)
    if _smooth(op, config):
        _apply_per_slot(hats[1], saved[-1], c, spans, lambda xv, mv: xv.add_(mv))
    return hats[0], hats[1], hats[2], masks
