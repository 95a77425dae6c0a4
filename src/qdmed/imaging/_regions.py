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
from qdmed.imaging._jit import lazy_kernel, njit_cached, numba_available

__all__ = ["Regions", "read_regions"]


@dataclass(frozen=True)
class Regions:
    """Polygons (exterior ring plus holes, each an (n, 2) array of x, y in QuPath pixel
    coordinates) read from a GeoJSON file, with the region each belongs to.

    Attributes
    ----------
    source : str
    polygons : tuple
        One entry per polygon (a MultiPolygon feature gives several).
    classes : tuple
        Classification name of each polygon's feature (None if unclassified).
    labels : tuple of str
        Name of each polygon's region: the feature's ``properties.name`` (QuPath writes a TMA
        core's name, e.g. "A-1", and an annotation's name there), else its class and its
        order among that class's unnamed regions (``"Tumor 1"``, ``"Tumor 2"``), or
        ``"region <n>"`` by the feature's order among the regions read when unclassified
        (primed if a feature of the file has that name).
        Polygons of one feature share a label, and so do annotations given the same name
        (one region in several pieces); TMA core names must be unique.
    kinds : tuple of str
        QuPath object type of each polygon's feature ('annotation', 'tmacore'; 'annotation'
        for plain GeoJSON without one).
    order : tuple of str
        Every region's name once, present or missing, in file order (a TMA's grid order).
    centers : tuple of (str, float, float)
        Per region (present, or missing with a geometry): name and the mean of the first
        polygon's exterior vertices (x, y in QuPath pixel coordinates; a core's centre).
    missing : tuple of str
        Names of the regions marked missing (``properties.isMissing``, which QuPath writes
        on every TMA core: true for a core lost from the section): no tissue to score, so no
        polygon; listed so that a per-core table keeps their rows.
    notes : tuple of str
        What reading the file left out that a user would not guess: annotations of lines or
        points only (they enclose no cell), and classes derived from the class asked for
        (QuPath's ``"Tumor: Positive"`` beside ``region_class="Tumor"``, matched exactly).
        Said as warnings by the analyses (:func:`region_warnings`).
    """

    source: str
    polygons: tuple
    classes: tuple
    labels: tuple = ()
    kinds: tuple = ()
    missing: tuple = ()
    order: tuple = ()
    centers: tuple = ()  # (name, x, y): centre of each region's first polygon, QuPath px
    notes: tuple = ()

    @property
    def names(self) -> tuple[str, ...]:
        """The regions' names, each once, in file order."""
        return tuple(dict.fromkeys(self.labels))

    def outside(self, shape_yx) -> tuple[str, ...]:
        """The present regions none of whose polygons' bounding boxes meets the slide's
        ``[0, width) x [0, height)`` px: wholly outside it (annotations of another slide,
        or of a level other than full resolution)."""
        h, w = (float(v) for v in shape_yx)
        labels = self.labels or ("region 1",) * len(self.polygons)
        meets = set()
        for rings, label in zip(self.polygons, labels, strict=True):
            if len(rings):
                (x0, y0), (x1, y1) = rings[0].min(axis=0), rings[0].max(axis=0)
                if x1 > 0 and y1 > 0 and x0 < w and y0 < h:
                    meets.add(label)
        return tuple(n for n in dict.fromkeys(labels) if n not in meets)

    @property
    def is_tma(self) -> bool:
        """True when every region is a TMA core (a QuPath TMA grid export)."""
        return bool(self.kinds) and all(k == "tmacore" for k in self.kinds)

    @property
    def named_like_tma(self) -> bool:
        """True when the regions are annotations, four or more, every one named as a TMA
        grid names its cores (``A-1``, ``1-A``, ``AB-12``): qdmed's own cores after a trip
        through QuPath, which keeps ``isMissing`` for its TMA core objects only and writes
        them back as plain annotations (a QuPath user's walk-through: a TMA then scored as
        one slide, its patients pooled, unsaid)."""
        import re

        names = [n for n in dict.fromkeys(self.labels) if isinstance(n, str)]
        grid = re.compile(r"[A-Za-z]{1,2}-\d{1,3}|\d{1,3}-[A-Za-z]{1,2}")
        return (not self.is_tma and len(names) >= 4
                and all(grid.fullmatch(n) for n in names))

    @property
    def mixes_cores_and_annotations(self) -> bool:
        """True when the file holds TMA cores and annotations (e.g. tumour drawn inside the
        cores, exported with them from QuPath)."""
        return "tmacore" in self.kinds and any(k != "tmacore" for k in self.kinds)

    def subset(self, cores: bool) -> Regions:
        """The TMA cores (``cores=True``, with the missing ones) or the other regions."""
        keep = [i for i, k in enumerate(self.kinds) if (k == "tmacore") == cores]
        labels = tuple(self.labels[i] for i in keep)
        missing = self.missing if cores else ()
        names = set(labels) | set(missing)
        return Regions(source=self.source, polygons=tuple(self.polygons[i] for i in keep),
                       classes=tuple(self.classes[i] for i in keep), labels=labels,
                       kinds=tuple(self.kinds[i] for i in keep), missing=missing,
                       order=tuple(n for n in self.order if n in names),
                       centers=tuple(c for c in self.centers if c[0] in names),
                       notes=self.notes)

    @property
    def areas(self) -> dict[str, float]:
        """Area of each present region, px^2: its polygons' exterior rings less their holes
        (shoelace formula), summed over the region's polygons (pieces of one region are
        assumed not to overlap)."""
        out: dict[str, float] = {}
        labels = self.labels or ("region 1",) * len(self.polygons)
        for rings, label in zip(self.polygons, labels, strict=True):
            a = [0.5 * abs(float(np.dot(r[:, 0], np.roll(r[:, 1], -1))
                                 - np.dot(r[:, 1], np.roll(r[:, 0], -1)))) for r in rings]
            out[label] = out.get(label, 0.0) + a[0] - sum(a[1:])
        return out

    def contains(self, x, y) -> np.ndarray:
        """Boolean per point: inside some polygon and outside its holes (QuPath x, y).

        Even-odd crossing rule with half-open edges (W. R. Franklin's PNPOLY; E. Haines,
        "Point in polygon strategies", Graphics Gems IV, 1994, pp. 24-46,
        doi:10.1016/B978-0-12-336156-1.50013-6): a point on an edge is inside when the
        polygon lies on the edge's larger-x or larger-y side (the left and top edges of a
        square in image coordinates, not its right and bottom ones), whatever the ring
        orientation, so abutting annotations share out their common edges: every point is
        in exactly one of them (tested). Written here because matplotlib's
        ``contains_points`` puts edge points in or out by ring orientation (clockwise and
        counter-clockwise copies of one square disagree) and scipy/scikit-image offer no
        polygon test for points.
        """
        return self.region_index(x, y) >= 0

    def region_index(self, x, y) -> np.ndarray:
        """Per point (QuPath x, y): the index in :attr:`names` of the region containing it,
        -1 outside every region. Where regions overlap, a point goes to the first one in
        file order (TMA cores never overlap; abutting annotations share their edges out, see
        :meth:`contains`)."""
        px = np.ascontiguousarray(np.asarray(x, dtype=float).ravel())
        py = np.ascontiguousarray(np.asarray(y, dtype=float).ravel())
        if px.shape != py.shape:
            raise InputError(f"x and y must have the same length; got {px.size} and {py.size}.")
        where = np.full(px.size, -1, dtype=np.int64)
        index = {name: i for i, name in enumerate(self.names)}
        labels = self.labels or ("region 1",) * len(self.polygons)
        for rings, label in zip(self.polygons, labels, strict=True):
            where[_points_in(rings, px, py, where < 0)] = index.get(label, 0)
        return where

    def overlaps_cells(self, cells) -> dict[tuple[str, str], int]:
        """Cells of a qdmed cell table inside two regions of different names: ``{(the
        first in file order, which takes them; the other): count}``. :meth:`region_index`
        gives a cell to one region only, so an annotation drawn over another (a hotspot
        inside a whole core) loses its shared cells to whichever comes first (a review:
        a hotspot read "no scored cells", unsaid)."""
        px = np.ascontiguousarray(np.asarray(cells["centroid_x"], dtype=float) + 0.5)
        py = np.ascontiguousarray(np.asarray(cells["centroid_y"], dtype=float) + 0.5)
        labels = self.labels or ("region 1",) * len(self.polygons)
        if px.size == 0 or len(set(labels)) < 2:
            return {}
        first = np.full(px.size, -1, dtype=np.int64)
        out: dict[tuple[str, str], int] = {}
        for i, (rings, label) in enumerate(zip(self.polygons, labels, strict=True)):
            inside = _points_in(rings, px, py)
            taken = inside[first[inside] >= 0]
            for j, n in zip(*np.unique(first[taken], return_counts=True), strict=True):
                if labels[j] != label:
                    key = (labels[j], label)
                    out[key] = out.get(key, 0) + int(n)
            first[inside[first[inside] < 0]] = i
        return out

    def contains_cells(self, cells) -> np.ndarray:
        """Boolean per row of a qdmed cell table (centroids in pixel-index coordinates, which
        are QuPath's minus 0.5)."""
        return self.region_index_cells(cells) >= 0

    def region_index_cells(self, cells) -> np.ndarray:
        """:meth:`region_index` per row of a qdmed cell table."""
        return self.region_index(np.asarray(cells["centroid_x"]) + 0.5,
                                 np.asarray(cells["centroid_y"]) + 0.5)

    def to_dict(self) -> dict:
        return {"source": self.source, "n_polygons": len(self.polygons),
                "classes": sorted({c for c in self.classes if c}),
                "n_regions": len(self.names), "tma": self.is_tma,
                "missing_cores": list(self.missing)}


def _points_in(rings, px, py, among=None) -> np.ndarray:
    """Indices of the points (``px``, ``py``; ``among``: a boolean mask of those to test,
    default all) inside the polygon of ``rings`` (exterior first, then holes): a bounding
    box first, then the crossing rule (:func:`_pnpoly_kernel`)."""
    ext = rings[0]
    box = ((px >= ext[:, 0].min()) & (px <= ext[:, 0].max())
           & (py >= ext[:, 1].min()) & (py <= ext[:, 1].max()))
    sel = np.flatnonzero(box if among is None else box & among)
    if sel.size == 0:
        return sel
    e = _edges(rings)
    hit = np.zeros(sel.size, dtype=bool)
    kernel = _pnpoly_kernel() if numba_available() else _pnpoly_numpy
    kernel(px[sel], py[sel], e[0], e[1], e[2], e[3], hit)
    return sel[hit]


def check_regions_meet(reg, shape_yx, name: str) -> None:
    """InputError, before any tile, where every region lies wholly outside the slide
    (:meth:`Regions.outside`: annotations of another slide, or in um or of a lower pyramid
    level): a review's run wrote full tables of "no cells" and exited 0. Some outside are
    warned by the analysis."""
    if reg is None or not reg.polygons:
        return
    present = list(dict.fromkeys(reg.labels or ("region 1",)))
    off = reg.outside(shape_yx)
    if present and len(off) == len(present):
        h, w = shape_yx
        raise InputError(f"every region of {reg.source} lies wholly outside {name}'s {w} x "
                         f"{h} px: annotations of another slide, or in um or of a lower "
                         "pyramid level? (QuPath exports full-resolution pixels)")


def _edges(rings) -> tuple[np.ndarray, ...]:
    """Edges of all rings of a polygon as (x1, y1, x2, y2) with y1 <= y2 (canonical order:
    the crossing abscissa is then computed identically whatever the ring orientation)."""
    x1, y1, x2, y2 = [], [], [], []
    for r in rings:
        a, b = r, np.roll(r, -1, axis=0)  # closing edge included; a repeated closing vertex
        swap = b[:, 1] < a[:, 1]          # gives a zero-length edge, which never crosses
        lo = np.where(swap[:, None], b, a)
        hi = np.where(swap[:, None], a, b)
        x1.append(lo[:, 0])
        y1.append(lo[:, 1])
        x2.append(hi[:, 0])
        y2.append(hi[:, 1])
    return tuple(np.ascontiguousarray(np.concatenate(v)) for v in (x1, y1, x2, y2))


def _pnpoly_numpy(px, py, x1, y1, x2, y2, out):
    """The crossing rule of :func:`_pnpoly_kernel`, one edge at a time over all points
    (the reference, and the path without numba)."""
    c = np.zeros(px.shape[0], dtype=bool)
    for e in range(x1.shape[0]):
        cross = (y1[e] > py) != (y2[e] > py)
        with np.errstate(invalid="ignore", divide="ignore"):
            xi = x1[e] + (py - y1[e]) * (x2[e] - x1[e]) / (y2[e] - y1[e])
        c ^= cross & (px < xi)
    out[:] = c
    return out


@lazy_kernel
def _pnpoly_kernel():
    @njit_cached(nogil=True)
    def pnpoly(px, py, x1, y1, x2, y2, out):  # pragma: no cover - runs compiled
        for i in range(px.shape[0]):
            x = px[i]
            y = py[i]
            c = False
            for e in range(x1.shape[0]):
                if (y1[e] > y) != (y2[e] > y):  # half-open in y
                    xi = x1[e] + (y - y1[e]) * (x2[e] - x1[e]) / (y2[e] - y1[e])
                    if x < xi:
                        c = not c
            out[i] = c
        return out

    return pnpoly


#: QuPath object types that delimit regions (normalised: lower case, no '_'); others
#: (cell, detection, tile) are skipped. A feature without a type is taken as a region (plain
#: GeoJSON from other tools).
_REGION_TYPES = ("annotation", "tmacore", None)
_QUPATH_CLASSES = {"PathAnnotationObject": "annotation", "PathCellObject": "cell",
                   "PathDetectionObject": "detection", "PathTileObject": "tile",
                   "TMACoreObject": "tmacore"}


def _region_kind(feature: dict, props: dict) -> str | None:
    """'tmacore' or 'annotation' for a feature that is a region, None for other objects
    (cells, detections, tiles). A feature with ``isMissing`` is a TMA core: QuPath writes it
    on cores only, and qdmed's dearrayer on its cores, which are annotations so that QuPath
    imports them."""
    kind = _object_type(feature, props)
    if kind not in _REGION_TYPES:
        return None
    return "tmacore" if "isMissing" in props else (kind or "annotation")


def _object_type(feature: dict, props: dict) -> str | None:
    """Normalised QuPath object type: >= 0.4 writes ``properties.objectType``
    ('annotation', 'cell', 'tmaCore', ...), 0.3 ``properties.object_type``, 0.2 the Java
    class as the feature ``id`` (e.g. 'PathAnnotationObject')."""
    for t in (props.get("objectType"), props.get("object_type"), feature.get("objectType")):
        if isinstance(t, str):
            return t.lower().replace("_", "")
    fid = feature.get("id")
    return _QUPATH_CLASSES.get(fid) if isinstance(fid, str) else None


def _class_name(cls) -> str | None:
    """Classification name; QuPath writes a derived class ("Tumor: Positive") as
    ``{"names": ["Tumor", "Positive"]}`` and a simple one as ``{"name": "Tumor"}``; QuPath
    0.2-0.3 serialised its PathClass fields, a derived class as ``{"name": "Positive",
    "parentClass": {"name": "Tumor", ...}}`` (a QuPath user's walk-through: read as
    "Positive" alone, tumour and stroma positives pooled)."""
    if isinstance(cls, str):
        return cls
    if not isinstance(cls, dict):
        return None
    if isinstance(cls.get("name"), str):
        parent = _class_name(cls["parentClass"]) if isinstance(cls.get("parentClass"),
                                                               dict) else None
        return f"{parent}: {cls['name']}" if parent else cls["name"]
    names = cls.get("names")
    if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
        return ": ".join(names)
    return None


def _polygons(geom, where: str) -> list:
    """Polygon coordinate lists of a geometry: a Polygon, the parts of a MultiPolygon, and
    those of a GeometryCollection's members (QuPath writes one when an annotation mixes
    areas and lines); points and lines select nothing."""
    if not isinstance(geom, dict):
        raise FileFormatError(f"{where}: 'geometry' is not an object")
    kind, coords = geom.get("type"), geom.get("coordinates")
    if kind == "GeometryCollection":
        members = geom.get("geometries")
        if not isinstance(members, list):
            raise FileFormatError(f"{where}: GeometryCollection 'geometries' must be a list")
        return [p for g in members for p in _polygons(g, where)]
    if kind not in ("Polygon", "MultiPolygon"):
        return []
    if not isinstance(coords, list):
        raise FileFormatError(f"{where}: {kind} coordinates must be a list")
    return [coords] if kind == "Polygon" else coords


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
    optionally only those whose classification name is ``region_class``; or the TMA cores
    of a QuPath TMA grid file (``.qptma``, :func:`qdmed.imaging._tma.read_qptma`). In a file
    of TMA cores and annotations together, the class picks the annotations and every core
    is kept.

    Raises
    ------
    FileFormatError
        Not JSON, or a Feature with a malformed geometry (the feature is named).
    InputError
        No Polygon or MultiPolygon is left to select cells with.
    """
    p = Path(path)
    if p.suffix.lower() == ".qptma":  # QuPath's TMA grid file: its cores
        from qdmed.imaging._tma import read_qptma

        doc = read_qptma(p)
    else:
        try:
            doc = json.loads(p.read_text(encoding="utf-8-sig"))  # (a BOM: Windows editors)
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
    # with annotations beside TMA cores (tumour drawn inside them), the class picks the
    # annotations and every core is kept; in a file of cores alone it picks cores
    annotated = any(isinstance(f, dict) and isinstance(f.get("properties") or {}, dict)
                    and _region_kind(f, f.get("properties") or {}) == "annotation"
                    for f in feats)
    polys, classes, labels, kinds, missing = [], [], [], [], []
    order: list = []  # every region (present or missing) once, in file order
    centres: dict = {}
    core_features: dict[str, int] = {}
    skipped = 0
    lines: dict[str, int] = {}  # geometry type -> annotations of lines or points only
    derived: dict[str, int] = {}  # class derived from region_class -> features
    seen_classes: set = set()  # of the regions the class picks from (said when none match)
    for i, f in enumerate(feats):
        where = f"{p}: feature {i}"
        if not isinstance(f, dict):
            raise FileFormatError(f"{where} is not an object")
        props = f.get("properties") or {}
        if not isinstance(props, dict):
            raise FileFormatError(f"{where}: 'properties' is not an object")
        kind = _region_kind(f, props)
        if kind is None:
            skipped += 1
            continue  # cells, detections, tiles: objects, not regions
        name = _class_name(props.get("classification"))
        if kind == "annotation" or not annotated:
            seen_classes.add(name)
        if region_class is not None and name != region_class and not (
                kind == "tmacore" and annotated):
            if name is not None and region_class in name.split(": "):
                derived[name] = derived.get(name, 0) + 1
            continue
        label = props.get("name")
        label = label.strip() if isinstance(label, str) and label.strip() else None
        if kind == "tmacore" and label is not None:
            if label in core_features:  # a TMA grid names each core once
                raise InputError(f"{p}: TMA core name {label!r} is used by features "
                                 f"{core_features[label]} and {i}; core names must be unique")
            core_features[label] = i
        key = label if label is not None else ("unnamed", i, name)
        if key not in order:
            order.append(key)
        geoms = _polygons(f.get("geometry") or {}, where)
        if not geoms and f.get("geometry"):
            shape = _geometry_types(f["geometry"])
            if shape:  # lines or points: they enclose no cell (an empty geometry says nothing)
                lines[shape] = lines.get(shape, 0) + 1
        for j, poly in enumerate(geoms):
            if not isinstance(poly, list) or not poly:
                raise FileFormatError(f"{where}: polygon {j} has no rings")
        if geoms and key not in centres:
            ext = _ring(geoms[0][0], f"{where}, polygon 0")
            ext = ext[:-1] if len(ext) > 3 and np.array_equal(ext[0], ext[-1]) else ext
            centres[key] = (float(ext[:, 0].mean()), float(ext[:, 1].mean()))
        if props.get("isMissing") is True or str(props.get("isMissing")).lower() == "true":  # QuPath's flag of a core lost from the section
            missing.append(key)  # (qdmed's dearrayer writes it on annotations too)
            continue
        for j, poly in enumerate(geoms):
            polys.append(tuple(_ring(r, f"{where}, polygon {j}") for r in poly))
            classes.append(name)
            labels.append(key)
            kinds.append(kind)
    # unnamed regions: named by their class and their order among that class's ("Tumor 1",
    # "Tumor 2", "Stroma 1"), "region <n>" by their order among the regions when
    # unclassified; never a name any feature of the file uses, read or not (so that a
    # region's name does not depend on region_class)
    used = {k for k in order if isinstance(k, str)} | {
        str(f["properties"]["name"]).strip() for f in feats
        if isinstance(f, dict) and isinstance(f.get("properties"), dict)
        and isinstance(f["properties"].get("name"), str)}
    auto, n, per_class = {}, 0, {}
    for k in order:
        n += 1
        if not isinstance(k, str):
            cls = k[2]
            if cls:
                per_class[cls] = per_class.get(cls, 0) + 1
            name = f"{cls} {per_class[cls]}" if cls else f"region {n}"
            while name in used:
                name += "'"
            auto[k] = name
            used.add(name)
    order = [auto.get(k, k) for k in order]
    labels = [auto.get(k, k) for k in labels]
    missing = [auto.get(k, k) for k in missing]
    centers = tuple((auto.get(k, k), *xy) for k, xy in centres.items())
    # the classes there are, for a class that matched none (a review: "Tumour" against a
    # file of "Tumor" was refused without them)
    known = ", ".join(sorted(repr(c) for c in seen_classes if c)) or "none classified"
    if not polys:
        what = (f" classified {region_class!r} (the file's classes: {known})"
                if region_class is not None else "")
        extra = (f", {skipped} of them cells, detections or other objects that are not "
                 "regions" if skipped else "")
        if lines:
            extra += (f"; {sum(lines.values())} annotation(s) of lines or points only, which "
                      "enclose no cell")
        if missing:
            extra += f"; all {len(missing)} regions read are marked missing (isMissing)"
        raise InputError(f"{p}: no Polygon or MultiPolygon annotation{what} to select cells "
                         f"with ({len(feats)} features read{extra}).")
    if region_class is not None and annotated and all(k == "tmacore" for k in kinds):
        raise InputError(f"{p}: no annotation classified {region_class!r} (the "
                         f"annotations' classes: {known}; beside TMA cores "
                         f"the class picks the annotations, e.g. tumour inside the cores; "
                         f"{len(set(labels) | set(missing))} TMA core(s) read, kept whatever "
                         "their class)")
    notes = []
    if lines:
        said = ", ".join(f"{n} {k}" for k, n in sorted(lines.items()))
        notes.append(f"{p}: {sum(lines.values())} annotation(s) of lines or points only "
                     f"({said}) left out: they enclose no cell; only areas (Polygon, "
                     "MultiPolygon) select cells")
    if derived:
        said = ", ".join(f"{k!r} ({n})" for k, n in sorted(derived.items()))
        notes.append(f"{p}: the class {region_class!r} is matched exactly, so the annotations "
                     f"of the classes derived from it are left out: {said}; give one of them "
                     "as the class (region_class, --region-class) to score it")
    return Regions(source=str(p), polygons=tuple(polys), classes=tuple(classes),
                   labels=tuple(labels), kinds=tuple(kinds), missing=tuple(missing),
                   order=tuple(order), centers=centers, notes=tuple(notes))


def _geometry_types(geom) -> str:
    """The GeoJSON type of a geometry holding no area (``"LineString"``, ``"Point"``; a
    GeometryCollection's members' types joined by "+"), "" for anything else."""
    if not isinstance(geom, dict):
        return ""
    kind = geom.get("type")
    if kind == "GeometryCollection" and isinstance(geom.get("geometries"), list):
        return "+".join(sorted({_geometry_types(g) for g in geom["geometries"]} - {""}))
    return kind if kind in ("LineString", "MultiLineString", "Point", "MultiPoint") else ""


def region_warnings(reg: Regions | None, tumour: Regions | None,
                    region_class: str | None) -> list[str]:
    """What the analyses say about the regions read: their files' :attr:`Regions.notes`
    (lines or points left out, derived classes not matched), and :func:`mixed_classes_warnings`."""
    notes = [n for r in (reg, tumour) if r is not None for n in r.notes]
    return list(dict.fromkeys(notes)) + mixed_classes_warnings(reg, region_class)


def mixed_classes_warnings(reg: Regions | None, region_class: str | None) -> list[str]:
    """A warning when the annotations scored as regions carry several classes and no
    ``region_class`` picks one: QuPath exports a slide's tumour and stroma annotations
    together, and every one is scored and pooled in the slide's result (a review: stroma
    then scored as tumour, 2300 cells for 1215, unsaid). TMA cores are not classes."""
    if reg is None or region_class is not None:
        return []
    found = sorted({str(c) for c, k in zip(reg.classes, reg.kinds, strict=True)
                    if c is not None and k != "tmacore"})
    if len(found) < 2:
        return []
    return [f"the regions ({reg.source}) carry several classes ({', '.join(found)}) and all "
            "are scored, pooled in the slide's result: give the class to score "
            "(region_class, --region-class), e.g. the tumour's"]


def regions_and_tumour(regions, tumour_regions=None, region_class: str | None = None
                       ) -> tuple[Regions | None, Regions | None]:
    """The regions to score and the tumour to narrow them down to, from the files a user
    gives: ``regions`` alone (``region_class`` picks its annotations); ``regions`` and a
    separate ``tumour_regions`` file (the class then picks the tumour annotations); or one
    file of TMA cores and annotations together (the cores are the regions, the annotations
    the tumour). Tumour annotations of several classes need ``region_class`` to say which.

    Raises
    ------
    InputError
        ``tumour_regions`` without ``regions``, a tumour given twice, a tumour file of TMA
        cores only, or tumour annotations of several classes and no ``region_class``.
    """
    if regions is None:
        if tumour_regions is not None:
            raise InputError("tumour_regions narrows the regions down (e.g. the tumour inside "
                             "TMA cores): give the regions too, or give the tumour "
                             "annotations as the regions")
        return None, None
    reg = read_regions(regions, None if tumour_regions is not None else region_class)
    tumour = None
    if tumour_regions is not None:
        tumour = read_regions(tumour_regions, region_class)
        if tumour.is_tma:
            raise InputError(f"tumour_regions {tumour_regions}: holds TMA cores only; the "
                             "tumour is given by annotations")
        if tumour.mixes_cores_and_annotations:
            tumour = tumour.subset(cores=False)
    if reg.mixes_cores_and_annotations:
        if tumour is not None:
            raise InputError(f"{regions} holds TMA cores and annotations, and tumour_regions "
                             "are given too: give the tumour in one place")
        reg, tumour = reg.subset(cores=True), reg.subset(cores=False)
    if tumour is not None and region_class is None and len(set(tumour.classes)) > 1:
        names = ", ".join(sorted(str(c) for c in set(tumour.classes)))
        raise InputError(f"the annotations that narrow the regions down carry several classes "
                         f"({names}): give the tumour's (region_class, --region-class), so "
                         "that stroma or necrosis is not scored as tumour")
    return reg, tumour
