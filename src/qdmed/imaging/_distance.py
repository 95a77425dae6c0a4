"""Exact Euclidean distance transform in linear time (Felzenszwalb & Huttenlocher).

:func:`scipy.ndimage.distance_transform_edt` computes a full feature transform (the index of
the nearest background pixel) and then the distances; on a 2048 x 2048 tile it took about
0.3-0.8 s per call, and the segmentation of one tile needs three (measured). The squared
Euclidean distance to the nearest background pixel is uniquely defined and an integer, so the
separable lower-envelope algorithm of [1]_ (one pass down the columns, one pass of parabola
envelopes along the rows) gives exactly the same squared distances and, after the same
``sqrt``, identical values; it is compiled with numba when numba is installed (scipy is used
otherwise, and for the degenerate image without any background pixel, where scipy returns
distances to a virtual pixel outside the image). The tests compare both on random masks.

References
----------
.. [1] P. F. Felzenszwalb, D. P. Huttenlocher (2012). Distance transforms of sampled
   functions. Theory of Computing 8:415-428. doi:10.4086/toc.2012.v008a019
"""

from __future__ import annotations

import numpy as np

from qdmed.imaging._jit import lazy_kernel, njit_cached, numba_available

__all__ = ["distance_transform_edt"]


@lazy_kernel
def _kernel():  # pragma: no cover - body runs compiled
    @njit_cached(nogil=True)
    def edt(mask, out):
        """``out`` = distance from each nonzero pixel of ``mask`` to the nearest zero pixel
        (the image must hold at least one zero)."""
        h, w = mask.shape
        big = np.int64(h + w + 1)  # larger than any finite 1-D distance
        # columns: vertical distance to the nearest zero, two raster scans (cache friendly)
        g = np.empty((h, w), dtype=np.int64)
        for x in range(w):
            g[0, x] = 0 if mask[0, x] == 0 else big
        for y in range(1, h):
            for x in range(w):
                g[y, x] = 0 if mask[y, x] == 0 else min(g[y - 1, x] + 1, big)
        for y in range(h - 2, -1, -1):
            for x in range(w):
                if g[y + 1, x] + 1 < g[y, x]:
                    g[y, x] = g[y + 1, x] + 1
        # rows: lower envelope of the parabolas (x - q)^2 + g(q)^2 over finite g(q)
        v = np.empty(w, dtype=np.int64)
        z = np.empty(w + 1)
        f = np.empty(w)
        for y in range(h):
            k = -1
            for q in range(w):
                gq = g[y, q]
                if gq >= big:
                    continue
                fq = float(gq * gq)
                f[q] = fq
                s = -np.inf
                while k >= 0:
                    p = v[k]
                    s = ((fq + q * q) - (f[p] + p * p)) / (2.0 * (q - p))
                    if s <= z[k]:
                        k -= 1
                        s = -np.inf
                    else:
                        break
                k += 1
                v[k] = q
                z[k] = s
                z[k + 1] = np.inf
            k = 0
            for q in range(w):
                while z[k + 1] < q:
                    k += 1
                p = v[k]
                out[y, q] = np.sqrt(float((q - p) * (q - p)) + f[p])
        return out

    return edt


def distance_transform_edt(mask) -> np.ndarray:
    """Euclidean distance (pixels, float64) from each nonzero pixel of a 2-D ``mask`` to the
    nearest zero pixel; zero pixels get 0. Identical to
    :func:`scipy.ndimage.distance_transform_edt` with unit sampling.

    Examples
    --------
    >>> import numpy as np
    >>> distance_transform_edt(np.array([[0, 1, 1, 1]]))
    array([[0., 1., 2., 3.]])
    """
    m = np.asarray(mask)
    if m.ndim != 2 or m.size == 0 or m.all() or not numba_available():
        from scipy import ndimage as ndi

        return ndi.distance_transform_edt(m)
    m = np.ascontiguousarray(m != 0)
    return _kernel()(m, np.empty(m.shape, dtype=np.float64))
