"""Lazily compiled numba kernels for the imaging modules.

Each compiled kernel lives next to its numpy reference; it is compiled on first use (a
second or two per kernel), once per process even when several Dask worker threads ask for
it at the same moment, so importing qdmed stays fast and a machine without numba still runs
the numpy paths.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

__all__ = ["lazy_kernel", "numba_available"]


def numba_available() -> bool:
    """Whether numba imports (it is a dependency; the numpy paths serve without it)."""
    try:
        import numba  # noqa: F401
    except ImportError:  # pragma: no cover - numba is a dependency
        return False
    return True


class lazy_kernel:  # noqa: N801 - used as a decorator
    """Decorate a builder (a function returning the compiled kernel, or a tuple of them);
    calling the decorated name builds once, under a lock, and returns the cached result."""

    def __init__(self, build: Callable[[], Any]):
        self._build = build
        self._lock = threading.Lock()
        self._value: Any = None
        self.__doc__ = build.__doc__
        self.__name__ = getattr(build, "__name__", "kernel")

    def __call__(self) -> Any:
        with self._lock:
            if self._value is None:
                self._value = self._build()
            return self._value
