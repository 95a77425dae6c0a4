"""Cohort analysis: every slide of a folder on one Dask cluster, one table for all slides,
and a per-slide status (a failed slide is reported, not fatal)."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np

from qdmed.errors import InputError, QdmedError
from qdmed.imaging._region_scores import (
    case_map_pairs,
    case_table,
    cases_summary,
    check_case_rule,
    check_min_cells,
    cores_not_in_regions,
    expected_cores,
    load_tma_map,
    map_slide,
    read_case_map,
    receptor_notes,
    region_table,
    score_cases,
    score_fields,
    subtype_field,
)
from qdmed.imaging._slideio import SCAN_SUFFIXES, SLIDE_SUFFIXES, recorded_slide


def find_slides(folder, *, required: bool = False, pattern: str | None = None,
                distinct_stems: bool = True, scans: bool = False) -> list[Path]:
    """Slides directly inside ``folder`` (OME-TIFF/TIFF/QPTIFF files and OME-Zarr folders),
    sorted; ``pattern``: only names matching this shell pattern, case ignored (e.g.
    ``*_component_data.tif`` in an inForm export folder, which also holds composite
    images and segmentation maps); ``required``: InputError when there is none;
    ``distinct_stems``: InputError when two slides share a name stem (their outputs would
    share a folder; a listing that writes nothing passes False); ``scans``: brightfield
    scans (Aperio SVS, Hamamatsu NDPI) too, which a fluorescence cohort leaves out (a
    scan beside its conversion is not a second slide to analyse)."""
    d = Path(folder)
    if d.name.lower().endswith(SLIDE_SUFFIXES) and d.exists():
        raise InputError(f"{str(d)!r} is one slide, not a folder of slides: give the "
                         "folder holding it (one slide is analysed by qdmed image analyze)")
    if not d.is_dir():
        raise InputError(f"cohort folder {str(d)!r} does not exist or is not a folder")
    slides = sorted(p for p in d.iterdir() if _is_slide_name(p.name, pattern, scans))
    if required and not slides:
        below = slides_in_subfolders(d, pattern, scans)
        left = [p.name for p in d.iterdir() if not scans and not p.name.startswith(".")
                and p.name.lower().endswith(SCAN_SUFFIXES)]
        raise InputError(
            f"no slides in {folder} (accepted: "
            f"{', '.join(s for s in SLIDE_SUFFIXES if scans or s not in SCAN_SUFFIXES)}"
            + (f"; matching {pattern!r}" if pattern is not None else "") + ")"
            + (f"; {len(below)} in its subfolders ({', '.join(below[:3])}"
               f"{' ...' if len(below) > 3 else ''}), which a cohort does not enter: give "
               "the subfolder" if below else "")
            + (f"; brightfield scans ({', '.join(left[:3])}) are left out of a fluorescence "
               "cohort (DAB: qdmed image dab)" if left else ""))
    seen: dict[str, str] = {}
    for p in slides if distinct_stems else ():  # outputs go to slides/<stem>/: stems differ
        # compared case aside: on macOS and Windows slides/A and slides/a are one folder
        other = seen.setdefault(slide_stem(p.name).lower(), p.name)
        if other != p.name:
            raise InputError(f"slides {other!r} and {p.name!r} in {folder} share the name "
                             f"{slide_stem(p.name)!r}, and so would share an output folder; "
                             "rename one")
    return slides


def _is_slide_name(name: str, pattern: str | None, scans: bool) -> bool:
    """Whether a folder entry's ``name`` is one :func:`find_slides` takes: a slide's
    suffix (a brightfield scan's only with ``scans``), not hidden, and matching
    ``pattern`` (a shell pattern, case ignored) when one is given."""
    import fnmatch

    low = name.lower()
    return (low.endswith(SLIDE_SUFFIXES) and (scans or not low.endswith(SCAN_SUFFIXES))
            and not name.startswith(".")
            and (pattern is None or fnmatch.fnmatch(low, pattern.lower())))


def slides_in_subfolders(folder, pattern: str | None = None, scans: bool = False,
                         skip=()) -> list[str]:
    """Slides one folder down (``sub/x.ome.zarr``), which :func:`find_slides` does not
    enter: said, so that a cohort does not miss them unsaid (a walk-through's two batches
    in subfolders were left out without a word). ``skip``: folders the run uses otherwise
    (its label images, annotations, output), never said."""
    skipped = {Path(s).resolve() for s in skip if s is not None}
    out = []
    for sub in sorted(Path(folder).iterdir()):
        if not sub.is_dir() or sub.name.startswith(".") or sub.resolve() in skipped or \
                sub.name.lower().endswith(SLIDE_SUFFIXES) or \
                any((sub / f).exists() for f in ("summary.json", "cohort.json")):
            continue  # a slide, or an analysis's output (its unmixed.ome.zarr)
        try:
            names = sorted(q.name for q in sub.iterdir())
        except OSError:
            continue
        out += [f"{sub.name}/{n}" for n in names if _is_slide_name(n, pattern, scans)]
    return out


#: Dask's errors of a cluster gone away (distributed's class names: no import needed).
_CLUSTER_ERRORS = ("ClosedClientError", "CommClosedError", "FutureCancelledError",
                   "CancelledError", "TimeoutError")


def cluster_lost(exc: BaseException, client) -> bool:
    """Whether `exc`, met while `client` (a distributed Client, or None) ran a slide, is the
    cluster going away rather than the slide's fault: a walk-through's killed scheduler
    failed the slide being analysed with a multi-line cancellation and every later slide
    as "could not be read or analysed", blaming the files."""
    if client is None:
        return False
    names = {c.__name__ for c in type(exc).__mro__}
    gone = getattr(client, "status", "running") not in ("running", "connecting")
    return gone or (bool(names & set(_CLUSTER_ERRORS)) and (
        "connection-lost" in str(exc) or "closed" in str(exc).lower()
        or "ClosedClientError" in names or "CommClosedError" in names))


def slide_stem(name: str) -> str:
    """The slide's name without its image suffix (``pt.A.ome.zarr`` -> ``pt.A``)."""
    low = name.lower()
    for suf in SLIDE_SUFFIXES:
        if low.endswith(suf):
            return name[: -len(suf)]
    return name


def regions_file(regions_dir, slide_name: str) -> Path | None:
    """The annotation file of a slide in ``regions_dir``: ``<stem>.geojson``,
    ``<stem>.json`` or ``<stem>.qptma`` (a QuPath TMA grid), the same after ``<stem>.ome``
    (``A.ome.geojson``: an export that strips the last suffix only), or the full slide name
    plus one of them (``A.ome.tif.geojson``, as a QuPath export script that appends to the
    image name writes it, or QuPath's own ``A.ome.tif.qptma``); None if none exists."""
    stem = slide_stem(slide_name)
    for base in dict.fromkeys((stem, f"{stem}.ome", slide_name)):
        for suf in (".geojson", ".json", ".qptma"):
            p = Path(regions_dir) / f"{base}{suf}"
            if p.is_file():
                return p
    return None


def _labels_stem(name: str) -> str:
    """The slide stem a label file is named for: without its image suffix, or without
    ``.geojson``/``.json`` and then the slide's suffix (QuPath names an export after the
    image: ``A.ome.tif.geojson``)."""
    from qdmed.imaging._rasterize import OBJECT_SUFFIXES

    low = name.lower()
    for suf in OBJECT_SUFFIXES:
        if low.endswith(suf):
            return slide_stem(name[: -len(suf)])
    return slide_stem(name)


def failure_message(exc: Exception) -> str:
    """A slide's failure as a table's message: qdmed's own errors as they read; one no check
    foresaw as what was raised and its text (the file named where the error names one)."""
    if isinstance(exc, QdmedError):
        return str(exc)
    where = getattr(exc, "filename", None)
    return (f"could not be read or analysed ({type(exc).__name__}: {exc})"
            + (f" at {where}" if where and str(where) not in str(exc) else ""))


def labels_file(labels_dir, slide, stems=(), what: str = "nuclei") -> Path:
    """The label image of a slide in ``labels_dir``: ``<stem>`` with an image suffix
    (``A.tif``, ``A.ome.zarr``...), else the one ``<stem>_<anything>`` image (cellpose's
    ``A_cp_masks.tif``, ``A_nuclei.tif``) that no longer slide stem among `stems` claims
    (``A_2_cp_masks.tif`` belongs to slide ``A_2``, not ``A``); where there is no such
    image, GeoJSON objects named alike (``A.geojson``, QuPath's ``A.ome.tif.geojson``).
    InputError when there is none, or several; `what` ("nuclei" or "cell") names the
    labels in it. `slide` is the slide's path: the slide itself, kept among its masks, is
    never its own label image, while a mask of the slide's own name in another folder is
    (a review: ``masks/A.ome.tif`` was passed over for slide ``A.ome.tif``)."""
    slide_name = Path(slide).name
    stem = slide_stem(slide_name)
    d = Path(labels_dir)
    own = Path(slide).resolve()
    files = sorted(p for p in d.iterdir() if not p.name.startswith(".")
                   and not (p.name == slide_name and p.resolve() == own))
    longer = [t for t in stems if t != stem and t.startswith(stem + "_")]
    found: list[Path] = []
    # label images first; GeoJSON objects only where a slide has none (a labels folder may
    # also hold annotations)
    for suffixes in (SLIDE_SUFFIXES, (".geojson",)):
        cands = [p for p in files if p.name.lower().endswith(suffixes)]
        names = {p: _labels_stem(p.name) for p in cands}
        exact = [p for p in cands if names[p] == stem]
        found = exact or [p for p in cands if names[p].startswith(stem + "_")
                          and not any(names[p] == t or names[p].startswith(t + "_")
                                      for t in longer)]
        if found:
            break
    if len(found) == 1:
        return found[0]
    if not found:
        raise InputError(f"no {what} label image {stem}.tif (or {stem}_*.tif, .ome.tif, "
                         f".ome.zarr, .geojson...) in {labels_dir}")
    raise InputError(f"several {what} label images for {slide_name} in {labels_dir}: "
                     f"{', '.join(p.name for p in found[:5])}; keep one (nuclei and cell "
                     "masks as separate files go in separate folders)")


#: What a cohort run writes or removes in its output folder, and the files only such a run
#: writes (check_output_folder: a folder holding the first without the second is someone
#: else's; a killed run has removed cohort.json but left its slides' tiles). cohort.csv is
#: no mark: a user's own table of that name made the folder pass for a run's, and was
#: replaced.
OUTPUT_NAMES = ("cohort.csv", "cohort.json", "report.html", "cells.parquet", "regions.csv",
                "cases.csv", "slides")
OUTPUT_MARKS = ("cohort.json", "slides/*/tiles/run.json", "slides/*/summary.json")


def analyze_cohort(folder, panel, out_dir, *, tile=2048, scheduler=None, n_workers=None,
                   her2_calibration=None, gates=None, calibration_scale=None,
                   progress=True, regions_dir=None,
                   region_class: str | None = None, outlines: bool = True,
                   write_unmixed: bool = True, unmixed_keep_bits: int | None = None,
                   autofluorescence: str = "panel",
                   her2_region_um: float = 500.0, her2_region_min_cells: int = 100,
                   saturation_level: float | None = None, offset_adu=None,
                   exclude_flagged: tuple = (), per_region: bool | None = None,
                   region_min_cells: int = 100, tma_map=None,
                   case_rule: str = "pooled", tumour_regions_dir=None,
                   pattern: str | None = None, case_map=None,
                   case_from_name: str | None = None, nuclei_labels_dir=None,
                   labels_channel=None, cell_labels_dir=None,
                   cell_labels_channel=None, labels_downsample: float = 1,
                   settings=None, report: bool = True) -> dict:
    """Analyse all slides of ``folder`` (those matching ``pattern``, see
    :func:`find_slides`); returns the cohort summary (also written as
    ``cohort.json``), with ``cells.parquet`` holding every cell of every slide (column
    ``slide``). The slides run on a local Dask cluster of ``n_workers`` processes, on the
    cluster at ``scheduler`` (an address), or with ``scheduler="synchronous"`` one after
    another in this process.

    With ``regions_dir``, each slide is scored only on the cells inside its annotations,
    ``<regions_dir>/<slide stem>.geojson`` (or ``.json``, or a QuPath TMA grid ``.qptma``;
    :func:`regions_file`), optionally only those of class
    ``region_class`` (see :func:`qdmed.imaging.analyze_slide`); a slide without such a file
    is reported as failed rather than scored on all its cells, so that every score of the
    cohort refers to the same kind of selection. ``outlines``, ``write_unmixed`` (and
    ``unmixed_keep_bits``) and ``autofluorescence`` are passed to :func:`qdmed.imaging.analyze_slide` for every slide (a
    whole-slide unmixed image is several GB: a large cohort may want neither; ``'blind'``
    estimates each slide's own autofluorescence), and so are ``her2_region_um`` and
    ``her2_region_min_cells`` (the HER2 heterogeneity regions; the table gets each slide's
    regional categories and Shannon indices), ``saturation_level`` (the detector's ceiling;
    the table gets each slide's percent of scored cells with saturated pixels) and
    ``offset_adu`` (the detector's offset, subtracted before unmixing),
    ``exclude_flagged`` (quality flags whose cells are left out of the scores), and
    ``per_region`` and ``region_min_cells`` (every region scored on its own, by default when
    the regions are TMA cores: the folder then gets ``regions.csv``, one row per slide and
    region), and ``tma_map`` (:func:`read_tma_map`: the case of each core, per slide; the
    folder then gets ``cases.csv``, one row per case with the scored cells of all its cores,
    on every slide, pooled and scored as one slide, for :func:`compare_her2_tables` with
    ``key='case'``; ``case_rule="highest"`` takes each case's highest-scoring core instead,
    :func:`score_cases`), and ``tumour_regions_dir`` (per slide, the tumour annotations to
    narrow its regions down to, as :func:`analyze_slide`'s ``tumour_regions``).

    ``case_map`` (a CSV of slide,case, :func:`read_case_map`, or its mapping) gives the
    case (patient) of each slide, for cases imaged as several fields or sections:
    ``cases.csv`` then scores every case on the pooled scored cells of its slides, each
    slide weighing by its cells, as the whole tumour is scored (the slides are listed in
    the column ``cores``). Not with a ``tma_map``, whose cases come from cores.
    ``case_from_name`` instead takes each slide's case from its file name: a regular
    expression whose first group (or whole match) is the case, e.g. ``^(.+?)_\\[`` for
    inForm's ``<case>_[x,y]_component_data.tif`` field names.

    ``nuclei_labels_dir`` holds each slide's nuclei segmented elsewhere (cellpose, StarDist,
    Mesmer...), found by :func:`labels_file` (``<stem>.tif`` or e.g. cellpose's
    ``<stem>_cp_masks.tif``) and read as :func:`analyze_slide`'s ``nuclei_labels`` (with
    ``labels_channel``); a slide without one is reported as failed, so that every slide of
    the cohort is segmented the same way. ``cell_labels_dir`` (with nuclei labels) likewise
    holds each slide's whole cells, read as ``cell_labels`` (with ``cell_labels_channel``);
    it may be the nuclei folder itself when each slide has one file with both, as channels
    (Mesmer's nuclear and whole-cell masks). ``labels_downsample``: the label images'
    downsample of their slides, as :func:`analyze_slide` takes it. ``settings``
    (:class:`~qdmed.imaging.AnalysisSettings`, e.g. Poisson maximum-likelihood unmixing or another
    segmentation) apply to every slide, each at its own pixel size unless they give one.
    ``calibration_scale``: the intensity scale of the calibration's controls
    (:func:`~qdmed.imaging.load_calibration`), against which each slide's is checked.
    ``report=False`` writes no HTML report (the cohort's nor the slides')."""
    import pandas as pd

    from qdmed import __version__
    from qdmed.imaging._analyze import (
        AnalysisSettings,
        analyze_slide,
        check_autofluorescence_option,
        check_calibration,
        check_exclude_flagged,
        check_keep_bits,
        check_n_workers,
        check_panel,
        check_region_options,
        check_scheduler,
        check_settings,
        check_unmix_weights,
        close_client,
        membrane_marker_warnings,
        panel_offset,
        scored_cells_of,
        start_client,
        summary_warnings,
    )
    from qdmed.imaging._report import write_cohort_report, write_slide_report
    from qdmed.report import atomic_write_parquet, atomic_write_text, environment

    check_panel(panel)  # once here, not slide by slide (a review: AttributeErrors)
    check_settings(settings)
    membrane_marker_warnings(settings or AnalysisSettings(), panel.components)
    check_autofluorescence_option(autofluorescence, panel)
    check_calibration(panel, her2_calibration, gates, calibration_scale)
    cal_own = {f"calibration: {w}" for w in getattr(her2_calibration, "warnings", ())}
    check_region_options(her2_region_um, her2_region_min_cells)
    from qdmed.imaging._detector import check_level

    check_level(saturation_level)  # bad values are refused before any slide is read
    panel_offset(panel, offset_adu)
    check_unmix_weights(panel, None if settings is None else settings.unmix_weights)
    exclude_flagged = check_exclude_flagged(exclude_flagged)
    check_n_workers(n_workers)
    check_keep_bits(unmixed_keep_bits, write_unmixed)
    if settings is not None:  # checked once, not slide by slide
        from dataclasses import replace

        from qdmed.imaging._external_seg import check_segmentation_model
        from qdmed.imaging._given_labels import check_segmentation

        check_segmentation(settings.segmentation)
        settings = replace(settings, segmentation_model=check_segmentation_model(
            settings.segmentation, settings.segmentation_model,
            settings.segmentation_pixel_size_um))
    region_min_cells = check_min_cells(region_min_cells)
    # both maps before any slide is read; the case map's checks first, as they name it
    slide_cases, case_map_source, name_rx = _case_source(case_map, case_from_name, tma_map,
                                                         case_rule)
    tma_map, map_source = load_tma_map(tma_map, case_rule)
    if regions_dir is None and (region_class is not None or per_region
                                or tma_map is not None):
        what = ("per_region" if per_region else "tma_map" if tma_map
                else f"region_class={region_class!r}")
        raise InputError(f"{what} needs a regions folder (--regions-dir); none was given.")
    if tumour_regions_dir is not None and regions_dir is None:
        raise InputError("tumour_regions_dir narrows the regions down: it needs a regions "
                         "folder (--regions-dir) too")
    for d in (regions_dir, tumour_regions_dir):
        if d is not None and not Path(d).is_dir():
            raise InputError(f"regions folder {str(d)!r} does not exist or is not a folder")
    if nuclei_labels_dir is not None and not Path(nuclei_labels_dir).is_dir():
        raise InputError(f"nuclei labels folder {str(nuclei_labels_dir)!r} does not exist or "
                         "is not a folder")
    if labels_channel is not None and nuclei_labels_dir is None:
        raise InputError("labels_channel needs a nuclei labels folder (--nuclei-labels-dir)")
    if cell_labels_dir is not None:
        if nuclei_labels_dir is None:
            raise InputError("a cell labels folder (--cell-labels-dir) needs the nuclei "
                             "labels folder too (--nuclei-labels-dir): each cell's nucleus "
                             "comes from it")
        if not Path(cell_labels_dir).is_dir():
            raise InputError(f"cell labels folder {str(cell_labels_dir)!r} does not exist or "
                             "is not a folder")
    if cell_labels_channel is not None and cell_labels_dir is None:
        raise InputError("cell_labels_channel needs a cell labels folder (--cell-labels-dir)")
    from qdmed.imaging._given_labels import check_downsample

    labels_downsample = check_downsample(labels_downsample)
    if labels_downsample != 1 and nuclei_labels_dir is None:
        raise InputError("labels_downsample needs a nuclei labels folder (--nuclei-labels-dir)")
    from qdmed.imaging._analyze import check_tile_px

    tile = check_tile_px(tile)
    slides = find_slides(folder, required=True, pattern=pattern)
    from qdmed.imaging._slideio import check_output_folder

    check_output_folder(out_dir, owned=OUTPUT_NAMES, marks=OUTPUT_MARKS)
    stems = [slide_stem(p.name) for p in slides]
    if name_rx is not None:
        slide_cases, case_map_source = _cases_from_names(name_rx, slides)
    elif slide_cases is not None:
        slide_cases = _case_map_stems(slide_cases, slides)
    scheduler = check_scheduler(scheduler, n_workers)
    out = Path(out_dir)
    rows, tables, region_rows, case_cells = [], [], [], []
    exposures: dict[str, tuple] = {}  # slide -> (channel names, exposure ms per channel)
    client = cluster = None
    sync = scheduler == "synchronous"  # every slide in this process, as analyze_slide's
    if slides and not sync:  # before the output folder: no scheduler, no folder
        client, cluster = start_client(scheduler, n_workers or (os.cpu_count() or 1))
    try:
        out.mkdir(parents=True, exist_ok=True)
        # written last (the tables, cohort.json after them, the report from it): an earlier
        # run's would pass for this one's if this run stopped before writing its own (a
        # walk-through's killed rerun left the earlier calibration's cohort.csv, cases.csv
        # and cells.parquet); each slide's own summary records its run
        for name in ("cohort.json", "report.html", "cohort.csv", "cells.parquet",
                     "regions.csv", "cases.csv"):
            (out / name).unlink(missing_ok=True)
        from qdmed.imaging._analyze import _progress

        with _progress(progress, len(slides), 0, "slides") as advance:
            for sp in slides:
                stem = slide_stem(sp.name)
                row = {"slide": sp.name, "status": "ok", "n_cells": 0, "her2_category": None,
                       "message": ""}
                own = out / "slides" / stem
                before, _, by_analyze = recorded_slide(own)
                foreign = before not in (None, sp.name)
                if foreign and by_analyze:
                    # another slide of this stem (A.tif, now A.ome.tif): a cohort's slide
                    # folder, cleared (analyze_slide refuses another slide's folder)
                    shutil.rmtree(own, ignore_errors=True)
                elif not foreign:  # (any other analysis there, a DAB one, is left whole,
                    # and analyze_slide refuses the slide: a review's cohort removed it)
                    for name in ("summary.json", "report.html"):  # an earlier run's, if
                        (own / name).unlink(missing_ok=True)  # this fails
                try:
                    reg = None
                    if regions_dir is not None:
                        reg = regions_file(regions_dir, sp.name)
                        if reg is None:
                            # every name regions_file accepts (a review missed .ome.geojson)
                            raise InputError(f"no annotation file {stem}.geojson (or .json, "
                                             f".qptma; {stem}.ome.geojson; or "
                                             f"{sp.name}.geojson) in {regions_dir}")
                    tum = None
                    if tumour_regions_dir is not None:
                        tum = regions_file(tumour_regions_dir, sp.name)
                        if tum is None:
                            raise InputError(f"no tumour annotation file {stem}.geojson (or "
                                             f".json) in {tumour_regions_dir}")
                    labels = None if nuclei_labels_dir is None else \
                        labels_file(nuclei_labels_dir, sp, stems)
                    cells = None if cell_labels_dir is None else \
                        labels_file(cell_labels_dir, sp, stems, "cell")
                    if reg is not None and labels is not None and \
                            Path(labels).resolve() == Path(reg).resolve():
                        raise InputError(f"{reg.name} is found as both the annotations and "
                                         "the nuclei labels: keep them in separate folders")
                    res = analyze_slide(sp, panel, out / "slides" / stem, tile=tile,
                                        her2_calibration=her2_calibration,
                                        calibration_scale=calibration_scale,
                                        progress=progress,  # its tiles: a line of the bar
                                        client=client, gates=gates, regions=reg,
                                        scheduler="synchronous" if sync else None,
                                        region_class=region_class, outlines=outlines,
                                        write_unmixed=write_unmixed,
                                        unmixed_keep_bits=unmixed_keep_bits,
                                        autofluorescence=autofluorescence,
                                        her2_region_um=her2_region_um,
                                        her2_region_min_cells=her2_region_min_cells,
                                        saturation_level=saturation_level,
                                        offset_adu=offset_adu,
                                        exclude_flagged=exclude_flagged,
                                        per_region=per_region,
                                        region_min_cells=region_min_cells,
                                        tma_map=tma_map, case_rule=case_rule,
                                        tumour_regions=tum, nuclei_labels=labels,
                                        labels_channel=labels_channel, cell_labels=cells,
                                        cell_labels_channel=cell_labels_channel,
                                        labels_downsample=labels_downsample,
                                        settings=settings)
                    if report:
                        write_slide_report(res)
                    row["n_cells"] = res.summary["n_cells"]
                    row["n_scored"] = res.summary["scored_cells"]["n_scored"]
                    if exclude_flagged:  # cells left out of the scores by quality flags
                        row["n_excluded"] = res.summary["scored_cells"]["excluded"]["total"]
                    notes = [res.summary["scored_cells"].get("note") or ""]
                    row["tma"] = bool(res.summary["scored_cells"].get("note"))
                    notes += receptor_notes(res.summary.get("markers_scored"))
                    # the calibration's own warnings are the cohort's, said once (a
                    # review found one in every row, hiding the slides' own)
                    notes += [n for n in summary_warnings(res.summary) if n not in cal_own]
                    if her2_calibration is None:  # an empty category would say nothing
                        notes.append("HER2 not scored: no calibration given "
                                     "(her2_calibration, --calibration)")
                    # None where not checked (a float image without a detector ceiling)
                    row["percent_scored_cells_saturated"] = res.summary["saturation"].get(
                        "percent_scored_cells_saturated")
                    row["offset_suspected"] = res.summary["offset"]["suspected"]
                    row["offset_issue"] = res.summary["offset"]["issue"]
                    foc = res.summary["focus"]
                    row["focus_median_blur"] = foc.get("median")
                    sl = res.summary["slide"]
                    # raw detector counts only: a float image (unmixed, or normalised to
                    # counts per time) no longer scales with its exposure
                    if sl.get("exposure_ms") and np.dtype(sl["dtype"]).kind in "ui":
                        exposures[sp.name] = (sl["channel_names"], sl["exposure_ms"])
                    row["n_tiles_out_of_focus"] = len(foc.get("out_of_focus_tiles", []))
                    if not row["n_cells"]:  # README: ok / failed / no cells (a review
                        # found an empty section's row "ok", its scores blank)
                        row["status"] = "no cells"
                        notes.insert(0, "no cells found (a section without tissue, or no "
                                        "nuclei in the nuclear channel?)")
                    row["message"] = "; ".join(n for n in notes if n)
                    row.update(score_fields(res.summary["her2"], None))
                    het = res.summary.get("her2_heterogeneity")
                    if het:
                        row["her2_n_regions"] = het["n_regions"]
                        for cat, v in het["percent_regions"].items():
                            row[f"her2_percent_regions_{cat.replace('+', 'plus')}"] = v
                        row["her2_highest_region"] = het["highest_region_category"]
                        row["her2_n_regions_sparse"] = het["n_regions_sparse"]
                        row["her2_percent_regions_discordant"] = het[
                            "percent_regions_discordant"]
                        row["her2_tumour_level_shannon"] = het["tumour_level_shannon"]
                        row["her2_tumour_level_shannon_null"] = het["tumour_level_shannon_null"]
                        row["her2_spatial_p_value"] = het["spatial_p_value"]
                        row["her2_cell_level_shannon"] = het["cell_level_shannon_mean"]
                    row.update(score_fields(None, res.summary.get("markers_scored")))
                    row.update(subtype_field(res.summary["her2"],
                                             res.summary.get("markers_scored")))
                    by_region = res.summary.get("regions_scored")
                    if by_region:
                        row["n_regions"] = by_region["n_regions"]
                        row["n_regions_scored"] = by_region["by_status"].get("ok", 0)
                        region_rows += [{"slide": sp.name, **r} for r in by_region["regions"]]
                    cells = res.cells()
                    cells.insert(0, "slide", sp.name)
                    if slide_cases is not None:
                        cells["case"] = slide_cases.get(map_slide(sp.name))
                        if map_slide(sp.name) not in slide_cases:
                            row["message"] = "; ".join(m for m in (
                                row["message"], "no case in the case map" if name_rx is None
                                else "its name gives no case (case_from_name)") if m)
                    tables.append(cells)
                    if "case" in cells:  # this slide's scored cells, for the pooled cases
                        case_cells.append(scored_cells_of(cells, exclude_flagged))
                except Exception as exc:  # noqa: BLE001 - one slide's fault, not the cohort's
                    # (a review: a Zarr of zero-sized chunks, or an unreadable chunk folder,
                    # ended the run with no table); said as what it is
                    if cluster_lost(exc, client):  # the cluster's fault, not the slides'
                        from qdmed.errors import ClusterLostError

                        raise ClusterLostError(
                            f"the Dask cluster ({scheduler or 'local'}) was lost while "
                            f"{sp.name} was analysed ({type(exc).__name__}): the slides "
                            "and tiles finished are kept; run the cohort again, into the same "
                            "folder, to resume once the cluster is back") from None
                    row["status"], row["message"] = "failed", failure_message(exc)
                rows.append(row)
                advance()
    finally:
        close_client(client, cluster)
    _flag_blurred_slides(rows)
    acquisition_warnings = _flag_exposure_differences(rows, exposures)
    if tables:
        atomic_write_parquet(out / "cells.parquet", pd.concat(tables, ignore_index=True))
    else:  # no slide succeeded: an earlier run's table would contradict cohort.json
        (out / "cells.parquet").unlink(missing_ok=True)
    (out / "regions.csv").unlink(missing_ok=True)
    (out / "cases.csv").unlink(missing_ok=True)
    case_rows = None
    case_warnings: list[str] = []
    if tma_map is not None:
        pooled = pd.concat(case_cells, ignore_index=True) if case_cells else \
            pd.DataFrame({"case": [], "region": [], "slide": []})
        # cases whose cores lie on a failed slide are flagged, not shown as complete
        failed = {map_slide(r["slide"]): r["slide"] for r in rows if r["status"] == "failed"}
        notes: dict[str, list[str]] = {}
        expected = expected_cores(region_rows)
        held: dict[str, set[str]] = {}
        for r in region_rows:
            held.setdefault(map_slide(r["slide"]), set()).add(r["region"])
        absent, absent_notes = cores_not_in_regions(
            tma_map, held, {map_slide(r["slide"]): r["slide"] for r in region_rows},
            failed=tuple(failed.values()))
        for case, cores in absent.items():
            expected.setdefault(case, []).extend(cores)
            notes.setdefault(case, []).extend(absent_notes[case])
        lost = sorted(c for cs in absent.values() for c in cs)
        if lost:
            case_warnings.append(f"{len(lost)} core(s) of the TMA map in no regions file "
                                 f"({', '.join(lost[:5])})")
        for (stem, core), case in tma_map.items():
            if stem in failed:
                notes.setdefault(case, []).append(f"core {core} on failed slide {failed[stem]}")
                expected.setdefault(case, []).append(f"{failed[stem]}:{core}")
        # a row without a slide is the core of that name on every slide: two blocks' A-1
        # pooled into one case, unsaid (a review: an HER2-enriched and a luminal A core)
        on = {}
        for r in region_rows:
            if r["status"] != "missing" and (None, r["region"]) in tma_map and \
                    (map_slide(r["slide"]), r["region"]) not in tma_map:
                on.setdefault(r["region"], []).append(r["slide"])
        shared = {c: sl for c, sl in on.items() if len(sl) > 1}
        if shared:
            c0 = sorted(shared)[0]
            case_warnings.append(
                f"{len(shared)} core name(s) of the TMA map, given without a slide, are on "
                f"several slides (e.g. {c0} on {', '.join(shared[c0][:3])}): each case pools "
                "them all; give the map's rows their slide (core,case,slide) if the blocks "
                "hold other patients")
        caseless = [f"{r['slide']}:{r['region']}" for r in region_rows
                    if r["status"] != "missing" and r.get("case") is None]
        if caseless:
            case_warnings.append(f"{len(caseless)} core(s) have no case in the TMA map (e.g. "
                                 f"{', '.join(caseless[:3])}): left out of cases.csv")
        named = {stem for stem, _ in tma_map if stem is not None}
        # slides of the folder that --pattern leaves out are left out on purpose: their
        # cases are not this run's (a review: they got rows of missing cores)
        passed = {map_slide(sp.name) for sp in find_slides(folder, distinct_stems=False)
                  } if pattern is not None else set()
        unknown = sorted(named - {map_slide(sp.name) for sp in slides} - passed)
        if unknown:
            case_warnings.append(f"TMA map slides not in {folder}: {', '.join(unknown[:5])}")
            # their cores' cases are scored without them: said in each case's row, counted
            # missing (a walk-through's P3 read ok, its one other core on a misspelt slide)
            for (stem, core), case in tma_map.items():
                if stem in unknown:
                    notes.setdefault(case, []).append(
                        f"core {core} on slide {stem}, not among the slides analysed")
                    expected.setdefault(case, []).append(f"{stem}:{core}")
        case_rows = score_cases(pooled, expected, her2_calibration=her2_calibration,
                                gates=gates, min_cells=region_min_cells, notes=notes,
                                rule=case_rule, region_rows=region_rows)
        atomic_write_text(out / "cases.csv", case_table(
            case_rows, her2_calibration is not None).to_csv(index=False))
    if slide_cases is not None:
        case_rows, more = _score_slide_cases(slide_cases, slides, rows, case_cells,
                                             her2_calibration=her2_calibration, gates=gates,
                                             min_cells=region_min_cells)
        case_warnings += more
        atomic_write_text(out / "cases.csv", case_table(
            case_rows, her2_calibration is not None).to_csv(index=False))
    if region_rows:
        table = region_table(region_rows, her2_calibration is not None)
        table.insert(0, "slide", table.pop("slide"))
        atomic_write_text(out / "regions.csv", table.to_csv(index=False))
    below = slides_in_subfolders(folder, pattern, skip=(
        regions_dir, tumour_regions_dir, nuclei_labels_dir, cell_labels_dir, out_dir))
    input_warnings = [f"{len(below)} slide(s) in subfolders of {folder} are not analysed "
                      f"({', '.join(below[:3])}{' ...' if len(below) > 3 else ''}): a cohort "
                      "reads the folder's own slides; give each subfolder as a cohort"
                      ] if below else []
    slides_dir = out / "slides"
    # names compared case aside, as find_slides does (one folder on macOS and Windows)
    ours = {stem.lower() for stem in stems}
    stale = sorted(d.name for d in slides_dir.iterdir() if d.is_dir() and
                   d.name.lower() not in ours) if slides_dir.is_dir() else []
    output_warnings = [f"{slides_dir}: {len(stale)} slide folder(s) an earlier run left are "
                       f"not slides of this cohort (nor in its tables): "
                       f"{', '.join(stale[:5])}{' ...' if len(stale) > 5 else ''}; remove "
                       "them, or give another output folder"] if stale else []
    summary = {"qdmed_version": __version__, "environment": environment(),
               "folder": str(folder),
               "panel": panel.to_yaml_dict(), "n_slides": len(slides),
               "n_ok": sum(r["status"] == "ok" for r in rows),
               "n_failed": sum(r["status"] == "failed" for r in rows),
               "n_no_cells": sum(r["status"] == "no cells" for r in rows),
               "slides": rows, "cells": str(out / "cells.parquet") if tables else None,
               "regions": str(out / "regions.csv") if region_rows else None,
               "cases": None if case_rows is None else str(out / "cases.csv"),
               "n_cases": None if case_rows is None else len(case_rows),
               # analyze's block (the CLI prints its table: a review found none)
               "cases_scored": None if case_rows is None else cases_summary(
                   case_rows, case_warnings, rule=case_rule),
               "panel_warnings": list(panel.warnings),
               "calibration_warnings": list(getattr(her2_calibration, "warnings", ())),
               "case_warnings": case_warnings,
               "acquisition_warnings": acquisition_warnings,
               "output_warnings": output_warnings,
               "input_warnings": input_warnings,
               "parameters": {"tile": tile, "regions_dir": None if regions_dir is None
                              else str(regions_dir), "region_class": region_class,
                              "her2_calibration": None if her2_calibration is None
                              else her2_calibration.to_dict(),
                              "gates": None if not gates else {
                                  m: {"compartment": g.compartment, "threshold": g.threshold}
                                  for m, g in sorted(gates.items())},
                              "outlines": outlines, "write_unmixed": write_unmixed,
                              "unmixed_keep_bits": unmixed_keep_bits,
                              "autofluorescence": autofluorescence,
                              "saturation_level": saturation_level,
                              "exclude_flagged": list(exclude_flagged),
                              "per_region": per_region, "region_min_cells": region_min_cells,
                              "tma_map": map_source, "case_rule": case_rule,
                              "case_map": case_map_source,
                              "tumour_regions_dir": None if tumour_regions_dir is None
                              else str(tumour_regions_dir),
                              "nuclei_labels_dir": None if nuclei_labels_dir is None
                              else str(nuclei_labels_dir), "labels_channel": labels_channel,
                              "cell_labels_dir": None if cell_labels_dir is None
                              else str(cell_labels_dir),
                              "cell_labels_channel": cell_labels_channel,
                              "labels_downsample": labels_downsample,
                              "settings": None if settings is None else settings.to_dict(),
                              "offset_adu": None if offset_adu is None
                              else np.asarray(offset_adu, dtype=float).tolist(),
                              "her2_region_um": her2_region_um,
                              "her2_region_min_cells": her2_region_min_cells},
               "slides_table": str(out / "cohort.csv"),
               "report": str(out / "report.html") if report else None}
    buf = io.StringIO()
    cols = ["slide", "status", "n_cells", "n_scored", "her2_category", "message"]
    table = pd.DataFrame(rows)
    table = table.reindex(columns=cols + [c for c in table.columns if c not in cols])
    for c in table.columns:  # counts stay whole numbers where a failed slide has none
        if c.startswith("n_") or c in ("her2_n_regions", "her2_n_regions_sparse"):
            v = pd.to_numeric(table[c], errors="coerce")
            if v.notna().any() and (v.dropna() % 1 == 0).all():
                table[c] = v.astype("Int64")
    table.to_csv(buf, index=False)
    atomic_write_text(out / "cohort.csv", buf.getvalue())
    # the last data output, so its presence marks a complete set (the report is drawn from it)
    atomic_write_text(out / "cohort.json", json.dumps(summary, indent=2, sort_keys=True,
                                                     default=str))
    if report:
        write_cohort_report(summary, out)
    return summary


def _case_source(case_map, case_from_name: str | None, tma_map, case_rule: str):
    """Where a cohort's cases of slides come from, checked before any slide is read:
    ``(slide_cases, source, name_regex)``. A case map (a CSV path or its mapping) gives
    ``slide_cases`` now; ``case_from_name`` gives the compiled expression, which
    :func:`_cases_from_names` applies to the slides found; neither gives Nones."""
    import re

    if case_map is None and case_from_name is None:
        return None, None, None
    if case_map is not None and case_from_name is not None:
        raise InputError("give a case map or case_from_name (--case-from-name), not both")
    if tma_map is not None:
        raise InputError("give a TMA map (cores -> cases) or a case map (slides -> cases), "
                         "not both")
    check_case_rule(case_rule)
    if case_rule != "pooled":
        raise InputError(f"a case map pools each case's slides (case rule 'pooled'); "
                         f"{case_rule!r} takes a TMA's cores one by one")
    if case_from_name is not None:
        try:
            return None, None, re.compile(case_from_name)
        except re.error as exc:
            raise InputError(f"case_from_name {case_from_name!r} is not a regular "
                             f"expression: {exc}") from None
    if isinstance(case_map, dict):
        if not case_map:
            raise InputError("case_map is empty: it needs one row per slide (slide,case)")
        return case_map_pairs(case_map.items(), "case_map"), "(a mapping)", None
    return read_case_map(case_map), str(case_map), None


def _cases_from_names(rx, slides: list[Path]) -> tuple[dict[str, str], str]:
    """``{slide stem: case}`` of the slides whose name `rx` finds a case in (its first
    group, or the whole match), and the source as the parameters record it."""
    out = {}
    for sp in slides:
        m = rx.search(sp.name)
        case = (m.group(1) if rx.groups else m.group(0)) if m else None
        if case and case.strip():
            out[map_slide(sp.name)] = case.strip()
    if not out:
        raise InputError(f"case_from_name {rx.pattern!r} finds a case in no slide name (e.g. "
                         f"{slides[0].name!r})")
    return out, f"names: {rx.pattern}"


def _case_map_stems(slide_cases: dict, slides: list[Path]) -> dict:
    """A case map's slide names matched to the folder's slides as the folder's own names
    are (letter case aside: one file on macOS and Windows), where exactly one slide
    matches and the map does not name that slide as written too (a walk-through's
    S1_LUMINAL-A for s1_luminal-A.ome.zarr was said as a slide not among those analysed)."""
    found = {map_slide(sp.name) for sp in slides}
    folded: dict[str, list[str]] = {}
    for s in found:
        folded.setdefault(s.casefold(), []).append(s)
    out = {}
    for stem, case in slide_cases.items():
        hit = folded.get(str(stem).casefold(), [])
        if stem not in found and len(hit) == 1 and hit[0] not in slide_cases:
            stem = hit[0]
        out[stem] = case
    return out


def _score_slide_cases(slide_cases: dict, slides: list[Path], rows: list[dict], case_cells,
                       *, her2_calibration, gates, min_cells: int):
    """cases.csv's rows from a case map: each case's slides' scored cells pooled (slides
    that failed, or that the map names but the folder lacks, noted), and the cohort's
    warnings (slides without a case, map slides not found)."""
    import pandas as pd

    found = {map_slide(sp.name): sp.name for sp in slides}
    failed = {map_slide(r["slide"]): r["status"] for r in rows if r["status"] != "ok"}
    expected: dict[str, list[str]] = {}
    notes: dict[str, list[str]] = {}
    for stem, case in slide_cases.items():
        expected.setdefault(case, []).append(found.get(stem, stem))
        if stem not in found:
            notes.setdefault(case, []).append(f"slide {stem} not among the slides analysed")
        elif stem in failed:
            notes.setdefault(case, []).append(
                f"slide {found[stem]} " + ("failed" if failed[stem] == "failed" else
                                           "has no cells"))
    pooled = pd.concat(case_cells, ignore_index=True) if case_cells else \
        pd.DataFrame({"case": [], "slide": []})
    case_rows = score_cases(pooled, expected, her2_calibration=her2_calibration, gates=gates,
                            min_cells=min_cells, notes=notes, rule="pooled")
    warnings = []
    unmapped = [n for stem, n in found.items() if stem not in slide_cases]
    if unmapped:
        warnings.append(f"{len(unmapped)} slide(s) have no case "
                        f"({', '.join(unmapped[:5])}): left out of cases.csv")
    unknown = sorted(set(slide_cases) - set(found))
    if unknown:
        warnings.append(f"case map slides not among the slides of the folder (or of "
                        f"--pattern): {', '.join(unknown[:5])}")
    return case_rows, warnings


def _flag_exposure_differences(rows: list[dict], exposures: dict[str, tuple]) -> list[str]:
    """Mark the slides acquired with other exposure times than the cohort's most common
    (per channel name, beyond 1 %): counts scale with exposure, so their intensities, and
    scores from cut-offs calibrated at another exposure, are not comparable. Returns the
    cohort's warnings. ``exposures``: slide name -> (channel names, exposure per channel,
    ms), from the files' metadata (:attr:`qdmed.imaging.SlideImage.exposure_ms`)."""
    per_channel: dict[str, list[float]] = {}
    for names, ms in exposures.values():
        for n, t in zip(names, ms, strict=True):
            per_channel.setdefault(n, []).append(float(t))
    usual = {n: _usual_exposure(v) for n, v in per_channel.items()}
    differ = {}
    for slide, (names, ms) in exposures.items():
        off = []
        for n, t in zip(names, ms, strict=True):
            value, share = usual[n]
            if abs(t - value) > 0.01 * value:
                who = "most slides" if share > 0.5 else "the most common"
                off.append(f"{n} {t:g} ms ({who} {value:g})")
        if off:
            differ[slide] = off
    for r in rows:
        if r["slide"] in exposures:  # compared: True or False; not compared: absent
            r["exposure_differs"] = r["slide"] in differ
        if r["slide"] in differ:
            note = "exposure differs from the cohort's: " + ", ".join(differ[r["slide"]][:3])
            r["message"] = "; ".join(m for m in (r.get("message"), note) if m)
    if not differ:
        return []
    return [f"{len(differ)} of the {len(exposures)} slides whose files record exposure times "
            f"were acquired with other exposures than the rest "
            f"({', '.join(sorted(differ)[:5])}): counts scale with exposure, so their "
            "intensities, and scores from cut-offs calibrated at another exposure, are not "
            "comparable unless the images are normalised to one exposure"]


def _usual_exposure(values: list[float]) -> tuple[float, float]:
    """The usual one of a channel's exposures and the share of slides at it: values within
    1 % of each other are one exposure (its median), and the largest group is the usual
    one (on a tie, the one of the first slide in name order)."""
    groups: list[list[float]] = []
    for v in values:  # slides in name order: a tie goes to the first slide's group
        for g in groups:
            if abs(v - g[0]) <= 0.01 * g[0]:
                g.append(v)
                break
        else:
            groups.append([v])
    best = max(groups, key=len)  # max keeps the first of equals
    return float(np.median(best)), len(best) / len(values)


def _flag_blurred_slides(rows: list[dict]) -> None:
    """Mark the slides whose median blur stands out from the cohort's (the per-tile test
    cannot see a slide blurred all over; :func:`qdmed.imaging._focus.blur_outliers`)."""
    from qdmed.imaging._focus import blur_outliers

    vals = [r.get("focus_median_blur") for r in rows]
    med, _, thr, flagged = blur_outliers([np.nan if v is None else v for v in vals])
    for r, v, bad in zip(rows, vals, flagged, strict=True):
        if v is None:
            continue
        r["slide_out_of_focus"] = bool(bad)
        if bad:
            note = (f"focus: the slide's median blur {v:.3f} is above the cohort's ({med:.3f}; "
                    f"threshold {thr:.3f}): the whole slide may be out of focus")
            r["message"] = "; ".join(m for m in (r["message"], note) if m)
            if "warnings" in r:
                r["warnings"].append(note)
