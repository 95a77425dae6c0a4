"""Slide quality control without the cell analysis: detector saturation and offset, and
out-of-focus tiles, for one slide or a folder, in a fraction of the analysis time (no
segmentation: each tile is read, its counts tallied, its nuclear channel unmixed and its
blur measured where nuclei are).

A lab scans a cohort, runs ``qdmed image qc`` and rescans what it flags before analysing.
The measures and rules are those of a full analysis (:mod:`qdmed.imaging._detector`,
:mod:`qdmed.imaging._focus`), so the two agree tile for tile; only the nuclei that select
the windows a tile's blur is measured on come from a threshold here (the slide's nuclear
Otsu threshold, from its brightest window) instead of the segmentation.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from qdmed.errors import InputError

__all__ = ["qc_folder", "qc_folder_figure", "qc_slide"]


def qc_slide(path, panel, out_dir=None, *, tile: int = 2048, saturation_level=None,
             offset_adu=None, progress: bool = False, reference_region_px: int = 1024,
             pixel_size_um: float | None = None) -> dict:
    """Quality control of one slide: the ``saturation``, ``offset`` and ``focus`` blocks of
    an analysis summary (without the per-cell numbers), per tile.

    Parameters
    ----------
    path : OME-TIFF/TIFF or OME-Zarr slide, (Y, X, C) with C = the panel's channels
    panel : Panel
    out_dir : path, optional
        Gets ``qc.json`` and ``qc_regions.geojson`` (out-of-focus tiles, QuPath annotations).
    tile : int, px
        Tile edge; use the analysis's tile so that the tiles judged are the same.
    saturation_level, offset_adu
        As in :func:`qdmed.imaging.analyze_slide`.
    pixel_size_um : float, um, optional
        Default: the slide's own, else 0.5 um/px (warned in the ``slide`` block); it sets
        the nuclear smoothing the tiles' blur is judged on.

    Returns
    -------
    dict
        ``slide``, ``saturation``, ``offset``, ``focus``, ``warnings`` (all of them, each
        prefixed by its block), ``elapsed_s``, ``qdmed_version``.
    """
    from qdmed import __version__
    from qdmed.imaging._analyze import (
        _progress,
        check_channels,
        nuclear_otsu,
        panel_offset,
        reference_origin,
        summary_warnings,
        tile_grid,
        unmix_image,
    )
    from qdmed.imaging._detector import (
        channel_stats,
        check_level,
        merge_channel_stats,
        offset_summary,
        saturation_summary,
    )
    from qdmed.imaging._detector import (
        saturation_level as ceiling,
    )
    from qdmed.imaging._focus import focus_summary, qc_geojson, tile_blur
    from qdmed.imaging._panel import Panel
    from qdmed.imaging._slideio import _check_pixel_size, pixel_size_or_default, read_slide
    from qdmed.report import atomic_write_text, to_jsonable

    t0 = time.perf_counter()
    _check_pixel_size(pixel_size_um)
    check_level(saturation_level)
    off = panel_offset(panel, offset_adu)
    if out_dir is not None:  # as analyze's (a review wrote qc.json into the slide's group)
        from qdmed.imaging._slideio import check_output_folder

        check_output_folder(out_dir, [path], owned=SLIDE_OUTPUTS, marks=SLIDE_OUTPUTS[1:])
    # the panel as an analysis's tiles get it (through its file form, whose rounding moves
    # abundances by ~1e-8): the blur of a tile then equals the analysis's exactly
    panel = Panel.from_dict(panel.to_yaml_dict())
    slide = read_slide(path)
    panel = check_channels(slide, panel)
    h, w, _ = slide.shape
    level, source = ceiling(slide.dtype, significant_bits=slide.significant_bits,
                            level=saturation_level)
    ps, ps_warnings = pixel_size_or_default(pixel_size_um or slide.pixel_size_um,
                                            hint="--pixel-size-um",
                                            note=slide.pixel_size_note)
    k = _nuclear_index(panel)
    ry, rx = reference_origin(slide, reference_region_px)
    ref = slide.read_region(ry, min(h, ry + reference_region_px), rx,
                            min(w, rx + reference_region_px))
    thr = nuclear_otsu(unmix_image(ref, panel, offset_adu=off)[..., k], ps)
    boxes = tile_grid((h, w), tile)
    stats, blur = [], []
    with _progress(progress, len(boxes), 0) as advance:
        for y0, y1, x0, x1 in boxes:
            region = slide.read_region(y0, y1, x0, x1)
            stats.append(channel_stats(region, level))
            nuc = unmix_image(region, panel, offset_adu=off)[..., k]
            blur.append(tile_blur(nuc, nuc > thr))
            advance()
    merged = merge_channel_stats(stats)
    d: dict[str, Any] = {
        "qdmed_version": __version__, "slide": {**slide.to_dict(),
                                                "warnings": [*slide.warnings, *ps_warnings]},
        "pixel_size_um": float(ps), "tile_px": int(tile),
        "nuclear_threshold": float(thr),
        "saturation": saturation_summary(level, source, merged, slide.channel_names, None,
                                         None),
        "offset": offset_summary(merged, off, slide.channel_names, stats, dtype=slide.dtype),
        "focus": focus_summary(blur, boxes, None, None, ps),
    }
    d["warnings"] = summary_warnings(d)
    if not np.isfinite(d["nuclear_threshold"]):  # a review's empty section read "ok"
        d["warnings"].insert(0, f"no nuclei: the nuclear channel ({panel.components[k]}) "
                                "shows none to threshold where the slide has the most signal "
                                "(a section without tissue, or no nuclear stain?)")
    d["elapsed_s"] = time.perf_counter() - t0
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "qc_regions.geojson", json.dumps(qc_geojson(d["focus"])))
        atomic_write_text(out / "qc.json", json.dumps(to_jsonable(d), indent=2, sort_keys=True))
    return to_jsonable(d)


#: What qc of a slide writes in its folder (the second only qc writes: a folder holding the
#: first without it is someone else's), and what qc of a folder writes in its own.
SLIDE_OUTPUTS = ("qc.json", "qc_regions.geojson")
FOLDER_OUTPUTS = ("qc.csv", "qc.json", "slides")


def _nuclear_index(panel) -> int:
    """Index of the nuclear marker among the panel's components, or InputError."""
    from qdmed.imaging._analyze import AnalysisSettings

    marker = AnalysisSettings().nuclear_marker
    if marker not in panel.components:
        raise InputError(f"focus control needs the nuclear marker {marker} in the panel; its "
                         f"components are {list(panel.components)}")
    return panel.components.index(marker)


def qc_folder(folder, panel, out_dir, *, tile: int = 2048, saturation_level=None,
              offset_adu=None, progress: bool = True, pattern: str | None = None,
              pixel_size_um: float | None = None) -> dict:
    """:func:`qc_slide` for every slide of ``folder`` (matching ``pattern``, see
    :func:`qdmed.imaging._cohort.find_slides`; a slide that cannot be read is
    reported, not fatal), plus slides out of focus as a whole against the others (their
    median blur, :func:`qdmed.imaging._focus.blur_outliers`). Writes ``qc.csv`` (a row per
    slide), ``qc.json`` and ``slides/<stem>/`` (each slide's qc.json and
    qc_regions.geojson) in ``out_dir``; returns the cohort summary."""
    import pandas as pd

    from qdmed.imaging._analyze import _progress, panel_offset, tile_grid
    from qdmed.imaging._cohort import _flag_blurred_slides, find_slides, slide_stem
    from qdmed.imaging._detector import check_level
    from qdmed.imaging._slideio import _check_pixel_size
    from qdmed.report import atomic_write_text

    _check_pixel_size(pixel_size_um)
    check_level(saturation_level)
    panel_offset(panel, offset_adu)
    tile_grid((64, 64), tile)  # a bad tile is refused before any slide is read
    _nuclear_index(panel)
    from qdmed.imaging._slideio import check_output_folder

    # as a cohort's: the slides' folder itself holds slides (refused); a folder inside it
    # is no slide to the next run (find_slides reads no plain subfolder)
    # (qc.csv a mark too: a run whose every slide failed writes no slide folder)
    check_output_folder(out_dir, owned=FOLDER_OUTPUTS,
                        marks=("qc.csv", "slides/*/qc_regions.geojson"))
    slides = find_slides(folder, required=True, pattern=pattern)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with _progress(progress, len(slides), 0, "slides") as advance:
        for sp in slides:
            row: dict[str, Any] = {"slide": sp.name, "status": "ok", "message": "",
                                   "warnings": []}
            try:
                d = qc_slide(sp, panel, out / "slides" / slide_stem(sp.name), tile=tile,
                             saturation_level=saturation_level, offset_adu=offset_adu,
                             pixel_size_um=pixel_size_um)
                sat, offs, foc = d["saturation"], d["offset"], d["focus"]
                row.update(
                    saturation_level=sat["level_adu"],
                    percent_saturated_worst_channel=max(
                        sat["percent_saturated_pixels"].values(), default=0.0)
                    if sat["checked"] else None,
                    clipping_suspected=",".join(sat["clipping_suspected"]) or None,
                    offset_suspected=offs["suspected"], offset_issue=offs["issue"],
                    dead_channels=",".join(offs.get("dead_channels") or ()) or None,
                    focus_median_blur=foc["median"],
                    n_tiles=foc["n_tiles"], n_tiles_out_of_focus=len(foc["out_of_focus_tiles"]),
                    warnings=d["warnings"], message="; ".join(d["warnings"]))
            except Exception as exc:  # noqa: BLE001 - one slide's fault, not the folder's
                from qdmed.imaging._cohort import failure_message

                msg = failure_message(exc)
                row["status"], row["message"] = "failed", msg
                row["warnings"] = [msg]
            rows.append(row)
            advance()
    _flag_blurred_slides(rows)
    summary = {"folder": str(folder), "n_slides": len(slides),
               "n_ok": sum(r["status"] == "ok" for r in rows),
               "n_failed": sum(r["status"] != "ok" for r in rows), "slides": rows,
               "parameters": {"tile": tile, "saturation_level": saturation_level,
                              "pixel_size_um": pixel_size_um,
                              "offset_adu": None if offset_adu is None
                              else np.asarray(offset_adu, dtype=float).tolist()}}
    atomic_write_text(out / "qc.json", json.dumps(summary, indent=2, sort_keys=True,
                                                 default=str))
    buf = io.StringIO()
    table = pd.DataFrame(rows).drop(columns="warnings")
    for col in ("n_tiles", "n_tiles_out_of_focus"):  # counts stay integers beside failed rows
        if col in table:
            table[col] = table[col].astype("Int64")
    table.to_csv(buf, index=False)
    atomic_write_text(out / "qc.csv", buf.getvalue())
    summary["out"] = str(out)
    return summary


def qc_folder_figure(summary: dict):
    """Figure of a folder's quality control (:func:`qc_folder`'s summary), one bar per
    slide: its median blur against the cohort's outlier threshold (slides above it in red,
    :func:`qdmed.imaging._focus.blur_outliers`), the share of its tiles out of focus, and
    the share of pixels at the detector ceiling in its worst channel. Slides that could
    not be read are marked as such."""
    import matplotlib.pyplot as plt

    from qdmed.imaging._focus import blur_outliers

    rows = summary["slides"]
    if not rows:
        raise InputError("no slide in this quality control: nothing to draw")
    names = [r["slide"] for r in rows]
    ok = [r["status"] == "ok" for r in rows]

    def values(key):
        return [float(r[key]) if r.get(key) is not None and ok[i] else np.nan
                for i, r in enumerate(rows)]

    blur = values("focus_median_blur")
    _, _, thr, flagged = blur_outliers(blur)
    tiles = [100.0 * r["n_tiles_out_of_focus"] / r["n_tiles"]
             if ok[i] and r.get("n_tiles") else np.nan for i, r in enumerate(rows)]
    sat = values("percent_saturated_worst_channel")
    x = np.arange(len(rows))
    fig, axes = plt.subplots(3, 1, figsize=(max(6.0, 0.35 * len(rows) + 2.0), 7.5),
                             sharex=True)
    axes[0].bar(x, np.nan_to_num(blur), color=["C3" if f else "C0" for f in flagged])
    title = f"Quality control of {summary.get('folder', 'the folder')}: {len(rows)} slides"
    if thr is not None:
        axes[0].axhline(thr, color="C3", ls="--", lw=1)
        title += f"\ndashed: the cohort's blur threshold {thr:.3f} (slides above it in red)"
    axes[0].set_ylabel("median blur\n(0 sharp)")
    axes[0].set_title(title, fontsize=9)
    axes[1].bar(x, np.nan_to_num(tiles), color="C1")
    axes[1].set_ylabel("tiles out of\nfocus (%)")
    axes[2].bar(x, np.nan_to_num(sat), color="C2")
    axes[2].set_ylabel("saturated pixels,\nworst channel (%)")
    for ax, v in zip(axes[1:], (tiles, sat), strict=True):  # 0-1 % at least: no negative axis
        ax.set_ylim(0, max(1.0, 1.15 * float(np.nanmax(v))) if np.isfinite(v).any() else 1.0)
    for i in np.nonzero(~np.asarray(ok))[0]:
        for ax in axes:
            ax.text(i, 0, "failed", rotation=90, ha="center", va="bottom", fontsize=7,
                    color="0.4")
    if len(rows) <= 80:
        axes[2].set_xticks(x, names, rotation=60, ha="right", fontsize=7)
    else:  # hundreds of names are unreadable: positions instead (qc.csv names them)
        axes[2].set_xlabel("slides, in qc.csv's order")
    fig.tight_layout()
    return fig
