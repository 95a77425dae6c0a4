"""Figures and HTML report of conventional DAB IHC: the image (or the slide's overview) with
its cells coloured by DAB class, the distribution of the scored compartment's DAB OD against
the cut-offs, and, for a slide scored by regions, their map and tables. Renders what the
scoring wrote; the only pixels read are a low-resolution level of the slide."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qdmed.imaging._report import (
    _CAT_COLOURS,
    _columns,
    _plain_text,
    regions_map_figure,
    um_axes,
)

#: Most cells drawn on an overview (a random subset, seed 0, beyond it; said in the title).
MAX_CELLS_DRAWN = 100_000
#: Pixels of the slide overview drawn in the report.
OVERVIEW_PIXELS = 1200 * 1200


def dab_figure(rgb, cells, od_cutoffs, compartment: str, *, factor: float = 1.0,
               pixel_size_um: float | None = None, outlines=(), title: str = ""):
    """Two panels: the RGB image with each cell's centroid coloured by its DAB class
    (``dab_class``: its mean ``compartment`` DAB OD against the cut-offs), and the
    histogram of that OD with the cut-offs marked.

    Parameters
    ----------
    rgb : (Y, X, 3) array or None
        The image drawn (a slide's overview, downsampled by ``factor``); None: cells only.
    cells : DataFrame
        ``centroid_x``, ``centroid_y`` (full-resolution pixels), ``dab_class`` and
        ``DAB_<compartment>_mean``.
    od_cutoffs : (t1, t2, t3)
    compartment : str
    factor : float
        Full-resolution pixels per pixel of ``rgb``.
    pixel_size_um : float, optional
        Axes in um when given.
    outlines : sequence of (n, 2) arrays
        Region outlines (x, y in QuPath full-resolution coordinates) drawn over the image.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5.5), gridspec_kw={"width_ratios": [1.4, 1]})
    ax = axes[0]
    if rgb is not None:
        ax.imshow(np.asarray(rgb))
    else:
        ax.invert_yaxis()
        ax.set_aspect("equal")
    n = len(cells)
    drawn = cells
    if n > MAX_CELLS_DRAWN:
        drawn = cells.iloc[np.sort(np.random.default_rng(0).choice(n, MAX_CELLS_DRAWN,
                                                                   replace=False))]
    if len(drawn):
        col = [_CAT_COLOURS.get(str(c), "#999999") for c in drawn["dab_class"]]
        ax.scatter(drawn["centroid_x"].to_numpy() / factor,
                   drawn["centroid_y"].to_numpy() / factor, s=3 if n > 2000 else 8, c=col,
                   linewidths=0)
    for ring in outlines:
        r = np.asarray(ring, dtype=np.float64)
        ax.plot(np.r_[r[:, 0], r[0, 0]] / factor - 0.5, np.r_[r[:, 1], r[0, 1]] / factor - 0.5,
                color="k", lw=0.8)
    for cat, colour in _CAT_COLOURS.items():
        ax.scatter([], [], s=20, c=colour, label=cat)
    ax.legend(fontsize=7, loc="upper right", framealpha=0.8, title="DAB class",
              title_fontsize=7)
    ax.set_title((title + ": " if title else "") + f"{n} cells"
                 + (f" ({MAX_CELLS_DRAWN} drawn at random)" if n > MAX_CELLS_DRAWN else ""),
                 fontsize=9)
    if pixel_size_um:
        um_axes(ax, factor * pixel_size_um)
    ax = axes[1]
    col = f"DAB_{compartment}_mean"
    v = cells[col].to_numpy(dtype=np.float64) if col in cells else np.zeros(0)
    v = v[np.isfinite(v)]
    t = [float(x) for x in od_cutoffs]
    if v.size:
        top = max(float(np.percentile(v, 99.9)), t[2] * 1.2)
        ax.hist(np.clip(v, 0, top), bins=60, range=(0, top), color="#8c6d31")
    for x, name in zip(t, ("1+", "2+", "3+"), strict=True):
        ax.axvline(x, color="k", lw=0.8, ls="--")
        ax.text(x, 1.0, f" {name}", transform=ax.get_xaxis_transform(), fontsize=7,
                va="top")
    ax.set_xlabel(f"mean {compartment} DAB OD per cell")
    ax.set_ylabel("cells")
    ax.set_title("DAB OD and the cut-offs", fontsize=9)
    fig.tight_layout()
    return fig


def _overview(img, max_pixels: int = OVERVIEW_PIXELS):
    """A slide's low-resolution RGB level and its downsampling factor."""
    from qdmed.imaging._slideio import small_level

    arr = small_level(img, max_pixels)[2]
    arr = np.asarray(arr.compute() if hasattr(arr, "compute") else arr)
    return arr, img.shape[0] / arr.shape[0]


@_plain_text
def write_dab_report(summary: dict, out_dir, img, reg) -> Path:
    """Write ``report.html`` in `out_dir` from a DAB slide's summary, its ``cells.parquet``,
    the slide (an overview level is read) and the regions scored."""
    import pandas as pd

    from qdmed.report import HtmlReport

    out = Path(out_dir)
    p = summary["parameters"]
    want = ["centroid_x", "centroid_y", "dab_class", f"DAB_{p['compartment']}_mean",
            "in_region"]  # only what is drawn: a whole slide holds millions of cells
    import pyarrow.parquet as pq

    have = set(pq.read_schema(out / "cells.parquet").names)
    cells = pd.read_parquet(out / "cells.parquet", columns=[c for c in want if c in have])
    scored = cells[cells["in_region"].to_numpy()] if "in_region" in cells else cells
    rep = HtmlReport(f"qdmed DAB IHC: {Path(summary['slide']).name}",
                     provenance={"slide": summary["slide"], "parameters": p})
    rep.paragraph(
        f"{summary['n_cells']} cells found, {summary['n_scored']} scored; {p['marker']} by "
        f"its mean {p['compartment']} DAB OD, cut-offs "
        + ", ".join(f"{v:g}" for v in p["od_cutoffs"]) + " OD (1+, 2+, 3+); stain vectors "
        + (p["stain_matrix"] if isinstance(p["stain_matrix"], str) else "given (3 x 3)")
        + "; white level (R, G, B levels 0-255, as --background takes it) "
        + ", ".join(f"{255 * v:.1f}" for v in p["background"])
        + f"; {summary['pixel_size_um']:g} um/px; {summary['elapsed_s']:.1f} s.")
    thr = summary.get("thresholds") or []
    tiled = [t for t in thr if t["n_tiles"]]
    if tiled:
        rep.paragraph("Tiled: " + "; ".join(
            f"{t['region']} in {t['n_tiles']} tiles" for t in tiled[:20])
            + (f"; {len(tiled) - 20} more" if len(tiled) > 20 else "")
            + f" (tiles of at most {p['tile_px']} px, read with {p['margin_um']:g} um "
            "margins).")
    if thr:
        rep.paragraph("Nuclei: haematoxylin OD (smoothed over 0.5 um) above each region's "
                      "threshold, Otsu's split of the tissue inside its polygons, glass "
                      "left out (see the regions table; none: no nuclei stand out from the "
                      "haematoxylin, no cells).")
    rep.flags(summary.get("warnings") or [])
    rgb, factor = _overview(img)
    rep.figure(dab_figure(rgb, scored, p["od_cutoffs"], p["compartment"], factor=factor,
                          pixel_size_um=summary["pixel_size_um"],
                          outlines=[poly[0] for poly in reg.polygons],
                          title=Path(summary["slide"]).name), "cells by DAB class")
    rows = (summary.get("regions_scored") or {}).get("regions") or []
    m = p["marker"]
    score = ("her2_category", "her2_low", "her2_ultralow") if m == "HER2" else (
        f"{m}_percent_positive", f"{m}_status")
    if len(rows) > 1:
        # HER2 by category, ER and PgR by status; other antigens have no status to map
        fig = regions_map_figure(rows) if m == "HER2" else regions_map_figure(
            rows, f"{m}_status", f"{m} status") if m in ("ER", "PR") else None
        if fig is not None:
            rep.figure(fig, "regions")
    if rows:
        by = {t["region"]: "none" if t["hematoxylin_threshold_od"] is None else
              t["hematoxylin_threshold_od"] for t in thr}
        rows = [{**r, "hematoxylin_threshold_od": by.get(r["region"], "")} for r in rows]
        rep.heading("Regions")
        rep.table(_columns(rows, ("region", "case", "status", "n_cells", "n_scored", *score,
                                  "tissue_area_mm2", "hematoxylin_threshold_od", "message")))
    cases = (summary.get("cases_scored") or {}).get("cases") or []
    if cases:
        rep.heading("Cases")
        rep.table(_columns(cases, ("case", "status", "cores", "n_scored", *score)))
        rep.flags((summary.get("cases_scored") or {}).get("warnings") or [])
    files = ["cells.parquet", "regions.csv", *(("cases.csv",) if cases else ()),
             *(("cells.geojson",) if (out / "cells.geojson").exists() else ()), "summary.json"]
    rep.links("Files: ", [(f, f) for f in files])
    return rep.write(out / "report.html")
