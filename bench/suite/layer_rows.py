"""Layer-vs-layer rows: ``retquant.nn.MultiScaleRetention`` (float and int8) against torchscale's
``MultiScaleRetention`` component at the same B, T, H, K, V and D = H K, each with its own
projections, forward under ``torch.no_grad()``.

torchscale (``pip install --no-deps torchscale``; its full RetNet needs timm and torchvision, so
only the component is used) takes a ``RetNetConfig`` from ``torchscale.architecture.config`` and
its position/decay inputs from ``RetNetRelPos`` (``architecture/retnet.py``, which imports
fairscale), rebuilt here by :func:`torchscale_rel_pos` from torchscale 0.3.0's formulas. Note that
torchscale *normalises* its scores (decay mask rows divided by the square root of their sums,
score rows by their absolute sums, its chunk states by their largest column sum): extra work our
layer does not do, which its per-head RMS norm makes (nearly) output-neutral. Its chunk form is
timed at chunk 64 (ours), its parallel form (T x T scores) up to ``PARALLEL_MAX_T``.
"""

from __future__ import annotations

import torch

from bench.suite.rows import Row, chunk_ops, skipped
from retquant.constants import CHUNK_SIZE as C
from retquant.nn import MultiScaleRetention

PARALLEL_MAX_T = 2048


def torchscale_rel_pos(T: int, H: int, K: int, chunk: int | None):
    """torchscale 0.3.0 ``RetNetRelPos.forward(T)`` (parallel, ``chunk=None``) or with
    ``chunkwise_recurrent=True`` and ``recurrent_chunk_size=chunk``: ``((sin, cos), mask)``."""
    angle = (1.0 / (10000 ** torch.linspace(0, 1, K // 2))).unsqueeze(-1).repeat(1, 2).flatten()
    decay = torch.log(1 - 2 ** (-5 - torch.arange(H, dtype=torch.float)))
    index = torch.arange(T).to(decay)
    sin, cos = torch.sin(index[:, None] * angle[None, :]), torch.cos(index[:, None] * angle[None, :])
    if chunk is None:
        mask = torch.tril(torch.ones(T, T).to(decay))
        mask = torch.masked_fill(index[:, None] - index[None, :], ~mask.bool(), float("inf"))
        mask = torch.nan_to_num(torch.exp(mask * decay[:, None, None]))
        return (sin, cos), mask / mask.sum(dim=-1, keepdim=True).sqrt()
    block = torch.arange(chunk).to(decay)
    mask = torch.tril(torch.ones(chunk, chunk).to(decay))
    mask = torch.masked_fill(block[:, None] - block[None, :], ~mask.bool(), float("inf"))
    mask = torch.nan_to_num(torch.exp(mask * decay[:, None, None]))
    value_inner_decay = (mask[:, -1] / mask[:, -1].sum(dim=-1, keepdim=True)).unsqueeze(-1)
    scale = mask.sum(dim=-1, keepdim=True).sqrt()
    inner_mask = mask / scale
    cross_decay = torch.exp(decay * chunk)[:, None, None]
    query_inner_decay = torch.exp(decay[:, None] * (block + 1))
    query_inner_decay = query_inner_decay[:, :, None] / (scale / mask[:, -1].sum(dim=-1)[:, None, None])
    return (sin, cos), (inner_mask, cross_decay, query_inner_decay, value_inner_decay)


def _torchscale():
    """torchscale's (RetNetConfig, MultiScaleRetention), or the reason they do not import."""
    try:
        from torchscale.architecture.config import RetNetConfig
        from torchscale.component.multiscale_retention import MultiScaleRetention as TorchscaleMSR
    except ImportError as e:
        return None, f"torchscale not importable ({e}); pip install --no-deps torchscale"
    return (RetNetConfig, TorchscaleMSR), None


def layer_rows(B: int, T: int, H: int, K: int, V: int) -> list[Row]:
    """Our layer (float, int8) and torchscale's (chunk form, parallel form) on one input."""
    D = H * K
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(B, T, D, generator=gen)
    # layer flops: 5 projections (q, k: D x D; v, g: D x HV; o: HV x D) + the retention GEMMs
    ops = 2.0 * B * T * (2 * D * D + 3 * D * H * V) + chunk_ops(B, T, H, K, V)
    torch.manual_seed(2)
    ours = {q: MultiScaleRetention(D, H, expand_v=V / K, quant=q).eval() for q in (None, "int8")}

    def no_grad(fn):
        def run():
            with torch.no_grad():
                return fn()

        return run

    rows = [
        Row(
            "ours int8 (nn.MultiScaleRetention quant=int8)",
            "layer-fwd",
            False,
            "cpu int8",
            no_grad(lambda: ours["int8"](x)[0]),
            ops,
            None,  # mixed: fp32 projections around the int8 retention: no single peak
        ),
        Row(
            "ours float (nn.MultiScaleRetention)",
            "layer-fwd",
            False,
            "float path",
            no_grad(lambda: ours[None](x)[0]),
            ops,
            "fp32",
        ),
    ]
    mods, why = _torchscale()
    chunk_name, par_name = "torchscale MSR, chunk form (chunk 64)", "torchscale MSR, parallel form"
    if mods is None:
        return rows + [skipped(n, "layer-fwd", True, "torchscale", why) for n in (chunk_name, par_name)]
    RetNetConfig, TorchscaleMSR = mods
    args = RetNetConfig(decoder_embed_dim=D, decoder_value_embed_dim=H * V, decoder_retention_heads=H)
    theirs = TorchscaleMSR(args, D, H * V, H).eval()
    note = "normalises its scores"
    if T % C:
        rows.append(skipped(chunk_name, "layer-fwd", True, "torchscale", f"T not a multiple of {C}"))
    else:
        pos = torchscale_rel_pos(T, H, K, C)
        rows.append(
            Row(
                chunk_name,
                "layer-fwd",
                True,
                "torchscale",
                no_grad(lambda: theirs(x, pos, chunkwise_recurrent=True)),
                ops,
                "fp32",
                note=note,
            )
        )
    if T <= PARALLEL_MAX_T:
        ppos = torchscale_rel_pos(T, H, K, None)
        rows.append(
            Row(
                par_name,
                "layer-fwd",
                True,
                "torchscale",
                no_grad(lambda: theirs(x, ppos)),
                ops,
                "fp32",
                note=note + "; T x T scores",
            )
        )
    else:
        rows.append(
            skipped(par_name, "layer-fwd", True, "torchscale", f"T x T scores: only T <= {PARALLEL_MAX_T}")
        )
    return rows
