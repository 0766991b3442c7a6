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
    import concurrent.futures
    import os
    import subprocess
    import sys

    mods = sorted(
        ".".join(p.with_suffix("").relative_to(ROOT).parts).replace(".__init__", "")
        for p in (ROOT / "retquant").rglob("*.py")
    )
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"

    def first_import(m):
        return m, subprocess.run([sys.executable, "-c", code, m], capture_output=True, text=True, cwd=ROOT)

    # one interpreter per module, as many at a time as there are cores (each is mostly `import
    # torch`: one after another they took half of the suite's time)
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        for m, r in pool.map(first_import, mods):
            assert r.returncode == 0, f"import {m} failed:\n{r.stderr[-2000:]}"
