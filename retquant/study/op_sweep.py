"""Op-level error of the quantized retention on activations of the trained model.

q, k, v of every layer are captured from the model on validation windows (a forward pre-hook on
each :class:`~retquant.nn.MultiScaleRetention` records its input; the layer's own ``_project``
turns it into rotated q, k and v), then the quantized chunk form runs on them and is compared
with the float64 specification (:func:`retquant.spec.naive.naive_chunk_retention`):

- **chunk sweep**: bits (4, 8) x granularity (q, k per tensor / head / block / token; v per
  tensor / head / block / channel; the others at their natural granularity) x head (the decay
  ``gamma_h``) x position bucket (which part of the sequence), relative L2 and cosine;
- **decode growth**: the token-by-token decoder (:class:`~retquant.ops.RetentionDecoder`,
  int8 and int4) against the float64 recurrence, error of the output at each number of
  generated tokens (bucketed), which shows whether quantization error compounds in the state.

Example:
    >>> caps = capture_qkv(model, windows)  # doctest: +SKIP
    >>> rows = chunk_sweep(caps, bits=(4, 8), buckets=4)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import replace

import torch
from tqdm.auto import tqdm

from retquant.metrics import compare
from retquant.nn import MultiScaleRetention
from retquant.ops import RetentionDecoder, chunk_retention
from retquant.quant import RetentionQuantConfig
from retquant.spec.naive import naive_chunk_retention, naive_recurrent_retention

QK_GRANULARITIES = ("tensor", "head", "block", "token")
V_GRANULARITIES = ("tensor", "head", "block", "channel")


@torch.no_grad()
def capture_qkv(model, windows: torch.Tensor) -> list[dict]:
    """Per retention layer: ``{"layer", "q", "k", "v", "g_gamma", "scale"}`` on ``windows [B, T]``."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, MultiScaleRetention)]
    if not layers:
        raise ValueError("model has no MultiScaleRetention layer")
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        m.register_forward_pre_hook(lambda mod, args, name=n: seen.__setitem__(name, args[0].detach()))
        for n, m in layers
    ]
    try:
        model.eval()(windows)
    finally:
        for h in hooks:
            h.remove()
    out = []
    for name, m in layers:
        q, k, v, _ = m._project(seen[name], 0)
        out.append({"layer": name, "q": q, "k": k, "v": v, "g_gamma": m.g_gamma, "scale": m.head_k_dim**-0.5})
    return out


def sweep_configs(bits=(4, 8)) -> list[tuple[int, str, RetentionQuantConfig]]:
    """``(bits, granularity label, config)``: q,k granularities then v granularities, per bits."""
    rows = []
    for b in bits:
        base = RetentionQuantConfig.uniform(b)
        for g in QK_GRANULARITIES:
            rows.append(
                (
                    b,
                    f"q,k {g}",
                    replace(base, q=replace(base.q, granularity=g), k=replace(base.k, granularity=g)),
                )
            )
        for g in V_GRANULARITIES:
            if g != "channel":  # "v channel" is the uniform config, already the "q,k token" row
                rows.append((b, f"v {g}", replace(base, v=replace(base.v, granularity=g))))
    return rows


def _buckets(T: int, n: int) -> list[tuple[int, int]]:
    edges = torch.linspace(0, T, n + 1).round().long().tolist()
    return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


@torch.no_grad()
def chunk_sweep(captures: list[dict], *, bits=(4, 8), buckets: int = 4) -> list[dict]:
    """Error rows ``{layer, bits, granularity, head, gamma, pos_lo, pos_hi, rel_l2, cosine}``,
    plus one row per (layer, bits, granularity) with ``head = "all"`` over the whole output."""
    rows = []
    configs = sweep_configs(bits)
    for cap in tqdm(captures, desc="op sweep (layers)", leave=False):
        q, k, v, gg, scale = cap["q"], cap["k"], cap["v"], cap["g_gamma"], cap["scale"]
        ref = naive_chunk_retention(q, k, v, gg, scale)[0]
        T, H = q.shape[1], q.shape[2]
        gammas = torch.exp(gg.double()).tolist()
        for b, label, cfg in configs:
            out = chunk_retention(q, k, v, g_gamma=gg, scale=scale, quant=cfg)[0]
            base = {"layer": cap["layer"], "bits": b, "granularity": label}
            r = compare(out, ref)
            rows.append(
                {
                    **base,
                    "head": "all",
                    "gamma": None,
                    "pos_lo": 0,
                    "pos_hi": T,
                    "rel_l2": r.rel_l2,
                    "cosine": r.cosine,
                }
            )
            for h in range(H):
                for lo, hi in _buckets(T, buckets):
                    r = compare(out[:, lo:hi, h], ref[:, lo:hi, h])
                    rows.append(
                        {
                            **base,
                            "head": h,
                            "gamma": gammas[h],
                            "pos_lo": lo,
                            "pos_hi": hi,
                            "rel_l2": r.rel_l2,
                            "cosine": r.cosine,
                        }
                    )
    return rows


@torch.no_grad()
def decode_growth(captures: list[dict], *, presets=("int8", "int4"), buckets: int = 8) -> list[dict]:
    """Error of the recurrent decoder's outputs vs the float64 recurrence by tokens generated:
    rows ``{layer, quant, tok_lo, tok_hi, rel_l2, cosine}`` (state from zero, one token a step)."""
    rows = []
    for cap in tqdm(captures, desc="decode growth (layers)", leave=False):
        q, k, v, gg, scale = cap["q"], cap["k"], cap["v"], cap["g_gamma"], cap["scale"]
        B, T, H, K = q.shape
        ref = naive_recurrent_retention(q, k, v, gg, scale)[0]
        for preset in presets:
            dec = RetentionDecoder(B, H, K, v.shape[-1], scale=scale, g_gamma=gg, quant=preset)
            out = torch.stack([dec.step(q[:, t], k[:, t], v[:, t]) for t in range(T)], dim=1)
            for lo, hi in _buckets(T, buckets):
                r = compare(out[:, lo:hi], ref[:, lo:hi])
                rows.append(
                    {
                        "layer": cap["layer"],
                        "quant": preset,
                        "tok_lo": lo,
                        "tok_hi": hi,
                        "rel_l2": r.rel_l2,
                        "cosine": r.cosine,
                    }
                )
    return rows
