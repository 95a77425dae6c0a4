"""Per-cell scoring: positivity, H-score, phenotypes and marker gates; the column helpers and
HER2 constants that the HER2 calibration (:mod:`._her2_calibration`) and scoring
(:mod:`._her2_score`) share.

All functions read the per-cell table of :func:`qdmed.imaging._cells.measure_cells`
(columns ``{marker}_{compartment}_{statistic}``). Every intensity cut-off is a parameter or
comes from a calibration on control material: qdmed ships no clinical intensity constants
for QD signal (imaging reference, sections 2.1-2.2).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from qdmed.errors import InputError, UnknownNameError, check_fields
from qdmed.report._json import to_jsonable

__all__ = [
    "BREAST_RULES",
    "HER2_CATEGORIES",
    "KNOWN_HER2_CONTROLS",
    "HScore",
    "MARKER_COMPARTMENTS",
    "MarkerGate",
    "gate_noise_floor_percent",
    "gates_from_negative_controls",
    "h_score",
    "percent_positive",
    "score_markers",
    "phenotype",
    "score_positivity",
]

HER2_CATEGORIES = ("0", "1+", "2+", "3+")
_INTENSITY_CLASSES = ("none", "faint", "weak_moderate", "intense")
_COMPARTMENTS = ("nucleus", "cytoplasm", "membrane", "cell")
_STATISTICS = ("mean", "total", "stained_mean")

REF_WOLFF_2018 = (
    "Wolff AC, Hammond MEH, Allison KH, et al. Human epidermal growth factor receptor 2 "
    "testing in breast cancer: ASCO/CAP clinical practice guideline focused update. "
    "J Clin Oncol 2018;36(20):2105-2122. doi:10.1200/JCO.2018.77.8738"
)
REF_HSCORE = (
    "McCarty KS Jr, Miller LS, Cox EB, Konrath J, McCarty KS Sr. Estrogen receptor analyses: "
    "correlation of biochemical and immunohistochemical methods using monoclonal antireceptor "
    "antibodies. Arch Pathol Lab Med 1985;109(8):716-721 (PMID 3893381); Detre S, Saclani "
    "Jotti G, Dowsett M. A 'quickscore' method for immunohistochemical semiquantitation: "
    "validation for oestrogen receptor in breast carcinomas. J Clin Pathol 1995;48(9):876-878. "
    "doi:10.1136/jcp.48.9.876"
)
REF_HERMARK = (
    "Larson JS, Goodman LJ, Tan Y, et al. Analytical validation of a highly quantitative, "
    "sensitive, accurate, and reproducible assay (HERmark) for the measurement of HER2 total "
    "protein and HER2 homodimers in FFPE breast cancer tumor specimens. Patholog Res Int "
    "2010;2010:814176, Table 1. doi:10.4061/2010/814176"
)

#: HER2 IHC scores of cell lines used as controls, from HERmark Table 1 (Larson et al. 2010,
#: doi:10.4061/2010/814176). Lines scored ambiguously there (T47D 0/1+, MDA-MB-361 2/3+)
#: and lines not in that table (e.g. MCF-7, SK-BR-3) are left out: give their category
#: explicitly through ``calibrate_her2(..., categories=...)``. Keys are matched ignoring
#: case, spaces, '-' and '_'.
KNOWN_HER2_CONTROLS = MappingProxyType(
    {
        "BT-474": "3+",
        "ZR-75-1": "1+",
        "MDA-MB-231": "0",
        "MDA-MB-468": "0",
        "MDA-MB-435": "0",
        "A431": "0",
    }
)


# --------------------------------------------------------------------------- helpers
def _check_column_parts(compartment, statistic) -> None:
    """A gate's or a HER2 calibration's compartment and statistic (the cell table column
    they read, :func:`_column`) checked."""
    if compartment not in _COMPARTMENTS:
        raise InputError(f"compartment must be one of {', '.join(_COMPARTMENTS)}; got "
                         f"{compartment!r}.")
    if statistic not in _STATISTICS:
        raise InputError(f"statistic must be one of {', '.join(_STATISTICS)}; got "
                         f"{statistic!r}.")


def _column(df, marker: str, compartment: str, statistic: str = "mean") -> str:
    if compartment not in _COMPARTMENTS:
        raise UnknownNameError(f"Unknown compartment {compartment!r}; accepted: {_COMPARTMENTS}.")
    if statistic not in _STATISTICS:
        raise UnknownNameError(f"Unknown statistic {statistic!r}; accepted: {_STATISTICS}.")
    col = f"{marker}_{compartment}_{statistic}"
    if col not in df.columns:
        markers = sorted({c.split("_")[0] for c in df.columns if c.endswith("_mean")})
        raise UnknownNameError(
            f"Column {col!r} (marker {marker!r}) is not in the cell table; markers present: {markers}."
        )
    return col


def _values(df, col: str, nan_policy: str) -> np.ndarray:
    if nan_policy not in ("raise", "omit", "propagate"):
        raise UnknownNameError(
            f"Unknown nan_policy {nan_policy!r}; accepted: 'raise', 'omit', 'propagate'."
        )
    v = np.asarray(df[col], dtype=np.float64)
    if nan_policy == "raise" and np.isnan(v).any():
        raise InputError(
            f"Column {col!r} has {int(np.isnan(v).sum())} NaN values (cells with an empty "
            "compartment); pass nan_policy='omit' to drop them."
        )
    if nan_policy == "omit":
        v = v[~np.isnan(v)]
    return v


def _finite(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number; got {value!r}.") from None
    if not math.isfinite(v):
        raise InputError(f"{name} must be finite; got {value!r}.")
    return v


def per_cell(values, cells_df, name: str) -> np.ndarray:
    """``values`` as one entry per row of ``cells_df``, in its row order. A pandas Series
    is aligned on the table's index (a review: a shuffled mask Series, or categories of
    another selection of cells, were matched by position, unsaid), and refused where its
    labels are not the table's; anything else is taken in row order."""
    import pandas as pd

    if isinstance(values, pd.Series):
        idx = cells_df.index
        if not values.index.equals(idx):
            missing = int((~idx.isin(values.index)).sum())
            # a table of repeated labels (fields concatenated without ignore_index) cannot
            # be aligned on: a review's mask took field 1's values for both fields
            if idx.has_duplicates or values.index.has_duplicates or missing or \
                    len(values) != len(idx) or not values.index.isin(idx).all():
                raise InputError(
                    f"{name} is a pandas Series whose index is not the cell table's "
                    f"({len(values)} labels for {len(idx)} cells, {missing} of the table's "
                    "missing" + (", the table's labels repeated" if idx.has_duplicates
                                 else "") + "): give it indexed like the table, or as an "
                    "array in the table's row order")
            values = values.reindex(idx)
        return values.to_numpy()
    return np.asarray(values)


def cell_mask_values(cell_mask, cells_df) -> np.ndarray:
    """A ``cell_mask`` argument as one boolean per row of ``cells_df`` (:func:`per_cell`);
    InputError for anything but booleans (row positions read as booleans dropped cell 0,
    unsaid: a review)."""
    import pandas as pd

    m = per_cell(cell_mask, cells_df, "cell_mask")
    if m.dtype == object and m.size and all(isinstance(v, bool | np.bool_) for v in m):
        m = m.astype(bool)
    if m.dtype.kind in "iu" and m.shape == (len(cells_df),) and np.isin(m, (0, 1)).all():
        m = m.astype(bool)  # a 0/1 column (as a CSV stores booleans)
    if m.dtype != bool:
        missing = m.dtype == object and any(v is None or v is pd.NA or v != v for v in m)
        raise InputError(
            f"cell_mask must be booleans (or 0/1), one per cell; got dtype {m.dtype}"
            + (" holding missing values (NA): fill them, e.g. mask.fillna(False)" if missing
               else " (row positions or labels? select them with cells_df.index.isin(...))"))
    if m.shape != (len(cells_df),):
        raise InputError(f"cell_mask must have one boolean per cell ({len(cells_df)}); "
                         f"got shape {m.shape}.")
    return m


def _percent(name: str, value) -> float:
    v = _finite(name, value)
    if not 0 <= v <= 100:
        raise InputError(f"{name} must be a percentage in [0, 100]; got {value!r}.")
    return v


def score_positivity(cells_df, *, marker: str, compartment: str, threshold: float, statistic: str = "mean"):
    """Per-cell positivity: ``value >= threshold``.

    Parameters
    ----------
    cells_df : pandas.DataFrame
        Per-cell table (:func:`measure_cells`).
    marker, compartment : str
        Selects column ``{marker}_{compartment}_{statistic}``.
    threshold : float, abundance units
    statistic : {'mean', 'total'}

    Returns
    -------
    pandas.Series of bool
        Named ``{marker}_positive``, same index as ``cells_df``; NaN values are negative.

    Raises
    ------
    UnknownNameError
        The column does not exist.
    InputError
        Non-finite threshold.
    """
    col = _column(cells_df, marker, compartment, statistic)
    t = _finite("threshold", threshold)
    v = np.asarray(cells_df[col], dtype=np.float64)
    import pandas as pd

    return pd.Series(v >= t, index=cells_df.index, name=f"{marker}_positive")


def percent_positive(cells_df, *, marker: str, compartment: str, threshold: float, statistic: str = "mean") -> float:
    """Percentage of cells with ``{marker}_{compartment}_{statistic} >= threshold``.

    Cells whose value is NaN (an empty compartment: nothing to measure) are left out of the
    denominator, as in :func:`h_score` with ``nan_policy='omit'``; NaN if no cell remains.
    """
    pos = score_positivity(cells_df, marker=marker, compartment=compartment, threshold=threshold, statistic=statistic)
    measured = ~np.isnan(np.asarray(cells_df[_column(cells_df, marker, compartment, statistic)],
                                    dtype=np.float64))
    n = int(measured.sum())
    return float(100.0 * np.count_nonzero(np.asarray(pos) & measured) / n) if n else math.nan


@dataclass(frozen=True)
class HScore:
    """H-score of one marker over a cell population.

    Attributes
    ----------
    h_score : float
        ``1 * percent_weak + 2 * percent_moderate + 3 * percent_strong``, in [0, 300].
    percent_negative, percent_weak, percent_moderate, percent_strong, percent_positive : float
        Percent of cells per intensity bin; positive = weak + moderate + strong.
    n_cells : int
    thresholds : tuple of 3 float
    marker, compartment, statistic : str
    """

    h_score: float
    percent_negative: float
    percent_weak: float
    percent_moderate: float
    percent_strong: float
    percent_positive: float
    n_cells: int
    thresholds: tuple[float, float, float]
    marker: str
    compartment: str
    statistic: str
    reference: str = REF_HSCORE

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of all fields (NaN -> None)."""
        return to_jsonable(asdict(self))


def h_score(
    cells_df,
    *,
    marker: str,
    compartment: str,
    thresholds: Sequence[float],
    statistic: str = "mean",
    nan_policy: str = "raise",
) -> HScore:
    """H-score (0-300) from three intensity thresholds.

    Parameters
    ----------
    cells_df : pandas.DataFrame
    marker, compartment, statistic : str
        Column ``{marker}_{compartment}_{statistic}``.
    thresholds : (t1, t2, t3), strictly increasing, abundance units
        weak: ``t1 <= v < t2``; moderate: ``t2 <= v < t3``; strong: ``v >= t3``.
    nan_policy : {'raise', 'omit'}
        Cells with NaN values raise or are dropped.

    Returns
    -------
    HScore

    Raises
    ------
    InputError
        Thresholds not three strictly increasing finite numbers; NaN with ``'raise'``.
    UnknownNameError
        Missing column or unknown policy.

    Notes
    -----
    H = 1 x (% weak) + 2 x (% moderate) + 3 x (% strong) (McCarty et al. 1985; the
    semiquantitative "H-score" compared in Detre et al. 1995). With no cells all fields are NaN.

    References
    ----------
    .. [1] McCarty KS Jr et al., Arch Pathol Lab Med 109, 716-721 (1985). PMID 3893381.
    .. [2] Detre S, Saclani Jotti G, Dowsett M, J Clin Pathol 48, 876-878 (1995).
       doi:10.1136/jcp.48.9.876

    Examples
    --------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"ER_nucleus_mean": [0.0, 1.5, 2.5, 3.5]})
    >>> h_score(df, marker="ER", compartment="nucleus", thresholds=(1, 2, 3)).h_score
    150.0
    """
    col = _column(cells_df, marker, compartment, statistic)
    t = tuple(_finite("thresholds", x) for x in thresholds)
    if len(t) != 3 or not (t[0] < t[1] < t[2]):
        raise InputError(f"thresholds must be three strictly increasing numbers (t1, t2, t3); got {thresholds!r}.")
    if nan_policy == "propagate":
        raise UnknownNameError("nan_policy 'propagate' is not supported by h_score; accepted: 'raise', 'omit'.")
    v = _values(cells_df, col, nan_policy)
    v = v[~np.isnan(v)]
    n = v.size
    counts = np.bincount(np.searchsorted(np.asarray(t), v, side="right"), minlength=4)
    pct = 100.0 * counts / n if n else np.full(4, np.nan)
    return HScore(
        h_score=float(pct[1] + 2 * pct[2] + 3 * pct[3]),
        percent_negative=float(pct[0]),
        percent_weak=float(pct[1]),
        percent_moderate=float(pct[2]),
        percent_strong=float(pct[3]),
        percent_positive=float(pct[1] + pct[2] + pct[3]),
        n_cells=int(n),
        thresholds=t,
        marker=marker,
        compartment=compartment,
        statistic=statistic,
    )


# --------------------------------------------------------------------------- phenotypes
@dataclass(frozen=True)
class MarkerGate:
    """Per-cell positivity rule of one marker: ``{marker}_{compartment}_{statistic} >= threshold``.

    ``false_positive_percent``: the percent of truly negative cells the gate calls positive
    (:func:`gate_noise_floor_percent` for a gate from :func:`gates_from_negative_controls`),
    or None when unknown; ``control_cells``: the number of control cells it was estimated on (its
    uncertainty), or None. :func:`qdmed.imaging.receptor_status` corrects percentages for
    both.
    """

    compartment: str
    threshold: float
    statistic: str = "mean"
    false_positive_percent: float | None = None
    control_cells: int | None = None

    def __post_init__(self):
        _check_column_parts(self.compartment, self.statistic)
        t = self.threshold
        # a NaN threshold called every cell negative, unsaid (a review)
        if isinstance(t, bool) or not isinstance(t, int | float | np.integer | np.floating) \
                or not math.isfinite(t):
            raise InputError(f"a gate's threshold must be a finite number; got {t!r}.")
        f = self.false_positive_percent
        if f is not None and not (isinstance(f, int | float) and not isinstance(f, bool)
                                  and math.isfinite(f) and 0 <= f < 100):
            raise InputError(f"false_positive_percent must be a number in [0, 100) or None; "
                             f"got {f!r}.")
        n = self.control_cells
        if n is not None and (isinstance(n, bool) or not isinstance(n, int | np.integer)
                              or n < 1):
            raise InputError(f"control_cells must be an integer >= 1 or None; got {n!r}.")

    def to_dict(self) -> dict:
        """The gate as a calibration file holds it (its statistic is the mean); a floor
        estimated on control cells says its rule (:data:`FLOOR_RULE`), which files written
        before it lack (their floor was ``100 (1 - quantile)``)."""
        d = {"compartment": self.compartment, "threshold": self.threshold,
             "false_positive_percent": self.false_positive_percent,
             "control_cells": self.control_cells}
        if self.control_cells is not None and self.false_positive_percent is not None:
            d["floor_rule"] = FLOOR_RULE
        return d

    @classmethod
    def from_dict(cls, d) -> MarkerGate:
        """The gate of :meth:`to_dict`'s dict (``MarkerGate(**g.to_dict())`` met its
        ``floor_rule``: a review); a ``statistic`` field is read too. A calibration file's
        gates are read by :func:`~qdmed.imaging.load_calibration`, which also updates a
        floor recorded before :data:`FLOOR_RULE`."""
        if not isinstance(d, Mapping) or "compartment" not in d or "threshold" not in d:
            raise InputError(f"a gate needs 'compartment' and 'threshold'; got {d!r}")
        check_fields(d, ("compartment", "threshold", "statistic", "false_positive_percent",
                         "control_cells", "floor_rule"), "<gate>")
        return cls(d["compartment"], d["threshold"], d.get("statistic", "mean"),
                   d.get("false_positive_percent"), d.get("control_cells"))


def _gate(marker: str, g) -> MarkerGate:
    """A MarkerGate from a MarkerGate, a (compartment, threshold[, statistic]) tuple or a
    dict (:meth:`MarkerGate.from_dict`)."""
    if isinstance(g, MarkerGate):
        return g
    if isinstance(g, (tuple, list)) and len(g) in (2, 3):
        return MarkerGate(*g)
    if isinstance(g, Mapping):
        return MarkerGate.from_dict(g)
    raise InputError(f"gate for {marker!r} must be a MarkerGate, (compartment, threshold[, "
                     f"statistic]) or a dict of them; got {g!r}.")


#: Per-cell breast phenotypes (first matching rule wins), modelled on the St Gallen 2013
#: surrogate subtypes without Ki-67 / PR-level splits (Goldhirsch A et al., Ann Oncol
#: 2013;24:2206-2223, doi:10.1093/annonc/mdt303). A rule is a conjunction
#: ``{marker: required positivity}`` or a list of such conjunctions (any may match).
#: Applied to single cells these are labels of cell states, not patient subtypes.
BREAST_RULES = MappingProxyType(
    {
        "luminal HER2+": ({"HER2": True, "ER": True}, {"HER2": True, "PR": True}),
        "HER2-enriched": ({"HER2": True, "ER": False, "PR": False},),
        "luminal HER2-": ({"HER2": False, "ER": True}, {"HER2": False, "PR": True}),
        "triple negative": ({"HER2": False, "ER": False, "PR": False},),
    }
)


#: Label of cells whose phenotype waits on a HER2 2+ (equivocal) category (phenotype's
#: ``her2_category``): ASCO/CAP 2018 calls 2+ neither positive nor negative.
HER2_EQUIVOCAL_PHENOTYPE = "HER2 2+ (equivocal)"


def phenotype(cells_df, rules: Mapping | str = "breast", *, gates: Mapping[str, MarkerGate], default: str = "other",
              unmeasured: str = "unmeasured", her2_category=None):
    """Assign each cell the first phenotype whose marker rule it satisfies.

    Parameters
    ----------
    cells_df : pandas.DataFrame
    rules : mapping name -> rule, or 'breast'
        Ordered mapping; a rule is ``{marker: bool}`` (all must hold) or a sequence of such
        mappings (any may hold). ``'breast'`` uses :data:`BREAST_RULES` (HER2, ER, PR).
    gates : mapping marker -> MarkerGate or (compartment, threshold)
        Positivity gate of each marker used by the rules; thresholds are yours to set.
    default : str
        Label of cells matching no rule.
    unmeasured : str
        Label of cells whose phenotype depends on a NaN value (an empty compartment): a NaN
        marker is neither positive nor negative, so a rule that needs it is undecided, and a
        cell gets ``unmeasured`` when an undecided rule comes before the first rule it
        satisfies (or it satisfies none). A cell whose first satisfied rule does not need
        the NaN marker keeps that phenotype (e.g. HER2+ ER+ with PR NaN is luminal HER2+);
        HER2- ER- with PR NaN is not triple negative but unmeasured.
    her2_category : sequence of {'0', '1+', '2+', '3+', None}, optional
        Each cell's HER2 category (:attr:`Her2Score.cells`, aligned with ``cells_df``). When
        given, the rules' HER2 is the category, not a gate, read per cell as ASCO/CAP 2018
        reads a tumour's (Wolff et al., J Clin Oncol 2018, doi:10.1200/JCO.2018.77.8738;
        the guideline scores tumours by their share of cells, and gives cells no status of
        their own: this per-cell reading is qdmed's): 3+ positive, 0 and 1+ negative, 2+
        undecided (cells that wait on it are labelled
        :data:`HER2_EQUIVOCAL_PHENOTYPE`), None unmeasured. A HER2 gate at a HER2-0
        control's 99th percentile passes most 1+ cells: a review found 29 % of an MCF-7
        (1+) slide's cells called "luminal HER2+", every one of them 1+.

    Returns
    -------
    pandas.Series of str
        Named ``'phenotype'``, same index as ``cells_df``.

    Raises
    ------
    UnknownNameError
        Unknown rule set, a marker without a gate, a missing column.
    InputError
        Malformed rules or gates.

    Examples
    --------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"HER2_membrane_mean": [5.0, 0.0], "ER_nucleus_mean": [0.0, 3.0],
    ...                    "PR_nucleus_mean": [0.0, 0.0]})
    >>> gates = {"HER2": ("membrane", 1.0), "ER": ("nucleus", 1.0), "PR": ("nucleus", 1.0)}
    >>> phenotype(df, "breast", gates=gates).tolist()
    ['HER2-enriched', 'luminal HER2-']
    """
    import pandas as pd

    if isinstance(rules, str):
        if rules != "breast":
            raise UnknownNameError(f"Unknown rule set {rules!r}; accepted: 'breast' or a mapping.")
        rules = BREAST_RULES
    if not isinstance(rules, Mapping):
        raise InputError(f"rules must be a mapping name -> rule or 'breast'; got {type(rules).__name__}.")
    norm_gates = {m: _gate(m, g) for m, g in gates.items()}
    cache: dict[str, np.ndarray] = {}
    equivocal = None
    if her2_category is not None:
        cat = np.array([None if pd.isna(c) else str(c) for c in
                        per_cell(her2_category, cells_df, "her2_category")], dtype=object)
        if cat.shape != (len(cells_df),):
            raise InputError(f"her2_category must give one category per cell ({len(cells_df)}); "
                             f"got {cat.shape[0]}")
        bad = sorted({str(c) for c in cat if c is not None and c not in HER2_CATEGORIES})
        if bad:
            raise InputError(f"her2_category holds {', '.join(bad)}; accepted: "
                             f"{', '.join(HER2_CATEGORIES)} or None")
        equivocal = cat == "2+"
        cache["HER2"] = (cat == "3+", np.array([c is None for c in cat]) | equivocal)

    def positive(marker: str) -> np.ndarray:
        if marker not in cache:
            if marker not in norm_gates:
                raise UnknownNameError(
                    f"Rules use marker {marker!r} but gates has no entry for it; gates given: {sorted(norm_gates)}."
                )
            g = norm_gates[marker]
            pos = np.asarray(
                score_positivity(cells_df, marker=marker, compartment=g.compartment, threshold=g.threshold, statistic=g.statistic)
            )
            col = _column(cells_df, marker, g.compartment, g.statistic)
            cache[marker] = (pos, np.isnan(np.asarray(cells_df[col], dtype=np.float64)))
        return cache[marker]

    # three-valued rules: a condition on a NaN marker is unknown; first decided match wins
    n = len(cells_df)
    out = np.full(n, default, dtype=object)
    settled = np.zeros(n, dtype=bool)  # labelled, or blocked by an undecided earlier rule
    for name, rule in rules.items():
        alternatives = (rule,) if isinstance(rule, Mapping) else tuple(rule)
        true = np.zeros(n, dtype=bool)
        false = np.ones(n, dtype=bool)
        for alt in alternatives:
            if not isinstance(alt, Mapping) or not alt:
                raise InputError(f"rule {name!r} must be a non-empty mapping marker -> bool or a list of them; got {alt!r}.")
            alt_true = np.ones(n, dtype=bool)
            alt_false = np.zeros(n, dtype=bool)
            for marker, want in alt.items():
                pos, nan = positive(marker)
                holds = pos == bool(want)
                alt_true &= holds & ~nan
                alt_false |= ~holds & ~nan
            true |= alt_true
            false &= alt_false
        out[true & ~settled] = name
        undecided = ~true & ~false & ~settled
        out[undecided] = unmeasured if equivocal is None else np.where(
            equivocal[undecided], HER2_EQUIVOCAL_PHENOTYPE, unmeasured)
        settled |= true | undecided
    return pd.Series(out, index=cells_df.index, name="phenotype")


# --------------------------------------------------------------------------- HER2
def _category(value) -> str:
    s = str(value).strip()
    try:  # 0-3 as numbers (a CSV column with a blank cell reads as floats: 3.0)
        f = float(s)
    except ValueError:
        f = None
    if f is not None and f in (0.0, 1.0, 2.0, 3.0):
        s = str(int(f))
    if s in ("1", "2", "3"):
        s += "+"
    if s == "0+":
        s = "0"
    if s not in HER2_CATEGORIES:
        raise InputError(f"HER2 category must be one of {HER2_CATEGORIES}; got {value!r}.")
    return s


def _norm_name(name: str) -> str:
    return "".join(ch for ch in str(name).lower() if ch not in " -_")



# ------------------------------------------------------------------ marker positivity gates
#: Usual subcellular compartment of each marker (where its positivity is read).
MARKER_COMPARTMENTS = MappingProxyType({
    "HER2": "membrane", "EGFR": "membrane", "CA125": "membrane", "claudin-4": "membrane",
    "ER": "nucleus", "PR": "nucleus", "AR": "nucleus", "DAPI": "nucleus",
    "mTOR": "cytoplasm", "PSA": "cytoplasm",
})


def gates_from_negative_controls(controls: Mapping[str, Any], negatives: Mapping[str, str], *,
                                 quantile: float = 0.99,
                                 compartments: Mapping[str, str] | None = None
                                 ) -> dict[str, MarkerGate]:
    """Positivity gates from control populations known to be negative for a marker.

    The gate of marker m is the ``quantile`` (default 99th percentile) of m in its compartment
    over the cells of the negative control ``negatives[m]``. This is the negative-control
    gating used in cytometry and quantitative IF; the quantile is a parameter, never a
    clinical constant. The share of truly negative cells the gate calls positive (its noise
    floor, recorded as ``false_positive_percent``) is not ``1 - quantile`` but
    :func:`gate_noise_floor_percent` of the control's size: a quantile estimated from few
    cells lies lower, on average, than the population's (1.97 % for 100 control cells at the
    99th percentile, 9.9 % for 10; a review found truly ER-negative tumours called ER low
    positive in 40 % of draws with 100 control cells when 1 % was recorded).

    The control should share the tissue's co-expression of the other markers: shot noise of
    a bright co-expressed label spreads into the gated channel through the unmixing, so a gate
    from a control lacking it is too low (qdmed's tests measured PR positivity 84 % against
    72 % true in ER-high tissue gated on an ER-negative line). A fluorescence-minus-one
    control (all labels but the gated one) avoids this. Which co-expressed labels matter is
    read from the panel's spillover spreading matrix
    (:func:`qdmed.imaging.spreading_matrix`, row = gated marker).

    Parameters
    ----------
    controls : mapping name -> per-cell table
    negatives : mapping marker -> control name (e.g. ``{"ER": "MDA-MB-468"}``)
    quantile : float in (0.5, 1)
    compartments : mapping marker -> compartment, optional (default
        :data:`MARKER_COMPARTMENTS`).
    """
    q = float(quantile)
    if not 0.5 < q < 1:
        raise InputError(f"quantile must be in (0.5, 1); got {quantile!r}.")
    comps = dict(MARKER_COMPARTMENTS)
    comps.update(compartments or {})
    gates = {}
    for marker, ctrl in negatives.items():
        if ctrl not in controls:
            raise UnknownNameError(
                f"negative control {ctrl!r} for {marker} is not among the controls "
                f"{sorted(controls)}."
            )
        if marker not in comps:
            raise UnknownNameError(
                f"no compartment known for marker {marker!r}; known markers: "
                f"{', '.join(sorted(comps))} (from Python, give its compartment: "
                f"compartments={{{marker!r}: 'nucleus'}})."
            )
        col = _column(controls[ctrl], marker, comps[marker], "mean")
        v = _values(controls[ctrl], col, "omit")
        if v.size < 10:
            raise InputError(f"negative control {ctrl!r} has {v.size} cells with {col}; need >= 10.")
        gates[marker] = MarkerGate(comps[marker], float(np.quantile(v, q)),
                                   false_positive_percent=gate_noise_floor_percent(v.size, q),
                                   control_cells=int(v.size))
    return gates


#: How a gate's noise floor is estimated from its control (recorded in calibration files).
FLOOR_RULE = "order statistics: (n (1 - q) + q) / (n + 1)"


def gate_noise_floor_percent(n_cells: int, quantile: float) -> float:
    """Percent of truly negative cells at or above a gate set at the ``quantile`` of ``n_cells``
    negative-control cells (``numpy.quantile``'s linear interpolation): ``100 (n (1 - q) +
    q) / (n + 1)``.

    For continuous values, ``F(X_(r))`` of the r-th of n order statistics is Beta(r, n - r +
    1) distributed with mean ``r / (n + 1)`` (David & Nagaraja 2003, chapter 2), whatever
    the distribution F; the gate lies at rank ``h = (n - 1) q + 1``, so a new negative cell
    passes it with probability ``1 - h / (n + 1)`` (to first order between two ranks: a
    Monte Carlo check in qdmed's tests). The estimate's uncertainty is that Beta
    distribution, ``Beta(f (n + 1), (1 - f) (n + 1))`` for a floor ``f``, which
    :func:`qdmed.imaging.receptor_status` uses. Rounded to 1e-9 %.

    References
    ----------
    .. [1] H. A. David, H. N. Nagaraja (2003). Order Statistics, 3rd ed. Wiley, Hoboken NJ.
       doi:10.1002/0471722162

    Examples
    --------
    >>> gate_noise_floor_percent(100, 0.99), gate_noise_floor_percent(10, 0.99)
    (1.97029703, 9.909090909)
    """
    from qdmed.imaging._region_scores import check_count

    n = check_count(n_cells, "n_cells", " (control cells)")
    q = float(quantile)
    if not 0.0 < q < 1.0:  # NaN fails too
        raise InputError(f"quantile must be in (0, 1); got {quantile!r}.")
    return round(100.0 * (n * (1.0 - q) + q) / (n + 1), 9)


def phenotype_markers_given(gates, her2_category=None) -> bool:
    """Whether the breast phenotypes can be told: ER and PR gated, and HER2 gated or
    categorised."""
    return {"ER", "PR"} <= set(gates or {}) and (her2_category is not None
                                                  or "HER2" in (gates or {}))


def phenotype_her2(her2_category=None) -> str:
    """What the breast phenotypes' HER2+ means, for a summary."""
    if her2_category is not None:
        return ("the cell's HER2 category, read as ASCO/CAP 2018 reads a tumour's (3+ "
                "positive, 0 and 1+ negative, 2+ equivocal; a per-cell reading of qdmed's)")
    return ("the HER2 gate (above a HER2-negative control's noise): 1+ cells pass it, so "
            "HER2+ here is not ASCO/CAP HER2 positive; give a HER2 calibration (cut-offs) to "
            "read it from the categories")


def score_markers(cells_df, gates: Mapping[str, MarkerGate], *,
                  her2_category=None) -> dict[str, Any]:
    """Percent positive per gated marker; when ER and PR are gated and HER2 is gated or
    its per-cell categories are given (``her2_category``, as for :func:`phenotype`, which
    then decides the phenotypes' HER2), the counts of the breast phenotypes
    (:data:`BREAST_RULES`) and what their HER2 is (``phenotype_her2``); when ER or PR is
    gated, its ASCO/CAP 2020 status (:func:`qdmed.imaging.receptor_status`) under
    ``receptor_status``."""
    gates = {m: _gate(m, g) for m, g in gates.items()}
    out: dict[str, Any] = {"gates": {m: {**g.to_dict(), "statistic": g.statistic}
                                     for m, g in gates.items()},
                           "percent_positive": {}}
    for m, g in gates.items():
        out["percent_positive"][m] = (
            percent_positive(cells_df, marker=m, compartment=g.compartment,
                             threshold=g.threshold, statistic=g.statistic)
            if len(cells_df) else None)
    if phenotype_markers_given(gates, her2_category) and len(cells_df):
        ph = phenotype(cells_df, "breast", gates=gates, her2_category=her2_category)
        out["phenotypes"] = {str(k): int(v) for k, v in ph.value_counts().items()}
        out["phenotype_her2"] = phenotype_her2(her2_category)
    if len(cells_df):
        from qdmed.imaging._receptors import receptor_status

        status = receptor_status(cells_df, gates)
        if status:
            out["receptor_status"] = {m: st.to_dict() for m, st in status.items()}
    return to_jsonable(out)
