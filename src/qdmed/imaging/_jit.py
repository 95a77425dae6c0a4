"""Lazily compiled numba kernels for the imaging modules.

Each compiled kernel lives next to its numpy reference. It is built on first use, once per
process even when several Dask worker threads ask for it at the same moment, so importing
qdmed stays fast and a machine without numba still runs the numpy paths; what numba
compiles is cached on disk (:func:`njit_cached`), so later processes load it instead of
compiling it again.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["cache_dir", "generated_module", "lazy_kernel", "njit_cached", "numba_available"]


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


def njit_cached(**options):
    """``numba.njit(cache=True, **options)``: compiled once per machine, then loaded (about
    0.1 s instead of 1-3 s per kernel, in every process: the CLI, each Dask worker). Where
    the cache cannot be written (a read-only install with no user cache directory), numba
    refuses caching at decoration time and the kernel compiles per process instead."""
    from numba import njit

    def decorate(fn):
        try:
            return njit(cache=True, **options)(fn)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            return njit(cache=False, **options)(fn)

    return decorate


def cache_dir() -> Path:
    """Where generated kernel sources (and numba's cache of them) live: ``$QDMED_CACHE_DIR``,
    else ``$XDG_CACHE_HOME/qdmed``, else ``~/.cache/qdmed``."""
    env = os.environ.get("QDMED_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "qdmed"


def generated_module(name: str, source: str):
    """Import generated ``source`` from a file named by its content hash in
    :func:`cache_dir`, so that numba can cache what it compiles from it (numba caches only
    functions defined in files); None when the cache directory is not writable (callers
    then ``exec`` the source and compile per process)."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    path = cache_dir() / f"{name}_{digest}.py"
    try:
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_text(source)
            os.replace(tmp, path)  # atomic: concurrent writers write the same content
        modname = f"qdmed_generated_{name}_{digest}"
        if modname in sys.modules:
            return sys.modules[modname]
        spec = importlib.util.spec_from_file_location(modname, path)
        module = importlib.util.module_from_spec(spec)
        # registered before numba loads a cached kernel: its environment is rebuilt by
        # importing the module by name
        sys.modules[modname] = module
        spec.loader.exec_module(module)
    except OSError:
        return None
    return module
