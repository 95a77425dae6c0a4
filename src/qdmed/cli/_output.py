"""Printing helpers shared by CLI commands: JSON (sorted keys) to stdout, rich tables,
warnings; and :func:`flag`, the boolean option as every command declares it."""

from __future__ import annotations

import json
import os

from qdmed.report._json import to_jsonable

#: Table width when the output is not a terminal (and COLUMNS is not set).
WIDTH_WHEN_PIPED = 200


def print_json(obj) -> None:
    print(json.dumps(to_jsonable(obj), indent=2, sort_keys=True))


def print_json_warned(obj: dict, warnings) -> None:
    """A command's JSON with its warnings: each printed to stderr as without ``--json``
    (:func:`print_warning`) and listed under the JSON's top-level ``"warnings"``, so that a
    script reading ``d["warnings"]`` sees the warnings of every command alike."""
    warnings = list(warnings)
    for w in warnings:
        print_warning(w)
    print_json({**obj, "warnings": warnings})


def flag(*decls: str, help: str):  # noqa: A002 - typer's own parameter name
    """A boolean option (``--json``, ``--per-region/--no-per-region``): Typer's help would
    show a ``<bool>`` value beside it, which a flag does not take (empty metavar)."""
    import typer

    return typer.Option(*decls, metavar="", help=help)


#: The warnings said in this run (reset by ``qdmed.cli.main``): each is said once (a
#: probe outside its sizing curve's range said the same line five times).
SAID: set[str] = set()


def print_warning(text: str) -> None:
    """A warning as one line ``! text`` on stderr (yellow on a terminal), so that a table or
    JSON on stdout stays clean when redirected and the warning is still seen; a line said
    before in this run is not said again."""
    import typer

    if text in SAID:
        return
    SAID.add(text)
    typer.secho(f"! {text}", fg="yellow", err=True)


def print_table(title: str, rows: list[dict], columns: list[str] | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    cols = columns or (list(rows[0]) if rows else [])
    t = Table(title=title)
    for c in cols:
        t.add_column(c)
    for r in rows:
        t.add_row(*[_cell(r.get(c, "")) for c in cols])
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        # piped or redirected (a log, a notebook cell): rich's 80 columns would cut names
        # short ('case1_...' for two different files); a wide table wraps instead
        console = Console(width=WIDTH_WHEN_PIPED)
    console.print(t)


def print_kv(title: str, data: dict) -> None:
    print_table(title, [{"quantity": k, "value": v} for k, v in data.items()])


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list | tuple):
        return ", ".join(_cell(x) for x in v)
    return "" if v is None else str(v)
