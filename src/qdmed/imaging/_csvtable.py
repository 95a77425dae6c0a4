"""Reading the CSV tables users bring (a pathologist's reads, a TMA map) as text."""

from __future__ import annotations

from qdmed.errors import FileFormatError, InputError


def read_csv_strings(path, what: str = "", columns=()):
    """The CSV table at ``path`` as strings (no NaN conversion: an empty cell is ""),
    checked to hold ``columns``; ``what`` names the table in errors (e.g. "TMA map").

    Raises
    ------
    InputError
        Unreadable file, or a missing column (the columns present named).
    FileFormatError
        Not a CSV table.
    """
    import pandas as pd

    name = f"{what} {path}" if what else str(path)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except OSError as exc:
        raise InputError(f"cannot read {name}: {exc.strerror or exc}") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise FileFormatError(f"{path}: not a CSV table ({exc})") from None
    for col in columns:
        if col not in df.columns:
            raise InputError(f"{name}: no column {col!r}; columns: {list(df.columns)}")
    return df
