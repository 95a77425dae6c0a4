"""Agreement of two measurements of one continuous quantity on the same cases: ER or PgR
percent positive nuclei from qdmed against a pathologist's estimate, a Ki-67 index, an
H-score from QD-IHC against DAB IHC.

Correlation is no measure of agreement (Bland & Altman 1986): two methods can correlate
perfectly and differ by 20 points. Method-comparison studies therefore report

- **the bias and the 95 % limits of agreement** (Bland & Altman, Lancet 1986): the mean of
  the differences ``d = a - b`` and ``mean(d) +- 1.96 SD(d)``, the range holding 95 % of
  one case's differences, with confidence intervals (t on n - 1 degrees of freedom; for the
  limits the standard error ``SD(d) sqrt(1/n + 1.96^2 / (2 (n - 1)))`` of Bland & Altman,
  Stat Methods Med Res 1999, section 2.2, of which the 1986 paper's ``sqrt(3 SD^2 / n)``
  is the large-n form with 2 for 1.96);
- **a trend of the differences with the level** (Bland & Altman 1999, section 3): the
  least-squares slope of ``d`` on the pair's mean. Where it differs from 0 the limits are
  not the same across the range (a method reading high cases higher), and a single pair of
  limits misleads;
- **Lin's concordance correlation coefficient** (Lin, Biometrics 1989; 2000 correction):
  ``rho_c = 2 s_ab / (s_a^2 + s_b^2 + (mean_a - mean_b)^2)`` with variances over n, the
  product of Pearson's r (precision) and the bias correction factor ``C_b`` (accuracy: 1 on
  the line of equality). Its 95 % interval is from Fisher's z transform with Lin's
  asymptotic variance;
- **agreement on the status** a cut-off gives, where one decides treatment (ER: < 1 %
  negative, 1-10 % low positive, > 10 % positive, ASCO/CAP 2020): the cross-table, percent
  agreement (Wilson interval) and Cohen's kappa.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from qdmed.errors import InputError
from qdmed.imaging._agreement import is_missing, joined_tables, paired_cases
from qdmed.report import to_jsonable

__all__ = ["MeasureAgreement", "StatusAgreement", "compare_measure", "compare_measure_tables"]

REF_BLAND_ALTMAN_1986 = (
    "Bland JM, Altman DG (1986). Statistical methods for assessing agreement between two "
    "methods of clinical measurement. Lancet 327(8476):307-310. "
    "doi:10.1016/S0140-6736(86)90837-8")
REF_BLAND_ALTMAN_1999 = (
    "Bland JM, Altman DG (1999). Measuring agreement in method comparison studies. Stat "
    "Methods Med Res 8(2):135-160. doi:10.1177/096228029900800204")
REF_LIN_1989 = (
    "Lin LI (1989). A concordance correlation coefficient to evaluate reproducibility. "
    "Biometrics 45(1):255-268. doi:10.2307/2532051; correction: Biometrics 56(1):324-325 "
    "(2000)")

#: Fewer cases than this are warned: the intervals are wide.
FEW_CASES = 20
#: z of the 95 % limits of agreement (Bland & Altman 1999).
LOA_Z = 1.96
#: One method's values all at most 1 and the other's this many times larger: fractions
#: compared with percentages (a factor 100) is warned; a low-ER cohort (0.8 against 3) not.
FRACTION_RATIO = 20.0


@dataclass(frozen=True)
class StatusAgreement:
    """Agreement of two measurements on the status their values give at cut-offs.

    Attributes
    ----------
    rule : str
        The cut-offs and where a value on one goes, in words.
    cutoffs : tuple of float
    labels : tuple of str
        The statuses, lowest first.
    table : tuple of tuples of int
        ``table[i][j]`` = cases of status ``labels[i]`` by method a and ``labels[j]`` by b.
    percent_agreement : float, %
    percent_agreement_ci95 : (float, float), %
        Wilson score interval.
    kappa : float
        Cohen's kappa (NaN when undefined: one status for every case by both methods).
    kappa_linear : float
        Linearly weighted over the ordered statuses (equal to ``kappa`` for two statuses).
    a, b : tuple of str
        Status per case.
    kappa_ci95, kappa_linear_ci95 : (float, float)
        Percentile bootstrap 95 % intervals (cases resampled, fixed seed), as
        :func:`~qdmed.imaging.compare_her2` gives its own; NaN where not estimable.
    """

    rule: str
    cutoffs: tuple
    labels: tuple
    table: tuple
    percent_agreement: float
    percent_agreement_ci95: tuple
    kappa: float
    kappa_linear: float
    a: tuple
    b: tuple
    kappa_ci95: tuple = (float("nan"), float("nan"))
    kappa_linear_ci95: tuple = (float("nan"), float("nan"))

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable({k: (list(v) if isinstance(v, tuple) and k != "table" else v)
                            for k, v in self.__dict__.items() if k not in ("a", "b")}
                           | {"table": [list(r) for r in self.table]})


@dataclass(frozen=True)
class MeasureAgreement:
    """Case-by-case agreement of two measurements of one continuous quantity.

    Attributes
    ----------
    method_a, method_b : str
        Names of the two methods; differences are ``a - b``.
    measure : str
        What was measured (e.g. ``"ER % positive"``), for tables and the plot.
    unit : str
        Its unit (``"%"``, ``""`` for an H-score).
    cases : tuple of str
    a, b : tuple of float
        Values per case.
    mean_a, mean_b : float
    bias : float
        Mean difference ``a - b``.
    bias_ci95 : (float, float)
        t interval, n - 1 degrees of freedom.
    sd_difference : float
        Sample SD of the differences (n - 1).
    limits_of_agreement : (float, float)
        ``bias -+ 1.96 sd_difference``.
    lower_limit_ci95, upper_limit_ci95 : (float, float)
        Intervals of each limit (Bland & Altman 1999, section 2.2).
    difference_slope, difference_slope_p : float
        Least-squares slope of the differences on the pairs' means, per unit of the
        measure, and its two-sided p value (Bland & Altman 1999, section 3).
    pearson_r : float
    ccc : float
        Lin's concordance correlation coefficient.
    ccc_ci95 : (float, float)
        From Fisher's z with Lin's asymptotic variance (NaN where undefined: fewer than 3
        cases, |rho_c| equal to 1, or r equal to 0).
    bias_correction_factor : float
        Lin's ``C_b = rho_c / r``: 1 when the best-fit line is the line of equality.
    status : StatusAgreement or None
        Agreement on the status given by cut-offs, where any were given.
    excluded : dict
        Cases left out of a table comparison, by reason.
    warnings : tuple of str
    """

    method_a: str
    method_b: str
    measure: str
    unit: str
    cases: tuple
    a: tuple
    b: tuple
    mean_a: float
    mean_b: float
    bias: float
    bias_ci95: tuple
    sd_difference: float
    limits_of_agreement: tuple
    lower_limit_ci95: tuple
    upper_limit_ci95: tuple
    difference_slope: float
    difference_slope_p: float
    pearson_r: float
    ccc: float
    ccc_ci95: tuple
    bias_correction_factor: float
    status: StatusAgreement | None = None
    excluded: dict = field(default_factory=dict)
    warnings: tuple = ()
    references: tuple = (REF_BLAND_ALTMAN_1986, REF_BLAND_ALTMAN_1999, REF_LIN_1989)

    @property
    def n_cases(self) -> int:
        return len(self.cases)

    def outside_limits(self) -> list[dict[str, Any]]:
        """Cases whose difference lies outside the limits of agreement: ``[{case, a, b,
        difference}]``, the cases to look at first."""
        lo, hi = self.limits_of_agreement
        # rounding is not a difference: x + 4 - x differs from 4 in the last bits, and with
        # no spread those bits put cases "outside" (a review)
        tol = 1e-9 * max(1.0, *map(abs, self.a), *map(abs, self.b))
        return [{"case": c, self.method_a: x, self.method_b: y, "difference": x - y}
                for c, x, y in zip(self.cases, self.a, self.b, strict=True)
                if not lo - tol <= x - y <= hi + tol]

    def to_dict(self) -> dict[str, Any]:
        skip = ("cases", "a", "b", "status")
        d = {k: (list(v) if isinstance(v, tuple) else v)
             for k, v in self.__dict__.items() if k not in skip}
        d["n_cases"] = self.n_cases
        d["status"] = None if self.status is None else self.status.to_dict()
        d["outside_limits"] = self.outside_limits()
        if self.status is not None:
            d["status_disagreements"] = [
                {"case": c, self.method_a: x, self.method_b: y}
                for c, x, y in zip(self.cases, self.status.a, self.status.b, strict=True)
                if x != y]
        return to_jsonable(d)

    def plot(self):
        """Two panels: the values against each other with the line of equality (and the
        status cut-offs), and the Bland-Altman plot (difference against mean, with the
        bias, the limits of agreement and their 95 % intervals shaded)."""
        import matplotlib.pyplot as plt

        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9.5, 4.0))
        a, b = np.asarray(self.a), np.asarray(self.b)
        u = f" ({self.unit})" if self.unit else ""
        # many cases: small translucent points, so that density shows
        dots = dict(s=14 if a.size <= 200 else 4, alpha=1.0 if a.size <= 200 else 0.35,
                    color="C0", lw=0)
        lo_v, hi_v = float(min(a.min(), b.min())), float(max(a.max(), b.max()))
        pad = 0.05 * (hi_v - lo_v or 1.0)
        ax1.plot([lo_v - pad, hi_v + pad], [lo_v - pad, hi_v + pad], color="0.5", lw=1,
                 label="line of equality")
        ax1.scatter(a, b, **dots)
        for i, c in enumerate(() if self.status is None else self.status.cutoffs):
            if lo_v - pad <= c <= hi_v + pad:
                ax1.axvline(c, color="C2", lw=0.8, ls=":",
                            label="status cut-offs" if i == 0 else None)
                ax1.axhline(c, color="C2", lw=0.8, ls=":")
        ax1.legend(fontsize=7, frameon=False, loc="upper left")
        ax1.set_xlabel(f"{self.method_a}{u}")
        ax1.set_ylabel(f"{self.method_b}{u}")
        ccc = "undefined" if not np.isfinite(self.ccc) else f"{self.ccc:.3f}"
        ax1.set_title(f"{self.measure}: {self.n_cases} cases, Lin's CCC {ccc}", fontsize=9)
        m, d = (a + b) / 2.0, a - b
        ax2.scatter(m, d, **dots)
        ax2.axhline(0.0, color="0.5", lw=0.8)
        lines = ((self.bias, self.bias_ci95, "bias", "-"),
                 (self.limits_of_agreement[1], self.upper_limit_ci95, "+1.96 SD", "--"),
                 (self.limits_of_agreement[0], self.lower_limit_ci95, "-1.96 SD", "--"))
        for v, ci, _, ls in lines:
            ax2.axhline(v, color="C3", lw=1, ls=ls)
            if np.all(np.isfinite(ci)) and ci[1] > ci[0]:
                ax2.axhspan(ci[0], ci[1], color="C3", alpha=0.12, lw=0)
        # the values named in the right margin, outside the data; limits that coincide
        # (no spread) are named once
        said: list[float] = []
        span = float(np.ptp(d)) or 1.0
        for v, _, name, _ in lines:
            if all(abs(v - w) > 0.04 * span for w in said):
                ax2.annotate(f"{name}\n{v:.3g}", (1.01, v),
                             xycoords=("axes fraction", "data"), ha="left", va="center",
                             fontsize=7, color="C3", annotation_clip=False)
                said.append(v)
        ax2.set_xlabel(f"mean of the two{u}")
        ax2.set_ylabel(f"{self.method_a} - {self.method_b}{u}")
        ax2.set_title("Bland-Altman: bias and 95 % limits of agreement", fontsize=9)
        fig.tight_layout()
        return fig


def _values(name: str, values, cases) -> np.ndarray:
    out = np.empty(len(cases))
    for i, (case, v) in enumerate(zip(cases, values, strict=True)):
        try:
            out[i] = float(v)
        except (TypeError, ValueError):
            raise InputError(f"{name}: case {case!r} has the value {v!r}, not a number.") \
                from None
        if not np.isfinite(out[i]):
            raise InputError(f"{name}: case {case!r} has the value {v!r}; a finite number "
                             "is needed (leave the case out, or leave its cell empty in a "
                             "table).")
    return out


#: The Ki-67 index by the International Ki67 in Breast Cancer Working Group (Nielsen TO et
#: al., J Natl Cancer Inst 2021;113(7):808-819, doi:10.1093/jnci/djaa201): in T1-2, N0-1,
#: ER-positive, HER2-negative breast cancer, Ki-67 <= 5 % or >= 30 % can be used to
#: estimate prognosis; the values between are not reliably told apart. 5 % takes the lower
#: class, 30 % the higher.
KI67_CUTOFFS = (5.0, 30.0)
KI67_LABELS = ("low", "intermediate", "high")
KI67_WORDS = ("IKWG 2021 Ki-67 (T1-2 N0-1 ER+ HER2- breast cancer, prognosis): <= 5 % low, "
              "> 5 to < 30 % intermediate (not reliably told apart), >= 30 % high")


def _ki67_class(v: float) -> int:
    return 0 if v <= KI67_CUTOFFS[0] else 1 if v < KI67_CUTOFFS[1] else 2


def _status_rule(rule) -> tuple[str, tuple, tuple, Any]:
    """(words, cut-offs, labels, classify) of a status rule: 'ER', 'PR' (ASCO/CAP 2020),
    'Ki67' (IKWG 2021) or cut-offs (a value on a cut-off goes to the higher status)."""
    from qdmed.imaging._receptors import _RULES, RULE_WORDS, rule_class

    if isinstance(rule, str):
        key = rule.strip().upper().replace("PGR", "PR").replace("-", "")
        if key == "KI67":
            return (KI67_WORDS, KI67_CUTOFFS, KI67_LABELS,
                    lambda v: _ki67_class(round(float(v), 9)))
        if key not in _RULES:
            raise InputError(f"status rule {rule!r} is not known; accepted: "
                             f"{', '.join(_RULES)} (ASCO/CAP 2020), Ki67 (IKWG 2021), or "
                             "cut-offs as numbers.")
        cuts, names = _RULES[key]
        words = f"ASCO/CAP 2020 {'PgR' if key == 'PR' else key}: {RULE_WORDS[key]}"
        return words, cuts, tuple(names), lambda v: rule_class(cuts, round(float(v), 9))
    try:
        cuts = tuple(float(c) for c in rule)
    except (TypeError, ValueError):
        raise InputError(f"status cut-offs {rule!r}: numbers are needed, e.g. (1, 10), or "
                         "a rule name ER, PR or Ki67.") from None
    if not cuts or any(not np.isfinite(c) for c in cuts) or \
            any(b <= a for a, b in zip(cuts, cuts[1:], strict=False)):
        raise InputError(f"status cut-offs {list(rule)}: give one or more finite numbers in "
                         "increasing order, e.g. (1, 10).")
    g = [f"{c:g}" for c in cuts]
    names = ([f"< {g[0]}"] + [f"{x} to < {y}" for x, y in zip(g, g[1:], strict=False)]
             + [f">= {g[-1]}"])
    return (f"cut-offs {', '.join(g)} (a value on a cut-off takes the higher status)",
            cuts, tuple(names), lambda v: int(np.searchsorted(cuts, round(float(v), 9),
                                                         side="right")))


def _status_agreement(rule, a: np.ndarray, b: np.ndarray) -> StatusAgreement:
    from qdmed.imaging._kappa import cohen_kappa
    from qdmed.imaging._receptors import _wilson95

    words, cuts, labels, classify = _status_rule(rule)
    ia = np.array([classify(v) for v in a])
    ib = np.array([classify(v) for v in b])
    k = len(labels)
    table = np.zeros((k, k), dtype=int)
    np.add.at(table, (ia, ib), 1)
    la, lb = [labels[i] for i in ia], [labels[i] for i in ib]
    wil = _wilson95(int(np.sum(ia == ib)), ia.size)
    from qdmed.imaging._agreement import _kappa_intervals

    ci = _kappa_intervals(ia, ib, k)  # (a statistician's walk-through: none was given)
    return StatusAgreement(
        rule=words, cutoffs=tuple(cuts), labels=labels, table=tuple(tuple(int(v) for v in r) for r in table),
        percent_agreement=float(100.0 * np.mean(ia == ib)),
        percent_agreement_ci95=(100.0 * float(wil.low), 100.0 * float(wil.high)),
        kappa=float(cohen_kappa(la, lb, labels=labels)),
        kappa_linear=float(cohen_kappa(la, lb, weights="linear", labels=labels)),
        a=tuple(la), b=tuple(lb), kappa_ci95=ci["kappa"],
        kappa_linear_ci95=ci["kappa_linear"])


def _lin_ccc(a: np.ndarray, b: np.ndarray) -> tuple[float, tuple, float, float]:
    """(rho_c, 95 % interval, Pearson r, C_b) after Lin (1989, 2000): moments over n;
    interval from z = atanh(rho_c) with variance
    ``[(1-r^2) rho_c^2 / ((1-rho_c^2) r^2) + 2 rho_c^3 (1-rho_c) u^2 / (r (1-rho_c^2)^2)
    - rho_c^4 u^4 / (2 r^2 (1-rho_c^2)^2)] / (n-2)``, ``u = (mean_a - mean_b) /
    sqrt(s_a s_b)``."""
    n = a.size
    ma, mb = a.mean(), b.mean()
    sa2, sb2 = np.mean((a - ma) ** 2), np.mean((b - mb) ** 2)
    sab = np.mean((a - ma) * (b - mb))
    den = sa2 + sb2 + (ma - mb) ** 2
    nan2 = (float("nan"), float("nan"))
    if den == 0:  # every value the same in both: agreement is perfect but undefined
        return float("nan"), nan2, float("nan"), float("nan")
    rc = float(2.0 * sab / den)
    if sa2 == 0 or sb2 == 0:
        return rc, nan2, float("nan"), float("nan")
    r = float(sab / np.sqrt(sa2 * sb2))
    cb = rc / r if r != 0 else float("nan")
    if n < 3 or abs(rc) >= 1.0 - 1e-12 or r == 0:  # atanh(+-1): no interval
        return rc, nan2, r, cb
    u = (ma - mb) / np.sqrt(np.sqrt(sa2 * sb2))
    one = 1.0 - rc * rc
    var_z = ((1.0 - r * r) * rc * rc / (one * r * r)
             + 2.0 * rc ** 3 * (1.0 - rc) * u * u / (r * one * one)
             - rc ** 4 * u ** 4 / (2.0 * r * r * one * one)) / (n - 2)
    if not var_z > 0:
        return rc, nan2, r, cb
    z, h = np.arctanh(rc), LOA_Z * np.sqrt(var_z)
    return rc, (float(np.tanh(z - h)), float(np.tanh(z + h))), r, float(cb)


def compare_measure(a: Mapping[str, Any] | Sequence, b: Mapping[str, Any] | Sequence, *,
                    method_a: str = "qdmed", method_b: str = "pathologist",
                    measure: str = "value", unit: str = "",
                    status_rule: str | Sequence[float] | None = None) -> MeasureAgreement:
    """Agreement of two measurements of one continuous quantity on the same cases: bias and
    95 % limits of agreement (Bland & Altman), their trend with the level, Lin's
    concordance correlation coefficient and, given a status rule, agreement on the status.

    Parameters
    ----------
    a, b : mapping case -> number, or sequences in the same case order
        The two methods' values. Mappings are joined on their keys: both must hold the same
        cases.
    method_a, method_b : str
        Names; differences are ``a - b``.
    measure, unit : str
        What was measured and its unit, for tables and the plot (e.g. ``"ER % positive"``,
        ``"%"``).
    status_rule : 'ER', 'PR', 'Ki67', sequence of float, or None
        Also compare the statuses the values give: ``'ER'`` or ``'PR'`` for the ASCO/CAP
        2020 percentage rules, ``'Ki67'`` for the International Ki67 Working Group's
        (Nielsen et al. 2021: <= 5 % low, >= 30 % high, intermediate between), or cut-offs
        in increasing order (a value on a cut-off takes the higher status).

    With ``unit="%"`` or an ER/PR rule the values are percentages: one outside 0-100 is
    refused, and one method's values all at most 1 against the other's 20 times larger
    is warned (fractions against percentages).

    Returns
    -------
    MeasureAgreement

    Raises
    ------
    InputError
        Different case sets or lengths, fewer than 3 cases, a value that is not a finite
        number (case named), a percentage outside 0-100, equal method names, or a bad status
        rule.

    Examples
    --------
    >>> r = compare_measure({"p1": 12.0, "p2": 0.4, "p3": 55.0, "p4": 3.0},
    ...                     {"p1": 10.0, "p2": 0.0, "p3": 60.0, "p4": 5.0}, status_rule="ER")
    >>> round(r.bias, 2), r.status.percent_agreement
    (-1.15, 75.0)
    """
    cases, va, vb = paired_cases(a, b, method_a=method_a, method_b=method_b, item="value",
                                 fewest=3)
    x, y = _values(method_a, va, cases), _values(method_b, vb, cases)
    if unit == "%" or isinstance(status_rule, str):  # a percentage (ER and PR rules are)
        for name, v in ((method_a, x), (method_b, y)):
            bad = np.flatnonzero((v < 0) | (v > 100))
            if bad.size:
                raise InputError(f"{name}: case {cases[bad[0]]!r} has {v[bad[0]]:g} %; a "
                                 f"percentage is between 0 and 100 ({bad.size} case(s) "
                                 "outside).")
    from scipy import stats

    n = x.size
    d = x - y
    bias, sd = float(d.mean()), float(d.std(ddof=1))
    t = float(stats.t.ppf(0.975, n - 1))
    se_bias = sd / np.sqrt(n)
    se_lim = sd * np.sqrt(1.0 / n + LOA_Z ** 2 / (2.0 * (n - 1)))
    lo, hi = bias - LOA_Z * sd, bias + LOA_Z * sd
    m = (x + y) / 2.0
    if np.ptp(m) > 0:
        fit = stats.linregress(m, d)
        slope, slope_p = float(fit.slope), float(fit.pvalue)
    else:
        slope = slope_p = float("nan")
    rc, rc_ci, r, cb = _lin_ccc(x, y)
    warns = []
    if n < FEW_CASES:
        warns.append(f"only {n} cases: the limits of agreement are uncertain (the lower "
                     f"one lies between {lo - t * se_lim:.3g} and {lo + t * se_lim:.3g})")
    if np.isfinite(slope_p) and slope_p < 0.05:
        warns.append(f"the differences change with the level ({slope:+.3g} per unit of the "
                     f"mean, p = {slope_p:.3g}): the limits of agreement are not the same "
                     "across the range (Bland & Altman 1999, section 3)")
    big_a, big_b = float(np.max(np.abs(x))), float(np.max(np.abs(y)))
    if 0.0 < min(big_a, big_b) <= 1.0 and \
            max(big_a, big_b) >= FRACTION_RATIO * min(big_a, big_b) and \
            (unit == "%" or isinstance(status_rule, str)):
        small = method_a if big_a <= 1.0 else method_b
        warns.append(f"every value of {small} is at most {min(big_a, big_b):.3g} while the "
                     f"other's reach {max(big_a, big_b):.3g}: fractions (0-1) compared with "
                     "percentages?")
    status = None if status_rule is None else _status_agreement(status_rule, x, y)
    if status is not None and not np.isfinite(status.kappa):  # said, as compare_her2 says it
        warns.append("every case has one status in both methods: the status kappa is "
                     "undefined (compare the percent agreement instead)")
    return MeasureAgreement(
        method_a=method_a, method_b=method_b, measure=measure, unit=unit,
        cases=tuple(cases), a=tuple(float(v) for v in x), b=tuple(float(v) for v in y),
        mean_a=float(x.mean()), mean_b=float(y.mean()), bias=bias,
        bias_ci95=(bias - t * se_bias, bias + t * se_bias), sd_difference=sd,
        limits_of_agreement=(lo, hi),
        lower_limit_ci95=(lo - t * se_lim, lo + t * se_lim),
        upper_limit_ci95=(hi - t * se_lim, hi + t * se_lim),
        difference_slope=slope, difference_slope_p=slope_p, pearson_r=r, ccc=rc,
        ccc_ci95=rc_ci, bias_correction_factor=cb,
        status=status, warnings=tuple(warns))


def _status_column(column: str) -> str | None:
    """The status column qdmed writes beside a receptor percentage column
    (``ER_percent_positive_corrected`` -> ``ER_status``), else None."""
    import re

    m = re.fullmatch(r"(.+?)_percent_positive(?:_corrected)?", column)
    return f"{m.group(1)}_status" if m else None


def _values_csv(path, key: str, column: str) -> tuple[dict, list, list, list]:
    """{case: number} from a CSV table and the cases with a missing cell (:func:`is_missing`);
    rows without a case are skipped (a spreadsheet's trailing blank rows), and a cell that
    is not a number is refused with its line. Third: the table's columns. Fourth: the
    cases qdmed's own status beside the percentage calls "insufficient cells" (too few
    cells for a status: their percentage is not read), which are among the missing."""
    from qdmed.imaging._cohort import slide_stem
    from qdmed.imaging._csvtable import read_csv_strings

    df = read_csv_strings(path, columns=(key, column))
    if not len(df):
        raise InputError(f"{path}: no rows under the header (columns {list(df.columns)})")
    st = _status_column(column)
    status = df[st] if st in df.columns else [""] * len(df)
    seen: dict[str, tuple] = {}
    vals, empty, few = {}, [], []
    for line, raw, cell, why in zip(df.attrs["lines"], df[key], df[column], status,
                                    strict=True):
        if not str(raw).strip():
            continue
        k = slide_stem(str(raw).strip())
        if k in seen:
            raise InputError(f"{path}, lines {seen[k][1]} and {line}: {seen[k][0]!r} and "
                             f"{raw!r} in column {key!r} name the same case {k!r}")
        seen[k] = (raw, line)
        if str(why).strip().lower() == "insufficient cells":
            empty.append(k)
            few.append(k)
            continue
        v = cell.strip()
        if v.endswith("%"):
            v = v[:-1].strip()
            if not v:
                raise InputError(f"{path}, line {line}: {column} = {cell!r} for case {k!r} "
                                 "has no number")
        if is_missing(v):
            empty.append(k)
            continue
        try:
            f = float(v)
        except ValueError:
            raise InputError(f"{path}, line {line}: {column} = {cell!r} for case {k!r} is "
                             "not a number; give numbers (a trailing % is allowed), or leave "
                             "the cell empty (or NA) to leave the case out") from None
        if not np.isfinite(f):
            raise InputError(f"{path}, line {line}: {column} = {cell!r} for case {k!r} is "
                             "not finite (an error upstream?); give a number or leave the "
                             "cell empty")
        vals[k] = f
    return vals, empty, list(df.columns), few


def compare_measure_tables(table_a, table_b, *, column_a: str, column_b: str | None = None,
                           key: str = "slide", key_b: str | None = None,
                           method_a: str = "qdmed", method_b: str = "pathologist",
                           unit: str = "", status_rule=None) -> MeasureAgreement:
    """:func:`compare_measure` on two CSV tables with one row per case (e.g. ``cohort.csv``
    and a pathologist's reads), joined on their case columns by slide stem (``A.ome.tif``
    and ``A`` are one case). Cells may end in ``%``. Cases with a missing cell in one table
    (empty, NA, N/A, #N/A, nan), or present in only one table, are left out and listed in
    ``excluded``; rows without a case are skipped. So are the cases whose status, in
    qdmed's column beside a receptor percentage (``ER_status`` beside
    ``ER_percent_positive_corrected``), is "insufficient cells": their percentage rests on
    too few cells to be read.

    Raises
    ------
    InputError
        Unreadable file, missing column (the columns present named), no rows, a cell that
        is not a number or not finite (file, line and value named), two rows naming one
        case (both lines named), or fewer than 3 cases in common.
    """
    column_b = column_b or column_a
    a, miss_a, cols_a, few_a = _values_csv(table_a, key, column_a)
    b, miss_b, cols_b, few_b = _values_csv(table_b, key_b or key, column_b)
    common, excluded = joined_tables(a, miss_a, b, miss_b, table_a=table_a, table_b=table_b,
                                     method_a=method_a, method_b=method_b, item="value",
                                     columns=(column_a, column_b), fewest=3,
                                     insufficient=(few_a, few_b))
    measure = column_a if column_a == column_b else f"{column_a} / {column_b}"
    res = compare_measure({k: a[k] for k in common}, {k: b[k] for k in common},
                          method_a=method_a, method_b=method_b, measure=measure, unit=unit,
                          status_rule=status_rule)
    # qdmed reads ER/PR status from the percentage corrected for its gate's noise floor: the
    # observed one, compared for the status, shows disagreements qdmed's own status has not
    # (a review: 1.98 % observed, 0.99 % corrected, "negative" in cohort.csv)
    warns = tuple(
        f"{col} is the observed percentage; {col}_corrected (its gate's noise floor "
        "removed) is what qdmed reads its own ER/PgR status from: compare that column for "
        "the status"
        for col, cols in ((column_a, cols_a), (column_b, cols_b))
        if isinstance(status_rule, str) and col.endswith("_percent_positive")
        and f"{col}_corrected" in cols)
    # QD abundance against DAB optical density under one column name (qdmed's QD and DAB
    # tables both write total_her2_load and her2_mean_membrane): other units, not one
    # measure (a statistician's walk-through: CCC 0.0007, unsaid)
    dab = ["h_score" in cols for cols in (cols_a, cols_b)]
    if dab[0] != dab[1] and {column_a, column_b} & {"total_her2_load", "her2_mean_membrane"}:
        warns += (f"one table is DAB IHC (optical density) and the other QD-IHC (QD "
                  f"abundance): {measure} is in other units in each, so bias, limits and "
                  "CCC compare nothing; compare categories or percentages across methods, "
                  "or read the correlation only",)
    return replace(res, excluded=excluded, warnings=res.warnings + tuple(dict.fromkeys(warns)))
