"""Per-cell sums of every component over compartments and membrane sectors.

:func:`qdmed.imaging.measure_cells` needs, for each of K components, the sum of the abundance
over each cell's nucleus, cytoplasm and membrane pixels, and over each membrane sector. The
numpy reference does it with ``np.bincount(index, weights=channel)``: three bincounts per
component plus one per component for the sectors, each a full pass over the tile after a
float64 copy of the channel. The numba kernel makes one pass over the pixels for all
components at once (about 8x faster on a 2048 x 2048 x 7 tile, measured). Both add each
pixel to its bin in pixel order in float64, as ``np.bincount`` does, so their sums are
bit-identical (tested).
"""

from __future__ import annotations

import numpy as np

from qdmed.imaging._jit import lazy_kernel, njit_cached, numba_available

__all__ = ["compartment_totals", "pixels_by_component", "sector_totals"]


@lazy_kernel
def _kernels():  # pragma: no cover - bodies run compiled
    @njit_cached(nogil=True)
    def totals(ab2, flat, code, out):
        kk = ab2.shape[1]
        for p in range(ab2.shape[0]):
            c = code[p]
            if c == 0:
                continue
            i = flat[p]
            for k in range(kk):
                out[i, c - 1, k] += ab2[p, k]
        return out

    @njit_cached(nogil=True)
    def sectors(ab2, sel, key, out):
        kk = ab2.shape[1]
        for j in range(sel.shape[0]):
            p = sel[j]
            b = key[j]
            for k in range(kk):
                out[b, k] += ab2[p, k]
        return out

    return totals, sectors


def pixels_by_component(ab: np.ndarray) -> np.ndarray:
    """(Y, X, K) abundances as a C-contiguous (Y*X, K) float array (float32 kept; other
    dtypes become float64), the layout both sums read."""
    ab2 = ab.reshape(-1, ab.shape[-1])
    if ab2.dtype not in (np.float32, np.float64):
        ab2 = ab2.astype(np.float64)
    return np.ascontiguousarray(ab2)


def compartment_totals(ab2, flat, code, n, *, method="auto") -> np.ndarray:
    """Sums of every component over every cell's compartments.

    Parameters
    ----------
    ab2 : (Y*X, K) array from :func:`pixels_by_component`, abundance units
    flat : (Y*X,) int array
        Dense cell index of each pixel (0 background, 1..n cells).
    code : (Y*X,) int8 array
        Compartment of each pixel: 0 none, 1 nucleus, 2 cytoplasm, 3 membrane.
    n : int
        Number of cells.
    method : {'auto', 'numba', 'numpy'}

    Returns
    -------
    (n, 3, K) float64 array: ``[cell - 1, compartment - 1, component]``.
    """
    kk = ab2.shape[1]
    if method != "numpy" and numba_available():
        out = np.zeros((n + 1, 3, kk))
        _kernels()[0](ab2, flat, code, out)
        return out[1:]
    out = np.empty((n, 3, kk))
    for c in range(3):
        ci = np.where(code == c + 1, flat, 0)
        for k in range(kk):
            out[:, c, k] = np.bincount(ci, weights=ab2[:, k].astype(np.float64),
                                       minlength=n + 1)[1:]
    return out


def sector_totals(ab2, sel, key, nbins, *, method="auto") -> np.ndarray:
    """Sums of every component of ``ab2`` (as in :func:`compartment_totals`) over bins
    ``key`` of the pixels ``sel`` (raveled indices); an (nbins, K) float64 array."""
    kk = ab2.shape[1]
    if method != "numpy" and numba_available():
        out = np.zeros((nbins, kk))
        return _kernels()[1](ab2, sel, key, out)
    out = np.empty((nbins, kk))
    for k in range(kk):
        out[:, k] = np.bincount(key, weights=ab2[sel, k].astype(np.float64), minlength=nbins)
    return out
