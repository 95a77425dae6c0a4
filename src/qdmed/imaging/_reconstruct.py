"""Grey-scale morphological reconstruction by dilation and h-maxima, in linear time.

scikit-image's :func:`skimage.morphology.reconstruction` sorts every pixel value first
(``rank_order``), which made it the most expensive step of nucleus segmentation (about a
quarter of a 2048 x 2048 tile's analysis time, measured). Reconstruction is uniquely defined,
so Vincent's hybrid algorithm (two raster scans, then a FIFO propagation) gives identical
values in O(n) with only min/max operations; it is compiled with numba when numba is
installed, and scikit-image is used otherwise. The tests compare both on random images.

References
----------
.. [1] L. Vincent (1993). Morphological grayscale reconstruction in image analysis:
   applications and efficient algorithms. IEEE Trans. Image Process. 2(2):176-201.
   doi:10.1109/83.217222
.. [2] P. Soille (2003). Morphological Image Analysis, 2nd ed., section 6.3.5 (h-maxima).
   Springer. doi:10.1007/978-3-662-05088-0
"""

from __future__ import annotations

import numpy as np

from qdmed.imaging._jit import lazy_kernel, njit_cached, numba_available

__all__ = ["h_maxima", "reconstruct_dilation"]


@lazy_kernel
def _kernel():  # pragma: no cover - body runs compiled
    @njit_cached(nogil=True)
    def recon(j, m):
        """In-place reconstruction by dilation of marker ``j`` under mask ``m`` (j <= m),
        8-connectivity (Vincent 1993, hybrid algorithm)."""
        h, w = j.shape
        # forward raster scan: causal neighbours (previous row and left)
        for y in range(h):
            for x in range(w):
                v = j[y, x]
                if x > 0 and j[y, x - 1] > v:
                    v = j[y, x - 1]
                if y > 0:
                    for dx in (-1, 0, 1):
                        xx = x + dx
                        if 0 <= xx < w and j[y - 1, xx] > v:
                            v = j[y - 1, xx]
                mv = m[y, x]
                j[y, x] = v if v < mv else mv
        # backward scan: anti-causal neighbours; queue pixels that can still propagate
        qy = np.empty(h * w, dtype=np.int64)
        qx = np.empty(h * w, dtype=np.int64)
        inq = np.zeros((h, w), dtype=np.uint8)  # each pixel at most once in the queue
        head = 0
        tail = 0
        for y in range(h - 1, -1, -1):
            for x in range(w - 1, -1, -1):
                v = j[y, x]
                if x < w - 1 and j[y, x + 1] > v:
                    v = j[y, x + 1]
                if y < h - 1:
                    for dx in (-1, 0, 1):
                        xx = x + dx
                        if 0 <= xx < w and j[y + 1, xx] > v:
                            v = j[y + 1, xx]
                mv = m[y, x]
                v = v if v < mv else mv
                j[y, x] = v
                push = False
                if x < w - 1 and j[y, x + 1] < v and j[y, x + 1] < m[y, x + 1]:
                    push = True
                if y < h - 1 and not push:
                    for dx in (-1, 0, 1):
                        xx = x + dx
                        if 0 <= xx < w and j[y + 1, xx] < v and j[y + 1, xx] < m[y + 1, xx]:
                            push = True
                if push:
                    qy[tail] = y
                    qx[tail] = x
                    inq[y, x] = 1
                    tail += 1
        # FIFO propagation; a pixel raised while queued is not queued twice (it propagates
        # its latest value when popped), so the circular buffer of n entries never overflows
        n = h * w
        count = tail
        tail = tail if tail < n else 0
        while count > 0:
            y = qy[head]
            x = qx[head]
            inq[y, x] = 0
            head = head + 1 if head + 1 < n else 0
            count -= 1
            v = j[y, x]
            for dy in (-1, 0, 1):
                yy = y + dy
                if yy < 0 or yy >= h:
                    continue
                for dx in (-1, 0, 1):
                    xx = x + dx
                    if (dy == 0 and dx == 0) or xx < 0 or xx >= w:
                        continue
                    jq = j[yy, xx]
                    mq = m[yy, xx]
                    if jq < v and jq != mq:
                        j[yy, xx] = v if v < mq else mq
                        if inq[yy, xx] == 0:
                            inq[yy, xx] = 1
                            qy[tail] = yy
                            qx[tail] = xx
                            tail = tail + 1 if tail + 1 < n else 0
                            count += 1
        return j

    return recon


def reconstruct_dilation(seed, mask):
    """Grey-scale reconstruction by dilation of ``seed`` under ``mask`` (2-D, 8-connected).

    Same values as ``skimage.morphology.reconstruction(seed, mask, method='dilation')``
    (only comparisons are involved, no arithmetic) in linear time when numba is installed.
    Unlike scikit-image, a seed above the mask is clipped to it rather than refused; NaN
    values are not supported.

    Parameters
    ----------
    seed, mask : ndarray, shape (Y, X)
        ``seed <= mask`` everywhere.

    Returns
    -------
    ndarray, float64, shape (Y, X)

    Examples
    --------
    >>> import numpy as np
    >>> m = np.array([[0., 3., 3., 0., 5.]])
    >>> reconstruct_dilation(np.array([[0., 2., 0., 0., 0.]]), m)
    array([[0., 2., 2., 0., 0.]])
    """
    s = np.asarray(seed, dtype=np.float64)
    m = np.asarray(mask, dtype=np.float64)
    if s.ndim != 2 or s.shape != m.shape or not numba_available():
        from skimage.morphology import reconstruction

        return reconstruction(s, m, method="dilation")
    j = np.minimum(s, m)  # a copy, with the seed clipped to the mask
    return _kernel()(j, np.ascontiguousarray(m))


def h_maxima(image, h: float) -> np.ndarray:
    """Regional maxima of dynamic at least ``h`` (uint8 mask), as
    :func:`skimage.morphology.h_maxima` for float images with the default footprint.

    ``image - reconstruction(image - h - eps, image) >= h`` with the same rounding guard
    ``eps = 2 * resolution * |image|`` as scikit-image [2]_.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.array([[0., 1., 0., 3., 0.]])
    >>> h_maxima(img, 2.0)
    array([[0, 0, 0, 1, 0]], dtype=uint8)
    """
    img = np.asarray(image, dtype=np.float64)
    if h > np.ptp(img):
        return np.zeros(img.shape, dtype=np.uint8)
    if h <= 0:
        raise ValueError("h must be > 0")
    shifted = img - h - 2 * np.finfo(np.float64).resolution * np.abs(img)
    rec = reconstruct_dilation(shifted, img)
    return ((img - rec) >= h).astype(np.uint8)
