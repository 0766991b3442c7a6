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


def test_every_module_imports_first_in_a_fresh_interpreter():
    """No import cycle depends on which module a user imports first."""
    import subprocess
    import sys

    mods = sorted(
        ".".join(p.with_suffix("").relative_to(ROOT).parts).replace(".__init__", "")
        for p in (ROOT / "retquant").rglob("*.py")
    )
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    for m in mods:
        r = subprocess.run([sys.executable, "-c", code, m], capture_output=True, text=True, cwd=ROOT)
        assert r.returncode == 0, f"import {m} failed:\n{r.stderr[-2000:]}"
