"""The suite's outputs: the headline table (Markdown, printed), ``suite.json``, ``suite.md``
(machine, rates, headline, every row of every shape) and ``suite.png`` (speed-up of each of our
rows over the best peer of its kind and shape, log scale)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from bench.suite.rows import KIND_DOC


def _f(x, fmt, empty="-"):
    return empty if x is None else format(x, fmt)


def machine_line(report: dict) -> str:
    """One line: CPU, kernel ISA (and the ISAs the CPU runs), threads, torch, commit."""
    m, r = report["machine"], report["rates"]
    c = m["commit"]
    dirty = " (dirty)" if c["dirty"] else ""
    int8 = f"{r['int8']:.0f} GOP/s" if r["int8"] else "none (portable)"
    return (
        f"{m['cpu']}; kernel ISA {m['isa']} (CPU runs: {', '.join(m['cpu_isas']) or '-'}); "
        f"{m['threads']} threads; torch {m['torch']}; CUDA: {m['cuda'] or 'none'}; "
        f"measured int8 peak {int8}, fp32 GEMM {r['fp32']:.0f} GFLOP/s; "
        f"commit {c['hash'][:12]}{dirty}; {m['date']}; load average (1 min) at start "
        f"{_load(m, 'load_avg_start')}, at end {_load(m, 'load_avg_end')}"
    )


def _load(m: dict, key: str) -> str:
    return _f((m.get(key) or [None])[0], ".1f")


def headline(report: dict) -> str:
    """Per shape: each of our rows (the slow reference excepted) against the best peer of its
    kind; kinds with no timed row say why (Markdown table)."""
    lines = [
        "| shape | kind | ours | ms | best peer | ms | speed-up | % of peak | memory MiB (ours vs peer) |",
        "|---|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for g in report["groups"]:
        for kind in dict.fromkeys(r["kind"] for r in g["rows"]):
            rows = [r for r in g["rows"] if r["kind"] == kind]
            ours = [r for r in rows if not r["peer"] and "ms" in r and r["backend"] != "reference"]
            peers = [r for r in rows if r["peer"] and "ms" in r]
            if not ours or not peers:
                why = next((r["skip"] for r in rows if r.get("skip")), "no timed row")
                lines.append(f"| {g['label']} | {kind} | skipped: {why} | | | | | | |")
                continue
            p = min(peers, key=lambda r: r["ms"])
            for o in rows:  # one of ours that failed while another ran is listed, not dropped
                if not o["peer"] and "ms" not in o and o.get("skip") and o["backend"] != "reference":
                    lines.append(f"| {g['label']} | {kind} | {o['name']}: skipped: {o['skip']} | | | | | | |")
            for o in ours:
                lines.append(
                    f"| {g['label']} | {kind} | {o['name']} | {o['ms']:.3g} | {p['name']} | {p['ms']:.3g} | "
                    f"**{o['vs_best_peer']:.2f}x** | {_f(o.get('roofline'), '.0%')} | {_memory(o, p)} |"
                )
    return "\n".join(lines)


def _memory(o: dict, p: dict) -> str:
    key, what = ("saved_mib", "saved for bwd") if "saved_mib" in o else ("peak_alloc_mib", "peak alloc")
    return f"{_f(o.get(key), '.1f')} vs {_f(p.get(key), '.1f')} {what}"


def full_table(group: dict) -> str:
    """Every row of one shape, skipped ones with their reason."""
    lines = [
        f"#### {group['label']}",
        "",
        "| row | kind | | backend | ms (median per op) | repeats | vs best peer | GOP/s | % of peak | "
        "peak alloc MiB | saved MiB | rel L2 | note |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in group["rows"]:
        who = "peer" if r["peer"] else "ours"
        if "ms" not in r:
            lines.append(
                f"| {r['name']} | {r['kind']} | {who} | {r['backend']} | skipped: {r['skip']} |"
                " | | | | | | | |"
            )
            continue
        peak = f"{_f(r.get('roofline'), '.1%')} {r['peak']}" if r.get("roofline") else "-"
        lines.append(
            f"| {r['name']} | {r['kind']} | {who} | {r['backend']} | {r['ms']:.3f} | {r['repeats']} | "
            f"{_f(r.get('vs_best_peer'), '.2f')}x | {_f(r.get('gops'), '.1f')} | {peak} | "
            f"{_f(r.get('peak_alloc_mib'), '.2f')} | {_f(r.get('saved_mib'), '.2f')} | "
            f"{_f(r.get('rel_l2'), '.2e')} | {r['note']} |"
        )
    return "\n".join(lines)


def markdown(report: dict) -> str:
    """The whole ``suite.md``."""
    parts = [
        "# retquant benchmark suite",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {machine_line(report)}  ",
        f"{report['repeats']} round-robin repeats per row (fewer where a row says so), medians; "
        f"wall time {report['wall_s']:.0f} s.  ",
        "speed-up = best peer's median / the row's median, same kind and shape, same run; "
        "% of peak = the row's flop model (chunk GEMMs; training 3x forward) per second over the "
        "machine's int8 peak or fp32 GEMM rate (each the higher of its measurements at the start "
        "and the end of the run); memory = peak bytes allocated during one "
        "call (torch profiler) or, for training rows, bytes saved for backward.",
        "",
        "## Headline",
        "",
        headline(report),
        "",
        "## Kinds",
        "",
        *[f"- `{k}`: {v}" for k, v in KIND_DOC.items()],
        "",
        "## Every row",
        "",
    ]
    for g in report["groups"]:
        parts += [full_table(g), ""]
    return "\n".join(parts)


def plot(report: dict, path: Path) -> None:
    """Horizontal bars: our rows' speed-up over the best peer (log scale), one colour per kind."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [
        (f"{g['label']} | {r['name']}", r["vs_best_peer"], r["kind"])
        for g in report["groups"]
        for r in g["rows"]
        if not r["peer"] and r.get("vs_best_peer")
    ]
    kinds = list(dict.fromkeys(k for *_, k in bars))
    colours = {k: f"C{i}" for i, k in enumerate(kinds)}
    fig, ax = plt.subplots(figsize=(13, 1.8 + 0.28 * max(len(bars), 1)))
    y = list(range(len(bars)))
    ax.barh(y, [b[1] for b in bars], color=[colours[b[2]] for b in bars])
    for yi, (_, ratio, _) in zip(y, bars):
        ax.text(ratio, yi, f" {ratio:.2f}x", va="center", fontsize=6)
    ax.set_yticks(y, [b[0] for b in bars], fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xlabel("speed-up over the best peer of the same kind and shape (log scale)")
    ax.set_title(textwrap.fill(machine_line(report), 120), fontsize=7)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[k]) for k in kinds]
    ax.legend(handles, kinds, fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(report: dict, out: Path) -> list[Path]:
    """Write suite.json, suite.md and suite.png under ``out``; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "suite.json", out / "suite.md", out / "suite.png"]
    paths[0].write_text(json.dumps(report, indent=1) + "\n")
    paths[1].write_text(markdown(report) + "\n")
    plot(report, paths[2])
    return paths


def main(argv=None) -> None:
    """``python -m bench.suite.report RESULTS.json``: rewrite the Markdown and the PNG beside a
    suite JSON from its data (no new measurement)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m bench.suite.report", description=main.__doc__)
    ap.add_argument("json", type=Path)
    args = ap.parse_args(argv)
    rep = json.loads(args.json.read_text())
    args.json.with_suffix(".md").write_text(markdown(rep) + "\n")
    plot(rep, args.json.with_suffix(".png"))


if __name__ == "__main__":
    main()
