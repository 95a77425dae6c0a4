"""HTML report of an analysed slide: overlays, per-marker histograms, HER2 scatter and the
score table. Renders what the result holds; the only pixels read are a low-resolution level
of the unmixed image that the analysis wrote."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qdmed.imaging._cohort import slide_stem

_CAT_COLOURS = {"0": "#3b4cc0", "1+": "#7bb0ff", "2+": "#f7a35c", "3+": "#b40426"}


def _thumbnail(unmixed_path: Path, max_px: int = 900):
    """A low-resolution (Y, X, K) level of the unmixed OME-Zarr and its downsampling factor."""
    from qdmed.imaging._slideio import read_slide

    s = read_slide(unmixed_path, check_chunks=False)
    best = s.levels[0] if s.levels else s.data
    for lev in (s.levels or (s.data,)):
        best = lev
        if max(lev.shape[:2]) <= max_px:
            break
    factor = s.data.shape[0] / best.shape[0]
    return np.asarray(best.compute()), factor, s.channel_names


_PALETTE = ((0.25, 0.45, 1.0), (1.0, 0.15, 0.15), (0.15, 1.0, 0.15), (1.0, 0.85, 0.0))


def _composite(img, names: list[str], top=None, first: str | None = None):
    """RGB composite of an unmixed (Y, X, K) image: the counterstain blue, then up to three
    markers (``first`` first when present, then in panel order) red, green, yellow, each
    scaled to ``top`` (per channel; default its 99.5th percentile here). Returns (rgb,
    legend, top)."""
    picks = [n for n in names if n == "DAPI"][:1]
    rest = [n for n in names if n not in ("DAPI", "autofluorescence")]
    picks += sorted(rest, key=lambda n: n != first)[:3]
    if top is None:
        top = {n: float(np.percentile(img[..., names.index(n)], 99.5)) for n in picks}
    comp = np.zeros(img.shape[:2] + (3,))
    legend = []
    for j, n in enumerate(picks):
        if top.get(n, 0) > 0:
            comp += np.clip(img[..., names.index(n)] / top[n], 0, 1)[..., None] * \
                np.array(_PALETTE[j])
        legend.append(f"{n} {['blue', 'red', 'green', 'yellow'][j]}")
    return np.clip(comp, 0, 1), legend, top


def core_gallery_figure(result, rows: list[dict], target_px: int = 96, max_cores: int = 400):
    """Every region (TMA core) cut from the unmixed image at the pyramid level where it
    spans about ``target_px``, in the composite of :func:`overlay_figure` on one intensity
    scale for all cores, titled with its name and HER2 category (missing cores: an empty
    frame); None without the unmixed image or region centres and areas. TMA cores share
    one window size; named annotations each get a window sized to their own area (its
    width in the title)."""
    import matplotlib.pyplot as plt

    from qdmed.imaging._slideio import read_slide

    path = Path(result.out_dir) / "unmixed.ome.zarr"
    placed = [r for r in rows if np.isfinite(r.get("center_x_um", np.nan))]
    shown = placed[:max_cores]
    if not path.exists() or not shown or not any(r.get("area_mm2") for r in shown):
        return None
    s = read_slide(path, check_chunks=False)  # said when the slide was analysed
    ps = s.pixel_size_um or 0.5
    levels = list(s.levels or (s.data,))
    d_med = 2e3 * np.sqrt(np.median([r["area_mm2"] for r in shown if r.get("area_mm2")])
                          / np.pi)
    # TMA cores (alike in size) share one window, 1.1 diameters of the median core; named
    # annotations get their own, 1.5 area-equivalent diameters (an ellipse of axes 2.2:1
    # fits), so a large one is not cropped to its middle nor a small one lost in its
    # surroundings
    tma = bool((result.summary.get("scored_cells", {}).get("regions") or {}).get("tma"))

    def window_um(r) -> float:
        if tma or not r.get("area_mm2"):
            return 1.1 * d_med
        return 1.5 * 2e3 * np.sqrt(r["area_mm2"] / np.pi)

    def level_for(w_um: float):
        """The coarsest level on which the window still spans target_px."""
        lev = levels[0]
        for cand in levels:
            if w_um / 1.1 / ps * cand.shape[0] / s.data.shape[0] >= target_px:
                lev = cand
        return lev, s.data.shape[0] / lev.shape[0]
    thumb, _, _ = _thumbnail(path, 900)
    names = list(s.channel_names)
    _, legend, top = _composite(thumb, names, first="HER2")
    ncol = min(12, len(shown))
    parts = [str(r["region"]).rsplit("-", 1) for r in shown]
    if all(len(q) == 2 for q in parts):  # a full grid of "row-column" names: its layout
        n1, n2 = len({q[0] for q in parts}), len({q[1] for q in parts})
        if n1 * n2 == len(shown) and n2 <= 24:
            ncol = n2
    nrow = -(-len(shown) // ncol)
    width = max(1.3 * ncol, 4.0)
    fig, axes = plt.subplots(nrow, ncol, figsize=(width, 1.45 * nrow + 0.3), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, r in zip(axes.ravel(), shown, strict=False):
        cat = r.get("her2_category")
        w_um = window_um(r)
        lev, f = level_for(w_um)
        half = int(np.ceil(w_um / ps / f / 2))
        hh, ww = lev.shape[:2]
        ax.set_title(f"{r['region']} {cat or r['status']}"
                     + ("" if tma else f" ({w_um / 1e3:.2g} mm)"), fontsize=6,
                     color=_CAT_COLOURS.get(cat, "#555555"))
        if r["status"] == "missing":  # an empty, dashed frame
            ax.set_axis_on()
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_linestyle("--")
                side.set_edgecolor("#999999")
            continue
        cy = int(round(r["center_y_um"] / ps / f))
        cx = int(round(r["center_x_um"] / ps / f))
        # a fixed window around the centre; what falls off the slide stays black
        canvas = np.zeros((2 * half + 1, 2 * half + 1, len(names)))
        y0, y1 = max(cy - half, 0), min(cy + half + 1, hh)
        x0, x1 = max(cx - half, 0), min(cx + half + 1, ww)
        if y1 > y0 and x1 > x0:
            canvas[y0 - (cy - half):y1 - (cy - half), x0 - (cx - half):x1 - (cx - half)] = \
                np.asarray(lev[y0:y1, x0:x1].compute(), dtype=np.float64)
        ax.imshow(_composite(canvas, names, top)[0])
    more = f"; the first {len(shown)} of {len(placed)}" if len(placed) > len(shown) else ""
    import textwrap

    what = "cores" if tma else "regions, each window sized to its region"
    fig.suptitle(textwrap.fill(f"{what} ({', '.join(legend)}; one intensity scale{more})",
                               width=int(width * 15)), fontsize=8)
    fig.tight_layout()
    return fig


def overlay_figure(result, max_px: int = 900):
    """Composite of the unmixed markers with cell centroids coloured by HER2 category."""
    import matplotlib.pyplot as plt

    out = Path(result.out_dir)
    img, factor, names = _thumbnail(out / "unmixed.ome.zarr", max_px)
    # a readable composite: counterstain blue, then up to three markers red / green / yellow
    comp, legend, _ = _composite(img, list(names))
    fig, axes = plt.subplots(1, 2, figsize=(12, 6))
    axes[0].imshow(comp)
    axes[0].set_title(", ".join(legend), fontsize=9)
    axes[1].imshow(comp * 0.5)
    cells = result.cells()
    if result.her2 is not None and len(cells):
        cats = result.her2.cells.set_index("cell_id")["category"].reindex(cells["cell_id"])
        col = [_CAT_COLOURS.get(str(c), "#999999") for c in cats]
        axes[1].set_title("cells by per-cell HER2 category", fontsize=9)
    else:
        col = "#ffffff"
        axes[1].set_title("cell centroids", fontsize=9)
    if len(cells):
        axes[1].scatter(cells["centroid_x"] / factor, cells["centroid_y"] / factor, s=4, c=col)
        if result.her2 is not None:
            for cat, colour in _CAT_COLOURS.items():
                axes[1].scatter([], [], s=20, c=colour, label=f"HER2 {cat}")
            axes[1].legend(fontsize=7, loc="upper right", framealpha=0.8)
    ps = result.summary.get("settings", {}).get("pixel_size_um")
    for a in axes:
        if ps:
            um_axes(a, factor * ps)
        else:
            a.set_xlabel(f"x (px / {factor:g})")
            a.set_ylabel(f"y (px / {factor:g})")
    fig.tight_layout()
    return fig


def unmixed_figure(unmixed_path, max_px: int = 600):
    """Every channel of an unmixed OME-Zarr (each component's abundance and the relative
    residual) side by side on its coarsest level up to ``max_px`` across, each scaled from
    0 to its own 99.5th percentile (the residual from 0 to 1, the share of a pixel's signal
    the panel does not explain)."""
    import matplotlib.pyplot as plt

    img, factor, names = _thumbnail(Path(unmixed_path), max_px)
    k = img.shape[-1]
    cols = min(k, 4)
    rows = -(-k // cols)
    # each panel its colour bar (the same size for all) and room for its title above
    fig, axes = plt.subplots(rows, cols, figsize=(3.8 * cols, (3.3 * img.shape[0]
                                                               / max(img.shape[1], 1) + 0.45)
                                                  * rows + 0.4),
                             squeeze=False)
    for j, ax in enumerate(axes.ravel()):
        ax.set_axis_off()
        if j >= k:
            continue
        ch = img[..., j]
        resid = names[j] == "residual"
        top = 1.0 if resid else float(np.percentile(ch, 99.5))
        im = ax.imshow(ch, cmap="magma" if resid else "gray", vmin=0,
                       vmax=top if top > 0 else 1.0)
        ax.set_title(names[j] + (" (relative)" if resid else ""), fontsize=8)
        bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
        bar.ax.tick_params(labelsize=7)
    scale = "full resolution" if factor == 1 else f"1/{factor:g} scale"
    fig.suptitle(f"{Path(unmixed_path).name}: every channel at {scale}", fontsize=9)
    fig.tight_layout()
    return fig


def histogram_figure(cells, components):
    import matplotlib.pyplot as plt

    comps = [c for c in components if c != "autofluorescence"]
    n = len(comps)
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 2.6), squeeze=False)
    for ax, m in zip(axes[0], comps, strict=True):
        for comp, ls in (("nucleus", "-"), ("cytoplasm", "--"), ("membrane", ":")):
            col = f"{m}_{comp}_mean"
            if col in cells and len(cells):
                v = cells[col].dropna().to_numpy()
                v = v[v > 0]
                if v.size:
                    ax.hist(np.log10(v), bins=40, histtype="step", ls=ls, label=comp)
        ax.set_title(m, fontsize=9)
        ax.set_xlabel("log10 mean abundance")
    axes[0][0].set_ylabel("cells")
    if axes[0][0].get_legend_handles_labels()[0]:  # no cells, no curves: no legend
        axes[0][0].legend(fontsize=6, frameon=False)
    fig.tight_layout()
    return fig


def her2_figure(her2):
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    c = her2.cells
    fig, ax = plt.subplots(figsize=(5, 4))
    for cat, colour in _CAT_COLOURS.items():
        sel = c["category"].astype(str) == cat
        ax.scatter(c.loc[sel, "completeness"], c.loc[sel, "intensity"], s=4, c=colour,
                   label=f"{cat} ({int(sel.sum())})")
    cal = her2.calibration
    cut = cal.cutoffs if hasattr(cal, "cutoffs") else (cal["faint"], cal["weak_moderate"],
                                                       cal["intense"])
    for v, name in zip(cut, ("faint", "weak-moderate", "intense"), strict=True):
        ax.axhline(v, color="grey", lw=0.8, ls="--")
        # x in axes fraction: at x=0.01 in data units, cells all of completeness 1 put the
        # names far outside the axes, and the layout failed
        ax.text(0.01, v, name, fontsize=7, va="bottom", transform=ax.get_yaxis_transform())
    ax.set_xlim(-0.02, 1.02)  # completeness is a fraction
    ax.set_yscale("symlog", linthresh=max(cut[0] / 2, 1e-6))
    # plain numbers: the reports draw with math text off (names as given), and the log
    # formatter's ticks are math text ('$\\mathdefault{10^{2}}$' was printed as such)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("membrane completeness (fraction of perimeter)")
    ax.set_ylabel("stained-membrane HER2 (abundance)")
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


#: Colours of the receptor statuses on a map of regions (as the HER2 categories': negative
#: as 0, positive as 3+); each marker's map shows the statuses its rule has (PgR no "low
#: positive").
_STATUS_COLOURS = {"negative": "#3b4cc0", "low positive": "#f7a35c", "positive": "#b40426"}


def regions_map_figure(rows: list[dict], key: str = "her2_category", title: str = "HER2"):
    """Where the regions lie (their centres; a TMA's grid), each marked by its HER2
    category (``key`` 'her2_category') or a receptor's status (``key`` '{marker}_status',
    e.g. 'ER_status'; ``title`` the legend's) (grey: not scored; hollow: missing) and
    named; None without centres."""
    import matplotlib.pyplot as plt

    pts = [r for r in rows if np.isfinite(r.get("center_x_um", np.nan))]
    if not pts:
        return None
    if key == "her2_category":
        colours = _CAT_COLOURS
    else:  # the statuses of the marker's ASCO/CAP rule (ER three, PgR two)
        from qdmed.imaging._receptors import _RULES

        rule = _RULES.get(key.removesuffix("_status"))
        colours = {k: v for k, v in _STATUS_COLOURS.items() if rule is None or k in rule[1]}
    dark = {colours[k] for k in (next(iter(colours)), list(colours)[-1])}  # white text
    fig, ax = plt.subplots(figsize=(6, 5))
    for r in pts:
        shown = r.get(key)
        c = str(shown).removesuffix(" (borderline)")  # a status near its cut-off: coloured
        c = c if c in colours else None  # as it reads; 'insufficient cells': by the status
        x, y = r["center_x_um"], r["center_y_um"]
        if r["status"] == "missing":
            ax.scatter(x, y, s=500, facecolors="none", edgecolors="#999999", linestyles="--")
        else:
            ax.scatter(x, y, s=500, c=colours.get(c, "#bbbbbb"), edgecolors="k",
                       linewidths=0.5)
        ax.annotate(f"{r['region']}\n{r['status'] if shown is None else shown}", (x, y),
                    ha="center",
                    va="center", fontsize=6,
                    color="white" if colours.get(c) in dark else "black")
    for c, colour in colours.items():
        ax.scatter([], [], s=40, c=colour, label=c)
    ax.scatter([], [], s=40, c="#bbbbbb", label="not scored")
    ax.invert_yaxis()
    ax.set_aspect("equal")
    ax.margins(0.12)
    ax.set_xlabel("x (um)")
    ax.set_ylabel("y (um)")
    ax.legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1, 0.5),
              title=title, title_fontsize=7)
    fig.tight_layout()
    return fig


def _columns(rows: list[dict], columns: tuple[str, ...]) -> list[dict]:
    """The rows with those of ``columns`` that any row has, in that order ("" if absent)."""
    cols = [c for c in columns if any(c in r for r in rows)]
    return [{c: r.get(c, "") for c in cols} for r in rows]


def regions_section(rep, result) -> None:
    """The report's per-region section (TMA cores or named annotations), if any."""
    by_region = result.summary.get("regions_scored")
    if not by_region:
        return
    rows = by_region["regions"]
    rep.heading("Regions scored one by one" + (" (TMA cores)" if (
        result.summary["scored_cells"].get("regions") or {}).get("tma") else ""))
    rep.paragraph(f"{by_region['n_regions']} regions: " + ", ".join(
        f"{n} {k}" for k, n in by_region["by_status"].items())
        + f". Each region with at least {by_region['min_cells']} scored cells is scored as a "
        "slide of its own cells; table: regions.csv.")
    fig = regions_map_figure(rows)
    if fig is not None:
        rep.figure(fig, "regions by HER2 category")
    if result.summary["outputs"].get("unmixed"):
        fig = core_gallery_figure(result, rows)
        if fig is not None:
            rep.figure(fig, "the regions' images")
    fig = cohort_figure(rows, name_key="region", what="regions")
    if fig is not None:
        rep.figure(fig, "HER2 categories and mean membrane HER2 per scored region")
    rep.table(_columns(rows, ("region", "case", "status", "n_cells", "n_scored",
                              "cells_per_mm2", "her2_category", "her2_low", "her2_ultralow",
                              "her2_mean_membrane", "ER_status", "PR_status", "message")))
    by_case = result.summary.get("cases_scored")
    if by_case:
        cases = by_case["cases"]
        rep.heading("Cases (TMA map)")
        rep.paragraph(f"{by_case['n_cases']} cases: {case_rule_text(by_case.get('rule'))} "
                      "(cases.csv; compare with another scoring by `qdmed image compare "
                      "cases.csv reads.csv --key case`).")
        rep.table(_columns(cases, _CASE_COLUMNS))


#: Columns of the reports' case tables (those present).
_CASE_COLUMNS = ("case", "status", "cores", "n_scored", "her2_category", "her2_core",
                 "her2_core_categories", "her2_low", "her2_mean_membrane", "ER_status",
                 "PR_status", "message")


def case_rule_text(rule: str | None) -> str:
    """How the cases were made from their cores, in words."""
    if rule == "highest":
        return ("each takes the HER2 result of its highest-scoring core (her2_core; cores "
                "with enough cells) and, per marker, its most positive core's")
    return "each scored on the scored cells of all its cores pooled, as one slide"


def receptor_paragraph(marker: str, status: dict) -> str:
    """One line of text for a receptor status (``ReceptorStatus.to_dict()``)."""
    return (f"{marker} {status['label']}: {status['rule']}."
            + "".join(f" Warning: {w}." for w in status.get("warnings") or ()))


def unmixing_paragraph(s: dict) -> str | None:
    """How a slide was unmixed (summary.json's settings); None for an image unmixed before
    qdmed read it."""
    if (s.get("panel") or {}).get("unmixed"):
        return None
    from qdmed.imaging._poisson import describe_unmixing

    st = s.get("settings") or {}
    if st.get("unmix_weights") == "poisson":
        return (f"Unmixing: {describe_unmixing(st)} per pixel, abundances >= 0; the "
                "residual map weights each channel by 1 / its expected variance.")
    return "Unmixing: exact non-negative least squares per pixel."


def segmentation_paragraph(s: dict) -> str:
    """Where a slide's nuclei and cells came from (summary.json's settings and labels)."""
    given = s.get("labels")
    st = s.get("settings") or {}
    if not given:
        method = st.get("segmentation", "watershed")
        package = (s.get("segmentation") or {}).get("package")
        if package:  # cellpose or StarDist: which model, at which pixel size
            model = st.get("segmentation_model")
            which = f"the model {Path(model).name}" if model else "its pretrained nuclear model"
            method = (f"{package} ({which}, seen at "
                      f"{st.get('segmentation_pixel_size_um', 0.5):g} um per pixel)")
        return (f"Segmentation: nuclei by {method} on the "
                f"unmixed {st.get('nuclear_marker', 'nuclear')} channel, cells by "
                "membrane-guided expansion.")

    def source(li):
        where = Path(li["file"]).name + (f", channel {li['channel']}" if li["channel"] else "")
        if li.get("downsample", 1) != 1:
            where += f", at a downsample of {li['downsample']}"
        return where

    drawn = given.get("objects")
    text = ("Segmentation given: nuclei from " + (f"{Path(drawn).name} (GeoJSON objects)"
                                                  if drawn else source(given["nuclei"])))
    if given.get("cells"):
        text += (", cells from " + (Path(drawn).name if drawn else source(given["cells"]))
                 + f" ({given['cells_without_nucleus']} cells without a nucleus left out)")
    else:
        text += ", cells by membrane-guided expansion from them"
    return text + "."


def saturation_paragraph(sat: dict) -> str:
    """One line on detector saturation from a summary's ``saturation`` block."""
    if not sat["checked"]:
        text = f"Detector saturation {sat['source']}."
    else:
        chans = ", ".join(f"{c} {v}" for c, v in sat["saturated_pixels"].items() if v)
        text = (f"Detector saturation (ceiling {sat['level_adu']:g} counts, {sat['source']}): "
                + (f"{sat['percent_scored_cells_saturated']:.1f} % of scored cells hold "
                   "saturated pixels; " if sat.get("percent_scored_cells_saturated")
                   is not None else "")
                + (f"saturated pixels by channel: {chans}." if chans
                   else "no saturated pixel."))
    return text + "".join(f" Warning: {w.rstrip('.')}." for w in sat.get("warnings", []))


def _plain_text(write):
    """Run a report writer with matplotlib's math text off: slide, core and case names are
    drawn as given (a '$' in a name was parsed as math and crashed the report)."""
    import functools

    @functools.wraps(write)
    def wrapper(*args, **kwargs):
        import matplotlib.pyplot as plt

        with plt.rc_context({"text.parse_math": False}):
            return write(*args, **kwargs)

    return wrapper


@_plain_text
def write_slide_report(result, path=None) -> Path:
    """Write ``report.html`` beside the analysis outputs."""
    from qdmed.imaging._panel import Panel
    from qdmed.report import HtmlReport

    s = result.summary
    rep = HtmlReport(f"qdmed slide analysis: {Path(s['slide']['path']).name}",
                     provenance={"slide": s["slide"], "settings": s["settings"]})
    rep.paragraph(f"{s['n_cells']} cells in {s['n_tiles']} tiles "
                  f"({s['n_tiles_resumed']} resumed), {s['n_workers']} worker(s), "
                  f"scheduler {s['scheduler']}, {s['elapsed_s']:.1f} s.")
    # every warning of the run first, as the command line prints them: a calibration made
    # on another intensity scale was said on stderr only, beside an ER 99 % of a 62 % truth
    rep.flags(result.warnings)
    sel = s.get("scored_cells") or {}
    if sel:
        src = (sel.get("regions") or {}).get("source")
        rep.paragraph(f"Scores use {sel['n_scored']} cells: {sel['cells']}"
                      + (f" ({Path(src).name})." if src else ".")
                      + (" Left out: " + ", ".join(
                          f"{v} {k.replace('_', ' ')}" for k, v in sel["excluded"].items()
                          if k != "total") + " cells." if sel.get("excluded") else "")
                      + "".join(f" Warning: {w}." for w in sel.get("warnings") or ())
                      + (f" Note: {sel['note']}." if sel.get("note") else ""))
    how = unmixing_paragraph(s)
    if how:
        rep.paragraph(how)
    rep.paragraph(segmentation_paragraph(s) + "".join(
        f" Warning: {w.rstrip('.')}." for w in (s.get("segmentation") or {}).get("warnings", [])))
    sat = s.get("saturation")
    if sat:
        rep.paragraph(saturation_paragraph(sat))
    offs = s.get("offset") or {}
    if offs.get("channel_min"):
        given = sorted(set(offs["offset_adu"].values()))
        rep.paragraph("Detector offset subtracted: "
                      + ("none (dark-corrected image assumed)" if given == [0.0] else
                         ", ".join(f"{k} {v:g}" for k, v in offs["offset_adu"].items()))
                      + "; floor per channel after it (lowest counts of its darkest tiles): "
                      + ", ".join(f"{k} {v:g}" for k, v in offs["floor_after_offset"].items())
                      + "." + "".join(f" Warning: {w.rstrip('.')}." for w in offs["warnings"]))
    foc = s.get("focus")
    if foc and foc["median"] is not None:
        from qdmed.imaging._focus import focus_figure

        rep.paragraph(f"Focus: blur effect of the nuclear channel (Crete et al., Proc SPIE "
                      f"2007, doi:10.1117/12.702790; 0 sharp) median {foc['median']:.3f} over "
                      f"{foc['n_tiles_measured']} measured tiles; "
                      + (f"{len(foc['out_of_focus_tiles'])} out of focus (above "
                         f"{foc['threshold']:.3f})." if foc["threshold"] is not None else
                         "too few tiles to judge one against the others.")
                      + "".join(f" Warning: {w.rstrip('.')}." for w in foc["warnings"]))
        if foc["out_of_focus_tiles"]:
            rep.figure(focus_figure(foc, tuple(s["slide"]["shape"][:2])), "focus by tile")
    fit = s.get("fit") or {}
    if fit.get("misfit") is not None:
        rep.paragraph(f"Fit of the panel: {100 * fit['misfit']:.1f} % of the brightest cells' "
                      f"signal is left unexplained beyond the noise (right panels on synthetic "
                      f"fields: 0.0 %; a label the panel lacks: 39-47 %; "
                      f"{fit['n_samples']} cell pixels sampled)."
                      + (f" Among the pixels brightest in {fit['worst_channel']}: "
                         f"{100 * fit['misfit_by_channel'][fit['worst_channel']]:.1f} % "
                         "(right panels: under 30 %; a membrane label the panel lacks, on "
                         "cells that express it: over 60 %)."
                         if fit.get("worst_channel") else "")
                      + "".join(f" Warning: {w.rstrip('.')}." for w in fit["warnings"]))
    rep.heading("Panel")
    panel = Panel.from_dict(s["panel_file"], source="summary.json")
    if panel.unmixed:
        rep.paragraph("The image was unmixed before qdmed read it (an already-unmixed panel): "
                      "each component is its image channel, clipped at zero. Crosstalk "
                      "between the labels is that of the software that unmixed it.")
        rep.table({"image channel of each component": s["panel"]["labels"],
                   "image channels": s["panel"]["image_channels"]})
    else:
        rep.table({"labels": s["panel"]["labels"],
                   "condition number": s["panel"]["condition_number"],
                   "warnings": s["panel"]["warnings"] or "none"})
        rep.figure(panel.plot(), "panel")
    af = s.get("autofluorescence") or {}
    if af:
        keys = ("source", "angle_to_labels_deg", "split_half_cosine", "offset_fraction",
                "map_coherence", "rounds")
        rep.paragraph("Autofluorescence endmember: " + "; ".join(
            f"{k.replace('_', ' ')} {af[k]:.4g}" if isinstance(af[k], float) else
            f"{k.replace('_', ' ')} {af[k]}" for k in keys if k in af) + "."
            + "".join(f" Warning: {w.rstrip('.')}." for w in af.get("warnings", [])))
    if s["outputs"].get("unmixed"):
        rep.heading("Unmixed image and cells")
        rep.figure(overlay_figure(result), "overlay")
    cells = result.cells()
    rep.heading("Per-marker distributions")
    rep.figure(histogram_figure(cells, s["panel"]["components"]), "histograms")
    rep.table({m: v for m, v in s["marker_summary"].items()})
    ms = s.get("markers_scored") or {}
    if ms:
        rep.heading("Positivity (gates from negative controls)")
        rep.table({m: {"percent positive": ms["percent_positive"].get(m), **g}
                   for m, g in ms["gates"].items()})
        if ms.get("phenotypes"):
            rep.table({"phenotypes (cells)": ms["phenotypes"]})
            if ms.get("phenotype_her2"):
                rep.paragraph(f"HER2 in the phenotypes: {ms['phenotype_her2']}.", cls="muted")
        for m, st in (ms.get("receptor_status") or {}).items():
            rep.paragraph(receptor_paragraph(m, st))
        if ms.get("receptor_status"):
            rep.paragraph("ER/PgR status by the ASCO/CAP 2020 percentage rules (Allison et al., "
                          "J Clin Oncol 2020, doi:10.1200/JCO.19.02309), corrected for the "
                          "share of negative cells each gate calls positive; borderline when "
                          "the Wilson 95 % interval reaches a cut-off. A research measure, "
                          "not a clinical test.", cls="muted")
    if s.get("subtype"):
        sub = s["subtype"]
        rep.heading("Subtype (HER2 IHC category with ER and PgR status)")
        rep.table({"subtype": sub["label"], "HER2 status": sub["her2_status"],
                   "HR status": sub["hr_status"], "rule": sub["rule"]})
        for n in sub.get("notes") or []:
            rep.paragraph(f"Note: {n}.")
        rep.paragraph("Joint hormone-receptor / HER2 groups (Howlader et al., J Natl Cancer "
                      "Inst 2014, doi:10.1093/jnci/dju055) from the HER2 category (ASCO/CAP "
                      "2018) and the ER/PgR status (ASCO/CAP 2020) above: a research measure, "
                      "as they are.", cls="muted")
    if s.get("her2"):
        h = s["her2"]
        rep.heading("HER2 (ASCO/CAP 2018 style, calibrated on controls)")
        cal = h.get("calibration") or {}
        rep.table({**{k: h[k] for k in ("category", "result", "rule", "her2_low",
                                        "her2_ultralow", "ish_reflex", "n_cells",
                                        "percent_cells_0", "percent_cells_1plus",
                                        "percent_cells_2plus", "percent_cells_3plus",
                                        "mean_membrane_intensity", "total_her2_load",
                                        "percent_positive_area") if k in h},
                   **({"cut-offs (faint / weak-moderate / intense)": " / ".join(
                       f"{cal[k]:.4g}" for k in ("faint", "weak_moderate", "intense")),
                       "calibration": cal.get("rule", "")}
                      if all(k in cal for k in ("faint", "weak_moderate", "intense")) else {})})
        rep.paragraph("mean_membrane_intensity is the mean over the cells of their stained-"
                      "membrane HER2 (the membrane pixels above the slide's completeness "
                      "threshold, settings.completeness_threshold; cells.parquet "
                      "HER2_membrane_stained_mean), the value the cut-offs grade.", cls="muted")
        for w in h.get("warnings") or []:
            rep.paragraph(f"Warning: {w}.")
        rep.paragraph("Categories follow the ASCO/CAP rules (Wolff et al., J Clin Oncol 2018, "
                      "doi:10.1200/JCO.2018.77.8738) with intensity cut-offs from control cell "
                      "lines: a research measure, not a clinical test.", cls="muted")
        if result.her2 is not None:
            rep.figure(her2_figure(result.her2), "HER2 scatter")
        het = getattr(result, "her2_heterogeneity", None)
        if het is not None:
            rep.heading("HER2 heterogeneity")
            rep.paragraph(het.report())
            rep.paragraph(f"Each {het.region_um:g} um square region with at least "
                          f"{het.min_cells} scored cells is scored by the slide's rule as if "
                          "alone. Shannon index of the cells' categories within regions "
                          "(cell level) and of the regions' categories (tumour level), after "
                          "Potts et al., Lab Invest 2012 (doi:10.1038/labinvest.2012.91): "
                          "descriptive, no guideline cut-off. Regions near a cut-off disagree "
                          "by sampling alone: compare with the shuffled value and the "
                          "permutation p-value.", cls="muted")
            if het.n_regions:
                ps = s["settings"].get("pixel_size_um")
                hw = s["slide"]["shape"][:2]
                rep.figure(het.plot(slide_mm=None if not ps else
                                    (hw[0] * ps / 1000, hw[1] * ps / 1000)), "HER2 by region")
    elif "HER2" in s["panel"]["components"]:
        rep.heading("HER2")
        rep.paragraph("HER2 was not scored: no calibration was given. Categories need "
                      "intensity cut-offs calibrated on control cell lines (qdmed image "
                      "calibrate, then --calibration).")
    regions_section(rep, result)
    return rep.write(path or Path(result.out_dir) / "report.html")


def cohort_figure(rows: list[dict], name_key: str = "slide", what: str = "slides"):
    """Slides' HER2 categories (counts) beside each slide's mean membrane HER2 per scored
    cell, coloured by its category; None when no slide was scored. The same for the regions
    of a slide (TMA cores) with ``name_key='region', what='regions'``."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    # a TMA slide's own category pools every patient's cores: its cores and cases are the
    # results (regions.csv, cases.csv), not the slide
    scored = [r for r in rows if r.get("status") == "ok" and r.get("her2_category")
              and not r.get("tma")]
    if not scored:
        return None
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6),
                                 gridspec_kw={"width_ratios": [1, 2.2]})
    cats = list(_CAT_COLOURS)
    counts = [sum(r["her2_category"] == c for r in scored) for c in cats]
    a1.bar(cats, counts, color=[_CAT_COLOURS[c] for c in cats])
    a1.yaxis.set_major_locator(MaxNLocator(integer=True))
    a1.set_xlabel("HER2 category (ASCO/CAP 2018 style)")
    a1.set_ylabel(what)
    # the mean per scored cell, not the total load, which grows with the tissue area
    key = "her2_mean_membrane"
    order = sorted(scored, key=lambda r: (r.get(key) or 0.0))
    a2.bar(range(len(order)), [r.get(key) or 0.0 for r in order],
           color=[_CAT_COLOURS[r["her2_category"]] for r in order])
    if len(order) <= 60:
        a2.set_xticks(range(len(order)), [r[name_key] for r in order], rotation=60,
                      ha="right", fontsize=7)
    else:  # hundreds of names are unreadable: ranks instead (the table names them)
        a2.set_xlabel(f"{what}, ranked")
    a2.set_ylabel("mean stained-membrane HER2 per cell")
    a2.set_title(f"continuous QD measure per {what.rstrip('s')}, coloured by category",
                 fontsize=9)
    fig.tight_layout()
    return fig


def _case_rows(path) -> list[dict]:
    """The rows of a cohort's cases.csv (absent values left out), [] without one."""
    if not path or not Path(path).is_file():
        return []
    import pandas as pd

    table = pd.read_csv(path, dtype={"case": str, "her2_category": str})
    return [{k: v for k, v in r.items() if not (isinstance(v, float) and np.isnan(v))}
            for r in table.to_dict("records")]


@_plain_text
def write_cohort_report(summary: dict, out_dir) -> Path:
    """``report.html`` of a cohort run: status and scores per slide (linked to each slide's
    own report), the distribution of HER2 categories and the continuous HER2 measure."""
    from qdmed.report import HtmlReport

    out = Path(out_dir)
    rows = summary["slides"]
    rep = HtmlReport(f"qdmed cohort: {Path(summary['folder']).name}",
                     provenance={"folder": summary["folder"], "parameters":
                                 summary.get("parameters", {})})
    rep.paragraph(f"{summary['n_slides']} slides: {summary['n_ok']} analysed, "
                  + (f"{summary['n_no_cells']} without cells, " if summary.get("n_no_cells")
                     else "")
                  + f"{summary['n_failed']} failed. One table for all cells: cells.parquet "
                  "(column 'slide'); per-slide table: cohort.csv.")
    fig = cohort_figure(rows)
    if fig is not None:
        rep.heading("HER2")
        rep.figure(fig, "HER2 categories and mean stained-membrane HER2 per slide")
    het = [r for r in rows if r.get("status") == "ok"
           and r.get("her2_spatial_p_value") is not None]
    if het:
        spatial = [r["slide"] for r in het if r["her2_spatial_p_value"] < 0.05]
        rep.paragraph(f"HER2 regional heterogeneity beyond sampling (permutation p < 0.05, "
                      f"uncorrected for the {len(het)} slides tested): "
                      + (", ".join(spatial) if spatial else "none") + ".")
    ok = [r for r in rows if r.get("status") == "ok"]
    blurred = [r["slide"] for r in ok if r.get("slide_out_of_focus")]
    patchy = [f"{r['slide']} ({r['n_tiles_out_of_focus']} tiles)" for r in ok
              if r.get("n_tiles_out_of_focus")]
    saturated = [f"{r['slide']} ({r['percent_scored_cells_saturated']:.1f} %)" for r in ok
                 if (r.get("percent_scored_cells_saturated") or 0) >= 1.0]
    if summary.get("calibration_warnings"):  # once here, not in every slide's row
        rep.heading("Calibration")
        rep.paragraph(" ".join(f"Warning: {w}." for w in summary["calibration_warnings"]))
    if ok:
        rep.heading("Quality control")
        rep.paragraph("Slides out of focus as a whole (median blur above the cohort's): "
                      + (", ".join(blurred) or "none") + ". Slides with out-of-focus tiles: "
                      + (", ".join(patchy) or "none") + ". Slides with 1 % or more of the "
                      "scored cells at the detector ceiling: " + (", ".join(saturated) or "none")
                      + "." + "".join(f" Warning: {w}." for w in
                                      summary.get("acquisition_warnings") or []))
    status = {m: [r[f"{m}_status"] for r in rows if r.get(f"{m}_status") and not r.get("tma")]
              for m in ("ER", "PR")}
    tmas = [r["slide"] for r in rows if r.get("tma")]
    if tmas:
        rep.paragraph("Tissue microarrays (" + ", ".join(tmas) + "): their slide-level scores "
                      "pool every patient's cores and are left out of the figures and counts "
                      "here; their cores and cases are scored in regions.csv and cases.csv.")
    if any(status.values()):
        rep.heading("ER / PgR (ASCO/CAP 2020)")
        rep.table({m: {k: v.count(k) for k in sorted(set(v))} for m, v in status.items() if v})
    n_regions = sum(r.get("n_regions", 0) for r in ok)
    if n_regions:
        rep.paragraph(f"Regions scored one by one (TMA cores or named annotations): "
                      f"{n_regions} in {sum('n_regions' in r for r in ok)} slides, "
                      f"{sum(r.get('n_regions_scored', 0) for r in ok)} scored; one row per "
                      "slide and region in regions.csv, figures in each slide's report.")
    cases = _case_rows(summary.get("cases"))
    if cases:
        by_slides = summary["parameters"].get("case_map") is not None  # cases of slides
        rep.heading("Cases (case map)" if by_slides else "Cases (TMA map)")
        how = ("each scored on the pooled scored cells of its slides (listed as its cores)"
               if by_slides else
               f"{case_rule_text(summary['parameters'].get('case_rule'))}, on every slide")
        rep.paragraph(f"Cases of the {'case' if by_slides else 'TMA'} map: "
                      f"{summary['n_cases']}, {how} (cases.csv; compare with another scoring "
                      "by `qdmed image compare cases.csv reads.csv --key case`).")
        fig = cohort_figure(cases, name_key="case", what="cases")
        if fig is not None:
            rep.figure(fig, "HER2 categories and mean stained-membrane HER2 per case")
        rep.table(_columns(cases, _CASE_COLUMNS))
    rep.heading("Slides")
    cols = ["slide", "status", "n_cells", "n_scored", "her2_category", "her2_low",
            "her2_ultralow", "her2_mean_membrane", "total_her2_load", "her2_highest_region",
            "her2_tumour_level_shannon", "her2_spatial_p_value", "ER_status", "PR_status",
            "message"]
    rep.table([{c: r.get(c, "") for c in cols} for r in rows])
    links = [r["slide"] for r in rows if r.get("status") == "ok"]
    if links:
        rep.links("Slide reports: ", [(n, f"slides/{slide_stem(n)}/report.html")
                                      for n in links])
    return rep.write(out / "report.html")


def um_axes(ax, um_per_unit: float) -> None:
    """Label an image's axes in um when its data units (a thumbnail's pixels) are
    ``um_per_unit`` um each: ticks at round um values (0, 1000, 2000 ...), not at round
    pixel counts shown in um (0, 800, 1600, 2399 ...)."""
    from matplotlib.ticker import FuncFormatter, Locator, MaxNLocator

    class _UmLocator(Locator):
        def __init__(self):
            self.nice = MaxNLocator(nbins="auto", steps=[1, 2, 2.5, 5, 10])

        def __call__(self):
            lo, hi = sorted(self.axis.get_view_interval())
            return self.tick_values(lo, hi)

        def tick_values(self, vmin, vmax):
            return self.nice.tick_values(vmin * um_per_unit, vmax * um_per_unit) / um_per_unit

    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(_UmLocator())
        axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v * um_per_unit:.0f}"))
    ax.set_xlabel("x (um)")
    ax.set_ylabel("y (um)")
