"""Backends that run the retention ops; importing this package registers the available ones."""

from retquant.backends import cpu, reference  # noqa: F401  (each registers itself)
from retquant.backends.registry import BACKEND_NAMES, ENV_VAR, register_backend, select_impl

__all__ = ["BACKEND_NAMES", "ENV_VAR", "register_backend", "select_impl"]
