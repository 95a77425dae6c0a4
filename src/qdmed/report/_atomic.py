"""Atomic file output: write to a temporary file in the same folder, then rename."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once at import: os.umask is process-wide and not thread-safe


@contextmanager
def atomic_open(path) -> Iterator:
    """Binary file handle whose content replaces ``path`` only if the block completes (a
    temporary file in the same folder, renamed at the end): for outputs written in pieces."""
    p = Path(path)
    if p.is_dir():  # said before anything is written, and by its own name (a review read
        # "error: .../.pan.k1712fru.tmp: Is a directory" when --out named a folder)
        from qdmed.errors import InputError

        raise InputError(f"{p} is a folder: give the path of a file to write, in it or "
                         "elsewhere")
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; outputs are ordinary files
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path, data: bytes) -> Path:
    with atomic_open(path) as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_parquet(path, table) -> Path:
    """Write a pandas DataFrame as Parquet atomically."""
    import io

    buf = io.BytesIO()
    table.to_parquet(buf, index=False)
    return atomic_write_bytes(path, buf.getvalue())
