"""Conventional DAB IHC of a brightfield slide's regions, one by one: the TMA of the same
cases stained by DAB, scored core by core and case by case, so that QD-IHC and conventional
IHC can be set side by side per patient (``qdmed image compare cases.csv dab/cases.csv
--key case``), as the QD-IHC TMA studies compared them (Chen C et al., Int J Nanomedicine 9,
1039-1048, 2014, doi:10.2147/IJN.S58270).

Each region (TMA core) is cut from the slide with a margin, its cells are found and scored
by :func:`qdmed.imaging.score_dab` (colour deconvolution, nuclei on haematoxylin, per-cell
membrane DAB OD), and the cells whose centroid lies in it are scored by the ASCO/CAP-style
HER2 rule with the OD cut-offs as intensity classes: the same rule, region table and case
rules as for QD signal (:mod:`qdmed.imaging._region_scores`). A whole section, or a
region larger than a tile, is cut into tiles; memory is that of one crop (a core, a tile).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from qdmed.errors import InputError, UnknownNameError

__all__ = ["analyze_dab_regions"]

#: Slide read around each crop (a region's bounding box, or a tile of it), um: the nuclei
#: (up to 400 um^2, radius 11 um) and the 5 um expansion of the cells it owns lie inside,
#: with the neighbours they compete with (as analyze_slide's default margin).
MARGIN_UM = 40.0


def _polygon_boxes(reg) -> list[tuple[int, str, tuple[float, float, float, float]]]:
    """Per polygon: its index, its region's name and (x_min, x_max, y_min, y_max) of its
    exterior ring, QuPath coordinates (each piece of a region is cut on its own, so that a
    region in far-apart pieces is never one huge crop)."""
    return [(i, label, (float(r[0][:, 0].min()), float(r[0][:, 0].max()),
                        float(r[0][:, 1].min()), float(r[0][:, 1].max())))
            for i, (r, label) in enumerate(zip(reg.polygons, reg.labels, strict=True))]


#: Largest overview (pixels) read to estimate stain vectors or the white level of a slide.
#: (2048^2: ~4 million pixels for the glass's 1 % and Macenko's percentiles; 4096^2 took
#: ~0.9 GB to check the glass.)
MAX_OVERVIEW_PIXELS = 2048 * 2048


def _overview(img) -> np.ndarray:
    """The slide's first pyramid level of at most MAX_OVERVIEW_PIXELS (its smallest, else
    level 0 subsampled), as an (Y, X, 3) array."""
    from qdmed.imaging._slideio import small_level

    pick = small_level(img, MAX_OVERVIEW_PIXELS)[2]
    return np.asarray(pick.compute() if hasattr(pick, "compute") else pick)


#: A piece's bounding box is cut into tiles of at most this (pixels across; each read with
#: its margin), so that memory is that of one tile (~120 bytes per pixel: ~0.7 GB at 2048^2
#: with 40 um margins), whatever the region's size: a whole section, or a tumour
#: annotation across it.
TILE_PX = 2048


def check_tile(tile) -> int:
    """The tile size checked: an integer of at least 256 pixels."""
    if isinstance(tile, bool) or not isinstance(tile, int | np.integer) or tile < 256:
        raise InputError(f"tile must be an integer of at least 256 pixels (--tile); got "
                         f"{tile!r}")
    return int(tile)


def _whole_slide(name: str, h: int, w: int):
    """The slide as one region named after it (QuPath coordinates: its outer pixel edges)."""
    from qdmed.imaging._regions import Regions

    ring = np.array([[0.0, 0.0], [w, 0.0], [w, h], [0.0, h]], dtype=np.float64)
    return Regions(source=name, polygons=((ring,),), classes=(None,), labels=(name,),
                   kinds=("annotation",), order=(name,), centers=((name, w / 2, h / 2),))


def _open(slide):
    """The slide itself, or read from its path (a Dask worker gets the path; what its
    metadata warns of was said when the run opened it: check_chunks=False does not warn
    again, without a warnings filter, which threads would leave set: a review)."""
    from qdmed.imaging._slideio import read_slide

    if hasattr(slide, "read_region"):
        return slide
    return read_slide(slide, check_chunks=False)


def _in_piece(polygon, window, core) -> np.ndarray:
    """A crop's window as booleans: the pixels of its core whose centre lies in the polygon
    piece (the scanline fill of :func:`~qdmed.imaging._rasterize.rasterize_objects`): the
    pixels whose tissue sets the region's threshold."""
    from qdmed.imaging._rasterize import Outlines, rasterize_objects

    ya, yb, xa, xb = window
    cy0, cy1, cx0, cx1 = core
    where = np.zeros((yb - ya, xb - xa), dtype=bool)
    where[cy0 - ya:cy1 - ya, cx0 - xa:cx1 - xa] = rasterize_objects(
        Outlines.from_rings([list(polygon)]), cy0, cy1, cx0, cx1) > 0
    return where


def _crop_histogram(slide, window, core, polygon, ps: float, stain_matrix, background,
                    glass, top: float) -> tuple[np.ndarray, np.ndarray]:
    """The :func:`~qdmed.imaging._brightfield.tissue_histogram` of a crop's pixels in the
    polygon piece and in its core (smoothed with the margin, as in the whole image; glass
    left out): summed over a region's crops, the histogram its threshold is split from;
    and the crop's darkest value per channel (:func:`_darkest`), which tells the scoring
    pass whether it needs to read the crop again."""
    from qdmed.imaging._brightfield import (
        GLASS_OD,
        HIST_BINS,
        deconvolve_dab,
        tissue_histogram,
    )

    ya, yb, xa, xb = window
    rgb = np.asarray(_open(slide).read_region(ya, yb, xa, xb))
    darkest = _darkest(rgb)
    if np.all(_largest_od(darkest, glass) < GLASS_OD * (1 - 1e-9)):
        # glass alone: its smoothed OD (a weighted mean) stays below the tissue cut-off, so
        # tissue_histogram would count nothing (2048^2 of glass: ~1.5 s of deconvolution
        # and smoothing saved)
        return np.zeros((3, HIST_BINS)), darkest
    sep = deconvolve_dab(rgb, stain_matrix=stain_matrix, background=background)
    return (tissue_histogram(rgb, sep, ps, glass, top, _in_piece(polygon, window, core)),
            darkest)


def _darkest(rgb) -> np.ndarray:
    """An RGB image's darkest value of each channel, (3,) in its dtype."""
    return np.asarray(rgb).reshape(-1, 3).min(axis=0)


def _largest_od(darkest, level) -> np.ndarray:
    """Each channel's largest OD over an image against the white level `level`: that of
    its darkest value (:func:`_darkest`; OD falls as the value rises)."""
    from qdmed.imaging._brightfield import _optical_density

    return _optical_density(np.asarray(darkest)[None, None, :],
                            np.asarray(level, dtype=np.float64))[0, 0]


def _no_nucleus_above(darkest, threshold: float, score_kw: dict) -> bool:
    """Whether no pixel of an image whose darkest values are `darkest` can reach the
    haematoxylin OD `threshold`, so that :func:`score_dab` segments no nucleus in it: its
    haematoxylin, OD times the inverse stain matrix's first column, is at most the positive
    weights times each channel's largest OD (the ODs are >= 0), and smoothing (a weighted
    mean) adds nothing. Glass and pale tissue take this way, which skips their
    deconvolution and segmentation."""
    from qdmed.imaging._brightfield import RUIFROK_H_DAB, _background

    m = score_kw["stain_matrix"]
    m = RUIFROK_H_DAB if isinstance(m, str) else np.asarray(m, dtype=np.float64)
    w = np.maximum(np.linalg.inv(m)[:, 0], 0.0)
    bound = float(w @ _largest_od(darkest, _background(score_kw["background"])))
    return bound * (1 + 1e-9) + 1e-12 < threshold  # a margin for rounding


def _score_crop(slide, window, core, piece: int, polygon, label: str, threshold,
                regions_source: str, score_kw: dict, darkest=None, crop_index: int = -1,
                outlines: bool = False):
    """The cells of one crop (:func:`_jobs`): :func:`score_dab` on its window, in slide
    coordinates, kept when their centroid lies in the polygon piece and, for a tile, in its
    core (a cell belongs to the one tile whose core holds its centroid), and when they do
    not reach an edge of the window inside the slide (an object longer than the margin,
    such as a haematoxylin-stained strand, is cut there: the whole image would hold it
    whole); ``piece`` recorded for :func:`_first_piece_owns`. ``threshold`` None: the
    region is this crop alone, its threshold Otsu's split of the same pixels the threshold
    pass would take (:func:`_in_piece`), by score_dab from this read. ``darkest``: the
    crop's darkest values from the threshold pass, when it had one; a crop in which no
    nucleus can reach the threshold (:func:`_no_nucleus_above`) is then not read again.
    Returns (cells, the threshold used, the tissue area in um^2 its split was taken over:
    None when the threshold was given, and with ``outlines`` the kept cells' QuPath
    features, named by their crop-local id: ``crop`` = ``crop_index`` and ``crop_cell``
    key them until the slide's cell ids are given)."""
    from qdmed.imaging._brightfield import score_dab
    from qdmed.imaging._regions import Regions

    ya, yb, xa, xb = window
    slide = _open(slide)
    if threshold is not None and darkest is not None and _no_nucleus_above(
            darkest, threshold, score_kw):
        crop = None  # known from the threshold pass: not read again
    else:
        crop = np.asarray(slide.read_region(ya, yb, xa, xb))
        if threshold is not None and _no_nucleus_above(_darkest(crop), threshold, score_kw):
            crop = None
    if crop is None:  # no cells: the table score_dab gives of a white corner (its columns)
        dt = slide.dtype
        crop = np.full((32, 32, 3), np.iinfo(dt).max if dt.kind in "ui" else 1.0, dt)
    sc = score_dab(crop, check_glass=False, origin_px=(ya, xa),
                   nuclear_threshold="otsu" if threshold is None else threshold,
                   otsu_where=None if threshold is not None else _in_piece(polygon, window,
                                                                         core),
                   **score_kw)
    cells = sc.cells.copy()
    cells["centroid_x"] += xa
    cells["centroid_y"] += ya
    ps = score_kw["pixel_size_um"]
    for ax in ("x", "y"):
        if f"centroid_{ax}_um" in cells:
            cells[f"centroid_{ax}_um"] = cells[f"centroid_{ax}"] * ps
    poly = Regions(source=regions_source, polygons=(polygon,), classes=(None,),
                   labels=(label,))
    keep = poly.contains_cells(cells) if len(cells) else np.zeros(0, bool)
    if len(cells):
        cy, cx = cells["centroid_y"].to_numpy(), cells["centroid_x"].to_numpy()
        # the core decides between tiles of the piece; at the piece's own edges the polygon
        # alone does (a centroid may lie within half a pixel outside the pixels it covers)
        ext = polygon[0]
        lo_y, hi_y, lo_x, hi_x = _pixel_span(ext[:, 1], ext[:, 0])
        keep &= ((cy >= core[0]) | (core[0] <= lo_y)) & ((cy < core[1]) | (core[1] >= hi_y))
        keep &= ((cx >= core[2]) | (core[2] <= lo_x)) & ((cx < core[3]) | (core[3] >= hi_x))
        h, w = slide.shape[:2]
        lab = sc.labels
        edges = [e for e, inner in ((lab[0], ya > 0), (lab[-1], yb < h), (lab[:, 0], xa > 0),
                                    (lab[:, -1], xb < w)) if inner]
        if edges:
            keep &= ~np.isin(cells["cell_id"].to_numpy(), np.concatenate(edges))
    cells["region"] = label
    cells["piece"] = np.int64(piece)
    cells["crop"] = np.int64(crop_index)
    cells["crop_cell"] = cells["cell_id"].astype(np.int64)
    kept = cells[keep]
    feats = []
    if outlines and len(kept):
        from qdmed.imaging._geojson import cell_features

        ids = kept["cell_id"].to_numpy()
        feats = cell_features(sc.labels, sc.nuclei, kept, ids, ids, ya, xa, "")
    return kept, sc.nuclear_threshold_od, sc.tissue_area_um2, feats


def _write_outlines(path, cells, parts, slide_name: str, compartment: str) -> None:
    """cells.geojson of a DAB slide, streamed from its crops' features (``parts``, in crop
    order): each kept cell (``crop``, ``crop_cell`` -> ``cell_id``) named by its cell id
    with QuPath's deterministic UUID, its region (and case) in the metadata, its mean DAB OD in the
    scored compartment among the measurements and its DAB class as the classification, so
    that QuPath shows the classes for review (a review found DAB output without outlines,
    where the QD side has them); cells a piece further up owns are left out, as in
    cells.parquet."""
    from qdmed.imaging._geojson import HER2_COLOURS, cell_uuid, write_feature_collection

    col = f"DAB_{compartment}_mean"
    groups = {int(k): g.set_index("crop_cell") for k, g in cells.groupby("crop")} \
        if len(cells) else {}
    meas = f"DAB: {compartment.capitalize()}: Mean"

    def transform(k, feats):
        g = groups.get(k)
        kept = []
        for f in feats if g is not None else ():
            local = int(f["properties"]["name"])
            if local not in g.index:
                continue
            row = g.loc[local]
            gid = int(row["cell_id"])
            cls = str(row["dab_class"])
            f["id"] = cell_uuid(slide_name, gid)
            props = f["properties"]
            props["name"] = str(gid)
            props["metadata"] = {"cell_id": str(gid), "region": str(row["region"])}
            if isinstance(row.get("case"), str) and row["case"]:  # with a TMA map
                props["metadata"]["case"] = row["case"]
            if np.isfinite(row[col]):
                props["measurements"][meas] = float(row[col])
            props["classification"] = {"name": f"DAB {cls}",
                                       "color": HER2_COLOURS.get(cls, [200, 200, 200])}
            kept.append(f)
        return kept

    write_feature_collection(path, parts, transform=transform)


def _first_piece_owns(cells, reg, pieces):
    """The rows of ``cells`` (with their crop's ``piece``) whose centroid's first
    containing polygon, in file order, among the scored ``pieces`` (indices of
    ``reg.polygons``; a piece too small to crop scores nothing and claims nothing) is that
    piece: a cell in two overlapping pieces of one region, or in two overlapping regions,
    is counted once, where :func:`~qdmed.imaging._region_scores.assign_regions` puts it."""
    from qdmed.imaging._regions import Regions

    if not len(cells):
        return cells
    pieces = sorted(set(pieces))
    owners = Regions(source=reg.source, polygons=tuple(reg.polygons[i] for i in pieces),
                     classes=(None,) * len(pieces), labels=tuple(str(i) for i in pieces))
    k = owners.region_index_cells(cells)
    owner = np.where(k >= 0, np.asarray(pieces + [-1])[k], -1)
    return cells[owner == cells["piece"].to_numpy()]


#: Bump when a saved crop's cell table changes, or which cells it holds (a resumed run never
#: mixes formats nor segmentations). 6: nuclei also where Otsu's classes lie 3 SDs and 0.1 OD
#: apart (NUCLEAR_MIN_CONTRAST_OD); 7: membranes shared with a brighter neighbour left to it.
DAB_TILE_FORMAT = 7


def _fingerprint(img, reg, jobs, score_kw, nuclear_threshold_od=None) -> str:
    """Identity of a run's crops: the slide file, the regions' polygons and names, the
    crops and the scoring parameters (finished crops are reused only under the same).
    Not whether outlines are written: they only add a file per crop, and a crop without
    one is scored again when they are asked for (turning them off rescored every crop)."""
    import hashlib

    from qdmed.imaging._slideio import file_ident

    path = Path(img.path).resolve() if getattr(img, "path", None) else None
    polys = hashlib.sha256()
    for poly, label in zip(reg.polygons, reg.labels, strict=True):
        polys.update(label.encode())
        for ring in poly:
            polys.update(np.ascontiguousarray(ring, dtype=np.float64).tobytes())
    doc = {"format": DAB_TILE_FORMAT, "path": str(path),
           "ident": file_ident(path) if path is not None else None,
           "shape": list(img.shape), "polygons": polys.hexdigest(),
           "jobs": [[i, label, list(wd), None if core is None else list(core)]
                    for i, label, wd, core in jobs],
           "score": {k: (np.asarray(v).tolist() if not isinstance(v, str) else v)
                     for k, v in score_kw.items()},
           "nuclear_threshold_od": nuclear_threshold_od}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def _pixel_span(ys, xs) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1), ends excluded: the pixels whose centres lie within the extent of
    QuPath coordinates ``ys``, ``xs`` (pixel index + 0.5 at a pixel's centre). A 2048 px
    square is 2048 pixels, one 2048 px tile (one pixel more on either side made it 2 x 2)."""
    return (int(np.ceil(np.min(ys) - 0.5)), int(np.floor(np.max(ys) - 0.5)) + 1,
            int(np.ceil(np.min(xs) - 0.5)), int(np.floor(np.max(xs) - 0.5)) + 1)


def _even_grid(start: int, stop: int, tile: int) -> list[tuple[int, int]]:
    """[start, stop) cut into the fewest pieces of at most ``tile``, of (nearly) equal size
    (no sliver of a few pixels beside full tiles, each read with a whole margin)."""
    n = -(-(stop - start) // tile)
    edges = [start + (stop - start) * j // n for j in range(n + 1)]
    return list(zip(edges[:-1], edges[1:], strict=True))


def _jobs(img, reg, ps: float, tile: int) -> list:
    """The crops to score: per polygon piece (:func:`_polygon_boxes`), its bounding box cut
    into the fewest core tiles of at most ``tile`` pixels (:func:`_even_grid`; one for a
    TMA core), each read with MARGIN_UM of slide around it. Each job is (piece index,
    region name, window (y0, y1, x0, x1), core (y0, y1, x0, x1))."""
    h, w = img.shape[:2]
    margin = int(np.ceil(MARGIN_UM / ps))
    jobs = []
    for i, label, (x0, x1, y0, y1) in _polygon_boxes(reg):
        ya, yb, xa, xb = _pixel_span(np.array([y0, y1]), np.array([x0, x1]))
        ya, yb, xa, xb = max(ya, 0), min(yb, h), max(xa, 0), min(xb, w)
        if yb - ya < 8 or xb - xa < 8:
            continue
        for cy0, cy1 in _even_grid(ya, yb, tile):
            for cx0, cx1 in _even_grid(xa, xb, tile):
                window = (max(cy0 - margin, 0), min(cy1 + margin, h),
                          max(cx0 - margin, 0), min(cx1 + margin, w))
                jobs.append((i, label, window, (cy0, cy1, cx0, cx1)))
    return jobs


def _thresholds_summary(jobs, thresholds) -> list[dict[str, Any]]:
    """Per region: its crops, how many are tiles of a piece cut in several, and its
    haematoxylin threshold."""
    per_piece: dict[int, int] = {}
    for i, _, _, _ in jobs:
        per_piece[i] = per_piece.get(i, 0) + 1
    out: dict[str, dict[str, Any]] = {}
    for i, label, _, _ in jobs:
        d = out.setdefault(label, {"region": label, "n_crops": 0, "n_tiles": 0,
                                   "hematoxylin_threshold_od": thresholds[label]})
        d["n_crops"] += 1
        d["n_tiles"] += per_piece[i] > 1
    return list(out.values())


#: What a DAB slide's run writes or removes in its output folder, and the files only such a
#: run writes (check_output_folder: a folder holding the first without the second is
#: someone else's).
OUTPUT_NAMES = ("cells.parquet", "cells.geojson", "summary.json", "report.html",
                "regions.csv", "cases.csv", "tiles")
OUTPUT_MARKS = ("tiles/run.json", "summary.json")


def analyze_dab_regions(slide, regions, out_dir, *, od_cutoffs, stain_matrix="ruifrok",
                        region_class: str | None = None, tumour_regions=None, tma_map=None,
                        case_rule: str = "pooled", min_cells: int = 100,
                        pixel_size_um: float | None = None, marker: str = "HER2",
                        background=1.0, tile: int = TILE_PX, n_workers: int | None = 1,
                        scheduler: str | None = None, resume: bool = True,
                        progress: bool = True, outlines: bool = True,
                        nuclear_threshold_od: float | None = None) -> dict[str, Any]:
    """Score a brightfield H-DAB slide region by region (TMA cores, or named annotations),
    or as a whole.

    Parameters
    ----------
    slide : path or SlideImage
        An 8-bit RGB brightfield slide (TIFF, OME-TIFF, OME-Zarr).
    regions : path or None
        The regions (GeoJSON, or a QuPath ``.qptma`` TMA grid; :func:`read_regions`), e.g.
        the cores that :func:`find_tma_cores` found on this slide. A file of TMA cores and
        annotations together scores each core on its cells in the annotations. None: the
        whole slide is one region, named after its file.
    out_dir : path
        Gets ``cells.parquet`` (every cell of the regions, with ``region``, ``dab_class``
        and, with a map, ``case``), ``regions.csv``, ``cases.csv`` (with a map),
        ``summary.json`` and ``report.html`` (the slide's overview with the cells by DAB
        class, the OD histogram against the cut-offs, the tables); ``tiles/`` keeps each
        finished crop's cells, for resuming.
    od_cutoffs : (t1, t2, t3), OD
        Membrane DAB OD cut-offs of the 1+, 2+ and 3+ classes (:func:`score_dab`; calibrate
        them on control tissue: no default is shipped).
    stain_matrix, region_class, tumour_regions, tma_map, case_rule, min_cells
        As for :func:`score_dab` and :func:`qdmed.imaging.analyze_slide`. 'macenko'
        estimates the stain vectors once, on the slide's overview (a pyramid level of at
        most 2048^2 px), and scores every region with them (per region, a core without DAB
        would get a made-up DAB vector).
    background : float, (R, G, B) floats in (0, 1], or 'auto'
        White level (glass transmittance) per channel, as for :func:`score_dab`; 'auto'
        takes it once from the overview's glass.
    pixel_size_um : float, optional
        Overrides the slide's pixel size (um); a slide without one is read at 0.5 um/px
        with a warning.
    marker : str
        The antigen the DAB stains (a marker of :func:`qdmed.imaging.list_markers`). HER2:
        membrane DAB OD by the ASCO/CAP-style HER2 rule. Any other: its compartment's DAB OD
        (nucleus for ER, PR and AR), a cell positive at or above ``t1`` (any staining), the
        percent positive per region and case and, for ER and PR, the ASCO/CAP 2020 status
        (:func:`qdmed.imaging.receptor_status`); ``t1``-``t3`` also give the H-score
        classes of the cells' ``dab_class``.
    tile : int, px
        Each polygon piece's bounding box is cut into the fewest tiles of at most this size
        (:data:`TILE_PX`: a TMA core is one; memory ~120 bytes per pixel of a tile), each
        read with :data:`MARGIN_UM` of slide around it and owning the cells whose centroid
        lies in it; a cell reaching an edge of its window inside the slide (an object longer
        than the margin) is left out. Every region is segmented at one haematoxylin
        threshold whatever its tiling: Otsu's over the tissue inside its polygons (a
        histogram built crop by crop; +inf, no cells, when no nuclei stand out), so the tile size
        changes no threshold. Where pieces or regions overlap, a cell belongs to the first
        polygon holding its centroid (as
        :func:`~qdmed.imaging._region_scores.assign_regions` places it).
    n_workers : int or None
        Score the crops on a local Dask cluster of this many processes (1: in this
        process; None: one per core). Memory is that of ``n_workers`` crops at a time.
    scheduler : str, optional
        Address of a Dask scheduler (``tcp://host:8786``) whose workers score the crops
        (they read the slide by its absolute path); 'synchronous': in this process.
    resume : bool
        Reuse the crops a killed run finished (``tiles/`` in ``out_dir``) when the slide,
        the regions and the parameters are the same; False scores every crop again.
    progress : bool
        Show a progress bar (per crop; the crops of regions in several are read twice:
        for the region's threshold, then for their cells).
    nuclear_threshold_od : float, optional
        The haematoxylin OD that segments nuclei in every region, instead of Otsu's split
        of each region's tissue (which a faint or noisy counterstain may not give: see
        :data:`~qdmed.imaging._brightfield.NUCLEAR_MIN_CONTRAST_OD`).
        Every crop is then read twice: first for its tissue area.

    Returns
    -------
    dict
        The summary (also ``summary.json``): ``regions_scored`` and ``cases_scored`` as an
        analysed QD slide's; ``thresholds``, per region its crops, tiles and haematoxylin
        threshold (None: no nuclei stood out); ``n_crops`` and ``n_crops_resumed``; the
        parameters (with the glass level told from tissue) and the qdmed version.

    Raises
    ------
    InputError
        Not an 8-bit RGB slide, bad cut-offs, options or files.
    """
    import pandas as pd

    from qdmed import __version__
    from qdmed.imaging._analyze import (
        _progress,
        check_scheduler,
        close_client,
        run_jobs,
    )
    from qdmed.imaging._brightfield import (
        HIST_BINS,
        check_od_cutoffs,
        hematoxylin_top,
        histogram_threshold,
    )
    from qdmed.imaging._her2_calibration import Her2Calibration
    from qdmed.imaging._region_scores import (
        assign_regions,
        check_count,
        check_min_cells,
        load_tma_map,
        overlap_warnings,
        score_slide_regions,
    )
    from qdmed.imaging._regions import check_regions_meet, regions_and_tumour
    from qdmed.imaging._slideio import _check_pixel_size, pixel_size_or_default, read_slide
    from qdmed.report import (
        atomic_write_parquet,
        atomic_write_text,
        environment,
        to_jsonable,
    )

    t0 = time.perf_counter()
    cut = check_od_cutoffs(od_cutoffs)
    if nuclear_threshold_od is not None:
        from qdmed.imaging._brightfield import check_nuclear_threshold

        nuclear_threshold_od = check_nuclear_threshold(
            nuclear_threshold_od, "nuclear_threshold_od (--nuclear-threshold)")
    min_cells = check_min_cells(min_cells)
    if regions is None and (tma_map is not None or region_class is not None):
        raise InputError("a TMA map and a region class need regions (the whole slide is "
                         "scored as one region without them)")
    tma_map, map_source = load_tma_map(tma_map, case_rule)
    from qdmed.imaging._brightfield import dab_antigen_compartment
    from qdmed.imaging._scoring import MarkerGate

    compartment = dab_antigen_compartment(marker)
    reg, tumour = regions_and_tumour(regions, tumour_regions, region_class)
    tile = check_tile(tile)
    scheduler = check_scheduler(scheduler, n_workers)
    if n_workers is not None:  # 1 (in this process) unless asked; None: one per core
        check_count(n_workers, "n_workers (--workers)", " (1: in this process)")
    from qdmed.imaging._slideio import check_output_folder, check_same_slide

    check_output_folder(out_dir, [p for p in (getattr(slide, "path", slide), regions,
                                              tumour_regions)
                                  if isinstance(p, (str, os.PathLike))],
                        owned=OUTPUT_NAMES, marks=OUTPUT_MARKS)
    name = Path(getattr(slide, "path", slide)).name
    check_same_slide(out_dir, name, "job_*.parquet", "crop")
    img = slide if hasattr(slide, "read_region") else read_slide(slide)
    if img.dtype != np.uint8 or img.shape[-1] != 3:
        raise InputError(f"{name}: DAB IHC of a slide by tiles or regions needs an 8-bit RGB "
                         f"brightfield slide; got {img.shape[-1]} channels of {img.dtype}"
                         + (": convert it to 8 bits per channel (an image small enough is "
                            "scored whole in memory at 16 bits: qdmed image dab IMAGE, "
                            "score_dab)" if img.shape[-1] == 3 else
                            " (a fluorescence slide is analysed by qdmed image analyze)"))
    if reg is None:
        reg = _whole_slide(name, *img.shape[:2])
    from qdmed.imaging._brightfield import uncalibrated_warnings, unreachable_cutoff_warnings

    ps, warnings = pixel_size_or_default(_check_pixel_size(pixel_size_um)
                                         or img.pixel_size_um,
                                         hint="pixel_size_um, --pixel-size-um",
                                         note=img.pixel_size_note)
    from qdmed.imaging._regions import region_warnings

    warnings = (uncalibrated_warnings(cut) + unreachable_cutoff_warnings(cut, img.dtype)
                + warnings + region_warnings(reg, tumour, region_class))
    from qdmed.imaging._brightfield import _background, _matrix, glass_level, is_default_white

    if isinstance(stain_matrix, str):
        if stain_matrix not in ("ruifrok", "macenko"):
            raise UnknownNameError(f"Unknown stain_matrix {stain_matrix!r}; accepted: "
                                   "'ruifrok', 'macenko' or a (3, 3) array.")
    else:
        stain_matrix = _matrix(stain_matrix)
    if not isinstance(background, str):
        _background(background)  # checked before any pixel is read
    default_white = is_default_white(background)
    glass = None
    # the overview: the white level is read from its glass ('auto') or checked against it
    overview = _overview(img)
    if isinstance(background, str):
        background = tuple(float(v) for v in _background(background, overview))
    else:  # once for the slide, not once per region
        from qdmed.imaging._brightfield import glass_warnings

        warnings += glass_warnings(overview, None if isinstance(stain_matrix, str)
                                   else stain_matrix, background)
    if isinstance(stain_matrix, str) and stain_matrix == "macenko":
        from qdmed.imaging._brightfield import estimate_stain_vectors

        stain_matrix = estimate_stain_vectors(overview, background=background)
    if default_white:  # glass told from tissue by the slide's own glass (below white)
        glass = tuple(float(v) for v in glass_level(overview, 1.0, _background(1.0)))
    if glass is None:
        glass = tuple(float(v) for v in _background(background))
    check_regions_meet(reg, img.shape[:2], name)  # before the output folder is made
    out = Path(out_dir)
    created = not out.exists()  # removed again if the run fails before any crop is done
    out.mkdir(parents=True, exist_ok=True)
    m = None if isinstance(stain_matrix, str) else np.asarray(stain_matrix, dtype=np.float64)
    jobs = _jobs(img, reg, ps, tile)
    off = [n for n in reg.names if n not in {j[1] for j in jobs} and n not in reg.missing]
    if off:  # as analyze says it (its cells lie in no region): a review found no word here
        h, w = img.shape[:2]
        warnings.append(f"{len(off)} of the {len(reg.names)} regions lie outside the slide's "
                        f"{w} x {h} px (or hold under 8 px of it): not scored ("
                        f"{', '.join(off[:5])}{' ...' if len(off) > 5 else ''}; do the "
                        "annotations belong to this slide?)")
    score_kw = dict(od_cutoffs=cut, pixel_size_um=ps, stain_matrix=stain_matrix,
                    compartment=compartment, background=background, glass=glass)
    tiles_dir = out / "tiles"
    tiles_dir.mkdir(exist_ok=True)
    from qdmed.imaging._analyze import _remove_stale_temporaries

    _remove_stale_temporaries(out, tiles_dir)
    fp = _fingerprint(img, reg, jobs, score_kw, nuclear_threshold_od)
    manifest = tiles_dir / "run.json"
    old = json.loads(manifest.read_text()) if manifest.exists() else {}
    if not resume or old.get("fingerprint") != fp:  # no manifest: crops of unknown origin
        for f in [*tiles_dir.glob("job_*"), tiles_dir / "thresholds.json",
                  tiles_dir / "tissue.json"]:
            f.unlink(missing_ok=True)
    # the slide's name: another slide's run into this folder is refused (check_same_slide)
    atomic_write_text(manifest, json.dumps({"fingerprint": fp, "slide": name}))

    def job_file(k):
        return tiles_dir / f"job_{k:06d}.parquet"

    def thr_file(k):  # the threshold a one-crop region's crop took
        return tiles_dir / f"job_{k:06d}.threshold.json"

    def outline_file(k):  # the crop's cells as QuPath features, before their final ids
        return tiles_dir / f"job_{k:06d}.geojson.json"

    # regions of several crops (pieces, tiles) get their threshold from a first pass over
    # all of them; a region of one crop (a TMA core) takes it from the crop's own read. A
    # threshold given: every crop has the first pass, for its region's tissue area
    n_crops = {label: 0 for _, label, _, _ in jobs}
    for _, label, _, _ in jobs:
        n_crops[label] += 1

    def pooled(k):  # whether crop k's region takes its threshold from the first pass
        return nuclear_threshold_od is not None or n_crops[jobs[k][1]] > 1

    shared = [k for k in range(len(jobs)) if pooled(k)]
    shared_file = tiles_dir / "thresholds.json"
    tissue_file = tiles_dir / "tissue.json"  # the tissue area each threshold was split from
    thresholds = None if shared else {}
    tissue_um2: dict[str, float] = {}
    if shared and shared_file.exists():
        thresholds = {r: (np.inf if t is None else t)
                      for r, t in json.loads(shared_file.read_text()).items()}
        if tissue_file.exists():
            tissue_um2 = json.loads(tissue_file.read_text())
    todo = [k for k in range(len(jobs))
            if not (job_file(k).exists() and (pooled(k) or thr_file(k).exists())
                    and (not outlines or outline_file(k).exists()))]
    n_resumed = len(jobs) - len(todo)
    passes = len(todo) + (len(shared) if thresholds is None else 0)
    own_client = cluster = None
    workers = n_workers or os.cpu_count() or 1
    if scheduler != "synchronous" and (scheduler or (workers > 1 and passes > 1)):
        from qdmed.imaging._analyze import start_client

        own_client, cluster = start_client(scheduler, min(workers, passes),
                                           made=out if created else None)
        # absolute path: a worker of a remote cluster has its own working folder
        source = str(Path(img.path).resolve())
    else:
        source = img

    def save(j, result):
        k = todo[j]
        if not pooled(k):
            atomic_write_text(thr_file(k), json.dumps(to_jsonable(
                {"threshold": result[1], "tissue_um2": result[2]})))
        if outlines:
            atomic_write_text(outline_file(k), json.dumps(result[3]))
        atomic_write_parquet(job_file(k), result[0])  # last: marks the crop done

    darkest = {}  # crop -> its darkest values, from the threshold pass
    try:
        with _progress(progress, len(jobs) + len(shared), len(jobs) + len(shared) - passes,
                       "crops") as advance:
            if thresholds is None:
                top = hematoxylin_top(m, background)
                sums = {jobs[k][1]: np.zeros((3, HIST_BINS)) for k in shared}

                def add(j, res):  # summed as they come: one histogram per region held
                    sums[jobs[shared[j]][1]] += res[0]
                    darkest[shared[j]] = res[1]
                run_jobs(_crop_histogram, [(source, jobs[k][2], jobs[k][3],
                                        reg.polygons[jobs[k][0]], ps, m, background, glass,
                                        top) for k in shared], own_client, advance, add)
                thresholds = {r: histogram_threshold(hh, top) if nuclear_threshold_od is None
                              else nuclear_threshold_od for r, hh in sums.items()}
                tissue_um2 = {r: float(hh[0].sum()) * ps * ps for r, hh in sums.items()}
                atomic_write_text(tissue_file, json.dumps(tissue_um2))  # before: resumed
                atomic_write_text(shared_file, json.dumps(to_jsonable(thresholds)))
            run_jobs(_score_crop, [(source, jobs[k][2], jobs[k][3], jobs[k][0],
                                reg.polygons[jobs[k][0]], jobs[k][1],
                                thresholds.get(jobs[k][1]), reg.source, score_kw,
                                darkest.get(k), k, outlines) for k in todo],
                 own_client, advance, save)
    except BaseException:
        from qdmed.imaging._analyze import remove_unstarted

        remove_unstarted(out, created, [shared_file, *map(job_file, range(len(jobs)))])
        raise
    finally:
        close_client(own_client, cluster)
    for k, (_, label, _, _) in enumerate(jobs):
        if not pooled(k):
            d = json.loads(thr_file(k).read_text())
            thresholds[label] = np.inf if d["threshold"] is None else d["threshold"]
            if d.get("tissue_um2") is not None:
                tissue_um2[label] = d["tissue_um2"]
    tables = [pd.read_parquet(job_file(k)) for k in range(len(jobs))]
    cells = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(
        {"centroid_x": [], "centroid_y": [], "dab_class": [], "piece": []})
    del tables
    warnings += overlap_warnings(reg, cells)  # before the first piece takes each cell
    cells = _first_piece_owns(cells, reg, [j[0] for j in jobs]).drop(
        columns=["region", "piece"], errors="ignore")
    cells = cells.reset_index(drop=True)
    # unique over the slide, from 1 as a fluorescence analysis numbers its cells
    cells["cell_id"] = np.arange(1, len(cells) + 1, dtype=np.int64)
    assign_regions(cells, reg, name, tumour=tumour, tma_map=tma_map)
    scored = cells[cells["in_region"].to_numpy()]
    cal = gates = None
    if marker == "HER2":
        cal = Her2Calibration(faint=cut[0], weak_moderate=cut[1], intense=cut[2],
                              marker="DAB", compartment="membrane",
                              rule="explicit DAB OD cut-offs")
    else:  # the antigen's own columns, so that its gate and receptor status read them
        for col in [c for c in cells.columns if c.startswith("DAB_")]:
            cells[marker + col[3:]] = cells[col]
        scored = cells[cells["in_region"].to_numpy()]
        gates = {marker: MarkerGate(compartment, cut[0])}
    by_region, by_case = score_slide_regions(
        cells, scored, reg, name, out, tumour=tumour, tma_map=tma_map, case_rule=case_rule,
        her2_calibration=cal, gates=gates, pixel_size_um=ps, min_cells=min_cells,
        tissue_area_mm2={r: a / 1e6 for r, a in tissue_um2.items()},
        shape_yx=img.shape[:2])
    all_regions = None
    if len(reg.names) > 1 and not (reg.is_tma or reg.named_like_tma) and tma_map is None:
        # annotations of one tumour drawn in pieces: their cells pooled, as a QD slide's
        # scores pool its regions' (a review found no total). Not a TMA's cores, which are
        # patients, nor annotations mapped to cases (cores drawn by hand, a second review)
        from qdmed.imaging._region_scores import _scored_row

        all_regions = _scored_row(
            {"region": "all regions", "status": "ok", "n_cells": int(len(cells)),
             "n_scored": int(len(scored)), "her2_category": None, "message": ""},
            scored if len(scored) else None, "slide", min_cells, cal, gates)
    if outlines:
        _write_outlines(out / "cells.geojson", cells,
                        [outline_file(k) for k in range(len(jobs))], name, compartment)
    else:  # an earlier run's would pass for this one's
        (out / "cells.geojson").unlink(missing_ok=True)
    cells = cells.drop(columns=["crop", "crop_cell"], errors="ignore")
    atomic_write_parquet(out / "cells.parquet", cells)
    summary = {"qdmed_version": __version__, "environment": environment(),
               "slide": str(getattr(img, "path", slide)),
               "kind": "DAB IHC (brightfield)", "n_cells": int(len(cells)),
               "n_scored": int(len(scored)), "pixel_size_um": ps,
               "thresholds": _thresholds_summary(jobs, thresholds),
               "parameters": {"regions": None if regions is None else str(regions),
                              "region_class": region_class,
                              "tumour_regions": None if tumour_regions is None
                              else str(tumour_regions),
                              "od_cutoffs": list(cut), "stain_matrix": stain_matrix
                              if isinstance(stain_matrix, str) else
                              np.asarray(stain_matrix).tolist(),
                              "background": np.broadcast_to(np.asarray(
                                  background, dtype=float), (3,)).tolist(),
                              "background_levels_255": [round(255.0 * float(v), 2) for v in
                                                        np.broadcast_to(np.asarray(
                                                            background, dtype=float), (3,))],
                              "marker": marker, "compartment": compartment,
                              "tma_map": map_source, "case_rule": case_rule,
                              "min_cells": min_cells, "margin_um": MARGIN_UM,
                              "tile_px": tile, "glass": list(glass),
                              "nuclear_threshold_od": "otsu" if nuclear_threshold_od is None
                              else nuclear_threshold_od},
               "regions_scored": by_region, "cases_scored": by_case,
               "all_regions": all_regions, "warnings": warnings,
               "n_crops": len(jobs), "n_crops_resumed": n_resumed,
               "elapsed_s": round(time.perf_counter() - t0, 2),
               "report": str(out / "report.html"),
               "cells_geojson": str(out / "cells.geojson") if outlines else None}
    summary = to_jsonable(summary)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
    from qdmed.imaging._dab_report import write_dab_report

    write_dab_report(summary, out, img, reg)
    return summary
