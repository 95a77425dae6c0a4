"""Spatial heterogeneity of a HER2 score: regional ASCO/CAP-style categories on a grid and
ecological diversity indices of the per-cell categories.

HER2 expression is often regional (intratumoural heterogeneity), and one slide category hides
it: a 1+ slide can hold 3+ regions, and 1+ vs 2+ disagreements between pathologists are more
frequent in heterogeneous tumours (Potts et al. 2012). Following the two levels of Potts et
al.'s HetMap, qdmed reports

- **cell-level heterogeneity**: the Shannon index of the per-cell categories among
  neighbouring cells, here the cells of one grid square (Potts et al. use tumour nests), as
  its mean and maximum over the squares;
- **tumour-level heterogeneity**: the Shannon index of the regions' categories across the
  section, each region scored by the same rule as the slide (:func:`score_her2`) as if it
  were scored alone;

beside the share of regions per category, the highest regional category and the share of
regions that disagree with the slide. The Shannon index ``H = -sum_i p_i ln p_i`` (Shannon
1948) is in nats: 0 when all are alike, at most ``ln 4 = 1.386`` for the four categories.
These are descriptive research measures; no guideline defines a heterogeneity cut-off for
HER2 IHC.

Sampling alone makes regions disagree: a region of a few hundred cells scored by percentage
cut-offs flips category by chance when the slide lies near a cut-off, and the highest of many
regions is biased upwards. Every result therefore carries a permutation null (the cells'
categories shuffled over their positions) and a p-value of the spatial structure; read the
map against it.

Potts et al. define their indices on pathologist-drawn tumour regions and cell
neighbourhoods; qdmed uses a square grid of ``region_um`` (default 500 um, a 0.25 mm^2
field) so the result does not depend on a reader's choice of regions. It does depend on the
grid's size and offset (measured on a synthetic slide: shifting a 128 um grid by a quarter
to three quarters of a square changed the share of 2+ regions from 26 to 32 %). A region is
scored only when it holds at least ``min_cells`` scored cells.

References
----------
.. [1] S. J. Potts, J. S. Krueger, N. D. Landis, et al. (2012). Evaluating tumor
   heterogeneity in immunohistochemistry-stained breast cancer tissue. Lab. Invest. 92(9),
   1342-1357. doi:10.1038/labinvest.2012.91
.. [2] C. E. Shannon (1948). A mathematical theory of communication. Bell Syst. Tech. J.
   27(3), 379-423. doi:10.1002/j.1538-7305.1948.tb01338.x
.. [3] B. Phipson, G. K. Smyth (2010). Permutation p-values should never be zero:
   calculating exact p-values when permutations are randomly drawn. Stat. Appl. Genet. Mol.
   Biol. 9(1), Article 39. doi:10.2202/1544-6115.1585
.. [4] A. C. Wolff et al. (2018). Human epidermal growth factor receptor 2 testing in breast
   cancer: ASCO/CAP clinical practice guideline focused update. J. Clin. Oncol. 36,
   2105-2122. doi:10.1200/JCO.2018.77.8738
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qdmed.errors import InputError
from qdmed.imaging._her2_score import (
    _BRANCH_CATEGORY,
    _BRANCH_ULTRALOW,
    Her2Score,
    her2_rule_branch,
    staining_patterns,
)
from qdmed.imaging._scoring import _INTENSITY_CLASSES, HER2_CATEGORIES
from qdmed.report._json import to_jsonable

__all__ = ["Her2Heterogeneity", "her2_heterogeneity", "shannon_index"]

REF_POTTS_2012 = (
    "Potts SJ, Krueger JS, Landis ND, et al. Evaluating tumor heterogeneity in "
    "immunohistochemistry-stained breast cancer tissue. Lab Invest 2012;92(9):1342-1357. "
    "doi:10.1038/labinvest.2012.91"
)
REF_PHIPSON_SMYTH_2010 = (
    "Phipson B, Smyth GK. Permutation p-values should never be zero: calculating exact "
    "p-values when permutations are randomly drawn. Stat Appl Genet Mol Biol 2010;9(1):39. "
    "doi:10.2202/1544-6115.1585"
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
        Category -> percent of the scored regions (NaN when none is scored).
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
        Shannon index of all scored cells' categories, regardless of place (what the cell
        level tends to when the categories are spatially mixed).
    tumour_level_shannon_null, percent_regions_discordant_null : float
        Medians of the same measures with the cells' categories shuffled over their
        positions: what sampling alone gives (NaN without permutations, or with fewer than
        two scored regions).
    spatial_p_value : float
        Share of the permutations whose tumour-level index reaches the slide's,
        ``(b + 1) / (m + 1)``; small when the regions differ beyond chance placement. NaN
        with fewer than two scored regions (one region differs from nothing).
        One-sided: it tests for a larger index than chance. Clustering that leaves the
        index where chance puts it (e.g. 3+ and 0 regions where random placement gives
        3+ and 2+ regions, both about ln 2) is not detected: read the map too.
    regions : pandas.DataFrame
        One row per region holding cells: ``row``, ``col``, ``x0_um``, ``y0_um``,
        ``n_cells``, ``scored``, ``category`` (object; None when sparse), ``ultralow``,
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
    tumour_level_shannon_null: float
    percent_regions_discordant_null: float
    spatial_p_value: float
    parameters: tuple
    regions: Any = field(repr=False, compare=False)
    reference: str = f"{REF_POTTS_2012}; {REF_SHANNON_1948}; {REF_PHIPSON_SMYTH_2010}"

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
        null = (" One region: no spatial test (it compares two or more)."
                if self.n_regions == 1 else "" if not math.isfinite(self.spatial_p_value) else
                f" Shuffling the cells over their places gives a tumour level of "
                f"{self.tumour_level_shannon_null:.2f} and {self.percent_regions_discordant_null:.0f} "
                f"% discordant regions by sampling alone (permutation p = "
                f"{self.spatial_p_value:.3g}).")
        return (f"HER2 by {self.region_um:g} um region ({self.n_regions} regions): {cats}; "
                f"highest {self.highest_region_category}; "
                f"{self.percent_regions_discordant:.0f} % differ from the slide's "
                f"{self.slide_category}. Shannon index (nats, max ln 4 = 1.39): tumour level "
                f"{self.tumour_level_shannon:.2f}, within regions {self.cell_level_shannon_mean:.2f} "
                f"(max {self.cell_level_shannon_max:.2f}; all cells "
                f"{self.slide_cell_shannon:.2f}).{null}")

    def to_geojson(self, pixel_size_um: float, *, shape_yx: tuple[int, int] | None = None
                   ) -> dict:
        """The scored regions as a GeoJSON FeatureCollection of QuPath annotations.

        One square per scored region, in pixels of the full-resolution image (``x0_um /
        pixel_size_um``; clipped to ``shape_yx`` when given), classified ``HER2 region
        <category>`` and carrying the region's cell count, per-category percentages and
        Shannon index as measurements; QuPath shows them over the slide (File > Import
        objects). Sparse regions are left out.
        """
        from qdmed.imaging._geojson import HER2_COLOURS, annotation_feature, rectangle_ring

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
            meas = {"Cells": int(r.n_cells), "Shannon index (nats)": float(r.shannon)}
            meas.update({f"HER2 {c}: %": float(getattr(r, f"percent_cells_{c.replace('+', 'plus')}"))
                         for c in HER2_CATEGORIES})
            feats.append(annotation_feature(
                rectangle_ring(x0, y0, x1, y1), f"HER2 region r{r.row} c{r.col}: {r.category}",
                classification=f"HER2 region {r.category}",
                color=HER2_COLOURS[r.category], measurements=meas))
        return {"type": "FeatureCollection", "features": feats}

    def plot(self, ax=None, slide_mm=None):
        """Map of the regional categories (sparse regions grey, squares without cells
        white); ``slide_mm`` = (height, width) of the slide clips the map to it (the last
        row and column of squares may reach past the slide's edge)."""
        import matplotlib.pyplot as plt
        import pandas as pd
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
                grid[row - r0, col - c0] = -1 if cat is None or pd.isna(cat) else code[cat]
            cmap = ListedColormap(["#d9d9d9"] + [_CAT_COLOURS[c] for c in HER2_CATEGORIES])
            extent = (c0 * self.region_um / 1000, (c0 + grid.shape[1]) * self.region_um / 1000,
                      (r0 + grid.shape[0]) * self.region_um / 1000, r0 * self.region_um / 1000)
            ax.imshow(grid, cmap=cmap, vmin=-1.5, vmax=3.5, extent=extent,
                      interpolation="nearest")
        ax.set_xlabel("x (mm)")
        ax.set_ylabel("y (mm)")
        pv = (f" (p = {self.spatial_p_value:.2g}, shuffled {self.tumour_level_shannon_null:.2f})"
              if math.isfinite(self.spatial_p_value) else "")
        ax.set_title(f"HER2 by {self.region_um:g} um region; slide {self.slide_category}\n"
                     f"Shannon: tumour level {self.tumour_level_shannon:.2f}{pv}, within "
                     f"regions {self.cell_level_shannon_mean:.2f} nats", fontsize=9)
        handles = [Patch(color=_CAT_COLOURS[c], label=f"{c} ({self.percent_regions[c]:.0f} %)"
                         if self.n_regions else c) for c in HER2_CATEGORIES]
        handles.append(Patch(color="#d9d9d9", label=f"< {self.min_cells} cells"))
        handles.append(Patch(facecolor="white", edgecolor="#999999", label="no cells"))
        if slide_mm is not None:
            ax.set_xlim(0, float(slide_mm[1]))
            ax.set_ylim(float(slide_mm[0]), 0)
        ax.legend(handles=handles, fontsize=7, frameon=False, loc="upper left",
                  bbox_to_anchor=(1.01, 1.0))
        ax.figure.tight_layout()
        return ax.figure


def _param(her2: Her2Score, name: str) -> float:
    return float(dict(her2.parameters)[name])


#: Smallest region side accepted (um): about one cell; smaller squares hold no cell.
MIN_REGION_UM = 10.0


def check_region_args(region_um, min_cells, n_permutations=0, *, prefix: str = ""
                      ) -> tuple[float, int, int]:
    """``(region_um, min_cells, n_permutations)`` checked: a finite region side >= 10 um,
    integers >= 1 and >= 0. ``prefix`` names the options as the caller's user knows them
    (``'her2_'`` for :func:`qdmed.imaging.analyze_slide`)."""
    try:
        ru = float(region_um)
    except (TypeError, ValueError):
        ru = math.nan
    if isinstance(region_um, bool) or not (math.isfinite(ru) and ru >= MIN_REGION_UM):
        raise InputError(f"{prefix}region_um must be a finite number >= {MIN_REGION_UM:g} um "
                         f"(about a cell); got {region_um!r}.")
    for name, v, lo in ((f"{prefix}region_min_cells" if prefix else "min_cells", min_cells, 1),
                        ("n_permutations", n_permutations, 0)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < lo:
            raise InputError(f"{name} must be an integer >= {lo}; got {v!r}.")
    return ru, int(min_cells), int(n_permutations)


def _region_categories(inv, nreg, n, klass, complete, thresholds) -> tuple[np.ndarray, np.ndarray]:
    """(rule branch, category code) of every region from its cells' intensity classes."""
    def pct(mask) -> np.ndarray:
        return 100.0 * np.bincount(inv, weights=mask.astype(np.float64), minlength=nreg) / n

    branch = her2_rule_branch(*(pct(m) for m in staining_patterns(klass, complete)),
                              *thresholds)
    return branch, np.asarray(_BRANCH_CATEGORY)[branch]


def _tumour_level(codes: np.ndarray, slide_code: int) -> tuple[float, float]:
    """(Shannon index of the regional categories, percent of regions not the slide's)."""
    return (float(shannon_index(np.bincount(codes, minlength=4))),
            float(100.0 * np.mean(codes != slide_code)))


def her2_heterogeneity(her2: Her2Score, *, region_um: float = 500.0, min_cells: int = 100,
                       n_permutations: int = 199, seed: int = 0) -> Her2Heterogeneity:
    """Regional HER2 categories on a square grid, HetMap-style diversity indices, and a
    permutation test of their spatial structure.

    Parameters
    ----------
    her2 : Her2Score
        A slide score whose per-cell table holds ``centroid_x_um`` and ``centroid_y_um``
        (as :func:`score_her2` keeps them from a :func:`measure_cells` table).
    region_um : float, um
        Side of the square regions (>= 10 um, about a cell); the grid is anchored at the
        slide origin.
    min_cells : int
        Scored cells a region needs to be scored (>= 1).
    n_permutations : int
        Permutations of the cells' positions for the null (0 to skip).
    seed : int
        Seed of the permutations.

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
    (:func:`qdmed.imaging._her2_score.her2_rule_branch`, the same thresholds and ultralow noise
    floor) on its cells alone. Cell-level heterogeneity is the Shannon index of the per-cell
    categories within each scored region (mean and maximum over regions); tumour-level
    heterogeneity is the Shannon index of the scored regions' categories, each region
    counted once (Potts et al. 2012, doi:10.1038/labinvest.2012.91; Shannon 1948,
    doi:10.1002/j.1538-7305.1948.tb01338.x).

    Regions of a few hundred cells scored by percentage cut-offs disagree by sampling alone
    when the slide lies near a cut-off, even with no spatial structure at all. The null is
    therefore measured: the cells' categories are shuffled over their positions
    ``n_permutations`` times (region sizes kept), and the tumour-level index and the
    discordant share are recomputed; ``spatial_p_value`` is the share of permutations at
    least as heterogeneous as the slide, ``(b + 1) / (m + 1)`` (Phipson & Smyth 2010,
    doi:10.2202/1544-6115.1585). A small p-value says the regions differ more than chance
    placement of the same cells would make them.

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
    >>> het.spatial_p_value  # no shuffle of these 200 cells splits them as cleanly
    0.005
    """
    import pandas as pd

    if not isinstance(her2, Her2Score):
        raise InputError(f"her2 must be a Her2Score; got {type(her2).__name__}.")
    ru, min_cells, n_perm = check_region_args(region_um, min_cells, n_permutations)
    if seed is not None:
        from qdmed.imaging._region_scores import check_count

        seed = check_count(seed, "seed", " (or None)", least=0)
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
    klass = np.asarray(pd.Categorical(c["intensity_class"],
                                      categories=_INTENSITY_CLASSES).codes)
    complete = np.asarray(c["complete"], dtype=bool)
    cat = np.asarray(pd.Categorical(c["category"], categories=HER2_CATEGORIES).codes)
    n = np.bincount(inv, minlength=nreg).astype(np.float64)
    thresholds = tuple(_param(her2, k) for k in ("percent_cutoff", "intense_min_percent",
                                                 "incomplete_percent_cutoff",
                                                 "ultralow_min_percent"))
    branch, region_cat = _region_categories(inv, nreg, n, klass, complete, thresholds)
    counts = np.zeros((nreg, 4))
    np.add.at(counts, (inv, cat), 1.0)
    h_local = shannon_index(counts, axis=1)
    scored = n >= min_cells
    names = np.asarray(HER2_CATEGORIES, dtype=object)[region_cat]
    names[~scored] = None
    table = pd.DataFrame({
        "row": keys[:, 0], "col": keys[:, 1],
        "x0_um": keys[:, 1] * ru, "y0_um": keys[:, 0] * ru,
        "n_cells": n.astype(np.int64), "scored": scored,
        # object dtype: None stays None for sparse regions (pandas 3 would make str + NaN)
        "category": pd.Series(names, dtype=object),
        "ultralow": scored & np.isin(branch, _BRANCH_ULTRALOW),
        **{f"percent_cells_{k.replace('+', 'plus')}": 100.0 * counts[:, i] / n
           for i, k in enumerate(HER2_CATEGORIES)},
        "shannon": h_local,
    })
    rc = region_cat[scored]
    ns = int(scored.sum())
    reg_counts = np.bincount(rc, minlength=4).astype(np.float64)
    percent = {k: (float(100.0 * reg_counts[i] / ns) if ns else math.nan)
               for i, k in enumerate(HER2_CATEGORIES)}
    slide_code = HER2_CATEGORIES.index(her2.category)
    h_tumour, discordant = _tumour_level(rc, slide_code) if ns else (math.nan, math.nan)
    null_h = null_disc = p_value = math.nan
    if ns >= 2 and n_perm:  # one region differs from nothing: p was 1, always (a review)
        rng = np.random.default_rng(seed)
        hs, ds = np.empty(n_perm), np.empty(n_perm)
        for i in range(n_perm):
            perm = rng.permutation(len(klass))
            _, rcp = _region_categories(inv, nreg, n, klass[perm], complete[perm], thresholds)
            hs[i], ds[i] = _tumour_level(rcp[scored], slide_code)
        null_h, null_disc = float(np.median(hs)), float(np.median(ds))
        p_value = float((1 + np.count_nonzero(hs >= h_tumour - 1e-12)) / (n_perm + 1))
    return Her2Heterogeneity(
        slide_category=her2.category,
        region_um=ru,
        min_cells=min_cells,
        n_regions=ns,
        n_regions_sparse=int(nreg - ns),
        percent_regions=percent,
        highest_region_category=HER2_CATEGORIES[int(rc.max())] if ns else None,
        percent_regions_discordant=discordant,
        cell_level_shannon_mean=float(np.mean(h_local[scored])) if ns else math.nan,
        cell_level_shannon_max=float(np.max(h_local[scored])) if ns else math.nan,
        tumour_level_shannon=h_tumour,
        slide_cell_shannon=float(shannon_index(np.bincount(cat, minlength=4))),
        tumour_level_shannon_null=null_h,
        percent_regions_discordant_null=null_disc,
        spatial_p_value=p_value,
        parameters=(("region_um", ru), ("min_cells", min_cells),
                    ("n_permutations", n_perm), ("seed", seed),
                    *((k, v) for k, v in her2.parameters)),
        regions=table,
    )
