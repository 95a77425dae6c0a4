"""Cell and nucleus outlines traced from label images, for the QuPath GeoJSON export.

Each label's outer boundary is followed along the pixel edges ("cracks") between its pixels
and the others, keeping the label on the right and treating it as 4-connected (a pixel that
touches it only at a corner is outside), from the top edge of its first pixel in raster
order until the walk returns there. The ring's vertices are the midpoints of those unit
edges: exactly the 0.5 iso-contour that marching squares traces on the label's binary mask
(:func:`skimage.measure.find_contours` with its default ``fully_connected='low'``; tested
equal), which cuts each pixel corner by half a pixel. The ring is then simplified by the
Ramer-Douglas-Peucker algorithm [1]_ [2]_ (no dropped vertex lies farther than
``tolerance_px`` from the simplified ring). The default, 0.4 px, straightens staircases of
diagonal edges (whose midpoints are collinear, or off the line by 0.35 px) and keeps the
half-pixel steps. On a synthetic 2208^2 tile (3,666 cells) cells kept 45 of ~166 vertices
and nuclei 18, and the polygon areas were within 0.3 % (cells) and 1.2 % (nuclei) of the
pixel counts (1st-99th percentile; at 0.5 px: 33 and 12 vertices, 1.5 % and 3.9 %).

Unlike the star-shaped polygons qdmed wrote before (one vertex per angular sector about the
centroid), concave cells are outlined as they are, so neighbouring outlines do not overlap
by more than the tolerance. Holes and pieces not 4-connected to the first pixel are left
out (a polygon without holes is what QuPath's cell objects hold).

Written as two compiled passes (numba; plain Python without it, same code): on that tile
they took ~0.1 s for all cells, where ``find_contours`` and ``approximate_polygon`` took
~0.2 ms and ~3 ms per cell, and the star polygons ~1 s (measured).

References
----------
.. [1] U. Ramer (1972). An iterative procedure for the polygonal approximation of plane
   curves. Computer Graphics and Image Processing 1(3):244-256.
   doi:10.1016/S0146-664X(72)80017-0
.. [2] D. H. Douglas, T. K. Peucker (1973). Algorithms for the reduction of the number of
   points required to represent a digitized line or its caricature. Cartographica 10(2):
   112-122. doi:10.3138/FM57-6770-U75U-7727
"""

from __future__ import annotations

import numpy as np

from qdmed.imaging._jit import lazy_kernel, njit_cached, numba_available

__all__ = ["label_outlines"]


def _trace(labels, ids, tol, vy, vx, start, work_y, work_x, keep, stack):
    """Trace and simplify the outer boundary of every label in ``ids`` (sorted, > 0).

    Ring ``i`` (open: its first vertex is not repeated) is ``vy/vx[start[i]:start[i + 1]]``,
    in corner coordinates (pixel (r, c) covers [c, c + 1) x [r, r + 1)); labels without a
    pixel get an empty ring. ``vy``, ``vx``, ``work_*``, ``keep`` and ``stack`` need one entry
    per boundary edge of the largest label (``_edge_counts``). Returns nothing."""
    h, w = labels.shape
    nb = ids[-1] + 1
    first = np.full(nb, -1, dtype=np.int64)
    want = np.zeros(nb, dtype=np.bool_)
    for i in range(ids.shape[0]):
        want[ids[i]] = True
    for y in range(h):
        for x in range(w):
            v = labels[y, x]
            if v > 0 and v < nb and want[v] and first[v] < 0:
                first[v] = y * w + x
    out = 0
    start[0] = 0
    for i in range(ids.shape[0]):
        v = ids[i]
        p = first[v]
        if p < 0:
            start[i + 1] = out
            continue
        y0 = p // w
        x0 = p - y0 * w
        cy, cx, dy, dx = y0, x0, 0, 1  # along the top edge of the first pixel, eastwards
        n = 0
        while True:
            work_y[n] = cy + 0.5 * dy  # midpoint of the edge
            work_x[n] = cx + 0.5 * dx
            n += 1
            cy += dy
            cx += dx
            ry, rx = dx, -dy  # the label's side (right of the heading; y points down)
            # the two pixels ahead of corner (cy, cx): right and left of the heading
            ay = cy + (dy + ry - 1) // 2
            ax = cx + (dx + rx - 1) // 2
            by = cy + (dy - ry - 1) // 2
            bx = cx + (dx - rx - 1) // 2
            right_in = 0 <= ay < h and 0 <= ax < w and labels[ay, ax] == v
            left_in = 0 <= by < h and 0 <= bx < w and labels[by, bx] == v
            if not right_in:
                dy, dx = ry, rx  # turn right
            elif left_in:
                dy, dx = -ry, -rx  # turn left
            if cy == y0 and cx == x0 and dy == 0 and dx == 1:
                break
        # Ramer-Douglas-Peucker on the closed ring: anchors at vertex 0 and the vertex
        # farthest from it, then split each run at its farthest vertex while > tol
        for k in range(n):
            keep[k] = False
        keep[0] = True
        far, best = 0, -1.0
        for k in range(1, n):
            d2 = (work_y[k] - work_y[0]) ** 2 + (work_x[k] - work_x[0]) ** 2
            if d2 > best:
                far, best = k, d2
        keep[far] = True
        top = 0
        stack[top, 0], stack[top, 1] = 0, far
        stack[top + 1, 0], stack[top + 1, 1] = far, n  # n stands for vertex 0 again
        top = 2
        while top > 0:
            top -= 1
            a, b = stack[top, 0], stack[top, 1]
            bb = b if b < n else 0
            sy, sx = work_y[a], work_x[a]
            ey, ex = work_y[bb] - sy, work_x[bb] - sx
            ll = ey * ey + ex * ex
            imax, dmax = -1, tol * tol
            for k in range(a + 1, b):
                py, px = work_y[k] - sy, work_x[k] - sx
                t = 0.0 if ll == 0.0 else min(1.0, max(0.0, (py * ey + px * ex) / ll))
                d2 = (py - t * ey) ** 2 + (px - t * ex) ** 2  # to the segment
                if d2 > dmax:
                    imax, dmax = k, d2
            if imax >= 0:
                keep[imax] = True
                stack[top, 0], stack[top, 1] = a, imax
                stack[top + 1, 0], stack[top + 1, 1] = imax, b
                top += 2
        kept = 0
        for k in range(n):
            if keep[k]:
                kept += 1
        for k in range(n):
            if keep[k] or kept < 3:  # tiny labels keep every midpoint
                vy[out] = work_y[k]
                vx[out] = work_x[k]
                out += 1
        start[i + 1] = out


def _edge_counts(labels, ids):
    """Boundary edges of each label in ``ids`` (sorted, > 0): the sizes ``_trace`` needs."""
    h, w = labels.shape
    nb = ids[-1] + 1
    cnt = np.zeros(nb, dtype=np.int64)
    for y in range(h):
        for x in range(w):
            v = labels[y, x]
            if v <= 0 or v >= nb:
                continue
            e = 0
            if y == 0 or labels[y - 1, x] != v:
                e += 1
            if y == h - 1 or labels[y + 1, x] != v:
                e += 1
            if x == 0 or labels[y, x - 1] != v:
                e += 1
            if x == w - 1 or labels[y, x + 1] != v:
                e += 1
            cnt[v] += e
    return cnt


@lazy_kernel
def _kernels():
    return njit_cached(nogil=True)(_edge_counts), njit_cached(nogil=True)(_trace)


def label_outlines(labels, ids, oy: int = 0, ox: int = 0,
                   tolerance_px: float = 0.4) -> dict[int, list[list[float]]]:
    """Closed outline rings ``[[x, y], ...]`` (first vertex repeated last) of the labels
    ``ids`` in a 2-D label image whose top-left pixel is at (``oy``, ``ox``), in QuPath's
    coordinates (pixel (r, c) covers [c, c + 1) x [r, r + 1)); see the module docstring.
    Ids with no pixel are left out.

    Examples
    --------
    >>> import numpy as np
    >>> lab = np.zeros((4, 5), np.int32)
    >>> lab[1:3, 1:4] = 7
    >>> label_outlines(lab, [7], tolerance_px=0)[7]  # pixels (1-2, 1-3): corners cut
    [[1.5, 1.0], [3.5, 1.0], [4.0, 1.5], [4.0, 2.5], [3.5, 3.0], [1.5, 3.0], [1.0, 2.5], [1.0, 1.5], [1.5, 1.0]]
    """
    lab = np.ascontiguousarray(labels)
    if lab.ndim != 2 or lab.dtype.kind not in "iu":
        raise ValueError(f"labels must be a 2-D integer array; got shape {lab.shape}, dtype "
                         f"{lab.dtype}")
    ids = np.unique(np.asarray(ids, dtype=np.int64))
    ids = ids[ids > 0]
    if ids.size == 0:
        return {}
    if not (0 <= tolerance_px < np.inf):
        raise ValueError(f"tolerance_px must be a finite number >= 0; got {tolerance_px}")
    lab = lab.astype(np.int64, copy=False) if lab.dtype.kind == "u" else lab
    edge_counts, trace = _kernels() if numba_available() else (_edge_counts, _trace)
    cnt = edge_counts(lab, ids)
    m = max(int(cnt[ids].max()), 1)
    total = max(int(cnt[ids].sum()), 1)
    vy, vx = np.empty(total), np.empty(total)
    start = np.zeros(ids.size + 1, dtype=np.int64)
    trace(lab, ids, float(tolerance_px), vy, vx, start, np.empty(m), np.empty(m),
          np.empty(m, dtype=np.bool_), np.empty((m + 2, 2), dtype=np.int64))
    n = int(start[-1])
    xy = np.column_stack([vx[:n] + ox, vy[:n] + oy]).tolist()  # one conversion for all
    rings = {}
    for v, s, e in zip(ids.tolist(), start[:-1].tolist(), start[1:].tolist(), strict=True):
        if e - s >= 3:
            rings[v] = xy[s:e] + [xy[s]]
    return rings
