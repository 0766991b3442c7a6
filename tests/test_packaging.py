"""Every Python package on disk is listed in pyproject.toml (the list is explicit)."""

import pathlib

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11


ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_all_packages_listed():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "retquant").rglob("__init__.py")}
    on_disk |= {"retquant.kernels", "retquant._csrc"}
    assert on_disk == listed
    assert cfg["package-dir"] == {"retquant.kernels": "kernels", "retquant._csrc": "csrc"}
