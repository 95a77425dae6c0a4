"""Tissue microarrays (TMAs): synthetic TMA slides with ground truth, and the cores as
GeoJSON that QuPath and :func:`qdmed.imaging.analyze_slide` read.

A TMA holds cylinders of tissue from many patients (cores of 0.6-2 mm, one patient each) in
a grid on one slide (Kononen J et al., Nat Med 4, 844-847, 1998). QD-IHC cohorts are mostly
read on TMAs (240 patients in Yang XQ et al., Int J Nanomedicine 6, 2265, 2011, and Chen C
et al., Int J Nanomedicine 9, 1039-1048, 2014, doi:10.2147/IJN.S58270), and scored core by
core (:mod:`qdmed.imaging._region_scores`).

Cores are named as QuPath's TMA dearrayer names them by default: row labels A, B, C, ...,
column labels 1, 2, 3, ..., row first, joined by a hyphen ("A-1"; QuPath's
TMADearrayerPluginIJ, labelOrder "Row first"). They are written as QuPath annotations (a
Polygon of the core's ellipse with QuPath's ``isEllipse`` flag) carrying ``name`` and
``isMissing``: QuPath 0.5 and later skip TMA-core objects on import (qupath/qupath#1303), so
annotations are what opens there, and :func:`qdmed.imaging.read_regions` takes any feature
with ``isMissing`` for a TMA core.
"""

from __future__ import annotations

import inspect
import math
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qdmed.errors import InputError

#: Overview resolution of the dearrayer: the slide reduced to at most this many px across
#: (a 40 mm slide at 0.5 um/px -> ~20 um/px: a 0.6 mm core spans ~30 px).
OVERVIEW_PX = 2048

__all__ = ["TmaCores", "cores_geojson", "core_name", "find_tma_cores", "simulate_tma",
           "tma_labels"]

_TAG_TMA = 0x7A  # RNG stream of the core positions


def core_name(row: int, col: int) -> str:
    """QuPath's default TMA core name: row letter (A-Z, then AA, AB, ...), hyphen, column
    number from 1 (``core_name(0, 0) == "A-1"``)."""
    return f"{_row_letters(row)}-{int(col) + 1}"


def _row_letters(row: int) -> str:
    """QuPath's default row label: A-Z, then AA, AB, ... (``_row_letters(26) == "AA"``)."""
    letters = ""
    r = int(row) + 1
    while r:
        r, rem = divmod(r - 1, 26)
        letters = string.ascii_uppercase[rem] + letters
    return letters


def tma_labels(spec: str | Sequence[str], what: str = "labels") -> tuple[str, ...]:
    """Row or column labels of a TMA grid, in QuPath's notation (PathObjectTools.
    parseTMALabelString, used by its dearrayer and ``relabelTMAGrid``): a range of numbers
    ("1-16"; "01-16" keeps the zero padding; "16-1" counts down) or of single letters
    ("A-J", "J-A"), or labels separated by spaces ("A B C E F"). A list or tuple of strings
    is taken as the labels themselves.

    Raises
    ------
    InputError
        Not a string or a sequence of strings, an empty spec or label, a hyphenated token
        that is no range (e.g. "A1-B2", or "A-C,E": commas do not separate labels), a letter
        range mixing cases, or a label given twice.
    """
    if isinstance(spec, str):
        tokens = spec.split()
        if len(tokens) == 1 and "-" in tokens[0]:
            tokens = list(_label_range(tokens[0], what, spec))
    elif isinstance(spec, list | tuple) and all(isinstance(t, str) for t in spec):
        tokens = [t.strip() for t in spec]
    else:
        raise InputError(f"TMA {what} must be a string such as 'A-J', '1-16' or 'A B C E', or "
                         f"a list of strings; got {spec!r}")
    if not tokens or not all(tokens):
        raise InputError(f"TMA {what}: none given, or an empty one ({spec!r}); e.g. 'A-J', "
                         "'1-16' or 'A B C E'")
    seen = set()
    for t in tokens:
        if t in seen:
            raise InputError(f"TMA {what} {spec!r}: the label {t!r} is given twice")
        seen.add(t)
    return tuple(tokens)


#: Most rows or columns a TMA's labels may name (arrays hold up to ~30 x 30 cores; 1000
#: is far past any).
MAX_GRID_LABELS = 1000


def _label_range(token: str, what: str, spec) -> tuple[str, ...]:
    """A QuPath label range ("1-16", "01-16", "A-J", descending too) as its labels."""
    a, _, b = token.partition("-")
    if a.isascii() and b.isascii() and a.isdecimal() and b.isdecimal():
        i, j = int(a), int(b)
        if abs(j - i) >= MAX_GRID_LABELS:  # a review's 1-100000000 ran out of memory
            raise InputError(f"TMA {what} {spec!r}: {abs(j - i) + 1} labels; a TMA has at "
                             f"most {MAX_GRID_LABELS} rows or columns")
        step = 1 if j >= i else -1
        width = len(a) if a.startswith("0") and len(a) > 1 else 0
        return tuple(str(k).zfill(width) for k in range(i, j + step, step))
    if len(a) == len(b) == 1 and a.isascii() and b.isascii() and a.isalpha() \
            and b.isalpha() and a.isupper() == b.isupper():
        step = 1 if b >= a else -1
        return tuple(chr(k) for k in range(ord(a), ord(b) + step, step))
    raise InputError(f"TMA {what} {spec!r}: a range is of numbers ('1-16') or of single "
                     "letters of one case ('A-J'); other labels are separated by spaces "
                     "('A1 A2 B1')")


def _label_spec(labels: Sequence[str]) -> str:
    """Labels written back in :func:`tma_labels` notation: a range where they are one."""
    rng = f"{labels[0]}-{labels[-1]}"
    try:
        if len(labels) > 1 and tma_labels(rng) == tuple(labels):
            return rng
    except InputError:
        pass
    return " ".join(labels)


def _grid_labels(spec, found: int, what: str, default) -> tuple[str, ...]:
    """The labels of ``found`` rows (or columns): ``spec``'s (:func:`tma_labels`), which
    must be as many, or ``default(i)``."""
    if spec is None:
        return tuple(default(i) for i in range(found))
    labels = tma_labels(spec, f"{what} labels")
    if len(labels) == found:
        return labels
    if len(labels) == found + 1:
        hint = (f"the first or the last {what} of the array holds no core at all, and the "
                f"slide cannot tell which: give the labels of the {what}s present, "
                f"'{_label_spec(labels[1:])}' or '{_label_spec(labels[:-1])}'")
    else:
        hint = "check the labels against the grid drawn by qdmed image tma --plot"
    raise InputError(f"{found} {what}(s) of cores found, but {len(labels)} {what} labels "
                     f"given ({spec!r}): {hint}")


def _ellipse_ring(cx: float, cy: float, rx: float, ry: float, n: int = 64) -> list:
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    ring = np.column_stack([cx + rx * np.cos(t), cy + ry * np.sin(t)])
    return np.vstack([ring, ring[:1]]).round(2).tolist()


def cores_geojson(cores: Sequence[dict]) -> dict:
    """TMA cores as a GeoJSON FeatureCollection of QuPath annotations.

    ``cores``: dicts with ``name``, ``center_x``, ``center_y`` and ``radius_px`` (pixel-index
    coordinates, as qdmed's cell centroids; written in QuPath's, +0.5) and optionally
    ``radius_y_px`` (an ellipse), ``missing`` and ``classification``."""
    from qdmed.imaging._geojson import annotation_feature

    feats = []
    for c in cores:
        rx = float(c["radius_px"])
        ry = float(c.get("radius_y_px", rx))
        feats.append(annotation_feature(
            _ellipse_ring(float(c["center_x"]) + 0.5, float(c["center_y"]) + 0.5, rx, ry),
            str(c["name"]), isMissing=bool(c.get("missing", False)),
            classification=str(c["classification"]) if c.get("classification") else None,
            geometry_extra={"isEllipse": True}))
    return {"type": "FeatureCollection", "features": feats}


#: QuPath's TMA grid file (TMADataIO: "Export TMA data" writes it, and dropping it on an
#: open image sets its TMA grid).
QPTMA_SUFFIX = ".qptma"
_QPTMA_COLUMNS = ("Core name", "X", "Y", "Width", "Height", "Present")


def cores_qptma(cores: Sequence[dict], n_rows: int, n_cols: int, *, image_path: str = "",
                image_name: str = "") -> str:
    """TMA cores as QuPath's TMA grid file (``.qptma``), which QuPath reads as a real TMA
    grid (TMA data viewer, per-core measurements), where GeoJSON gives annotations.

    The layout is QuPath's own (qupath-gui-fx TMADataIO.writeTMAData / importDearrayedTMAData):
    the image path and name, a blank line, ``TMA grid width: W`` and ``TMA grid height:
    H``, then a tab-separated table ``Core name, X, Y, Width, Height, Present`` of the cores
    row by row, X and Y the top-left corner of the core's bounding box in QuPath's
    coordinates (pixel index + 0.5 at a pixel's centre). ``cores`` as for
    :func:`cores_geojson`, row-major, ``n_rows * n_cols`` of them."""
    if len(cores) != n_rows * n_cols:
        raise InputError(f"a {n_rows} x {n_cols} TMA grid needs {n_rows * n_cols} cores, "
                         f"missing ones included; got {len(cores)}")
    lines = [image_path, image_name, "", f"TMA grid width: {n_cols}",
             f"TMA grid height: {n_rows}", "\t".join(_QPTMA_COLUMNS)]
    for c in cores:
        rx = float(c["radius_px"])
        ry = float(c.get("radius_y_px", rx))
        name = str(c["name"])
        if "\t" in name or "\n" in name:
            raise InputError(f"TMA core name {name!r}: a tab or line break cannot be written")
        x0 = float(c["center_x"]) + 0.5 - rx
        y0 = float(c["center_y"]) + 0.5 - ry
        lines.append("\t".join([name, f"{x0:.2f}", f"{y0:.2f}", f"{2 * rx:.2f}",
                                f"{2 * ry:.2f}", "false" if c.get("missing") else "true"]))
    return "\n".join(lines) + "\n"


def read_qptma(path) -> dict:
    """The cores of a QuPath TMA grid file (``.qptma``, :func:`cores_qptma`) as a GeoJSON
    FeatureCollection of TMA cores (:func:`cores_geojson`; a core written without
    coordinates is a missing core without geometry), for
    :func:`qdmed.imaging.read_regions`.

    Raises
    ------
    InputError
        Unreadable file.
    FileFormatError
        No grid size, no X/Y/Width/Height columns, a row count other than width x height,
        or a value that is not a number (the line named).
    """
    from qdmed.errors import FileFormatError

    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read TMA grid file {p}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        # QuPath writes the grid in the platform's charset (Windows: cp1252, an image path
        # with an accent; a QuPath user's walk-through): the grid itself is ASCII
        text = raw.decode("cp1252", errors="replace")
        if "TMA grid" not in text:
            raise FileFormatError(f"{p}: not a QuPath TMA grid file (not text)") from None
    lines = text.splitlines()
    size: dict[str, int] = {}
    i = 0
    while i < len(lines) and len(size) < 2:
        for key in ("width", "height"):
            head = f"TMA grid {key}:"
            if lines[i].startswith(head):
                try:
                    size[key] = int(lines[i][len(head):].strip())
                except ValueError:
                    raise FileFormatError(f"{p}, line {i + 1}: {lines[i]!r} is not a grid "
                                          "size") from None
        i += 1
    if len(size) < 2 or min(size.values()) < 1:
        raise FileFormatError(f"{p}: no 'TMA grid width:' and 'TMA grid height:' lines (a "
                              "QuPath .qptma file, File > TMA data > Export, has them)")
    while i < len(lines) and not lines[i].strip():
        i += 1
    if i == len(lines):
        raise FileFormatError(f"{p}: no table of cores after the grid size")
    sep = "\t" if "\t" in lines[i] else ","  # as QuPath's TMAScoreImporter.readCSV
    header = [h.strip() for h in lines[i].split(sep)]
    need = [c for c in ("X", "Y", "Width", "Height") if c not in header]
    if need:
        raise FileFormatError(f"{p}, line {i + 1}: no column {', '.join(need)} (columns: "
                              f"{', '.join(header)})")
    col = {h: k for k, h in enumerate(header)}
    rows = [(n + 1, ln.split(sep)) for n, ln in enumerate(lines[i + 1:], start=i + 1)
            if ln.strip()]
    w, h = size["width"], size["height"]
    if len(rows) != w * h:
        raise FileFormatError(f"{p}: a {h} x {w} grid (height x width) needs {w * h} cores; "
                              f"the table has {len(rows)}")
    feats = []
    for k, (line, vals) in enumerate(rows):
        vals = [v.strip() for v in vals] + [""] * (len(header) - len(vals))
        name = vals[col["Core name"]] if "Core name" in col and vals[col["Core name"]] \
            else core_name(*divmod(k, w))
        present = vals[col["Present"]].lower() != "false" if "Present" in col else True
        box = [vals[col[c]] for c in ("X", "Y", "Width", "Height")]
        if not any(box):  # QuPath writes a core without a region this way
            feats.append({"type": "Feature", "geometry": None,
                          "properties": {"objectType": "annotation", "name": name,
                                         "isMissing": True}})
            continue
        try:
            x0, y0, bw, bh = (float(v) for v in box)
        except ValueError:
            raise FileFormatError(f"{p}, line {line}: X, Y, Width and Height must be numbers; "
                                  f"got {box}") from None
        if not (np.isfinite([x0, y0, bw, bh]).all() and bw > 0 and bh > 0):
            raise FileFormatError(f"{p}, line {line}: a core needs a positive, finite width "
                                  f"and height; got {box}")
        feats += cores_geojson([{"name": name, "center_x": x0 + bw / 2 - 0.5,
                                 "center_y": y0 + bh / 2 - 0.5, "radius_px": bw / 2,
                                 "radius_y_px": bh / 2, "missing": not present}])["features"]
    return {"type": "FeatureCollection", "features": feats}


def _check_grid(rows, cols) -> tuple[int, int]:
    for name, v in (("rows", rows), ("cols", cols)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or not 1 <= v <= 100:
            raise InputError(f"{name} must be an integer from 1 to 100 (cores of the TMA "
                             f"grid); got {v!r}")
    return int(rows), int(cols)


def tma_layout(rows: int, cols: int, *, core_diameter_um: float = 600.0,
               spacing_um: float | None = None, margin_um: float | None = None,
               position_jitter_um: float = 15.0, rotation_deg: float = 0.0,
               pixel_size_um: float = 0.5, missing: Sequence[str] = (), seed: int = 0
               ) -> tuple[tuple[int, int], list[dict[str, Any]]]:
    """Slide shape (px) and cores of a TMA grid: each core's name, row, column, centre and
    radius (px, pixel-index coordinates) and ``missing`` flag. Centres are placed on the
    grid at ``spacing_um`` (default: diameter + 200 um, e.g. 0.6 mm cores 0.8 mm apart as
    a Beecher arrayer spaces them), the grid turned by ``rotation_deg`` (a block mounted
    askew; positive turns the rows from the x axis towards +y), and each centre moved by up
    to ``position_jitter_um`` (seeded), as punched cores never sit exactly on the grid.
    The slide is the grid's bounding box plus ``margin_um`` of glass (default spacing / 2)."""
    rows, cols = _check_grid(rows, cols)
    d = float(core_diameter_um)
    if not (math.isfinite(d) and d > 0):
        raise InputError(f"core_diameter_um must be a positive number; got {core_diameter_um!r}")
    sp = d + 200.0 if spacing_um is None else float(spacing_um)
    jit = float(position_jitter_um)
    if not (math.isfinite(jit) and jit >= 0):
        raise InputError(f"position_jitter_um must be >= 0; got {position_jitter_um!r}")
    if not (math.isfinite(sp) and sp >= d + 2 * jit + 20.0):
        raise InputError(f"spacing_um={spacing_um!r} must leave at least 20 um of glass "
                         f"between cores: >= core_diameter_um + 2 x position_jitter_um + 20 "
                         f"= {d + 2 * jit + 20:g}")
    mg = sp / 2 if margin_um is None else float(margin_um)
    if not (math.isfinite(mg) and mg >= 0):
        raise InputError(f"margin_um must be >= 0; got {margin_um!r}")
    rot = float(rotation_deg)
    if not (math.isfinite(rot) and abs(rot) <= 45):
        raise InputError(f"rotation_deg must be within [-45, 45]; got {rotation_deg!r}")
    names = [core_name(r, c) for r in range(rows) for c in range(cols)]
    missing = (missing,) if isinstance(missing, str) else tuple(missing)
    unknown = sorted(set(missing) - set(names))
    if unknown:
        raise InputError(f"missing cores {unknown} are not in the {rows} x {cols} grid "
                         f"(names {names[0]} .. {names[-1]})")
    rng = np.random.default_rng([int(seed), _TAG_TMA])
    rr, cc = np.divmod(np.arange(rows * cols), cols)
    gy, gx = rr * sp, cc * sp  # um, grid frame
    t = math.radians(rot)
    y = gx * math.sin(t) + gy * math.cos(t)
    x = gx * math.cos(t) - gy * math.sin(t)
    u = rng.random((rows * cols, 2))
    rad, phi = jit * np.sqrt(u[:, 0]), 2 * np.pi * u[:, 1]
    y, x = y + rad * np.sin(phi), x + rad * np.cos(phi)
    lo = d / 2 + mg
    y, x = y - y.min() + lo, x - x.min() + lo
    ps = float(pixel_size_um)
    h = int(math.ceil((y.max() + lo) / ps))
    w = int(math.ceil((x.max() + lo) / ps))
    cores = [{"name": names[i], "row": int(rr[i]), "col": int(cc[i]),
              "center_y": float(y[i] / ps - 0.5), "center_x": float(x[i] / ps - 0.5),
              "radius_px": d / 2 / ps, "missing": names[i] in set(missing)}
             for i in range(rows * cols)]
    return (h, w), cores


#: The example brightfield TMA (:func:`example_brightfield_tma`): 2 x 3 cores 240 px across
#: (120 um at 0.5 um/px), 300 px apart, on white glass.
EXAMPLE_BF_ROWS, EXAMPLE_BF_COLS, EXAMPLE_BF_CORE_PX, EXAMPLE_BF_PITCH_PX = 2, 3, 240, 300
#: Its pixel size (um), and its cores lost and without DAB by default.
EXAMPLE_BF_PIXEL_UM, EXAMPLE_BF_MISSING, EXAMPLE_BF_NO_DAB = 0.5, ("B-2",), ("A-3",)


def example_brightfield_tma(path, *, missing: Sequence[str] = EXAMPLE_BF_MISSING,
                            no_dab: Sequence[str] = EXAMPLE_BF_NO_DAB) -> tuple[Path, dict]:
    """Write an example brightfield H-DAB tissue microarray (8-bit RGB OME-TIFF, 0.5 um/px)
    to try the DAB commands on (dearraying, DAB scoring core by core and case by case): 2 x
    3 cores cut as discs from scikit-image's bundled IHC image (``skimage.data.
    immunohistochemistry()``: real colonic tissue stained with DAB for FHL2 and
    counterstained with haematoxylin), on white glass. ``missing`` cores are left out (lost
    from the section); ``no_dab`` cores keep their haematoxylin only (the DAB of the
    Ruifrok-Johnston deconvolution, ``skimage.color.rgb2hed``, set to 0 and the colour
    recomposed), a DAB-negative core. Returns the path and each core's centre
    ``{name: (y, x)}`` in pixels. An example, not a model: six crops of one 512 px image.

    Raises
    ------
    InputError
        A core name outside the 2 x 3 grid (A-1 ... B-3), or a path that is not a TIFF.
    """
    from skimage.color import hed2rgb, rgb2hed
    from skimage.data import immunohistochemistry

    from qdmed.imaging._slideio import write_ome_tiff

    names = [core_name(r, c) for r in range(EXAMPLE_BF_ROWS) for c in range(EXAMPLE_BF_COLS)]
    for what, given in (("missing", missing), ("no_dab", no_dab)):
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise InputError(f"{what} names cores {unknown} outside the example's 2 x 3 grid "
                             f"({', '.join(names)})")
    if not str(path).lower().endswith((".tif", ".tiff")):
        raise InputError(f"{path}: the example brightfield TMA is written as an OME-TIFF; give "
                         "a path ending in .ome.tif")
    ihc = immunohistochemistry()
    hed = rgb2hed(ihc)
    hed[..., 2] = 0
    plain = (np.clip(hed2rgb(hed), 0, 1) * 255).astype(np.uint8)
    d, pitch = EXAMPLE_BF_CORE_PX, EXAMPLE_BF_PITCH_PX
    img = np.full((EXAMPLE_BF_ROWS * pitch + 60, EXAMPLE_BF_COLS * pitch + 60, 3), 255,
                  np.uint8)
    yy, xx = np.mgrid[:d, :d]
    disc = (yy - (d - 1) / 2) ** 2 + (xx - (d - 1) / 2) ** 2 <= (d / 2) ** 2
    centres = {}
    for r in range(EXAMPLE_BF_ROWS):
        for c in range(EXAMPLE_BF_COLS):
            name = core_name(r, c)
            cy, cx = 180 + pitch * r, 180 + pitch * c
            centres[name] = (cy - 0.5, cx - 0.5)
            if name in missing:
                continue
            src = (plain if name in no_dab else ihc)[100 + 60 * c:100 + 60 * c + d,
                                                     80 + 90 * r:80 + 90 * r + d]
            tile = img[cy - d // 2:cy + d // 2, cx - d // 2:cx + d // 2]
            tile[disc] = src[disc]
    # one RGB plane, as brightfield scans are (QuPath opens it as brightfield H-DAB)
    return write_ome_tiff(path, img, pixel_size_um=EXAMPLE_BF_PIXEL_UM, rgb=True), centres


def simulate_tma(path, *, rows: int, cols: int, presets: Sequence[Any], panel: Any = None,
                 endmembers: Any = None, marker_names: Sequence[str] | None = None,
                 core_diameter_um: float = 600.0,
                 spacing_um: float | None = None, margin_um: float | None = None,
                 position_jitter_um: float = 15.0, rotation_deg: float = 0.0,
                 missing: Sequence[str] = (), **kwargs):
    """Simulate a TMA slide: a grid of round cores, each a tissue of its own preset (a
    patient), written to OME-Zarr like :func:`qdmed.imaging.simulate_slide`.

    Parameters
    ----------
    path : str or path-like
        Destination OME-Zarr folder.
    rows, cols : int
        The grid (cores named "A-1", "A-2", ..., "B-1", ...: :func:`core_name`).
    presets : sequence of preset names or Presets
        One per core in row-major order, or fewer, repeated over the cores in order.
    panel, or endmembers and marker_names
        As in :func:`qdmed.imaging.simulate_field`.
    core_diameter_um, spacing_um, margin_um, position_jitter_um, rotation_deg
        The layout (:func:`tma_layout`).
    missing : sequence of str
        Cores lost from the section (no tissue at their place; flagged missing).
    **kwargs
        Any other parameter of :func:`qdmed.imaging.simulate_slide` (``tile``, ``seed``,
        ``pixel_size_um``, ``cell_density_per_mm2``, noise and detector settings, ...);
        ``tissue_fraction`` < 1 leaves holes in the cores.

    Returns
    -------
    SyntheticSlide
        Its ``truth`` has ``core`` (the cell's core name) and ``params['tma']['cores']``
        lists the cores (name, row, col, centre and radius in px, preset, missing); write
        them for QuPath or an analysis with :func:`cores_geojson`.
    """
    from qdmed.imaging._synthetic import (
        _geometry_params,
        _get_preset,
        _scene_params,
        _write_scene,
        simulate_slide,
    )

    # every option of simulate_slide, with its defaults (one list, kept with that function)
    opts = {k: p.default for k, p in inspect.signature(simulate_slide).parameters.items()
            if p.kind is p.KEYWORD_ONLY and p.default is not p.empty
            and k not in ("panel", "endmembers", "marker_names")}
    unknown = sorted(set(kwargs) - set(opts))
    if unknown:
        raise InputError(f"simulate_tma got unknown parameter(s) {unknown}; accepted: "
                         f"{', '.join(sorted(opts))}")
    opts.update(kwargs)
    if isinstance(presets, str) or not isinstance(presets, Sequence) or not presets:
        raise InputError(f"presets must be a non-empty list of preset names (one per core, "
                         f"repeated in order); got {presets!r}")
    gp = _geometry_params((1, 1), opts["cell_density_per_mm2"], opts["pixel_size_um"],
                          opts["nucleus_radius_um"], opts["cell_radius_um"],
                          opts["membrane_thickness_um"], opts["tissue_fraction"], opts["seed"],
                          opts["junctions"])
    shape, cores = tma_layout(rows, cols, core_diameter_um=core_diameter_um,
                              spacing_um=spacing_um, margin_um=margin_um,
                              position_jitter_um=position_jitter_um,
                              rotation_deg=rotation_deg,
                              pixel_size_um=gp["pixel_size_um"], missing=missing,
                              seed=gp["seed"])
    pres = [_get_preset(presets[i % len(presets)]) for i in range(len(cores))]
    for c, pr in zip(cores, pres, strict=True):
        c["preset"] = pr.name
    present = [i for i, c in enumerate(cores) if not c["missing"]]
    gp["shape"] = shape
    if not present:  # every core missing: glass only
        gp["tissue_fraction"] = 0.0
    gp["discs"] = np.array([[cores[i]["center_y"], cores[i]["center_x"], cores[i]["radius_px"]]
                            for i in present]).reshape(-1, 3)
    sp = _scene_params(pres[0], endmembers, marker_names, opts["channel_names"],
                       opts["autofluorescence"], opts["qd_brightness"],
                       opts["photons_per_unit"], opts["read_noise_e"], opts["gain_adu_per_e"],
                       opts["offset_adu"], opts["photobleaching"], opts["noise"], opts["dtype"],
                       opts["bit_depth"], panel)
    sp["core_presets"] = tuple(pres[i] for i in present) or (pres[0],)
    slide = _write_scene(path, gp, sp, tile=opts["tile"],
                         pyramid_levels=opts["pyramid_levels"],
                         write_labels=opts["write_labels"], overwrite=opts["overwrite"],
                         progress=opts["progress"], extra={"tma": {"rows": rows, "cols": cols,
                                        "core_diameter_um": float(core_diameter_um),
                                        "rotation_deg": float(rotation_deg),
                                        "cores": cores}})
    names = np.array([cores[i]["name"] for i in present] or [""], dtype=object)
    truth = slide.truth
    if "core_index" in truth:
        truth.insert(1, "core", names[truth.pop("core_index").to_numpy()])
    else:
        truth.insert(1, "core", np.array([], dtype=object))
    return slide


@dataclass(frozen=True)
class TmaCores:
    """Cores found on a TMA slide by :func:`find_tma_cores`.

    Attributes
    ----------
    cores : tuple of dict
        Per grid position, row-major: ``name`` ("A-1"), ``row``, ``col``, ``center_x``,
        ``center_y`` and ``radius_px`` (pixel-index coordinates of the full-resolution
        slide), ``area_fraction`` (tissue area over a core's: the median large piece's, or
        ``core_diameter_um``'s when given) and ``missing`` (no tissue found at that grid
        position: its centre is the grid's).
    n_rows, n_cols : int
    core_diameter_um : float
        Median diameter of the cores found (equivalent-area circle).
    pixel_size_um : float
    overview_um_per_px : float
        Resolution of the overview the cores were found on.
    warnings : tuple of str
    rotation_deg : float
        The grid's angle from the image axes (:func:`grid_angle`; positive turns the rows
        from the x axis towards +y).
    brightfield : bool
        Found as brightfield tissue (by optical density) rather than fluorescence.
    """

    cores: tuple
    n_rows: int
    n_cols: int
    core_diameter_um: float
    pixel_size_um: float
    overview_um_per_px: float
    warnings: tuple = ()
    rotation_deg: float = 0.0
    brightfield: bool = False

    @property
    def n_found(self) -> int:
        return sum(not c["missing"] for c in self.cores)

    def to_dict(self) -> dict[str, Any]:
        from qdmed.report import to_jsonable

        return to_jsonable({"n_rows": self.n_rows, "n_cols": self.n_cols,
                            "n_found": self.n_found,
                            "n_missing": len(self.cores) - self.n_found,
                            "core_diameter_um": self.core_diameter_um,
                            "pixel_size_um": self.pixel_size_um,
                            "overview_um_per_px": self.overview_um_per_px,
                            "rotation_deg": self.rotation_deg,
                            "brightfield": self.brightfield,
                            "warnings": list(self.warnings), "cores": list(self.cores)})

    def to_geojson(self) -> dict:
        """The cores as QuPath annotations (:func:`cores_geojson`)."""
        return cores_geojson(self.cores)

    def to_qptma(self, image_path: str = "") -> str:
        """The grid as QuPath's TMA grid file (:func:`cores_qptma`)."""
        return cores_qptma(self.cores, self.n_rows, self.n_cols, image_path=str(image_path),
                           image_name=Path(str(image_path)).name)

    def plot(self, overview=None, ax=None):
        """The grid over the slide overview (as :func:`find_tma_cores` returns it: RGB for
        a brightfield slide): found cores circled and named, missing ones dashed."""
        import matplotlib.pyplot as plt
        from matplotlib.patches import Circle

        if ax is None:
            _, ax = plt.subplots(figsize=(8, 8 * max(self.n_rows, 1) / max(self.n_cols, 1)
                                          if self.n_cols else 6))
        f = self.overview_um_per_px / self.pixel_size_um
        if overview is not None and np.ndim(overview) == 3:  # a brightfield slide, in RGB
            ov = np.asarray(overview, dtype=np.float64)
            ax.imshow(np.clip(ov / (255.0 if ov.max() > 1.0 else 1.0), 0.0, 1.0))
        elif overview is not None:
            ax.imshow(np.log1p(np.maximum(overview, 0)), cmap="gray")
        import matplotlib.patheffects as pe

        for c in self.cores:
            xy = ((c["center_x"] + 0.5) / f - 0.5, (c["center_y"] + 0.5) / f - 0.5)
            ax.add_patch(Circle(xy, c["radius_px"] / f, fill=False,
                                ec="#999999" if c["missing"] else "#ff7f0e",
                                ls="--" if c["missing"] else "-", lw=1))
            # outlined, so that a name reads on pale and dark tissue alike
            ax.text(*xy, c["name"], color="#ff7f0e" if not c["missing"] else "#999999",
                    ha="center", va="center", fontsize=7, fontweight="bold",
                    path_effects=[pe.withStroke(linewidth=2, foreground="black")])
        ax.set_title(f"{self.n_found} cores found, {len(self.cores) - self.n_found} missing "
                     f"({self.n_rows} x {self.n_cols} grid)", fontsize=9)
        ax.set_axis_off()
        ax.autoscale_view()
        if overview is None:
            ax.invert_yaxis()
            ax.set_aspect("equal")
        return ax.figure


def _clusters(values: np.ndarray, gap: float) -> np.ndarray:
    """1-D clustering: sorted values split where consecutive ones are more than ``gap``
    apart; returns each value's cluster index (clusters numbered in increasing order)."""
    order = np.argsort(values)
    breaks = np.concatenate([[0], np.cumsum(np.diff(values[order]) > gap)])
    out = np.empty(values.size, dtype=np.int64)
    out[order] = breaks
    return out


def _steps(diffs: np.ndarray) -> float | None:
    """The grid step from gaps between adjacent rows (or columns): the median of the gaps
    within 1.5x the smallest (a larger gap spans empty lines); None without gaps."""
    if diffs.size == 0:
        return None
    return float(np.median(diffs[diffs <= 1.5 * diffs.min()]))


def _with_empty_lines(labels: np.ndarray, coord: np.ndarray, step: float | None
                      ) -> tuple[np.ndarray, int]:
    """Cluster labels renumbered so that a gap of about k grid steps between adjacent
    clusters leaves k - 1 empty lines (a row or column whose cores were all lost)."""
    n = int(labels.max()) + 1
    if n < 2 or step is None:
        return labels, n
    means = np.array([coord[labels == i].mean() for i in range(n)])
    extra = np.maximum(np.rint(np.diff(means) / step).astype(np.int64) - 1, 0)
    new = np.concatenate([[0], np.cumsum(1 + extra)])
    return new[labels], int(new[-1]) + 1


def grid_angle(y, x) -> float:
    """Angle (rad, within +-pi/4) of a square grid of points from the image axes: the
    circular mean, with period 90 degrees, of the directions to each point's nearest
    neighbour (a grid's neighbours lie along its rows and columns); for two points, the
    direction between them. 0 for fewer than 2 points."""
    from scipy.spatial import cKDTree

    pts = np.column_stack([np.asarray(y, float), np.asarray(x, float)])
    if len(pts) < 2:
        return 0.0
    if len(pts) == 2:
        v = pts[1:] - pts[:1]
    else:
        _, j = cKDTree(pts).query(pts, k=2)
        v = pts[j[:, 1]] - pts
    a = np.arctan2(v[:, 0], v[:, 1])
    return float(np.angle(np.mean(np.exp(4j * a))) / 4.0)


def _join_torn_pieces(lab: np.ndarray, area, cy, cx, d_px: float, least: float
                      ) -> tuple[np.ndarray, dict[int, int]]:
    """The pieces of a core torn into pieces each smaller than ``least`` (px^2, the debris
    limit), relabelled as one: pieces of at least 2 % of a core whose centres lie within
    0.75 core diameters of one another (linked), together ``least`` or more, with every
    centre within a core's radius of their joint centre (debris spread between cores is
    not a core). Returns the labels and {joined label: its number of pieces}.
    (``area``, ``cy``, ``cx``: of labels 1, 2, ...)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    small = np.flatnonzero((area < least) & (area >= 0.02 * math.pi * d_px ** 2 / 4))
    if small.size < 2:
        return lab, {}
    pairs = cKDTree(np.column_stack([cy[small], cx[small]])).query_pairs(
        0.75 * d_px, output_type="ndarray")
    if not len(pairs):
        return lab, {}
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])),
                       shape=(small.size, small.size))
    _, comp = connected_components(graph, directed=False)
    lut = np.arange(int(lab.max()) + 1)
    joined = {}
    for k in np.unique(comp):
        mem = small[comp == k]
        w = area[mem]
        if mem.size < 2 or w.sum() < least:
            continue
        y0, x0 = np.average(cy[mem], weights=w), np.average(cx[mem], weights=w)
        if np.hypot(cy[mem] - y0, cx[mem] - x0).max() > d_px / 2:
            continue
        lut[mem + 1] = mem[0] + 1
        joined[int(mem[0]) + 1] = int(mem.size)
    return (lut[lab] if joined else lab), joined


def _optical_density(rgb: np.ndarray) -> np.ndarray:
    """Summed optical density of an 8-bit brightfield (Y, X, 3) image, glass ~0: tissue
    absorbs, so it stands above the glass as fluorescent tissue does above the dark."""
    return -np.log10(np.clip(rgb, 1.0, 255.0) / 255.0).sum(axis=-1)


#: The core diameters believed (um): TMA needles punch 0.6-2 mm cores; tenfold either way.
MIN_CORE_UM, MAX_CORE_UM = 60.0, 20_000.0


def find_tma_cores(slide, *, core_diameter_um: float | None = None,
                   min_area_fraction: float = 0.2, row_labels=None, col_labels=None,
                   row_first: bool = True, brightfield: bool | None = None
                   ) -> tuple[TmaCores, np.ndarray]:
    """Dearray a TMA slide: find its tissue cores and name them by their place in the grid.

    On an overview of the slide (:data:`OVERVIEW_PX` across at most), tissue is told from
    glass by Otsu's threshold of the smoothed log total signal (N. Otsu, IEEE Trans Syst Man
    Cybern 9, 62-66, 1979, doi:10.1109/TSMC.1979.4310076), closed and hole-filled; each
    connected piece of tissue is a core candidate. The grid comes from the candidates'
    centres: the grid's angle from the image axes is the circular mean (period 90 degrees)
    of the directions to each centre's nearest neighbour (:func:`grid_angle`); in the
    grid's frame, rows are clusters of the centres' y coordinates and columns of their x
    coordinates (a gap of more than half a core diameter starts a new row or column).
    Pieces falling in one grid cell (a core torn in sectioning) are merged; pieces smaller
    than ``min_area_fraction`` of a core (debris) are dropped, unless a few of them lie
    together within one core's extent and reach it together (a core torn into small
    pieces); grid positions without tissue are returned as missing cores at the grid's
    position (fitted by least squares to the whole cores, or to every core when the whole
    ones hold a single row or column), including whole rows or columns without a core inside the
    grid (a gap of k steps between neighbouring rows leaves k - 1 empty ones; warned). A
    first or last row or column lost entirely cannot be seen from the slide: give the array's
    labels (``row_labels``, ``col_labels``), and a grid short of a row or column is refused
    with the labels to give instead. Names follow QuPath's dearrayer: by default row
    letters, column numbers ("A-1", :func:`core_name`); with labels, as QuPath's "Row
    labels", "Column labels" and "Label order".

    Parameters
    ----------
    slide : str, path-like or SlideImage
        A TMA slide (OME-TIFF or OME-Zarr).
    core_diameter_um : float, optional
        The cores' nominal diameter; default: the median of the pieces found (robust when
        most cores are whole).
    min_area_fraction : float
        Pieces smaller than this fraction of a core's area are not cores.
    row_labels, col_labels : str or sequence of str, optional
        The array's row and column labels, top to bottom and left to right
        (:func:`tma_labels`: "A-J", "1-16", "A B C E"); as many as the rows (columns) found.
        Default: A, B, C, ... and 1, 2, 3, ...
    row_first : bool
        Names are row label first ("A-1"; QuPath's "Row first") or column label first
        ("1-A").
    brightfield : bool, optional
        A brightfield slide (e.g. DAB IHC): tissue is found by its optical density,
        ``-log10(I / 255)`` summed over R, G, B, instead of its signal (QuPath's dearrayer
        asks the same, "fluorescence" or not), split from the glass by the triangle
        threshold (G. W. Zack, W. E. Rogers, S. A. Latt, J Histochem Cytochem 25, 741-753,
        1977, doi:10.1177/25.7.70454): pale stroma lies just above the glass, and Otsu's
        threshold cut a synthetic H-DAB core into pieces. Default: an 8-bit slide of 3
        channels.

    Returns
    -------
    (TmaCores, overview)
        The cores, and the overview image they were found on (for :meth:`TmaCores.plot`):
        a brightfield slide's in RGB (0-255, as scanned), a fluorescence slide's smoothed
        log signal.

    Raises
    ------
    InputError
        No tissue, bad parameters, or labels that are not as many as the rows or columns
        found. (A slide without a pixel size is read at 0.5 um/px, with a warning.)
    """
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu, threshold_triangle

    from qdmed.imaging._analyze import slide_overview
    from qdmed.imaging._slideio import pixel_size_or_default, read_slide

    if not (isinstance(min_area_fraction, float | int) and 0 < min_area_fraction < 1):
        raise InputError(f"min_area_fraction must be in (0, 1); got {min_area_fraction!r}")
    if core_diameter_um is not None and not (
            isinstance(core_diameter_um, float | int) and not isinstance(core_diameter_um, bool)
            and MIN_CORE_UM <= core_diameter_um <= MAX_CORE_UM):
        # TMA cores are punched 0.6-2 mm across (a review's 0.001 um gave a 128 x 131 grid)
        raise InputError(f"core_diameter_um must be from {MIN_CORE_UM:g} to {MAX_CORE_UM:g} "
                         f"um (cores are punched 0.6-2 mm across); got {core_diameter_um!r}")
    for flag, v in (("row_first", row_first), ("brightfield", brightfield)):
        if not (isinstance(v, bool) or (flag == "brightfield" and v is None)):
            raise InputError(f"{flag} must be True or False; got {v!r}")
    for spec, what in ((row_labels, "row labels"), (col_labels, "column labels")):
        if spec is not None:
            tma_labels(spec, what)
    img = slide if hasattr(slide, "read_region") else read_slide(slide)
    ps, warnings = pixel_size_or_default(img.pixel_size_um,
                                         note=getattr(img, "pixel_size_note", None))
    if brightfield is None:
        brightfield = bool(img.dtype == np.uint8 and img.shape[-1] == 3)
    if brightfield:  # the RGB overview to show, and its optical density to dearray
        shown, f = slide_overview(img, OVERVIEW_PX, min_px=OVERVIEW_PX, score_fn=np.asarray)
        ov = _optical_density(shown)
    else:
        ov, f = slide_overview(img, OVERVIEW_PX, min_px=OVERVIEW_PX)
        shown = ov
    um_px = f * ps
    sm = ndi.gaussian_filter(np.log1p(np.maximum(ov, 0.0)), sigma=max(1.0, 4.0 / um_px))
    if not np.isfinite(sm).all() or sm.max() - sm.min() < 1e-9:
        raise InputError(f"{getattr(img, 'path', 'the slide')}: no tissue to dearray (the "
                         "overview is uniform)")
    # brightfield glass is one narrow peak at OD ~0 and pale stroma sits just above it, so
    # Otsu's split (which balances the two classes' variances) cuts through the tissue; the
    # triangle threshold is made for a peak with a long tail
    tissue = sm > (threshold_triangle(sm) if brightfield else threshold_otsu(sm))
    glass = sm[~tissue]
    # a slide of glass alone splits its noise in two (classes ~1.6 SD apart): tissue must
    # stand 5 SD of the glass's smoothed signal above it
    if glass.size > 1 and np.median(sm[tissue]) - np.median(glass) < 5 * glass.std():
        raise InputError(f"{getattr(img, 'path', 'the slide')}: no cores found to dearray: "
                         "no part of the slide stands apart from the rest (glass alone, or "
                         "tissue everywhere, as in a whole section rather than a TMA)")
    # closing bridges gaps of a few um between cells of one core (a torn core's pieces are
    # joined by the grid below): wider closing would join neighbouring cores
    tissue = ndi.binary_fill_holes(ndi.binary_closing(
        tissue, structure=np.ones((3, 3), bool), iterations=max(1, int(round(4.0 / um_px)))))
    lab, n = ndi.label(tissue)
    if n == 0:
        raise InputError(f"{getattr(img, 'path', 'the slide')}: no tissue found to dearray")
    idx = np.arange(1, n + 1)
    area = ndi.sum_labels(np.ones_like(lab), lab, idx).astype(float)
    cy, cx = (np.asarray(v) for v in zip(*ndi.center_of_mass(tissue, lab, idx), strict=True))
    if core_diameter_um is None:
        big = area >= 0.25 * area.max()  # debris does not vote
        d_px = 2.0 * math.sqrt(float(np.median(area[big])) / math.pi)
    else:
        d_px = core_diameter_um / um_px
    core_area = math.pi * d_px * d_px / 4.0
    lab, joined = _join_torn_pieces(lab, area, cy, cx, d_px, min_area_fraction * core_area)
    if joined:  # the pieces of a torn core as one
        idx = np.unique(lab[lab > 0])
        area = ndi.sum_labels(np.ones_like(lab), lab, idx).astype(float)
        cy, cx = (np.asarray(v) for v in zip(*ndi.center_of_mass(tissue, lab, idx),
                                              strict=True))
    keep = area >= min_area_fraction * core_area
    if not keep.any():
        raise InputError(f"no tissue piece is as large as {min_area_fraction:g} of a core "
                         f"({d_px * um_px:.0f} um across)")
    boxes = ndi.find_objects(lab)
    area, cy, cx, ids = area[keep], cy[keep], cx[keep], idx[keep]
    big = area >= 0.5 * core_area  # whole cores set the angle; fragments would blur it
    theta = grid_angle(cy[big], cx[big]) if big.sum() >= 3 else grid_angle(cy, cx)
    ct, st = math.cos(theta), math.sin(theta)
    gy, gx = cy * ct - cx * st, cx * ct + cy * st  # centres in the grid's frame
    row = _clusters(gy, d_px / 2)
    col = _clusters(gx, d_px / 2)
    gaps = [np.diff(np.sort([v[line == i].mean() for i in range(int(line.max()) + 1)]))
            for line, v in ((row, gy), (col, gx))]
    both = _steps(np.concatenate(gaps))
    n_before = (int(row.max()) + 1, int(col.max()) + 1)
    row, n_rows = _with_empty_lines(row, gy, _steps(gaps[0]) if gaps[0].size > 1 else both)
    col, n_cols = _with_empty_lines(col, gx, _steps(gaps[1]) if gaps[1].size > 1 else both)
    if (n_rows, n_cols) != n_before:
        warnings.append(f"{n_rows - n_before[0]} row(s) and {n_cols - n_before[1]} column(s) "
                        "without any core inside the grid: kept as missing cores, so that "
                        "the names after them stay in place")
    rl = _grid_labels(row_labels, n_rows, "row", _row_letters)
    cl = _grid_labels(col_labels, n_cols, "column", lambda i: str(i + 1))
    # the grid fitted to the whole cores, centre = origin + row * step_r + col * step_c (least
    # squares): places the missing cores and refines the angle of the nearest-neighbour mean
    design = np.column_stack([np.ones(row.size), row, col]).astype(float)
    fit_on = big if big.sum() >= 3 else np.ones(row.size, bool)
    if np.linalg.matrix_rank(design[fit_on]) < np.linalg.matrix_rank(design):
        # the whole cores span one row (or column) alone: their fit knows no step across
        # (least squares' minimum-norm answer, 0, put a missing core on another row's)
        fit_on = np.ones(row.size, bool)
    coef_y, coef_x = (np.linalg.lstsq(design[fit_on], v[fit_on], rcond=None)[0]
                      for v in (cy, cx))
    if n_cols > 1 and np.unique(col[fit_on]).size > 1:
        theta = math.atan2(coef_y[2], coef_x[2])  # the column step runs along a row
    elif n_rows > 1 and np.unique(row[fit_on]).size > 1:
        theta = math.atan2(-coef_x[1], coef_y[1])
    cores = []
    for r in range(n_rows):
        for c in range(n_cols):
            m = (row == r) & (col == c)
            name = f"{rl[r]}-{cl[c]}" if row_first else f"{cl[c]}-{rl[r]}"
            if not m.any():  # the fitted grid's place
                y = coef_y[0] + r * coef_y[1] + c * coef_y[2]
                x = coef_x[0] + r * coef_x[1] + c * coef_x[2]
                cores.append({"name": name, "row": r, "col": c,
                              "center_y": (y + 0.5) * f - 0.5,
                              "center_x": (x + 0.5) * f - 0.5,
                              "radius_px": d_px / 2 * f, "area_fraction": 0.0,
                              "missing": True})
                continue
            a = float(area[m].sum())  # pieces of one core merged
            y = float(np.average(cy[m], weights=area[m]))
            x = float(np.average(cx[m], weights=area[m]))
            reach = 0.0
            for i in ids[m]:  # the farthest tissue pixel of the core's pieces
                by, bx = boxes[i - 1]
                yy, xx = np.nonzero(lab[by, bx] == i)
                reach = max(reach, float(np.sqrt(((yy + by.start - y) ** 2
                                                  + (xx + bx.start - x) ** 2).max())))
            reach += 0.5
            cores.append({"name": name, "row": r, "col": c,
                          "center_y": (y + 0.5) * f - 0.5, "center_x": (x + 0.5) * f - 0.5,
                          "radius_px": max(reach, d_px / 2) * f,
                          "area_fraction": a / core_area, "missing": False})
            if a > 1.6 * core_area:
                warnings.append(f"core {name}: tissue of {a / core_area:.1f} cores in one piece "
                                "(touching cores, or a smear): check the grid")
            pieces = sum(joined.get(int(i), 1) for i in ids[m])
            if pieces > 1:
                warnings.append(f"core {name}: {pieces} pieces merged (a torn core, or "
                                "neighbours closer than half a diameter)")
    if n_rows * n_cols > 1 and sum(not c["missing"] for c in cores) < 0.5 * n_rows * n_cols:
        warnings.append(f"fewer than half of the {n_rows} x {n_cols} grid positions hold a "
                        "core: is the grid rotated, or is this not a TMA?")
    return TmaCores(tuple(cores), n_rows, n_cols, float(d_px * um_px), float(ps),
                    float(um_px), tuple(warnings), math.degrees(theta), brightfield), \
        (shown if brightfield else sm)
