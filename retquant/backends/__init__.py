# ruff: noqa: I001  (import order matters here, see below)
"""Backends that run the retention ops; importing this package registers the available ones.

Each backend module registers itself and never fails to import: a missing compiler or a missing
triton becomes that backend's reason to decline a call. The registry is imported first so that
the ops modules, which the backends import, can already take ``select_impl`` from here.
"""

from retquant.backends.registry import BACKEND_NAMES, ENV_VAR, register_backend, select_impl

from retquant.backends import cpu, reference, triton  # noqa: F401  (each registers itself)

__all__ = ["BACKEND_NAMES", "ENV_VAR", "register_backend", "select_impl"]
