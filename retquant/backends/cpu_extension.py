"""Build (once, JIT with ninja) and load the C++/OpenMP CPU extension; never raises on import.

The sources ship in ``retquant._csrc``. :func:`load_error` compiles them with
``torch.utils.cpp_extension.load`` into a cached directory (``$TORCH_EXTENSIONS_DIR`` if set,
else ``~/.cache/retquant/torch_extensions``) and registers the ``torch.ops.retquant.*`` ops. A
missing compiler or a failed build is not raised: :func:`load_error` returns the cause, which
the ``cpu`` backend reports as its reason to decline (``auto`` then warns once with it and runs
the reference; ``backend="cpu"`` raises it).

Environment: ``RETQUANT_CPU_ISA`` = ``auto`` (default: AVX-512 VNNI when CPUID has it) or
``portable`` (the baseline-ISA build with the plain C++ integer GEMM) or ``vnni`` (required),
read at each call.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
from importlib import resources

import torch

ISA_ENV = "RETQUANT_CPU_ISA"
ISA_CHOICES = ("auto", "portable", "vnni")
SOURCES = (
    "ops.cpp",
    "chunk_retention.cpp",
    "chunk_portable.cpp",
    "chunk_avx512.cpp",
    "recurrent_step.cpp",
    "recurrent_avx512.cpp",
    "gemm_portable.cpp",
    "gemm_vnni.cpp",
    "output_alloc.cpp",
    "quantize_rows.cpp",
    "gemm_bench.cpp",
    "float_chunk.cpp",
    "float_chunk_portable.cpp",
    "float_chunk_avx2.cpp",
    "float_chunk_avx512.cpp",
)
CFLAGS = ["-O3", "-g", "-std=c++17", "-fopenmp", "-ffp-contract=off", "-fno-fast-math"]

_lock = threading.Lock()
_state: dict[str, object] = {}


def _build_dir() -> str:
    base = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "retquant", "torch_extensions"
    )
    tag = f"py{sys.version_info[0]}{sys.version_info[1]}_torch{torch.__version__.replace('+', '_')}"
    path = os.path.join(base, tag, "retquant_cpu")
    os.makedirs(path, exist_ok=True)
    return path


def _source_dir() -> str:
    return str(resources.files("retquant._csrc"))


def _build() -> None:
    from torch.utils import cpp_extension

    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        raise RuntimeError(f"no C++ compiler found (looked for {cxx!r} on PATH)")
    if not cpp_extension.is_ninja_available():
        raise RuntimeError("ninja is not installed (pip install ninja)")
    src = _source_dir()
    build_dir = _build_dir()
    if not os.path.exists(os.path.join(build_dir, "retquant_cpu.so")):
        print(
            "building the retquant CPU extension... (once; cached in " + build_dir + ")",
            file=sys.stderr,
            flush=True,
        )
    cpp_extension.load(
        name="retquant_cpu",
        sources=[os.path.join(src, s) for s in SOURCES],
        extra_cflags=CFLAGS,
        extra_ldflags=["-fopenmp"],
        build_directory=build_dir,
        is_python_module=False,
        verbose=False,
    )


def load_error() -> str | None:
    """Build/load the extension if not done yet; ``None`` when the ops are ready, else the cause."""
    with _lock:
        if "error" not in _state:
            try:
                _build()
                _state["error"] = None
            except Exception as e:  # noqa: BLE001  (any build failure becomes the reason)
                lines = [ln for ln in str(e).splitlines() if ln.strip()] or [""]
                cause = next((ln for ln in lines if "error" in ln.lower()), lines[0])
                reason = f"the C++ CPU extension could not be built: {type(e).__name__}: {cause}"
                _state["error"] = reason.strip()[:500]
        return _state["error"]  # type: ignore[return-value]


def ops():
    """``torch.ops.retquant`` after a successful :func:`load_error`; raises otherwise."""
    err = load_error()
    if err is not None:
        raise RuntimeError(err)
    return torch.ops.retquant


def use_vnni() -> bool:
    """Whether the next kernel call takes the AVX-512 VNNI path (``RETQUANT_CPU_ISA``)."""
    isa = os.environ.get(ISA_ENV, "auto") or "auto"
    if isa not in ISA_CHOICES:
        raise ValueError(f"{ISA_ENV} must be one of {ISA_CHOICES}, got {isa!r}")
    if "vnni" not in _state:  # the CPU does not change: ask CPUID once
        _state["vnni"] = bool(ops().has_vnni())
    has = _state["vnni"]
    if isa == "vnni" and not has:
        raise RuntimeError(f"{ISA_ENV}=vnni but this CPU has no AVX-512 VNNI")
    return has and isa != "portable"
