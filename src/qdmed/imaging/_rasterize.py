"""Cells and nuclei drawn as polygons (QuPath detections, StarDist or cellpose results exported
as GeoJSON) turned into a label image the analysis reads (``--nuclei-labels``).

QuPath exports detections with File > Export objects as GeoJSON: one Feature per object, its
``geometry`` in full-resolution pixel coordinates with the origin at the top-left corner of
the top-left pixel; a cell object (``properties.objectType`` "cell") also carries its nucleus
as a top-level ``nucleusGeometry``, while a detection ("detection", e.g. StarDist nuclei
without cell expansion) is the nucleus itself (``qupath.lib.io.PathObjectTypeAdapters``,
QuPath >= 0.4; 0.2-0.3 are read too). Features without an object type are taken as objects
too (plain GeoJSON from other tools); annotations, TMA cores and tiles are skipped.

Object ``k`` (1-based, in file order) gets id ``k`` in both channels of the written image,
``nuclei`` and, when the file has cell outlines, ``cells``. A pixel belongs to a polygon when
its centre lies inside it (even-odd rule over the exterior ring and its holes, half-open
like :mod:`qdmed.imaging._regions`' point test, so pixels on a shared edge go to one side
only); where polygons overlap, the later object in the file takes the pixel. Outlines traced
along pixel edges and simplified by less than half a pixel, as qdmed's cells.geojson and
QuPath's own are, come back as the very pixels they were traced from.

Why qdmed rasterizes itself: scikit-image's ``draw.polygon`` tests every pixel of the
bounding box against every vertex and has no holes; rasterio/GDAL would do, but is a heavy
dependency for one function. A scanline fill is a few lines of numba.

References
----------
.. [1] IETF RFC 7946, The GeoJSON Format (2016). doi:10.17487/RFC7946
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qdmed.errors import FileFormatError, InputError
from qdmed.imaging._jit import lazy_kernel, njit_cached, numba_available

__all__ = ["LabelObjects", "rasterize_objects", "read_label_objects", "write_object_labels"]

#: QuPath object types read as objects (normalised: lower case, no '_'); None: untyped.
_OBJECT_TYPES = ("cell", "detection", None)


@dataclass(frozen=True)
class LabelObjects:
    """Polygons of objects read from GeoJSON, as edge lists ready to rasterize.

    Attributes
    ----------
    source : str
    nuclei, cells : tuple
        Per object, its edges ``(x1, y1, x2, y2)`` (arrays, ``y1 <= y2``, all rings of
        all its polygons) or None where the object has no such outline; ``cells`` is
        None when no object has a cell outline (detections only).
    boxes : dict
        ``{"nuclei": (n, 4) float array, "cells": ...}``: each outline's bounding box
        ``x0, y0, x1, y1`` (NaN where absent).
    """

    source: str
    nuclei: tuple
    cells: tuple | None
    boxes: dict

    @property
    def n_objects(self) -> int:
        return len(self.nuclei)

    def to_dict(self) -> dict:
        return {"source": self.source, "n_objects": self.n_objects,
                "n_nuclei": sum(e is not None for e in self.nuclei),
                "n_cells": 0 if self.cells is None else sum(e is not None for e in self.cells)}


def _outline_edges(geom, where: str):
    """Edges of every ring of a Polygon/MultiPolygon geometry (None for a geometry that
    encloses nothing: points, lines)."""
    from qdmed.imaging._regions import _edges, _polygons, _ring

    rings = [_ring(r, where) for poly in _polygons(geom, where) for r in poly]
    return _edges(rings) if rings else None


def _box(edges) -> list[float]:
    if edges is None:
        return [math.nan] * 4
    x1, y1, x2, y2 = edges
    return [float(min(x1.min(), x2.min())), float(y1.min()), float(max(x1.max(), x2.max())),
            float(y2.max())]


def read_label_objects(path) -> LabelObjects:
    """The cells and nuclei of a GeoJSON file (a FeatureCollection, a list of Features or
    one Feature): see the module docstring for which features and outlines are read.

    Raises
    ------
    InputError
        The file does not exist, or holds no object with an outline.
    FileFormatError
        Not JSON, or a feature or geometry that is not GeoJSON (named by its index).
    """
    from qdmed.imaging._regions import _object_type

    p = Path(path)
    if not p.is_file():
        raise InputError(f"objects file {str(p)!r} does not exist")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FileFormatError(f"{p.name}: not a GeoJSON file ({exc})") from None
    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        feats = doc.get("features")
    elif isinstance(doc, dict) and doc.get("type") == "Feature":
        feats = [doc]
    else:
        feats = doc
    if not isinstance(feats, list):
        raise FileFormatError(f"{p.name}: expected a FeatureCollection, a Feature or a list "
                              "of Features")
    nuclei, cells = [], []
    skipped = 0
    for i, f in enumerate(feats):
        where = f"{p.name}: feature {i}"
        if not isinstance(f, dict) or not isinstance(f.get("geometry"), dict):
            raise FileFormatError(f"{where}: not a GeoJSON Feature with a geometry")
        props = f.get("properties") if isinstance(f.get("properties"), dict) else {}
        kind = _object_type(f, props)
        if kind not in _OBJECT_TYPES:
            skipped += 1
            continue
        outline = _outline_edges(f["geometry"], where)
        nucleus = f.get("nucleusGeometry")
        if kind == "cell" or nucleus is not None:
            nuc = None if nucleus is None else _outline_edges(nucleus, f"{where} nucleus")
            cell = outline
        else:
            nuc, cell = outline, None
        if nuc is None and cell is None:
            skipped += 1
            continue
        nuclei.append(nuc)
        cells.append(cell)
    if not nuclei:
        raise InputError(f"{p.name} holds no cell or detection with an outline ({skipped} "
                         "other features skipped: annotations, TMA cores, points, lines)")
    has_cells = any(c is not None for c in cells)
    boxes = {"nuclei": np.array([_box(e) for e in nuclei], dtype=float).reshape(-1, 4)}
    if has_cells:
        boxes["cells"] = np.array([_box(e) for e in cells], dtype=float).reshape(-1, 4)
    return LabelObjects(str(p), tuple(nuclei), tuple(cells) if has_cells else None, boxes)


def _fill_numpy(out, oy, ox, x1, y1, x2, y2, label):
    """Scanline fill of one object's edges into ``out`` (a block whose pixel (0, 0) is the
    image's pixel (oy, ox)): pixel (r, c) is inside when its centre (c + 0.5, r + 0.5) has an
    odd number of edge crossings to its right (crossing rule half-open in y)."""
    h, w = out.shape
    r0 = max(0, math.ceil(float(y1.min()) - 0.5) - oy)
    r1 = min(h, math.ceil(float(y2.max()) - 0.5) - oy)
    for r in range(r0, r1):
        yc = oy + r + 0.5
        hit = (y1 <= yc) & (yc < y2)
        if not hit.any():
            continue
        a, b, c, d = x1[hit], y1[hit], x2[hit], y2[hit]
        xs = np.sort(a + (yc - b) * (c - a) / (d - b))
        for k in range(0, xs.size - 1, 2):
            c0 = max(0, math.ceil(xs[k] - 0.5) - ox)
            c1 = min(w, math.ceil(xs[k + 1] - 0.5) - ox)
            if c1 > c0:
                out[r, c0:c1] = label
    return out


@lazy_kernel
def _fill_kernel():
    @njit_cached(nogil=True)
    def fill(out, oy, ox, x1, y1, x2, y2, label, xs):  # pragma: no cover - runs compiled
        h, w = out.shape
        ylo = y1.min()
        yhi = y2.max()
        r0 = max(0, math.ceil(ylo - 0.5) - oy)
        r1 = min(h, math.ceil(yhi - 0.5) - oy)
        for r in range(r0, r1):
            yc = oy + r + 0.5
            n = 0
            for e in range(x1.shape[0]):
                if y1[e] <= yc and yc < y2[e]:
                    x = x1[e] + (yc - y1[e]) * (x2[e] - x1[e]) / (y2[e] - y1[e])
                    j = n  # insertion sort: a row crosses a handful of edges
                    while j > 0 and xs[j - 1] > x:
                        xs[j] = xs[j - 1]
                        j -= 1
                    xs[j] = x
                    n += 1
            for k in range(0, n - 1, 2):
                c0 = max(0, math.ceil(xs[k] - 0.5) - ox)
                c1 = min(w, math.ceil(xs[k + 1] - 0.5) - ox)
                for c in range(c0, c1):
                    out[r, c] = label
        return out

    return fill


def rasterize_objects(outlines, boxes, y0: int, y1: int, x0: int, x1: int,
                      method: str = "auto") -> np.ndarray:
    """The int32 labels of the image window ``[y0:y1, x0:x1]``: object ``k`` of
    `outlines` (edge tuples or None, see :class:`LabelObjects`) is drawn with id ``k + 1``,
    in order (a later object takes the pixels it shares with an earlier one). ``method``:
    'numba', 'numpy' (the reference) or 'auto'."""
    out = np.zeros((y1 - y0, x1 - x0), dtype=np.int32)
    if method not in ("auto", "numba", "numpy"):
        raise InputError(f"unknown method {method!r}; accepted: auto, numba, numpy")
    use_numba = method == "numba" or (method == "auto" and numba_available())
    # a box overlapping the window (pixel centres: edges at +-0.5 px never fill a pixel)
    with np.errstate(invalid="ignore"):
        hit = np.flatnonzero((boxes[:, 0] < x1) & (boxes[:, 2] > x0)
                             & (boxes[:, 1] < y1) & (boxes[:, 3] > y0))
    if use_numba and hit.size:
        fill = _fill_kernel()
        xs = np.empty(max(int(outlines[i][0].shape[0]) for i in hit) + 1)
        for i in hit:
            fill(out, y0, x0, *outlines[i], np.int32(i + 1), xs)
    else:
        for i in hit:
            _fill_numpy(out, y0, x0, *outlines[i], np.int32(i + 1))
    return out


def write_object_labels(objects: LabelObjects, shape_yx, out_path, *,
                        pixel_size_um: float | None = None, block: int = 2048,
                        progress: bool = False, extra: dict | None = None) -> Path:
    """Write `objects` as an OME-Zarr label image of ``shape_yx`` (the slide's) at
    `out_path`, channels ``nuclei`` and, when there are cell outlines, ``cells``; block by
    block (memory bounded by one block), atomically (a temporary folder renamed at the end).
    An object reaching beyond the image is cut at its edge."""
    from qdmed import __version__
    from qdmed.imaging._analyze import _progress
    from qdmed.imaging._slideio import _ZarrImageWriter

    ny, nx = (int(v) for v in shape_yx)
    kinds = ["nuclei"] + ([] if objects.cells is None else ["cells"])
    writer = _ZarrImageWriter(Path(out_path), (ny, nx, len(kinds)), np.int32,
                              channel_names=tuple(kinds), pixel_size_um=pixel_size_um,
                              chunks=(min(block, 1024), min(block, 1024)), pyramid_levels=1,
                              name=Path(out_path).name)
    starts = [(y, x) for y in range(0, ny, block) for x in range(0, nx, block)]
    try:
        with _progress(progress, len(starts), 0, "blocks") as advance:
            for y, x in starts:
                y1, x1 = min(ny, y + block), min(nx, x + block)
                planes = [rasterize_objects(objects.nuclei if k == "nuclei" else objects.cells,
                                            objects.boxes[k], y, y1, x, x1) for k in kinds]
                writer.write(y, x, np.stack(planes, axis=-1))
                advance()
        return writer.finish({"qdmed_version": __version__, "objects": objects.to_dict(),
                              "rule": "pixel centre inside (even-odd); later objects on top",
                              **(extra or {})})
    except BaseException:
        writer.abort()
        raise


#: File suffixes read as polygon objects where a label image is expected.
OBJECT_SUFFIXES = (".geojson", ".json")
#: Where :func:`objects_as_labels` writes a slide's rasterized objects, in its output folder.
GIVEN_LABELS_NAME = "given_labels.ome.zarr"


def is_objects_file(path) -> bool:
    """Whether `path` names polygon objects (GeoJSON) rather than a label image."""
    return path is not None and str(path).lower().endswith(OBJECT_SUFFIXES)


def labels_from_objects(path, shape_yx, out_dir, *, pixel_size_um: float | None = None,
                        progress: bool = False) -> Path:
    """The label image of the objects file at `path` for a slide of ``shape_yx``:
    ``<out_dir>/given_labels.ome.zarr`` (channels ``nuclei`` and maybe ``cells``), written
    unless it already holds this very file (same path, size and time) at this shape, so that
    a resumed analysis finds the same labels and keeps its finished tiles."""
    import zarr

    from qdmed.imaging._slideio import file_ident

    src = Path(path)
    if not src.is_file():
        raise InputError(f"objects file {str(path)!r} does not exist")
    target = Path(out_dir) / GIVEN_LABELS_NAME
    ident = json.loads(json.dumps([str(src.resolve()), file_ident(src),
                                   [int(v) for v in shape_yx]]))
    if target.is_dir():
        try:
            done = zarr.open_group(str(target), mode="r").attrs.get("qdmed", {})
        except Exception:  # noqa: BLE001 - unreadable: written again below
            done = {}
        if done.get("source_ident") == ident:
            return target
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return write_object_labels(read_label_objects(src), shape_yx, target,
                               pixel_size_um=pixel_size_um, progress=progress,
                               extra={"source_ident": ident})


def objects_as_labels(nuclei_labels, labels_channel, cell_labels, cell_labels_channel,
                      downsample, shape_yx, out_dir, pixel_size_um=None):
    """A slide's given labels with GeoJSON objects replaced by their label image
    (:func:`labels_from_objects`): returns ``(nuclei_labels, labels_channel, cell_labels,
    cell_labels_channel)`` as :func:`qdmed.imaging._given_labels.open_given_labels` takes
    them. Cells come from the objects file only when `cell_labels` names it too (QuPath's
    cells carry their nucleus); GeoJSON coordinates are full-resolution pixels, so no
    channel and no downsample go with it."""
    if not is_objects_file(nuclei_labels):
        if is_objects_file(cell_labels):
            raise InputError("cell outlines from GeoJSON need their nuclei from the same file "
                             "(--nuclei-labels and --cell-labels both naming it)")
        return nuclei_labels, labels_channel, cell_labels, cell_labels_channel
    if labels_channel is not None or cell_labels_channel is not None:
        raise InputError("a GeoJSON objects file has no channels: drop --labels-channel and "
                         "--cell-labels-channel")
    if downsample != 1:
        raise InputError("GeoJSON outlines are in full-resolution pixels: drop "
                         "labels_downsample (--labels-downsample)")
    if cell_labels is not None and Path(cell_labels).resolve() != Path(nuclei_labels).resolve():
        raise InputError("with nuclei from a GeoJSON objects file, the cells come from the same "
                         f"file or from qdmed's expansion; got cell labels {cell_labels}")
    image = labels_from_objects(nuclei_labels, shape_yx, out_dir, pixel_size_um=pixel_size_um)
    if cell_labels is None:
        return image, "nuclei", None, None
    from qdmed.imaging._slideio import read_slide

    if "cells" not in read_slide(image).channel_names:
        raise InputError(f"{Path(nuclei_labels).name} holds no cell outlines (detections "
                         "only): drop --cell-labels, and cells grow from the nuclei")
    return image, "nuclei", image, "cells"
