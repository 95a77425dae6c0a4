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

from qdmed.imaging._jit import lazy_kernel, numba_available

__all__ = ["watershed"]


@lazy_kernel
def _kernel():
    """The compiled (flood, argsort_f64, flood_distinct) of :mod:`qdmed.imaging._flood`."""
    from qdmed.imaging import _flood

    return _flood.flood, _flood.argsort_f64, _flood.flood_distinct


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
