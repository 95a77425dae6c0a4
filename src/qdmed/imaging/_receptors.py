"""Oestrogen and progesterone receptor status by the ASCO/CAP 2020 percentage rules, from
gated per-cell nuclear positivity.

ASCO/CAP (Allison et al. 2020): a breast cancer with 1-100 % of tumour nuclei positive is ER
positive, reported as **ER Low Positive** when 1-10 %; below 1 % it is ER negative. The same
1 % principle applies to PgR, with no low-positive category. The rule counts cells; intensity
does not enter it.

Two things an automated count adds, both reported:

- **The gate's noise floor.** A gate at the ``q`` quantile of a negative control calls about
  ``100 (1 - q)`` % of truly negative cells positive by construction (1 % at the default
  99th percentile: exactly the guideline's cut-off), more when the control is small
  (:func:`qdmed.imaging.gate_noise_floor_percent`: 1.22 % from 450 cells, 1.97 % from
  100). The observed percentage is therefore
  corrected with the Rogan-Gladen estimator for a test of known specificity, assuming every
  truly positive nucleus passes the gate (sensitivity 1):
  ``p = (p_obs - f) / (1 - f)``, clipped to [0, 1], with ``f`` the gate's false-positive
  fraction (:attr:`MarkerGate.false_positive_percent`). The status is read from ``p``. The
  correction holds when the tumour's negative cells resemble the control's (same
  co-expression, see :func:`gates_from_negative_controls`); a gate of unknown origin is not
  corrected, and the result says so.
- **Counting uncertainty.** The Wilson score interval (95 %) of the observed proportion,
  corrected the same way. The noise floor is itself estimated, from the control's cells
  (from 450 cells at the 99th percentile its standard deviation is ~0.5 %, half the
  cut-off): where the gate records its control's size, the interval's lower bound is
  corrected with the upper bound of the floor's own 95 % interval and the upper bound with
  its lower one (conservative). That interval is exact and distribution-free: the share of
  a population above an order statistic of n cells is Beta distributed (Wilks 1941).
  A status whose interval reaches a cut-off is flagged ``borderline``. Fewer positive
  nuclei than the floor predicts (one-sided beta-binomial p < 0.025: the count of a tissue
  of the control's negatives) is warned: the tissue's negatives are quieter than the
  control's, and the correction's assumption fails.

The guideline asks for the status of controls to be reported for cases with 0-10 %
staining: qdmed reports which gate (and its control-derived noise floor) was used; the
positive control is the laboratory's to report.

References
----------
.. [1] K. H. Allison, M. E. H. Hammond, M. Dowsett, et al. (2020). Estrogen and progesterone
   receptor testing in breast cancer: ASCO/CAP guideline update. J. Clin. Oncol. 38(12),
   1346-1366. doi:10.1200/JCO.19.02309
.. [2] W. J. Rogan, B. Gladen (1978). Estimating prevalence from the results of a screening
   test. Am. J. Epidemiol. 107(1), 71-76. doi:10.1093/oxfordjournals.aje.a112510
.. [3] E. B. Wilson (1927). Probable inference, the law of succession, and statistical
   inference. J. Am. Stat. Assoc. 22(158), 209-212. doi:10.1080/01621459.1927.10502953
.. [4] S. S. Wilks (1941). Determination of sample sizes for setting tolerance limits.
   Ann. Math. Stat. 12(1), 91-96. doi:10.1214/aoms/1177731788
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from qdmed.errors import InputError
from qdmed.imaging._scoring import MarkerGate, _column, _gate
from qdmed.report._json import to_jsonable

__all__ = ["ReceptorStatus", "receptor_status"]

REF_ALLISON_2020 = (
    "Allison KH, Hammond MEH, Dowsett M, et al. Estrogen and progesterone receptor testing in "
    "breast cancer: ASCO/CAP guideline update. J Clin Oncol 2020;38(12):1346-1366. "
    "doi:10.1200/JCO.19.02309"
)
REF_ROGAN_GLADEN_1978 = (
    "Rogan WJ, Gladen B. Estimating prevalence from the results of a screening test. "
    "Am J Epidemiol 1978;107(1):71-76. doi:10.1093/oxfordjournals.aje.a112510"
)
REF_WILSON_1927 = (
    "Wilson EB. Probable inference, the law of succession, and statistical inference. "
    "J Am Stat Assoc 1927;22(158):209-212. doi:10.1080/01621459.1927.10502953"
)

#: Receptors with an ASCO/CAP 2020 percentage rule: marker -> (cut-offs in %, statuses).
#: ER: < 1 negative, 1-10 low positive, > 10 positive; PgR: < 1 negative, >= 1 positive.
#: Nuclei needed for a status (a qdmed choice; the guideline sets no number).
MIN_CELLS = 100

_RULES = {
    "ER": ((1.0, 10.0), ("negative", "low positive", "positive")),
    "PR": ((1.0,), ("negative", "positive")),
}
#: Each rule in words, as results report it.
RULE_WORDS = {
    "ER": "< 1 % negative, 1-10 % low positive, > 10 % positive",
    "PR": "< 1 % negative, >= 1 % positive",
}


@dataclass(frozen=True)
class ReceptorStatus:
    """ASCO/CAP 2020 status of one hormone receptor on a slide.

    Attributes
    ----------
    marker : {'ER', 'PR'}
    status : str
        'negative', 'low positive' (ER only), 'positive', or 'insufficient cells'.
    borderline : bool
        The 95 % interval of the corrected percentage reaches a cut-off.
    n_cells, n_positive : int
        Cells with a nuclear value, and those at or above the gate.
    percent_positive : float, %
        Observed.
    gate_false_positive_percent : float or None, %
        The gate's noise floor: the expected percent of truly negative cells at or above it
        (:func:`qdmed.imaging.gate_noise_floor_percent` of its control); None when the
        gate's origin is unknown (no correction).
    percent_positive_corrected : float, %
        Rogan-Gladen corrected (sensitivity 1); equal to the observed one without a known
        noise floor.
    ci95_percent : (float, float), %
        Wilson 95 % interval of the observed proportion, corrected the same way (widened
        by the noise floor's own interval where the gate's control size is known). Where
        fewer nuclei pass the gate than its noise floor predicts (the tissue's negatives
        quieter than the control's: warned), the true share lies between the corrected and
        the observed one, and the interval reaches up to the observed share's.
    rule : str
        The guideline rule that decided, with the numbers.
    warnings : tuple of str
        E.g. fewer positives than the gate's noise floor predicts (the correction's
        assumption fails).
    notes : tuple of str
        The same warnings in a few words, for a table's message column (regions.csv,
        cohort.csv), where the full text repeated on most rows hid the others.
    """

    marker: str
    status: str
    borderline: bool
    n_cells: int
    n_positive: int
    percent_positive: float
    gate_false_positive_percent: float | None
    percent_positive_corrected: float
    ci95_percent: tuple
    rule: str
    warnings: tuple = ()
    notes: tuple = ()
    reference: str = f"{REF_ALLISON_2020}; {REF_ROGAN_GLADEN_1978}; {REF_WILSON_1927}"

    @property
    def label(self) -> str:
        """The status as reported: e.g. ``'low positive (borderline)'``."""
        return self.status + (" (borderline)" if self.borderline else "")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of the fields, plus ``label``."""
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["label"] = self.label
        return to_jsonable(d)


def rule_class(cuts, percent: float) -> int:
    """Index of the ASCO/CAP 2020 class of ``percent`` for a rule's cut-offs (``_RULES``).

    "1 % to 100 % ... positive", "1 % to 10 % ... low positive": a cut-off belongs to the
    higher class, except 10 %, the top of ER low positive."""
    return int(sum(percent >= c if c == 1.0 else percent > c for c in cuts))


def _wilson95(k: int, n: int):
    """Wilson score 95 % interval of k successes in n (``.low``, ``.high``; scipy)."""
    from scipy.stats import binomtest

    return binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")


def _floor_beta(f: float, n_control: int) -> tuple[float, float]:
    """Beta(a, b) of a gate's noise floor ``f`` (a fraction, > 0) estimated on ``n_control``
    cells: Beta(f (n + 1), (1 - f) (n + 1)), the distribution of the share of a population
    above an order statistic (Wilks 1941; its mean is ``f``, see
    :func:`qdmed.imaging.gate_noise_floor_percent`)."""
    return f * (n_control + 1), (1.0 - f) * (n_control + 1)


def _floor95(f: float, n_control: int) -> tuple[float, float]:
    """95 % interval of a gate's noise floor ``f`` (a fraction) estimated on ``n_control``
    cells: the 2.5 and 97.5 % points of its :func:`_floor_beta`."""
    from scipy.stats import beta

    if f <= 0:  # no cell above the gate expected: the floor is 0, exactly
        return 0.0, 0.0
    lo, hi = beta.ppf([0.025, 0.975], *_floor_beta(f, n_control))
    return float(lo), min(float(hi), 1.0 - 1e-12)


def _last_quieter(k: int, n: int, f: float, n_control: int | None) -> int | None:
    """The largest count under ``k`` of ``n`` that :func:`_fewer_than_floor_p` calls
    quieter than the floor (p < 0.025), or None for none (its p rises with the count:
    bisection)."""
    if _fewer_than_floor_p(0, n, f, n_control) >= 0.025:
        return None
    lo, hi = 0, k  # quieter at lo; not at hi (the caller's k)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _fewer_than_floor_p(mid, n, f, n_control) < 0.025:
            lo = mid
        else:
            hi = mid
    return lo


def _fewer_than_floor_p(k: int, n: int, f: float, n_control: int | None) -> float:
    """One-sided p-value of ``k`` or fewer of ``n`` nuclei passing a gate whose noise floor
    is ``f`` if every nucleus were a negative like the control's: the share of such cells
    above the gate is Beta (:func:`_floor_beta`), so the count is beta-binomial, exactly; binomial with a floor of unknown control size. Positive nuclei
    only raise the count, so a small p says the tissue's negatives are quieter than the
    control's. (It replaces comparing two 95 % intervals, which missed 0 of 1000 against a
    1 % floor from 450 cells: a review.)"""
    from scipy.stats import betabinom, binom

    if f <= 0:
        return 1.0
    if n_control:
        return float(betabinom.cdf(k, n, *_floor_beta(f, n_control)))
    return float(binom.cdf(k, n, f))


def _corrected(p: float, f: float | None) -> float:
    if f is None:
        return p
    return float(np.clip((p - f) / (1.0 - f), 0.0, 1.0))


def receptor_status(cells_df, gates: Mapping[str, Any], *, markers=("ER", "PR"),
                    min_cells: int = MIN_CELLS) -> dict[str, ReceptorStatus]:
    """ER and PgR status by the ASCO/CAP 2020 percentage rules (see the module notes).

    Parameters
    ----------
    cells_df : pandas.DataFrame
        Per-cell table of the scored (tumour) cells.
    gates : mapping marker -> MarkerGate
        Positivity gates; markers without a gate are skipped.
    markers : sequence of {'ER', 'PR'}
    min_cells : int
        Nuclei needed for a status (default 100, a qdmed choice: the guideline sets no
        number); below it the status is ``'insufficient cells'``.

    Returns
    -------
    dict marker -> ReceptorStatus
        Empty when no marker of ``markers`` is gated or no cell has a value.

    Raises
    ------
    InputError
        A marker without an ASCO/CAP percentage rule.

    Examples
    --------
    >>> import pandas as pd
    >>> from qdmed.imaging import MarkerGate
    >>> cells = pd.DataFrame({"ER_nucleus_mean": [5.0] * 6 + [0.0] * 94})  # 6 of 100
    >>> st = receptor_status(cells, {"ER": MarkerGate("nucleus", 1.0)})["ER"]
    >>> st.status, st.percent_positive, st.borderline
    ('low positive', 6.0, True)
    """
    if isinstance(min_cells, bool) or not isinstance(min_cells, int | np.integer) or min_cells < 1:
        raise InputError(f"min_cells must be an integer >= 1; got {min_cells!r}.")
    if isinstance(markers, str):  # one marker by its name, not its letters
        markers = (markers,)
    out: dict[str, ReceptorStatus] = {}
    for m in markers:
        if m not in _RULES:
            raise InputError(f"no ASCO/CAP percentage rule for marker {m!r}; accepted: "
                             f"{', '.join(_RULES)}.")
        if m not in gates:
            continue
        g: MarkerGate = _gate(m, gates[m])
        v = np.asarray(cells_df[_column(cells_df, m, g.compartment, g.statistic)],
                       dtype=np.float64)
        v = v[~np.isnan(v)]
        n = int(v.size)
        if n == 0:
            continue
        k = int(np.count_nonzero(v >= g.threshold))
        f = None if g.false_positive_percent is None else g.false_positive_percent / 100.0
        ci = _wilson95(k, n)
        p = _corrected(k / n, f)
        f_lo = f_hi = f
        if f is not None and g.control_cells:
            f_lo, f_hi = _floor95(f, int(g.control_cells))
        lo, hi = _corrected(float(ci.low), f_hi), _corrected(float(ci.high), f_lo)
        cuts, names = _RULES[m]
        p_low = None if f is None else _fewer_than_floor_p(k, n, f, g.control_cells)
        quieter = p_low is not None and p_low < 0.025
        if f is not None:
            # where the tissue's false positives are fewer than the control's (quieter),
            # the true share lies between the corrected one (all the floor false) and the
            # observed one (none false), so the interval reaches the observed share's upper
            # bound (it collapsed to "0.00-0.00 %" on 0 of 792 nuclei: a review). The
            # estimate stays the corrected one, so a status never falls as more nuclei pass;
            # and past the last count that is quieter the bound stays at least that count's,
            # so that it never falls as one more nucleus passes (a review: 36 of 1000 under
            # a 5 % floor gave 0-4.94 %, 37 gave 0-0.06 %)
            last = k if quieter else _last_quieter(k, n, f, g.control_cells)
            if last is not None:
                hi = max(hi, float(_wilson95(last, n).high))
        # percentages to 1e-9 %: the cut-offs are decimal, the arithmetic binary
        pc, lo, hi = round(100.0 * p, 9), round(100.0 * lo, 9), round(100.0 * hi, 9)
        warnings, notes = [], []
        if quieter:
            # said as what it is: the tissue quieter than the gate's control (a new user
            # read "gate too high here?" on a truly negative slide as an error)
            notes.append(f"fewer nuclei pass the gate ({100.0 * k / n:.2f} %) than its noise "
                         f"floor ({100 * f:.3g} %): this tissue is quieter than the gate's "
                         "control: the corrected share is a lower bound, its interval "
                         "reaching the observed share's (summary.json)")
            warnings.append(
                f"fewer nuclei pass the gate ({k} of {n}, {100.0 * k / n:.2f} %) than its "
                f"noise floor predicts for negative cells ({100 * f:.3g} %; one-sided p = "
                f"{p_low:.2g}): the tumour's negative cells are quieter than the control's, "
                "so the correction's assumption does not hold: its interval reaches up to the "
                "observed share's (the gate may be too high for this tissue)")
        if n < min_cells:
            status, borderline = "insufficient cells", False
            rule = f"{n} nuclei with a value, fewer than the {min_cells} needed for a status"
        else:
            status = names[rule_class(cuts, pc)]
            borderline = any(lo <= c <= hi for c in cuts)
            floor = ("" if f is None else
                     f", corrected for the gate's {100 * f:.3g} % noise floor"
                     + (f" ({100 * f_lo:.2f}-{100 * f_hi:.2f} % from {g.control_cells} "
                        "control cells)" if g.control_cells else "")
                     + f" from {100.0 * k / n:.2f} % observed")
            # the interval beside the share it bounds (after "observed" it read as the
            # observed share's: a walk-through)
            rule = (f"{pc:.2f} % (95 % CI {lo:.2f}-{hi:.2f} %) of {n} nuclei positive"
                    f"{floor}: {status} (ASCO/CAP 2020: {RULE_WORDS[m]})"
                    + ("; the gate's noise floor is unknown: not corrected" if f is None
                       else ""))
        out[m] = ReceptorStatus(marker=m, status=status, borderline=bool(borderline),
                                n_cells=n, n_positive=k, percent_positive=100.0 * k / n,
                                gate_false_positive_percent=None if f is None else 100.0 * f,
                                percent_positive_corrected=pc,
                                ci95_percent=(lo, hi), rule=rule, warnings=tuple(warnings),
                                notes=tuple(notes))
    return out

