"""``qdmed demo``: run the main jobs on built-in example data and write an HTML report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def demo(
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("qdmed-demo"),
    json_: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    quick: Annotated[bool, typer.Option("--quick", help="Smaller imaging field (for tests).")] = False,
):
    """Run the built-in demo and write qdmed-demo/report.html."""
    from qdmed.cli._output import print_json
    from qdmed.demo import run_demo

    summary = run_demo(out, quick=quick)
    if json_:
        return print_json(summary)
    typer.echo(f"report written to {summary['report']}")
