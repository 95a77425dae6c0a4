"""HER2 intensity cut-offs calibrated on control cell lines of known IHC score.

:func:`calibrate_her2` turns the per-cell tables of control pellets (e.g. MDA-MB-468 0,
MCF-7 1+, BT-474 3+) into the faint, weak-to-moderate and intense membrane-intensity
cut-offs of a :class:`Her2Calibration`, which :func:`qdmed.imaging.score_her2` applies.
No clinical intensity constant is shipped for QD signal (imaging reference, sections
2.1-2.2): every cut-off follows from the controls.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from qdmed.errors import InputError, UnknownNameError, check_fields, check_number
from qdmed.imaging._scoring import (
    HER2_CATEGORIES,
    KNOWN_HER2_CONTROLS,
    _category,
    _check_column_parts,
    _column,
    _finite,
    _norm_name,
    gate_noise_floor_percent,
)
from qdmed.report._json import to_jsonable

__all__ = [
    "FAINT_RULES",
    "Her2Calibration",
    "calibrate_her2",
    "check_faint_rule",
    "her2_faint_cutoff",
    "her2_median_anchors",
    "interpolate_anchors",
    "stained_group",
    "stained_group_share",
]


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
