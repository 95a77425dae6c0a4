"""Poisson maximum-likelihood NNLS unmixing: Newton steps as weighted NNLS, with a line search.

A detector's counts are Poisson in the photons (times a gain) plus Gaussian read noise. The
shifted-Poisson model of Snyder et al. [1]_ takes ``y + s`` as Poisson with mean
``A x + s``, ``s`` the read-noise variance in counts^2, and the abundances maximise

.. math:: \\ell(x) = \\sum_c (y_c + s) \\log((A x)_c + s) - (A x)_c , \\qquad x \\ge 0 .

Its gradient is ``-A^T (1 - (y + s) / (A x + s))`` and its Hessian
``-A^T diag((y + s) / (A x + s)^2) A``. Each step minimises the second-order model of
``-l`` at the current point over ``x >= 0``: a weighted NNLS with the weights
``v = (y + s) / (mu + s)^2`` and the working response ``z = mu - (mu - y) / ((mu + s) v)``
(``mu = A x``; Newton-Raphson as iteratively reweighted least squares [2]_), solved exactly.
The model has the likelihood's gradient, so the step is a descent direction of ``-l``,
and it is halved until ``-l`` drops by the Armijo fraction of its prediction. Every step is
a convex combination of non-negative points: ``x >= 0`` throughout. At the fixed point the
KKT conditions are the likelihood's: the weighted NNLS with ``w = 1 / (A x + s)`` and the
counts returns it. Fisher scoring (``w = 1 / (mu + s)``, response ``y``) converges
linearly: measured on 100,000 noisy pixels of 6 labels in 8 channels, 48 pixels still
moving after 100 steps, against at most 12 Newton steps (mean 4.3); plain reweighting
without the line search cycled between two passive sets near a zero abundance. A channel
with ``y = -s`` has no curvature; ``v`` is floored at ``1e-4 s / (mu + s)^2`` (the model's
curvature only: the gradient, hence the solution, is exact; a floor of ``0.01 s`` made
steps too short, a pixel of such channels moving ~6e-6 a step for 50 steps, a review).
A pixel stops when a full step moves no expected count by more than :data:`RTOL` of its
largest and ``-l`` would drop by no more than its rounding (a dim channel's count, 5 among
1e6, moves by only ~s a step: the first test alone stopped it at 1e-6, a review; measured
now: 4.9993 for 5 counts beside 1e10, 4.68 beside 1e12, beyond which ``-l``'s rounding
hides it). Where a dark channel's Newton weight makes a pixel's
weighted Gram matrix singular, that chunk's steps are solved by scipy's Lawson-Hanson on
QR (the compiled kernel's Cholesky clamps its pivots). ``-l`` is convex where
``y + s >= 0``; counts below ``-s`` are taken as ``-s``. With a read noise of ~2 counts
or less, ordinary noise reaches below ``-s`` (a dark channel's values: 16 % at 1 count,
38 % at 0.3): the clamp then raises dim abundances a little beyond plain NNLS's
truncation (a review: +0.16 against +0.07 counts at 1.3 photons per label, read noise
0.3); the shifted Poisson approximates the Poisson-Gaussian likelihood best at larger
read noise [1]_.

Observed counts as weights (``1 / max(y, 1)``, Neyman's chi^2) bias abundances low at low
counts by about a count per channel [3]_; the likelihood's score is unbiased (``E y = A x``),
so the estimate is where no constraint is active. A label absent from a pixel sits on the
constraint ``x >= 0`` and its noise is truncated to positive values: biased up, under any
estimator; measured, more under this one than under unweighted NNLS (which the analysis
keeps as its default): the likelihood gives dim channels large weights, and a few counts
there pull their labels up (see :func:`qdmed.imaging.unmix_nnls`).

References
----------
.. [1] D. L. Snyder, A. M. Hammoud, R. L. White (1993). Image recovery from data acquired
   with a charge-coupled-device camera. J. Opt. Soc. Am. A 10(5):1014-1023.
   doi:10.1364/JOSAA.10.001014
.. [2] P. J. Green (1984). Iteratively reweighted least squares for maximum likelihood
   estimation, and some robust and resistant alternatives. J. R. Stat. Soc. B
   46(2):149-192. doi:10.1111/j.2517-6161.1984.tb01288.x
.. [3] K. J. Mighell (1999). Parameter estimation in astronomy with Poisson-distributed
   data. I. The chi^2_gamma statistic. ApJ 518(1):380-393. doi:10.1086/307253
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np

from qdmed.errors import InputError, QdmedWarning
from qdmed.imaging._jit import lazy_kernel, njit_cached

__all__ = ["DEFAULT_READ_NOISE", "MAX_ITER", "RTOL", "check_read_noise", "describe_unmixing",
           "neg_log_likelihood", "newton_kernel", "poisson_weights", "read_noise_for",
           "solve_poisson_ml", "warn_not_converged"]

#: Read noise (counts RMS) assumed by default: its square is the variance added to every
#: channel's expected count. Scientific CMOS cameras read 1-2 e- RMS; a larger one is given.
DEFAULT_READ_NOISE = 1.0
#: Read noise accepted (counts RMS): photon-counting detectors read ~0, scientific cameras
#: 1-2 e- (times a gain of ADU per electron).
MIN_READ_NOISE = 0.1
MAX_READ_NOISE = 1000.0
#: A pixel stops when a full Newton step would move no channel's expected count by more than
#: this times its largest expected count plus the read variance.
RTOL = 1e-9
#: Steps after which a pixel still moving keeps its last step (and is warned; measured: 4 on
#: average, at most ~15 on 250,000 noisy pixels).
MAX_ITER = 50
CURVATURE_FLOOR = 1e-4  # times s: the Newton weight of a channel with y = -s
ARMIJO = 1e-4  # fraction of the predicted decrease a step must give
HALVINGS = 40  # a step is halved at most this often (then 1e-12 of it is taken)
_CHUNK = 1 << 16  # pixels per weighted solve: its per-pixel Gram matrices stay ~25 MB


def check_read_noise(read_noise, name: str = "read_noise") -> float:
    """`read_noise` as a float; a clear error naming `name` unless a number of counts (RMS)
    from :data:`MIN_READ_NOISE` to :data:`MAX_READ_NOISE` (the range validated: a review
    found wrong abundances from a read noise of ~3e-3 counts before the stop test on the
    likelihood's decrease, and an overflow beyond ~1e154)."""
    try:
        if isinstance(read_noise, bool | np.bool_):
            raise TypeError
        value = float(read_noise)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number of counts (RMS); got {read_noise!r}.") \
            from None
    if not MIN_READ_NOISE <= value <= MAX_READ_NOISE:  # NaN fails too
        raise InputError(f"{name} must be from {MIN_READ_NOISE:g} to {MAX_READ_NOISE:g} counts "
                         f"(RMS), the range validated; got {read_noise!r} (a detector reads "
                         f"~1-20 counts; at 1000 the Poisson weights are those of plain NNLS).")
    return value


def read_noise_for(poisson: bool, read_noise, name: str = "read_noise",
                   weights: str = "weights='poisson'") -> float | None:
    """The read noise Poisson unmixing uses (the default when `read_noise` is None), None
    without Poisson weights; a read noise given without them is refused (it would change
    nothing), the option and the weights named as the caller calls them."""
    if not poisson:
        if read_noise is not None:
            raise InputError(f"{name} {read_noise!r} is used by {weights} only; add it or "
                             f"leave {name} out")
        return None
    return DEFAULT_READ_NOISE if read_noise is None else check_read_noise(read_noise, name)


def describe_unmixing(settings_dict: dict) -> str:
    """How a slide was unmixed, in words, from its analysis settings (``to_dict()``).
    Settings without a read noise under ``'poisson'`` are from qdmed before Poisson maximum
    likelihood (2026-12), whose ``--poisson`` weighted by the observed counts."""
    if settings_dict.get("unmix_weights") != "poisson":
        return "plain NNLS"
    noise = settings_dict.get("read_noise_adu")
    if noise is None:
        return "Poisson-weighted NNLS (weights 1 / max(counts, 1), qdmed before 2026-12)"
    return f"Poisson maximum likelihood (read noise {float(noise):g} counts)"


def poisson_weights(abundances, endmembers, read_noise: float = DEFAULT_READ_NOISE
                    ) -> np.ndarray:
    """The weights ``1 / (A x + read_noise^2)`` at `abundances` (n_pixels, n_components):
    the inverse expected variance of each pixel's channels, shape (n_pixels, n_channels).
    At the Poisson maximum-likelihood solution the weighted NNLS with them returns it."""
    mu = np.asarray(abundances, dtype=np.float64) @ np.asarray(endmembers, np.float64).T
    return 1.0 / (np.maximum(mu, 0.0) + read_noise ** 2)


def neg_log_likelihood(y: np.ndarray, mu: np.ndarray, s: float) -> np.ndarray:
    """``-l`` per pixel (up to a constant) for counts `y` >= -s, expected counts `mu` >= 0
    and read variance `s`: ``sum_c (mu + s) - (y + s) log(mu + s)``."""
    return np.sum(mu + s - (y + s) * np.log(mu + s), axis=1)


def solve_poisson_ml(y: np.ndarray, a: np.ndarray, x: np.ndarray, read_noise: float,
                     weighted_nnls: Callable[[np.ndarray, np.ndarray], np.ndarray]
                     ) -> np.ndarray:
    """Poisson maximum-likelihood abundances from the start `x` (the unweighted NNLS
    solution, updated in place and returned).

    `weighted_nnls(z, w)` solves the weighted NNLS exactly for pixels `z` (float64) and
    weights `w`; `a` is the endmember matrix (n_channels, n_components)."""
    s = read_noise ** 2
    act = np.arange(y.shape[0])
    for _ in range(MAX_ITER):
        moving = []
        for i in range(0, act.size, _CHUNK):
            idx = act[i:i + _CHUNK]
            yi = np.maximum(y[idx].astype(np.float64), -s)
            x0 = x[idx]
            mu0 = x0 @ a.T
            v = np.maximum(yi + s, CURVATURE_FLOOR * s) / (mu0 + s) / (mu0 + s)
            d = weighted_nnls(mu0 - (mu0 - yi) / ((mu0 + s) * v), v) - x0
            ad = d @ a.T
            slope = np.sum((1.0 - (yi + s) / (mu0 + s)) * ad, axis=1)
            rounding = 64 * np.finfo(float).eps * np.sum(
                mu0 + s + np.abs((yi + s) * np.log(mu0 + s)), axis=1)
            # moving: a step that changes an expected count, or a decrease of -l beyond its
            # rounding (a dim channel's count moves by ~s a step, below the first test)
            big = (np.abs(ad).max(axis=1) > RTOL * (mu0.max(axis=1) + s)) | (-slope > rounding)
            t = np.ones(idx.size)  # the last (full) step of a pixel that stops
            t[big] = _armijo_steps(yi[big], mu0[big], ad[big], s, slope[big], rounding[big])
            x[idx] = np.maximum(x0 + t[:, None] * d, 0.0)  # convex combination: rounding only
            moving.append(idx[big])
        act = np.concatenate(moving)
        if not act.size:
            return x
    warn_not_converged(act.size, y.shape[0])
    return x


def warn_not_converged(count: int, n: int) -> None:
    """Warn that `count` of `n` pixels were still moving after :data:`MAX_ITER` steps."""
    warnings.warn(f"Poisson unmixing: {count} of {n} pixels still moved after {MAX_ITER} "
                  f"Newton steps (by more than {RTOL:g} of their largest expected count); "
                  f"their last step is kept.", QdmedWarning, stacklevel=2)


def _armijo_steps(y: np.ndarray, mu0: np.ndarray, ad: np.ndarray, s: float,
                  slope: np.ndarray, rounding: np.ndarray) -> np.ndarray:
    """Per pixel the largest ``t`` in 1, 1/2, 1/4, ... with ``-l(mu0 + t ad)`` at most
    ``-l(mu0) + 1e-4 t slope`` (``slope = g.d``, the directional derivative, < 0 for a
    descent). A slope within the rounding of ``-l`` cannot be tested: the full step is
    taken (near the solution, where the quadratic model is the likelihood's to rounding);
    an uphill one (an inexact step, which an exact solve never gives) is not taken."""
    f0 = neg_log_likelihood(y, mu0, s)
    t = np.where(slope > rounding, 0.0, 1.0)
    todo = np.flatnonzero(-slope > rounding)
    for _ in range(HALVINGS):
        mu = np.maximum(mu0[todo] + t[todo, None] * ad[todo], 0.0)
        fail = neg_log_likelihood(y[todo], mu, s) > f0[todo] + ARMIJO * t[todo] * slope[todo]
        todo = todo[fail]
        if not todo.size:
            break
        t[todo] *= 0.5
    return t


@lazy_kernel
def newton_kernel():
    """numba: the Newton iterations of :func:`solve_poisson_ml` for every pixel, each step's
    weighted NNLS solved in Gram form by Lawson-Hanson's active-set method as Bro and de
    Jong arrange it (FNNLS: columns normalised, Cholesky of the passive block; J.
    Chemometrics 11:393, 1997, doi:10.1002/(SICI)1099-128X(199709/10)11:5<393::AID-CEM483>3.0.CO;2-L).
    The numpy loop is the reference; this kernel serves panels whose condition number the
    Gram form's rounding allows (``unmix_nnls`` checks them in channel space above
    ``RECHECK_COND`` instead). Returns the number of pixels still moving after
    ``max_iter`` steps."""
    @njit_cached(nogil=True)
    def kernel(y, a, x, s, rtol, gtol, max_iter):  # pragma: no cover - compiled
        n, c = y.shape
        k = a.shape[1]
        eps = 2.220446049250313e-16
        yy = np.empty(c)
        mu = np.empty(c)
        v = np.empty(c)
        z = np.empty(c)
        ad = np.empty(c)
        g = np.empty((k, k))
        b = np.empty(k)
        dn = np.empty(k)
        xs = np.empty(k)
        sol = np.empty(k)
        grad = np.empty(k)
        chol = np.empty((k, k))
        rhs = np.empty(k)
        pidx = np.empty(k, np.int64)
        passive = np.zeros(k, np.bool_)
        left = 0
        for p in range(n):
            for ch in range(c):
                yy[ch] = max(np.float64(y[p, ch]), -s)
            it = 0
            moving = True
            while it < max_iter:
                it += 1
                mumax = 0.0
                for ch in range(c):
                    m = 0.0
                    for j in range(k):
                        m += a[ch, j] * x[p, j]
                    m = max(m, 0.0)
                    mu[ch] = m
                    mumax = max(mumax, m)
                    v[ch] = max(yy[ch] + s, CURVATURE_FLOOR * s) / (m + s) / (m + s)
                    z[ch] = m - (m - yy[ch]) / ((m + s) * v[ch])
                tol = 0.0
                for ch in range(c):
                    tol += np.sqrt(v[ch]) * abs(z[ch])
                tol *= gtol
                for i in range(k):
                    bi = 0.0
                    for ch in range(c):
                        bi += a[ch, i] * v[ch] * z[ch]
                    b[i] = bi
                    for j in range(i, k):
                        gij = 0.0
                        for ch in range(c):
                            gij += a[ch, i] * v[ch] * a[ch, j]
                        g[i, j] = gij
                        g[j, i] = gij
                for i in range(k):
                    dn[i] = np.sqrt(g[i, i])
                for i in range(k):
                    b[i] /= dn[i]
                    for j in range(k):
                        g[i, j] /= dn[i] * dn[j]
                # Lawson-Hanson on (g, b): xs >= 0 minimising xs'g xs / 2 - b'xs
                for i in range(k):
                    xs[i] = 0.0
                    passive[i] = False
                    grad[i] = b[i]
                for _outer in range(3 * k + 10):
                    jmax = -1
                    wmax = tol
                    for j in range(k):
                        if not passive[j] and grad[j] > wmax:
                            wmax = grad[j]
                            jmax = j
                    if jmax < 0:
                        break
                    passive[jmax] = True
                    for _inner in range(3 * k + 10):
                        npas = 0
                        for j in range(k):
                            if passive[j]:
                                pidx[npas] = j
                                npas += 1
                        # Cholesky of g[P, P], then sol[P] = g[P, P]^-1 b[P]
                        for r in range(npas):
                            for q in range(r + 1):
                                acc = g[pidx[r], pidx[q]]
                                for t in range(q):
                                    acc -= chol[r, t] * chol[q, t]
                                if r == q:
                                    chol[r, r] = np.sqrt(max(acc, 1e-300))
                                else:
                                    chol[r, q] = acc / chol[q, q]
                        for r in range(npas):
                            acc = b[pidx[r]]
                            for t in range(r):
                                acc -= chol[r, t] * rhs[t]
                            rhs[r] = acc / chol[r, r]
                        for r in range(npas - 1, -1, -1):
                            acc = rhs[r]
                            for t in range(r + 1, npas):
                                acc -= chol[t, r] * rhs[t]
                            rhs[r] = acc / chol[r, r]
                        for j in range(k):
                            sol[j] = 0.0
                        for r in range(npas):
                            sol[pidx[r]] = rhs[r]
                        alpha = 2.0
                        for r in range(npas):
                            j = pidx[r]
                            if sol[j] <= 0.0:
                                alpha = min(alpha, xs[j] / (xs[j] - sol[j]))
                        if alpha > 1.0:  # every passive component positive
                            for j in range(k):
                                xs[j] = sol[j]
                            break
                        for r in range(npas):  # to the first component reaching 0
                            j = pidx[r]
                            nv = xs[j] + alpha * (sol[j] - xs[j])
                            if nv <= 8 * eps * (abs(xs[j]) + abs(sol[j])):
                                nv = 0.0
                                passive[j] = False
                            xs[j] = nv
                    for i in range(k):
                        acc = b[i]
                        for j in range(k):
                            acc -= g[i, j] * xs[j]
                        grad[i] = acc
                # the Newton step d = xs / dn - x, and how far it moves the expected counts
                step = 0.0
                for ch in range(c):
                    m = 0.0
                    for j in range(k):
                        m += a[ch, j] * (xs[j] / dn[j] - x[p, j])
                    ad[ch] = m
                    step = max(step, abs(m))
                t = 1.0
                f0 = 0.0
                slope = 0.0
                rnd = 0.0
                for ch in range(c):
                    lg = np.log(mu[ch] + s)
                    f0 += mu[ch] + s - (yy[ch] + s) * lg
                    rnd += mu[ch] + s + abs((yy[ch] + s) * lg)
                    slope += (1.0 - (yy[ch] + s) / (mu[ch] + s)) * ad[ch]
                rnd *= 64 * eps
                if step > rtol * (mumax + s) or -slope > rnd:  # as solve_poisson_ml
                    if slope > rnd:  # uphill: an inexact step (never from an exact solve)
                        t = 0.0
                    elif -slope > rnd:
                        for _h in range(HALVINGS):
                            f1 = 0.0
                            for ch in range(c):
                                m = max(mu[ch] + t * ad[ch], 0.0)
                                f1 += m + s - (yy[ch] + s) * np.log(m + s)
                            if f1 <= f0 + ARMIJO * t * slope:
                                break
                            t *= 0.5
                else:
                    moving = False
                for j in range(k):
                    x[p, j] = max(x[p, j] + t * (xs[j] / dn[j] - x[p, j]), 0.0)
                if not moving:
                    break
            if moving:
                left += 1
        return left

    return kernel
