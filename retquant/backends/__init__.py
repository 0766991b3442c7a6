"""Backends that run the retention ops; importing this package registers the available ones.

Each backend module registers itself and never fails to import: a missing compiler or a missing
triton becomes that backend's reason to decline a call. Backends import the specifications
(:mod:`retquant.spec`), never the ops.
"""

from retquant.backends import cpu, reference, torch_float, triton  # noqa: F401  (each registers itself)
from retquant.backends.registry import BACKEND_NAMES, ENV_VAR, register_backend, select_impl

__all__ = ["BACKEND_NAMES", "ENV_VAR", "register_backend", "select_impl"]
