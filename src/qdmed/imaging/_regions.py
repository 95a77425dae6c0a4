"""Annotated regions (e.g. invasive tumour drawn by a pathologist in QuPath) to select cells.

ASCO/CAP HER2 percentages are percentages of invasive tumour cells (Wolff et al. 2018); on a
whole slide, stroma, immune cells and in-situ components would dilute them. QuPath exports
annotations as GeoJSON (File > Export objects as GeoJSON): Features whose geometry is a
Polygon or MultiPolygon in full-resolution pixel coordinates, origin at the top-left corner
of the top-left pixel, optionally with ``properties.classification.name`` (e.g. "Tumor").
A cell belongs to the regions when its centroid lies inside a polygon and outside its holes.

References
----------
.. [1] Wolff AC et al., J Clin Oncol 36, 2105-2122 (2018). doi:10.1200/JCO.2018.77.8738
.. [2] IETF RFC 7946, The GeoJSON Format (2016), section 3.1.6. doi:10.17487/RFC7946
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qdmed.errors import FileFormatError, InputError

__all__ = ["Regions", "read_regions"]


@dataclass(frozen=True)
class Regions:
    """Polygons (exterior ring plus holes, each an (n, 2) array of x, y in QuPath pixel
    coordinates) read from a GeoJSON file."""

    source: str
    polygons: tuple
    classes: tuple

    def contains(self, x, y) -> np.ndarray:
        """Boolean per point: inside some polygon and outside its holes (QuPath x, y)."""
        from matplotlib.path import Path as MplPath

        pts = np.column_stack([np.asarray(x, dtype=float), np.asarray(y, dtype=float)])
        inside = np.zeros(len(pts), dtype=bool)
        for rings in self.polygons:
            hit = MplPath(rings[0]).contains_points(pts)
            for hole in rings[1:]:
                hit &= ~MplPath(hole).contains_points(pts)
            inside |= hit
        return inside

    def contains_cells(self, cells) -> np.ndarray:
        """Boolean per row of a qdmed cell table (centroids in pixel-index coordinates, which
        are QuPath's minus 0.5)."""
        return self.contains(np.asarray(cells["centroid_x"]) + 0.5,
                             np.asarray(cells["centroid_y"]) + 0.5)

    def to_dict(self) -> dict:
        return {"source": self.source, "n_polygons": len(self.polygons),
                "classes": sorted({c for c in self.classes if c})}


def _ring(coords, where: str) -> np.ndarray:
    try:
        a = np.asarray(coords, dtype=float)
    except (TypeError, ValueError):
        raise FileFormatError(f"{where}: a ring must be a list of [x, y] positions") from None
    if a.ndim != 2 or a.shape[1] < 2 or a.shape[0] < 3 or not np.all(np.isfinite(a)):
        raise FileFormatError(f"{where}: a ring needs at least 3 finite [x, y] positions; got "
                              f"shape {a.shape}")
    return a[:, :2]


def read_regions(path, region_class: str | None = None) -> Regions:
    """Polygons of a GeoJSON file (a FeatureCollection, a list of Features or one Feature),
    optionally only those whose classification name is ``region_class``.

    Raises
    ------
    FileFormatError
        Not JSON, or a Feature with a malformed geometry (the feature is named).
    InputError
        No Polygon or MultiPolygon is left to select cells with.
    """
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except OSError as e:
        raise InputError(f"cannot read regions file {p}: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FileFormatError(f"{p}: not a GeoJSON/JSON file ({e})") from None
    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        feats = doc.get("features") or []
    elif isinstance(doc, dict) and doc.get("type") == "Feature":
        feats = [doc]
    elif isinstance(doc, list):
        feats = doc
    else:
        raise FileFormatError(f"{p}: expected a GeoJSON FeatureCollection, Feature or a list of "
                              "Features")
    polys, classes = [], []
    for i, f in enumerate(feats):
        where = f"{p}: feature {i}"
        if not isinstance(f, dict):
            raise FileFormatError(f"{where} is not an object")
        props = f.get("properties") or {}
        cls = props.get("classification") or {}
        name = cls.get("name") if isinstance(cls, dict) else (cls if isinstance(cls, str) else None)
        if region_class is not None and name != region_class:
            continue
        geom = f.get("geometry") or {}
        kind, coords = geom.get("type"), geom.get("coordinates")
        if kind == "Polygon":
            parts = [coords]
        elif kind == "MultiPolygon":
            parts = coords
        else:
            continue  # points, lines: nothing to select cells with
        if not isinstance(parts, list):
            raise FileFormatError(f"{where}: {kind} coordinates must be a list")
        for j, poly in enumerate(parts):
            if not isinstance(poly, list) or not poly:
                raise FileFormatError(f"{where}: polygon {j} has no rings")
            polys.append(tuple(_ring(r, f"{where}, polygon {j}") for r in poly))
            classes.append(name)
    if not polys:
        what = f" classified {region_class!r}" if region_class is not None else ""
        raise InputError(f"{p}: no Polygon or MultiPolygon annotation{what} to select cells "
                         f"with ({len(feats)} features read).")
    return Regions(source=str(p), polygons=tuple(polys), classes=tuple(classes))
