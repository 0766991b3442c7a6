"""Backends that run the retention ops; importing this package registers the available ones."""

from retquant.backends import (
    reference,  # noqa: F401  (registers itself)
    triton,  # noqa: F401  (registers itself; never fails to import)
)
from retquant.backends.registry import BACKEND_NAMES, ENV_VAR, register_backend, select_impl

__all__ = ["BACKEND_NAMES", "ENV_VAR", "register_backend", "select_impl"]
