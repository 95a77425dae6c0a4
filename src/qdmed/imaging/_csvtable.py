"""Reading the CSV tables users bring (a pathologist's reads, a TMA map) as text."""

from __future__ import annotations

import csv

from qdmed.errors import FileFormatError, InputError


def read_csv_strings(path, what: str = "", columns=()):
    """The CSV table at ``path`` as strings (no NaN conversion: an empty cell is ""),
    checked to hold ``columns``; ``what`` names the table in errors (e.g. "TMA map").

    ``df.attrs["lines"]`` gives each row's line in the file (blank lines are skipped).
    Rows are checked against the header first (Python's csv module): a row with more
    fields than the header, or a repeated column name, is refused, where pandas would
    silently take the first column for an index or rename the repeat.

    Raises
    ------
    InputError
        Unreadable file, or a missing column (the columns present named).
    FileFormatError
        Not a CSV table, a repeated column name, or a row longer than the header (its line
        named).
    """
    import pandas as pd

    name = f"{what} {path}" if what else str(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            rows, ends = [], []
            for row in reader:
                rows.append(row)
                ends.append(reader.line_num)  # the file line each row ends on
    except OSError as exc:
        raise InputError(f"cannot read {name}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        # Excel's plain "CSV" on a European Windows is Windows-1252 (a review)
        raise FileFormatError(f"{name}: not UTF-8 text: save it as CSV UTF-8 (in Excel: "
                              "Save As, 'CSV UTF-8 (Comma delimited)')") from None
    except csv.Error as exc:
        raise FileFormatError(f"{name}: not a CSV table ({exc})") from None
    if not rows or not any(cell.strip() for cell in rows[0]):
        raise FileFormatError(f"{name}: not a CSV table (no header line)")
    header = [c.strip() for c in rows[0]]
    if [c.lower() for c in header[:1]] == ["sep="]:  # Excel's "sep=," first line
        raise FileFormatError(f"{name}: its first line is Excel's 'sep=' line: remove it, "
                              "so that the column names come first")
    sep = next((s for s in (";", "\t") if len(header) == 1 and s in header[0]), None)
    if sep is not None:  # European Excel writes ';', QuPath exports tabs (a review)
        raise FileFormatError(
            f"{name}: its fields are separated by {'semicolons' if sep == ';' else 'tabs'}, "
            f"not commas (header {header[0]!r}): save it as CSV UTF-8 with commas"
            + (" (a decimal comma, 90,5, is then written 90.5)" if sep == ";" else ""))
    if header[0].lstrip().startswith(("{", "[")):
        raise FileFormatError(f"{name}: not a CSV table (it reads as JSON: a GeoJSON or "
                              f"JSON file given where a CSV table with columns "
                              f"{', '.join(columns) or '...'} is expected)")
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        raise FileFormatError(f"{name}: column(s) {repeated} appear more than once")
    for line, row in zip(ends[1:], rows[1:], strict=True):
        if len(row) > len(header):
            raise FileFormatError(f"{name}, line {line}: {len(row)} fields for the "
                                  f"{len(header)} columns of the header {_short(header)} (a value "
                                  f"holding a comma, as inForm field names do, must be "
                                  f"quoted: \"a,b\")")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, index_col=False,
                         encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise FileFormatError(f"{name}: not a CSV table ({exc})") from None
    df.columns = header
    # each row's line in the file (pandas skips blank lines, so the index does not say)
    lines = [n for n, row in zip(ends[1:], rows[1:], strict=True) if row]
    df.attrs["lines"] = lines if len(lines) == len(df) else list(range(2, len(df) + 2))
    for col in columns:
        if col not in df.columns:
            raise InputError(f"{name}: no column {col!r}; columns: {_short(list(df.columns))}")
    return df


def _short(names: list, most: int = 8, width: int = 40) -> str:
    """A header for an error line: at most `most` names of at most `width` characters."""
    shown = [n if len(n) <= width else n[: width - 3] + "..." for n in map(str, names[:most])]
    more = f", ... ({len(names)} columns)" if len(names) > most else ""
    return "[" + ", ".join(repr(n) for n in shown) + more + "]"
