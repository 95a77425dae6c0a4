"""Focus quality control: which tiles of a slide are out of focus.

Whole-slide scanners leave out-of-focus patches (a tilted section, a fold, an autofocus
miss). Blur widens nuclei and membranes, so segmentation, membrane completeness and the
per-cell levels change there, unseen in the cell table. Each tile gets the blur effect of
Crete et al. [1]_ on its nuclear channel (``skimage.measure.blur_effect``: the share of
the image's neighbour-to-neighbour variation that survives re-blurring with an 11-pixel
mean; 0 for a sharp image, towards 1 for a blurred one), and a tile stands out when its
value exceeds the slide's median by more than ``FOCUS_MAD_FACTOR`` robust standard
deviations (1.4826 MAD) and by at least ``FOCUS_MIN_STEP``.

What was measured (synthetic 0.5 um/px fields, nuclear channel unmixed from Poisson counts
at 300 photons per unit): 0.31 sharp; 0.35, 0.43, 0.53 and 0.55 after a Gaussian blur of
sigma 0.5, 1, 2 and 3 px; 256 px tiles of one field spread by +-0.01. ``FOCUS_MIN_STEP`` =
0.05 therefore flags blur from about sigma 0.6 px (0.3 um) on at that sampling. The
measure is relative to the slide: a slide blurred all over is not flagged by its own tiles,
so the summary also gives the median (compare slides of one scanner in a cohort). Glass and
tissue without nuclei read sharp (noise is sharp): only windows whose nuclei cover at least
``MIN_NUCLEUS_COVER`` of the pixels are measured, and tiles without one are not judged.

References
----------
.. [1] F. Crete, T. Dolmiere, P. Ladret, M. Nicolas (2007). The blur effect: perception and
   estimation with a new no-reference perceptual blur metric. Proc. SPIE 6492, Human Vision
   and Electronic Imaging XII, 64920I. doi:10.1117/12.702790
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["blur_outliers", "focus_summary", "tile_blur"]

REF_CRETE_2007 = ("Crete F, Dolmiere T, Ladret P, Nicolas M (2007) The blur effect: "
                  "perception and estimation with a new no-reference perceptual blur metric. "
                  "Proc SPIE 6492:64920I. doi:10.1117/12.702790")
#: Edge of the windows a tile is measured on (up to four per tile, at its quadrants'
#: centres: a quarter of a 2048 px tile, ~0.2 s, where the whole tile took ~0.8 s).
FOCUS_WINDOW_PX = 512
#: Narrowest window measured (thin strips of tiles at a slide's edge are skipped).
MIN_WINDOW_PX = 64
#: Share of a window's pixels in nuclei for it to be measured.
MIN_NUCLEUS_COVER = 0.05
#: A tile is out of focus when its blur exceeds the slide median by more than this many
#: robust standard deviations and by at least FOCUS_MIN_STEP (blur-effect units).
FOCUS_MAD_FACTOR = 4.0
FOCUS_MIN_STEP = 0.05


def _windows(h: int, w: int, size: int) -> list[tuple[int, int, int, int]]:
    """Up to four ``size`` squares centred on the quadrants of an h x w core (the whole core
    when it is smaller than two windows across)."""
    if h < 2 * size or w < 2 * size:
        return [(0, h, 0, w)]
    out = []
    for cy in (h // 4, 3 * h // 4):
        for cx in (w // 4, 3 * w // 4):
            y0, x0 = cy - size // 2, cx - size // 2
            out.append((y0, y0 + size, x0, x0 + size))
    return out


def tile_blur(nuclear: np.ndarray, nuclei: np.ndarray, *,
              window: int = FOCUS_WINDOW_PX) -> float | None:
    """Blur effect (Crete et al. 2007) of a tile's nuclear channel: the median over its
    measured windows (see the module notes), or None when no window holds enough nuclei.

    Parameters
    ----------
    nuclear : (Y, X) array
        Nuclear-marker abundance of the tile core.
    nuclei : (Y, X) int array
        Nucleus labels of the same pixels (0 = none).
    """
    from skimage.measure import blur_effect

    img = np.asarray(nuclear, dtype=np.float32)
    lab = np.asarray(nuclei)
    vals = []
    for y0, y1, x0, x1 in _windows(*img.shape, window):
        if y1 - y0 < MIN_WINDOW_PX or x1 - x0 < MIN_WINDOW_PX:
            continue  # a thin strip at the slide's edge reads sharper (0.26 for 20 px)
        if np.count_nonzero(lab[y0:y1, x0:x1]) < MIN_NUCLEUS_COVER * (y1 - y0) * (x1 - x0):
            continue
        win = img[y0:y1, x0:x1]
        if not np.isfinite(win).all() or win.min() == win.max():
            continue  # no edges to judge (blur_effect calls a flat window 1, "all blur")
        # a contiguous copy: the float32 filters' rounding then does not depend on how the
        # caller's array is laid out (a view of a (Y, X, K) stack gave differences of 1e-8)
        b = float(blur_effect(np.ascontiguousarray(win)))
        if np.isfinite(b):
            vals.append(b)
    return float(np.median(vals)) if vals else None


def blur_outliers(values) -> tuple[float | None, float | None, float | None, np.ndarray]:
    """(median, MAD, threshold, flagged) of blur values (NaN = not measured): flagged above
    ``median + max(FOCUS_MAD_FACTOR * 1.4826 * MAD, FOCUS_MIN_STEP)``; nothing is judged
    with fewer than three measured values (a median and a spread need a few)."""
    vals = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(vals)
    if ok.sum() < 3:
        return None, None, None, np.zeros(vals.shape, bool)
    med = float(np.median(vals[ok]))
    mad = float(np.median(np.abs(vals[ok] - med)))
    thr = med + max(FOCUS_MAD_FACTOR * 1.4826 * mad, FOCUS_MIN_STEP)
    return med, mad, thr, ok & (vals > thr)


def focus_summary(blur: list[float | None], boxes: list[tuple[int, int, int, int]],
                  cells: Any, scored: Any, pixel_size_um: float, *,
                  left_out: bool = False) -> dict:
    """The ``focus`` block of a slide summary from the tiles' blur values.

    Parameters
    ----------
    blur : per tile, the :func:`tile_blur` value or None
    boxes : per tile, (y0, y1, x0, x1) of its core, px
    cells, scored : per-cell tables (column ``tile``) of the slide and of its cells to score
        (before any are left out by their flags)
    left_out : whether the cells of out-of-focus tiles are left out of the scores (the
        warning then says so)

    Returns
    -------
    dict
        ``median`` (of the measured tiles, however few), ``mad`` and ``threshold`` (None
        with fewer than three: no tile is judged), ``n_tiles_measured``, ``tiles`` (index, box,
        blur, out_of_focus), ``out_of_focus_tiles``, ``percent_cells_out_of_focus``,
        ``percent_scored_cells_out_of_focus``, ``warnings``, the metric and its reference.
    """
    vals = np.array([np.nan if b is None else b for b in blur], dtype=np.float64)
    ok = np.isfinite(vals)
    d: dict[str, Any] = {
        "metric": "blur effect of the nuclear channel (0 sharp, towards 1 blurred)",
        "reference": REF_CRETE_2007, "n_tiles": len(blur), "n_tiles_measured": int(ok.sum()),
        "median": None, "mad": None, "threshold": None, "out_of_focus_tiles": [],
        "percent_cells_out_of_focus": 0.0, "percent_scored_cells_out_of_focus": 0.0,
        "warnings": []}
    med, mad, thr, flagged = blur_outliers(vals)
    if ok.any():  # the median of a few tiles still compares slides in a cohort
        med = float(np.median(vals[ok]))
    d.update(median=med, mad=mad, threshold=thr)
    d["tiles"] = [{"tile": i, "box_px": list(map(int, boxes[i])),
                   "blur": None if not ok[i] else float(vals[i]),
                   "out_of_focus": bool(flagged[i])} for i in range(len(blur))]
    d["out_of_focus_tiles"] = [int(i) for i in np.flatnonzero(flagged)]
    bad = set(d["out_of_focus_tiles"])
    for key, tab in (("percent_cells_out_of_focus", cells),
                     ("percent_scored_cells_out_of_focus", scored)):
        if tab is not None and len(tab) and "tile" in tab:
            d[key] = 100.0 * float(np.isin(np.asarray(tab["tile"]), list(bad)).mean())
    if bad:
        ps = float(pixel_size_um)
        area = sum((b[1] - b[0]) * (b[3] - b[2]) for i, b in enumerate(boxes) if i in bad)
        with_cells = scored is not None
        d["warnings"].append(
            f"{len(bad)} of {d['n_tiles_measured']} measured tiles look out of focus (blur "
            f"above {d['threshold']:.3f}, the slide median {d['median']:.3f}; "
            f"{area * ps * ps / 1e6:.2f} mm2"
            + (f", {d['percent_scored_cells_out_of_focus']:.1f} % of the cells to score"
               if with_cells else "")
            + "): segmentation and levels are less reliable there; "
            + ("their cells are left out of the scores (exclude_flagged); check that what "
               "remains represents the tumour, or rescan" if left_out else
               "check them (qc_regions.geojson"
               + ("; cells.parquet: out_of_focus" if with_cells else "") + ") or rescan"))
    return d


def qc_geojson(focus: dict) -> dict:
    """Out-of-focus tiles as a GeoJSON FeatureCollection of QuPath annotations (class
    ``Out of focus``, with the tile's blur as a measurement), in full-resolution pixels."""
    from qdmed.imaging._geojson import annotation_feature, rectangle_ring

    feats = []
    for t in focus["tiles"]:
        if not t["out_of_focus"]:
            continue
        y0, y1, x0, x1 = t["box_px"]
        feats.append(annotation_feature(
            rectangle_ring(x0, y0, x1, y1), f"tile {t['tile']}: out of focus",
            classification="Out of focus", color=[255, 140, 0],
            measurements={"Blur effect": t["blur"]}))
    return {"type": "FeatureCollection", "features": feats}


def focus_figure(focus: dict, shape_yx: tuple[int, int], name: str | None = None):
    """Map of the tiles' blur (grey: not measured; outlined red: out of focus) of the slide
    ``name``. The colours span at least 0.05 blur units, so that tiles differing by a few
    thousandths do not look patchy."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    fig, ax = plt.subplots(figsize=(5.5, 5.5 * shape_yx[0] / max(shape_yx[1], 1) + 0.6))
    vals = [t["blur"] for t in focus["tiles"] if t["blur"] is not None]
    lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
    if hi - lo < 0.05:
        mid = (hi + lo) / 2
        lo, hi = mid - 0.025, mid + 0.025
    cmap = plt.get_cmap("viridis")
    for t in focus["tiles"]:
        y0, y1, x0, x1 = t["box_px"]
        colour = "lightgrey" if t["blur"] is None else cmap((t["blur"] - lo) / (hi - lo))
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, facecolor=colour,
                               edgecolor="red" if t["out_of_focus"] else "white",
                               linewidth=2.0 if t["out_of_focus"] else 0.5))
    ax.set_xlim(0, shape_yx[1])
    ax.set_ylim(shape_yx[0], 0)
    ax.set_aspect("equal")
    ax.set_xlabel("x (px)")
    ax.set_ylabel("y (px)")
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(lo, hi))
    fig.colorbar(sm, ax=ax, label="blur effect (Crete 2007)", shrink=0.8)
    ax.set_title((f"{name}: " if name else "")
                 + f"focus by tile, {len(focus['out_of_focus_tiles'])} out of focus (red)",
                 fontsize=10)
    fig.tight_layout()
    return fig
