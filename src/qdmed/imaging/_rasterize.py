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
``nuclei`` and, when the file has cell outlines, ``cells``. A file holding cells has only
its cells read as objects: its other detections (QuPath's subcellular spots) would cover the
cells' nuclei. A pixel belongs to a polygon when
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

__all__ = ["LabelObjects", "Outlines", "rasterize_objects", "read_label_objects",
           "write_object_labels"]

#: QuPath object types read as objects (normalised: lower case, no '_'); None: untyped.
_OBJECT_TYPES = ("cell", "detection", None)
#: Largest coordinate magnitude accepted, px (a whole slide is ~1e5 px across).
_MAX_COORD = 1e9


@dataclass(frozen=True, eq=False)
class Outlines:
    """The outlines of n objects as one edge list: object ``k``'s edges (all rings of all
    its polygons; none for an object without this outline) are rows
    ``offsets[k]:offsets[k + 1]`` of ``x1, y1, x2, y2`` (float64, ``y1 <= y2``), and
    ``boxes[k]`` is its bounding box ``x0, y0, x1, y1`` (NaN when it has no edge)."""

    x1: np.ndarray
    y1: np.ndarray
    x2: np.ndarray
    y2: np.ndarray
    offsets: np.ndarray
    boxes: np.ndarray

    @property
    def n(self) -> int:
        return int(self.offsets.size - 1)

    @property
    def n_present(self) -> int:
        return int(np.count_nonzero(np.diff(self.offsets)))

    @classmethod
    def from_rings(cls, rings_per_object, ring_objects=None, n: int | None = None
                   ) -> Outlines:
        """From rings ((m, 2) arrays of x, y; closing vertex optional): either one list of
        rings per object, or a flat list of rings with the object of each (`ring_objects`,
        non-decreasing) and the number of objects `n`."""
        if ring_objects is None:
            rings = [r for rs in rings_per_object for r in rs]
            ring_objects = np.repeat(np.arange(len(rings_per_object)),
                                     [len(rs) for rs in rings_per_object])
            n = len(rings_per_object)
        else:
            rings = rings_per_object
        ring_objects = np.asarray(ring_objects, dtype=np.int64)
        lens = np.array([len(r) for r in rings], dtype=np.int64)
        v = np.concatenate(rings).astype(np.float64) if rings else np.zeros((0, 2))
        starts = np.cumsum(lens) - lens
        nxt = np.arange(1, v.shape[0] + 1)
        nxt[starts + lens - 1] = starts  # each ring's closing edge; a repeated closing
        a, b = v, v[nxt]                 # vertex gives a zero-length edge, never crossed
        swap = b[:, 1] < a[:, 1]
        lo = np.where(swap[:, None], b, a)
        hi = np.where(swap[:, None], a, b)
        per_object = np.bincount(ring_objects, weights=lens, minlength=n).astype(np.int64)
        offsets = np.concatenate([[0], np.cumsum(per_object)])
        boxes = np.full((n, 4), np.nan)
        has = per_object > 0
        if has.any():
            at = offsets[:-1][has]
            boxes[has, 0] = np.minimum.reduceat(np.minimum(lo[:, 0], hi[:, 0]), at)
            boxes[has, 1] = np.minimum.reduceat(lo[:, 1], at)
            boxes[has, 2] = np.maximum.reduceat(np.maximum(lo[:, 0], hi[:, 0]), at)
            boxes[has, 3] = np.maximum.reduceat(hi[:, 1], at)
        return cls(*(np.ascontiguousarray(c) for c in (lo[:, 0], lo[:, 1], hi[:, 0],
                                                        hi[:, 1])), offsets, boxes)


@dataclass(frozen=True, eq=False)
class LabelObjects:
    """Objects read from GeoJSON: their nucleus outlines and, when any object has one,
    their cell outlines (None for detections only), object ``k`` with id ``k + 1``. A file
    with cells has its cells as objects and no others (QuPath's subcellular spots are
    detections too); a file without, its detections and untyped polygons."""

    source: str
    nuclei: Outlines
    cells: Outlines | None
    n_skipped: int = 0  # features not read as objects (annotations, points, other kinds)

    @property
    def n_objects(self) -> int:
        return self.nuclei.n

    def to_dict(self) -> dict:
        return {"source": self.source, "n_objects": self.n_objects,
                "n_nuclei": self.nuclei.n_present,
                "n_cells": 0 if self.cells is None else self.cells.n_present,
                "n_skipped": self.n_skipped}


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\n\r":
        pos += 1
    return pos


def _iter_features(text: str, name: str):
    """The Features of a GeoJSON text, one at a time: a FeatureCollection's ``features``
    array is decoded element by element (a whole-slide export holds ~10^6 cells: decoding it
    at once would hold every coordinate as a Python float, ~10x the file's size), a list of
    Features likewise, and a single Feature whole."""
    dec = json.JSONDecoder()

    def decode(pos):
        try:
            return dec.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise FileFormatError(f"{name}: not a GeoJSON file ({exc})") from None
        except RecursionError:
            raise FileFormatError(f"{name}: not a GeoJSON file (nested too deeply)") from None

    def expect(pos, chars):
        pos = _skip_ws(text, pos)
        if pos >= len(text) or text[pos] not in chars:
            line = text.count("\n", 0, pos) + 1
            raise FileFormatError(f"{name}: not a GeoJSON file (expected {chars!r} at line "
                                  f"{line})")
        return pos

    def array(pos):  # pos just after '['
        pos = _skip_ws(text, pos)
        if pos < len(text) and text[pos] == "]":
            return pos + 1
        while True:
            item, pos = decode(_skip_ws(text, pos))
            yield item
            pos = expect(pos, ",]")
            if text[pos] == "]":
                return pos + 1
            pos += 1

    def end(pos):
        if _skip_ws(text, pos) != len(text):
            raise FileFormatError(f"{name}: not a GeoJSON file (extra data after the "
                                  "top-level value)")

    pos = expect(0, "[{")
    if text[pos] == "[":
        end((yield from array(pos + 1)))
        return
    top, pos = {}, _skip_ws(text, pos + 1)
    if pos < len(text) and text[pos] == "}":
        pos += 1
    else:
        while True:
            key, pos = decode(expect(pos, '"'))
            pos = expect(pos, ":") + 1
            pos = _skip_ws(text, pos)
            if key == "features" and text.startswith("[", pos):
                top["features"] = True
                pos = yield from array(pos + 1)
            else:
                top[key], pos = decode(pos)
            pos = expect(pos, ",}") + 1
            if text[pos - 1] == "}":
                break
    end(pos)
    if "features" not in top:
        if top.get("type") != "Feature":
            raise FileFormatError(f"{name}: expected a FeatureCollection, a Feature or a "
                                  "list of Features")
        yield top


def read_label_objects(path) -> LabelObjects:
    """The cells and nuclei of a GeoJSON file (a FeatureCollection, a list of Features or
    one Feature): see the module docstring for which features and outlines are read. The
    file is decoded one feature at a time (memory: the file's text plus the outlines).

    Raises
    ------
    InputError
        The file does not exist, or holds no object with an outline.
    FileFormatError
        Not JSON, or a feature or geometry that is not GeoJSON (named by its index).
    """
    from qdmed.imaging._regions import _object_type, _polygons, _ring

    p = Path(path)
    if not p.is_file():
        raise InputError(f"objects file {str(p)!r} does not exist")
    try:
        text = p.read_text(encoding="utf-8-sig")  # a byte-order mark is tolerated
    except UnicodeDecodeError as exc:
        raise FileFormatError(f"{p.name}: not a GeoJSON file ({exc})") from None
    # rings of nucleus and of cell outlines, and the object (in file order) of each
    rings = {"nuclei": ([], []), "cells": ([], [])}
    is_cell: list[bool] = []
    skipped = 0

    def add(kind, geom, where) -> bool:
        got = []
        for poly in _polygons(geom, where):
            if not isinstance(poly, list):
                raise FileFormatError(f"{where}: a polygon must be a list of rings")
            got.extend(_ring(r, where) for r in poly)
        rings[kind][0].extend(got)
        rings[kind][1].extend([len(is_cell)] * len(got))
        return bool(got)

    for i, f in enumerate(_iter_features(text, p.name)):
        where = f"{p.name}: feature {i}"
        if not isinstance(f, dict):
            raise FileFormatError(f"{where}: not a GeoJSON Feature")
        props = f.get("properties") if isinstance(f.get("properties"), dict) else {}
        kind = _object_type(f, props)
        if kind not in _OBJECT_TYPES or f.get("geometry") is None:  # RFC 7946: may be null
            skipped += 1
            continue
        nucleus = f.get("nucleusGeometry")
        cell = kind == "cell" or nucleus is not None
        if cell:
            got = add("cells", f["geometry"], where)
            got = (nucleus is not None and add("nuclei", nucleus, f"{where} nucleus")) or got
        else:
            got = add("nuclei", f["geometry"], where)
        if got:
            is_cell.append(cell)
        else:
            skipped += 1
    del text
    if not is_cell:
        raise InputError(f"{p.name} holds no cell or detection with an outline ({skipped} "
                         "other features skipped: annotations, TMA cores, points, lines)")
    keep = np.array(is_cell) if any(is_cell) else np.ones(len(is_cell), bool)
    # with cells in the file, its other detections (QuPath's subcellular spots, tiles' own
    # detections) are not objects: their outlines would cover the cells' nuclei
    new_id = np.cumsum(keep) - 1
    n = int(keep.sum())
    outlines = {}
    for kind, (rs, objs) in rings.items():
        objs = np.asarray(objs, dtype=np.int64)
        sel = keep[objs] if objs.size else np.zeros(0, bool)
        outlines[kind] = Outlines.from_rings([r for r, k in zip(rs, sel, strict=True) if k],
                                             new_id[objs[sel]], n=n)
        if outlines[kind].x1.size and max(np.abs(outlines[kind].x1).max(),
                                          np.abs(outlines[kind].x2).max(),
                                          np.abs(outlines[kind].y1).max(),
                                          np.abs(outlines[kind].y2).max()) > _MAX_COORD:
            raise FileFormatError(f"{p.name}: coordinates beyond +-{_MAX_COORD:.0e} px: not "
                                  "pixel coordinates of an image")
    cells = outlines["cells"] if outlines["cells"].n_present else None
    return LabelObjects(str(p), outlines["nuclei"], cells,
                        skipped + int((~keep).sum()))


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
    def fill(out, oy, ox, x1, y1, x2, y2, offsets, objects, xs):  # pragma: no cover
        h, w = out.shape
        for i in objects:  # in order: a later object takes the pixels it shares
            s, e = offsets[i], offsets[i + 1]
            ylo, yhi = np.inf, -np.inf
            for k in range(s, e):
                ylo = min(ylo, y1[k])
                yhi = max(yhi, y2[k])
            r0 = max(0, math.ceil(ylo - 0.5) - oy)
            r1 = min(h, math.ceil(yhi - 0.5) - oy)
            for r in range(r0, r1):
                yc = oy + r + 0.5
                n = 0
                for k in range(s, e):
                    if y1[k] <= yc and yc < y2[k]:
                        x = x1[k] + (yc - y1[k]) * (x2[k] - x1[k]) / (y2[k] - y1[k])
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
                        out[r, c] = i + 1
        return out

    return fill


def rasterize_objects(outlines: Outlines, y0: int, y1: int, x0: int, x1: int,
                      method: str = "auto") -> np.ndarray:
    """The int32 labels of the image window ``[y0:y1, x0:x1]``: object ``k`` of
    `outlines` is drawn with id ``k + 1``, in order (a later object takes the pixels it
    shares with an earlier one). ``method``: 'numba', 'numpy' (the reference) or 'auto'."""
    if method not in ("auto", "numba", "numpy"):
        raise InputError(f"unknown method {method!r}; accepted: auto, numba, numpy")
    out = np.zeros((y1 - y0, x1 - x0), dtype=np.int32)
    b = outlines.boxes
    with np.errstate(invalid="ignore"):  # NaN boxes (no outline) never overlap
        hit = np.flatnonzero((b[:, 0] < x1) & (b[:, 2] > x0) & (b[:, 1] < y1) & (b[:, 3] > y0))
    if not hit.size:
        return out
    o = outlines
    if method == "numba" or (method == "auto" and numba_available()):
        xs = np.empty(int(np.max(o.offsets[hit + 1] - o.offsets[hit])) + 1)
        return _fill_kernel()(out, y0, x0, o.x1, o.y1, o.x2, o.y2, o.offsets, hit, xs)
    for i in hit:
        s = slice(o.offsets[i], o.offsets[i + 1])
        _fill_numpy(out, y0, x0, o.x1[s], o.y1[s], o.x2[s], o.y2[s], np.int32(i + 1))
    return out


def n_outside(outlines: Outlines, shape_yx) -> int:
    """How many objects lie wholly outside an image of ``shape_yx`` (their bounding box
    misses its ``[0, width] x [0, height]`` px)."""
    ny, nx = (float(v) for v in shape_yx)
    b = outlines.boxes
    present = ~np.isnan(b[:, 0])
    out = (b[:, 0] >= nx) | (b[:, 2] <= 0) | (b[:, 1] >= ny) | (b[:, 3] <= 0)
    return int(np.count_nonzero(present & out))


def outside_warnings(n_out: int, n: int, source) -> list[str]:
    """The warning that `n_out` of the `n` objects of `source` lie wholly outside the slide
    (none when none do)."""
    return [f"{n_out} of the {n} objects of {Path(source).name} lie wholly outside the slide "
            "and are not drawn"] if n_out else []


def check_on_image(objects: LabelObjects, shape_yx) -> int:
    """The number of objects wholly outside the image (drawn as nothing), or InputError
    when more than half are: the objects were drawn on another image, or at another
    downsample (a review drew a 2048^2 slide's 3141 cells on its 1024^2 crop: 803 drawn,
    "3141" said)."""
    n = objects.nuclei.n_present
    out = n_outside(objects.nuclei, shape_yx)
    if n and out > n / 2:
        ny, nx = (int(v) for v in shape_yx)
        b = objects.nuclei.boxes
        raise InputError(
            f"{objects.source}: {out} of its {n} objects lie wholly outside the slide "
            f"({nx} x {ny} px; the objects span x {np.nanmin(b[:, 0]):.0f}-"
            f"{np.nanmax(b[:, 2]):.0f}, y {np.nanmin(b[:, 1]):.0f}-{np.nanmax(b[:, 3]):.0f} "
            "px): were they drawn on another image, or exported at a downsample? Objects "
            "are full-resolution pixel coordinates of this slide")
    return out


def write_object_labels(objects: LabelObjects, shape_yx, out_path, *,
                        pixel_size_um: float | None = None, block: int = 2048,
                        progress: bool = False, extra: dict | None = None) -> Path:
    """Write `objects` as an OME-Zarr label image of ``shape_yx`` (the slide's) at
    `out_path`, channels ``nuclei`` and, when there are cell outlines, ``cells``; block by
    block (memory bounded by one block), atomically (a temporary folder renamed at the end).
    An object reaching beyond the image is cut at its edge; objects wholly outside it are
    counted (``n_outside`` in the image's ``qdmed.objects``), and refused when more than
    half are (:func:`check_on_image`). An existing Zarr image at `out_path` is replaced;
    anything else there is refused."""
    from qdmed import __version__
    from qdmed.imaging._analyze import _progress
    from qdmed.imaging._slideio import _ZarrImageWriter, check_zarr_output

    outside = check_on_image(objects, shape_yx)
    out = check_zarr_output(out_path, [objects.source], replaces="objects")
    ny, nx = (int(v) for v in shape_yx)
    kinds = ["nuclei"] + ([] if objects.cells is None else ["cells"])
    writer = _ZarrImageWriter(out, (ny, nx, len(kinds)), np.int32,
                              channel_names=tuple(kinds), pixel_size_um=pixel_size_um,
                              chunks=(min(block, 1024), min(block, 1024)), pyramid_levels=1,
                              name=out.name)
    starts = [(y, x) for y in range(0, ny, block) for x in range(0, nx, block)]
    try:
        with _progress(progress, len(starts), 0, "blocks") as advance:
            for y, x in starts:
                y1, x1 = min(ny, y + block), min(nx, x + block)
                planes = [rasterize_objects(objects.nuclei if k == "nuclei" else objects.cells,
                                            y, y1, x, x1) for k in kinds]
                writer.write(y, x, np.stack(planes, axis=-1))
                advance()
        return writer.finish({"qdmed_version": __version__,
                              "objects": {**objects.to_dict(), "n_outside": outside},
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
    from qdmed.imaging._slideio import file_ident, qdmed_record

    src = Path(path)
    if not src.is_file():
        raise InputError(f"objects file {str(path)!r} does not exist")
    target = Path(out_dir) / GIVEN_LABELS_NAME
    ident = json.loads(json.dumps([str(src.resolve()), file_ident(src),
                                   [int(v) for v in shape_yx]]))
    if target.is_dir() and qdmed_record(target).get("source_ident") == ident:
        return target  # (unreadable, or another's: written again below)
    objects = read_label_objects(src)  # before the folder is made: bad files leave none
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return write_object_labels(objects, shape_yx, target, pixel_size_um=pixel_size_um,
                               progress=progress, extra={"source_ident": ident})


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

    if "cells" not in read_slide(image, check_chunks=False).channel_names:
        raise InputError(f"{Path(nuclei_labels).name} holds no cell outlines (detections "
                         "only): drop --cell-labels, and cells grow from the nuclei")
    return image, "nuclei", image, "cells"
