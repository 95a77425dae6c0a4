"""Per-cell scoring: positivity, H-score, phenotypes, HER2 ASCO/CAP-style scoring, agreement.

All functions read the per-cell table of :func:`qdmed.imaging._cells.measure_cells`
(columns ``{marker}_{compartment}_{statistic}``). Every intensity cut-off is a parameter or
comes from a calibration on control material: qdmed ships no clinical intensity constants
for QD signal (imaging reference, sections 2.1-2.2).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from qdmed.errors import InputError, UnknownNameError, check_fields, check_number
from qdmed.report._json import to_jsonable

__all__ = [
    "BREAST_RULES",
    "HER2_CATEGORIES",
    "KNOWN_HER2_CONTROLS",
    "HScore",
    "Her2Calibration",
    "Her2Score",
    "MARKER_COMPARTMENTS",
    "MarkerGate",
    "SegmentationMatch",
    "calibrate_her2",
    "cohen_kappa",
    "f1_at_iou",
    "gate_noise_floor_percent",
    "gates_from_negative_controls",
    "h_score",
    "her2_rule_branch",
    "percent_positive",
    "score_markers",
    "phenotype",
    "score_her2",
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


def _gate(marker: str, g) -> MarkerGate:
    """A MarkerGate from a MarkerGate or a (compartment, threshold[, statistic]) tuple."""
    if isinstance(g, MarkerGate):
        return g
    if isinstance(g, (tuple, list)) and len(g) in (2, 3):
        return MarkerGate(*g)
    raise InputError(f"gate for {marker!r} must be a MarkerGate or (compartment, threshold[, "
                     f"statistic]); got {g!r}.")


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
        cat = np.array([None if pd.isna(c) else str(c) for c in her2_category], dtype=object)
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


@dataclass(frozen=True)
class Her2Calibration:
    """Membrane-intensity cut-offs of the HER2 intensity classes.

    Per-cell intensity class of value ``v`` (``{marker}_{compartment}_{statistic}``):
    none ``v < faint``; faint ``faint <= v < weak_moderate``; weak-to-moderate
    ``weak_moderate <= v < intense``; intense ``v >= intense``.

    Attributes
    ----------
    faint, weak_moderate, intense : float, abundance units
        Strictly increasing cut-offs.
    marker, compartment, statistic : str
        Column the cut-offs apply to.
    rule : str
        How the cut-offs were obtained ('explicit' or the calibration rule).
    scale : str
        Interpolation scale used by :func:`calibrate_her2` ('log' or 'linear'), or ''.
    faint_quantile : float or None
    controls : tuple
        ``(name, category, n_cells, median, faint_quantile_value or None)`` per control:
        the last is the faint cut-off drawn from the control (its quantile, or the gap's
        middle with :attr:`faint_from_gap`).
    warnings : tuple of str
        What the calibration could not check (e.g. no 0 control).
    stained_group_percent : float or None, %
        Share of the pooled 0 controls' cells in a separate stained group at their top
        (:func:`stained_group_share`; a 0 case may hold up to 10 % faint cells), which
        :attr:`null_stained_percent` leaves out of the null population; None where there is
        none (or for explicit cut-offs and older calibrations).
    faint_from_gap : bool
        The faint cut-off lies in the middle of the gap between that stained group and the
        0 controls' other cells (:func:`calibrate_her2`'s ``faint_rule='gap'``), not at
        their ``faint_quantile`` quantile; False for explicit cut-offs and calibrations
        from before this rule.
    """

    faint: float
    weak_moderate: float
    intense: float
    marker: str = "HER2"
    compartment: str = "membrane"
    statistic: str = "mean"
    rule: str = "explicit"
    scale: str = ""
    faint_quantile: float | None = None
    controls: tuple = ()
    warnings: tuple = ()
    stained_group_percent: float | None = None
    faint_from_gap: bool = False

    def __post_init__(self):
        vals = (self.faint, self.weak_moderate, self.intense)
        # numbers only: "35.1" compared with a float crashed; True read as 1
        if not all(isinstance(v, int | float | np.integer | np.floating)
                   and not isinstance(v, bool) for v in vals) \
                or not all(math.isfinite(float(v)) for v in vals) \
                or not (vals[0] < vals[1] < vals[2]):
            raise InputError(
                "HER2 cut-offs must be finite numbers, strictly increasing faint < "
                f"weak_moderate < intense; got {vals}."
            )
        _check_column_parts(self.compartment, self.statistic)
        if not isinstance(self.marker, str) or not self.marker:
            raise InputError(f"marker must be a marker's name; got {self.marker!r}.")
        if self.scale not in ("", "log", "linear"):  # a review's "cubic" passed, unused
            raise InputError(f"scale must be 'log', 'linear' or '' (explicit cut-offs); got "
                             f"{self.scale!r}.")
        if self.faint_quantile is not None:  # as calibrate_her2 takes it (a file gave 5)
            check_number(self.faint_quantile, "faint_quantile", lo=0.9, hi=1.0)
            if self.faint_quantile == 1.0:
                raise InputError("faint_quantile must be below 1; got 1.0.")
        if self.stained_group_percent is not None:
            check_number(self.stained_group_percent, "stained_group_percent", lo=0.0, hi=10.0)
        if not isinstance(self.faint_from_gap, bool | np.bool_):
            raise InputError(f"faint_from_gap must be true or false; got "
                             f"{self.faint_from_gap!r}.")
        if self.faint_from_gap and not self.stained_group_percent:
            raise InputError("faint_from_gap needs the 0 controls' stained_group_percent (the "
                             "group whose gap the faint cut-off lies in).")

    @property
    def cutoffs(self) -> tuple[float, float, float]:
        """``(faint, weak_moderate, intense)``."""
        return (float(self.faint), float(self.weak_moderate), float(self.intense))

    @property
    def null_stained_percent(self) -> float:
        """Percent of HER2-null (0) cells that read as at least faint under this calibration.

        When the faint cut-off is the ``faint_quantile`` quantile of the pooled 0 controls,
        about ``100 (1 - faint_quantile)`` % of null cells lie above it by construction
        (:func:`gate_noise_floor_percent` of the pooled controls' size, the order-statistics
        expectation): the noise floor below which "some staining" cannot be told from a null
        population. Where the controls' top cells are a separate stained group
        (:attr:`stained_group_percent`), those are not null: the cut-off's rank is taken
        among the null cells below them (1 / (null cells + 1) when it lies above them all, as
        a cut-off in the gap above them does: :attr:`faint_from_gap`).
        A synthetic MDA-MB-468 holds ~4 % 1+ cells; counted as null they had set the floor at
        5.29 %, above the 1.2 % of truly 0 cells that read faint in a tumour field, so that
        a tumour with 5 % faint cells was not flagged ultralow. 0 for explicit cut-offs or
        a faint cut-off taken from a 1+ control. The floor is the controls' null cells';
        a tumour's may read faint more often (a 0 cell's junction with a 1+ cell).
        """
        lows = [c for c in self.controls
                if c[1] == "0" and c[4] is not None and math.isfinite(float(c[4]))]
        if not lows or self.faint_quantile is None:
            return 0.0
        n = sum(int(c[2]) for c in lows)
        q = float(self.faint_quantile)
        if not self.stained_group_percent:
            return gate_noise_floor_percent(n, q)
        n_null = max(1, n - round(n * self.stained_group_percent / 100.0))
        if self.faint_from_gap:
            return round(100.0 / (n_null + 1), 9)
        rank = (n - 1) * q + 1  # the cut-off's rank among all n (numpy's linear quantile)
        return round(100.0 * max(1.0 - rank / (n_null + 1), 1.0 / (n_null + 1)), 9)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of all fields (controls as a list of dicts; ``faint_from_gap``
        only when true, so that a calibration drawn by the quantile still reads in a qdmed
        from before the field)."""
        d = asdict(self)
        if not self.faint_from_gap:
            del d["faint_from_gap"]
        d["controls"] = [
            dict(zip(("name", "category", "n_cells", "median", "faint_quantile_value"), c, strict=True))
            for c in self.controls
        ]
        return to_jsonable(d)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Her2Calibration:
        """Inverse of :meth:`to_dict` (e.g. a calibration saved as JSON)."""
        if isinstance(d, Mapping):  # a misspelt field would be ignored
            check_fields(d, HER2_CALIBRATION_FIELDS, "HER2 calibration")
        try:
            kw = {k: d[k] for k in ("faint", "weak_moderate", "intense")}
        except (KeyError, TypeError):
            raise InputError(
                "a HER2 calibration needs numeric 'faint', 'weak_moderate' and 'intense' cut-offs"
            ) from None
        for k in ("marker", "compartment", "statistic", "rule", "scale", "faint_quantile",
                  "stained_group_percent", "faint_from_gap"):
            if k in d and d[k] is not None:
                kw[k] = d[k]
        try:
            kw["controls"] = tuple(
                (c["name"], c["category"], c["n_cells"], c["median"],
                 c.get("faint_quantile_value"))
                for c in d.get("controls") or ())
        except (KeyError, TypeError, AttributeError):  # a control without its category...
            raise InputError("each of a HER2 calibration's controls needs name, category, "
                             "n_cells and median (and may give faint_quantile_value); got "
                             f"{d.get('controls')!r}"[:300]) from None
        kw["warnings"] = tuple(str(w) for w in d.get("warnings") or ())
        return cls(**kw)


#: The fields of a HER2 calibration's dict (:meth:`Her2Calibration.to_dict`).
HER2_CALIBRATION_FIELDS = frozenset(Her2Calibration.__dataclass_fields__)

#: :func:`calibrate_her2`'s rules for the faint cut-off.
FAINT_RULES = ("quantile", "gap")


def check_faint_rule(rule) -> None:
    """UnknownNameError unless ``rule`` is one of :data:`FAINT_RULES`."""
    if not isinstance(rule, str) or rule not in FAINT_RULES:
        raise UnknownNameError(f"faint_rule must be one of {list(FAINT_RULES)}; got {rule!r}.")


def her2_faint_cutoff(values_by_score: Mapping[int, list[np.ndarray]],
                      faint_quantile: float, rule: str = "quantile") -> float:
    """:func:`calibrate_her2`'s faint cut-off from the cell values of its controls by score
    (0-3): the ``faint_quantile`` quantile of the pooled 0 controls, or ``1 -
    faint_quantile`` of the pooled 1+ controls when no 0 control is given; with ``rule=
    'gap'``, the middle of the gap above the 0 controls' null cells where their top cells
    are a separate stained group (:func:`stained_group_share`)."""
    check_faint_rule(rule)
    return _faint_cutoff(values_by_score, faint_quantile, rule)[0]


def _faint_cutoff(values_by_score: Mapping[int, list[np.ndarray]], faint_quantile: float,
                  rule: str) -> tuple[float, np.ndarray | None, tuple | None, bool]:
    """``(faint cut-off, sorted finite 0-control values or None, their stained group or
    None, whether the cut-off is the gap's middle)`` (:func:`her2_faint_cutoff`; ``rule``
    checked by the caller)."""
    low = min(values_by_score)
    pooled = np.concatenate(values_by_score[low])
    if low != 0:
        return float(np.quantile(pooled, 1 - faint_quantile)), None, None, False
    v0 = _sorted_finite(pooled)
    found = stained_group_share(v0)
    if rule == "gap" and found is not None:
        # geometric middle: the values span decades, the gap is a ratio (>= 2)
        return float(np.sqrt(found[1] * found[2])), v0, found, True
    return float(np.quantile(pooled, faint_quantile)), v0, found, False


#: Least percent of a 1+ (2+, 3+) control's cells that must read at least faint: ASCO/CAP's
#: 1+ is faint staining in more than 10 % of the cells (Wolff et al. 2018); a control at
#: or under it would score 0 with the calibration drawn from it.
MIN_STAINED_PERCENT_OF_POSITIVE = 10.0


#: Least ratio between consecutive values of a 0 control's top 15 % that
#: :func:`stained_group` takes for a gap between null and stained cells.
STAINED_GROUP_GAP = 2.0


def stained_group_share(values) -> tuple[float, float, float] | None:
    """A separate group of stained cells at the top of a 0 control: ``(share, group's
    lowest value, highest value below it)`` or None. The group is what lies above the
    largest ratio (at least :data:`STAINED_GROUP_GAP`) between consecutive positive values
    of the top 15 %, 1-10 % of the cells and at least 3."""
    v = _sorted_finite(values)
    n = v.size
    top = v[int(np.floor(0.85 * n)):]
    if top.size < 2:
        return None
    lo, hi = top[:-1], top[1:]
    ratio = np.where(lo > 0, hi / np.where(lo > 0, lo, 1.0), 0.0)
    k = int(np.argmax(ratio))
    m = top.size - k - 1  # cells in the group
    if ratio[k] < STAINED_GROUP_GAP or m < 3 or not 0.01 <= m / n <= 0.10:
        return None
    return m / n, float(hi[k]), float(lo[k])


def stained_group(values, faint_quantile: float) -> tuple[float, float, float, float] | None:
    """A separate group of stained cells at the top of a 0 control whose share lies within
    3 points of ``1 - faint_quantile``, where the faint cut-off (the control's
    ``faint_quantile`` quantile) falls among or just below them depending on their exact
    share: ``(share, group's lowest value, highest value below it, the cut-off on the other
    side)`` or None (the group: :func:`stained_group_share`). On synthetic MDA-MB-468
    controls (~4 % 1+ cells) the cut-off was 1.4-2.0 below the group and 14-15 among it,
    with the field size."""
    v = _sorted_finite(values)
    return _near_cut(v, stained_group_share(v), faint_quantile)


def _sorted_finite(values) -> np.ndarray:
    v = np.sort(np.asarray(values, dtype=np.float64))
    return v[np.isfinite(v)]


def _near_cut(v, found, faint_quantile: float) -> tuple[float, float, float, float] | None:
    """:func:`stained_group` of the sorted finite values ``v`` whose group is ``found``
    (:func:`stained_group_share`)."""
    if found is None or abs(found[0] - (1.0 - faint_quantile)) > 0.03:
        return None
    share, first, last = found
    m = round(share * v.size)
    cut = float(np.quantile(v, faint_quantile))
    # among the group the cut-off reads its lower part; below it, the rest's quantile
    alt = (float(np.quantile(v[: v.size - m], faint_quantile)) if cut >= first
           else float(np.quantile(v[v.size - m:], 0.25)))
    return share, first, last, alt


def her2_median_anchors(values_by_score: Mapping[int, list[np.ndarray]], faint: float
                        ) -> tuple[list[float], list[float]]:
    """The anchors of :func:`calibrate_her2`: (0.5, faint cut-off), then (s, median of the
    pooled s controls' cells at or above the faint cut-off) for every score s >= 1 present.

    Raises InputError when no more than :data:`MIN_STAINED_PERCENT_OF_POSITIVE` % of a
    score's cells read at least faint."""
    xs, ys = [0.5], [float(faint)]
    for s in sorted(values_by_score):
        if s < 1:
            continue
        v = np.concatenate(values_by_score[s])
        stained = v[v >= faint]
        pct = 100.0 * stained.size / max(v.size, 1)
        if pct <= MIN_STAINED_PERCENT_OF_POSITIVE:
            raise InputError(
                f"controls are not ordered like their scores: {pct:.1f} % of the "
                f"{HER2_CATEGORIES[s]} control's cells read at least faint ({faint:.4g}, "
                f"from the {HER2_CATEGORIES[min(values_by_score)]} control); a "
                f"{HER2_CATEGORIES[s]} line needs more than "
                f"{MIN_STAINED_PERCENT_OF_POSITIVE:g} % (ASCO/CAP), or it would score 0")
        xs.append(float(s))
        ys.append(float(np.median(stained)))
    return xs, ys


def interpolate_anchors(at, xs, ys, *, log: bool) -> np.ndarray:
    """Piecewise-linear interpolation of the anchors at scores ``at``: in log(intensity)
    (``log``) or in intensity."""
    if log:
        return np.exp(np.interp(at, xs, np.log(ys)))
    return np.interp(at, xs, ys)


def calibrate_her2(
    control_cells: Mapping[str, Any],
    *,
    categories: Mapping[str, Any] | None = None,
    marker: str = "HER2",
    compartment: str = "membrane",
    statistic: str = "stained_mean",
    faint_quantile: float = 0.95,
    scale: str = "log",
    min_cells: int = 10,
    faint_rule: str = "quantile",
) -> Her2Calibration:
    """Derive HER2 intensity cut-offs from control cell lines of known IHC score.

    Parameters
    ----------
    control_cells : mapping name -> pandas.DataFrame
        Per-cell tables of control cell pellets/lines, e.g. ``{"MDA-MB-231": df0,
        "BT-474": df3}``.
    categories : mapping name -> {'0', '1+', '2+', '3+'}, optional
        Known IHC score of each control; names missing here are looked up in
        :data:`KNOWN_HER2_CONTROLS`.
    marker, compartment, statistic : str
        Column used (default ``HER2_membrane_stained_mean``: the mean over the stained
        part of the membrane, the intensity a pathologist grades; ``"mean"`` uses the
        whole membrane ring).
    faint_quantile : float in [0.9, 1)
        Quantile defining the faint cut-off (see Notes); at least 0.9, so that a 0 control
        scores 0 with its own calibration (at most 10 % of its cells read as stained).
    faint_rule : {'quantile', 'gap'}
        ``'quantile'``: the ``faint_quantile`` quantile (Notes). ``'gap'``: where the 0
        controls' top cells are a separate stained group, the middle of the gap between
        them and the rest (otherwise the quantile).
    scale : {'log', 'linear'}
        Scale on which cut-offs are interpolated between the anchors (see Notes).
    min_cells : int
        Fewest non-NaN cells a control must have.

    Returns
    -------
    Her2Calibration

    Raises
    ------
    UnknownNameError
        A control with no known category, unknown ``scale``, missing column.
    InputError
        No 0/1+ control or no 3+ control, too few cells, non-positive anchors on the log
        scale, or controls whose intensities are not ordered like their scores.

    Notes
    -----
    The rule (no clinical constant; everything follows from the controls):

    1. faint cut-off: if the lowest-scored control is 0, the ``faint_quantile`` quantile of
       its values (so ``1 - faint_quantile`` of 0-control cells read as stained); if it is
       1+, the ``1 - faint_quantile`` quantile of its values (so ``faint_quantile`` of the
       1+ cells read as at least faint). A 0 or 1+ control is required. A 0 line may hold
       a few faintly stained cells (up to 10 % in a 0 case); where they stand apart at the
       top of the 0 controls (:func:`stained_group_share`: above a gap of 2x or more, 1-10 %
       of the cells), ``faint_rule='gap'`` puts the cut-off at the gap's geometric middle,
       ``sqrt(lowest stained value x highest value below it)``: above the null cells and
       below the stained ones, whatever their share. The quantile falls below or among them
       as their share is under or over ``1 - faint_quantile``: on synthetic MDA-MB-468
       controls (inForm-style component export) 1.4 and 2.0 against 15 with the field's
       size, in the gap 5.3-7.0 at all three sizes. Over 144 synthetic slide categories
       (README) the quantile got 23 wrong, the gap 3. But the gap's cut-off is the higher
       where 1+ cells are dim against the noise (spectral panel at 300 photons per unit:
       22.8 against 11.2): there a triple-negative TMA core with 15 % 1+ cells scored 0
       (HER2-low missed) and per-cell agreement fell (kappa 0.89 -> 0.84), so the
       quantile stays the default.
    2. Anchors on the ordinal score axis: (0.5, faint cut-off) and, for every score
       s >= 1 present, (s, median of the pooled cells of that score that read at least
       faint): a 1+ line's HER2-0 cells (30 % of MCF-7) say nothing of its 1+ intensity, and
       its median over all cells fell on or below a 0 control's 95th percentile (a 0 case
       may hold up to 10 % faint cells), so that the same controls were refused or not with
       the size of their fields. More than 10 % of each such control's cells must read at
       least faint (a 1+ case's definition). A 3+ control is required (no extrapolation).
    3. The weak-to-moderate and intense cut-offs are the class boundaries at scores 1.5
       and 2.5, by piecewise-linear interpolation of the anchors in ``log(intensity)``
       (``scale='log'``, since QD signal spans decades between HER2-low and amplified
       lines) or in intensity.

    Example: 0-control 95th percentile 2, 3+ median 50 (log scale) gives cut-offs 2,
    2 x 25^(1/2.5) = 7.25 and 2 x 25^(2/2.5) = 26.3. Cut-offs must come out strictly
    increasing, otherwise the controls are inconsistent and an error is raised. Category
    definitions follow Wolff et al. 2018; control scores in :data:`KNOWN_HER2_CONTROLS`
    follow Larson et al. 2010 (HERmark, Table 1).

    References
    ----------
    .. [1] Wolff AC et al., J Clin Oncol 36, 2105-2122 (2018). doi:10.1200/JCO.2018.77.8738
    .. [2] Larson JS et al., Patholog Res Int 2010, 814176 (2010). doi:10.4061/2010/814176
    """
    if scale not in ("log", "linear"):
        raise UnknownNameError(f"Unknown scale {scale!r}; accepted: 'log', 'linear'.")
    check_faint_rule(faint_rule)
    q = _finite("faint_quantile", faint_quantile)
    if not 0.9 <= q < 1:
        raise InputError(f"faint_quantile must be in [0.9, 1); got {faint_quantile!r}: below "
                         "0.9 more than 10 % of a 0 control's cells would read as stained, and "
                         "the 0 control itself would score 1+.")
    if not isinstance(control_cells, Mapping) or not control_cells:
        raise InputError("control_cells must be a non-empty mapping name -> per-cell DataFrame.")
    given = {k: _category(v) for k, v in (categories or {}).items()}
    unknown = sorted(set(given) - set(control_cells))
    if unknown:
        raise UnknownNameError(f"categories names controls {unknown} that are not in control_cells {sorted(control_cells)}.")
    known = {_norm_name(k): v for k, v in KNOWN_HER2_CONTROLS.items()}
    pooled: dict[int, list[np.ndarray]] = {}
    info = []
    for name, df in control_cells.items():
        if name in given:
            cat = given[name]
        elif _norm_name(name) in known:
            cat = known[_norm_name(name)]
        else:
            raise UnknownNameError(
                f"No known HER2 category for control {name!r}; pass categories={{{name!r}: '0'|'1+'|'2+'|'3+'}} "
                f"or use one of {sorted(KNOWN_HER2_CONTROLS)}."
            )
        try:
            col = _column(df, marker, compartment, statistic)
        except InputError as exc:  # which control's table lacks it (a review: unnamed)
            raise type(exc)(f"control {name!r}: {exc}") from None
        v = np.asarray(df[col], dtype=np.float64)
        v = v[np.isfinite(v)]
        if v.size < int(min_cells):
            raise InputError(f"control {name!r} has {v.size} measurable cells; need at least {min_cells}.")
        s = HER2_CATEGORIES.index(cat)
        pooled.setdefault(s, []).append(v)
        info.append([name, cat, int(v.size), float(np.median(v)), None])
    scores = sorted(pooled)
    low = scores[0]
    if low > 1:
        raise InputError(f"calibration needs a 0 or 1+ control; got only scores {[HER2_CATEGORIES[s] for s in scores]}.")
    if scores[-1] != 3:
        raise InputError(f"calibration needs a 3+ control; got scores {[HER2_CATEGORIES[s] for s in scores]}.")
    q_used = q if low == 0 else 1 - q
    faint, v0, found, from_gap = _faint_cutoff(pooled, q, faint_rule)
    try:
        xs, ys = her2_median_anchors(pooled, faint)
    except InputError as exc:
        if from_gap:
            raise InputError(
                f"{exc}. The faint cut-off is the middle of the gap above the 0 control's "
                "null cells (faint_rule='gap', --faint-rule gap); faint_rule='quantile' "
                f"(--faint-rule quantile) puts it at their {100 * q:g} % quantile, "
                f"{float(np.quantile(v0, q)):.4g}") from None
        if faint_rule == "gap":  # fell back: say so, or the user thinks the gap was used
            raise InputError(
                f"{exc}. faint_rule='gap' (--faint-rule gap) found no separate stained "
                f"group at the top of the 0 control: the faint cut-off is its "
                f"{100 * q_used:g} % quantile") from None
        raise
    for row in info:
        if HER2_CATEGORIES.index(row[1]) == low:
            row[4] = faint
    if not all(a < b for a, b in zip(ys[:-1], ys[1:], strict=True)):
        raise InputError(
            "controls are not ordered like their scores: anchors score->intensity "
            f"{dict(zip(xs, ys, strict=True))} (faint cut-off at 0.5, control medians at their "
            "scores) must increase with the score."
        )
    if scale == "log" and min(ys) <= 0:
        raise InputError(
            f"scale='log' needs positive anchors (faint cut-off and control medians); got {ys}. "
            "Use scale='linear' or background-subtracted intensities."
        )
    wm, it = interpolate_anchors([1.5, 2.5], xs, ys, log=scale == "log")
    if not faint < wm < it:
        raise InputError(
            "controls are not ordered like their scores: derived cut-offs "
            f"faint={faint:.4g}, weak_moderate={wm:.4g}, intense={it:.4g} are not increasing "
            f"(anchors score->intensity: {dict(zip(xs, ys, strict=True))})."
        )
    source = (f"the middle of the gap between the 0 control's stained group "
              f"({100 * found[0]:.1f} % of its cells, from {found[1]:.4g}) and its other "
              f"cells (up to {found[2]:.4g})" if from_gap
              else f"q{q_used:g} of the {HER2_CATEGORIES[low]} control")
    rule = (
        f"faint = {source}; weak_moderate / intense = "
        f"{scale} interpolation of anchors (0.5, faint), (s, median of the s-controls' cells "
        "at or above faint) at scores 1.5 / 2.5"
    )
    warnings = []
    # the cliff: a quantile cut-off at a stained group's edge (not once it lies in the gap)
    group = None if v0 is None or from_gap else _near_cut(v0, found, q)
    if group is not None:
        share, first, last_below, alt = group
        where = "among them" if faint >= first else "below them"
        other = "below them" if faint >= first else "among them"
        warnings.append(
            f"the 0 control's top cells are a separate, stained group: {100 * share:.1f} % of "
            f"its cells read {first:.4g} or more, the rest at most {last_below:.4g}. The "
            f"faint cut-off (its {100 * q:g} % quantile, {faint:.4g}) lies {where}; with a "
            f"few {'fewer' if faint >= first else 'more'} stained cells it would lie {other} "
            f"(about {alt:.4g}), and faint cells would score differently: the cut-off moves "
            "with the control's composition (on synthetic MDA-MB-468, with the field size). "
            "faint_rule='gap' (--faint-rule gap) puts it in the gap above the null cells, "
            "whatever their share")
    if faint_rule == "gap" and not from_gap:
        warnings.append(
            "faint_rule='gap' (--faint-rule gap): " + (
                "no 0 control" if low != 0 else "the 0 control's top cells are no separate "
                "group (1-10 % of its cells above a gap of 2x or more)")
            + f"; the faint cut-off is the {100 * q_used:g} % quantile")
    if low == 1:
        # a 1+ line holds HER2-0 cells (MCF-7 about 30 %): its low quantile may lie among
        # them, and a review's HER2-0 line (MDA-MB-468) then scored 1+, i.e. HER2-low
        warnings.append(
            f"no 0 control: the faint cut-off ({faint:.4g}) is the {100 * q_used:g} % "
            f"quantile of the 1+ control, which may lie among its HER2-0 cells (a 1+ line "
            "holds some); a HER2-0 tissue may then score 1+ (HER2-low). Give a 0 control "
            "(e.g. MDA-MB-468) as well")
    return Her2Calibration(
        faint=faint,
        weak_moderate=float(wm),
        intense=float(it),
        marker=marker,
        compartment=compartment,
        statistic=statistic,
        rule=rule,
        scale=scale,
        faint_quantile=q,
        controls=tuple(tuple(r) for r in info),
        warnings=tuple(warnings),
        stained_group_percent=None if found is None else round(100.0 * found[0], 9),
        faint_from_gap=from_gap,
    )


def her2_controls_scored(calibration: Her2Calibration,
                         control_cells: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """Each control of a calibration scored with it: name -> ``{"category": its known
    score, "scored": the category :func:`score_her2` gives}``. A control that does not
    score its own category (e.g. a 3+ line whose membranes read incomplete) means the
    cut-offs or the control are not what they should be."""
    out = {}
    for name, cat, *_ in calibration.controls:
        if name not in control_cells:
            raise UnknownNameError(f"the calibration's control {name!r} is not among the "
                                   f"cell tables given ({', '.join(control_cells)})")
        got = score_her2(control_cells[name], calibration, nan_policy="omit")
        out[name] = {"category": cat, "scored": got.category}
    return out


@dataclass(frozen=True)
class Her2Score:
    """Slide-level ASCO/CAP 2018-style HER2 score of a cell population.

    Attributes
    ----------
    category : {'0', '1+', '2+', '3+'}
    result : {'negative', 'equivocal', 'positive'}
    rule : str
        The rule that decided the category.
    her2_low : bool or None
        True for 1+, False for 0 and 3+, None for 2+ (HER2-low only if ISH is not amplified:
        pending the reflex ISH).
    her2_ultralow : bool
        Category 0 with membrane staining in more than the calibration's null noise floor
        (``ultralow_min_percent``) and at most ``percent_cutoff`` % of cells.
    ish_reflex : bool
        Category 2+ (reflex in situ hybridisation required).
    n_cells : int
    percent_intense_complete, percent_weak_moderate_complete,
    percent_moderate_intense_incomplete, percent_faint, percent_stained : float
        Percent of scored cells per staining pattern (stained = at least faint).
    percent_cells_0, percent_cells_1plus, percent_cells_2plus, percent_cells_3plus : float
        Distribution of the per-cell categories.
    mean_membrane_intensity, median_membrane_intensity : float, abundance units
    total_her2_load : float, abundance x um^2
        Sum over cells of compartment mean x compartment area (the "total HER2 load",
        area x intensity, of Chen et al. 2014); NaN if the area column is absent.
    percent_positive_area : float
        Percent of the cell area in cells at least faint; NaN without ``cell_area_um2``.
    calibration : Her2Calibration
    parameters : tuple of (name, value)
    cells : pandas.DataFrame
        Per cell: ``cell_id`` (if present), ``intensity``, ``completeness``,
        ``intensity_class``, ``complete``, ``category``, and ``centroid_x_um``,
        ``centroid_y_um`` where the input has them (for :func:`qdmed.imaging.her2_heterogeneity`).
        Not in :meth:`to_dict` by default.
    """

    category: str
    result: str
    rule: str
    her2_low: bool | None
    her2_ultralow: bool
    ish_reflex: bool
    n_cells: int
    percent_intense_complete: float
    percent_weak_moderate_complete: float
    percent_moderate_intense_incomplete: float
    percent_faint: float
    percent_stained: float
    percent_cells_0: float
    percent_cells_1plus: float
    percent_cells_2plus: float
    percent_cells_3plus: float
    mean_membrane_intensity: float
    median_membrane_intensity: float
    total_her2_load: float
    percent_positive_area: float
    calibration: Her2Calibration
    parameters: tuple
    cells: Any = field(repr=False, compare=False)
    reference: str = REF_WOLFF_2018
    warnings: tuple = ()

    def to_dict(self, *, include_cells: bool = False) -> dict[str, Any]:
        """JSON-safe dict; ``include_cells=True`` adds the per-cell table as lists."""
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in ("cells", "calibration", "parameters")}
        d["calibration"] = self.calibration.to_dict()
        d["parameters"] = dict(self.parameters)
        if include_cells:
            d["cells"] = {c: self.cells[c].tolist() for c in self.cells.columns}
        d["warnings"] = list(self.warnings)
        return to_jsonable(d)

    def plot(self):
        """Each scored cell's membrane intensity against its completeness, coloured by its
        category, with the calibration's cut-offs (the figure of the slide's report)."""
        from qdmed.imaging._report import her2_figure

        return her2_figure(self)

    def report(self) -> str:
        """One-paragraph text summary."""
        flags = [f for f, on in (("HER2-low", self.her2_low is True),
                                 ("HER2-low if ISH not amplified", self.her2_low is None),
                                 ("HER2-ultralow", self.her2_ultralow),
                                 ("reflex ISH", self.ish_reflex)) if on]
        return (
            f"HER2 IHC {self.category} ({self.result}; {self.rule}) over {self.n_cells} cells; "
            f"intense complete {self.percent_intense_complete:.1f} %, weak-moderate complete "
            f"{self.percent_weak_moderate_complete:.1f} %, stained {self.percent_stained:.1f} %"
            + (f"; {', '.join(flags)}" if flags else "")
        )


#: Scored cells below which a HER2 category carries a warning (a qdmed choice, the floor of a
#: region's scores and of an ER/PR status; the guideline sets no number).
HER2_FEW_CELLS = 100

#: Slide category of each branch of :func:`her2_rule_branch` (index into HER2_CATEGORIES),
#: and the branches that flag a 0 as HER2-ultralow.
_BRANCH_CATEGORY = (3, 2, 2, 2, 1, 0, 0, 0, 0)
_BRANCH_ULTRALOW = (5, 6)


def staining_patterns(klass, complete) -> tuple[np.ndarray, ...]:
    """Per-cell masks of the patterns the slide rule counts, in the order
    :func:`her2_rule_branch` takes their percentages: intense complete, weak-to-moderate
    complete, moderate-to-intense incomplete, stained (at least faint). ``klass`` is the
    intensity class 0-3 (none .. intense), ``complete`` the circumferential flag."""
    return ((klass == 3) & complete, (klass == 2) & complete, (klass >= 2) & ~complete,
            klass >= 1)


def her2_rule_branch(p_ic, p_wmc, p_mii, p_stained, percent_cutoff, intense_min_percent,
                     incomplete_percent_cutoff, ultralow_min_percent):
    """Which rule of :func:`score_her2` decides the category, for arrays of percentages.

    The percentages (of scored cells) are intense complete, weak-to-moderate complete,
    moderate-to-intense incomplete and stained (at least faint); the thresholds are those of
    :func:`score_her2`. Returns the index of the first rule that holds (0: 3+; 1-3: 2+;
    4: 1+; 5-6: 0 with the ultralow flag; 7-8: 0 null), elementwise. One definition of the
    rule order for a slide and for its regions (:func:`qdmed.imaging.her2_heterogeneity`).
    """
    p_ic, p_wmc, p_mii, p_stained = (np.asarray(v, dtype=np.float64)
                                     for v in (p_ic, p_wmc, p_mii, p_stained))
    return np.select(
        [p_ic > percent_cutoff, p_ic + p_wmc > percent_cutoff, p_ic > intense_min_percent,
         p_mii > incomplete_percent_cutoff, p_stained > percent_cutoff, p_ic > 0,
         p_stained > ultralow_min_percent, p_stained > 0],
        [0, 1, 2, 3, 4, 5, 6, 7], default=8)


def score_her2(
    cells_df,
    calibration: Her2Calibration,
    *,
    completeness_complete: float = 0.9,
    stained_min_completeness: float = 0.0,
    percent_cutoff: float = 10.0,
    incomplete_percent_cutoff: float = 10.0,
    intense_min_percent: float = 1.0,
    ultralow_min_percent: float | None = None,
    cell_mask=None,
    nan_policy: str = "raise",
) -> Her2Score:
    """ASCO/CAP 2018-style HER2 IHC category from per-cell membrane intensity and completeness.

    Parameters
    ----------
    cells_df : pandas.DataFrame
        Per-cell table with ``{marker}_{compartment}_{statistic}`` and
        ``{marker}_membrane_completeness`` (0-1).
    calibration : Her2Calibration
        Intensity cut-offs (:func:`calibrate_her2` or explicit).
    completeness_complete : float in (0, 1]
        A cell's membrane is complete (circumferential) when its completeness is >= this.
    stained_min_completeness : float in [0, completeness_complete]
        A cell reads at least faint only when this share of its membrane is stained (above
        the completeness threshold it was measured with): visible staining, not a ring
        mean above the faint cut-off. 0 (the default) grades the intensity alone; 0.1
        (``MIN_STAINED_FRACTION`` of measure_cells) suits images whose membrane sectors
        resolve faint staining. NaN completeness counts as 0 (unstained) here. The rule text
        says how many cells it set aside. See Notes.
    percent_cutoff : float, %
        The guideline's "> 10 % of tumour cells".
    incomplete_percent_cutoff : float, %
        Percent of cells with moderate-to-intense incomplete staining above which the
        unusual pattern calls 2+. The guideline gives no number; 10 % by default.
    intense_min_percent : float, %
        Intense complete staining in more than this and at most ``percent_cutoff`` % calls
        2+ (unusual pattern). The guideline's literal rule is "> 0"; an automated per-cell
        reading would then call a whole slide 2+ (and reflex ISH) on one mis-segmented or
        noisy cell in ten thousand, so qdmed requires 1 % by default (a qdmed choice, not a
        guideline number; 0 gives the literal rule). The rule text states the count.
    ultralow_min_percent : float, %, optional
        Stained (at least faint) cells above this percentage flag a 0 as HER2-ultralow.
        Default: the calibration's :attr:`Her2Calibration.null_stained_percent` (~5 % with a
        faint cut-off at the 95th percentile of a 0 control), since up to that share of
        truly null cells reads as faint by construction (fewer where
        ``stained_min_completeness`` sets unstained cells aside, and where the control's
        top 5 % are its own stained cells: an upper bound).
    cell_mask : array_like of bool, optional
        Cells to score (invasive tumour cells); default all.
    nan_policy : {'raise', 'omit'}
        NaN intensity (cells without membrane) raises or is dropped; NaN completeness counts
        as incomplete.

    Returns
    -------
    Her2Score

    Raises
    ------
    InputError
        No cells to score, bad parameters, NaN with ``'raise'``.
    UnknownNameError
        Missing columns or unknown policy.

    Notes
    -----
    Per cell: intensity class from the calibration (none / faint / weak-moderate / intense),
    none where less than ``stained_min_completeness`` of the membrane is stained, and
    complete = completeness >= ``completeness_complete``. The stained share is an opt-in
    reading of the guideline's "perceptible" staining. Without it the faint cut-off (a 0
    control's 95th percentile) decides alone, and it falls, with the control's field size,
    below or among the control's own few 1+ cells (synthetic MDA-MB-468: 1.4-2.0 or 14-15
    on a component-export panel); where it falls low, unstained cells next to faint ones
    and in brighter tissue read faint by their membrane mean. Over 8 synthetic fields (7
    presets) scored from 384^2, 640^2 and 1024^2 controls on three panels (component export
    and spectral at 300 photons per unit, spectral at 1000), 12 of 72 slide categories were
    wrong without it (MDA-MB-468 and her2-ultralow fields read 1+) and none with 0.1; the
    component panel's per-cell kappa rose (0.88-0.91 against 0.87-0.90 on six
    heterogeneous fields). But on the noisy spectral panel (300 photons) the membrane
    threshold (35) lies above a 1+ cell's membrane mean (27): 50-63 % of true 1+ cells
    read 1+ against 77-86 % (the rest mostly 0), and a triple-negative TMA core with 15 %
    faint cells scored 0 instead of 1+ (HER2-low missed). Hence not the default: use it
    where the membrane threshold lies well below the 1+ control's membrane mean.
    Per-cell category: none -> 0;
    faint (complete or not) -> 1+; weak-moderate or intense but incomplete -> 2+ (the
    unusual "moderate to intense but incomplete" pattern; with three intensity classes,
    weak and moderate are not separated, which errs towards equivocal / reflex ISH);
    weak-moderate complete -> 2+; intense complete -> 3+.

    Slide category, first rule that holds (percentages of scored cells; Wolff et al. 2018,
    Fig. 1 and its note on unusual patterns):

    1. intense complete > ``percent_cutoff`` -> 3+;
    2. weak-to-moderate or intense complete > ``percent_cutoff`` -> 2+;
    3. intense complete > ``intense_min_percent`` (so <= 10 %) -> 2+ (unusual pattern);
    4. moderate-to-intense incomplete > ``incomplete_percent_cutoff`` -> 2+ (unusual);
    5. stained (at least faint, incomplete or not) > ``percent_cutoff`` -> 1+;
    6. otherwise 0; HER2-ultralow when ``ultralow_min_percent`` < stained <=
       ``percent_cutoff`` (faint incomplete staining in > 0 and <= 10 %, the
       DESTINY-Breast06 entry criterion, Bardia et al. 2024, read above the calibration's
       noise floor) or when any cell is intense and complete (at most
       ``intense_min_percent`` %: named in the rule text for review), HER2-null otherwise.

    HER2-low = 1+, or 2+ with ISH not amplified (Modi et al. 2022): ``her2_low`` is None for
    2+ until the reflex ISH is known.

    References
    ----------
    .. [1] Wolff AC et al., J Clin Oncol 36, 2105-2122 (2018). doi:10.1200/JCO.2018.77.8738
    .. [2] Modi S et al., "Trastuzumab deruxtecan in previously treated HER2-low advanced
       breast cancer", N Engl J Med 387, 9-20 (2022). doi:10.1056/NEJMoa2203690
    .. [3] Bardia A et al., "Trastuzumab deruxtecan after endocrine therapy in metastatic
       breast cancer", N Engl J Med 391, 2110-2122 (2024). doi:10.1056/NEJMoa2407086
    .. [4] Chen C et al., Int J Nanomedicine 9, 1039-1048 (2014) ("total HER2 load").
       doi:10.2147/IJN.S58270
    """
    import pandas as pd

    if not isinstance(calibration, Her2Calibration):
        raise InputError(f"calibration must be a Her2Calibration; got {type(calibration).__name__}.")
    cc = _finite("completeness_complete", completeness_complete)
    if not 0 < cc <= 1:
        raise InputError(f"completeness_complete must be in (0, 1]; got {completeness_complete!r}.")
    smc = _finite("stained_min_completeness", stained_min_completeness)
    if not 0 <= smc <= cc:
        raise InputError(f"stained_min_completeness must be in [0, completeness_complete={cc:g}]; "
                         f"got {stained_min_completeness!r}.")
    pc = _percent("percent_cutoff", percent_cutoff)
    ipc = _percent("incomplete_percent_cutoff", incomplete_percent_cutoff)
    imp = _percent("intense_min_percent", intense_min_percent)
    ulp = (calibration.null_stained_percent if ultralow_min_percent is None
           else _percent("ultralow_min_percent", ultralow_min_percent))
    if nan_policy not in ("raise", "omit"):
        raise UnknownNameError(f"Unknown nan_policy {nan_policy!r}; accepted: 'raise', 'omit'.")
    m, c, s = calibration.marker, calibration.compartment, calibration.statistic
    icol = _column(cells_df, m, c, s)
    ccol = f"{m}_membrane_completeness"
    if ccol not in cells_df.columns:
        raise UnknownNameError(f"Column {ccol!r} is not in the cell table; run measure_cells with marker {m!r}.")
    df = cells_df
    if cell_mask is not None:
        mask = np.asarray(cell_mask, dtype=bool)
        if mask.shape != (len(df),):
            raise InputError(f"cell_mask must have one boolean per cell ({len(df)}); got shape {mask.shape}.")
        df = df[mask]
    inten = _values(df, icol, "propagate" if nan_policy == "omit" else nan_policy)
    keep = ~np.isnan(inten)  # 'raise' has raised on NaN; 'omit' drops those cells here
    df = df[keep]
    inten = inten[keep]
    n = inten.size
    if n == 0:
        raise InputError("no cells to score (empty table, empty cell_mask, or all NaN).")
    compl = np.asarray(df[ccol], dtype=np.float64)
    complete = np.nan_to_num(compl, nan=0.0) >= cc
    klass = np.searchsorted(np.asarray(calibration.cutoffs), inten, side="right")  # 0..3
    unseen = (klass > 0) & (np.nan_to_num(compl, nan=0.0) < smc)
    klass[unseen] = 0  # no visible staining
    cell_cat = np.select(
        [klass == 0, klass == 1, klass == 2, (klass == 3) & complete, klass == 3],
        [0, 1, 2, 3, 2],
    )

    def pct(x) -> float:
        return float(100.0 * np.count_nonzero(x) / n)

    p_ic, p_wmc, p_mii, p_stained = (pct(m) for m in staining_patterns(klass, complete))
    p_faint = pct(klass == 1)
    p_faint_complete = pct((klass == 1) & complete)  # said in the 1+ rule (a review read
    # "incomplete" of a slide's complete faint staining)
    branch = int(her2_rule_branch(p_ic, p_wmc, p_mii, p_stained, pc, imp, ipc, ulp))
    # cells at or above the faint cut-off left unstained by stained_min_completeness (a
    # review: a slide turned 0 by it read "no membrane staining" and did not say why)
    p_aside = pct(unseen)  # none with the default 0
    cat = HER2_CATEGORIES[_BRANCH_CATEGORY[branch]]
    n_ic = int(np.count_nonzero((klass == 3) & complete))
    rule = (
        f"intense complete membrane staining in {p_ic:.1f} % > {pc:g} % of cells",
        f"weak-to-moderate (or intense) complete staining in {p_ic + p_wmc:.1f} % > {pc:g} %",
        f"unusual pattern: intense complete staining in only {p_ic:.1f} % ({n_ic} cells) "
        f"<= {pc:g} %",
        f"unusual pattern: moderate-to-intense incomplete staining in {p_mii:.1f} % > {ipc:g} %",
        ((f"faint/barely perceptible incomplete staining in {p_stained:.1f} % > {pc:g} %"
          if p_faint_complete < 0.05 else
          f"faint/barely perceptible staining in {p_stained:.1f} % > {pc:g} %, complete in "
          f"{p_faint_complete:.1f} % (faint is 1+ whether complete or not: 2+ needs "
          "weak-to-moderate complete staining)")
         if p_stained - p_faint < 0.05 else
         f"membrane staining in {p_stained:.1f} % > {pc:g} % of cells (faint in {p_faint:.1f} "
         f"%, stronger in {p_stained - p_faint:.1f} %, too few or too incomplete for 2+)"),
        # intense complete cells below the unusual-2+ floor are not null-population noise
        # (the noise floor is about faint readings): never call such a slide HER2-null
        f"membrane staining in {p_stained:.1f} % <= {pc:g} % of cells, including intense "
        f"complete staining in {p_ic:.2f} % ({n_ic} cells), at or below the {imp:g} % floor "
        "of the unusual 2+ pattern: review these cells (ultralow)",
        f"membrane staining (at least faint) in {p_stained:.1f} % <= {pc:g} % of cells, above "
        f"the {ulp:.3g} % null noise floor (ultralow)"
        + ("" if p_stained - p_faint < 0.05 else
           f"; stronger than faint in {p_stained - p_faint:.1f} %, a pattern the guideline "
           "does not name: review"),
        f"membrane staining in {p_stained:.1f} %, within the {ulp:.3g} % of null cells expected "
        "above the faint cut-off (null)",
        "no membrane staining (null)",
    )[branch]
    if p_aside > 0:
        rule += (f"; {p_aside:.1f} % of cells at or above the faint cut-off count as unstained: "
                 f"under {100 * smc:g} % of their membrane stained (stained_min_completeness)")
    result = {"0": "negative", "1+": "negative", "2+": "equivocal", "3+": "positive"}[cat]

    area_col = f"{c}_area_um2"
    mean_col = f"{m}_{c}_mean"  # the load is intensity x area whatever statistic grades it
    load = (float(np.nansum(np.asarray(df[mean_col], dtype=np.float64)
                            * np.asarray(df[area_col], dtype=np.float64)))
            if (mean_col in df.columns and area_col in df.columns) else math.nan)
    if "cell_area_um2" in df.columns:
        ca = np.asarray(df["cell_area_um2"], dtype=np.float64)
        tot = ca.sum()
        ppa = float(100.0 * ca[klass >= 1].sum() / tot) if tot > 0 else math.nan
    else:
        ppa = math.nan
    cells = pd.DataFrame(
        {
            "intensity": inten,
            "completeness": compl,
            "intensity_class": np.asarray(_INTENSITY_CLASSES, dtype=object)[klass],
            "complete": complete,
            "category": np.asarray(HER2_CATEGORIES, dtype=object)[cell_cat],
        },
        index=df.index,
    )
    if "cell_id" in df.columns:
        cells.insert(0, "cell_id", np.asarray(df["cell_id"]))
    for col in ("centroid_x_um", "centroid_y_um"):  # where the cells are: regional scores
        if col in df.columns:
            cells[col] = np.asarray(df[col], dtype=np.float64)
    cat_pct = [pct(cell_cat == k) for k in range(4)]
    warnings = () if n >= HER2_FEW_CELLS else (
        f"scored on {n} cells only: a category from so few cells is unreliable (qdmed asks "
        f"{HER2_FEW_CELLS}, as for a region or an ER/PR status)",)
    return Her2Score(
        category=cat,
        result=result,
        rule=rule,
        her2_low=None if cat == "2+" else cat == "1+",
        her2_ultralow=branch in _BRANCH_ULTRALOW,
        ish_reflex=cat == "2+",
        n_cells=int(n),
        percent_intense_complete=p_ic,
        percent_weak_moderate_complete=p_wmc,
        percent_moderate_intense_incomplete=p_mii,
        percent_faint=p_faint,
        percent_stained=p_stained,
        percent_cells_0=cat_pct[0],
        percent_cells_1plus=cat_pct[1],
        percent_cells_2plus=cat_pct[2],
        percent_cells_3plus=cat_pct[3],
        mean_membrane_intensity=float(np.mean(inten)),
        median_membrane_intensity=float(np.median(inten)),
        total_her2_load=load,
        percent_positive_area=ppa,
        calibration=calibration,
        warnings=warnings,
        parameters=(
            ("completeness_complete", cc),
            ("stained_min_completeness", smc),
            ("percent_cutoff", pc),
            ("incomplete_percent_cutoff", ipc),
            ("intense_min_percent", imp),
            ("ultralow_min_percent", ulp),
        ),
        cells=cells,
    )


# --------------------------------------------------------------------------- agreement
def cohen_kappa(a, b, *, weights: str | None = None, labels: Sequence | None = None) -> float:
    """Cohen's kappa between two raters, optionally linearly or quadratically weighted.

    Parameters
    ----------
    a, b : array_like, same length
        Category labels per item (e.g. per-cell HER2 categories).
    weights : {None, 'linear', 'quadratic'}
        Disagreement weights ``|i-j|/(k-1)`` or ``((i-j)/(k-1))^2`` over the ordered
        categories; None is unweighted kappa.
    labels : sequence, optional
        The ordered categories of the scale. Default: the HER2 scale ``0, 1+, 2+, 3+``
        when every label is one of its categories, else the sorted union of the observed
        labels (as scikit-learn's ``cohen_kappa_score``). Weighted kappa depends on it: a
        1+/3+ disagreement weighs two steps on the HER2 scale, but one if nobody used 2+
        and the scale were taken from the observed labels; give ``labels`` for any other
        ordinal scale with categories that may go unused.

    Returns
    -------
    float
        ``1 - sum(w * O) / sum(w * E)`` with O the observed and E the chance-expected
        (outer product of the marginals) proportion tables; NaN when chance disagreement
        is 0 (e.g. both raters used one category).

    Raises
    ------
    InputError
        Different lengths, empty input, labels outside ``labels``.
    UnknownNameError
        Unknown ``weights``.

    References
    ----------
    .. [1] Cohen J, "A coefficient of agreement for nominal scales", Educ Psychol Meas 20,
       37-46 (1960). doi:10.1177/001316446002000104
    .. [2] Cohen J, "Weighted kappa: nominal scale agreement with provision for scaled
       disagreement or partial credit", Psychol Bull 70, 213-220 (1968). doi:10.1037/h0026256

    Examples
    --------
    >>> a = ["y"] * 25 + ["n"] * 25
    >>> b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    >>> round(cohen_kappa(a, b), 6)
    0.4
    """
    if weights not in (None, "linear", "quadratic"):
        raise UnknownNameError(f"Unknown weights {weights!r}; accepted: None, 'linear', 'quadratic'.")
    a = np.asarray(a)
    b = np.asarray(b)
    if a.ndim != 1 or a.shape != b.shape:
        raise InputError(f"a and b must be 1-D with the same length; got shapes {a.shape} and {b.shape}.")
    if a.size == 0:
        raise InputError("a and b are empty; kappa needs at least one item.")
    if labels is None:
        cats = np.unique(np.concatenate([a, b]))
        if set(cats.tolist()) <= set(HER2_CATEGORIES):
            cats = np.asarray(HER2_CATEGORIES)
    else:
        cats = np.asarray(list(labels))
        if np.unique(cats).size != cats.size:
            raise InputError(f"labels must be unique; got {list(labels)}.")
    k = cats.size
    lut = {v: i for i, v in enumerate(cats.tolist())}
    try:
        ia = np.fromiter((lut[v] for v in a.tolist()), dtype=np.int64, count=a.size)
        ib = np.fromiter((lut[v] for v in b.tolist()), dtype=np.int64, count=b.size)
    except KeyError as exc:
        raise InputError(f"label {exc.args[0]!r} is not in labels {cats.tolist()}.") from None
    obs = np.bincount(ia * k + ib, minlength=k * k).reshape(k, k) / a.size
    exp = np.outer(obs.sum(axis=1), obs.sum(axis=0))
    i, j = np.indices((k, k))
    if weights is None:
        w = (i != j).astype(np.float64)
    else:
        d = np.abs(i - j) / max(k - 1, 1)
        w = d if weights == "linear" else d**2
    den = float((w * exp).sum())
    if den == 0:
        return math.nan
    return float(1.0 - (w * obs).sum() / den)


@dataclass(frozen=True)
class SegmentationMatch:
    """Object-level agreement of two label images at an IoU threshold.

    Attributes
    ----------
    precision, recall, f1 : float
        ``tp/n_pred``, ``tp/n_true``, ``2 tp/(n_pred + n_true)``; NaN when undefined.
    n_pred, n_true, n_matched : int
    iou_threshold : float
    mean_matched_iou : float
        Mean IoU of matched pairs (NaN if none).
    """

    precision: float
    recall: float
    f1: float
    n_pred: int
    n_true: int
    n_matched: int
    iou_threshold: float
    mean_matched_iou: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of all fields."""
        return to_jsonable(asdict(self))


def f1_at_iou(pred_labels, true_labels, *, iou: float = 0.5) -> SegmentationMatch:
    """Precision, recall and F1 of instance segmentation, matching objects by IoU.

    Parameters
    ----------
    pred_labels, true_labels : (Y, X) array_like of int
        Predicted and ground-truth label images (0 = background).
    iou : float in [0, 1)
        A predicted and a true object match when their IoU exceeds this (strictly).

    Returns
    -------
    SegmentationMatch

    Raises
    ------
    InputError
        Shapes differ, labels invalid, threshold outside [0, 1).

    Notes
    -----
    Intersections come from the label contingency table (``np.unique`` of paired ids over
    pixels where both are foreground), so only overlapping pairs are visited. For
    ``iou >= 0.5`` each object has at most one partner with IoU > 0.5, so matching is
    unique; below 0.5, conflicts are resolved by a maximum-cardinality, then maximum-IoU
    assignment (``scipy.optimize.linear_sum_assignment``) restricted to conflicting objects.
    F1 at IoU 0.5 as in Caicedo et al. 2019.

    References
    ----------
    .. [1] Caicedo JC et al., "Evaluation of deep learning strategies for nucleus
       segmentation in fluorescence images", Cytometry A 95, 952-965 (2019).
       doi:10.1002/cyto.a.23863
    """
    from qdmed.imaging._cells import _dense_index, _labels2d

    p = _labels2d("pred_labels", pred_labels)
    t = _labels2d("true_labels", true_labels)
    if p.shape != t.shape:
        raise InputError(f"pred_labels and true_labels must have the same shape; got {p.shape} and {t.shape}.")
    thr = _finite("iou", iou)
    if not 0 <= thr < 1:
        raise InputError(f"iou must be in [0, 1); got {iou!r}.")
    _, pi = _dense_index(p)
    _, ti = _dense_index(t)
    n_pred = int(pi.max()) if pi.size else 0
    n_true = int(ti.max()) if ti.size else 0
    area_p = np.bincount(pi.ravel(), minlength=n_pred + 1)
    area_t = np.bincount(ti.ravel(), minlength=n_true + 1)
    both = (pi > 0) & (ti > 0)
    code = pi[both].astype(np.int64) * (n_true + 1) + ti[both]
    pairs, inter = np.unique(code, return_counts=True)
    pp, tt = np.divmod(pairs, n_true + 1)
    ious = inter / (area_p[pp] + area_t[tt] - inter)
    cand = ious > thr
    pp, tt, ious = pp[cand], tt[cand], ious[cand]
    if pp.size and (np.unique(pp).size < pp.size or np.unique(tt).size < tt.size):
        from scipy.optimize import linear_sum_assignment

        up, rp = np.unique(pp, return_inverse=True)
        ut, rt = np.unique(tt, return_inverse=True)
        w = np.zeros((up.size, ut.size))
        w[rp, rt] = (pp.size + 1) + ious
        r, c = linear_sum_assignment(w, maximize=True)
        ok = w[r, c] > 0
        matched_iou = w[r[ok], c[ok]] - (pp.size + 1)
    else:
        matched_iou = ious
    tp = int(matched_iou.size)
    nan = math.nan
    return SegmentationMatch(
        precision=tp / n_pred if n_pred else nan,
        recall=tp / n_true if n_true else nan,
        f1=2 * tp / (n_pred + n_true) if (n_pred + n_true) else nan,
        n_pred=n_pred,
        n_true=n_true,
        n_matched=tp,
        iou_threshold=thr,
        mean_matched_iou=float(matched_iou.mean()) if tp else nan,
    )


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
