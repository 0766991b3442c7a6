"""Build (once, JIT with ninja) and load the C++/OpenMP CPU extension; never raises on import.

The sources ship in ``retquant._csrc``. :func:`load_error` compiles them with
``torch.utils.cpp_extension.load`` into a cached directory (``$TORCH_EXTENSIONS_DIR`` if set,
else ``~/.cache/retquant/torch_extensions``) and registers the ``torch.ops.retquant.*`` ops. A
missing compiler or a failed build is not raised: :func:`load_error` returns the cause, which
the ``cpu`` backend reports as its reason to decline (``auto`` then warns once with it and runs
the reference; ``backend="cpu"`` raises it).

Environment: ``RETQUANT_CPU_ISA`` picks the kernels' instruction set, read at each call:
``auto`` (default: the best the CPU has), ``avx512`` (AVX-512 F/BW/VL + VNNI, ``vpdpbusd``;
``vnni`` is accepted as an alias), ``avx2`` (AVX2 + FMA, the sign-trick int8 GEMM) or
``portable`` (plain C++ built for the baseline ISA). Forcing one the CPU lacks raises a
``RuntimeError``; :func:`isa` names the one in use, :func:`cpu_isas` those the CPU can run.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import threading
from importlib import resources

import torch

ISA_ENV = "RETQUANT_CPU_ISA"
# The kernels' ISA codes, as csrc/cpu_isa.h numbers them (the ops take the int), slowest first.
ISA_CODES = {"portable": 0, "avx2": 1, "avx512": 2}
ISA_ALIASES = {"vnni": "avx512"}  # the name before AVX2 existed, kept for compatibility
ISA_CHOICES = ("auto", *ISA_CODES, *ISA_ALIASES)
SOURCES = (
    "ops.cpp",
    "cpu_isa.cpp",
    "chunk_retention.cpp",
    "chunk_portable.cpp",
    "chunk_avx2.cpp",
    "chunk_avx512.cpp",
    "recurrent_step.cpp",
    "recurrent_avx2.cpp",
    "recurrent_avx512.cpp",
    "gemm_portable.cpp",
    "gemm_avx2.cpp",
    "gemm_vnni.cpp",
    "output_alloc.cpp",
    "quantize_rows.cpp",
    "gemm_bench.cpp",
    "decode_bench.cpp",
    "fma_codes_check.cpp",
    "float_chunk.cpp",
    "float_chunk_portable.cpp",
    "float_chunk_avx2.cpp",
    "float_chunk_avx512.cpp",
    "int8_linear.cpp",
    "int8_linear_portable.cpp",
    "int8_linear_avx2.cpp",
    "int8_linear_avx512.cpp",
    "ste_tensor.cpp",
)
# -ffp-contract=off and no fast-math: every float32 operation rounds once, as in the spec.
# -fno-trapping-math only lets GCC assume no code reads floating-point exception flags, so it may
# evaluate both compares of a clamp unconditionally (if-conversion): that is what vectorizes the
# portable path's quantization loops at the baseline ISA ("control flow in loop" otherwise). It
# changes no value: no reassociation, no contraction, NaN and signed zeros still honoured.
CFLAGS = [
    "-O3",
    "-g",
    "-std=c++17",
    "-fopenmp",
    "-ffp-contract=off",
    "-fno-fast-math",
    "-fno-trapping-math",
]

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


def _loaded_libstdcxx() -> str | None:
    """Path of the shared libstdc++ this process has loaded (torch needs it), or None."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                fields = line.split(maxsplit=5)  # the path, the 6th field, may hold spaces
                path = fields[5].strip() if len(fields) == 6 else ""
                if os.path.basename(path).startswith("libstdc++.so"):
                    return path
    except OSError:
        pass
    return None


def _ldflags(cxx: str) -> list[str]:
    """Link flags. A compiler with no shared ``libstdc++.so`` beside it (seen on a GPU image:
    ``CXX=/opt/gcc/bin/g++``) silently links a private static copy of the C++ library into the
    extension; its locale facets then clash with the process's copy and formatting a number in
    an error message segfaults. There, link the libstdc++ this process already runs (so the
    extension uses the same one), or name ``libstdc++.so.6`` for the linker to find."""
    flags = ["-fopenmp"]
    if platform.system() == "Linux":
        try:
            found = subprocess.run(
                [cxx, "-print-file-name=libstdc++.so"], capture_output=True, text=True, timeout=60
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            found = ""
        # GCC prints the bare name when it has no such file, else its path (maybe a dangling link)
        if found and not (os.path.isabs(found) and os.path.exists(found)):
            flags.insert(0, _loaded_libstdcxx() or "-l:libstdc++.so.6")
    return flags


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
        extra_ldflags=_ldflags(cxx),
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


def cpu_isas() -> tuple[str, ...]:
    """The kernel ISAs this CPU can run (CPUID, asked once), slowest first, e.g.
    ``("portable", "avx2")`` on an AVX2-only machine."""
    if "isas" not in _state:  # the CPU does not change
        o = ops()
        has = {"portable": True, "avx2": bool(o.has_avx2()), "avx512": bool(o.has_vnni())}
        _state["isas"] = tuple(name for name in ISA_CODES if has[name])
    return _state["isas"]  # type: ignore[return-value]


def requested_isa() -> str:
    """``RETQUANT_CPU_ISA`` as a canonical name (``auto``, ``portable``, ``avx2``, ``avx512``),
    read at each call; ``ValueError`` for an unknown name. Every kernel family (int8, float,
    quantize) resolves ``auto`` and checks the CPU itself."""
    want = os.environ.get(ISA_ENV, "auto") or "auto"
    if want not in ISA_CHOICES:
        raise ValueError(f"{ISA_ENV} must be one of {ISA_CHOICES}, got {want!r}")
    return ISA_ALIASES.get(want, want)


def isa() -> str:
    """The ISA the next int8 kernel call runs (``RETQUANT_CPU_ISA``): ``portable``, ``avx2`` or
    ``avx512``. Raises ``ValueError`` for an unknown name and ``RuntimeError`` when the variable
    forces an ISA this CPU lacks (never a silent fallback)."""
    name = requested_isa()
    have = cpu_isas()
    if name == "auto":
        return have[-1]
    want = os.environ.get(ISA_ENV)
    if name not in have:
        raise RuntimeError(f"{ISA_ENV}={want} but this CPU cannot run it (it has: {', '.join(have)})")
    return name


def isa_code(name: str | None = None) -> int:
    """The ``isa`` argument of the ``retquant::*`` ops for ``name`` (default: :func:`isa`)."""
    return ISA_CODES[isa() if name is None else ISA_ALIASES.get(name, name)]


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``; else what ``platform`` knows), for the reports
    that must name the machine a figure comes from.

    Example:
        >>> isinstance(cpu_name(), str)
        True
    """
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"
