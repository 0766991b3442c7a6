"""The extension's link rule for compilers without a shared libstdc++ (runs without building the
extension: the rule matters most where the build is broken)."""

from __future__ import annotations

import os
import platform

import pytest

from retquant.backends import cpu_extension

pytestmark = pytest.mark.skipif(platform.system() != "Linux", reason="the libstdc++ link rule is for Linux")


def _fake_cxx(tmp_path, prints: str) -> str:
    cxx = tmp_path / "fake-cxx"
    cxx.write_text(f"#!/bin/sh\necho '{prints}'\n")
    cxx.chmod(0o755)
    return str(cxx)


@pytest.mark.parametrize("prints", ["bare", "dangling", "found"])
def test_link_names_the_shared_libstdcxx_when_the_compiler_cannot_find_it(tmp_path, monkeypatch, prints):
    # a compiler without a libstdc++.so link would link a private static libstdc++ (seen on a
    # GPU image: number formatting in C++ error messages then segfaulted)
    target = {"bare": "libstdc++.so", "dangling": str(tmp_path / "gone.so"), "found": str(tmp_path)}[prints]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "libstdc++.so").write_text("")  # a bare name must not be resolved against the cwd
    flags = cpu_extension._ldflags(_fake_cxx(tmp_path, target))
    loaded = cpu_extension._loaded_libstdcxx()
    explicit = [f for f in flags if "libstdc++" in f]
    if prints == "found":
        assert explicit == [], flags
    else:
        assert explicit == [loaded or "-l:libstdc++.so.6"], flags
    assert "-fopenmp" in flags


def test_the_loaded_libstdcxx_is_found():
    # torch links libstdc++ dynamically, so this process has one mapped
    path = cpu_extension._loaded_libstdcxx()
    assert path is not None and os.path.isabs(path) and os.path.exists(path), path
