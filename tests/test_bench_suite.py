"""The benchmark suite (python -m bench) on a tiny shape: it writes JSON, Markdown and a PNG, every
registered row is present (timed, or skipped with a reason), and every ratio is finite and
positive. Never asserts a speed."""

from __future__ import annotations

import json

import pytest
import torch

from bench.suite import report
from bench.suite.cli import main, parse
from bench.suite.rows import KINDS
from bench.suite.runner import finite_positive
from retquant.backends import cpu_extension

pytestmark = pytest.mark.skipif(cpu_extension.load_error() is not None, reason="CPU extension unavailable")

ARGS = ["--shape", "1,128,2,32,32", "--lm", "32,1,2,64,1", "--repeats", "1", "--no-progress"]
CPU_ROWS = {
    "fwd": 6,  # int8, float path, reference, fp32 whole batch, fp32 per (b, h), bf16 per (b, h)
    "decode": 2,
    "train-op": 3,
    "train-op-int8": 2,
    "layer-fwd": 4,  # ours int8, ours float, torchscale chunk, torchscale parallel
    "gpu-fwd": 3,
    "train-lm": 3,
    "lm-forward": 2,
}


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite")
    threads = torch.get_num_threads()
    try:
        rep = main([*ARGS, "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    return rep, out


def test_writes_json_markdown_png(suite):
    rep, out = suite
    assert json.loads((out / "suite.json").read_text())["groups"] == json.loads(json.dumps(rep["groups"]))
    md = (out / "suite.md").read_text()
    assert "## Headline" in md and rep["machine"]["isa"] in md
    assert (out / "suite.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    m = rep["machine"]
    assert m["threads"] >= 1 and m["cpu"] and m["commit"]["hash"] and m["torch"] == torch.__version__
    assert rep["rates"]["fp32"] > 0
    report.main([str(out / "suite.json")])  # re-rendered from the JSON alone: the same Markdown
    assert (out / "suite.md").read_text() == md


def test_every_row_present_and_every_ratio_finite(suite):
    rep, _ = suite
    seen = {k: 0 for k in KINDS}
    for g in rep["groups"]:
        # a kind whose every peer was skipped (torchscale not installed, say) has no ratio
        measured_peers = {r["kind"] for r in g["rows"] if r["peer"] and not r["skip"]}
        for r in g["rows"]:
            seen[r["kind"]] += 1
            if r["skip"]:
                assert "ms" not in r and r["skip"].strip(), r
                assert not r["skip"].startswith("error"), r
                continue
            assert finite_positive(r["ms"]), r
            if r["kind"] in measured_peers:
                assert finite_positive(r["vs_best_peer"]), r
            else:  # allowed only when the peers' package is missing
                peers = [p for p in g["rows"] if p["peer"] and p["kind"] == r["kind"]]
                assert peers and all("not importable" in p["skip"] for p in peers), peers
                assert r["vs_best_peer"] is None and r["best_peer"] is None, r
            if r.get("roofline") is not None:
                assert finite_positive(r["roofline"]) and finite_positive(r["gops"]), r
            if r.get("rel_l2") is not None:
                assert 0 <= r["rel_l2"] < 0.1, r
    assert seen == CPU_ROWS
    rows = {r["name"]: r for g in rep["groups"] for r in g["rows"]}
    for name in ("int8 C++ kernel (chunk_retention quant=int8, backend=cpu)", "converted int8 forward"):
        assert "ms" in rows[name]
    if not torch.cuda.is_available():
        assert all(r["skip"] == "no CUDA device" for r in rows.values() if r["kind"] == "gpu-fwd")
    if not rep["machine"]["native_bf16"]:
        assert "emulated" in rows["bf16 PyTorch chunk, per (b, h)"]["note"]


@pytest.mark.parametrize(
    "argv, msg",
    [
        (["--shape", "1,100,2,32,32"], "multiple of 64"),
        (["--shape", "1,128,2"], "5 positive integers"),
        (["--lm", "30,1,4,64,1"], "divide"),
        (["--repeats", "0"], ">= 1"),
        (["--quick", "--full"], "not allowed"),
    ],
)
def test_bad_arguments_are_clear_errors(argv, msg, capsys):
    with pytest.raises(SystemExit):
        parse(argv)
    assert msg in capsys.readouterr().err


def test_add_ratios_direction_best_peer_and_roofline():
    """Speed-up = best peer's time / ours (> 1 = faster), against the fastest peer of the same
    kind only; % of peak from the named rate; a mixed row (peak None) gets none."""
    from bench.suite.runner import add_ratios

    def row(name, kind, peer, ms, flops=None, peak=None):
        return {"name": name, "kind": kind, "peer": peer, "ms": ms, "flops": flops, "peak": peak}

    rows = [
        row("ours", "fwd", False, 10.0, flops=2e9, peak="int8"),
        row("slow peer", "fwd", True, 40.0),
        row("fast peer", "fwd", True, 20.0),
        row("mixed", "train", False, 5.0, flops=1e9, peak=None),
        row("train peer", "train", True, 50.0),
    ]
    add_ratios(rows, {"int8": 400.0, "fp32": 100.0})
    assert rows[0]["best_peer"] == "fast peer" and rows[0]["vs_best_peer"] == 2.0
    assert abs(rows[0]["roofline"] - 0.5) < 1e-12  # 2e9 flops in 10 ms = 200 GOP/s of 400
    assert rows[3]["vs_best_peer"] == 10.0 and "roofline" not in rows[3]
