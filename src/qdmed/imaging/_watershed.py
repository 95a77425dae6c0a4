"""Marker-controlled watershed by a bucket queue over the ranks of the image values.

:func:`skimage.segmentation.watershed` floods from the markers with a binary heap ordered by
(value, age), where a pixel is labelled when pushed and enters the heap with
``max(its value, the value of the pixel that reached it)``. Keys popped from such a priority
flood never decrease, and the values that can occur are the image values themselves, so the
heap can be replaced by one FIFO per distinct image value, visited in increasing order (the
hierarchical queue of Meyer's flooding algorithm [1]_ [2]_): a FIFO pops equal values in
push order, which is the heap's age order. Ranking the values costs one sort; the flood is
then linear. On a 2048 x 2048 tile this took the two watersheds of a tile's segmentation from
about 1.3 s each to well under half of that (measured), and the result is identical to
scikit-image's whenever the marker pixels have distinct values and the image has no NaN (the
heap orders equal-valued markers arbitrarily, here they go in raster order; NaN compares
unordered in the heap). qdmed's landscapes carry a coordinate
tie-breaker, so their values are distinct. The tests compare both on random images, with
and without plateaus. scikit-image is used when numba is missing.

References
----------
.. [1] F. Meyer (1991). Un algorithme optimal pour la ligne de partage des eaux. 8e congres
   AFCET de reconnaissance des formes et intelligence artificielle, Lyon, 2:847-857.
.. [2] S. Beucher, F. Meyer (1993). The morphological approach to segmentation: the
   watershed transformation. In: Mathematical Morphology in Image Processing
   (E. R. Dougherty, ed.), Marcel Dekker, pp. 433-481. doi:10.1201/9781482277234-12
"""

from __future__ import annotations

import numpy as np

from qdmed.imaging._jit import lazy_kernel, njit_cached, numba_available

__all__ = ["watershed"]


@lazy_kernel
def _kernel():  # pragma: no cover - body runs compiled
    @njit_cached(nogil=True)
    def flood(idx, pix, sorted_vals, markers, out, rank, nxt):
        """Flood ``out`` (holding the markers, 0 elsewhere) over the masked pixels ``idx``
        (raveled, raster order); ``pix`` holds them in increasing order of value.
        ``rank`` (filled with -1) and ``nxt`` are work arrays of one entry per pixel, int32
        when that suffices (half the memory traffic of int64)."""
        h, w = out.shape
        m = idx.shape[0]
        # rank of every masked pixel's value (equal values share a rank); -1 = not in mask
        r = -1
        prev = np.nan
        for i in range(m):
            v = sorted_vals[i]
            if i == 0 or v != prev:
                r += 1
                prev = v
            rank[pix[i]] = r
        nb = r + 1
        head = np.full(nb, -1, dtype=rank.dtype)
        tail = np.full(nb, -1, dtype=rank.dtype)
        flat = out.ravel()
        mk = markers.ravel()
        cur = nb  # lowest non-empty bucket
        for i in range(m):  # markers, in raster order, at their own value
            p = idx[i]
            if mk[p] != 0:
                flat[p] = mk[p]
                b = rank[p]
                nxt[p] = -1
                if tail[b] < 0:
                    head[b] = p
                else:
                    nxt[tail[b]] = p
                tail[b] = p
                if b < cur:
                    cur = b
        while cur < nb:
            p = head[cur]
            if p < 0:
                cur += 1
                continue
            head[cur] = nxt[p]
            if head[cur] < 0:
                tail[cur] = -1
            y = p // w
            x = p - y * w
            lab = flat[p]
            for k in range(4):  # scikit-image's order for connectivity 1: up, left, right, down
                if k == 0:
                    if y == 0:
                        continue
                    q = p - w
                elif k == 1:
                    if x == 0:
                        continue
                    q = p - 1
                elif k == 2:
                    if x == w - 1:
                        continue
                    q = p + 1
                else:
                    if y == h - 1:
                        continue
                    q = p + w
                b = rank[q]
                if b < 0 or flat[q] != 0:
                    continue
                flat[q] = lab  # labelled when pushed, as in scikit-image
                if b < cur:
                    b = cur  # cost of reaching q is at least that of p
                nxt[q] = -1
                if tail[b] < 0:
                    head[b] = q
                else:
                    nxt[tail[b]] = q
                tail[b] = q
        return out

    @njit_cached(nogil=True)
    def flood_distinct(pix, sorted_vals, image, mask, markers, out):
        """:func:`flood` when the masked values are all distinct (and none is NaN), as in
        qdmed's landscapes with their tie-breaker: bucket ``r`` then only ever holds its own
        pixel ``pix[r]`` (the masked pixels in increasing order of value), pushed when it was
        reached, followed by the pixels pushed at that level because their own level had
        passed. So no bucket lists and no rank image are needed: a pixel is reached when
        labelled, and one FIFO serves the current level. Same output as :func:`flood`
        (tested); about a quarter faster on a 2208^2 tile (measured)."""
        h, w = out.shape
        m = pix.shape[0]
        flat = out.ravel()
        mk = markers.ravel()
        img = image.ravel()
        msk = mask.ravel()
        for i in range(m):
            p = pix[i]
            if mk[p] != 0:
                flat[p] = mk[p]
        fifo = np.empty(m, dtype=pix.dtype)
        for r in range(m):
            p = pix[r]
            if flat[p] == 0:  # not reached (yet): nothing at this level
                continue
            level = sorted_vals[r]
            head = 0
            tail = 0
            while True:
                y = p // w
                x = p - y * w
                lab = flat[p]
                # the neighbour loop repeats flood's on purpose: a shared jitted helper called
                # through this closure makes numba recompile both floods in every process
                # (tried; tests/imaging/test_kernel_cache.py catches it)
                for k in range(4):  # scikit-image's order: up, left, right, down
                    if k == 0:
                        if y == 0:
                            continue
                        q = p - w
                    elif k == 1:
                        if x == 0:
                            continue
                        q = p - 1
                    elif k == 2:
                        if x == w - 1:
                            continue
                        q = p + 1
                    else:
                        if y == h - 1:
                            continue
                        q = p + w
                    if not msk[q] or flat[q] != 0:
                        continue
                    flat[q] = lab  # labelled when pushed
                    if img[q] < level:  # its own level has passed: queued at this one
                        fifo[tail] = q
                        tail += 1
                if head == tail:
                    break
                p = fifo[head]
                head += 1
        return out

    @njit_cached(nogil=True)
    def argsort_f64(vals, idx):
        """``(idx, vals)`` both in increasing order of ``vals`` (float64), ``idx`` being any
        payload of one integer per value (``arange(n)`` gives the permutation; the pixel
        indices give the pixels in order; used as work space and may be overwritten). LSD radix
        sort, 11-bit digits (six passes; 8-bit digits took eight and were 27 % slower on
        2.8e6 values, measured), on the order-preserving unsigned image of the IEEE-754 bits
        (negative values: all bits flipped; others: sign bit set). Passes whose digit is the
        same for every key are skipped. Equal keys keep their input order (stable); every NaN
        (whatever its sign bit) sorts after +inf, as in ``np.sort``; -0.0 sorts before +0.0
        (``np.sort`` keeps the two zeros in input order; the flood gives them one rank)."""
        n = vals.shape[0]
        bits = vals.view(np.uint64)
        sign = np.uint64(1) << np.uint64(63)
        key = np.empty(n, dtype=np.uint64)
        top = ~np.uint64(0)
        digits = 6
        mask = np.uint64(2047)
        hist = np.zeros((digits, 2048), dtype=np.int64)
        for i in range(n):
            u = bits[i]
            u = top if vals[i] != vals[i] else (~u if u & sign else u | sign)
            key[i] = u
            for d in range(digits):
                hist[d, (u >> np.uint64(11 * d)) & mask] += 1
        key2 = np.empty(n, dtype=np.uint64)
        idx2 = np.empty_like(idx)
        pos = np.empty(2048, dtype=np.int64)
        for d in range(digits):
            h = hist[d]
            if h.max() == n:  # every key has the same digit here
                continue
            acc = 0
            for b in range(2048):
                pos[b] = acc
                acc += h[b]
            sh = np.uint64(11 * d)
            for i in range(n):
                u = key[i]
                b = (u >> sh) & mask
                j = pos[b]
                pos[b] = j + 1
                key2[j] = u
                idx2[j] = idx[i]
            key, key2 = key2, key
            idx, idx2 = idx2, idx
        out = np.empty(n)  # the sorted values, back from their keys (no gather)
        ob = out.view(np.uint64)
        for i in range(n):
            u = key[i]
            ob[i] = u ^ sign if u & sign else ~u  # the key of NaN comes back as a NaN
        return idx, out

    return flood, argsort_f64, flood_distinct


def watershed(image, markers, mask=None) -> np.ndarray:
    """Watershed of a 2-D ``image`` flooded from integer ``markers`` (0 = unlabelled) within
    ``mask``, 4-connectivity: :func:`skimage.segmentation.watershed` with its defaults
    (identical output when marker pixels have distinct values).

    Returns an array of the markers' dtype.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.array([[0., 1., 5., 1., 0.]])
    >>> watershed(img, np.array([[1, 0, 0, 0, 2]]))
    array([[1, 1, 1, 2, 2]])
    """
    img = np.asarray(image, dtype=np.float64)
    mk = np.asarray(markers)
    if (img.ndim != 2 or mk.shape != img.shape or mk.dtype.kind not in "iu"
            or not numba_available()):
        from skimage.segmentation import watershed as sk_watershed

        return sk_watershed(img, mk, mask=mask)
    msk = np.ones(img.shape, bool) if mask is None else np.asarray(mask, dtype=bool)
    if msk.shape != img.shape:
        raise ValueError(f"mask shape {msk.shape} does not match image shape {img.shape}")
    idx = np.flatnonzero(msk)
    vals = img.ravel()[idx]
    flood, argsort, flood_distinct = _kernel()
    itype = np.int32 if img.size < 2**31 - 1 else np.int64
    # radix sort: 5x faster than np.argsort (2.8e6 values, measured); it carries the pixel
    # indices and gives back the sorted values, so neither needs a gather afterwards
    pix, sorted_vals = argsort(vals, idx.astype(itype))
    mk = np.ascontiguousarray(np.where(msk, mk, 0))
    out = np.zeros(img.shape, dtype=mk.dtype)
    if sorted_vals.size and not np.isnan(sorted_vals[-1]) and bool(
            np.all(sorted_vals[1:] != sorted_vals[:-1])):
        return flood_distinct(pix, sorted_vals, np.ascontiguousarray(img),
                              np.ascontiguousarray(msk), mk, out)
    return flood(idx, pix, sorted_vals, mk, out, np.full(img.size, -1, dtype=itype),
                 np.empty(img.size, dtype=itype))
