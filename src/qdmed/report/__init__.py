"""Reports: render results (their ``to_dict()`` and ``plot()``) into self-contained HTML,
and write every output file atomically."""

from qdmed.report._atomic import (
    atomic_open,
    atomic_write_bytes,
    atomic_write_parquet,
    atomic_write_text,
)
from qdmed.report._environment import environment
from qdmed.report._html import (
    HtmlReport,
    dict_to_html_table,
    figure_png,
    figure_to_html,
    records_to_html_table,
)
from qdmed.report._json import to_jsonable

__all__ = [
    "HtmlReport", "atomic_open", "environment", "atomic_write_bytes", "atomic_write_parquet", "atomic_write_text",
    "dict_to_html_table", "figure_png", "figure_to_html", "records_to_html_table", "to_jsonable",
]
