"""The figure of a calibration on control cell lines: what the cut-offs and gates were
drawn from, so that a pathologist can see that each control sits where its score says."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from qdmed.errors import InputError


def _plain_ticks(axis) -> None:
    """Plain numbers on a log axis (the log formatter writes math text, e.g. 2x10^2)."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def _log_bins(values: list[np.ndarray], n: int = 60) -> np.ndarray:
    """Log-spaced bin edges over the positive values of all arrays."""
    pos = np.concatenate([v[v > 0] for v in values]) if values else np.zeros(0)
    if pos.size == 0:
        return np.geomspace(1e-3, 1.0, n + 1)
    lo, hi = np.quantile(pos, [0.001, 0.999])
    hi = max(hi, lo * 1.01)
    return np.geomspace(lo / 1.5, hi * 1.5, n + 1)


def plot_calibration(control_cells: Mapping[str, Any], her2=None, gates=None,
                     negatives: Mapping[str, str] | None = None):
    """Figure of a calibration with the control cells it came from.

    Parameters
    ----------
    control_cells : mapping name -> per-cell table (cells.parquet of each control)
    her2 : Her2Calibration, optional
        From :func:`qdmed.imaging.calibrate_her2`. Drawn as each control's distribution of
        the calibrated column (log axis, coloured by the control's score) under the three
        cut-offs, and the anchors (score, intensity) with the interpolation that placed the
        weak-to-moderate and intense cut-offs at scores 1.5 and 2.5.
    gates : mapping marker -> MarkerGate, optional
        From :func:`qdmed.imaging.gates_from_negative_controls`; with ``negatives`` (marker ->
        control name), each gated marker's negative control with its gate and the share of
        its cells above.
    """
    import matplotlib.pyplot as plt

    gates = dict(gates or {})
    negatives = dict(negatives or {})
    missing = [m for m in gates if m not in negatives]
    if missing:
        raise InputError(f"gates of {', '.join(missing)} need their negative control "
                         "(negatives={marker: control name})")
    if her2 is None and not gates:
        raise InputError("nothing to plot: give a HER2 calibration and/or gates")
    n = (2 if her2 is not None else 0) + len(gates)
    cols = min(n, 3)  # rows of three panels at most
    rows = -(-n // cols)
    fig, grid = plt.subplots(rows, cols, figsize=(5.0 * cols, 4.0 * rows + 0.4),
                             squeeze=False)
    axes = list(grid.ravel())
    for ax in axes[n:]:
        ax.set_visible(False)
    if her2 is not None:
        _her2_panels(axes[0], axes[1], her2, control_cells)
        axes = axes[2:]
    for ax, (marker, g) in zip(axes, gates.items(), strict=False):
        _gate_panel(ax, marker, g, negatives[marker], control_cells)
    fig.tight_layout()
    return fig


def _finite_column(df, marker: str, compartment: str, statistic: str, name: str
                   ) -> np.ndarray:
    """The finite values of a control's column (as :func:`calibrate_her2` reads them)."""
    from qdmed.imaging._scoring import _column

    col = _column(df, marker, compartment, statistic)
    v = np.asarray(df[col], dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise InputError(f"control {name!r}: no cell has a value of {col}")
    return v


def _anchors_drawn_from(cal, ctrls, vals) -> tuple[list[float], list[float], tuple | None]:
    """The calibration's anchors, (0.5, faint cut-off) and (s, median of the s controls'
    cells at or above it), from the tables given, and the 0 controls' stained group
    (:func:`~qdmed.imaging._her2_calibration.stained_group_share`, or None); InputError unless they
    are those it was drawn from (each control's cell count and median, and the faint
    cut-off where its rule is recorded)."""
    from qdmed.imaging._her2_calibration import (
        _faint_cutoff,
        _sorted_finite,
        her2_median_anchors,
        interpolate_anchors,
        stained_group_share,
    )
    from qdmed.imaging._scoring import HER2_CATEGORIES

    for (name, _cat, n, med, _), v in zip(ctrls, vals, strict=True):
        if v.size != n or not np.isclose(np.median(v), med, rtol=1e-9, atol=0.0):
            raise InputError(f"control {name!r}: its cell table is not the one this "
                             f"calibration was drawn from ({v.size} cells, median "
                             f"{np.median(v):.4g}; the calibration has {n} cells, median "
                             f"{med:.4g})")
    by_score: dict[int, list[np.ndarray]] = {}
    for (_, cat, *_), v in zip(ctrls, vals, strict=True):
        by_score.setdefault(HER2_CATEGORIES.index(cat), []).append(v)
    group = None
    if cal.faint_quantile is not None:
        faint, _, group, _ = _faint_cutoff(by_score, cal.faint_quantile,
                                           "gap" if cal.faint_from_gap else "quantile")
        if not np.isclose(faint, cal.faint, rtol=1e-9, atol=0.0):
            raise InputError(f"the {ctrls[0][1]} controls' cells put the faint cut-off at "
                             f"{faint:.4g}, this calibration has {cal.faint:.4g}: not the "
                             "tables it was drawn from")
    xs, ys = her2_median_anchors(by_score, cal.faint)
    if cal.scale in ("log", "linear") and (cal.scale == "linear" or min(ys) > 0):
        wm, it = interpolate_anchors([1.5, 2.5], xs, ys, log=cal.scale == "log")
        if not np.allclose([wm, it], [cal.weak_moderate, cal.intense], rtol=1e-9, atol=0.0):
            # a calibration drawn by another rule (before qdmed took each anchor from the
            # cells at or above faint: a review found its cut-offs drawn off the curve)
            raise InputError(
                f"this calibration's cut-offs ({cal.weak_moderate:.4g}, {cal.intense:.4g}) are "
                f"not those its controls' anchors give ({wm:.4g}, {it:.4g}): it was drawn by "
                "another rule (an older qdmed?); calibrate again (qdmed image calibrate)")
    if cal.faint_quantile is None and 0 in by_score:  # hand-written: not found above
        group = stained_group_share(_sorted_finite(np.concatenate(by_score[0])))
    return xs, ys, group


def _her2_panels(ax, ax2, cal, control_cells) -> None:
    from matplotlib.ticker import NullLocator

    from qdmed.imaging._her2_calibration import interpolate_anchors
    from qdmed.imaging._report import _CAT_COLOURS

    col = f"{cal.marker}_{cal.compartment}_{cal.statistic}"
    ctrls = sorted(cal.controls, key=lambda c: ("0", "1+", "2+", "3+").index(c[1]))
    if not ctrls:
        raise InputError("this HER2 calibration lists no controls (explicit cut-offs): "
                         "nothing to draw it from")
    vals = []
    for name, *_ in ctrls:
        if name not in control_cells:
            raise InputError(f"the calibration's control {name!r} is not among the cell "
                             f"tables given ({', '.join(control_cells)})")
        vals.append(_finite_column(control_cells[name], cal.marker, cal.compartment,
                                   cal.statistic, name))
    # the anchors: (0.5, faint), (s, median of the s-controls' cells at or above faint),
    # interpolated at 1.5 and 2.5
    xs, ys, group = _anchors_drawn_from(cal, ctrls, vals)
    log = cal.scale == "log" and min(ys) > 0
    if log:
        bins = _log_bins(vals)
    else:  # intensities at or below zero: a linear axis shows them all
        allv = np.concatenate([*vals, cal.cutoffs])
        lo, hi = np.quantile(allv, [0.001, 0.999])
        lo, hi = min(lo, *cal.cutoffs), max(hi, *cal.cutoffs)
        pad = 0.05 * max(hi - lo, 1e-9)
        bins = np.linspace(lo - pad, hi + pad, 61)
    seen: dict[str, int] = {}
    for (name, cat, n, _med, _), v in zip(ctrls, vals, strict=True):
        c = _CAT_COLOURS.get(cat, "grey")
        style = ("-", "--", ":", "-.")[seen.get(cat, 0) % 4]  # controls of one score apart
        seen[cat] = seen.get(cat, 0) + 1
        shown = v[v > 0] if log else v
        hidden = v.size - shown.size
        w = np.full(shown.size, 100.0 / v.size)  # percent of the control's cells
        ax.hist(shown, bins=bins, weights=w, histtype="stepfilled", alpha=0.25, color=c)
        ax.hist(shown, bins=bins, weights=w, histtype="step", color=c, linestyle=style,
                label=f"{name} ({cat}, {n} cells"
                      + (f"; {hidden} at or below 0 not shown)" if hidden else ")"))
    if log:
        ax.set_xscale("log")
        _plain_ticks(ax.xaxis)
    for x in cal.cutoffs:
        ax.axvline(x, color="k", lw=1, ls="--")
    if cal.stained_group_percent and group is not None:
        # where the 0 controls' stained group stands apart: the gap a quantile cut-off
        # lands on either side of, and faint_rule='gap' cuts in the middle of
        ax.axvspan(group[2], group[1], color="0.6", alpha=0.2, lw=0,
                   label=f"gap below the 0 control's stained group ({100 * group[0]:.1f}"
                         " % of its cells)")
    ax.set_xlim(bins[0], bins[-1])
    # the cut-offs named on a second axis above the plot, clear of the histograms
    top = ax.secondary_xaxis("top")
    top.set_xticks(list(cal.cutoffs), [f"{t} {x:.3g}" for t, x in zip(
        ("faint", "weak-moderate", "intense"), cal.cutoffs, strict=True)], fontsize=7,
        rotation=30, ha="left")
    top.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel(f"{col} (abundance units{', log' if log else ''})")
    ax.set_ylabel("% of the control's cells per bin")
    ax.set_title("HER2 controls and the cut-offs", fontsize=10, pad=34)
    ax.legend(fontsize=7, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.2),
              ncol=2)  # below: the cut-off lines stay readable

    grid = np.linspace(0.5, 3.0, 101)
    ax2.plot(grid, interpolate_anchors(grid, xs, ys, log=log), color="0.4", lw=1)
    ax2.plot(xs, ys, "ko", ms=5, label="anchors: faint cut-off, medians of the controls' "
             "cells at or above it")
    ax2.plot([1.5, 2.5], [cal.weak_moderate, cal.intense], "s", color="C3", ms=6,
             label="cut-offs at scores 1.5 and 2.5")
    for x, y in zip((0.5, 1.5, 2.5), cal.cutoffs, strict=True):
        ax2.annotate(f"{y:.3g}", (x, y), textcoords="offset points", xytext=(6, -10),
                     fontsize=7)
    if log:
        ax2.set_yscale("log")
        _plain_ticks(ax2.yaxis)
    ax2.set_xticks([0.5, 1, 1.5, 2, 2.5, 3], ["0.5", "1+", "1.5", "2+", "2.5", "3+"])
    ax2.set_xlabel("HER2 score")
    ax2.set_ylabel(f"{col}" + (" (log)" if log else ""))
    scale = "log" if log else "linear"
    ax2.set_title(f"how the cut-offs were placed ({scale} interpolation)", fontsize=10)
    ax2.legend(fontsize=7, frameon=False, loc="upper left")


def _gate_panel(ax, marker: str, gate, control: str, control_cells) -> None:
    if control not in control_cells:
        raise InputError(f"the negative control {control!r} of {marker} is not among the "
                         f"cell tables given ({', '.join(control_cells)})")
    from matplotlib.ticker import MaxNLocator

    col = f"{marker}_{gate.compartment}_{gate.statistic}"
    v = _finite_column(control_cells[control], marker, gate.compartment, gate.statistic,
                       control)
    above = 100.0 * float(np.mean(v >= gate.threshold))
    lo, hi = np.quantile(v, [0.001, 0.999])
    span = max(hi - lo, abs(gate.threshold) * 0.1, 1e-9)
    lo, hi = min(lo, gate.threshold) - 0.1 * span, max(hi, gate.threshold) + 0.1 * span
    ax.hist(v, bins=np.linspace(lo, hi, 61), color="0.6", alpha=0.8)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.axvline(gate.threshold, color="C3", lw=1.2, ls="--")
    right = (gate.threshold - lo) / (hi - lo) > 0.6  # the label on the roomier side
    ax.text(gate.threshold, 0.98, f"gate {gate.threshold:.3g} \n{above:.1f} % above "
            if right else f" gate {gate.threshold:.3g}\n {above:.1f} % above",
            transform=ax.get_xaxis_transform(), fontsize=7, va="top",
            ha="right" if right else "left")
    ax.set_xlabel(f"{col} (abundance units)")
    ax.set_ylabel("cells")
    ax.set_title(f"{marker}: negative control {control} ({v.size} cells)", fontsize=10)
