"""``QuantLinear``: a linear layer whose forward is the int8 GEMM, for QAT and inference alike.

Forward (training and eval): quantize the input activation and the weight with their
quantizers, multiply the codes with the int8 GEMM (int32 accumulate), dequantize in the
epilogue ``(acc * a_scale[m]) * w_scale[n] + bias[n]``. Backward (:class:`_Int8LinearSTE`): the
gradients of a float linear layer at the *dequantized* operands, which then flow through each
quantizer's own backward (STE, PACT, LSQ or TQT), so the learnable ranges train. The layer saves
the int8 codes and scales for its own backward; a learnable activation quantizer (PACT, LSQ,
TQT) also keeps the float input, which its range gradient needs.

:meth:`QuantLinear.convert` freezes the weight to its codes (:class:`Int8Linear`): the same
kernel with the same codes, so the converted layer's output equals the QAT layer's in eval mode
bit for bit.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from retquant.backends import ste_tensor
from retquant.backends.int8_linear import int8_linear, pack_weight, quantize_per_token
from retquant.qat import DynamicQuantizer, LSQQuantizer, PACTQuantizer, Quantizer, TQTQuantizer
from retquant.qat.base import MIN_STEP
from retquant.quant import Granularity, QuantSpec, Rounding
from retquant.validate import nonfinite_error

_FAST_TOKEN_SPEC = QuantSpec(bits=8, granularity=Granularity.TOKEN)  # the C++ per-token quantizer's


def quantize_activation(quantizer: Quantizer, x: torch.Tensor):
    """``(x_in, codes, scale)`` of the 2-D activation ``x``: ``x_in`` carries the gradient to
    ``x`` (and the quantizer's parameters) and equals the dequantized codes, except for the
    dynamic int8 per-token quantizer, whose gradient is the identity: then ``x`` itself is
    passed and the codes come from the fused C++ quantizer (bit-identical to the primitives)."""
    if type(quantizer) is DynamicQuantizer and quantizer.spec == _FAST_TOKEN_SPEC and x.device.type == "cpu":
        codes, scale = quantize_per_token(x.detach().float())
        return x, codes, scale
    if not torch.isfinite(x).all():  # what the fused quantizers report, for every quantizer
        raise nonfinite_error("input")
    qt = quantizer.quantize(x)
    return qt.x_hat, qt.codes, qt.scale


def _dequantize_rows(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``codes [R, C] * scale`` with one scale per row or one for all (``scale`` of R or 1
    elements): int8 times float32 in one pass. The backward GEMMs' float operands."""
    return codes * scale.reshape(-1, 1)


_FUSED_MODES = {LSQQuantizer: "lsq", TQTQuantizer: "tqt", PACTQuantizer: "pact"}
_LN2 = math.log(2.0)


def fused_activation(quantizer: Quantizer, x: torch.Tensor):
    """``(mode, s, alpha)`` when ``quantizer`` is a learnable per-tensor quantizer the fused CPU
    ops compute exactly (nearest rounding, float32 CPU input, extension present), else None.
    Initialises the quantizer's range from ``x`` on first use, as its own ``quantize`` would."""
    mode = _FUSED_MODES.get(type(quantizer))
    spec = quantizer.spec
    if (
        mode is None
        or spec.granularity is not Granularity.TENSOR
        or spec.rounding is not Rounding.NEAREST
        or x.device.type != "cpu"
        or x.dtype != torch.float32
        or not ste_tensor.available()
    ):
        return None
    if not bool(quantizer.initialized) and not torch.isfinite(x).all():  # never init from inf/NaN
        raise nonfinite_error("input")
    scale, _ = quantizer.qparams(x)  # the scale its quantize() uses (initialises lazily)
    alpha = 0.0
    if mode == "pact":
        alpha = float(getattr(quantizer, quantizer.param_name).detach().float().clamp_min(MIN_STEP))
    return mode, float(scale.reshape(())), alpha


class _FusedActInt8Linear(torch.autograd.Function):
    """QuantLinear with a learnable per-tensor activation quantizer, fused: the activation codes
    and the straight-through backward each in one pass of ``csrc/ste_tensor.cpp``; the int8
    GEMM forward and the float gradients at the dequantized operands as in
    :class:`_Int8LinearSTE`. Gradients equal those of the quantizer's own autograd Function
    (up to the order of the sums)."""

    @staticmethod
    def forward(ctx, x, param, w_in, bias, w_codes, w_scale, quantizer, mode, s, alpha):
        qmax = quantizer.spec.qmax
        a_codes = ste_tensor.ste_codes(x.detach(), s, qmax, name="input")
        a_scale = torch.tensor([s], dtype=torch.float32)
        w_scale = w_scale.reshape(-1)
        ctx.save_for_backward(x.detach(), a_codes, a_scale, w_codes, w_scale)
        ctx.meta = (quantizer, mode, s, alpha, qmax, bias is not None, param.shape)
        return int8_linear(a_codes, a_scale, w_codes, w_scale, None if bias is None else bias.detach())

    @staticmethod
    def backward(ctx, dy):
        x, a_codes, a_scale, w_codes, w_scale = ctx.saved_tensors
        quantizer, mode, s, alpha, qmax, has_bias, pshape = ctx.meta
        dy = dy.contiguous()
        dx = dparam = dw = db = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            dx_hat = dy @ _dequantize_rows(w_codes, w_scale)
            dx, sums = ste_tensor.ste_backward(x, dx_hat, s, qmax, mode, alpha)
            if mode == "lsq":
                dp = sums[0] * quantizer.grad_scale(x)
            elif mode == "tqt":
                dp = sums[0] * (s * _LN2)
            else:
                dp = sums[1]
            dparam = dp.float().reshape(pshape)
        if ctx.needs_input_grad[2]:
            dw = dy.t() @ _dequantize_rows(a_codes, a_scale)
        if has_bias and ctx.needs_input_grad[3]:
            db = dy.sum(0)
        return dx, dparam, dw, db, None, None, None, None, None, None


class _Int8LinearSTE(torch.autograd.Function):
    """``y = int8_linear(codes)`` forward; float linear gradients at the dequantized operands."""

    @staticmethod
    def forward(ctx, x_in, w_in, bias, a_codes, a_scale, w_codes, w_scale):
        a_scale, w_scale = a_scale.reshape(-1), w_scale.reshape(-1)
        ctx.save_for_backward(a_codes, a_scale, w_codes, w_scale)
        ctx.has_bias = bias is not None
        return int8_linear(a_codes, a_scale, w_codes, w_scale, None if bias is None else bias.detach())

    @staticmethod
    def backward(ctx, dy):
        a_codes, a_scale, w_codes, w_scale = ctx.saved_tensors
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = dy @ _dequantize_rows(w_codes, w_scale)
        if ctx.needs_input_grad[1]:
            dw = dy.t() @ _dequantize_rows(a_codes, a_scale)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dy.sum(0)
        return dx, dw, db, None, None, None, None


def _check_quantizer(q, where: str, allowed: set[Granularity]) -> None:
    if not isinstance(q, Quantizer):
        raise TypeError(f"{where} must be a retquant.qat.Quantizer, got {type(q).__name__}")
    s = q.spec
    if s.rounding is not Rounding.NEAREST:
        raise ValueError(
            f"{where}: rounding must be 'nearest' (stochastic codes would differ between the QAT "
            "forward and the converted layer)"
        )
    if s.bits not in (4, 8) or not s.symmetric or s.granularity not in allowed:
        raise ValueError(
            f"{where}: the int8 GEMM needs a symmetric 4- or 8-bit spec with granularity in "
            f"{sorted(g.value for g in allowed)}, got bits={s.bits}, symmetric={s.symmetric}, "
            f"granularity={s.granularity.value!r}"
        )


class QuantLinear(nn.Module):
    """A linear layer computed with int8 codes: ``y = x_q @ w_q^T + bias``.

    Args:
        in_features, out_features, bias: as ``nn.Linear``.
        weight_quantizer: quantizes ``weight`` ``[out, in]`` (granularity tensor or channel).
        act_quantizer: quantizes the input rows (granularity tensor or token).

    Example:
        >>> from retquant.qat import LSQQuantizer, DynamicQuantizer
        >>> from retquant import QuantSpec
        >>> lin = QuantLinear(64, 32, weight_quantizer=LSQQuantizer(
        ...     QuantSpec(granularity="channel"), num_channels=32),
        ...     act_quantizer=DynamicQuantizer(QuantSpec(granularity="token")))
        >>> lin(torch.randn(2, 5, 64)).shape
        torch.Size([2, 5, 32])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        weight_quantizer: Quantizer,
        act_quantizer: Quantizer,
        device=None,
        dtype=None,
    ):
        super().__init__()
        _check_quantizer(weight_quantizer, "weight_quantizer", {Granularity.TENSOR, Granularity.CHANNEL})
        _check_quantizer(act_quantizer, "act_quantizer", {Granularity.TENSOR, Granularity.TOKEN})
        ref = nn.Linear(in_features, out_features, bias, device=device, dtype=dtype)
        self.in_features, self.out_features = in_features, out_features
        self.weight = ref.weight
        self.bias = ref.bias
        self.weight_quantizer = weight_quantizer
        self.act_quantizer = act_quantizer

    @classmethod
    def from_linear(cls, linear: nn.Linear, weight_quantizer: Quantizer, act_quantizer: Quantizer):
        """A ``QuantLinear`` sharing ``linear``'s parameters (no copy)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        new = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            weight_quantizer=weight_quantizer,
            act_quantizer=act_quantizer,
            device="meta",
        )
        new.weight, new.bias = linear.weight, linear.bias
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.in_features)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).float()
        wq = self.weight_quantizer.quantize(self.weight.float())
        bias = None if self.bias is None else self.bias.float()
        if getattr(self.act_quantizer, "calibrating", False):
            # PTQ calibration: the observer records the float input, which flows on unquantized
            y = F.linear(self.act_quantizer(x2), wq.x_hat, bias)
            return y.reshape(*lead, self.out_features).to(x.dtype)
        fused = fused_activation(self.act_quantizer, x2)
        if fused is not None:
            param = getattr(self.act_quantizer, self.act_quantizer.param_name)
            y = _FusedActInt8Linear.apply(
                x2, param, wq.x_hat, bias, wq.codes, wq.scale, self.act_quantizer, *fused
            )
            return y.reshape(*lead, self.out_features).to(x.dtype)
        x_in, a_codes, a_scale = quantize_activation(self.act_quantizer, x2)
        y = _Int8LinearSTE.apply(x_in, wq.x_hat, bias, a_codes, a_scale, wq.codes, wq.scale)
        return y.reshape(*lead, self.out_features).to(x.dtype)

    @torch.no_grad()
    def convert(self) -> Int8Linear:
        """The inference layer: weight frozen to its int8 codes, same activation quantizer."""
        wq = self.weight_quantizer.quantize(self.weight.float())
        bias = None if self.bias is None else self.bias.detach().float()
        return Int8Linear(
            wq.codes, wq.scale.reshape(-1), bias, self.act_quantizer, self.weight_quantizer.spec.bits
        )

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
        )


class Int8Linear(nn.Module):
    """Inference-only int8 linear layer: int8 weight codes + per-channel (or per-tensor) scales
    held as buffers (so they save and load with ``state_dict``), the activation quantizer of the
    layer it was converted from.

    Example:
        >>> from retquant.qat import DynamicQuantizer
        >>> codes = torch.randint(-127, 128, (32, 64), dtype=torch.int8)
        >>> lin = Int8Linear(codes, torch.full((32,), 0.01), None,
        ...                  DynamicQuantizer(QuantSpec(granularity="token")))
        >>> lin(torch.randn(3, 64)).shape
        torch.Size([3, 32])
    """

    def __init__(
        self,
        weight_codes: torch.Tensor,
        weight_scale: torch.Tensor,
        bias,
        act_quantizer,
        weight_bits: int = 8,
    ):
        super().__init__()
        if not (
            isinstance(weight_codes, torch.Tensor)
            and weight_codes.dtype == torch.int8
            and weight_codes.dim() == 2
        ):
            raise TypeError("weight_codes must be an int8 tensor [out_features, in_features]")
        self.out_features, self.in_features = weight_codes.shape
        if weight_scale.numel() not in (1, self.out_features):
            raise ValueError(
                f"weight_scale must have 1 or out_features={self.out_features} elements, "
                f"got shape {list(weight_scale.shape)}"
            )
        _check_quantizer(act_quantizer, "act_quantizer", {Granularity.TENSOR, Granularity.TOKEN})
        self.register_buffer("weight_codes", weight_codes.contiguous())
        self.register_buffer("weight_scale", weight_scale.float().reshape(-1).contiguous())
        self.register_buffer("bias", None if bias is None else bias.float().contiguous())
        self.act_quantizer = act_quantizer
        self.weight_bits = weight_bits  # 4 or 8: the range of the int8-stored codes (for report)
        self._packed, self._packed_key = None, None

    def _weight(self):
        """The weight packed for the GEMM, packed again only when the codes change (e.g. by
        ``load_state_dict``, which writes them in place and so bumps their version; a write
        through ``.data`` bypasses the version counter and is not supported)."""
        w = self.weight_codes
        if w.device.type != "cpu":
            return w
        key = (w.data_ptr(), w._version)
        if key != self._packed_key:
            self._packed, self._packed_key = pack_weight(w), key
        return self._packed

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.in_features)
        lead = x.shape[:-1]
        if getattr(self.act_quantizer, "calibrating", False):
            raise RuntimeError(
                "Int8Linear cannot calibrate its activation observer (it has no float weight): "
                "calibrate the model before convert_"
            )
        x2 = x.reshape(-1, self.in_features).float()
        fused = fused_activation(self.act_quantizer, x2)
        if fused is not None:
            _, s, _ = fused
            codes = ste_tensor.ste_codes(x2, s, self.act_quantizer.spec.qmax, name="input")
            scale = torch.tensor([s], dtype=torch.float32)
        else:
            _, codes, scale = quantize_activation(self.act_quantizer, x2)
        bias = None if self.bias is None else self.bias.float()  # float32 even after model.to(bf16)
        y = int8_linear(codes, scale.reshape(-1), self._weight(), self.weight_scale.float(), bias)
        return y.reshape(*lead, self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
        )


def _check_input(x, in_features: int) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor [..., {in_features}], got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"input must be a floating-point tensor, got {x.dtype}")
    if x.dim() < 1 or x.shape[-1] != in_features:
        raise ValueError(f"input must have shape [..., in_features={in_features}], got {list(x.shape)}")


__all__ = ["Int8Linear", "QuantLinear", "quantize_activation"]
