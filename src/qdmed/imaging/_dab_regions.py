"""Conventional DAB IHC of a brightfield slide's regions, one by one: the TMA of the same
cases stained by DAB, scored core by core and case by case, so that QD-IHC and conventional
IHC can be set side by side per patient (``qdmed image compare cases.csv dab/cases.csv
--key case``), as the QD-IHC TMA studies compared them (Chen C et al., Int J Nanomedicine 9,
1039-1048, 2014, doi:10.2147/IJN.S58270).

Each region (TMA core) is cut from the slide with a margin, its cells are found and scored
by :func:`qdmed.imaging.score_dab` (colour deconvolution, nuclei on haematoxylin, per-cell
membrane DAB OD), and the cells whose centroid lies in it are scored by the ASCO/CAP-style
HER2 rule with the OD cut-offs as intensity classes: the same rule, region table and case
rules as for QD signal (:mod:`qdmed.imaging._region_scores`). Memory is that of one core.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from qdmed.errors import InputError

__all__ = ["analyze_dab_regions"]

#: Glass kept around each region's bounding box, um: cells at its edge are segmented whole.
MARGIN_UM = 15.0


def _polygon_boxes(reg) -> list[tuple[int, str, tuple[float, float, float, float]]]:
    """Per polygon: its index, its region's name and (x_min, x_max, y_min, y_max) of its
    exterior ring, QuPath coordinates (each piece of a region is cut on its own, so that a
    region in far-apart pieces is never one huge crop)."""
    return [(i, label, (float(r[0][:, 0].min()), float(r[0][:, 0].max()),
                        float(r[0][:, 1].min()), float(r[0][:, 1].max())))
            for i, (r, label) in enumerate(zip(reg.polygons, reg.labels, strict=True))]


#: Largest overview (pixels) read to estimate stain vectors or the white level of a slide.
MAX_OVERVIEW_PIXELS = 4096 * 4096


def _overview(img) -> np.ndarray:
    """The slide's first pyramid level of at most MAX_OVERVIEW_PIXELS (its smallest, else
    level 0 subsampled), as an (Y, X, 3) array."""
    from qdmed.imaging._slideio import small_level

    pick = small_level(img, MAX_OVERVIEW_PIXELS)[2]
    return np.asarray(pick.compute() if hasattr(pick, "compute") else pick)


def analyze_dab_regions(slide, regions, out_dir, *, od_cutoffs, stain_matrix="ruifrok",
                        region_class: str | None = None, tumour_regions=None, tma_map=None,
                        case_rule: str = "pooled", min_cells: int = 100,
                        pixel_size_um: float | None = None, marker: str = "HER2",
                        background=1.0, progress: bool = True) -> dict[str, Any]:
    """Score a brightfield H-DAB slide region by region (TMA cores, or named annotations).

    Parameters
    ----------
    slide : path or SlideImage
        An 8-bit RGB brightfield slide (TIFF, OME-TIFF, OME-Zarr).
    regions : path
        The regions (GeoJSON, or a QuPath ``.qptma`` TMA grid; :func:`read_regions`), e.g.
        the cores that :func:`find_tma_cores` found on this slide. A file of TMA cores and
        annotations together scores each core on its cells in the annotations.
    out_dir : path
        Gets ``cells.parquet`` (every cell of the regions, with ``region``, ``dab_class``
        and, with a map, ``case``), ``regions.csv``, ``cases.csv`` (with a map) and
        ``summary.json``.
    od_cutoffs : (t1, t2, t3), OD
        Membrane DAB OD cut-offs of the 1+, 2+ and 3+ classes (:func:`score_dab`; calibrate
        them on control tissue: no default is shipped).
    stain_matrix, region_class, tumour_regions, tma_map, case_rule, min_cells
        As for :func:`score_dab` and :func:`qdmed.imaging.analyze_slide`. 'macenko'
        estimates the stain vectors once, on the slide's overview (a pyramid level of at
        most 4096^2 px), and scores every region with them (per region, a core without DAB
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

    Returns
    -------
    dict
        The summary (also ``summary.json``): ``regions_scored`` and ``cases_scored`` as an
        analysed QD slide's, the parameters and the qdmed version.

    Raises
    ------
    InputError
        Not an 8-bit RGB slide, bad cut-offs, options or files.
    """
    import pandas as pd

    from qdmed import __version__
    from qdmed.imaging._analyze import _progress
    from qdmed.imaging._brightfield import check_od_cutoffs, score_dab
    from qdmed.imaging._region_scores import (
        assign_regions,
        check_min_cells,
        load_tma_map,
        score_slide_regions,
    )
    from qdmed.imaging._regions import Regions, regions_and_tumour
    from qdmed.imaging._scoring import Her2Calibration
    from qdmed.imaging._slideio import read_slide
    from qdmed.report import atomic_write_parquet, atomic_write_text, to_jsonable

    t0 = time.perf_counter()
    cut = check_od_cutoffs(od_cutoffs)
    min_cells = check_min_cells(min_cells)
    tma_map, map_source = load_tma_map(tma_map, case_rule)
    from qdmed.imaging._scoring import MarkerGate
    from qdmed.imaging._synthetic import list_markers

    known = list_markers()
    if marker not in known or marker == "DAPI":
        raise InputError(f"marker {marker!r} is not a DAB antigen qdmed knows; accepted: "
                         f"{', '.join(m for m in known if m != 'DAPI')}")
    compartment = known[marker].compartment
    reg, tumour = regions_and_tumour(regions, tumour_regions, region_class)
    img = slide if hasattr(slide, "read_region") else read_slide(slide)
    name = Path(getattr(img, "path", slide)).name
    if img.dtype != np.uint8 or img.shape[-1] != 3:
        raise InputError(f"{name}: DAB IHC needs an 8-bit RGB brightfield slide; got "
                         f"{img.shape[-1]} channels of {img.dtype}")
    warnings = []
    if pixel_size_um is not None and not (isinstance(pixel_size_um, float | int)
                                          and pixel_size_um > 0):
        raise InputError(f"pixel_size_um must be a positive number (um); got "
                         f"{pixel_size_um!r}")
    ps = pixel_size_um or img.pixel_size_um
    if not ps:
        ps = 0.5
        warnings.append("the slide declares no pixel size: 0.5 um/px assumed")
    default_white = not isinstance(background, str) and np.all(np.asarray(background) == 1.0)
    if isinstance(stain_matrix, str) and stain_matrix == "macenko" or \
            isinstance(background, str) or default_white:
        overview = _overview(img)
        if isinstance(background, str):
            from qdmed.imaging._brightfield import _background

            background = tuple(float(v) for v in _background(background, overview))
        if isinstance(stain_matrix, str) and stain_matrix == "macenko":
            from qdmed.imaging._brightfield import estimate_stain_vectors

            stain_matrix = estimate_stain_vectors(overview, background=background)
        if default_white:  # once for the slide, not once per region
            from qdmed.imaging._brightfield import glass_warnings

            warnings += glass_warnings(overview, None if isinstance(stain_matrix, str)
                                       else stain_matrix)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    h, w = img.shape[:2]
    margin = MARGIN_UM / ps
    tables = []
    boxes = _polygon_boxes(reg)
    with _progress(progress, len(boxes), 0, "regions") as advance:
        for i, label, (x0, x1, y0, y1) in boxes:
            # QuPath coordinates are pixel index + 0.5
            ya, yb = max(int(np.floor(y0 - 0.5 - margin)), 0), min(int(np.ceil(y1 + margin)), h)
            xa, xb = max(int(np.floor(x0 - 0.5 - margin)), 0), min(int(np.ceil(x1 + margin)), w)
            if yb - ya < 8 or xb - xa < 8:
                advance()
                continue
            crop = np.asarray(img.read_region(ya, yb, xa, xb))
            sc = score_dab(crop, od_cutoffs=cut, pixel_size_um=ps, stain_matrix=stain_matrix,
                           compartment=compartment, background=background, check_glass=False)
            cells = sc.cells.copy()
            cells["centroid_x"] += xa
            cells["centroid_y"] += ya
            for ax in ("x", "y"):
                if f"centroid_{ax}_um" in cells:
                    cells[f"centroid_{ax}_um"] = cells[f"centroid_{ax}"] * ps
            # a cell belongs to the piece whose crop found it, if its centroid lies in it
            piece = Regions(source=reg.source, polygons=(reg.polygons[i],), classes=(None,),
                            labels=(label,))
            cells["region"] = label
            tables.append(cells[piece.contains_cells(cells) if len(cells) else
                                np.zeros(0, bool)])
            advance()
    cells = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(
        {"centroid_x": [], "centroid_y": [], "dab_class": []})
    if len(cells):  # pieces of one region that overlap find their shared cells twice
        cells = cells.loc[~cells[["region", "centroid_x", "centroid_y"]].round(1)
                          .duplicated()].reset_index(drop=True)
    cells = cells.drop(columns="region", errors="ignore")
    cells["cell_id"] = np.arange(len(cells), dtype=np.int64)  # unique over the slide
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
        her2_calibration=cal, gates=gates, pixel_size_um=ps, min_cells=min_cells)
    atomic_write_parquet(out / "cells.parquet", cells)
    summary = {"qdmed_version": __version__, "slide": str(getattr(img, "path", slide)),
               "kind": "DAB IHC (brightfield)", "n_cells": int(len(cells)),
               "n_scored": int(len(scored)), "pixel_size_um": ps,
               "parameters": {"regions": str(regions), "region_class": region_class,
                              "tumour_regions": None if tumour_regions is None
                              else str(tumour_regions),
                              "od_cutoffs": list(cut), "stain_matrix": stain_matrix
                              if isinstance(stain_matrix, str) else
                              np.asarray(stain_matrix).tolist(),
                              "background": np.broadcast_to(np.asarray(
                                  background, dtype=float), (3,)).tolist(),
                              "marker": marker, "compartment": compartment,
                              "tma_map": map_source, "case_rule": case_rule,
                              "min_cells": min_cells, "margin_um": MARGIN_UM},
               "regions_scored": by_region, "cases_scored": by_case, "warnings": warnings,
               "elapsed_s": round(time.perf_counter() - t0, 2)}
    atomic_write_text(out / "summary.json", json.dumps(to_jsonable(summary), indent=1))
    return to_jsonable(summary)
