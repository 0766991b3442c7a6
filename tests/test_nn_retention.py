"""retquant.nn: the multi-scale retention layer against an explicit float64 loop, against
torchscale's layer, its decoding API, and its parts (RMSNorm, rotation, SwiGLU).

Seeds are fixed per test and printed (shown by pytest on failure).
"""

import math

import pytest
import torch
import torch.nn.functional as F

from retquant.nn import GatedFFN, MultiScaleRetention, RetentionCache, RMSNorm, RotaryPosition

D, H = 24, 3  # K = 8, V = 16 per head


def seeded(seed: int) -> torch.Generator:
    print(f"seed={seed}")
    torch.manual_seed(seed)  # the layers' own initialisation
    return torch.Generator().manual_seed(seed)


def rotate_loop(x, n: int, style: str):
    """Rotate one head's vector x [K] (float64) to position n, pair by pair as complex numbers."""
    K = x.numel()
    half = K // 2
    out = x.clone()
    for i in range(half):
        if style == "retnet":  # torchscale: pairs (2i, 2i+1), theta_i = 1e4 ** (-i / (K/2 - 1))
            a, b, theta = 2 * i, 2 * i + 1, 10000.0 ** (-i / (half - 1))
        else:  # fla / NeoX rotary: pairs (i, i + K/2), theta_i = 1e4 ** (-2i / K)
            a, b, theta = i, i + half, 10000.0 ** (-2 * i / K)
        z = complex(x[a].item(), x[b].item()) * complex(math.cos(n * theta), math.sin(n * theta))
        out[a], out[b] = z.real, z.imag
    return out


def layer_loop(msr: MultiScaleRetention, x: torch.Tensor, style: str, eps: float) -> torch.Tensor:
    """The layer's math token by token and head by head in float64, from its weights only."""
    W = {n: getattr(msr, f"{n}_proj").weight.detach().double() for n in "qkvgo"}
    w_norm = msr.g_norm.weight.detach().double()
    x = x.double()
    B, T, _ = x.shape
    H, K, V = msr.num_heads, msr.head_k_dim, msr.head_v_dim
    y = torch.zeros(B, T, msr.hidden_size, dtype=torch.float64)
    for b in range(B):
        S = torch.zeros(H, K, V, dtype=torch.float64)
        for n in range(T):
            q, k, v, g = (W[c] @ x[b, n] for c in "qkvg")
            heads = []
            for h in range(H):
                gamma = 1.0 - 2.0 ** (-5 - h)
                qh = rotate_loop(q[h * K : (h + 1) * K], n, style) * K**-0.5
                kh = rotate_loop(k[h * K : (h + 1) * K], n, style)
                S[h] = gamma * S[h] + torch.outer(kh, v[h * V : (h + 1) * V])
                o = S[h].t() @ qh
                heads.append(o / torch.sqrt((o * o).mean() + eps) * w_norm)
            y[b, n] = W["o"] @ (F.silu(g) * torch.cat(heads))
    return y


def rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("style", ["retnet", "rope"])
@pytest.mark.parametrize("mode", ["chunk", "parallel", "recurrent"])
def test_float_layer_matches_float64_loop(mode, style):
    gen = seeded(1000 + len(mode) + len(style))
    msr = MultiScaleRetention(D, H, rotary_style=style)
    with torch.no_grad():  # a non-trivial norm weight, so the loop checks where it applies
        msr.g_norm.weight.copy_(1 + 0.3 * torch.randn(msr.head_v_dim, generator=gen))
    x = torch.randn(2, 37, D, generator=gen)  # T = 37: no multiple of the chunk size
    ref = layer_loop(msr, x, style, msr.g_norm.eps)
    y, final = msr(x, mode=mode)
    assert final is None and y.shape == x.shape and y.dtype == torch.float32
    assert rel(y, ref) < 2e-5, (mode, style, rel(y, ref))


@pytest.mark.parametrize("mode", ["chunk", "recurrent"])
def test_state_and_position_offset_continue_a_sequence(mode):
    """Prefix with output_final_state, then the rest from that state at position_offset ==
    the whole sequence in one call (float), and == the float64 loop."""
    gen = seeded(2000 + len(mode))
    msr = MultiScaleRetention(D, H)
    x = torch.randn(3, 70, D, generator=gen)
    whole, s_whole = msr(x, mode=mode, output_final_state=True)
    a, s = msr(x[:, :45], mode=mode, output_final_state=True)
    b, s2 = msr(x[:, 45:], state=s, position_offset=45, mode=mode, output_final_state=True)
    assert s.shape == (3, H, 8, 16) and s.dtype == torch.float32
    assert rel(torch.cat([a, b], 1), whole) < 1e-5
    assert rel(s2, s_whole) < 1e-5
    assert rel(whole, layer_loop(msr, x, "retnet", msr.g_norm.eps)) < 2e-5


@pytest.mark.parametrize("quant", ["int8", "int4"])
def test_quantized_layer_close_to_float64_loop(quant):
    gen = seeded(3000 + len(quant))
    msr = MultiScaleRetention(D, H, quant=quant)
    x = torch.randn(2, 50, D, generator=gen)
    ref = layer_loop(msr, x, "retnet", msr.g_norm.eps)
    err = {m: rel(msr(x, mode=m)[0], ref) for m in ("chunk", "parallel", "recurrent")}
    print(quant, err)
    bound = 0.05 if quant == "int8" else 0.5
    assert all(0 < e < bound for e in err.values()), err  # > 0: the quantized path really ran
    msr.retention_quant = None  # a plain attribute: switching it back gives the float layer
    assert rel(msr(x)[0], ref) < 2e-5


@pytest.mark.parametrize("quant", [None, "int8"])
def test_step_equals_recurrent_form_from_the_same_state(quant):
    """init_cache(state of a chunk prefill) + step per token == the recurrent form run on the
    same tokens one call per token (bit for bit: the decoder is that form's kernel), and close
    to the recurrent form over all of them in one call (whose projections of 9 tokens at once
    may round differently in the last bit, which can flip an int8 code)."""
    gen = seeded(4000 + (quant is None))
    msr = MultiScaleRetention(D, H, quant=quant)
    x = torch.randn(2, 30, D, generator=gen)
    with torch.no_grad():
        _, s = msr(x[:, :21], output_final_state=True)
        cache = msr.init_cache(2, state=s, position=21)
        ys = torch.stack([msr.step(x[:, t], cache) for t in range(21, 30)], 1)
        per_token, s_tok = [], s
        for t in range(21, 30):
            y, s_tok = msr(
                x[:, t : t + 1], state=s_tok, position_offset=t, mode="recurrent", output_final_state=True
            )
            per_token.append(y)
        ref, s_ref = msr(x[:, 21:], state=s, position_offset=21, mode="recurrent", output_final_state=True)
    assert isinstance(cache, RetentionCache) and cache.position == 30
    assert torch.equal(ys, torch.cat(per_token, 1)) and torch.equal(cache.state, s_tok)
    assert rel(ys, ref) < (1e-5 if quant is None else 1e-2) and rel(cache.state, s_ref) < 1e-5
    if quant is None:
        assert rel(ys, msr(x)[0][:, 21:]) < 1e-5  # and, in float, == the chunk form


def test_gradients_reach_every_projection_int8():
    gen = seeded(5000)
    msr = MultiScaleRetention(D, H, quant="int8")
    x = torch.randn(2, 33, D, generator=gen, requires_grad=True)
    y, s = msr(x, output_final_state=True)
    (y.square().sum() + s.sum()).backward()
    for name, p in msr.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert torch.isfinite(x.grad).all()


def test_projection_names_and_decay():
    msr = MultiScaleRetention(32, 4, expand_k=0.5, expand_v=1.5)
    for name in ("q_proj", "k_proj", "v_proj", "g_proj", "o_proj"):
        assert type(getattr(msr, name)) is torch.nn.Linear
    assert (msr.head_k_dim, msr.head_v_dim) == (4, 12)
    gamma = msr.g_gamma.exp()
    assert torch.allclose(gamma, 1 - 2.0 ** (-5 - torch.arange(4.0, dtype=torch.float64)), rtol=0, atol=1e-15)
    assert msr.retention_quant is None


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m: m(torch.randn(2, 5, 7)), r"x must have shape \[B, T, hidden_size=24\]"),
        (lambda m: m(torch.randn(5, 24)), r"x must have shape \[B, T, hidden_size=24\]"),
        (lambda m: m(torch.randn(2, 5, 24), mode="fused"), "mode must be one of"),
        (lambda m: m(torch.randn(2, 5, 24), position_offset=-1), "position_offset must be"),
        (
            lambda m: m(torch.randn(2, 5, 24), state=torch.zeros(2, 3, 8, 8)),
            r"state must have shape \[B, H, K, V\]",
        ),
        (lambda m: m(torch.randn(2, 5, 24), mode="parallel", output_final_state=True), "mode='parallel'"),
        (lambda m: m.init_cache(0), "batch_size must be a positive int"),
        (
            lambda m: m.step(torch.randn(3, 24), m.init_cache(2)),
            r"x must have shape \[B, hidden_size\]=\[2, 24\]",
        ),
        (lambda m: MultiScaleRetention(24, 5), "multiple of num_heads=5"),
        (lambda m: MultiScaleRetention(24, 4, rotary_style="xpos"), "style must be one of"),
        (lambda m: MultiScaleRetention(24, 3, quant="int3"), "quant preset must be one of"),
    ],
)
def test_bad_inputs_say_what_was_expected(call, match):
    with pytest.raises(ValueError, match=match):
        call(MultiScaleRetention(D, H))


def test_rotation_is_relative():
    """q_n . k_m after rotation depends on n - m only, in both styles, for any offset."""
    gen = seeded(6000)
    for style in ("retnet", "rope"):
        rot = RotaryPosition(8, style=style)
        q = torch.randn(1, 1, 1, 8, generator=gen, dtype=torch.float64)
        k = torch.randn(1, 1, 1, 8, generator=gen, dtype=torch.float64)
        dots = []
        for off in (0, 13, 1000):
            qn, _ = rot(q, q, position_offset=off + 5)
            _, km = rot(k, k, position_offset=off + 2)
            dots.append((qn * km).sum().item())
            assert (
                abs(
                    rotate_loop(q.flatten(), off + 5, style) @ rotate_loop(k.flatten(), off + 2, style)
                    - dots[-1]
                )
                < 1e-9
            )
        assert max(dots) - min(dots) < 1e-9, (style, dots)


def test_rms_norm_and_gated_ffn_formulas():
    gen = seeded(7000)
    x = torch.randn(3, 4, 10, generator=gen, dtype=torch.float64)
    norm = RMSNorm(10, eps=1e-3)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(10, generator=gen))
    ref = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-3) * norm.weight.double()
    assert torch.allclose(norm(x), ref, rtol=1e-12, atol=0)
    assert RMSNorm(10, elementwise_affine=False).weight is None
    ffn = GatedFFN(10, 7).double()
    ref = F.linear(
        F.silu(F.linear(x, ffn.gate_proj.weight)) * F.linear(x, ffn.up_proj.weight), ffn.down_proj.weight
    )
    assert torch.allclose(ffn(x), ref, rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match=r"x must have shape \[\.\.\., 10\]"):
        norm(torch.randn(2, 9))


# -- torchscale ------------------------------------------------------------------------------


def torchscale_pair(eps: float):
    """torchscale's layer and ours with the same weights (float64)."""
    pytest.importorskip("torchscale.component.multiscale_retention")
    from torchscale.architecture.config import RetNetConfig
    from torchscale.component.multiscale_retention import MultiScaleRetention as TorchscaleMSR

    args = RetNetConfig(
        decoder_embed_dim=D, decoder_value_embed_dim=2 * D, decoder_retention_heads=H, layernorm_eps=eps
    )
    theirs = TorchscaleMSR(args, D, 2 * D, H).double()
    ours = MultiScaleRetention(D, H, norm_eps=eps, norm_affine=False).double()
    with torch.no_grad():
        for n in "qkvg":
            getattr(ours, f"{n}_proj").weight.copy_(getattr(theirs, f"{n}_proj").weight)
        ours.o_proj.weight.copy_(theirs.out_proj.weight)
    return theirs, ours


def torchscale_rel_pos(T: int, K: int):
    """torchscale's RetNetRelPos (architecture/retnet.py, which needs fairscale to import),
    rebuilt from its formulas: angles, and the decay mask divided by sqrt of its row sums."""
    dt = torch.float64
    angle = (1.0 / (10000 ** torch.linspace(0, 1, K // 2, dtype=dt))).unsqueeze(-1).repeat(1, 2).flatten()
    decay = torch.log(1 - 2 ** (-5 - torch.arange(H, dtype=dt)))
    idx = torch.arange(T, dtype=dt)
    diff = idx[:, None] - idx[None, :]
    mask = torch.where(diff >= 0, torch.exp(diff.clamp(min=0) * decay[:, None, None]), 0.0)
    mask = mask / mask.sum(-1, keepdim=True).sqrt()
    return angle, decay, ((torch.sin(idx[:, None] * angle), torch.cos(idx[:, None] * angle)), mask)


@pytest.mark.parametrize("eps", [0.0, 1e-6])
def test_relation_to_torchscale(eps):
    """With norm eps = 0 torchscale's score normalisations (per-row factors) cancel in the
    per-head RMS norm: same outputs, parallel and recurrent. With eps > 0 they do not cancel."""
    gen = seeded(8000)
    theirs, ours = torchscale_pair(eps)
    T = 21
    x = torch.randn(2, T, D, generator=gen, dtype=torch.float64)
    angle, decay, rel_pos = torchscale_rel_pos(T, D // H)
    seen = []  # torchscale's retention rows as they enter its RMS norm
    theirs.group_norm.register_forward_hook(lambda mod, args, out: seen.append(args[0]))
    with torch.no_grad():
        y_par = theirs(x, rel_pos)
        ms = seen[0].pow(2).mean(-1)
        incremental, outs = {}, []
        for t in range(T):  # torchscale's recurrent decoding, one token at a time
            pos = ((torch.sin(angle * t), torch.cos(angle * t)), decay.exp())
            outs.append(theirs(x[:, t : t + 1], pos, incremental_state=incremental))
        y_rec = torch.cat(outs, 1)
        diffs = {
            m: (ours(x, mode=m)[0] - y_par).abs().max().item() for m in ("chunk", "parallel", "recurrent")
        }
    diffs["torchscale recurrent vs parallel"] = (y_rec - y_par).abs().max().item()
    print(
        f"eps={eps}: max |ours - torchscale| = {diffs}; max |torchscale| = {y_par.abs().max().item():.3g}; "
        f"mean square of its normalised rows: median {ms.median().item():.2g}, min {ms.min().item():.2g}"
    )
    if eps == 0.0:
        # torchscale's RMSNorm computes in float32 (x.float()), hence ~1e-8 and not 1e-15
        assert max(diffs.values()) < 1e-6, diffs
    else:
        # its normalised retention rows are small (mean square down to ~eps), so eps shifts them
        assert ms.min() < 100 * eps and diffs["chunk"] > 1e-4, (diffs, ms.min())
