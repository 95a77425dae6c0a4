"""Cell outlines as GeoJSON that QuPath imports as cell objects.

QuPath's reader (``qupath.lib.io.PathObjectTypeAdapters``, QuPath >= 0.4) takes from each
Feature: ``id`` (kept only if it is a UUID), ``geometry`` (the cell ROI), a top-level
``nucleusGeometry`` (the nucleus ROI of a cell object), and from ``properties``:
``objectType`` ("cell"), ``name``, ``color``, ``classification`` ({"name", "color"}),
``measurements`` (an object name -> number) and ``metadata`` (an object name -> string); other
properties are ignored. Coordinates are in pixels of the full-resolution image with the
origin at the top-left corner of the top-left pixel.

qdmed writes, per cell: a deterministic UUID (uuid5 of the slide name and the cell id, so a
re-run gives the same ids), ``name`` and ``metadata.cell_id`` = the ``cell_id`` of
cells.parquet (the join key), with regions its ``metadata.region`` (and ``case`` with a TMA
map), the nucleus outline, the cell's and nucleus's areas (named
as QuPath names its own) and the mean of every
component in the compartment where it is scored as measurements, and, once the slide is
scored, its per-cell HER2 category as the classification.

Outlines are traced along the pixel edges of each label and simplified to within 0.4 px
(:func:`qdmed.imaging._outlines.label_outlines`): concave cells are outlined as they are,
and polygon areas are within ~1 % of the pixel counts.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Mapping

import numpy as np

from qdmed.imaging._outlines import label_outlines

__all__ = ["cell_features", "cell_uuid", "metadata_from", "write_feature_collection"]

#: Namespace of the deterministic per-cell UUIDs.
_NAMESPACE = uuid.UUID("5d7c1f7e-3b0e-4f43-9a53-6a1d0c9e2b11")

#: QuPath classification colours (RGB) of the per-cell HER2 categories.
HER2_COLOURS = {"0": [150, 150, 150], "1+": [120, 170, 255], "2+": [255, 190, 60],
                "3+": [230, 40, 40]}


def _measurement_columns(table) -> list[tuple[str, str]]:
    """(QuPath measurement name, table column) pairs kept in the GeoJSON."""
    from qdmed.imaging._scoring import MARKER_COMPARTMENTS

    # QuPath's own names, with its micro sign (U+00B5: GeneralTools.micrometerSymbol), so
    # that they line up with QuPath's measurements and the scripts keyed on them
    cols = [("Cell: Area \u00b5m^2", "cell_area_um2"),
            ("Nucleus: Area \u00b5m^2", "nucleus_area_um2")]
    for col in table.columns:
        if not col.endswith("_cell_mean"):
            continue
        m = col[: -len("_cell_mean")]
        comp = MARKER_COMPARTMENTS.get(m, "cell")
        name = f"{m}_{comp}_mean"
        if name in table.columns:
            cols.append((f"{m}: {comp.capitalize()}: Mean", name))
        if f"{m}_membrane_completeness" in table.columns and comp == "membrane":
            cols.append((f"{m}: Membrane: Completeness", f"{m}_membrane_completeness"))
            # the value the HER2 cut-offs grade (mean of the stained membrane pixels)
            cols.append((f"{m}: Membrane: Stained mean", f"{m}_membrane_stained_mean"))
    return [(q, c) for q, c in cols if c in table.columns]


def cell_features(cells, nuclei, table, local_ids, global_ids, oy: int, ox: int,
                  slide_name: str) -> list[dict]:
    """QuPath cell Features for the rows of ``table`` (local ids ``local_ids`` in the label
    images ``cells`` / ``nuclei`` of a region whose top-left pixel is (``oy``, ``ox``))."""
    local_ids = np.asarray(local_ids, dtype=np.int64)
    global_ids = np.asarray(global_ids, dtype=np.int64)
    cell_rings = label_outlines(cells, local_ids, oy, ox)
    nuc_rings = label_outlines(nuclei, local_ids, oy, ox)
    meas = _measurement_columns(table)
    values = {c: np.asarray(table[c], dtype=np.float64) for _, c in meas}
    feats = []
    for row, (lid, gid) in enumerate(zip(local_ids.tolist(), global_ids.tolist(), strict=True)):
        ring = cell_rings.get(lid)
        if ring is None:
            continue
        m = {q: float(values[c][row]) for q, c in meas if np.isfinite(values[c][row])}
        feat = {"type": "Feature",
                "id": cell_uuid(slide_name, gid),
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {"objectType": "cell", "name": str(gid),
                               "metadata": {"cell_id": str(gid)}, "measurements": m}}
        if lid in nuc_rings:
            feat["nucleusGeometry"] = {"type": "Polygon", "coordinates": [nuc_rings[lid]]}
        feats.append(feat)
    return feats


def cell_uuid(slide_name: str, cell_id: int) -> str:
    """The deterministic UUID of a slide's cell in the GeoJSON (a re-run gives the same)."""
    return str(uuid.uuid5(_NAMESPACE, f"{slide_name}:{int(cell_id)}"))


def write_feature_collection(path, parts: Iterable, classify: Callable | None = None,
                             transform: Callable | None = None) -> None:
    """Stream a FeatureCollection to ``path`` atomically from per-tile feature files (JSON
    arrays), one tile in memory at a time. ``transform(part index, features) -> features``
    edits each file's features first (e.g. gives them their final ids); ``classify(cell_ids)
    -> mapping cell_id -> (name, rgb)`` adds QuPath classifications."""
    from qdmed.report import atomic_open

    with atomic_open(path) as fh:
        fh.write(b'{"type": "FeatureCollection", "features": [')
        first = True
        for i, part in enumerate(parts):
            feats = json.loads(part.read_text())
            if transform is not None:
                feats = transform(i, feats)
            if not feats:
                continue
            if classify is not None:
                classes: Mapping = classify([int(f["properties"]["name"]) for f in feats])
                for f in feats:
                    hit = classes.get(int(f["properties"]["name"]))
                    if hit is not None:
                        f["properties"]["classification"] = {"name": hit[0], "color": hit[1]}
            body = json.dumps(feats)[1:-1].encode()
            fh.write(body if first else b", " + body)
            first = False
        fh.write(b"]}")


def metadata_from(cells, columns=("region", "case")) -> Callable | None:
    """A ``transform`` for :func:`write_feature_collection` that writes the cells' ``region``
    and ``case`` (those of ``columns`` the table holds, by ``cell_id``) in each feature's
    metadata, so that QuPath shows a cell's TMA core and patient; None when the table holds
    neither. A cell outside every region (``""``) or of no case gets no entry."""
    cols = [c for c in columns if c in cells.columns]
    if not cols or not len(cells):
        return None
    import pandas as pd

    ids = cells["cell_id"].to_numpy()
    lookup = {c: pd.Series(cells[c].to_numpy(dtype=object), index=ids) for c in cols}

    def transform(_part, feats):
        keys = [int(f["properties"]["name"]) for f in feats]
        for c in cols:
            for f, v in zip(feats, lookup[c].reindex(keys).tolist(), strict=True):
                if isinstance(v, str) and v:
                    f["properties"].setdefault("metadata", {})[c] = v
        return feats

    return transform


def rectangle_ring(x0: float, y0: float, x1: float, y1: float) -> list:
    """The closed ring of an axis-aligned rectangle, [x, y] pairs (QuPath pixels)."""
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def annotation_feature(ring, name: str, *, classification: str | None = None,
                       color=None, measurements: Mapping | None = None,
                       geometry_extra: Mapping | None = None, **properties) -> dict:
    """A QuPath annotation (``objectType`` "annotation") as a GeoJSON Feature: the Polygon
    ``ring`` in full-resolution pixels, its ``name``, any extra ``properties`` (e.g. a TMA
    core's ``isMissing``), an optional classification (with ``color``) and measurements;
    ``geometry_extra`` adds foreign members to the geometry (QuPath's ``isEllipse``)."""
    props: dict = {"objectType": "annotation", "name": name, **properties}
    if classification is not None:
        props["classification"] = {"name": classification} if color is None else \
            {"name": classification, "color": color}
    if measurements is not None:
        props["measurements"] = dict(measurements)
    return {"type": "Feature",
            "geometry": {"type": "Polygon", **(geometry_extra or {}), "coordinates": [ring]},
            "properties": props}
