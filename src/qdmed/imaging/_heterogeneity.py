"""Spatial heterogeneity of a HER2 score: regional ASCO/CAP-style categories on a grid and
ecological diversity indices of the per-cell categories.

HER2 expression is often regional (intratumoural heterogeneity), and one slide category hides
it: a 1+ slide can hold 3+ regions, and 1+ vs 2+ disagreements between pathologists are more
frequent in heterogeneous tumours (Potts et al. 2012). Following the two levels of Potts et
al.'s HetMap, qdmed reports

- **cell-level heterogeneity**: the Shannon index of the per-cell categories among
  neighbouring cells, i.e. within each grid region, as its mean and maximum over the regions;
- **tumour-level heterogeneity**: the Shannon index of the regions' categories across the
  section, each region scored by the same rule as the slide (:func:`score_her2`) as if it
  were scored alone;

beside the share of regions per category, the highest regional category and the share of
regions that disagree with the slide. The Shannon index ``H = -sum_i p_i ln p_i`` (Shannon
1948) is in nats: 0 when all are alike, at most ``ln 4 = 1.386`` for the four categories.
These are descriptive research measures; no guideline defines a heterogeneity cut-off for
HER2 IHC.

Potts et al. define their indices on pathologist-drawn tumour regions and cell
neighbourhoods; qdmed uses a square grid of ``region_um`` (default 500 um, a 0.25 mm^2
field) so the result does not depend on where regions are drawn, and scores a region only
when it holds at least ``min_cells`` scored cells.

References
----------
.. [1] S. J. Potts, J. S. Krueger, N. D. Landis, et al. (2012). Evaluating tumor
   heterogeneity in immunohistochemistry-stained breast cancer tissue. Lab. Invest. 92(9),
   1342-1357. doi:10.1038/labinvest.2012.91
.. [2] C. E. Shannon (1948). A mathematical theory of communication. Bell Syst. Tech. J.
   27(3), 379-423. doi:10.1002/j.1538-7305.1948.tb01338.x
.. [3] A. C. Wolff et al. (2018). Human epidermal growth factor receptor 2 testing in breast
   cancer: ASCO/CAP clinical practice guideline focused update. J. Clin. Oncol. 36,
   2105-2122. doi:10.1200/JCO.2018.77.8738
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qdmed.errors import InputError
from qdmed.imaging._scoring import (
    _BRANCH_CATEGORY,
    HER2_CATEGORIES,
    Her2Score,
    her2_rule_branch,
)
from qdmed.report._json import to_jsonable

__all__ = ["Her2Heterogeneity", "her2_heterogeneity", "shannon_index"]

REF_POTTS_2012 = (
    "Potts SJ, Krueger JS, Landis ND, et al. Evaluating tumor heterogeneity in "
    "immunohistochemistry-stained breast cancer tissue. Lab Invest 2012;92(9):1342-1357. "
    "doi:10.1038/labinvest.2012.91"
)
REF_SHANNON_1948 = (
    "Shannon CE. A mathematical theory of communication. Bell Syst Tech J 1948;27(3):379-423. "
    "doi:10.1002/j.1538-7305.1948.tb01338.x"
)

_CAT_COLOURS = {"0": "#3b4cc0", "1+": "#7bb0ff", "2+": "#f7a35c", "3+": "#b40426"}


def shannon_index(counts, axis: int = -1) -> np.ndarray:
    """Shannon diversity index ``H = -sum_i p_i ln p_i`` (nats) of category counts.

    ``counts`` are non-negative counts along ``axis``; empty categories contribute 0
    (``0 ln 0 = 0``) and an all-zero row gives NaN (no cells, no diversity to state).
    Shannon (1948), doi:10.1002/j.1538-7305.1948.tb01338.x.

    Examples
    --------
    >>> float(shannon_index([25, 25, 25, 25]))  # four equal categories: ln 4
    1.3862943611198906
    >>> float(shannon_index([10, 0, 0, 0]))
    0.0
    """
    c = np.asarray(counts, dtype=np.float64)
    if c.size and (not np.all(np.isfinite(c)) or np.any(c < 0)):
        raise InputError("shannon_index: counts must be finite and non-negative.")
    tot = c.sum(axis=axis, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = c / tot
        terms = np.where(p > 0, -p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    h = terms.sum(axis=axis)
    return np.where(np.squeeze(tot, axis=axis) > 0, h, np.nan)


@dataclass(frozen=True)
class Her2Heterogeneity:
    """Regional HER2 categories and diversity indices of one scored slide.

    Attributes
    ----------
    slide_category : str
        The slide's category (:class:`Her2Score`).
    region_um : float, um
        Side of the square grid regions (grid anchored at the slide origin).
    min_cells : int
        Scored cells a region needs to be scored.
    n_regions : int
        Regions scored (at least ``min_cells`` cells).
    n_regions_sparse : int
        Regions with cells, but fewer than ``min_cells`` (not scored; their cells still
        count for the slide).
    percent_regions : dict
        Category -> percent of the scored regions.
    highest_region_category : str or None
        Highest regional category (None without a scored region).
    percent_regions_discordant : float, %
        Scored regions whose category differs from the slide's.
    cell_level_shannon_mean, cell_level_shannon_max : float, nats
        Mean and maximum over scored regions of the Shannon index of their cells'
        categories (cell-level heterogeneity; 0 to ln 4).
    tumour_level_shannon : float, nats
        Shannon index of the scored regions' categories (tumour-level heterogeneity).
    slide_cell_shannon : float, nats
        Shannon index of all scored cells' categories, regardless of place.
    regions : pandas.DataFrame
        One row per region holding cells: ``row``, ``col``, ``x0_um``, ``y0_um``,
        ``n_cells``, ``scored``, ``category`` (None when sparse), ``ultralow``,
        ``percent_cells_0`` ... ``percent_cells_3plus``, ``shannon``.
    parameters : tuple of (name, value)
    """

    slide_category: str
    region_um: float
    min_cells: int
    n_regions: int
    n_regions_sparse: int
    percent_regions: dict
    highest_region_category: str | None
    percent_regions_discordant: float
    cell_level_shannon_mean: float
    cell_level_shannon_max: float
    tumour_level_shannon: float
    slide_cell_shannon: float
    parameters: tuple
    regions: Any = field(repr=False, compare=False)
    reference: str = f"{REF_POTTS_2012}; {REF_SHANNON_1948}"

    def to_dict(self, *, include_regions: bool = True) -> dict[str, Any]:
        """JSON-safe dict; the region table as a list of records unless
        ``include_regions=False``."""
        d = {k: getattr(self, k) for k in self.__dataclass_fields__
             if k not in ("regions", "parameters")}
        d["parameters"] = dict(self.parameters)
        if include_regions:
            d["regions"] = self.regions.to_dict(orient="records")
        return to_jsonable(d)

    def report(self) -> str:
        """One-paragraph text summary."""
        if not self.n_regions:
            return (f"HER2 heterogeneity: no {self.region_um:g} um region holds "
                    f"{self.min_cells} scored cells.")
        cats = ", ".join(f"{c} {self.percent_regions[c]:.0f} %" for c in HER2_CATEGORIES
                         if self.percent_regions[c] > 0)
        return (f"HER2 by {self.region_um:g} um region ({self.n_regions} regions): {cats}; "
                f"highest {self.highest_region_category}; "
                f"{self.percent_regions_discordant:.0f} % differ from the slide's "
                f"{self.slide_category}. Shannon index (nats, max ln 4 = 1.39): tumour level "
                f"{self.tumour_level_shannon:.2f}, cell level {self.cell_level_shannon_mean:.2f} "
                f"(max {self.cell_level_shannon_max:.2f}).")

    def to_geojson(self, pixel_size_um: float, *, shape_yx: tuple[int, int] | None = None
                   ) -> dict:
        """The scored regions as a GeoJSON FeatureCollection of QuPath annotations.

        One square per scored region, in pixels of the full-resolution image (``x0_um /
        pixel_size_um``; clipped to ``shape_yx`` when given), classified ``HER2 region
        <category>`` and carrying the region's cell count, per-category percentages and
        Shannon index as measurements; QuPath shows them over the slide (File > Import
        objects). Sparse regions are left out.
        """
        from qdmed.imaging._geojson import HER2_COLOURS

        ps = float(pixel_size_um)
        if not (math.isfinite(ps) and ps > 0):
            raise InputError(f"pixel_size_um must be a positive number; got {pixel_size_um!r}.")
        feats = []
        for r in self.regions[self.regions["scored"]].itertuples(index=False):
            x0, y0 = r.x0_um / ps, r.y0_um / ps
            x1, y1 = (r.x0_um + self.region_um) / ps, (r.y0_um + self.region_um) / ps
            if shape_yx is not None:
                x0, x1 = (float(np.clip(v, 0, shape_yx[1])) for v in (x0, x1))
                y0, y1 = (float(np.clip(v, 0, shape_yx[0])) for v in (y0, y1))
            ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
            meas = {"Cells": int(r.n_cells), "Shannon index (nats)": float(r.shannon)}
            meas.update({f"HER2 {c}: %": float(getattr(r, f"percent_cells_{c.replace('+', 'plus')}"))
                         for c in HER2_CATEGORIES})
            feats.append({"type": "Feature",
                          "geometry": {"type": "Polygon", "coordinates": [ring]},
                          "properties": {
                              "objectType": "annotation",
                              "name": f"HER2 region r{r.row} c{r.col}: {r.category}",
                              "classification": {"name": f"HER2 region {r.category}",
                                                 "color": HER2_COLOURS[r.category]},
                              "measurements": meas}})
        return {"type": "FeatureCollection", "features": feats}

    def plot(self, ax=None):
        """Map of the regional categories (sparse regions hatched grey)."""
        import matplotlib.pyplot as plt
        from matplotlib.colors import ListedColormap
        from matplotlib.patches import Patch

        r = self.regions
        if ax is None:
            rows = int(r["row"].max() - r["row"].min() + 1) if len(r) else 1
            cols = int(r["col"].max() - r["col"].min() + 1) if len(r) else 1
            _, ax = plt.subplots(figsize=(6.5, float(np.clip(4.2 * rows / cols, 2.2, 6.0)) + 1))
        if len(r):
            r0, c0 = int(r["row"].min()), int(r["col"].min())
            grid = np.full((int(r["row"].max()) - r0 + 1, int(r["col"].max()) - c0 + 1), np.nan)
            code = {c: i for i, c in enumerate(HER2_CATEGORIES)}
            for row, col, cat in zip(r["row"], r["col"], r["category"], strict=True):
                grid[row - r0, col - c0] = code[cat] if cat is not None else -1
            cmap = ListedColormap(["#d9d9d9"] + [_CAT_COLOURS[c] for c in HER2_CATEGORIES])
            extent = (c0 * self.region_um / 1000, (c0 + grid.shape[1]) * self.region_um / 1000,
                      (r0 + grid.shape[0]) * self.region_um / 1000, r0 * self.region_um / 1000)
            ax.imshow(grid, cmap=cmap, vmin=-1.5, vmax=3.5, extent=extent,
                      interpolation="nearest")
        ax.set_xlabel("x (mm)")
        ax.set_ylabel("y (mm)")
        ax.set_title(f"HER2 by {self.region_um:g} um region; slide {self.slide_category}\n"
                     f"Shannon: tumour level {self.tumour_level_shannon:.2f}, cell level "
                     f"{self.cell_level_shannon_mean:.2f} nats", fontsize=9)
        handles = [Patch(color=_CAT_COLOURS[c], label=f"{c} ({self.percent_regions[c]:.0f} %)")
                   for c in HER2_CATEGORIES]
        handles.append(Patch(color="#d9d9d9", label=f"< {self.min_cells} cells"))
        ax.legend(handles=handles, fontsize=7, frameon=False, loc="upper left",
                  bbox_to_anchor=(1.01, 1.0))
        ax.figure.tight_layout()
        return ax.figure


def _param(her2: Her2Score, name: str) -> float:
    return float(dict(her2.parameters)[name])


def her2_heterogeneity(her2: Her2Score, *, region_um: float = 500.0,
                       min_cells: int = 100) -> Her2Heterogeneity:
    """Regional HER2 categories on a square grid, and HetMap-style diversity indices.

    Parameters
    ----------
    her2 : Her2Score
        A slide score whose per-cell table holds ``centroid_x_um`` and ``centroid_y_um``
        (as :func:`score_her2` keeps them from a :func:`measure_cells` table).
    region_um : float, um
        Side of the square regions (> 0); the grid is anchored at the slide origin.
    min_cells : int
        Scored cells a region needs to be scored (>= 1).

    Returns
    -------
    Her2Heterogeneity

    Raises
    ------
    InputError
        Bad parameters, or a score without cell positions.

    Notes
    -----
    Each region is scored by the slide's own rule and parameters
    (:func:`qdmed.imaging._scoring.her2_rule_branch`, the same thresholds and ultralow noise
    floor) on its cells alone. Cell-level heterogeneity is the Shannon index of the per-cell
    categories within each scored region (mean and maximum over regions); tumour-level
    heterogeneity is the Shannon index of the scored regions' categories, each region
    counted once (Potts et al. 2012, doi:10.1038/labinvest.2012.91; Shannon 1948,
    doi:10.1002/j.1538-7305.1948.tb01338.x).

    Examples
    --------
    >>> import pandas as pd
    >>> from qdmed.imaging import Her2Calibration, score_her2
    >>> cal = Her2Calibration(faint=1.0, weak_moderate=2.0, intense=3.0)
    >>> left = [0.5] * 100                    # 0 on the left half ...
    >>> right = [3.5] * 100                   # ... intense complete on the right
    >>> cells = pd.DataFrame({"HER2_membrane_mean": left + right,
    ...                       "HER2_membrane_completeness": [1.0] * 200,
    ...                       "centroid_x_um": [100.0] * 100 + [700.0] * 100,
    ...                       "centroid_y_um": [100.0] * 200})
    >>> het = her2_heterogeneity(score_her2(cells, cal), region_um=500)
    >>> het.percent_regions["0"], het.percent_regions["3+"], round(het.tumour_level_shannon, 4)
    (50.0, 50.0, 0.6931)
    """
    import pandas as pd

    if not isinstance(her2, Her2Score):
        raise InputError(f"her2 must be a Her2Score; got {type(her2).__name__}.")
    ru = float(region_um)
    if not (math.isfinite(ru) and ru > 0):
        raise InputError(f"region_um must be a positive number of micrometres; got {region_um!r}.")
    if isinstance(min_cells, bool) or int(min_cells) != min_cells or min_cells < 1:
        raise InputError(f"min_cells must be an integer >= 1; got {min_cells!r}.")
    min_cells = int(min_cells)
    c = her2.cells
    missing = [k for k in ("centroid_x_um", "centroid_y_um") if k not in c.columns]
    if missing:
        raise InputError(f"the HER2 score's cell table lacks {missing}: score a table from "
                         "measure_cells (it has the centroids in um) to map heterogeneity.")
    x = np.asarray(c["centroid_x_um"], dtype=np.float64)
    y = np.asarray(c["centroid_y_um"], dtype=np.float64)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise InputError("the HER2 score's cell centroids must be finite.")
    col = np.floor(x / ru).astype(np.int64)
    row = np.floor(y / ru).astype(np.int64)
    keys, inv = np.unique(np.stack([row, col], axis=1), axis=0, return_inverse=True)
    inv = inv.ravel()
    nreg = len(keys)
    klass = pd.Categorical(c["intensity_class"], categories=("none", "faint", "weak_moderate",
                                                            "intense")).codes
    complete = np.asarray(c["complete"], dtype=bool)
    cat = pd.Categorical(c["category"], categories=HER2_CATEGORIES).codes
    n = np.bincount(inv, minlength=nreg).astype(np.float64)

    def pct(mask) -> np.ndarray:
        return 100.0 * np.bincount(inv, weights=mask.astype(np.float64), minlength=nreg) / n

    p_ic = pct((klass == 3) & complete)
    p_wmc = pct((klass == 2) & complete)
    p_mii = pct((klass >= 2) & ~complete)
    p_stained = pct(klass >= 1)
    branch = her2_rule_branch(p_ic, p_wmc, p_mii, p_stained, _param(her2, "percent_cutoff"),
                              _param(her2, "intense_min_percent"),
                              _param(her2, "incomplete_percent_cutoff"),
                              _param(her2, "ultralow_min_percent"))
    region_cat = np.asarray(_BRANCH_CATEGORY)[branch]
    counts = np.zeros((nreg, 4))
    np.add.at(counts, (inv, cat), 1.0)
    h_local = shannon_index(counts, axis=1)
    scored = n >= min_cells
    table = pd.DataFrame({
        "row": keys[:, 0], "col": keys[:, 1],
        "x0_um": keys[:, 1] * ru, "y0_um": keys[:, 0] * ru,
        "n_cells": n.astype(np.int64), "scored": scored,
        "category": np.where(scored, np.asarray(HER2_CATEGORIES, dtype=object)[region_cat],
                             None),
        "ultralow": scored & np.isin(branch, (5, 6)),
        **{f"percent_cells_{k.replace('+', 'plus')}": 100.0 * counts[:, i] / n
           for i, k in enumerate(HER2_CATEGORIES)},
        "shannon": h_local,
    })
    rc = region_cat[scored]
    ns = int(scored.sum())
    reg_counts = np.bincount(rc, minlength=4).astype(np.float64)
    percent = {k: (float(100.0 * reg_counts[i] / ns) if ns else 0.0)
               for i, k in enumerate(HER2_CATEGORIES)}
    slide_code = HER2_CATEGORIES.index(her2.category)
    return Her2Heterogeneity(
        slide_category=her2.category,
        region_um=ru,
        min_cells=min_cells,
        n_regions=ns,
        n_regions_sparse=int(nreg - ns),
        percent_regions=percent,
        highest_region_category=HER2_CATEGORIES[int(rc.max())] if ns else None,
        percent_regions_discordant=float(100.0 * np.mean(rc != slide_code)) if ns else math.nan,
        cell_level_shannon_mean=float(np.mean(h_local[scored])) if ns else math.nan,
        cell_level_shannon_max=float(np.max(h_local[scored])) if ns else math.nan,
        tumour_level_shannon=float(shannon_index(reg_counts)) if ns else math.nan,
        slide_cell_shannon=float(shannon_index(np.bincount(cat, minlength=4))),
        parameters=(("region_um", ru), ("min_cells", min_cells),
                    *((k, v) for k, v in her2.parameters)),
        regions=table,
    )
