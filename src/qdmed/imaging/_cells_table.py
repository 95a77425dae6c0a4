"""Reading a cells table a user names: an analysis folder (its ``cells.parquet``), a
``.parquet`` file, or a CSV / tab-separated export of another tool (QuPath's detection
measurements, inForm's ``cell_seg_data.txt``)."""

from __future__ import annotations

from pathlib import Path

from qdmed.errors import FileFormatError, InputError

#: Suffixes read as text tables, with their separator.
TEXT_TABLES = {".csv": ",", ".tsv": "\t", ".txt": "\t"}


def cells_table_path(path) -> Path:
    """The file a cells table is read from: an analysis folder's ``cells.parquet``, or
    ``path`` itself."""
    p = Path(path)
    return p / "cells.parquet" if p.is_dir() else p


def read_cells_table(path, *, prefix: str = "", whose: str = "an", text: bool = True):
    """``(cells, parquet path or None)`` of ``path``.

    ``prefix`` starts every error message (e.g. ``"control X: "``); ``whose`` names whose
    analysis folder is wanted in them ("a control's"); ``text=False`` refuses text tables
    (only qdmed's own analyses). The path is said as the user wrote it.
    """
    import pandas as pd

    p, said = Path(path), str(path)
    wanted = (f"give {whose} analysis folder or its cells.parquet"
              + (", or a CSV / tab-separated cells table" if text else ""))
    if p.is_dir():
        p = cells_table_path(p)
        if not p.is_file():
            slide = (Path(path) / ".zattrs").is_file() or (Path(path) / "zarr.json").is_file()
            raise InputError(f"{prefix}{said} is " + (
                "a slide (OME-Zarr), not its analysis: analyze it first (qdmed image analyze "
                f"{said} --out FOLDER), then give FOLDER" if slide else
                f"a folder without cells.parquet ({wanted})"))
        said = str(p)
    suffix = p.suffix.lower()
    try:
        if text and suffix in TEXT_TABLES:
            return pd.read_csv(p, sep=TEXT_TABLES[suffix], encoding="utf-8-sig"), None
        return pd.read_parquet(p), p
    except FileNotFoundError as exc:
        raise InputError(f"{prefix}no such file {said!r} ({wanted})") from exc
    except UnicodeDecodeError:
        raise FileFormatError(f"{prefix}{said!r} is not UTF-8 text: save it as UTF-8 (in "
                              "Excel: CSV UTF-8)") from None
    except pd.errors.ParserError as exc:
        raise FileFormatError(f"{prefix}cannot read {said!r} as a cells table: {exc}") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{prefix}cannot read {said!r} as a cells table: "
                         f"{type(exc).__name__}: {exc}") from exc
