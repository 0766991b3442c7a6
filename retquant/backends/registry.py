"""Backend selection: explicit choice, environment override, or the device's preferred backend.

``backend=`` (or ``RETQUANT_BACKEND``) is one of ``auto``, ``reference``, ``cpu``, ``triton``.
A backend asked for by name that cannot run the call is an error; the preferred backend of
``auto`` that cannot run it gives one warning (per reason) and the PyTorch reference runs.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from retquant.validate import RetentionCall

BACKEND_NAMES = ("auto", "reference", "cpu", "triton")
ENV_VAR = "RETQUANT_BACKEND"
OPS = ("chunk", "fused_recurrent", "parallel")

Impl = Callable[[RetentionCall], tuple]


@dataclass(frozen=True)
class Backend:
    """A way to run retention ops.

    ``unsupported(op, call)`` returns ``None`` when ``impls[op]`` can run the call, else the
    reason in words (missing compiler, no GPU, configuration the kernel does not implement...).
    ``checks_finite``: the impls raise ``validate.nonfinite_error`` themselves (their kernels flag
    inf/NaN inputs while reading them); otherwise :func:`select_impl` checks before returning.
    """

    name: str
    impls: dict[str, Impl]
    unsupported: Callable[[str, RetentionCall], str | None]
    checks_finite: bool = False


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
    chosen = _REGISTRY[_select_name(op, call, backend)]
    if not chosen.checks_finite:
        call.check_finite()
    return chosen.impls[op]


def _select_name(op: str, call: RetentionCall, backend: str | None) -> str:
    name = requested_backend(backend)
    if name != "auto":
        reason = _why_not(name, op, call)
        if reason is not None:
            raise RuntimeError(
                f"backend {name!r} was requested for {op}_retention but cannot run it: {reason}"
            )
        return name
    if call.quant is not None:
        preferred = "triton" if call.q.device.type == "cuda" else "cpu"
        reason = _why_not(preferred, op, call)
        if reason is None:
            return preferred
        if (preferred, reason) not in _WARNED:
            _WARNED.add((preferred, reason))
            warnings.warn(
                f"retquant: preferred backend {preferred!r} unavailable for {op}_retention "
                f"({reason}); running the PyTorch reference",
                RuntimeWarning,
                stacklevel=5,  # _select_name, _select, select_impl, the op, its caller
            )
    return "reference"
