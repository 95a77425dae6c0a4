"""Agreement between two HER2 scorings of the same cases (QD-IHC against DAB IHC, qdmed
against a pathologist, two calibrations), as method-comparison studies report it.

QD-IHC papers compare their categories with conventional DAB IHC and FISH case by case
(Chen C et al., Biomaterials 2009, for HER2; Yang XQ et al., Int J Nanomedicine 2011, for
EGFR: kappa 0.848 against IHC; imaging reference, section 2.2): a cross-table of
categories, the overall agreement, and Cohen's kappa, weighted for the ordered
0 < 1+ < 2+ < 3+ scale.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from qdmed.errors import InputError
from qdmed.imaging._kappa import cohen_kappa
from qdmed.imaging._scoring import HER2_CATEGORIES, _category
from qdmed.report import to_jsonable

__all__ = ["HER2Agreement", "compare_her2", "compare_her2_tables"]


@dataclass(frozen=True)
class HER2Agreement:
    """Case-by-case agreement of two HER2 scorings.

    Attributes
    ----------
    method_a, method_b : str
        Names of the two scorings (rows and columns of ``table``).
    cases : tuple of str
        Case names, in input order.
    a, b : tuple of str
        Categories per case ('0', '1+', '2+', '3+').
    table : tuple of tuples of int
        4 x 4 cross-table, ``table[i][j]`` = cases scored ``HER2_CATEGORIES[i]`` by
        ``method_a`` and ``HER2_CATEGORIES[j]`` by ``method_b``.
    percent_agreement : float, %
        Cases with the same category.
    kappa, kappa_linear, kappa_quadratic : float
        Cohen's kappa, unweighted and with linear / quadratic weights over the ordered scale
        (NaN when undefined, e.g. every case in one category for both methods).
    percent_agreement_negative_positive : float, %
        Agreement on the clinical call negative (0, 1+) / equivocal (2+) / positive (3+).
    percent_agreement_null_low : float, %
        Agreement on 0 versus any staining (1+ or more), the distinction that decides
        HER2-low therapy.
    excluded : dict
        Cases left out of a table comparison, by reason (:func:`compare_her2_tables`).
    percent_agreement_ci95 : (float, float), %
        Wilson score interval of the percent agreement (Wilson 1927; Newcombe 1998).
    kappa_ci95, kappa_linear_ci95, kappa_quadratic_ci95 : (float, float)
        Percentile bootstrap intervals of the kappas: the cases resampled with replacement
        :data:`BOOTSTRAP_SAMPLES` times, seed :data:`BOOTSTRAP_SEED` (Efron & Tibshirani
        1993); samples where kappa is undefined are left out (NaN when most are, or when
        the resampled kappas do not vary: perfect agreement, one category).
    warnings : tuple of str
        E.g. fewer than :data:`FEW_CASES` cases (wide intervals).
    """

    method_a: str
    method_b: str
    cases: tuple
    a: tuple
    b: tuple
    table: tuple
    percent_agreement: float
    kappa: float
    kappa_linear: float
    kappa_quadratic: float
    percent_agreement_negative_positive: float
    percent_agreement_null_low: float
    excluded: dict = field(default_factory=dict)
    percent_agreement_ci95: tuple = (float("nan"), float("nan"))
    kappa_ci95: tuple = (float("nan"), float("nan"))
    kappa_linear_ci95: tuple = (float("nan"), float("nan"))
    kappa_quadratic_ci95: tuple = (float("nan"), float("nan"))
    warnings: tuple = ()
    references: tuple = field(default=(
        "Cohen J (1960). A coefficient of agreement for nominal scales. Educ Psychol Meas "
        "20:37-46. doi:10.1177/001316446002000104",
        "Cohen J (1968). Weighted kappa. Psychol Bull 70:213-220. doi:10.1037/h0026256",
        "Wilson EB (1927). Probable inference, the law of succession, and statistical "
        "inference. J Am Stat Assoc 22:209-212. doi:10.1080/01621459.1927.10502953",
        "Efron B, Tibshirani RJ (1993). An Introduction to the Bootstrap. Chapman & Hall. "
        "doi:10.1201/9780429246593",
    ))

    @property
    def n_cases(self) -> int:
        return len(self.cases)

    def disagreements(self) -> list[dict[str, str]]:
        """Cases whose categories differ: ``[{case, a, b}]``."""
        return [{"case": c, self.method_a: x, self.method_b: y}
                for c, x, y in zip(self.cases, self.a, self.b, strict=True) if x != y]

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in (
            "method_a", "method_b", "percent_agreement", "kappa", "kappa_linear",
            "kappa_quadratic", "percent_agreement_negative_positive",
            "percent_agreement_null_low", "references", "excluded",
            "percent_agreement_ci95", "kappa_ci95", "kappa_linear_ci95",
            "kappa_quadratic_ci95", "warnings")}
        for k in ("percent_agreement_ci95", "kappa_ci95", "kappa_linear_ci95",
                  "kappa_quadratic_ci95", "warnings"):
            d[k] = list(d[k])
        d["n_cases"] = self.n_cases
        d["categories"] = list(HER2_CATEGORIES)
        d["table"] = [list(r) for r in self.table]
        d["disagreements"] = self.disagreements()
        return to_jsonable(d)

    def plot(self, ax=None):
        """Cross-table as an annotated heat map (rows: method_a, columns: method_b)."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(4.2, 3.8))
        t = np.asarray(self.table)
        ax.imshow(t, cmap="Blues")
        for i in range(4):
            for j in range(4):
                ax.text(j, i, str(t[i, j]), ha="center", va="center",
                        color="white" if t[i, j] > t.max() / 2 else "black")
        ax.set_xticks(range(4), HER2_CATEGORIES)
        ax.set_yticks(range(4), HER2_CATEGORIES)
        ax.set_xlabel(self.method_b)
        ax.set_ylabel(self.method_a)
        ax.set_title(f"{self.n_cases} cases: agreement {self.percent_agreement:.0f} %, "
                     f"linear kappa {self.kappa_linear:.2f}", fontsize=9)
        return ax.figure


#: Bootstrap of the kappa intervals: resamples and seed (fixed: the same cases give the
#: same interval).
BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0
#: Fewer cases than this are warned: the intervals are wide.
FEW_CASES = 20


def _kappas_of_tables(tables: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Cohen's kappa of each (..., k, k) count table with disagreement weights ``weights``
    (``1 - sum(w O) / sum(w E)``, as :func:`cohen_kappa`); NaN where undefined."""
    o = tables / tables.sum(axis=(-2, -1), keepdims=True)
    e = o.sum(-1)[..., :, None] * o.sum(-2)[..., None, :]
    num, den = (o * weights).sum(axis=(-2, -1)), (e * weights).sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, 1.0 - num / np.where(den > 0, den, 1.0), np.nan)


def _kappa_intervals(ia: np.ndarray, ib: np.ndarray, k: int = len(HER2_CATEGORIES)
                     ) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap 95 % intervals of the three kappas (cases resampled). The pairs
    are put in one order first (by their categories), so that the same cases give the same
    interval in whatever order they come (a walk-through's shuffled sheet moved it in the
    third decimal). ``k``: the categories of the scale (HER2's four; a status rule's)."""
    n = ia.size
    order = np.lexsort((ib, ia))
    ia, ib = ia[order], ib[order]
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    idx = rng.integers(0, n, (BOOTSTRAP_SAMPLES, n))
    cell = ia[idx] * k + ib[idx]
    tables = np.zeros((BOOTSTRAP_SAMPLES, k * k))
    np.add.at(tables, (np.repeat(np.arange(BOOTSTRAP_SAMPLES), n), cell.ravel()), 1)
    tables = tables.reshape(BOOTSTRAP_SAMPLES, k, k)
    d = np.abs(np.arange(k)[:, None] - np.arange(k)[None, :]) / (k - 1)
    out = {}
    for name, w in (("kappa", (d > 0).astype(float)), ("kappa_linear", d),
                    ("kappa_quadratic", d * d)):
        ks = _kappas_of_tables(tables, w)
        ks = ks[np.isfinite(ks)]
        # not estimable: most resamples undefined, or no spread at all (perfect agreement,
        # or every case in one category: the percentile bootstrap collapses to a point)
        out[name] = ((float("nan"), float("nan"))
                     if ks.size < BOOTSTRAP_SAMPLES / 2 or np.ptp(ks) == 0 else
                     tuple(float(v) for v in np.percentile(ks, [2.5, 97.5])))
    return out


def _categories(name: str, values, cases) -> list[str]:
    out = []
    for case, v in zip(cases, values, strict=True):
        cat = getattr(v, "category", v)  # a Her2Score or a label
        try:
            out.append(_category(cat))
        except InputError:
            try:
                float(str(cat).strip().rstrip("%"))
                hint = (" A column of numbers (a percentage, an H-score) is compared with "
                        "compare_measure (`qdmed image compare --measure`).")
            except ValueError:
                hint = ""
            raise InputError(f"{name}: case {case!r} has HER2 category {cat!r}; accepted: "
                             f"{list(HER2_CATEGORIES)} (also 0/1/2/3).{hint}") from None
    return out


def compare_her2(a: Mapping[str, Any] | Sequence, b: Mapping[str, Any] | Sequence, *,
                 method_a: str = "QD-IHC", method_b: str = "DAB IHC") -> HER2Agreement:
    """Agreement of two HER2 scorings of the same cases.

    Parameters
    ----------
    a, b : mapping case -> category, or sequences in the same case order
        Categories ('0', '1+', '2+', '3+', or 0-3) or :class:`Her2Score` objects. Mappings
        are joined on their keys: both must hold the same cases.
    method_a, method_b : str
        Names for the table and the plot.

    Returns
    -------
    HER2Agreement

    Raises
    ------
    InputError
        Different case sets or lengths (the missing cases named), fewer than 2 cases, or an
        unknown category (case and value named).

    Examples
    --------
    >>> r = compare_her2({"p1": "3+", "p2": "0", "p3": "1+"}, {"p1": "3+", "p2": "1+", "p3": "1+"})
    >>> round(r.percent_agreement, 1), r.disagreements()
    (66.7, [{'case': 'p2', 'QD-IHC': '0', 'DAB IHC': '1+'}])
    """
    cases, va, vb = paired_cases(a, b, method_a=method_a, method_b=method_b,
                                 item="category", fewest=2)
    ca, cb = _categories(method_a, va, cases), _categories(method_b, vb, cases)
    ia = np.array([HER2_CATEGORIES.index(c) for c in ca])
    ib = np.array([HER2_CATEGORIES.index(c) for c in cb])
    table = np.zeros((4, 4), dtype=int)
    np.add.at(table, (ia, ib), 1)
    call = np.array([0, 0, 1, 2])  # negative / equivocal / positive

    def kappa(w):
        return float(cohen_kappa(ca, cb, weights=w, labels=HER2_CATEGORIES))

    n = len(cases)
    ci = _kappa_intervals(ia, ib)
    from qdmed.imaging._receptors import _wilson95

    wil = _wilson95(int(np.sum(ia == ib)), n)
    lo, hi = float(wil.low), float(wil.high)
    one_sided = len(set(ia.tolist())) == 1 or len(set(ib.tolist())) == 1
    if one_sided:  # kappa is 0 or undefined by construction: its interval says nothing
        ci = {name: (float("nan"), float("nan")) for name in ci}
        warns = ((f"only {n} cases; " if n < FEW_CASES else "")
                 + "one scoring put every case in one category: kappa is 0 or undefined "
                 "whatever the other says (compare the percent agreement instead)",)
    else:
        lo_k, hi_k = ci["kappa"]
        # every case agreeing, kappa is 1 in every resample: no interval, whatever n (a
        # review read "cannot be estimated by resampling so few" at 6 cases against an
        # interval at 3); the percent agreement's Wilson interval says how little it shows
        why = (f" (kappa {lo_k:.2f} to {hi_k:.2f})" if np.isfinite(lo_k) else
               f" (every case agrees, so kappa is 1 in every resample and has no interval; "
               f"the percent agreement's is {100 * lo:.0f}-100 %)" if np.all(ia == ib) else
               " (kappa's cannot be estimated by resampling so few)")
        warns = (f"only {n} cases: the agreement's confidence intervals are wide{why}",) \
            if n < FEW_CASES else ()
    return HER2Agreement(
        method_a=method_a, method_b=method_b, cases=tuple(cases), a=tuple(ca), b=tuple(cb),
        table=tuple(tuple(int(v) for v in r) for r in table),
        percent_agreement=float(100.0 * np.mean(ia == ib)),
        kappa=kappa(None), kappa_linear=kappa("linear"), kappa_quadratic=kappa("quadratic"),
        percent_agreement_negative_positive=float(100.0 * np.mean(call[ia] == call[ib])),
        percent_agreement_null_low=float(100.0 * np.mean((ia == 0) == (ib == 0))),
        percent_agreement_ci95=(100.0 * lo, 100.0 * hi),
        kappa_ci95=ci["kappa"], kappa_linear_ci95=ci["kappa_linear"],
        kappa_quadratic_ci95=ci["kappa_quadratic"], warnings=warns,
    )


def paired_cases(a, b, *, method_a: str, method_b: str, item: str, fewest: int
                 ) -> tuple[list[str], list, list]:
    """(cases, a's entries, b's entries) of two methods' results: two mappings case ->
    entry, joined on their keys (both must hold the same cases), or two sequences in one
    case order (cases named by position, from 0). ``item`` names an entry in errors
    ("category", "value").

    Raises
    ------
    InputError
        Equal method names, a mapping and a sequence, different case sets (the cases named)
        or lengths, or fewer than ``fewest`` cases.
    """
    if method_a == method_b:
        raise InputError(f"the two methods need different names; both are {method_a!r} "
                         "(method_a, method_b; --name-a, --name-b).")
    if isinstance(a, Mapping) != isinstance(b, Mapping):
        raise InputError(f"a and b must both be mappings case -> {item} or both sequences.")
    if isinstance(a, Mapping):
        for name, m in ((method_a, a), (method_b, b)):  # 1 and "1": one case, twice
            keys = [str(k) for k in m]
            if len(set(keys)) < len(keys):
                dup = next(k for k in keys if keys.count(k) > 1)
                raise InputError(f"{name}: case {dup!r} is given twice (keys of different "
                                 "types, e.g. 1 and '1', name one case)")
        only_a = sorted(set(map(str, a)) - set(map(str, b)))
        only_b = sorted(set(map(str, b)) - set(map(str, a)))
        if only_a or only_b:
            raise InputError(f"the two methods must cover the same cases; only in "
                             f"{method_a}: {only_a[:10]}, only in {method_b}: {only_b[:10]}.")
        cases = [str(k) for k in a]
        bs = {str(k): v for k, v in b.items()}
        va, vb = [a[k] for k in a], [bs[c] for c in cases]
    else:
        va, vb = list(a), list(b)
        if len(va) != len(vb):
            raise InputError(f"a and b must have one {item} per case; got {len(va)} and "
                             f"{len(vb)}.")
        cases = [str(i) for i in range(len(va))]
    if len(cases) < fewest:
        raise InputError(f"agreement needs at least {fewest} cases with a {item} from both "
                         f"methods; got {len(cases)}.")
    return cases, va, vb


def joined_tables(a: dict, miss_a: list, b: dict, miss_b: list, *, table_a, table_b,
                  method_a: str, method_b: str, item: str, columns: tuple, fewest: int,
                  insufficient: tuple = ((), ())) -> tuple[list[str], dict]:
    """The cases two tables share with an entry in both (in ``a``'s order), and those left
    out by reason (``{"no <item> in <method>": [...], "only in <method>": [...]}``, empty
    reasons dropped), from each table's ``{case: entry}`` and its cases without one. Cases
    of ``insufficient`` (per table, among its missing) are said as "insufficient cells in
    <method>": their entry was left unread, not absent.

    Raises
    ------
    InputError
        The tables share no case (examples from both named), or fewer than ``fewest`` have
        an entry in both (the reasons counted, the ``columns`` named).
    """
    keys_a, keys_b = set(a) | set(miss_a), set(b) | set(miss_b)
    # names that differ in letter case only are not matched (a case is named as written),
    # but said (a review's p1 against P1 was listed as two exclusions, no hint)
    folded = {k.casefold(): k for k in keys_b - keys_a}
    by_case = sorted(f"{k} / {folded[k.casefold()]}" for k in keys_a - keys_b
                     if k.casefold() in folded)
    if not keys_a & keys_b:
        raise InputError(f"{table_a} and {table_b} share no case (e.g. {sorted(keys_a)[:3]} "
                         f"and {sorted(keys_b)[:3]}); key and key_b (--key, --key-b) name the "
                         "case columns" + (f"; {len(by_case)} differ in letter case only "
                                           f"(e.g. {by_case[0]}): names are matched as "
                                           "written" if by_case else "") + ".")
    few_a, few_b = (set(f) for f in insufficient)
    excluded = {f"no {item} in {method_a}": [k for k in miss_a if k in keys_b and k not in few_a],
                f"insufficient cells in {method_a}": [k for k in miss_a if k in keys_b
                                                      and k in few_a],
                f"no {item} in {method_b}": [k for k in miss_b if k in keys_a and k not in few_b],
                f"insufficient cells in {method_b}": [k for k in miss_b if k in keys_a
                                                      and k in few_b],
                "only in " + method_a: sorted(keys_a - keys_b),
                "only in " + method_b: sorted(keys_b - keys_a),
                "named alike but for letter case, not matched": by_case}
    excluded = {k: v for k, v in excluded.items() if v}
    common = [k for k in a if k in b]
    if len(common) < fewest:
        left = "; ".join(f"{why}: {len(v)}" for why, v in excluded.items())
        raise InputError(f"agreement needs at least {fewest} cases with a {item} in both "
                         f"tables; {len(common)} of them have one ({left}). The columns "
                         f"compared are {columns[0]!r} and {columns[1]!r}")
    return common, excluded


#: Table cells read as missing (the case left out), as pandas reads them: R writes NA,
#: Excel #N/A.
MISSING = frozenset({"", "na", "n/a", "#n/a", "nan", "null", "none", "-"})


def is_missing(cell: str) -> bool:
    """A table cell that says "no value" (:data:`MISSING`, any case, spaces ignored)."""
    return cell.strip().lower() in MISSING


def _categories_csv(path, key: str, column: str) -> tuple[dict, list]:
    """{case: category} from a CSV table, and the cases without a category (e.g. slides
    that failed). Cases are slide stems, so ``A.ome.tif`` and ``A`` are the same case."""
    from qdmed.imaging._cohort import slide_stem
    from qdmed.imaging._csvtable import read_csv_strings

    df = read_csv_strings(path, columns=(key, column))
    # rows without a case are skipped, as compare --measure skips them (a spreadsheet's
    # trailing blank rows had read as two rows naming the case '')
    df = df[[bool(str(k).strip()) for k in df[key]]]
    keys = [slide_stem(str(k).strip()) for k in df[key]]
    seen: dict[str, str] = {}
    for raw, k in zip(df[key], keys, strict=True):
        if k in seen:
            raise InputError(f"{path}: {seen[k]!r} and {raw!r} in column {key!r} name the same "
                             f"case {k!r}")
        seen[k] = raw
    cats = {k: v.strip() for k, v in zip(keys, df[column], strict=True)}
    return ({k: v for k, v in cats.items() if not is_missing(v)},
            [k for k, v in cats.items() if is_missing(v)])


def compare_her2_tables(table_a, table_b, *, key: str = "slide", key_b: str | None = None,
                        column_a: str = "her2_category", column_b: str = "her2_category",
                        method_a: str = "QD-IHC", method_b: str = "DAB IHC") -> HER2Agreement:
    """:func:`compare_her2` on two CSV tables with one row per case (e.g. ``cohort.csv`` of
    a cohort run and a pathologist's reads), joined on their case columns ``key`` and
    ``key_b`` (default ``key``) by slide stem (``A.ome.tif`` and ``A`` are one case).

    Cases without a category in one table (a failed slide: an empty, NA or #N/A cell) or
    present in only one table are left out and listed in :attr:`HER2Agreement.excluded`.

    Raises
    ------
    InputError
        Unreadable file, missing column (the columns present named), two rows naming one
        case, or no case in common (examples from both tables named).
    FileFormatError
        Not a CSV table.
    """
    a, miss_a = _categories_csv(table_a, key, column_a)
    b, miss_b = _categories_csv(table_b, key_b or key, column_b)
    common, excluded = joined_tables(a, miss_a, b, miss_b, table_a=table_a, table_b=table_b,
                                     method_a=method_a, method_b=method_b, item="category",
                                     columns=(column_a, column_b), fewest=2)
    for path, col, cats in ((table_a, column_a, a), (table_b, column_b, b)):
        # the compared cases' categories, named by their file (a case only one table holds,
        # e.g. "not evaluable" in a pathologist's master sheet, is left out, not refused)
        _categories(f"{path}, column {col!r}", [cats[k] for k in common], common)
    res = compare_her2({k: a[k] for k in common}, {k: b[k] for k in common},
                       method_a=method_a, method_b=method_b)
    return replace(res, excluded=excluded)
