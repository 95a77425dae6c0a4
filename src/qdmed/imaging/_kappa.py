"""Cohen's kappa, unweighted or weighted, between two ratings of the same items."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from qdmed.errors import InputError, UnknownNameError
from qdmed.imaging._scoring import HER2_CATEGORIES

__all__ = ["cohen_kappa"]


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
        when every label is one of its categories; the categories of ordered pandas
        Categoricals (in their order; both must have the same); every integer from the
        smallest to the largest for integer ratings (a 1 against a 3 is two steps whether
        or not anyone used 2, as ``compare_her2`` reads 0-3; scikit-learn's
        ``cohen_kappa_score`` takes the observed labels' ranks, one step there); else the
        sorted union of the observed labels. Weighted kappa depends on it: give ``labels``
        for any other ordinal scale with categories that may go unused.

    Returns
    -------
    float
        ``1 - sum(w * O) / sum(w * E)`` with O the observed and E the chance-expected
        (outer product of the marginals) proportion tables; NaN when chance disagreement
        is 0 (e.g. both raters used one category).

    Raises
    ------
    InputError
        Different lengths, empty input, missing ratings (NaN, None), labels outside
        ``labels``.
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
    a_in, b_in = a, b
    a = np.asarray(a)
    b = np.asarray(b)
    if a.ndim != 1 or a.shape != b.shape:
        raise InputError(f"a and b must be 1-D with the same length; got shapes {a.shape} and {b.shape}.")
    if a.size == 0:
        raise InputError("a and b are empty; kappa needs at least one item.")
    for name, v in (("a", a_in), ("b", b_in)):
        # a missing rating is no category (NaN was counted as one, as the string 'nan'
        # next to strings: a review)
        if isinstance(v, np.ndarray) and v.dtype.kind in "biuU":
            continue  # nothing missing can be held (U: numpy's own strings)
        missing = np.asarray(pd.isna(np.asarray(v, dtype=object)), dtype=bool).ravel()
        if missing.any():
            raise InputError(f"{name} holds {int(missing.sum())} missing rating(s) (NaN or "
                             f"None), the first at item {int(np.argmax(missing))}: drop those "
                             "items from both a and b")
    ordered = [getattr(v, "cat", v) for v in (a_in, b_in)]
    ordered = [getattr(v, "categories", None) if getattr(v, "ordered", False) else None
               for v in ordered]
    if labels is None and any(o is not None for o in ordered):
        # an ordered Categorical's order is the scale (it had been sorted alphabetically,
        # a walk-through: linear kappa -0.43 for 0.0)
        if ordered[0] is None or ordered[1] is None or list(ordered[0]) != list(ordered[1]):
            raise InputError("a and b are not both ordered Categoricals of the same "
                             "categories: give labels (the scale, in order)")
        labels = list(ordered[0])
    if labels is None:
        cats = np.unique(np.concatenate([a, b]))
        if set(cats.tolist()) <= set(HER2_CATEGORIES):
            cats = np.asarray(HER2_CATEGORIES)
        elif cats.dtype.kind in "iu" and 0 < int(cats[-1]) - int(cats[0]) < 10_000:
            cats = np.arange(int(cats[0]), int(cats[-1]) + 1)
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
