"""Backend selection: explicit choice, environment override, or the device's preferred backend.

``backend=`` (or ``RETQUANT_BACKEND``) is one of ``auto``, ``reference``, ``torch``, ``cpu``,
``triton``. A backend asked for by name that cannot run the call is an error. ``auto``:

- quantized calls: ``triton`` for CUDA tensors, ``cpu`` for CPU tensors; when the preferred one
  cannot run the call, one warning (per reason) and the reference (the exact integer spec);
- float calls (``quant=None``): float64 inputs run the reference (the float64 spec); others the
  ``cpu`` float kernel for CPU tensors when it can run them, else the ``torch`` backend (fast
  batched PyTorch, any device), with one warning when the preferred one is unavailable.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from retquant.validate import RetentionCall

BACKEND_NAMES = ("auto", "reference", "torch", "cpu", "triton")
ENV_VAR = "RETQUANT_BACKEND"
OPS = ("chunk", "fused_recurrent", "parallel")

Impl = Callable[[RetentionCall], tuple]


@dataclass(frozen=True)
class Backend:
    """A way to run retention ops.

    ``unsupported(op, call)`` returns ``None`` when ``impls[op]`` can run the call, else the
    reason in words (missing compiler, no GPU, configuration the kernel does not implement...).
    ``float_path``: it runs float calls too (``auto`` then prefers it for them).
    ``checks_finite``: the impls raise the errors of ``validate.check_quant_inputs`` themselves
    (the kernels flag bad inputs while reading them, the integer specs check them first);
    otherwise :func:`select` checks before returning.
    """

    name: str
    impls: dict[str, Impl]
    unsupported: Callable[[str, RetentionCall], str | None]
    checks_finite: bool = False
    float_path: bool = False  # implements quant=None calls (preferred for them under auto)


def int8_kernel_reason(name: str, ops, op: str, call: RetentionCall, dtypes) -> str | None:
    """The checks every int8 kernel backend makes first: ``op`` among its ``ops``, a quantized
    call with the default int8 configuration, q's dtype among ``dtypes``. ``None`` or why not."""
    if op not in ops:
        return f"the {name} backend implements {tuple(sorted(ops))} only, not {op!r}"
    if call.quant is None:
        return f"the {name} backend runs quantized calls only (quant=None is the float path)"
    if not call.quant.is_default_int8():
        return f"the {name} kernels implement the default int8 configuration only"
    if call.q.dtype not in dtypes:
        names = "/".join(str(d).removeprefix("torch.") for d in dtypes)
        return f"the {name} kernels take {names} inputs, got {call.q.dtype}"
    return None


_REGISTRY: dict[str, Backend] = {}
_WARNED: set[tuple[str, str]] = set()


def register_backend(backend: Backend) -> None:
    if backend.name not in BACKEND_NAMES or backend.name == "auto":
        raise ValueError(f"backend name must be one of {BACKEND_NAMES[1:]}, got {backend.name!r}")
    _REGISTRY[backend.name] = backend


def requested_backend(backend: str | None) -> str:
    """The backend name from the argument, else ``RETQUANT_BACKEND``, else ``auto``."""
    source = "backend"
    if backend is None:
        backend, source = os.environ.get(ENV_VAR, "auto") or "auto", ENV_VAR
    if not isinstance(backend, str) or backend not in BACKEND_NAMES:
        raise ValueError(f"{source} must be one of {BACKEND_NAMES}, got {backend!r}")
    return backend


def _why_not(name: str, op: str, call: RetentionCall) -> str | None:
    b = _REGISTRY.get(name)
    if b is None:
        return f"the {name!r} backend is not part of this build of retquant"
    return b.unsupported(op, call)


def select(op: str, call: RetentionCall, backend: str | None) -> tuple[str, Impl]:
    """``(name, impl)`` of the backend that runs ``call`` (inputs checked finite for it).

    Example:
        >>> from retquant.validate import validate_call
        >>> q = k = v = torch.randn(1, 8, 2, 4, dtype=torch.float64)
        >>> select("chunk", validate_call(q, k, v), "auto")[0]
        'reference'
    """
    name = _select_name(op, call, backend)
    chosen = _REGISTRY[name]
    if not chosen.checks_finite:
        call.check_finite()
    return name, chosen.impls[op]


def select_impl(op: str, call: RetentionCall, backend: str | None) -> Impl:
    """The implementation of ``op`` that runs ``call`` (inputs checked finite for it).

    Host-side logic (environment, build state, warnings): under torch.compile it runs eagerly and
    the implementation it returns is traced (each backend's kernels are custom ops with fake
    impls). The eager wrapper is made on first use under compile, so importing retquant does not
    import torch._dynamo (nor, through it, triton before TRITON_INTERPRET is set).
    """
    if torch.compiler.is_compiling():
        return _eager_select()(op, call, backend)
    return _select(op, call, backend)


@functools.cache
def _eager_select():
    return torch.compiler.disable(_select)


def _select(op: str, call: RetentionCall, backend: str | None) -> Impl:
    return select(op, call, backend)[1]


def _user_stacklevel() -> int:
    """stacklevel of the first frame outside retquant and torch: a warning then points at the
    user's call however many layers (ops, custom op dispatch, selection) lie in between."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the retquant package
    torch_dir = os.path.dirname(os.path.abspath(torch.__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        if not (
            path.startswith(here) or path.startswith(torch_dir) or frame.f_code.co_filename.startswith("<")
        ):
            return level
        frame, level = frame.f_back, level + 1
    return 1


def _warn_once(preferred: str, fallback: str, op: str, reason: str) -> None:
    if (preferred, reason) in _WARNED:
        return
    _WARNED.add((preferred, reason))
    warnings.warn(
        f"retquant: preferred backend {preferred!r} unavailable for {op}_retention ({reason}); "
        f"running the {fallback} backend",
        RuntimeWarning,
        stacklevel=_user_stacklevel(),
    )


def _select_name(op: str, call: RetentionCall, backend: str | None) -> str:
    name = requested_backend(backend)
    if name != "auto":
        reason = _why_not(name, op, call)
        if reason is not None:
            raise RuntimeError(
                f"backend {name!r} was requested for {op}_retention but cannot run it: {reason}"
            )
        return name
    if call.quant is None:
        if call.q.dtype == torch.float64:
            return "reference"
        cpu = _REGISTRY.get("cpu")
        if call.q.device.type != "cpu" or cpu is None or not cpu.float_path:
            return "torch"
        preferred, fallback = "cpu", "torch"
    else:
        preferred = "triton" if call.q.device.type == "cuda" else "cpu"
        fallback = "reference"
    reason = _why_not(preferred, op, call)
    if reason is None:
        return preferred
    _warn_once(preferred, fallback, op, reason)
    return fallback
