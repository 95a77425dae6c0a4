"""Exact per-pixel non-negative least squares (NNLS) spectral unmixing.

Every pixel ``y`` (``n_channels`` detector counts) is modelled as a non-negative mixture of
the columns of the endmember matrix ``A`` (``n_channels x n_components``, each column the
reference spectrum of one quantum dot or of autofluorescence integrated over the detection
bands) and solved exactly:

.. math:: \\hat x = \\arg\\min_{x \\ge 0} \\lVert A x - y \\rVert_2^2 .

The solver works in the Gram form (``G = A^T A``, ``b = A^T y``), so after one pass over the
channels the per-pixel cost is O(K^2) and independent of the channel count. Because ``K`` is
small (at most 12), the inverse of ``G_SS`` is pre-factorised for every passive set ``S``
(all ``2^K`` subsets). For a pixel and a candidate passive set the Karush-Kuhn-Tucker (KKT)
vector is then one ``K x K`` matrix-vector product, and each pixel is solved by block
principal pivoting with Murty's finite backup rule, falling back to checking every passive
set (which always terminates) if pivoting has not converged after a fixed number of steps.

Two implementations give the same answer: a vectorised numpy one that groups pixels sharing a
passive set (the FCNNLS idea of Van Benthem & Keenan) and is the reference, and a numba
kernel, compiled lazily on first use and parallel over chunks of pixels, that is the fast
path (explicitly vectorised, one 8-lane vector per pixel, for up to 8 components; when the
channel count is a multiple of 8 the unconstrained solutions are computed eight pixels at a
time, one per lane; see :mod:`qdmed.imaging._simd`). Weighted problems (per-pixel Gram
matrices) use the numpy path; Poisson maximum likelihood (:mod:`qdmed.imaging._poisson`) takes
Newton steps, each a weighted NNLS, compiled or on that path.

Public functions: :func:`unmix_nnls`, :func:`unmix_lstsq`, :func:`unmix_block`,
:func:`kkt_violation`; result type :class:`UnmixResult`.

References
----------
.. [1] C. L. Lawson, R. J. Hanson (1974). Solving Least Squares Problems, ch. 23.
   Prentice-Hall. doi:10.1137/1.9781611971217
.. [2] R. Bro, S. De Jong (1997). A fast non-negativity-constrained least squares
   algorithm. J. Chemometrics 11(5):393-401. doi:10.1002/(SICI)1099-128X(199709/10)11:5<393::AID-CEM483>3.0.CO;2-L
.. [3] M. H. Van Benthem, M. R. Keenan (2004). Fast algorithm for the solution of
   large-scale non-negativity-constrained least squares problems. J. Chemometrics
   18(10):441-450. doi:10.1002/cem.889
.. [4] J. Kim, H. Park (2011). Fast nonnegative matrix factorization: an active-set-like
   method and comparisons. SIAM J. Sci. Comput. 33(6):3261-3281. doi:10.1137/110821172
.. [5] L. F. Portugal, J. J. Judice, L. N. Vicente (1994). A comparison of block pivoting
   and interior-point algorithms for linear least squares problems with nonnegative
   variables. Math. Comput. 63(208):625-643. doi:10.1090/S0025-5718-1994-1250776-4
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qdmed.errors import InputError
from qdmed.imaging import _poisson
from qdmed.imaging._jit import generated_module, lazy_kernel, njit_cached, numba_available

__all__ = ["MAX_COMPONENTS", "UnmixResult", "kkt_violation", "unmix_block", "unmix_lstsq",
           "unmix_nnls"]

#: Largest number of components accepted (``2^K`` passive sets are pre-factorised).
MAX_COMPONENTS = 12
#: Largest K served by the SIMD kernel (one 8-lane vector per K-vector).
_SIMD_MAX_K = 8

_METHODS = ("auto", "numba", "numpy")
_DEVICES = ("cpu", "gpu")
_BACKUP_P = 3  # Judice-Pires: full exchanges allowed without progress before Murty's rule
_MIN_PIXELS_PER_THREAD = 8192  # smallest piece of a parallel numba call (_ranges)
_PIECES_PER_THREAD = 4  # pieces claimed dynamically: a late or busy thread takes fewer
_CHUNK = 1 << 16  # pixels per BLAS product: the rows stay in cache for the kernel (measured)
_LOCKSTEP_PASSES = 6  # full-exchange passes over all infeasible pixels before the safeguard
_NATIVE_DTYPES = (np.float64, np.float32, np.uint16, np.uint8)


def _max_iter(k: int) -> int:
    return 3 * k + 10


# --------------------------------------------------------------------------------------
# Validation and pre-factorisation
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Prepared:
    """Per-endmember-matrix tables (cached)."""

    a: np.ndarray  # (C, K) float64 endmembers
    norms: np.ndarray  # (K,) column 2-norms
    an: np.ndarray  # (C, K) column-normalised endmembers A_n
    pn: np.ndarray  # (C, K) A_n G^-1: unconstrained solution z = y @ pn
    gram: np.ndarray  # (K, K) normalised Gram matrix (unit diagonal)
    t: np.ndarray  # (2^K, K, K): z = b @ t[m]  (KKT vector of passive set m)
    u: np.ndarray  # (2^K, K, K): z = z0 @ u[m] = b @ t[m], z0 the unconstrained solution
    d: np.ndarray  # (2^K, K): 1/norm_k on the passive set, 0 off it
    members: np.ndarray  # (2^K, K) int64: indices in passive set m (first nmem[m] valid)
    nmem: np.ndarray  # (2^K,) int64: size of passive set m
    rtol: float  # relative tolerance of the KKT sign tests
    smax: float  # largest ||y||_1 whose products cannot overflow (larger pixels are refused)
    cond: float  # condition number of the column-normalised endmember matrix
    # the SIMD kernel's pn, u, d with every K-vector padded to 8 lanes, flattened (K <= 8)
    simd: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None


_CACHE: OrderedDict[tuple, Any] = OrderedDict()  # tables and channel selections
_MISS = object()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 16


def _check_endmembers(endmembers: Any) -> np.ndarray:
    a = np.asarray(endmembers)
    if a.ndim != 2:
        raise InputError(
            f"endmembers must be a 2-D array (n_channels, n_components); got shape {a.shape}.")
    if a.dtype.kind not in "fiu":
        raise InputError(f"endmembers must be a real numeric array; got dtype {a.dtype}.")
    a = np.ascontiguousarray(a, dtype=np.float64)
    return a


def _check_endmember_values(a: np.ndarray) -> np.ndarray:
    """The checks of an endmember matrix beyond its shape and dtype (run once per matrix:
    a cached one passed them)."""
    c, k = a.shape
    if k < 1 or c < 1:
        raise InputError(f"endmembers must have at least one channel and one component; "
                         f"got shape {a.shape}.")
    if k > MAX_COMPONENTS:
        raise InputError(f"endmembers has {k} components; at most {MAX_COMPONENTS} are "
                         f"supported (2^K passive sets are pre-factorised).")
    if not np.all(np.isfinite(a)):
        raise InputError(f"endmembers must be finite; got {int(np.sum(~np.isfinite(a)))} "
                         f"non-finite entries.")
    if np.any(a < 0):
        raise InputError(f"endmembers must be non-negative (spectra integrated over detection "
                         f"bands); got minimum {a.min():.6g}.")
    return a


def _degeneracy_message(an: np.ndarray, cond: float, max_condition: float,
                        names=None) -> str:
    c, k = an.shape
    cos = an.T @ an
    pairs = [(abs(cos[i, j]), i, j) for i in range(k) for j in range(i + 1, k)]
    pairs = sorted((p for p in pairs if p[0] > 0.99), reverse=True)
    if pairs:
        what = "; ".join((f"columns {i} and {j}" if names is None else
                          f"{names[i]} and {names[j]}") + f" (cosine {v:.6f})"
                         for v, i, j in pairs[:5])
        what = f"nearly collinear: {what}"
    else:
        _, _, vt = np.linalg.svd(an, full_matrices=True)
        v = np.abs(vt[-1]) if k <= c else np.abs(vt[min(c, k) - 1])
        cols = [int(i) for i in np.flatnonzero(v > 0.2 * v.max())]
        what = (f"columns {cols}" if names is None else ", ".join(str(names[i]) for i in cols)) \
            + " are nearly linearly dependent"
    extra = f" (only {c} channels for {k} components)" if k > c else ""
    if names is None:
        return (f"endmembers are rank-deficient or degenerate{extra}: condition number of "
                f"the column-normalised matrix is {cond:.3g}, above max_condition="
                f"{max_condition:.3g}; {what}.")
    return (f"the panel's spectra cannot be unmixed{extra}: {what}; condition number of the "
            f"column-normalised mixing matrix {cond:.3g} > {max_condition:.3g}. Give these "
            f"markers labels of different colours, or check the controls they were measured "
            f"from.")


def _normalised_condition(a: np.ndarray, names=None) -> tuple[np.ndarray, np.ndarray, float]:
    """Column norms, column-normalised endmembers and their condition number (inf when
    rank-deficient); an all-zero column is refused (by its name, given `names`)."""
    c, k = a.shape
    norms = np.sqrt(np.sum(a * a, axis=0))
    zero = np.flatnonzero(norms == 0)
    if zero.size and names is None:
        raise InputError(f"endmembers are degenerate: column(s) {zero.tolist()} are all zero.")
    if zero.size:
        raise InputError("the panel's spectra cannot be unmixed: "
                         + ", ".join(str(names[i]) for i in zero)
                         + " give no signal in any channel")
    an = a / norms
    sv = np.linalg.svd(an, compute_uv=False)
    return norms, an, float(np.inf) if k > c or sv[-1] == 0 else float(sv[0] / sv[-1])


def check_unmixable(endmembers, names, max_condition: float = 1e4) -> None:
    """Refuse, naming the components (`names`), endmembers that :func:`unmix_nnls` would
    refuse with the same `max_condition` (its default): non-finite, negative, all-zero,
    nearly collinear or linearly dependent columns."""
    a = _check_endmembers(endmembers)
    if len(names) != a.shape[1]:
        raise InputError(f"{len(names)} names for {a.shape[1]} endmember columns")
    if _selection_columns(a) is not None:  # channels taken as they are (any number)
        return
    _, an, cond = _normalised_condition(_check_endmember_values(a), names)
    if not cond <= max_condition:
        raise InputError(_degeneracy_message(an, cond, max_condition, names))


def _check_max_condition(max_condition: float) -> None:
    if not (np.isfinite(max_condition) and max_condition >= 1):
        raise InputError(f"max_condition must be a finite number >= 1; got {max_condition}.")


def _cached(key: tuple, build):
    """The value cached under `key` (an endmember matrix's shape and bytes, plus what else
    the value depends on), built by ``build()`` on a miss; the last ``_CACHE_SIZE`` kept."""
    with _CACHE_LOCK:
        hit = _CACHE.get(key, _MISS)
        if hit is not _MISS:  # the same bytes passed every check before
            _CACHE.move_to_end(key)
            return hit
    value = build()
    with _CACHE_LOCK:
        _CACHE[key] = value
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return value


def _prepare(endmembers: Any, max_condition: float) -> _Prepared:
    a = _check_endmembers(endmembers)
    _check_max_condition(max_condition)
    return _cached(("tables", a.shape, a.tobytes(), float(max_condition)),
                   lambda: _build_tables(_check_endmember_values(a), max_condition))


def _build_tables(a: np.ndarray, max_condition: float) -> _Prepared:
    a = np.array(a, dtype=np.float64, copy=True)  # frozen below: never freeze the caller's array
    c, k = a.shape
    norms, an, cond = _normalised_condition(a)
    if not cond <= max_condition:
        raise InputError(_degeneracy_message(an, cond, max_condition))
    gram = an.T @ an
    nsets = 1 << k
    members = (np.arange(nsets)[:, None] >> np.arange(k)) & 1  # (2^K, K)
    members = members.astype(bool)
    sizes = members.sum(axis=1)
    minv = np.zeros((nsets, k, k))
    for s in range(1, k + 1):  # batched inverse of every G_SS of size s
        ms = np.flatnonzero(sizes == s)
        idx = np.array([np.flatnonzero(members[m]) for m in ms])  # (n_s, s)
        sub = gram[idx[:, :, None], idx[:, None, :]]
        inv = np.linalg.inv(sub)
        minv[ms[:, None, None], idx[:, :, None], idx[:, None, :]] = inv
    # KKT vector for passive set S: z_S = x_S = Minv_S b on S, z = g = G x - b off S.
    gx = np.einsum("ij,mjl->mil", gram, minv) - np.eye(k)  # (2^K, K, K): g = gx @ b
    tk = np.where(members[:, :, None], minv, gx)  # rows: z_i = tk[m, i, :] @ b
    t = np.ascontiguousarray(np.transpose(tk, (0, 2, 1)))  # z = b @ t[m]
    d = np.where(members, 1.0 / norms, 0.0)
    nmem = sizes.astype(np.int64)
    memidx = np.zeros((nsets, k), dtype=np.int64)
    for m in range(nsets):
        memidx[m, : nmem[m]] = np.flatnonzero(members[m])
    pn = np.ascontiguousarray(an @ minv[-1])
    u = np.ascontiguousarray(np.einsum("ij,mjl->mil", gram, t))  # b = z0 @ G, G symmetric
    u[-1] = np.eye(k)  # G G^-1, exactly: the full set's step returns z0 unchanged
    # sign tests must ignore rounding noise, which grows with cond(G) = cond(A_n)^2
    rtol = max(1e-12, 16 * np.finfo(float).eps * cond * cond)
    an = np.ascontiguousarray(an)
    simd = _padded_tables(pn, u, d) if k <= _SIMD_MAX_K else ()
    for arr in (a, norms, an, pn, gram, t, u, d, memidx, nmem, *simd):
        arr.setflags(write=False)
    return _Prepared(a=a, norms=norms, an=an, pn=pn, gram=gram, t=t, u=u, d=d, members=memidx,
                     nmem=nmem, rtol=float(rtol), smax=_largest_safe_sum(pn, t, u, d),
                     cond=cond, simd=simd or None)


def _largest_safe_sum(pn, t, u, d) -> float:
    """The largest ``||y||_1`` for which no product of the solvers can overflow: every
    intermediate is bounded by ``||y||_1`` times K times the largest table entries it goes
    through (z0 = y pn, w = z0 U, or b = A_n^T y with ``|A_n| <= 1`` and z = b T; then
    x = w d), with a margin of 64. Pixels above it are refused as overflowing, rather than
    returned as inf, or as 0 where an overflow made a NaN that max(., 0) dropped (found:
    a count of 1e308 in a channel whose endmember entry is 0.05 gave an abundance of inf).
    For any panel of real spectra it lies far above any detector's counts."""
    k = pn.shape[1]
    scale = k * max(float(np.abs(pn).max()) * float(np.abs(u).max()), float(np.abs(t).max()))
    scale *= max(1.0, float(np.abs(d).max()))
    return float(np.finfo(np.float64).max / (64.0 * max(scale, 1.0)))


def _padded_tables(pn, u, d) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``pn``, ``u`` and ``d`` with every K-vector padded to 8 lanes, flattened: the rows the
    SIMD kernel loads as one vector each."""
    c, k = pn.shape
    pn8 = np.zeros((c, 8))
    pn8[:, :k] = pn
    u8 = np.zeros((1 << k, k, 8))
    u8[:, :, :k] = u
    d8 = np.zeros((1 << k, 8))
    d8[:, :k] = d
    return pn8.ravel(), u8.ravel(), d8.ravel()


def _check_pixels(pixels: Any, n_channels: int, name: str = "pixels") -> np.ndarray:
    y = np.asarray(pixels)
    if y.dtype.kind not in "fiu":
        raise InputError(f"{name} must be a real numeric array; got dtype {y.dtype}.")
    if y.ndim != 2 or y.shape[1] != n_channels:
        raise InputError(f"{name} must have shape (n_pixels, n_channels) with n_channels "
                         f"matching endmembers; got {name} shape {y.shape} and endmembers "
                         f"with {n_channels} channels.")
    if y.dtype.type not in _NATIVE_DTYPES:
        y = y.astype(np.float64)
    elif not y.dtype.isnative:  # big-endian (tifffile keeps a big-endian TIFF's byte order)
        y = y.astype(y.dtype.newbyteorder("="))
    return np.ascontiguousarray(y)


def _raise_nonfinite(count: int, n: int) -> None:
    raise InputError(f"pixels contain {count} NaN or infinite pixel(s) out of {n} (or values "
                     f"so large that the products overflow); mask or fill them before "
                     f"unmixing (e.g. numpy.nan_to_num, or 0 in the exporter for pixels "
                     f"outside the scan).")


def _check_nonfinite(y: np.ndarray) -> None:
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y).all(axis=1)
        count = int(bad.sum())
        if count:
            _raise_nonfinite(count, y.shape[0])


def _check_overflow(z, tol, xp=np, tmax=np.inf) -> None:
    """Refuse finite pixels whose products overflowed (their unconstrained solution ``z`` or
    their tolerance is not finite) or could (tolerance above `tmax`, ``rtol`` times the
    tables' :func:`_largest_safe_sum`), as the compiled kernels do, instead of returning
    inf or NaN abundances."""
    bad = ~((tol <= tmax) & xp.all(xp.isfinite(z), axis=1))
    count = int(bad.sum())
    if count:
        _raise_nonfinite(count, z.shape[0])


def _is_poisson(weights: Any) -> bool:
    """True for ``weights='poisson'``; another string is refused."""
    if not isinstance(weights, str):
        return False
    if weights != "poisson":
        raise InputError(f"weights must be None, 'poisson' or an array; got {weights!r}.")
    return True


def _resolve_weights(weights: Any, y: np.ndarray, a: np.ndarray,
                     x: np.ndarray | None = None, read_noise=None) -> np.ndarray | None:
    """The weight array of `weights` for the pixels `y` and endmembers `a`; ``'poisson'``
    takes them at the solution `x` (the inverse expected variances there)."""
    if _is_poisson(weights):
        return _poisson.poisson_weights(x, a, _poisson.read_noise_for(True, read_noise))
    _poisson.read_noise_for(False, read_noise)
    if weights is None:
        return None
    w = np.asarray(weights)
    if w.dtype.kind not in "fiu":
        raise InputError(f"weights must be a real numeric array; got dtype {w.dtype}.")
    try:
        w = np.broadcast_to(w.astype(np.float64), y.shape)
    except ValueError:
        raise InputError(f"weights shape {np.shape(weights)} does not broadcast to pixels "
                         f"shape {y.shape} (endmembers shape {a.shape}).") from None
    if not np.all(np.isfinite(w)) or not np.all(w > 0):
        raise InputError(f"weights must be finite and strictly positive; got minimum "
                         f"{np.nanmin(w):.6g}.")
    return w


def _resolve_method(method: str, weighted: bool) -> str:
    if method not in _METHODS:
        raise InputError(f"method must be one of {_METHODS}; got {method!r}.")
    if weighted:
        return "numpy"  # per-pixel Gram matrices: numpy path only
    if method == "numpy":
        return "numpy"
    ok = numba_available()
    if method == "numba" and not ok:
        raise InputError("method='numba' requires numba (pip install numba); use "
                         "method='numpy' or 'auto'.")
    return "numba" if ok else "numpy"


# --------------------------------------------------------------------------------------
# numpy reference: vectorised block principal pivoting, pixels grouped by passive set
# --------------------------------------------------------------------------------------


def _bpp_driver(n: int, k: int, zfun, tol, xp, max_iter: int, tmax: float = np.inf):
    """Block principal pivoting for ``n`` pixels; returns (z, masks) at the solution.

    ``zfun(idx, masks)`` returns the KKT vector ``z`` (n_idx, K) of the pixels ``idx`` for
    the given passive-set bit masks: ``x_S`` on the passive set, the gradient
    ``G x - b`` off it (both in normalised units). KKT holds iff ``z >= -tol``.
    """
    full = (1 << k) - 1
    bits = xp.asarray(1 << np.arange(k, dtype=np.int64))
    z_out = xp.zeros((n, k))
    m_out = xp.full(n, full, dtype=np.int64)
    act = xp.arange(n)
    masks = xp.full(n, full, dtype=np.int64)
    best = xp.full(n, k + 1, dtype=np.int64)
    back = xp.full(n, _BACKUP_P, dtype=np.int64)
    for it in range(max_iter):
        if act.shape[0] == 0:
            break
        if it == 0:  # the unconstrained solution of every pixel: refuse overflowed ones
            with np.errstate(over="ignore", invalid="ignore"):
                z = zfun(act, masks)
            _check_overflow(z, tol, xp, tmax)
        else:
            z = zfun(act, masks)
        infeas = z < -tol[act, None]
        ninf = infeas.sum(axis=1)
        done = ninf == 0
        z_out[act[done]] = z[done]
        m_out[act[done]] = masks[done]
        keep = ~done
        act, masks, best, back = act[keep], masks[keep], best[keep], back[keep]
        infeas, ninf = infeas[keep], ninf[keep]
        infbits = (infeas * bits).sum(axis=1)
        improved = ninf < best
        exchange_all = improved | (back > 0)
        back = xp.where(improved, _BACKUP_P, xp.where(back > 0, back - 1, back))
        best = xp.where(improved, ninf, best)
        highest = (k - 1) - xp.argmax(infeas[:, ::-1], axis=1)  # Murty: largest index
        masks = masks ^ xp.where(exchange_all, infbits, bits[highest])
    if act.shape[0]:  # not converged: check every passive set, keep the least violation
        best_v = xp.full(act.shape[0], np.inf)
        best_z = xp.zeros((act.shape[0], k))
        best_m = xp.full(act.shape[0], full, dtype=np.int64)
        for m in range(full + 1):
            mm = xp.full(act.shape[0], m, dtype=np.int64)
            z = zfun(act, mm)
            v = xp.max(-z, axis=1)
            better = v < best_v
            best_v = xp.where(better, v, best_v)
            best_z = xp.where(better[:, None], z, best_z)
            best_m = xp.where(better, m, best_m)
        z_out[act] = best_z
        m_out[act] = best_m
    return z_out, m_out


def _solve_shared_numpy(y: np.ndarray, prep: _Prepared, xp=np) -> Any:
    k = prep.gram.shape[0]
    yf = xp.asarray(y, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):  # refused in _bpp_driver
        b = yf @ xp.asarray(prep.an)  # (n, K) normalised b = A_n^T y
        tol = prep.rtol * xp.sum(xp.abs(yf), axis=1)
    t = xp.asarray(prep.t)

    def zfun(idx, masks):
        ba = b[idx]
        if int(masks.shape[0]) and bool(xp.all(masks == masks[0])):
            return ba @ t[int(masks[0])]
        order = xp.argsort(masks, kind="stable")
        ms = masks[order]
        uniq, start = np.unique(_to_numpy(ms), return_index=True)
        stop = np.append(start[1:], ms.shape[0])
        z = xp.empty((idx.shape[0], k))
        for m, s, e in zip(uniq.tolist(), start.tolist(), stop.tolist(), strict=True):
            sel = order[s:e]
            z[sel] = ba[sel] @ t[m]
        return z

    z, masks = _bpp_driver(y.shape[0], k, zfun, tol, xp, _max_iter(k),
                           prep.rtol * prep.smax)
    d = xp.asarray(prep.d)
    return xp.maximum(z, 0.0) * d[masks]


class SingularWeightsError(InputError):
    """A pixel's weights make its weighted endmembers numerically singular."""


def _solve_weighted_numpy(y: np.ndarray, w: np.ndarray, prep: _Prepared) -> np.ndarray:
    k = prep.gram.shape[0]
    sw = np.sqrt(w)
    aw = sw[:, :, None] * prep.a[None, :, :]  # (n, C, K)
    g = np.einsum("nck,ncl->nkl", aw, aw)
    with np.errstate(over="ignore", invalid="ignore"):  # refused in _bpp_driver
        b = np.einsum("nck,nc->nk", aw, sw * y)
        dn = np.sqrt(np.einsum("nkk->nk", g))  # per-pixel weighted column norms
        g = g / (dn[:, :, None] * dn[:, None, :])
        b = b / dn
        tol = prep.rtol * np.sum(np.abs(sw * y), axis=1)
    eye = np.eye(k, dtype=bool)
    bitk = np.arange(k)

    def zfun(idx, masks):
        s = ((masks[:, None] >> bitk) & 1).astype(bool)
        ss = s[:, :, None] & s[:, None, :]
        gi = g[idx]
        mat = np.where(ss, gi, eye)  # G_SS on the passive set, identity elsewhere
        rhs = np.where(s, b[idx], 0.0)
        try:
            x = np.linalg.solve(mat, rhs[:, :, None])[:, :, 0]
        except np.linalg.LinAlgError:
            span = float(np.max(np.log10(w.max(axis=1) / w.min(axis=1))))
            raise SingularWeightsError(
                f"the weights make a pixel's weighted endmembers singular: one channel's "
                f"weight dominates (weights span up to 1e{span:.0f} within a pixel); keep "
                f"them within ~1e8 of each other") from None
        grad = np.einsum("nkl,nl->nk", gi, x) - b[idx]
        return np.where(s, x, grad)

    z, masks = _bpp_driver(y.shape[0], k, zfun, tol, np, _max_iter(k))
    s = ((masks[:, None] >> bitk) & 1).astype(bool)
    with np.errstate(over="ignore", invalid="ignore"):
        x = np.where(s, np.maximum(z, 0.0), 0.0) / dn
    _check_nonfinite(x)  # per-pixel Gram matrices, no table bound: refused if beyond float64
    return x


def _to_numpy(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


# --------------------------------------------------------------------------------------
# numba kernel (compiled lazily, on first call)
# --------------------------------------------------------------------------------------

# ("scalar", K, 0) or ("simd", K, C) -> compiled kernel
_KERNELS: dict[tuple[str, int, int], Any] = {}
_KERNEL_LOCK = threading.Lock()
_EXECUTOR: list = []


def _n_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def _executor():
    with _KERNEL_LOCK:
        if not _EXECUTOR:
            from concurrent.futures import ThreadPoolExecutor

            _EXECUTOR.append(ThreadPoolExecutor(max_workers=_n_threads(),
                                                thread_name_prefix="qdmed-nnls"))
        return _EXECUTOR[0]


def _ranges(n: int) -> list[int]:
    """Edges of the pixel pieces run in parallel: one piece when there is one thread or
    fewer than ``2 * _MIN_PIXELS_PER_THREAD`` pixels, else up to ``_PIECES_PER_THREAD``
    pieces per thread of at least ``_MIN_PIXELS_PER_THREAD`` pixels each (see
    :func:`_run_ranges`)."""
    threads = _n_threads()
    pieces = 1 if threads == 1 else min(_PIECES_PER_THREAD * threads,
                                        max(1, n // _MIN_PIXELS_PER_THREAD))
    return [n * i // pieces for i in range(pieces + 1)]  # Python ints: no numpy call


def _run_ranges(kernel, arg_lists: list[tuple]) -> list:
    """``[kernel(*args) for args in arg_lists]``, the pieces claimed one at a time by the
    calling thread and pool threads (the kernels are nogil); results in input order.

    The calling thread starts at once and waits only for pieces another thread has
    claimed, never for a pool thread to wake up. A fixed split (one range per thread) did
    wait: waking an idle pool thread took ~0.15 ms on a 2-core virtual machine (median;
    a 100,000-pixel call takes 1-2 ms), and once, with the other core busy, a call took
    850 ms instead of 2 (measured). The first exception raised by a piece is re-raised
    here."""
    n = len(arg_lists)
    if n == 1:
        return [kernel(*arg_lists[0])]
    out: list = [None] * n
    errors: list[BaseException] = []
    claim = threading.Lock()
    finished = threading.Semaphore(0)
    counter = iter(range(n))

    def work():
        while True:
            with claim:
                i = next(counter, None)
            if i is None:
                return
            try:
                out[i] = kernel(*arg_lists[i])
            except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
                errors.append(exc)
            finally:
                finished.release()

    pool = _executor()
    for _ in range(min(_n_threads(), n) - 1):
        try:
            pool.submit(work)
        except RuntimeError:  # the pool is shut down (interpreter exit): run them here
            break
    work()
    for _ in range(n):
        finished.acquire()
    if errors:
        raise errors[0]
    return out


def _numba_kernel(k: int, kind: str = "scalar", c: int = 0):
    """The compiled kernel of ``kind`` ('scalar' or 'simd') for ``k`` components (and, for
    'simd', ``c`` channels), built on first use, once per process."""
    key = (kind, k, c if kind == "simd" else 0)
    with _KERNEL_LOCK:
        if key not in _KERNELS:
            _KERNELS[key] = _build_simd_kernel(k, c) if kind == "simd" else \
                _build_numba_kernel(k)
        return _KERNELS[key]


# Template of the numba kernel for a fixed K; the @...@ markers expand to one line per
# component, so that every K-vector lives in K scalar locals (registers) rather than arrays.
# The kernel receives the unconstrained solutions ``z0 = y @ (A_n G^-1)`` of a chunk of pixels
# (one BLAS product, computed by the caller) and only pivots. Candidate KKT vectors come
# straight from ``z0``: ``z = z0 @ U_S`` with ``U_S = G T_S`` pre-computed.
#
# Why the pivoting is done in passes rather than pixel by pixel: each block-principal-pivoting
# step depends on the previous one (sign test -> passive set -> table row -> K x K product),
# so a per-pixel loop is latency-bound and its exit branch is unpredictable; measured, that
# cost ~45 ns per pixel for ~1.3 steps of ~8 ns each. Instead every pixel takes the first
# full-exchange step in lockstep with the others: one pass over the list of still-infeasible
# pixels per step (independent pixels overlap in the CPU pipeline, and the list is compacted
# without branches). Pixels still infeasible after LOCK passes (well under 1 % in practice) get
# the safeguarded scalar pivoting from scratch: Murty's single-exchange backup rule, then, if
# needed, a check of every passive set, which always terminates.
_KERNEL_SOURCE = """
def kernel(zin, y, u, d, rtol, smax, max_iter, x):
    n = zin.shape[0]
    c = y.shape[1]
    full = (1 << K) - 1
    bad = 0
    la = np.empty(n, dtype=np.int64)  # pixels still infeasible
    ma = np.empty(n, dtype=np.int64)  # their next passive set
    ta = np.empty(n)  # their (negative) tolerance
    na = 0
    dm = d[full]
    for p in range(n):
        zp = zin[p]
        xp = x[p]
        @Z_LOAD@
        s = @ABS@
        if not (s < np.inf):  # NaN or infinite pixel value
            bad += 1
            for i in range(K):
                xp[i] = np.nan
            continue
        yp = y[p]
        s = 0.0
        for ch in range(c):  # tolerance scale ||y||_1 (the row is still in cache)
            s += abs(np.float64(yp[ch]))
        tol = -rtol * s
        if not (s <= smax):  # so large that the pivoting's products could overflow
            bad += 1
            for i in range(K):
                xp[i] = np.nan
            continue
        @W_EQ_Z@
        inf = @INF@
        @X_STORE@
        la[na] = p
        ma[na] = full ^ inf
        ta[na] = tol
        na += np.int64(inf != 0)
    for _ in range(LOCK):
        if na == 0:
            break
        nb = 0
        for q in range(na):
            p = la[q]
            m = ma[q]
            tol = ta[q]
            zp = zin[p]
            @Z_LOAD@
            um = u[m]
            @W_BLOCK@
            inf = @INF@
            dm = d[m]
            xp = x[p]
            @X_STORE@
            la[nb] = p
            ma[nb] = m ^ inf
            ta[nb] = tol
            nb += np.int64(inf != 0)
        na = nb
    for q in range(na):  # safeguarded block principal pivoting, from the full set
        p = la[q]
        tol = ta[q]
        zp = zin[p]
        @Z_LOAD@
        @W_EQ_Z@
        m = full
        inf = @INF@
        best = K + 1
        back = BACKUP
        converged = False
        for _ in range(max_iter):
            ninf = @NINF@
            if ninf < best:
                best = ninf
                back = BACKUP
                m ^= inf
            elif back > 0:
                back -= 1
                m ^= inf
            else:  # Murty's rule: exchange only the largest infeasible index
                hi = 0
                for i in range(K):
                    if (inf >> i) & 1:
                        hi = i
                m ^= 1 << hi
            um = u[m]
            @W_BLOCK@
            inf = @INF@
            if inf == 0:
                converged = True
                break
        if not converged:  # check every passive set; keep the least violation
            best_v = np.inf
            best_m = full
            for mm in range(full + 1):
                um = u[mm]
                @W_BLOCK@
                v = -min(0.0, @W_LIST@)
                if v < best_v:
                    best_v = v
                    best_m = mm
            m = best_m
            um = u[m]
            @W_BLOCK@
        dm = d[m]
        xp = x[p]
        @X_STORE@
    return bad
"""


def _sum_terms(terms: list[str]) -> str:
    """Sum written as two independent halves (shorter dependency chains)."""
    if len(terms) < 4:
        return " + ".join(terms)
    h = (len(terms) + 1) // 2
    return f"({' + '.join(terms[:h])}) + ({' + '.join(terms[h:])})"


def _kernel_source(k: int) -> str:
    """Source of the numba kernel for ``k`` components (K-vectors in scalar locals)."""
    r = range(k)
    lines = {
        "@Z_LOAD@": [f"z{i} = zp[{i}]" for i in r],
        "@W_EQ_Z@": [f"w{i} = z{i}" for i in r],
        "@W_BLOCK@": [f"w{i} = " + _sum_terms([f"z{j} * um[{j}, {i}]" for j in r])
                      for i in r],
        # max() compiles to a branchless maxsd; a conditional expression here was a
        # mispredicted branch per component and doubled the kernel time (measured)
        "@X_STORE@": [f"xp[{i}] = max(w{i}, 0.0) * dm[{i}]" for i in r],
    }
    inline = {
        "@INF@": " | ".join(f"(np.int64(w{i} < tol) << {i})" for i in r),
        "@NINF@": " + ".join(f"np.int64(w{i} < tol)" for i in r),
        "@W_LIST@": ", ".join(f"w{i}" for i in r),
        "@ABS@": _sum_terms([f"abs(z{i})" for i in r]),
    }
    out = []
    for line in _KERNEL_SOURCE.splitlines():
        key = line.strip()
        if key in lines:
            ind = " " * (len(line) - len(key))
            out.extend(ind + item for item in lines[key])
            continue
        for mark, val in inline.items():
            line = line.replace(mark, val)
        out.append(line)
    return "\n".join(out)


def _build_numba_kernel(k: int):  # pragma: no cover - body runs compiled
    """Compile the scalar kernel for ``k`` components. Cached on disk by
    :func:`_compile_generated`: about 3 s saved in every later process (each CLI run and
    Dask worker)."""
    header = (f"import numpy as np\n\nK = {k}\nBACKUP = {_BACKUP_P}\n"
              f"LOCK = {_LOCKSTEP_PASSES}\n\n")
    return _compile_generated(f"nnls_kernel_k{k}", header + _kernel_source(k))


def _compile_generated(name: str, source: str):  # pragma: no cover - body runs compiled
    """Compile the function ``kernel`` of a generated ``source``: imported from a file in
    qdmed's cache directory, so that numba caches it on disk, or compiled in memory where
    nothing is writable."""
    from numba import njit

    module = generated_module(name, source)
    # serial and nogil: parallelism comes from threads over pixel ranges (_solve_numba),
    # which compiles ~4x faster than parallel=True and composes with dask's threads.
    # 'contract' only fuses a*b+c into one FMA (one rounding instead of two): no
    # reassociation, so results stay within rounding of the numpy reference.
    if module is not None:
        return njit_cached(fastmath={"contract"}, nogil=True)(module.kernel)
    namespace: dict = {}
    exec(compile(source, f"<qdmed.imaging._nnls {name}>", "exec"), namespace)
    return njit(cache=False, fastmath={"contract"}, nogil=True)(namespace["kernel"])


# Template of the SIMD kernel for K <= 8 components (see _simd.py): every K-vector of a
# pixel is one 8-lane vector, so a pivoting step w = z @ U_S is K broadcast multiply-adds with
# the rows of U_S (padded to 8 lanes). The unconstrained solution z0 = y @ (A_n G^-1) is
# computed in the kernel from the pixel's counts as they are read (no BLAS product, no z0
# array): the pixels are read from memory once, as by the pinv product itself. Pixels are
# taken in chunks whose scratch arrays (and abundance rows, rewritten on each pass until
# final) stay in the L2 cache. In each chunk:
#
# 1. z0 and the tolerance of every pixel. When the channel count is a multiple of 8, eight
#    pixels at a time with one pixel per lane: their rows are loaded as vectors and
#    transposed (8 x 8 blocks) into one vector per channel, so z0 is K vectors of C
#    multiply-adds with scalar coefficients and ||y||_1 a vector sum, then transposed back
#    into one row per pixel (measured: 15-30 % faster than a pixel per vector, which spends
#    a broadcast per channel and sums ||y||_1 in scalars). Other channel counts, and the
#    chunk's last pixels when fewer than 8 remain, take a pixel per vector: the channel loop
#    unrolled in two independent multiply-add chains.
# 2. The first block-principal-pivoting step of every pixel, branch-free: z0's infeasible
#    lanes leave the passive set and the step is taken whatever they are (a feasible pixel
#    takes the step of the full set, U = I, which returns z0 itself); measured 10-22 % faster
#    overall than listing the infeasible pixels first, since ~80 % of them are.
# 3. The pixels still infeasible are pivoted in lockstep passes, as in the scalar kernel
#    above. A pixel's z0 and tolerance stay where step 1 wrote them (indexed by its place in
#    the chunk); the list of infeasible pixels carries one int64 per pixel, place << 8 | next
#    passive set, compacted without a branch (measured: pivoting ~30 % faster than copying
#    z0, index and tolerance along with the list). Pixels still infeasible after `passes`
#    passes (none in the benchmark's 100,000) are returned in `left` for the scalar kernel's
#    safeguarded pivoting.
_SIMD_SOURCE = """
def kernel(y, pn, u, d, rtol, smax, passes, x, left):
    n = y.shape[0]
    full = (1 << K) - 1
    bad = 0
    nleft = 0
    zb = np.empty(CHUNK * 8)  # z0 of every pixel of the chunk
    tb = np.empty(CHUNK)  # their (negative) tolerance
    pm = np.empty(CHUNK, dtype=np.int64)  # infeasible pixels: place << 8 | next set
    nrtol = vsplat(-rtol)
    tlim = -rtol * smax  # the tolerance of the largest ||y||_1 accepted
    for start in range(0, n, CHUNK):
        stop = min(start + CHUNK, n)
        blocks = @BLOCKS@
        @SOA_LOOP@
        for p in range(blocks, stop):  # a pixel per vector
            # indices masked non-negative (a no-op here) so that LLVM drops numba's
            # negative-index wraparound from the loads (measured ~5 % of the kernel)
            q = p & 0x7FFFFFFFFFFFFFFF
            @Z0@
            vstore(zb, (p - start) * 8, z)
            tb[p - start] = -rtol * s
        na = 0
        for p in range(start, stop):  # the first pivoting step, every pixel
            i = p - start
            r = i * 8
            z = vload(zb, r)
            tol = tb[i]
            # NaN/inf value, or one so large that the products (could) overflow
            if not (tol >= tlim) or vnonfinite(z) != 0:
                bad += 1
            m = full ^ (vltmask(z, tol) & full)
            b = m * (K * 8)
            @W_STEP@
            inf = vltmask(w, tol) & full
            # written only when final (inf == 0): an infeasible pixel's row is written by the
            # pivoting, so this step skips it (a masked store with an empty mask; measured
            # ~5 % faster than writing every row twice)
            vstore_row(x, p, vmul(vmax0(w), vload(d, m * 8)), full & -np.int64(inf == 0))
            pm[na] = (i << 8) | (m ^ inf)
            na += np.int64(inf != 0)
        for _ in range(passes):
            if na == 0:
                break
            nb = 0
            for q in range(na):
                e = pm[q]
                i = (e >> 8) & 0xFFFF  # < CHUNK; masked as q above
                m = e & 255
                r = i * 8
                b = m * (K * 8)
                @W_STEP@
                inf = vltmask(w, tb[i]) & full
                vstore_row(x, start + i, vmul(vmax0(w), vload(d, m * 8)), full)
                pm[nb] = (i << 8) | (m ^ inf)
                nb += np.int64(inf != 0)
            na = nb
        for q in range(na):
            left[nleft] = start + (pm[q] >> 8)
            nleft += 1
    return bad, nleft
"""

_SIMD_CHUNK = 4096  # pixels per chunk: its ~300 kB of scratch stay in the L2 cache
assert _SIMD_CHUNK <= 0x10000 and _SIMD_CHUNK % 8 == 0  # place masked to 16 bits; blocks


def _two_chains(first: str, more: str, n: int) -> list[str]:
    """Lines summing ``n`` vector products in two independent chains ``w1``, ``w2`` (half
    the dependency latency of one chain), then ``w = w1 + w2``. `first` and `more` format
    term ``j`` (``{j}``) as its first product and as a multiply-add onto ``{acc}``."""
    h = (n + 1) // 2
    lines = []
    for acc, terms in (("w1", range(h)), ("w2", range(h, n))):
        for j in terms:
            lines.append(f"{acc} = " + (first.format(j=j) if j == terms[0]
                                        else more.format(j=j, acc=acc)))
    lines.append("w = vadd(w1, w2)" if h < n else "w = w1")
    return lines


def _soa_z0_lines(k: int, c: int) -> list[str]:
    """z0 and ||y||_1 of pixels q..q+7 with a pixel per lane (``c`` a multiple of 8): rows
    loaded as vectors and transposed into channel vectors ``c{j}``, block by block; the
    result transposed back into ``rows``, one per pixel, and ``s``, the eight norms."""
    lines = []
    for blk in range(c // 8):
        names = ", ".join(f"c{8 * blk + t}" for t in range(8))
        loads = ", ".join(f"vload_row(y, q + {t}, {8 * blk})" for t in range(8))
        lines.append(f"{names} = vtranspose8({loads})")
    lines.append("s = " + _vector_sum([f"vabs(c{j})" for j in range(c)]))
    for i in range(k):
        lines.append(f"z{i} = vmul(c0, vsplat(pn[{i}]))")
        lines.extend(f"z{i} = vfma(c{j}, vsplat(pn[{j * 8 + i}]), z{i})" for j in range(1, c))
    zs = [f"z{i}" for i in range(k)] + ["vsplat(0.0)"] * (8 - k)
    lines.append(f"rows = vtranspose8({', '.join(zs)})")
    lines.append("r = (p0 - start) * 8")
    lines.extend(f"vstore(zb, r + {8 * t}, rows[{t}])" for t in range(8))
    lines.append("vstore(tb, p0 - start, vmul(s, nrtol))")
    return lines


def _vector_sum(terms: list[str]) -> str:
    """A sum of vectors as a balanced tree of ``vadd`` (short dependency chains)."""
    while len(terms) > 1:
        terms = [f"vadd({a}, {b})" for a, b in zip(terms[::2], terms[1::2], strict=False)] + \
            (terms[-1:] if len(terms) % 2 else [])
    return terms[0]


def _simd_kernel_source(k: int, c: int) -> str:
    """Source of the SIMD kernel for ``k <= 8`` components and ``c`` channels."""
    z0 = [f"v{j} = np.float64(y[q, {j}])" for j in range(c)]
    z0 += _two_chains("vmul(vsplat(v{j}), vload(pn, {j} * 8))",
                      "vfma(vsplat(v{j}), vload(pn, {j} * 8), {acc})", c)
    z0.append("z = w")
    z0.append("s = " + _sum_terms([f"abs(v{j})" for j in range(c)]))  # scale ||y||_1
    step = _two_chains("vmul(vsplat(zb[r + {j}]), vload(u, b + {j} * 8))",
                       "vfma(vsplat(zb[r + {j}]), vload(u, b + {j} * 8), {acc})", k)
    soa = c % 8 == 0
    loop = ["for p0 in range(start, blocks, 8):  # eight pixels at a time, a pixel per lane",
            "    q = p0 & 0x7FFFFFFFFFFFFFFF  # masked as q below",
            *("    " + line for line in _soa_z0_lines(k, c))] if soa else []
    marks = {"@Z0@": z0, "@W_STEP@": step, "@SOA_LOOP@": loop}
    blocks = "start + ((stop - start) & -8)" if soa else "start"
    out = []
    for line in _SIMD_SOURCE.splitlines():
        key = line.strip()
        if key in marks:
            ind = line[: len(line) - len(line.lstrip())]
            out.extend(ind + item for item in marks[key])
        else:
            out.append(line.replace("@BLOCKS@", blocks))
    return "\n".join(out)


def _build_simd_kernel(k: int, c: int):  # pragma: no cover - body runs compiled
    """Compile the SIMD kernel for ``k <= 8`` components and ``c`` channels (cached on disk
    like the scalar kernel)."""
    header = ("import numpy as np\n"
              "from qdmed.imaging._simd import (vabs, vadd, vfma, vload, vload_row, vltmask, "
              "vmax0,\n    vmul, vnonfinite, vsplat, vstore, vstore_row, vtranspose8)\n\n"
              f"K = {k}\nCHUNK = {_SIMD_CHUNK}\n# intrinsics: {_simd_version()}\n\n")
    return _compile_generated(f"nnls_simd_k{k}_c{c}", header + _simd_kernel_source(k, c))


def _simd_version() -> str:
    """Hash of the intrinsics' source: part of the generated kernel's source, so that a
    changed _simd.py gets a new kernel file (numba's cache only tracks the kernel's file)."""
    try:
        text = Path(__file__).with_name("_simd.py").read_bytes()
    except OSError:  # installed without sources: the package version stands in
        from qdmed import __version__

        text = f"qdmed {__version__}".encode()
    return hashlib.sha256(text).hexdigest()[:16]


def _solve_simd(y: np.ndarray, prep: _Prepared, passes: int = _LOCKSTEP_PASSES) -> np.ndarray:
    k = prep.gram.shape[0]
    kernel = _numba_kernel(k, "simd", y.shape[1])
    pn, u, d = prep.simd
    n = y.shape[0]
    x = np.empty((n, k))
    left = np.empty(n, dtype=np.int64)
    edges = _ranges(n)
    results = _run_ranges(kernel, [(y[i:j], pn, u, d, prep.rtol, prep.smax, passes, x[i:j],
                                    left[i:j])
                                   for i, j in zip(edges[:-1], edges[1:], strict=True)])
    bad = sum(int(r[0]) for r in results)
    if bad:
        _raise_nonfinite(bad, n)
    idx = np.concatenate([left[i:i + int(r[1])] + i  # kernel indices are per range
                          for i, r in zip(edges[:-1], results, strict=True)])
    if idx.size:  # rare: the scalar kernel's safeguarded pivoting (always terminates)
        x[idx] = _solve_scalar(y[idx], prep)
    return x


def _solve_numba(y: np.ndarray, prep: _Prepared) -> np.ndarray:
    if prep.simd is not None:
        return _solve_simd(y, prep)
    return _solve_scalar(y, prep)


def _solve_scalar(y: np.ndarray, prep: _Prepared) -> np.ndarray:
    k = prep.gram.shape[0]
    kernel = _numba_kernel(k)
    n = y.shape[0]
    x = np.empty((n, k))
    args = (prep.u, prep.d, prep.rtol, prep.smax, _max_iter(k))
    count = 0
    for s in range(0, n, _CHUNK):
        e = min(s + _CHUNK, n)
        # z0 by one BLAS product in this thread (BLAS threads itself; calling it from
        # several threads at once serialises on OpenBLAS's lock, measured 2x slower)
        with np.errstate(invalid="ignore", over="ignore"):  # NaN pixels are counted below
            z0 = y[s:e] @ prep.pn if y.dtype == np.float64 else \
                y[s:e].astype(np.float64) @ prep.pn
        edges = _ranges(e - s)
        count += sum(int(r) for r in _run_ranges(
            kernel, [(z0[i:j], y[s + i:s + j], *args, x[s + i:s + j])
                     for i, j in zip(edges[:-1], edges[1:], strict=True)]))
    if count:
        _raise_nonfinite(count, n)
    return x


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnmixResult:
    """Abundances with per-pixel goodness of fit, returned when ``return_residual=True``.

    Attributes
    ----------
    abundances : ndarray, shape (n_pixels, n_components)
        NNLS abundances ``x >= 0``, in units of the endmember columns.
    residual_norm : ndarray, shape (n_pixels,)
        :math:`r = \\lVert W^{1/2} (A x - y) \\rVert_2` (``W = I`` without weights), in the
        units of the pixel values.
    relative_residual : ndarray, shape (n_pixels,)
        :math:`r / \\lVert W^{1/2} y \\rVert_2`, dimensionless in [0, 1] (the NNLS objective
        is never worse than ``x = 0``); 0 for all-zero pixels.
    """

    abundances: np.ndarray
    residual_norm: np.ndarray
    relative_residual: np.ndarray

    def to_dict(self) -> dict:
        """JSON-safe summary (shapes and residual statistics, not the arrays)."""
        rel = self.relative_residual
        return {
            "n_pixels": int(self.abundances.shape[0]),
            "n_components": int(self.abundances.shape[1]),
            "fraction_zero": float(np.mean(self.abundances == 0)) if rel.size else 0.0,
            "relative_residual_median": float(np.median(rel)) if rel.size else 0.0,
            "relative_residual_max": float(np.max(rel)) if rel.size else 0.0,
        }


def unmix_nnls(pixels, endmembers, *, weights=None, return_residual=False, method="auto",
               device="cpu", max_condition=1e4, read_noise=None):
    """Exact non-negative least-squares unmixing of every pixel.

    Solves, independently for each pixel ``y`` (a row of `pixels`),

    .. math:: \\hat x = \\arg\\min_{x \\ge 0} \\lVert W^{1/2} (A x - y) \\rVert_2^2

    exactly (to rounding), where ``A`` is `endmembers` and ``W = diag(w)`` the optional
    weights.

    Parameters
    ----------
    pixels : array_like, shape (n_pixels, n_channels), counts
        Pixel spectra; float64, float32, uint16 and uint8 are read without a copy, other
        real dtypes are converted to float64. Computation is always in float64.
    endmembers : array_like, shape (n_channels, n_components)
        Mixing matrix ``A``: column ``j`` is the reference spectrum of component ``j``
        integrated over the detection channels (counts per unit abundance). Must be finite,
        non-negative, with 1 to 12 components (any number for a channel selection, see
        Notes) and condition number (of the column-normalised matrix) at most
        `max_condition`.
    weights : None, 'poisson' or array_like broadcastable to (n_pixels, n_channels)
        Per-pixel-per-channel weights ``w > 0``. ``'poisson'`` gives the Poisson
        maximum-likelihood abundances, read noise included (the shifted-Poisson model,
        :mod:`qdmed.imaging._poisson`): ``x >= 0`` maximising
        ``sum_c (y_c + s) log((A x)_c + s) - (A x)_c`` with ``s = read_noise^2``, i.e. the
        weighted NNLS with ``w = 1 / (A x + s)`` at its own solution, reached by reweighting
        from the unweighted one with a line search. `pixels` must be counts proportional to
        photons (offset subtracted). Where every label is present, unbiased where the
        observed counts as weights (``1 / max(y, 1)``, Neyman's chi^2) are not (K. J.
        Mighell, ApJ 518:380, 1999, doi:10.1086/307253); measured with 3 labels in 8
        channels at ~5 counts per channel: mean abundances within 0.3 % of the truth,
        standard deviations up to 4 % below unweighted NNLS's. Where a label is absent
        its estimate is biased up by the constraint ``x >= 0``, more than unweighted
        NNLS's, and the others' signal goes to it (a simulated 5-plex field at 300 photons
        per unit, membrane: absent labels +2.6 to +10 counts against +2.4 to +8.4, HER2
        +10 of 273 against +5, autofluorescence -35 of 51 against -24). Other weighted
        problems have a Gram matrix per pixel and run on the numpy path; Poisson
        unmixing runs compiled (4-5 Newton steps, ~10 us a pixel on one core: 50-400x
        unweighted NNLS, measured on a simulated 5-plex), or on the numpy loop
        (method='numpy', or above a condition number of 300).
    return_residual : bool
        If True return an :class:`UnmixResult` with residual norms; else the abundances.
    method : {'auto', 'numba', 'numpy'}
        ``'numba'``: the compiled, multi-threaded kernel (compiled on first call, about a
        second); ``'numpy'``: the vectorised reference; ``'auto'``: numba if it imports.
    device : {'cpu', 'gpu'}
        ``'gpu'`` runs the numpy algorithm on CuPy arrays (needs ``pip install qdmed[gpu]``;
        unweighted only); the result is returned as a numpy array.
    read_noise : float, optional
        Read noise of the detector in counts RMS, 0.1 to 1000, with ``weights='poisson'``
        only (default 1.0).
    max_condition : float
        Largest accepted condition number of the column-normalised endmember matrix. The
        Gram form squares it: rounding errors are about ``cond^2 * 1e-16`` relative to
        ``||y||``, and the sign tests need a tolerance of that size, inside which a wrong
        passive set could pass (5 of 5,000 pixels at cond 4.9e3, a review): above cond
        300 every solution is checked again in channel space, where the gradient has no
        condition number in its rounding, and the pixels that fail are solved by
        scipy.optimize.nnls. Measured against it (8 channels, 5 labels, two made nearly
        collinear, 3,000 pixels): agreement to 2e-12 of ``||y||`` at cond 200, 2e-10 at
        1.2e3, 1.5e-9 at 9.9e3; hence the default 1e4. A panel that ill-conditioned
        cannot separate its labels anyway (:func:`qdmed.imaging.design_panel` warns above
        100).

    Returns
    -------
    abundances : ndarray, shape (n_pixels, n_components), float64
        Returned when ``return_residual`` is False.
    result : UnmixResult
        Returned when ``return_residual`` is True.

    Raises
    ------
    InputError
        Shape mismatch between `pixels` and `endmembers` (both shapes named); negative,
        non-finite, all-zero or degenerate endmembers (condition number and the nearly
        collinear columns named); more than 12 components; NaN or infinite pixels (their
        count named); bad `weights`, `method`, `device` or `max_condition`; `device='gpu'`
        without CuPy; `method='numba'` without numba.

    Notes
    -----
    When every component is one channel of its own (each column of `endmembers` a single
    positive entry, in a row of its own: an already-unmixed image), the problem separates
    per component and the solution is that channel divided by its entry, clipped at zero;
    it is computed so directly, on the CPU, without a limit on the number of components.

    Otherwise columns are normalised, ``A_n = A D^{-1}`` with ``D = diag(||a_j||)``, and the problem
    is written in Gram form ``G = A_n^T A_n``, ``b = A_n^T y``. For a passive set ``S`` the
    candidate solution is ``x_S = (G_SS)^{-1} b_S``, ``x_{~S} = 0``, and the KKT conditions
    of NNLS are

    .. math:: x_S \\ge 0, \\qquad g_{\\bar S} = (G x - b)_{\\bar S} \\ge 0 ,

    (complementarity ``x_i g_i = 0`` holds by construction). With every ``(G_SS)^{-1}``
    pre-factorised, the vector ``z = [x_S; g_{~S}] = T_S b`` costs one K x K product. Starting
    from ``S`` = all components (the unconstrained solution), block principal pivoting
    [4]_ [5]_ exchanges every variable with ``z_i < -tol`` between the passive and active
    sets, with Murty's single-exchange backup rule after three exchanges without progress;
    after ``3K + 10`` steps the pixel falls back to testing all ``2^K`` sets. The solution
    is unique because ``A`` has full column rank, so it equals that of Lawson-Hanson [1]_
    (scipy.optimize.nnls) and of FNNLS/FCNNLS [2]_ [3]_. The numpy path groups pixels that
    share a passive set, as FCNNLS does. On the numba path the compiled kernel computes the
    unconstrained solution ``z0 = (A_n G^{-1})^T y`` of each pixel as it reads it, takes the
    first pivoting step of every pixel without branches, and pivots the pixels still
    infeasible in lockstep passes with ``z = U_S^T z0``, ``U_S = G T_S`` pre-computed; for
    ``K <= 8`` every K-vector is one 8-lane SIMD vector (AVX-512 where the CPU has it), the
    pixels are read from memory once, as by the unconstrained ``y @ pinv(A).T`` itself, and
    when the channel count is a multiple of 8, ``z0`` is computed for eight pixels at a time
    (their rows transposed into one vector per channel). ``tol = rtol * ||y||_1`` with
    ``rtol = max(1e-12, 16 eps cond^2)``; finally ``x = D^{-1} max(z_S, 0)``.

    References
    ----------
    .. [1] C. L. Lawson, R. J. Hanson (1974). Solving Least Squares Problems, ch. 23.
       Prentice-Hall. doi:10.1137/1.9781611971217
    .. [2] R. Bro, S. De Jong (1997). A fast non-negativity-constrained least squares
       algorithm. J. Chemometrics 11(5):393-401.
       doi:10.1002/(SICI)1099-128X(199709/10)11:5<393::AID-CEM483>3.0.CO;2-L
    .. [3] M. H. Van Benthem, M. R. Keenan (2004). Fast algorithm for the solution of
       large-scale non-negativity-constrained least squares problems. J. Chemometrics
       18(10):441-450. doi:10.1002/cem.889
    .. [4] J. Kim, H. Park (2011). Fast nonnegative matrix factorization: an active-set-like
       method and comparisons. SIAM J. Sci. Comput. 33(6):3261-3281. doi:10.1137/110821172
    .. [5] L. F. Portugal, J. J. Judice, L. N. Vicente (1994). A comparison of block
       pivoting and interior-point algorithms for linear least squares problems with
       nonnegative variables. Math. Comput. 63(208):625-643.
       doi:10.1090/S0025-5718-1994-1250776-4

    Examples
    --------
    >>> import numpy as np
    >>> A = np.array([[1.0, 0.2], [0.5, 1.0], [0.1, 0.6]])
    >>> y = np.array([[2.0, 1.0, 0.2], [0.0, 1.0, 0.6]])
    >>> np.round(unmix_nnls(y, A, method="numpy"), 4)
    array([[2.    , 0.    ],
           [0.    , 0.9714]])
    """
    a = _check_endmembers(endmembers)
    _check_max_condition(max_condition)
    # every component one channel of its own (an already-unmixed image): no tables needed,
    # and no limit on the number of components
    sel = _cached(("selection", a.shape, a.tobytes()), lambda: _selection_columns(a))
    prep = _prepare(a, max_condition) if sel is None else None
    y = _check_pixels(pixels, a.shape[0])
    if device not in _DEVICES:
        raise InputError(f"device must be one of {_DEVICES}; got {device!r}.")
    poisson = _is_poisson(weights)
    noise = _poisson.read_noise_for(poisson, read_noise)
    w = None if poisson else _resolve_weights(weights, y, a)
    how = _resolve_method(method, w is not None)
    if sel is not None:
        # the problem separates per component: its exact solution, weighted or not, is
        # that channel divided by its entry, clipped at zero (on the CPU whatever `device`:
        # it is a copy)
        _check_nonfinite(y)
        with np.errstate(over="ignore"):
            x = np.maximum(y[:, sel].astype(np.float64) / a[sel, np.arange(sel.size)], 0.0)
        _check_nonfinite(x)  # a count over a tiny entry can exceed float64
    elif device == "gpu":
        x = _solve_gpu(y, prep, "poisson" if poisson else w)
    elif poisson:
        x = _solve_poisson(y, prep, how, noise)
    elif w is not None:
        _check_nonfinite(y)
        x = _solve_weighted_numpy(y.astype(np.float64, copy=False), w, prep)
    elif how == "numba":
        x = _solve_numba(y, prep)
    else:
        _check_nonfinite(y)
        x = _solve_shared_numpy(y, prep)
    if prep is not None and not poisson:  # the Poisson iterations check every step
        x = _recheck_in_channel_space(y, prep, x, w)
    if not return_residual:
        return x
    if poisson:
        w = _resolve_weights("poisson", y, a, x, noise)
    return _result(y, a if prep is None else prep.a, x, w)


def _solve_poisson(y: np.ndarray, prep: _Prepared, how: str, read_noise: float) -> np.ndarray:
    """Poisson maximum likelihood (:mod:`qdmed.imaging._poisson`) from the unweighted
    solution, each reweighted step solved exactly and checked in channel space."""
    _check_nonfinite(y)
    x = _solve_numba(y, prep) if how == "numba" else \
        _solve_shared_numpy(y.astype(np.float64, copy=False), prep)
    x = _recheck_in_channel_space(y, prep, x, None)
    if how == "numba" and prep.cond <= RECHECK_COND:
        edges = _ranges(y.shape[0])
        a = np.ascontiguousarray(prep.a)
        args = (read_noise ** 2, _poisson.RTOL, prep.rtol, _poisson.MAX_ITER)
        left = sum(_run_ranges(_poisson.newton_kernel(), [
            (y[i:j], a, x[i:j], *args) for i, j in zip(edges[:-1], edges[1:], strict=True)]))
        if left:
            _poisson.warn_not_converged(left, y.shape[0])
        return x

    def weighted(yi, wi):
        try:
            return _recheck_in_channel_space(yi, prep, _solve_weighted_numpy(yi, wi, prep), wi)
        except SingularWeightsError:  # a dark channel's Newton weight dominates a pixel:
            from scipy.optimize import nnls  # Lawson-Hanson on QR copes, pixel by pixel

            sw = np.sqrt(wi)
            return np.array([nnls(prep.a * q[:, None], q * row)[0]
                             for q, row in zip(sw, yi, strict=True)])

    return _poisson.solve_poisson_ml(y, prep.a, x, read_noise, weighted)


#: Above this condition number of the column-normalised matrix every solution's KKT
#: conditions are checked again in channel space (:func:`_recheck_in_channel_space`):
#: the tables' own tests were exact to 2e-10 of ||y|| up to cond 1.2e3 (a review), so the
#: panels anyone designs (warned above 100) never pay for the second pass (~20x the
#: compiled solver's time).
RECHECK_COND = 300.0


def _recheck_in_channel_space(y: np.ndarray, prep: _Prepared, x: np.ndarray, w) -> np.ndarray:
    """``x`` with the pixels whose gradient, computed in channel space, breaks the KKT
    conditions re-solved by scipy.optimize.nnls (Lawson-Hanson, on a QR factorisation).

    The tables' sign tests need a tolerance of the Gram form's rounding, ``rtol ~ 16 eps
    cond^2``; a wrong passive set whose gradient violation lies inside it was accepted,
    and its abundances are wrong by up to ``rtol cond^2`` (a review: 5 of 5,000 pixels at
    cond 4.9e3, the abundance on the wrong label; errors of order 1 from cond ~3e3). The
    gradient ``g = A_n^T W (A_n x_n - y)`` computed from the residual has rounding of
    ``eps (||x_n||_1 + ||y||_1)`` only, with no condition number in it: a zero component
    with ``g_i`` below ``-64 K eps`` times that (and the weight) is a wrong set. Only above
    :data:`RECHECK_COND`. On noiseless data (``y = A x`` exactly) a true zero has a
    gradient of exactly 0, which the tables' rounding leaves on either side of the bound:
    such pixels are solved again for nothing (up to half of them at cond 1e4: time, not
    accuracy)."""
    if prep.cond <= RECHECK_COND or not len(x):
        return x
    from scipy.optimize import nnls

    k = x.shape[1]
    eps = np.finfo(float).eps
    out = x
    for i in range(0, x.shape[0], 1 << 20):  # ~50 MB of float64 per step
        yi = np.asarray(y[i:i + (1 << 20)], dtype=np.float64)
        xn = x[i:i + (1 << 20)] * prep.norms  # the normalised solution z_S
        r = xn @ prep.an.T - yi
        wi = None if w is None else np.asarray(w[i:i + (1 << 20)], dtype=np.float64)
        g = (r if wi is None else r * wi) @ prep.an
        scale = 64 * k * eps * (np.abs(xn).sum(axis=1) + np.abs(yi).sum(axis=1)) * (
            1.0 if wi is None else wi.max(axis=1))
        bad = np.flatnonzero(np.any((xn <= 0) & (g < -scale[:, None]), axis=1))
        if bad.size:
            if out is x:
                out = x.copy()
            for j in bad:
                sw = 1.0 if wi is None else np.sqrt(wi[j])
                out[i + j] = nnls(prep.a * (sw[:, None] if wi is not None else 1.0),
                                  yi[j] * sw)[0]
    return out


def _selection_columns(a: np.ndarray) -> np.ndarray | None:
    """Column j's channel when every column of `a` is one positive entry in a row of its
    own (a channel-selection matrix), else None (and any other matrix, invalid ones
    included, goes to the general checks)."""
    if a.size == 0 or not np.all(np.isfinite(a)) or np.any(a < 0):
        return None
    nz = a > 0
    if not np.all(nz.sum(axis=0) == 1):
        return None
    rows = np.argmax(nz, axis=0)
    rows.setflags(write=False)  # cached (unmix_nnls)
    return rows if len(set(rows.tolist())) == len(rows) else None


def _solve_gpu(y: np.ndarray, prep: _Prepared, w) -> np.ndarray:
    try:
        import cupy
    except ImportError:
        raise InputError("device='gpu' requires cupy (pip install qdmed[gpu]); use "
                         "device='cpu'.") from None
    if w is not None:
        raise InputError("device='gpu' supports unweighted unmixing only; got weights.")
    _check_nonfinite(y)
    return cupy.asnumpy(_solve_shared_numpy(y, prep, xp=cupy))


@lazy_kernel
def _residual_kernel():
    """numba: squared norms of ``A x - y`` and ``y`` per pixel in one pass over the rows
    (about 10x faster than the numpy temporaries on a slide tile, measured)."""
    @njit_cached(nogil=True, fastmath={"contract"})
    def resid(y, a, x, rn, yn):  # pragma: no cover - body runs compiled
        n, c = y.shape
        k = a.shape[1]
        for p in range(n):
            r2 = 0.0
            y2 = 0.0
            for ch in range(c):
                m = 0.0
                for j in range(k):
                    m += a[ch, j] * x[p, j]
                yc = np.float64(y[p, ch])
                d = m - yc
                r2 += d * d
                y2 += yc * yc
            rn[p] = r2
            yn[p] = y2

    return resid


def _result(y: np.ndarray, a: np.ndarray, x: np.ndarray, w) -> UnmixResult:
    n = y.shape[0]
    rn = np.empty(n)
    yn = np.empty(n)
    if w is None and numba_available():
        _residual_kernel()(y, np.ascontiguousarray(a), x, rn, yn)
        return _finish_result(x, rn, yn, y, a, w)
    step = 1 << 16  # chunks keep the temporaries in cache (a whole slide tile is ~5e6 px)
    for i in range(0, n, step):
        yf = y[i:i + step].astype(np.float64, copy=False)
        r = x[i:i + step] @ a.T - yf
        if w is None:
            rn[i:i + step] = np.einsum("nc,nc->n", r, r)
            yn[i:i + step] = np.einsum("nc,nc->n", yf, yf)
        else:
            ww = w[i:i + step]
            rn[i:i + step] = np.einsum("nc,nc,nc->n", ww, r, r)
            yn[i:i + step] = np.einsum("nc,nc,nc->n", ww, yf, yf)
    return _finish_result(x, rn, yn, y, a, w)


def _finish_result(x, rn, yn, y, a, w) -> UnmixResult:
    """The result from the squared norms ``rn`` (residual) and ``yn`` (pixel); a pixel
    whose squares overflowed (norms above ~1e154, which the abundances' bound still accepts)
    gets its norms again from its row scaled by its largest count."""
    np.sqrt(rn, out=rn)
    np.sqrt(yn, out=yn)
    big = np.flatnonzero(~np.isfinite(rn) | ~np.isfinite(yn))
    if big.size:
        yf = y[big].astype(np.float64)
        r = x[big] @ a.T - yf
        if w is not None:
            sw = np.sqrt(w[big])
            yf, r = yf * sw, r * sw
        s = np.abs(yf).max(axis=1)
        s[s == 0] = 1.0
        rn[big] = s * np.linalg.norm(r / s[:, None], axis=1)
        yn[big] = s * np.linalg.norm(yf / s[:, None], axis=1)
    rel = np.divide(rn, yn, out=np.zeros_like(rn), where=yn > 0)
    return UnmixResult(abundances=x, residual_norm=rn, relative_residual=rel)


def unmix_lstsq(pixels, endmembers):
    """Unconstrained least-squares unmixing, ``x = A^+ y`` (for comparison with NNLS).

    Parameters
    ----------
    pixels : array_like, shape (n_pixels, n_channels), counts
        Pixel spectra.
    endmembers : array_like, shape (n_channels, n_components)
        Mixing matrix ``A`` (validated as for :func:`unmix_nnls`).

    Returns
    -------
    abundances : ndarray, shape (n_pixels, n_components), float64
        ``y @ pinv(A).T``; entries may be negative.

    Raises
    ------
    InputError
        As :func:`unmix_nnls` (shape mismatch, bad endmembers, NaN pixels).

    Notes
    -----
    :math:`\\hat x = (A^T A)^{-1} A^T y = A^+ y` minimises :math:`\\lVert Ax - y\\rVert_2`
    without constraints; clipping it at zero is not the NNLS solution.

    Examples
    --------
    >>> import numpy as np
    >>> A = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> unmix_lstsq(np.array([[1.0, 2.0, 3.0]]), A)
    array([[1., 2.]])
    """
    prep = _prepare(endmembers, 1e6)
    y = _check_pixels(pixels, prep.a.shape[0])
    _check_nonfinite(y)
    return y.astype(np.float64, copy=False) @ np.linalg.pinv(prep.a).T


def unmix_block(block, endmembers, *, weights=None, method="auto", device="cpu",
                max_condition=1e4, read_noise=None):
    """NNLS-unmix an image block with channels last: (..., C) -> (..., K).

    Meant for ``dask.array.map_blocks`` over tiles of a multiplexed image (the channel axis
    must be a single chunk).

    Parameters
    ----------
    block : array_like, shape (Y, X, C) or any (..., C), counts
        Image block with the channel axis last.
    endmembers : array_like, shape (C, K)
        Mixing matrix, as in :func:`unmix_nnls`.
    weights : None, 'poisson' or array_like broadcastable to `block`
        As in :func:`unmix_nnls`.
    method, device, max_condition, read_noise
        As in :func:`unmix_nnls`.

    Returns
    -------
    abundances : ndarray, shape (Y, X, K), float64

    Raises
    ------
    InputError
        As :func:`unmix_nnls`; also if `block` has no channel axis.

    Examples
    --------
    >>> import numpy as np
    >>> A = np.eye(3)[:, :2] + 0.1
    >>> unmix_block(np.zeros((4, 5, 3)), A).shape
    (4, 5, 2)
    """
    arr = np.asarray(block)
    a = np.asarray(endmembers)
    if arr.ndim < 1 or a.ndim != 2 or arr.shape[-1] != a.shape[0]:
        raise InputError(f"block must have the channel axis last with as many channels as "
                         f"endmembers has rows; got block shape {arr.shape} and endmembers "
                         f"shape {a.shape}.")
    lead = arr.shape[:-1]
    flat = arr.reshape(-1, arr.shape[-1])
    w = weights
    if w is not None and not isinstance(w, str):
        try:
            w = np.broadcast_to(np.asarray(w), arr.shape).reshape(flat.shape)
        except ValueError:
            raise InputError(f"weights shape {np.shape(weights)} does not broadcast to block "
                             f"shape {arr.shape}.") from None
    x = unmix_nnls(flat, a, weights=w, method=method, device=device,
                   max_condition=max_condition, read_noise=read_noise)
    return x.reshape(*lead, a.shape[1])


def kkt_violation(pixels, endmembers, abundances, *, weights=None, read_noise=None):
    """Largest scale-free violation of the NNLS optimality (KKT) conditions per pixel.

    Parameters
    ----------
    pixels : array_like, shape (n_pixels, n_channels), counts
    endmembers : array_like, shape (n_channels, n_components)
    abundances : array_like, shape (n_pixels, n_components)
        A candidate solution ``x``.
    weights : None, 'poisson' or array_like
        As in :func:`unmix_nnls` (KKT of the weighted problem; ``'poisson'``: of the
        Poisson likelihood, with the weights ``1 / (A x + read_noise^2)`` of `abundances`).
    read_noise : float, optional
        As in :func:`unmix_nnls`.

    Returns
    -------
    violation : ndarray, shape (n_pixels,), dimensionless
        0 for an exact NNLS solution; about 1e-12 or below is rounding noise.

    Raises
    ------
    InputError
        Shape mismatches (shapes named) or bad endmembers.

    Notes
    -----
    With the gradient :math:`g = A^T W (A x - y)`, the (weighted) column norms
    :math:`n_i = \\lVert W^{1/2} a_i \\rVert` and :math:`s = \\lVert W^{1/2} y \\rVert`
    (1 if zero), the violation is

    .. math:: \\max_i \\max\\left( \\frac{-x_i n_i}{s},\\; \\frac{-g_i}{n_i s},\\;
              \\frac{|x_i g_i|}{s^2},\\; 0 \\right),

    i.e. primal feasibility, dual feasibility and complementarity, each invariant to
    scaling of ``y`` and of each endmember column.

    Examples
    --------
    >>> import numpy as np
    >>> A = np.eye(2)
    >>> float(kkt_violation([[1.0, -1.0]], A, [[1.0, 0.0]])[0])
    0.0
    """
    a = _check_endmember_values(_check_endmembers(endmembers))
    y = _check_pixels(pixels, a.shape[0]).astype(np.float64, copy=False)
    x = np.asarray(abundances, dtype=np.float64)
    if x.shape != (y.shape[0], a.shape[1]):
        raise InputError(f"abundances must have shape (n_pixels, n_components) = "
                         f"{(y.shape[0], a.shape[1])}; got {x.shape} (pixels shape {y.shape},"
                         f" endmembers shape {a.shape}).")
    w = _resolve_weights(weights, y, a, x, read_noise)
    if _is_poisson(weights):  # counts below -read_noise^2 are taken as it (_poisson)
        y = np.maximum(y, -_poisson.read_noise_for(True, read_noise) ** 2)
    r = x @ a.T - y
    if w is None:
        g = r @ a
        nrm = np.broadcast_to(np.sqrt(np.sum(a * a, axis=0)), x.shape)
        s = np.sqrt(np.einsum("nc,nc->n", y, y))
    else:
        g = (w * r) @ a
        nrm = np.sqrt(w @ (a * a))
        s = np.sqrt(np.einsum("nc,nc,nc->n", w, y, y))
    s = np.where(s > 0, s, 1.0)[:, None]
    primal = -x * nrm / s
    dual = -g / (nrm * s)
    comp = np.abs(x * g) / (s * s)
    return np.max(np.maximum(np.maximum(primal, dual), np.maximum(comp, 0.0)), axis=1)
