"""Write the study's results: ``study.json``, ``study.md`` (tables) and PNG plots.

Everything here reads the results dict that :func:`retquant.study.runner.run_study` builds; no
number is computed twice, so the JSON, the tables and the plots always agree.

Example:
    >>> write_all(results, Path("results"))  # doctest: +SKIP
    ['results/study.json', 'results/study.md', ...]
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

PLOTS = {
    "perplexity": "study_perplexity.png",
    "op_error": "study_op_error.png",
    "ptq_vs_qat": "study_ptq_vs_qat.png",
    "decode": "study_decode_error.png",
}
FAMILY_COLORS = {
    "fp32": "black",
    "fp32-ft": "dimgray",
    "ptq-linear": "tab:blue",
    "ptq-w4": "tab:cyan",
    "ret": "tab:green",
    "ret-gran": "tab:olive",
    "ret-smooth": "tab:purple",
    "ret-hadamard": "tab:pink",
    "qat-init": "tab:gray",
    "qat": "tab:red",
}


def _fmt_pct(x: float) -> str:
    return f"{x:+.2f} %"


def strategy_table(rows: list[dict]) -> str:
    """The Markdown table of the strategies (one row each)."""
    head = (
        "| # | strategy | family | projections | retention | what it varies "
        "| val ppl | bits/byte | Δ ppl vs fp32 (± paired s.e.) |\n"
        "|---|---|---|---|---|---|---:|---:|---:|\n"
    )
    body = "".join(
        f"| {i} | {r['name']} | {r['family']} | {r['linears']} | {r['retention']} | {r['what']} | "
        f"{r['ppl']:.4f} | {r['bpb']:.4f} | {_fmt_pct(r['delta_ppl_pct'])} ± {r['delta_ppl_se_pct']:.2f} |\n"
        for i, r in enumerate(rows)
    )
    return head + body


def op_error_table(rows: list[dict]) -> str:
    """Mean (over layers) relative L2 / cosine of the whole output per bits x granularity."""
    acc = defaultdict(list)
    for r in rows:
        if r["head"] == "all":
            acc[(r["bits"], r["granularity"])].append((r["rel_l2"], r["cosine"]))
    out = "| bits | granularity | rel L2 | cosine |\n|---:|---|---:|---:|\n"
    for (b, g), v in acc.items():
        out += f"| {b} | {g} | {sum(x for x, _ in v) / len(v):.3e} | {sum(c for _, c in v) / len(v):.6f} |\n"
    return out


def decode_table(rows: list[dict]) -> str:
    """Mean (over layers) relative L2 of the decoder's outputs per bucket of generated tokens."""
    acc = defaultdict(list)
    for r in rows:
        acc[(r["quant"], r["tok_lo"], r["tok_hi"])].append(r["rel_l2"])
    quants = sorted({q for q, _, _ in acc})
    spans = sorted({(lo, hi) for _, lo, hi in acc})
    out = "| tokens generated | " + " | ".join(f"{q} rel L2" for q in quants) + " |\n"
    out += "|---|" + "---:|" * len(quants) + "\n"
    for lo, hi in spans:
        cells = " | ".join(f"{sum(acc[(q, lo, hi)]) / len(acc[(q, lo, hi)]):.3e}" for q in quants)
        out += f"| {lo + 1}–{hi} | {cells} |\n"
    return out


def markdown(results: dict) -> str:
    """The whole ``study.md``: provenance, the strategy table, the op-level tables."""
    m, d, t = results["meta"], results["data"], results["train"]
    fp = results["strategies"][0]
    mc = results["config"]["model"]
    trained = "cached checkpoint" if t["cached"] else f"{t['seconds']:.0f} s"
    lines = [
        f"# retquant study ({m['mode']} mode)",
        "",
        f"Command: `{m['command']}` — commit `{m['commit']}`{' (dirty tree)' if m['dirty'] else ''}, "
        f"{m['cpu']}, ISA {m['isa']}, {m['threads']} threads, torch {m['torch']}, "
        f"{m['seconds_total']:.0f} s in all.",
        "",
        f"Model: RetNet LM d={mc['hidden_size']}, {mc['num_layers']} layers, {mc['num_heads']} heads, "
        f"byte vocabulary; trained {results['config']['train']['steps']} steps "
        f"(fp32, {trained}). Data: "
        f"{d['source']}, byte tokenizer, split by work: train {d['bytes']['train']:,} B "
        f"({len(d['works']['train'])} works), validation {d['bytes']['validation']:,} B "
        f"({len(d['works']['validation'])}), test {d['bytes']['test']:,} B ({len(d['works']['test'])}). "
        f"Evaluated on {results['eval']['tokens']:,} validation bytes "
        f"({results['eval']['windows']} windows of {results['eval']['seq_len']}).",
        "",
        f"FP32 validation perplexity {fp['ppl']:.4f} ({fp['bpb']:.4f} bits/byte).",
        "",
        "## Perplexity per strategy",
        "",
        strategy_table(results["strategies"]),
        "## Op-level error (quantized chunk retention vs float64, captured q, k, v)",
        "",
        op_error_table(results["op_sweep"]),
        "## Recurrent decode error vs tokens generated",
        "",
        decode_table(results["decode"]),
    ]
    return "\n".join(lines)


def _plot_perplexity(results, path, plt):
    rows = results["strategies"][1:]
    fig, ax = plt.subplots(figsize=(9, 0.26 * len(rows) + 1.5))
    y = range(len(rows))
    ax.barh(list(y), [r["delta_ppl_pct"] for r in rows], color=[FAMILY_COLORS[r["family"]] for r in rows])
    ax.set_yticks(list(y), [r["name"] for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("symlog", linthresh=1.0)
    for x, style in ((1, "--"), (3, ":")):
        ax.axvline(x, color="gray", ls=style, lw=1, label=f"+{x} %")
    ax.set_xlabel("validation perplexity vs fp32 (%, symlog)")
    ax.set_title(f"perplexity per strategy (fp32 = {results['strategies'][0]['ppl']:.3f})")
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_op_error(results, path, plt):
    rows = results["op_sweep"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    acc = defaultdict(list)
    for r in rows:
        if r["head"] == "all":
            acc[(r["granularity"], r["bits"])].append(r["rel_l2"])
    for g in dict.fromkeys(g for g, _ in acc):
        bits = sorted(b for gg, b in acc if gg == g)
        a1.plot(bits, [sum(acc[(g, b)]) / len(acc[(g, b)]) for b in bits], marker="o", label=g)
    a1.set_yscale("log")
    a1.set_xlabel("bits")
    a1.set_ylabel("rel L2 vs float64 (mean over layers)")
    a1.set_title("op error vs bits, per granularity")
    a1.legend(fontsize=7)
    # per head (decay) and position: the lowest bit width, natural granularities
    low = min(r["bits"] for r in rows)
    per = defaultdict(list)
    for r in rows:
        if r["head"] != "all" and r["bits"] == low and r["granularity"] == "q,k token":
            per[(r["head"], r["gamma"])].append(((r["pos_lo"] + r["pos_hi"]) / 2, r["rel_l2"]))
    for (h, gamma), pts in sorted(per.items()):
        pos = defaultdict(list)
        for p, e in pts:
            pos[p].append(e)
        xs = sorted(pos)
        a2.plot(xs, [sum(pos[x]) / len(pos[x]) for x in xs], marker="o", label=f"head {h} (γ={gamma:.4f})")
    a2.set_yscale("log")
    a2.set_xlabel("position in the sequence (bucket centre)")
    a2.set_title(f"int{low} (natural granularities): error per head and position")
    a2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_ptq_vs_qat(results, path, plt):
    rows = [r for r in results["strategies"] if r["family"] in ("qat", "qat-init")]
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(1, len(settings), figsize=(5 * len(settings), 3.6), squeeze=False)
    for ax, setting in zip(axes[0], settings):
        for j, fam in enumerate(("qat-init", "qat")):
            vals = [
                next(
                    r["delta_ppl_pct"]
                    for r in rows
                    if r["setting"] == setting and r["method"] == m and r["family"] == fam
                )
                for m in methods
            ]
            xs = [i + (j - 0.5) * 0.38 for i in range(len(methods))]
            label = "PTQ (ranges at init)" if fam == "qat-init" else "QAT (fine-tuned)"
            ax.bar(xs, vals, width=0.38, color=FAMILY_COLORS[fam], label=label)
        control = [r for r in results["strategies"] if r["family"] == "fp32-ft"]
        if control:
            ax.axhline(control[0]["delta_ppl_pct"], color="black", lw=1, label="fp32, same fine-tune")
        ax.set_xticks(range(len(methods)), methods)
        ax.axhline(3, color="gray", ls=":", lw=1)
        ax.set_yscale("symlog", linthresh=1.0)
        # symlog autoscaling clips bars; set the limits from the data (and the 3 % line)
        shown = [r["delta_ppl_pct"] for r in rows if r["setting"] == setting]
        shown += [c["delta_ppl_pct"] for c in control] + [3.0]
        ax.set_ylim(min(shown) - 0.5 * abs(min(shown)) - 0.1, 1.5 * max(shown))
        ax.set_title(setting)
        ax.set_ylabel("val perplexity vs fp32 (%)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_decode(results, path, plt):
    fig, ax = plt.subplots(figsize=(6, 4))
    series = defaultdict(list)
    for r in results["decode"]:
        series[(r["layer"], r["quant"])].append((r["tok_hi"], r["rel_l2"]))
    for (layer, q), pts in sorted(series.items()):
        pts.sort()
        ax.plot([p for p, _ in pts], [e for _, e in pts], marker="o", label=f"{q} {layer}")
    ax.set_yscale("log")
    ax.set_xlabel("tokens generated (bucket end)")
    ax.set_ylabel("rel L2 of decoder output vs float64")
    ax.set_title("recurrent decode error vs tokens generated")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_all(results: dict, out_dir: Path | str) -> list[str]:
    """Write ``study.json``, ``study.md`` and the PNG plots into ``out_dir``; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "study.json", out / "study.md"]
    paths[0].write_text(json.dumps(results, indent=1) + "\n")
    paths[1].write_text(markdown(results))
    for key, draw in (
        ("perplexity", _plot_perplexity),
        ("op_error", _plot_op_error),
        ("ptq_vs_qat", _plot_ptq_vs_qat),
        ("decode", _plot_decode),
    ):
        paths.append(out / PLOTS[key])
        draw(results, paths[-1], plt)
    return [str(p) for p in paths]
