"""Where the cell classes lie against each other: nearest-neighbour distances, neighbours
within a radius, and neighbourhood enrichment against random labelling.

Multiplexing is done to see cells *in place*: whether HER2 3+ cells form nests or are
scattered among 0 cells, whether ER-negative cells cluster. Image analysts read this with
three measures, which qdmed computes on the cell centroids (um) of a cells table:

- **nearest distance** from every cell to the nearest other cell of each class, as QuPath's
  "Detect centroid distances 2D" and phenoptr's ``find_nearest_distance`` give it for inForm
  tables; summarised per pair of classes (from, to) by its median. For scale: in a Poisson
  pattern of density rho the mean nearest distance is ``1 / (2 sqrt(rho))`` (Clark & Evans
  1954), 6.1 um at one cell per 150 um^2 (the tests check the formula on a Poisson
  pattern);
- **neighbours within a radius**: the number of cells of each class whose centroids lie
  within ``radius_um`` of a cell's (phenoptr's ``count_within``), and the share of cells of
  one class with at least one of the other within it;
- **neighbourhood enrichment**: the number of (from, to) neighbour pairs within the radius
  against what the same cells, with their classes shuffled over their positions, give
  (histoCAT, Schapiro et al. 2017; squidpy's ``nhood_enrichment``, Palla et al. 2022).
  Shuffling keeps the tissue's shape and its cell density, which a test against complete
  spatial randomness in a rectangle does not (tissue is not a rectangle). The expected count
  is exact (the join-count expectation under random labelling, Cliff & Ord 1981): an ordered
  pair of neighbours (x, y) carries classes (a, b) with probability
  ``n_a (n_b - [a = b]) / (n (n - 1))``, so ``E = 2 P n_a (n_b - [a = b]) / (n (n - 1))``
  summed over the groups for ``P`` neighbour pairs among ``n`` cells; so is its variance
  (Cliff & Ord's join-count variance under non-free sampling, from the pairs and the pairs
  of pairs sharing a cell), which gives ``z = (observed - expected) / SD``: the SD that
  histoCAT and squidpy estimate from their permutations, without the permutations' noise
  (a rare class's z changed with the seed). The permutations give the one-sided p-values
  of enrichment and of depletion, ``(b + 1) / (m + 1)`` (Phipson & Smyth 2010), which hold
  where z, being far from normal for rare classes, does not.

Classes are shuffled within each group (``within``: the TMA core, the case, a region):
cores of a TMA are different patients, and shuffling across them would call two classes
"enriched" only because one core has more of both. Neighbours and nearest cells are looked
for within a group too, so a cohort's table (``slide`` column) never pairs cells of two
slides that share coordinates.

The radius is the analyst's choice; no guideline fixes it. The default, 20 um, reaches a
cell's first ring of neighbours in epithelium (centroids of touching tumour cells lie about
10-15 um apart) and not much beyond. These are descriptive research measures: no guideline
defines a spatial cut-off for breast cancer biomarkers.

References
----------
.. [1] P. J. Clark, F. C. Evans (1954). Distance to nearest neighbor as a measure of spatial
   relationships in populations. Ecology 35(4), 445-453. doi:10.2307/1931034
.. [2] D. Schapiro, H. W. Jackson, S. Raghuraman, et al. (2017). histoCAT: analysis of cell
   phenotypes and interactions in multiplex image cytometry data. Nat. Methods 14, 873-876.
   doi:10.1038/nmeth.4391
.. [3] G. Palla, H. Spitzer, M. Klein, et al. (2022). Squidpy: a scalable framework for
   spatial omics analysis. Nat. Methods 19, 171-178. doi:10.1038/s41592-021-01358-2
.. [4] A. D. Cliff, J. K. Ord (1981). Spatial Processes: Models & Applications. Pion, London.
.. [5] B. Phipson, G. K. Smyth (2010). Permutation p-values should never be zero. Stat.
   Appl. Genet. Mol. Biol. 9(1), 39. doi:10.2202/1544-6115.1585
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from qdmed.errors import InputError
from qdmed.imaging._agreement import MISSING
from qdmed.imaging._heterogeneity import REF_PHIPSON_SMYTH_2010
from qdmed.imaging._region_scores import check_count, natural_key
from qdmed.report._json import to_jsonable

__all__ = ["SpatialResult", "spatial_analysis", "spatial_by_group", "spatial_cells"]

REF_CLARK_EVANS_1954 = (
    "Clark PJ, Evans FC. Distance to nearest neighbor as a measure of spatial relationships "
    "in populations. Ecology 1954;35(4):445-453. doi:10.2307/1931034")
REF_SCHAPIRO_2017 = (
    "Schapiro D, Jackson HW, Raghuraman S, et al. histoCAT: analysis of cell phenotypes and "
    "interactions in multiplex image cytometry data. Nat Methods 2017;14:873-876. "
    "doi:10.1038/nmeth.4391")
REF_PALLA_2022 = (
    "Palla G, Spitzer H, Klein M, et al. Squidpy: a scalable framework for spatial omics "
    "analysis. Nat Methods 2022;19:171-178. doi:10.1038/s41592-021-01358-2")
REF_CLIFF_ORD_1981 = (
    "Cliff AD, Ord JK. Spatial Processes: Models & Applications. Pion, London, 1981 "
    "(join-count statistics under non-free sampling)")

#: Radius of the neighbourhood (um): a cell's first ring of neighbours in epithelium.
DEFAULT_RADIUS_UM = 20.0
#: Most label permutations taken (p-values then resolve 1e-5; ~0.1 s each on 10^6 cells).
MAX_PERMUTATIONS = 99_999
#: Label permutations of the enrichment test (histoCAT's 999).
DEFAULT_PERMUTATIONS = 999
#: A class with fewer cells than this is warned: its measures rest on few cells.
FEW_CELLS = 20
#: ``within='auto'``: the image (the first of these the table has: a cohort's
#: cells.parquet, a QuPath project's export, an inForm table of several fields) ...
IMAGE_COLUMNS = ("slide", "Image", "Sample Name")
#: ... and the first of these it has (a cell without one is grouped by its image alone):
#: a TMA's core before its case, as a case's cores are separate pieces of tissue (a review:
#: grouped by case, nearest distances ran between two cores of a patient, median 306 um
#: against 52 um within cores, and a difference of composition between cores would read as
#: clustering).
AUTO_WITHIN = ("region", "case")
#: Cell centroid columns (um) of a qdmed cells table.
XY_COLUMNS = ("centroid_x_um", "centroid_y_um")
#: More neighbour pairs than this (estimated) is refused: ~16 bytes each, held and
#: counted again in every permutation (20 um around 1e6 cells: ~4e6 pairs).
MAX_PAIRS = 50_000_000
#: The map in :meth:`SpatialResult.plot` draws at most this many cells (a seeded sample).
PLOT_MAX_CELLS = 200_000


@dataclass(frozen=True)
class _Classified:
    """The classified cells, sorted by group: positions (um), class codes, group codes and
    each group's [start, stop) slice; ``index`` maps them back to the table's rows."""

    xy: np.ndarray
    label: np.ndarray
    group: np.ndarray
    bounds: np.ndarray
    classes: tuple[str, ...]
    groups: tuple[str, ...]
    index: np.ndarray
    n_unclassified: int
    n_ungrouped: int
    by: tuple[str, ...]
    within: tuple[str, ...] | None
    #: each sorted cell's image (its value in the table's first IMAGE_COLUMNS column, or 0
    #: without one): cells of one image share a coordinate frame
    image: np.ndarray
    image_column: str | None
    #: cells without a class, by group name
    unclassified_by_group: dict


#: Text read as true / false in a marker column (a CSV's booleans).
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")
#: Centroids beyond this (um: a metre) are no place on a slide, refused.
MAX_COORDINATE_UM = 1e6
#: More distinct classes than this is refused: not a class column (the matrices grow as K^2).
MAX_CLASSES = 50


def _text(s) -> Any:
    """A column as stripped strings, blanks and "no value" cells (:data:`MISSING`, as in
    the agreement tables) missing."""
    out = s.astype("string").str.strip()
    return out.mask(out.str.lower().isin(MISSING))


def _class_text(cells, col: str) -> Any:
    """One column's class per cell as strings (missing: NA): a boolean column (or a CSV's
    True/False) reads ``<marker>+`` / ``<marker>-`` for ``<marker>_positive``; whole
    numbers (cluster ids, also as floats with gaps) read as integers."""
    import pandas as pd

    s = cells[col]
    name = col[: -len("_positive")] if col.endswith("_positive") else col
    text = _text(s)
    low = text.str.lower()
    if pd.api.types.is_bool_dtype(s.dtype) or (
            len(low.dropna()) and low.dropna().isin(_TRUE + _FALSE).all()
            and not pd.api.types.is_numeric_dtype(s.dtype)):
        out = pd.Series(pd.NA, index=s.index, dtype="string")
        out[low.isin(_TRUE).fillna(False)] = f"{name}+"
        out[low.isin(_FALSE).fillna(False)] = f"{name}-"
        return out
    if pd.api.types.is_float_dtype(s.dtype):
        v = s.to_numpy(dtype=np.float64)
        known = np.isfinite(v)
        if not known.any():
            raise InputError(f"class column {col!r} has no values (every cell empty)")
        if not np.all(v[known] == np.round(v[known])):
            raise InputError(f"class column {col!r} holds numbers that are not whole (dtype "
                             f"{s.dtype}); give a column of classes (phenotype, "
                             "her2_category, a cluster id) or a <marker>_positive column")
        out = pd.Series(pd.NA, index=s.index, dtype="string")
        out[known] = [str(int(x)) for x in v[known]]
        return out
    return text


def _combined(cells, by) -> Any:
    """The class per cell of one or several columns (joined by a space: ``ER+ PR-``; by
    `` | `` where a value holds a space, so that two pairs of values never read alike)."""
    parts = [_class_text(cells, col) for col in by]
    if len(parts) == 1:
        return parts[0]
    sep = " | " if any(p.str.contains(" ", regex=False).any() for p in parts) else " "
    text = parts[0]
    for p in parts[1:]:
        text = text + sep + p
    return text


def _check_columns(cells, cols, what: str) -> None:
    dup = sorted({str(c) for c in cols if (cells.columns == c).sum() > 1})
    if dup:
        raise InputError(f"the cells table has more than one column named "
                         f"{', '.join(map(repr, dup))} ({what}): rename them")


def _as_named(cells, names: tuple) -> tuple:
    """Each of `names` as the table spells it where they differ only in Unicode form: the
    micro sign of QuPath's "Centroid X \u00b5m" (U+00B5) and the Greek mu (U+03BC) a
    keyboard gives look alike (a review was told the column it typed was missing, beside
    the one it had); NFKC makes them one. A name matching no column, or more than one, is
    left as given (refused as missing, or ambiguous, later)."""
    import unicodedata

    def key(v) -> str:
        return unicodedata.normalize("NFKC", v) if isinstance(v, str) else v

    cols = {}
    for c in cells.columns:
        cols.setdefault(key(c), []).append(c)
    return tuple(n if n in cells.columns or len(cols.get(key(n), ())) != 1
                 else cols[key(n)][0] for n in names)


def _classify(cells, by, within, xy_columns, classes=None) -> _Classified:
    import pandas as pd

    if not isinstance(cells, pd.DataFrame):
        raise InputError(f"cells must be a pandas table (a cells.parquet read with "
                         f"pandas.read_parquet); got {type(cells).__name__}")
    by = _as_named(cells, (by,) if isinstance(by, str) else tuple(by))
    if not by:
        raise InputError("by: name at least one class column (e.g. phenotype)")
    xy_columns = _as_named(cells, tuple(xy_columns))
    if within is not None and not (isinstance(within, str) and within == "auto"):
        within = _as_named(cells, (within,) if isinstance(within, str) else tuple(within))
    _check_present(cells, by, xy_columns)
    within, auto = _within_columns(cells, within, by)
    _check_columns(cells, (*by, *xy_columns, *(within or ())), "class, centroid or group")
    for col in xy_columns:  # a table of no rows has no type (a header-only CSV's: text)
        if len(cells) and (not pd.api.types.is_numeric_dtype(cells[col].dtype)
                           or pd.api.types.is_bool_dtype(cells[col].dtype)):
            bad = next((v for v in cells[col] if not isinstance(v, int | float)), None)
            raise InputError(f"centroid column {col!r} is not numbers (e.g. {bad!r}); give "
                             "centroids in um as numbers (a decimal point, not a comma)")
    text = _combined(cells, by)
    group = _group_text(cells, within, auto)
    xy = cells[list(xy_columns)].to_numpy(dtype=np.float64)
    classed = text.notna()
    if classes is not None:  # cells of other classes are left out
        classes = tuple(map(str, classes))
        if len(set(classes)) != len(classes):
            raise InputError(f"classes {list(classes)} name a class twice")
        classed &= text.isin(classes).fillna(False)
    keep = (classed & group.notna()).to_numpy(dtype=bool)
    # beyond a metre a centroid is no position on a slide (1e308 overflowed the k-d tree)
    bad = keep & ~np.all(np.isfinite(xy) & (np.abs(xy) < MAX_COORDINATE_UM), axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        ident = f" (cell_id {cells['cell_id'].iloc[row]})" if "cell_id" in cells else ""
        raise InputError(f"cell at row {row}{ident} has a centroid that is not a finite "
                         f"number within {MAX_COORDINATE_UM:g} um ({xy[row].tolist()} um in "
                         f"{xy_columns[0]}, {xy_columns[1]})")
    if classes is None:
        classes = tuple(sorted(text[keep].unique(), key=natural_key))
        if len(classes) > MAX_CLASSES:
            raise InputError(f"{' and '.join(map(repr, by))} give {len(classes)} distinct "
                             f"classes (more than {MAX_CLASSES}): is it a column of classes? "
                             "Give phenotype, her2_category, a cluster id or "
                             "<marker>_positive columns")
    groups = tuple(sorted(group[keep].unique(), key=natural_key))
    lab = pd.Categorical(text[keep], categories=classes).codes.astype(np.int64)
    gcode = pd.Categorical(group[keep], categories=groups).codes.astype(np.int64)
    rows = np.flatnonzero(keep)
    order = np.argsort(gcode, kind="stable")
    bounds = np.searchsorted(gcode[order], np.arange(len(groups) + 1))
    image_col = next((col for col in IMAGE_COLUMNS if col in cells.columns and col not in by),
                     None)
    image = np.zeros(len(rows), dtype=np.int64)
    if image_col is not None:
        image = pd.Categorical(_text(cells[image_col])[keep]).codes.astype(np.int64)[order]
    lost = (~classed & group.notna()).to_numpy(dtype=bool)
    return _Classified(xy=xy[rows][order], label=lab[order], group=gcode[order],
                       bounds=bounds, classes=classes, groups=groups, index=rows[order],
                       n_unclassified=int((~classed).sum()),
                       n_ungrouped=int((classed & group.isna()).sum()), by=by, within=within,
                       image=image, image_column=image_col,
                       unclassified_by_group=group[lost].value_counts().to_dict())


def _check_present(cells, by, xy_columns) -> None:
    """The class and centroid columns exist; the error lists what the table has."""
    missing = [c for c in (*by, *xy_columns) if c not in cells.columns]
    if not missing:
        return
    cols = [str(c) for c in cells.columns]
    have = [c for c in cols if c in ("phenotype", "her2_category", "dab_class",
                                      "Classification", "Class") or c.endswith("_positive")]
    hint = ""
    listed = bool(set(missing) & set(by)) and not have  # all its columns said already
    if set(missing) & set(by):
        hint = (f"; class columns it has: {', '.join(have)}" if have else
                f"; its columns: {', '.join(cols[:12])}{' ...' if len(cols) > 12 else ''}")
    if set(missing) & set(xy_columns):
        like = [c for c in cols if any(w in c.lower() for w in (
            "centroid", "position", " x", " y", "_x", "_y"))] or cols[:12]
        hint += (f"; centroids are read from {xy_columns[0]!r} and {xy_columns[1]!r} (um, "
                 "--xy)" + ("" if listed else f"; columns it has: {', '.join(like)}"))
    raise InputError(f"the cells table has no column {', '.join(map(repr, missing))}{hint}")


def _group_text(cells, within, auto: bool):
    """Each cell's group name: the ``within`` columns' values joined by " / ". With
    'auto', a cell without a case or region is grouped by its image alone (a slide
    without regions in a cohort with TMAs); otherwise it has no group."""
    import pandas as pd

    if not within:
        return pd.Series("all", index=cells.index, dtype="string")
    parts = [_text(cells[col]) for col in within]
    group = parts[0]
    for part in parts[1:]:
        joined = group + " / " + part
        group = joined.fillna(group) if auto else joined
    return group


def _within_columns(cells, within, by=()) -> tuple[tuple[str, ...] | None, bool]:
    """The group columns ``within`` names (None: one group), and whether they were chosen
    by 'auto'. 'auto' leaves out a column that is a class column; a group column named as
    a class column too is refused (each group would hold one class: nothing to compare)."""
    if within is None:
        return None, False
    if isinstance(within, str) and within == "auto":
        image = [c for c in IMAGE_COLUMNS if c in cells.columns and c not in by]
        cand = [c for c in AUTO_WITHIN if c in cells.columns and c not in by]
        cols = tuple(image[:1]) + tuple(cand[:1])
        return (cols or None), True
    cols = (within,) if isinstance(within, str) else tuple(within)
    missing = [c for c in cols if c not in cells.columns]
    if missing or not cols:
        raise InputError(f"within {','.join(cols)!r}: the cells table has no column "
                         f"{', '.join(map(repr, missing))} (give columns of groups such as "
                         "slide, region or case, 'auto', or none)" if missing else
                         "within: name at least one column of groups, 'auto', or none")
    both = [c for c in cols if c in by]
    if both:
        raise InputError(f"within {','.join(cols)!r}: {', '.join(map(repr, both))} is a class column "
                         "too, so each group would hold one class; give another group "
                         "column, or none")
    return cols, False


def _check_permutations(n_permutations) -> int:
    """The label permutations asked for: a whole number up to :data:`MAX_PERMUTATIONS`."""
    return check_count(n_permutations, "n_permutations", least=0, most=MAX_PERMUTATIONS,
                       why=" (p-values resolve 1/(n+1); a review's 10^9 ran for days)")


def _check_radius(radius_um) -> float:
    try:
        r = float(radius_um)
    except (TypeError, ValueError):
        raise InputError(f"radius_um must be a number of um; got {radius_um!r}") from None
    if not (math.isfinite(r) and r > 0):
        raise InputError(f"radius_um must be a positive, finite number of um; got {radius_um!r}")
    return r


def _trees_within(blocks, radius_um: float, refuse: bool = True) -> list | None:
    """A k-d tree of each block of centroids, once the pairs within ``radius_um`` they
    would hold are estimated (from up to 2,000 cells of each block) and found below
    :data:`MAX_PAIRS`: a radius near the tissue's size asks for every pair of cells
    (refused; None with ``refuse`` False)."""
    from scipy.spatial import cKDTree

    trees, est, n = [], 0.0, 0
    for xy in blocks:
        tree = cKDTree(xy)
        trees.append(tree)
        if len(xy) < 2:
            continue
        pick = np.random.default_rng(0).choice(len(xy), min(len(xy), 2000), replace=False)
        per_cell = tree.query_ball_point(xy[pick], radius_um, return_length=True) - 1
        est += len(xy) * float(np.mean(per_cell)) / 2
        n += len(xy)
    if est > MAX_PAIRS:
        if not refuse:
            return None
        raise InputError(
            f"radius_um={radius_um:g}: about {est:.2g} neighbour pairs among {n:,} cells, "
            f"more than {MAX_PAIRS:,} (each takes memory and time in every permutation); "
            f"give a smaller radius (the default {DEFAULT_RADIUS_UM:g} um reaches a cell's "
            "first ring of neighbours)")
    return trees


def _pairs(c: _Classified, radius_um: float) -> np.ndarray:
    """(2, P) neighbour pairs i < j within ``radius_um`` of each other in the same group
    (indices into the sorted cells; rows contiguous, as the permutations index them)."""
    bounds = [(int(g0), int(g1)) for g0, g1 in zip(c.bounds[:-1], c.bounds[1:], strict=True)
              if g1 - g0 > 1]
    out = []
    for (g0, _), tree in zip(bounds, _trees_within([c.xy[g0:g1] for g0, g1 in bounds],
                                                   radius_um), strict=True):
        p = tree.query_pairs(radius_um, output_type="ndarray")
        out.append(p.astype(np.int64) + g0)
    return np.ascontiguousarray(np.concatenate(out).T) if out else \
        np.zeros((2, 0), dtype=np.int64)


def _nearest(c: _Classified) -> np.ndarray:
    """(n, K) distance (um) from each cell to the nearest other cell of each class in its
    group (NaN: none there)."""
    from scipy.spatial import cKDTree

    k = len(c.classes)
    d = np.full((len(c.label), k), np.nan)
    for g0, g1 in zip(c.bounds[:-1], c.bounds[1:], strict=True):
        xy, lab = c.xy[g0:g1], c.label[g0:g1]
        for j in range(k):
            mine = lab == j
            if not mine.any():
                continue
            dist, _ = cKDTree(xy[mine]).query(xy, k=2, workers=-1)
            # a cell of class j finds itself first (distance 0): take its second
            near = np.where(mine, dist[:, 1], dist[:, 0])
            d[g0:g1, j] = np.where(np.isfinite(near), near, np.nan)
    return d


def _neighbour_counts(c: _Classified, pairs: np.ndarray) -> np.ndarray:
    """(n, K) number of cells of each class within the radius of each cell (itself not)."""
    n, k = len(c.label), len(c.classes)
    i, j = pairs
    flat = np.bincount(i * k + c.label[j], minlength=n * k) + \
        np.bincount(j * k + c.label[i], minlength=n * k)
    return flat.reshape(n, k)


def spatial_cells(cells, by: str | Sequence[str] = "phenotype", *,
                  radius_um: float = DEFAULT_RADIUS_UM, within: str | None = "auto",
                  xy_columns: tuple[str, str] = XY_COLUMNS):
    """Per cell: the distance to the nearest other cell of each class, and the number of
    cells of each class within ``radius_um``.

    Parameters
    ----------
    cells : pandas.DataFrame
        A cells table (``cells.parquet`` of ``qdmed image analyze``, or any table with
        centroids in um).
    by : str or sequence of str
        Class column(s): ``phenotype``, ``her2_category``, or a ``<marker>_positive``
        column (read ``<marker>+`` / ``<marker>-``); several columns are combined
        (``["ER_positive", "PR_positive"]`` gives ``ER+ PR-`` ...). Cells with a missing
        class take no part.
    radius_um : float, um
        Neighbourhood radius (centroid to centroid).
    within : str, sequence of str, 'auto' or None
        Column(s) of groups (slide, TMA core, case): distances and neighbours only within a
        cell's group. ``'auto'`` (default): ``slide`` if the table has it (a cohort's
        cells), and ``region`` (a TMA core, an annotation) if it has it, else ``case``;
        None: the whole table.
    xy_columns : (str, str)
        Centroid columns in um.

    Returns
    -------
    pandas.DataFrame
        Same index as ``cells``; ``class``, then ``nearest_um:<class>`` (NaN: no other cell
        of that class in the group, or the cell unclassified) and ``n_within_<r>um:<class>``
        (counts, e.g. ``n_within_20um:HER2-enriched``; missing for unclassified cells) for
        each class.
    """
    import pandas as pd

    r = _check_radius(radius_um)
    c = _classify(cells, by, within, xy_columns)
    near = _nearest(c)
    counts = _neighbour_counts(c, _pairs(c, r))
    out = pd.DataFrame(index=cells.index)
    cls = pd.Series(pd.NA, index=cells.index, dtype="string")
    cls.iloc[c.index] = np.asarray(c.classes, dtype=object)[c.label] if c.classes else []
    out["class"] = cls
    for j, name in enumerate(c.classes):
        col = np.full(len(cells), np.nan)
        col[c.index] = near[:, j]
        out[f"nearest_um:{name}"] = col
    for j, name in enumerate(c.classes):
        col = pd.array([pd.NA] * len(cells), dtype="Int64")
        col[c.index] = counts[:, j]
        out[f"n_within_{r:g}um:{name}"] = col
    return out


def _group_counts(c: _Classified, pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(P_g, n_ga)``: each group's neighbour pairs (G,) and its cells of each class
    (G, K), which the shuffles keep."""
    g_n, k = len(c.groups), len(c.classes)
    p_g = np.bincount(c.group[pairs[0]], minlength=g_n).astype(np.float64)
    n_ga = np.bincount(c.group * k + c.label, minlength=g_n * k).reshape(g_n, k)
    return p_g, n_ga


def _group_expectation(c: _Classified, pairs: np.ndarray) -> np.ndarray:
    """(G, K, K) exact expected ordered neighbour counts under random labelling within
    each group (Cliff & Ord 1981): ``2 P_g n_a (n_b - [a = b]) / (n_g (n_g - 1))``."""
    k = len(c.classes)
    p_g, n_ga = _group_counts(c, pairs)
    n_g = n_ga.sum(axis=1).astype(np.float64)
    denom = n_g * (n_g - 1)
    pair_classes = n_ga[:, :, None] * (n_ga[:, None, :] - np.eye(k, dtype=np.int64)[None])
    with np.errstate(invalid="ignore", divide="ignore"):
        e = np.where(denom[:, None, None] > 0,
                     2 * p_g[:, None, None] * pair_classes / denom[:, None, None], 0.0)
    return e


def _group_variance(c: _Classified, pairs: np.ndarray) -> np.ndarray:
    """(K, K) exact variance of the ordered neighbour counts under random labelling within
    each group (join counts under non-free sampling, Cliff & Ord 1981), summed over the
    independent groups.

    With ``P`` pairs in a group, ``T1 = sum_i d_i (d_i - 1)`` ordered pairs of pairs sharing
    a cell (``d_i``: cell i's neighbours) and ``T2 = P (P - 1) - T1`` disjoint ones, a count
    of indicators X over the pairs has ``Var = P (p - p^2) + T1 (p3 - p^2) + T2 (p4 - p^2)``,
    p, p3, p4 the chance that one pair, two pairs sharing a cell, two disjoint pairs all
    carry the classes. Each difference is written in closed form, with no cancellation (the
    differences of the falling-factorial ratios factor through ``n - n_a``); what is left
    below 64 machine epsilons of the terms' size (rounding: ~1e-16 of it was measured) is
    taken as 0 (a radius holding every pair of the group, or a regular graph: the count
    cannot change). A radius holding all but a few pairs of a large group keeps its small
    variance (1e-9 of the terms' size zeroed 0.75 among 3,000 cells: a review)."""
    g_n, k = len(c.groups), len(c.classes)
    n_cells = len(c.label)
    deg = (np.bincount(pairs[0], minlength=n_cells)
           + np.bincount(pairs[1], minlength=n_cells)).astype(np.float64)
    p_g, n_ga = _group_counts(c, pairs)
    t1 = np.bincount(c.group, weights=deg * (deg - 1), minlength=g_n)
    t2 = p_g * (p_g - 1) - t1
    n = n_ga.sum(axis=1).astype(np.float64)[:, None, None]
    a = n_ga.astype(np.float64)[:, :, None]
    b = n_ga.astype(np.float64)[:, None, :]
    p_, t1_, t2_ = (v[:, None, None] for v in (p_g, t1, t2))
    with np.errstate(invalid="ignore", divide="ignore"):
        n2, n3, n4 = n * (n - 1), n * (n - 1) * (n - 2), n * (n - 1) * (n - 2) * (n - 3)
        # a class with itself: X = both ends of class a; the ordered count is 2 X
        p2 = a * (a - 1) / n2
        same = [p_ * p2 * (n - a) * (n + a - 1) / n2,
                t1_ * p2 * (n - a) * (a * n - 2 * n - 2 * a + 2) / n3,
                -t2_ * p2 * (n - a) * (4 * a * n - 6 * n - 6 * a + 6) / n4]
        # two classes: X = one end a, the other b
        q = 2 * a * b / n2
        cross = [p_ * q * (n2 - 2 * a * b) / n2,
                 t1_ * a * b * ((a + b - 2) * n2 - 4 * a * b * (n - 2)) / (n2 * n3),
                 t2_ * 4 * a * b * ((a - 1) * (b - 1) * n2 - a * b * (n - 2) * (n - 3))
                 / (n2 * n4)]
    eye = np.eye(k, dtype=bool)[None]
    terms = [np.where(eye, 4 * s, x) for s, x in zip(same, cross, strict=True)]
    terms = [np.where(np.isfinite(t), t, 0.0) for t in terms]  # groups too small: 0
    var = sum(terms)
    size = sum(np.abs(t) for t in terms)
    var = np.where(var > 64 * np.finfo(float).eps * size, var, 0.0)
    return var.sum(axis=0)


def _ordered_counts(label: np.ndarray, pairs: np.ndarray, k: int) -> np.ndarray:
    """(K, K) ordered neighbour counts: [a, b] = pairs with one end a and the other b,
    counted both ways (so [a, a] counts each a-a pair twice, and [a, b] / n_a is the mean
    number of b cells within the radius of an a cell)."""
    m = np.bincount(label[pairs[0]] * k + label[pairs[1]], minlength=k * k).reshape(k, k)
    return m + m.T


def _permuted(label: np.ndarray, bounds: np.ndarray, rng) -> np.ndarray:
    """The labels shuffled within each group (the cells are sorted by group)."""
    out = label.copy()
    for g0, g1 in zip(bounds[:-1], bounds[1:], strict=True):
        if g1 - g0 > 1:
            out[g0:g1] = rng.permutation(out[g0:g1])
    return out


def _matrix(a) -> tuple:
    return tuple(tuple(None if not math.isfinite(v) else float(v) for v in row) for row in a)


@dataclass(frozen=True)
class SpatialResult:
    """Nearest distances, neighbours within a radius and neighbourhood enrichment between
    the cell classes of one table (:func:`spatial_analysis`). Matrices are indexed
    [from class][to class] in the order of ``classes``; None where undefined.

    Attributes
    ----------
    by : tuple of str
        Class column(s).
    classes : tuple of str
    n_cells : tuple of int
        Cells of each class.
    n_unclassified : int
        Cells without a class, or of a class not among ``classes`` when those were given:
        left out.
    n_ungrouped : int
        Cells with a class but no group (an empty ``within`` value), left out.
    radius_um : float, um
    within : tuple of str or None
        Columns whose groups the classes were shuffled (and neighbours found) within.
    n_groups : int
    n_pairs : int
        Neighbour pairs within the radius (unordered).
    nearest_median_um, nearest_mean_um : matrices, um
        Median and mean over the "from" cells of the distance to the nearest other "to"
        cell (from cells without one in their group left out).
    nearest_n : matrix
        The "from" cells those are over: the ones with another "to" cell in their group.
    fraction_within : matrix
        Share of "from" cells with at least one "to" cell within the radius.
    mean_neighbours : matrix
        Mean number of "to" cells within the radius of a "from" cell.
    expected_neighbours : matrix
        The same, expected when the classes are shuffled over the cells (exact).
    z : matrix
        ``(observed - expected) / SD`` of the neighbour count, the SD exact under random
        labelling within the groups (symmetric; None where the count cannot change:
        a class absent or alone, a radius holding every pair). For a rare class the count
        is far from normal: read its p-values.
    p_enrichment, p_depletion : matrices
        One-sided permutation p-values, ``(b + 1) / (m + 1)`` (None without permutations,
        and where the pair cannot occur: a class absent, two classes that never share a
        group, one cell of a class for the class with itself, or no neighbours in the
        groups holding both).
    n_permutations, seed : int
    warnings : tuple of str
    references : tuple of str
    """

    by: tuple[str, ...]
    classes: tuple[str, ...]
    n_cells: tuple[int, ...]
    n_unclassified: int
    n_ungrouped: int
    radius_um: float
    within: tuple[str, ...] | None
    n_groups: int
    n_pairs: int
    nearest_median_um: tuple
    nearest_mean_um: tuple
    nearest_n: tuple
    fraction_within: tuple
    mean_neighbours: tuple
    expected_neighbours: tuple
    z: tuple
    p_enrichment: tuple
    p_depletion: tuple
    n_permutations: int
    seed: int | None
    warnings: tuple[str, ...] = ()
    references: tuple[str, ...] = (REF_CLARK_EVANS_1954, REF_SCHAPIRO_2017, REF_PALLA_2022,
                                   REF_CLIFF_ORD_1981, REF_PHIPSON_SMYTH_2010)
    _map: Any = field(default=None, repr=False, compare=False)

    def table(self):
        """One row per (from, to) pair of classes (a pandas table)."""
        import pandas as pd

        rows = []
        for a, fa in enumerate(self.classes):
            for b, tb in enumerate(self.classes):
                rows.append({
                    "from": fa, "to": tb, "n_from": self.n_cells[a], "n_to": self.n_cells[b],
                    "nearest_median_um": self.nearest_median_um[a][b],
                    "nearest_mean_um": self.nearest_mean_um[a][b],
                    "nearest_n": self.nearest_n[a][b],
                    "fraction_within": self.fraction_within[a][b],
                    "mean_neighbours": self.mean_neighbours[a][b],
                    "expected_neighbours": self.expected_neighbours[a][b],
                    "z": self.z[a][b], "p_enrichment": self.p_enrichment[a][b],
                    "p_depletion": self.p_depletion[a][b]})
        return pd.DataFrame(rows, columns=[
            "from", "to", "n_from", "n_to", "nearest_median_um", "nearest_mean_um",
            "nearest_n", "fraction_within", "mean_neighbours", "expected_neighbours", "z",
            "p_enrichment", "p_depletion"])

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in (
            "by", "classes", "n_cells", "n_unclassified", "n_ungrouped", "radius_um",
            "within", "n_groups",
            "n_pairs", "nearest_median_um", "nearest_mean_um", "nearest_n", "fraction_within",
            "mean_neighbours", "expected_neighbours", "z", "p_enrichment", "p_depletion",
            "n_permutations", "seed", "warnings", "references")}
        return to_jsonable(d)

    def plot(self, fig=None):
        """Three panels: the cells by class (at most :data:`PLOT_MAX_CELLS`, a seeded
        sample), the enrichment z-scores, and the median nearest distances."""
        import matplotlib.pyplot as plt

        k = len(self.classes)
        if fig is None:
            fig = plt.figure(figsize=(15, 4.8), layout="constrained")
        axes = fig.subplots(1, 3)
        self._plot_map(axes[0])
        size = max(6.0, 11.0 - 0.5 * k)
        for ax, mat, title, cmap, fmt in (
                (axes[1], self.z, f"enrichment z within {self.radius_um:g} um", "RdBu_r",
                 "{:+.1f}"),
                (axes[2], self.nearest_median_um, "median nearest distance (um)",
                 "viridis_r", "{:.0f}")):
            if not k:
                ax.set_axis_off()
                continue
            a = np.array([[np.nan if v is None else v for v in row] for row in mat],
                         dtype=np.float64).reshape(k, k)
            finite = a[np.isfinite(a)]
            if cmap == "RdBu_r":
                lim = max(2.0, float(np.abs(finite).max())) if finite.size else 2.0
                im = ax.imshow(a, cmap=cmap, vmin=-lim, vmax=lim)
            else:  # distances from 0: 11.45 and 11.49 um look alike
                im = ax.imshow(a, cmap=cmap, vmin=0.0,
                               vmax=float(finite.max()) if finite.size else 1.0)
            fig.colorbar(im, ax=ax, shrink=0.8)
            for (r, c), v in np.ndenumerate(a):
                rgb = im.cmap(im.norm(v))[:3] if np.isfinite(v) else (1.0, 1.0, 1.0)
                dark = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] < 0.5
                ax.text(c, r, "-" if not np.isfinite(v) else fmt.format(v), ha="center",
                        va="center", fontsize=size, color="white" if dark else "black")
            names = [_short(n) for n in self.classes]
            ax.set_xticks(range(k), names, rotation=40, ha="right", fontsize=size + 1)
            ax.set_yticks(range(k), names, fontsize=size + 1)
            ax.set_xlabel("to")
            ax.set_ylabel("from")
            ax.set_title(title)
        return fig

    def _plot_map(self, ax) -> None:
        xy, lab, img = self._map if self._map is not None else (
            np.zeros((0, 2)), np.zeros(0, int), np.zeros(0, int))
        n_img = len(np.unique(img))
        if n_img > 1:  # images share coordinates: the one with most cells alone
            one = img == np.bincount(img).argmax()
            xy, lab = xy[one], lab[one]
        if not len(lab):
            ax.text(0.5, 0.5, "no cells with a class", ha="center", va="center",
                    transform=ax.transAxes)
            ax.set_axis_off()
            return
        cmap = plt_cmap(len(self.classes))
        dot = float(np.clip(20000.0 / max(len(lab), 1), 0.3, 8.0))  # fewer cells, larger dots
        for j, name in enumerate(self.classes):
            m = lab == j
            ax.scatter(xy[m, 0] / 1000, xy[m, 1] / 1000, s=dot, color=cmap(j),
                       label=_short(name), rasterized=True, linewidths=0)
        ax.set_aspect("equal")
        ax.invert_yaxis()
        ax.set_xlabel("x (mm)")
        ax.set_ylabel("y (mm)")
        n = sum(self.n_cells)
        ax.set_title("cells by class" + (
            f" (the largest of {n_img} images)" if n_img > 1 else
            f" ({len(lab):,} of {n:,} drawn)" if len(lab) < n else ""))
        if self.classes:
            ax.legend(markerscale=max(1.0, 6.0 / dot ** 0.5), fontsize=7, frameon=False,
                      loc="center left", bbox_to_anchor=(1.02, 0.5))


def plt_cmap(k: int):
    """Colours for ``k`` classes: qualitative up to 20, then spread over turbo."""
    import matplotlib

    if k <= 20:
        return matplotlib.colormaps["tab10" if k <= 10 else "tab20"]
    return matplotlib.colormaps["turbo"].resampled(k)


def _short(name: str, most: int = 28) -> str:
    """A class name cut for a tick label or legend."""
    return name if len(name) <= most else name[: most - 1] + "\u2026"


def spatial_analysis(cells, by: str | Sequence[str] = "phenotype", *,
                     radius_um: float = DEFAULT_RADIUS_UM, within: str | None = "auto",
                     n_permutations: int = DEFAULT_PERMUTATIONS, seed: int | None = 0,
                     xy_columns: tuple[str, str] = XY_COLUMNS,
                     progress: bool = False, classes: Sequence[str] | None = None
                     ) -> SpatialResult:
    """Nearest distances, neighbours within a radius and neighbourhood enrichment between
    the cell classes of a cells table (see the module's notes for the measures).

    Parameters
    ----------
    cells : pandas.DataFrame
        A cells table with centroids in um (``cells.parquet`` of ``qdmed image analyze``).
    by : str or sequence of str
        Class column(s), as in :func:`spatial_cells` (default ``phenotype``).
    radius_um : float, um
        Neighbourhood radius, centroid to centroid (default 20 um).
    within : str, sequence of str, 'auto' or None
        Column(s) of groups: neighbours are found, and classes shuffled, only within a
        group (slide, TMA core, case). ``'auto'``: ``slide`` if present, and ``region`` if
        present, else ``case``; None: the whole table.
    n_permutations : int
        Shuffles of the classes for the z-scores and p-values (0: none).
    seed : int or None
        Seed of the shuffles.
    xy_columns : (str, str)
        Centroid columns in um.
    progress : bool
        A progress bar of the permutations on stderr.
    classes : sequence of str, optional
        The classes to report, in this order (default: those present, sorted): a class
        no cell has is reported with 0 cells. Cells of other classes are left out.

    Examples
    --------
    Two classes in two halves of a grid: each class's cells neighbour their own, not the
    other's.

    >>> import numpy as np, pandas as pd
    >>> yy, xx = np.mgrid[0:20, 0:20] * 10.0
    >>> cells = pd.DataFrame({"centroid_x_um": xx.ravel(), "centroid_y_um": yy.ravel(),
    ...                       "phenotype": np.where(xx.ravel() < 100, "A", "B")})
    >>> res = spatial_analysis(cells, radius_um=10.5, n_permutations=99, seed=1)
    >>> res.nearest_median_um[0][0], res.mean_neighbours[0][1]
    (10.0, 0.1)
    >>> res.z[0][1] < -5 < 5 < res.z[0][0]
    True
    """
    r = _check_radius(radius_um)
    n_perm = _check_permutations(n_permutations)
    seed = None if seed is None else check_count(seed, "seed", " (or None)", least=0)
    c = _classify(cells, by, within, xy_columns,
                  None if classes is None else tuple(map(str, classes)))
    return _analyse(c, r, n_perm, seed, progress, cut=_cut_pairs(c, r))


def _cut_pairs(c: _Classified, r: float) -> int | None:
    """Pairs of cells within ``r`` of each other in one image but in two groups (adjacent
    annotations), which the groups leave uncounted; None where they are too many to
    count (groups overlapping in one coordinate frame)."""
    if c.within is None or len(c.groups) < 2:
        return 0
    ats = [np.flatnonzero(c.image == img) for img in np.unique(c.image)]
    ats = [at for at in ats if len(np.unique(c.group[at])) > 1]
    trees = _trees_within([c.xy[at] for at in ats], r, refuse=False)
    if trees is None:  # groups sharing one frame (cases without an image column) hold
        return None    # more pairs across them than within: not counted (a review)
    n = 0
    for at, tree in zip(ats, trees, strict=True):
        p = tree.query_pairs(r, output_type="ndarray")
        n += int(np.sum(c.group[at][p[:, 0]] != c.group[at][p[:, 1]]))
    return n


def _analyse(c: _Classified, r: float, n_perm: int, seed, progress: bool,
             cut: int | None = 0) -> SpatialResult:
    """The measures of the classified cells ``c`` (see :func:`spatial_analysis`); ``cut``:
    the pairs its groups leave uncounted (:func:`_cut_pairs`), for the warnings."""
    k = len(c.classes)
    pairs = _pairs(c, r)
    near = _nearest(c)
    n_a = np.bincount(c.label, minlength=k)
    obs = _ordered_counts(c.label, pairs, k).astype(np.float64)
    exp = _group_expectation(c, pairs).sum(axis=0)
    # z from the exact SD under random labelling (what the permutations' SD estimates: a
    # rare class's few non-zero shuffles made that z change with the seed, 112 to 158)
    var = _group_variance(c, pairs)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(var > 0, (obs - exp) / np.sqrt(var), np.nan)
    p_hi, p_lo = _shuffled(c, pairs, obs, n_perm, seed, progress)
    testable = _possible(c, pairs)
    med, mean, used, frac = _distances(c, near, _neighbour_counts(c, pairs))
    with np.errstate(invalid="ignore", divide="ignore"):
        per_from = np.where(n_a > 0, n_a, np.nan)[:, None]
        mean_nb, exp_nb = obs / per_from, exp / per_from
    return SpatialResult(
        by=c.by, classes=c.classes, n_cells=tuple(int(v) for v in n_a),
        n_unclassified=c.n_unclassified, n_ungrouped=c.n_ungrouped, radius_um=r,
        within=c.within, n_groups=len(c.groups), n_pairs=int(pairs.shape[1]),
        nearest_median_um=_matrix(med), nearest_mean_um=_matrix(mean),
        nearest_n=tuple(tuple(int(v) for v in row) for row in used),
        fraction_within=_matrix(frac), mean_neighbours=_matrix(mean_nb),
        expected_neighbours=_matrix(exp_nb), z=_matrix(z),
        p_enrichment=_matrix(p_hi), p_depletion=_matrix(p_lo), n_permutations=n_perm,
        seed=seed, warnings=tuple(_warnings(c, n_a, near, r, pairs, n_perm, used, testable,
                                            cut)),
        _map=_map_sample(c, seed))


def _possible(c: _Classified, pairs: np.ndarray) -> np.ndarray:
    """(K, K) whether a (from, to) neighbour pair can occur under shuffling: some group
    has neighbour pairs and cells of both classes (two cells of the class, for a class
    with itself)."""
    k = len(c.classes)
    p_g, n_ga = _group_counts(c, pairs)
    both = (n_ga[:, :, None] > 0) & (n_ga[:, None, :] > 0)
    both[:, np.arange(k), np.arange(k)] = n_ga >= 2
    return np.any(both & (p_g > 0)[:, None, None], axis=0)


def _shuffled(c: _Classified, pairs, obs, n_perm: int, seed, progress: bool):
    """``(p_enrichment, p_depletion)`` of the observed counts against ``n_perm`` shuffles
    of the classes within the groups, one-sided ``(b + 1) / (m + 1)``; NaN without
    permutations and where the pair cannot occur (:func:`_possible`)."""
    from qdmed.imaging._analyze import _progress

    k = len(c.classes)
    ge, le = np.zeros((k, k), dtype=np.int64), np.zeros((k, k), dtype=np.int64)
    rng = np.random.default_rng(seed)
    with _progress(progress and n_perm > 0 and pairs.shape[1] > 0, n_perm, 0,
                   "permutations") as advance:
        for _ in range(n_perm):
            m = _ordered_counts(_permuted(c.label, c.bounds, rng), pairs, k)
            ge += m >= obs
            le += m <= obs
            advance()
    ok = _possible(c, pairs) & (n_perm > 0)
    return (np.where(ok, (ge + 1) / (n_perm + 1), np.nan),
            np.where(ok, (le + 1) / (n_perm + 1), np.nan))


def _distances(c: _Classified, near, counts):
    """Per (from, to): median and mean nearest distance over the "from" cells with a "to"
    cell in their group, their number, and the share of "from" cells with a "to" cell
    within the radius."""
    k = len(c.classes)
    med, mean, frac = (np.full((k, k), np.nan) for _ in range(3))
    used = np.zeros((k, k), dtype=np.int64)
    for a in range(k):
        mine = c.label == a
        for b in range(k):
            d = near[mine, b]
            d = d[np.isfinite(d)]
            used[a, b] = d.size
            if d.size:
                med[a, b], mean[a, b] = float(np.median(d)), float(d.mean())
            if mine.any():
                frac[a, b] = float(np.mean(counts[mine, b] > 0))
    return med, mean, used, frac


def _one_group(c: _Classified, gi: int) -> _Classified:
    """The cells of group ``gi`` alone, classified as in the whole table (same classes)."""
    g0, g1 = int(c.bounds[gi]), int(c.bounds[gi + 1])
    name = c.groups[gi]
    return replace(c, xy=c.xy[g0:g1], label=c.label[g0:g1],
                   group=np.zeros(g1 - g0, dtype=np.int64), bounds=np.array([0, g1 - g0]),
                   groups=(name,), index=c.index[g0:g1],
                   n_unclassified=int(c.unclassified_by_group.get(name, 0)), n_ungrouped=0,
                   image=c.image[g0:g1],  # several images in one group are warned
                   unclassified_by_group={name: c.unclassified_by_group.get(name, 0)})


def _map_sample(c: _Classified, seed) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = len(c.label)
    if n <= PLOT_MAX_CELLS:
        return c.xy, c.label, c.image
    pick = np.sort(np.random.default_rng(seed).choice(n, PLOT_MAX_CELLS, replace=False))
    return c.xy[pick], c.label[pick], c.image[pick]


def _warnings(c: _Classified, n_a, near, r, pairs, n_perm, used, testable,
              cut: int | None = 0) -> list[str]:
    out = []
    if cut is None:
        out.append(f"the pairs within {r:g} um across {' / '.join(c.within)} groups of one "
                   f"image were too many to count (over {MAX_PAIRS:,}: groups sharing one "
                   "coordinate frame?): if they are annotations side by side, pairs across "
                   "their borders are not counted")
    elif cut:
        out.append(f"{cut} neighbour pairs within {r:g} um lie across two "
                   f"{' / '.join(c.within)} groups of one image and are not counted "
                   "(adjacent annotations?); give within the image column alone to count "
                   "them")
    mixed = sum(len(np.unique(c.image[g0:g1])) > 1
                for g0, g1 in zip(c.bounds[:-1], c.bounds[1:], strict=True))
    if mixed:
        out.append(f"{mixed} group(s) hold cells of several {c.image_column} values, whose "
                   "coordinates overlap: their cells are paired across images; give "
                   f"within {c.image_column} first")
    if c.n_ungrouped:
        out.append(f"{c.n_ungrouped} cells with a class have no {' / '.join(c.within)} "
                   "(empty): left out")
    if not c.classes:
        out.append("the table has no cells: nothing to measure" if not (
            c.n_unclassified or c.n_ungrouped) else
            f"no cell has a class in {', '.join(c.by)}: nothing to measure")
        return out
    few = [f"{name} ({int(n)})" for name, n in zip(c.classes, n_a, strict=True)
           if 0 < n < FEW_CELLS]  # a class absent here (per group) is no warning
    if few:
        out.append(f"classes with fewer than {FEW_CELLS} cells: {', '.join(few)}; their "
                   "distances and enrichment rest on few cells")
    k = len(c.classes)
    thin = [f"{c.classes[a]} -> {c.classes[b]} ({min(used[a, b], used[b, a])})"
            for a in range(k) for b in range(a, k)
            if testable[a, b] and 0 < n_a[a] and min(used[a, b], used[b, a]) < FEW_CELLS
            and min(n_a[a], n_a[b]) >= FEW_CELLS]
    if thin:
        where = " / ".join(c.within or ("group",))
        out.append(f"pairs resting on few cells: in the {where}s holding both classes, "
                   f"fewer than {FEW_CELLS} cells of one of them (their number in brackets): "
                   f"{', '.join(thin[:8])}{' ...' if len(thin) > 8 else ''}; their z, p and "
                   "distances rest on those cells")
    if len(c.label) > 1:
        finite = np.isfinite(near)
        nn = np.where(finite, near, np.inf).min(axis=1) if near.size else np.array([])
        nn = nn[np.isfinite(nn)]
        if nn.size and np.any(nn == 0):
            out.append(f"{int(np.sum(nn == 0))} cells share their centroid with another "
                       "cell (duplicate detections, e.g. from overlapping tiles?): they "
                       "count as neighbours at distance 0")
        if nn.size and np.median(nn) > r:
            out.append(f"the median distance from a cell to its nearest neighbour is "
                       f"{np.median(nn):.3g} um, beyond the radius ({r:g} um): most cells have "
                       "no neighbour within it; give a larger radius_um")
    if pairs.shape[1] == 0 and len(c.label) > 1:
        out.append(f"no two cells lie within {r:g} um of each other: no neighbours, no "
                   "enrichment")
    if 0 < n_perm < 99:
        out.append(f"{n_perm} permutations: the p-values are coarse (p cannot fall "
                   "below 1 / (permutations + 1)); give 999")
    return out


def spatial_by_group(cells, by: str | Sequence[str] = "phenotype", *,
                     within: str | Sequence[str] = "auto",
                     radius_um: float = DEFAULT_RADIUS_UM,
                     n_permutations: int = DEFAULT_PERMUTATIONS, seed: int | None = 0,
                     xy_columns: tuple[str, str] = XY_COLUMNS,
                     progress: bool = False) -> dict[str, SpatialResult]:
    """:func:`spatial_analysis` of each group (TMA core, case) on its own: the measures of
    one patient's core, where the pooled analysis mixes the cores.

    Every group reports the same classes (those of the whole table; a class a group lacks
    has 0 cells there). Each group shuffles with its own seed, drawn from ``seed`` and the
    group's name, so a group's result does not depend on the others.

    Returns
    -------
    dict group -> SpatialResult
        ``pandas.concat({g: r.table() for g, r in res.items()}, names=["group"])`` makes
        one long table.
    """
    r = _check_radius(radius_um)
    n_perm = _check_permutations(n_permutations)
    seed = None if seed is None else check_count(seed, "seed", " (or None)", least=0)
    c = _classify(cells, by, within, xy_columns)
    if c.within is None:
        raise InputError("within: a per-group analysis needs a column of groups (slide, "
                         "region or case), and the cells table has none to choose")
    out = {}
    from qdmed.imaging._analyze import _progress

    with _progress(progress, len(c.groups), 0, "groups") as advance:
        for gi, g in enumerate(c.groups):
            # the group's own seed, from its name: independent of the other groups
            sub_seed = None if seed is None else int(np.random.SeedSequence(
                [seed, zlib.crc32(str(g).encode("utf-8"))]).generate_state(1)[0])
            out[g] = _analyse(_one_group(c, gi), r, n_perm, sub_seed, False)
            advance(str(g))
    return out
