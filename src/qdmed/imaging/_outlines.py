"""Cell and nucleus outlines traced from label images, for the QuPath GeoJSON export.

Each label's largest 4-connected piece (:func:`skimage.measure.label`, connectivity 1) is
outlined: its outer boundary is followed along the pixel edges ("cracks") between its pixels
and the others, keeping the piece on the right, from the top edge of its first pixel in
raster order until the walk returns there. The ring's vertices are the midpoints of those unit
edges: exactly the 0.5 iso-contour that marching squares traces on the label's binary mask
(:func:`skimage.measure.find_contours` with its default ``fully_connected='low'``; tested
equal), which cuts each pixel corner by half a pixel. The ring is then simplified by the
Ramer-Douglas-Peucker algorithm [1]_ [2]_ (no dropped vertex lies farther than
``tolerance_px`` from the simplified ring). The default, 0.4 px, straightens staircases of
diagonal edges (whose midpoints are collinear, or off the line by 0.35 px) and keeps the
half-pixel steps. On a synthetic 2208^2 tile (3,666 cells) cells kept 45 of ~166 vertices
and nuclei 18, and the polygon areas were within 0.3 % (cells) and 1.2 % (nuclei) of the
pixel counts (1st-99th percentile; at 0.5 px: 33 and 12 vertices, 1.5 % and 3.9 %).
Ramer-Douglas-Peucker does not guarantee a simple ring: every simplified ring is checked
for edges that cross, touch or fold back (exact orientation tests: the vertices are
multiples of 0.5 px), and where it is not simple the traced ring, which is, is written whole
(rare at 0.4 px; ~70 ms per 3,600 cells for the check, measured).

Unlike the star-shaped polygons qdmed wrote before (one vertex per angular sector about the
centroid), concave cells are outlined as they are, so neighbouring outlines do not overlap
by more than the tolerance. Holes and smaller pieces are left out (a polygon without holes
is what QuPath's cell objects hold); a cell expanded from its nucleus sometimes carries a
stray pixel that touches it only at a corner.

Written as two compiled passes (numba; plain Python without it, same code) after the
labelling of the pieces: on that tile the cells took ~0.3 s and the nuclei ~0.2 s, where
``find_contours`` and ``approximate_polygon`` took ~0.2 ms and ~3 ms per cell, and the star
polygons ~1.2 s and ~0.9 s (measured on the same machine).

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


def _trace(comps, ids, starts, tol, vy, vx, start, work_y, work_x, keep, stack):
    """Trace and simplify the outer boundary of every piece ``ids[i]`` of the component image
    ``comps`` (4-connected pieces, each its own id), from its first pixel in raster order
    ``starts[i]`` (raveled).

    Ring ``i`` (open: its first vertex is not repeated) is ``vy/vx[start[i]:start[i + 1]]``,
    in corner coordinates (pixel (r, c) covers [c, c + 1) x [r, r + 1)). ``vy``, ``vx``,
    ``work_*``, ``keep`` and ``stack`` need one entry per boundary edge of the largest piece
    (``_pieces``). Returns nothing."""
    h, w = comps.shape
    out = 0
    start[0] = 0
    for i in range(ids.shape[0]):
        v = ids[i]
        p = starts[i]
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
            right_in = 0 <= ay < h and 0 <= ax < w and comps[ay, ax] == v
            left_in = 0 <= by < h and 0 <= bx < w and comps[by, bx] == v
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
        if kept < 3 and n >= 3:  # a triangle at least: add the vertex farthest from the chord
            ey, ex = work_y[far] - work_y[0], work_x[far] - work_x[0]
            imax, dmax = -1, -1.0
            for k in range(1, n):
                d = abs((work_y[k] - work_y[0]) * ex - (work_x[k] - work_x[0]) * ey)
                if k != far and d > dmax:
                    imax, dmax = k, d
            keep[imax] = True
        s0 = out
        for k in range(n):
            if keep[k]:
                vy[out] = work_y[k]
                vx[out] = work_x[k]
                out += 1
        # the simplified ring must stay simple (a self-touching ring is an invalid polygon
        # for QuPath's geometry library): if two edges that do not share a vertex meet, or
        # two consecutive edges fold back onto each other, keep every traced vertex instead
        # (that ring is simple). Vertices are multiples of 0.5 px: the orientation products
        # below are exact.
        m = out - s0
        simple = True
        for a in range(m):
            if not simple:
                break
            uy, ux = vy[s0 + a], vx[s0 + a]
            b = a + 1 if a + 1 < m else 0
            wy, wx = vy[s0 + b], vx[s0 + b]
            c = b + 1 if b + 1 < m else 0
            ty, tx = vy[s0 + c], vx[s0 + c]
            turn = (wx - ux) * (ty - uy) - (wy - uy) * (tx - ux)
            if turn == 0.0 and (tx - wx) * (ux - wx) + (ty - wy) * (uy - wy) > 0.0:
                simple = False  # a spike: edge b-c runs back along edge a-b
            for e in range(a + 2, m):
                f = e + 1 if e + 1 < m else 0
                if f == a:
                    continue  # edges a and e share vertex a
                ey, ex = vy[s0 + e], vx[s0 + e]
                fy, fx = vy[s0 + f], vx[s0 + f]
                d1 = (fx - ex) * (uy - ey) - (fy - ey) * (ux - ex)
                d2 = (fx - ex) * (wy - ey) - (fy - ey) * (wx - ex)
                d3 = (wx - ux) * (ey - uy) - (wy - uy) * (ex - ux)
                d4 = (wx - ux) * (fy - uy) - (wy - uy) * (fx - ux)
                if d1 * d2 > 0.0 or d3 * d4 > 0.0:
                    continue  # both ends of one edge on the same side of the other
                if d1 != 0.0 or d2 != 0.0:
                    simple = False  # they cross or touch
                    break
                # collinear: do the two edges overlap?
                if (max(ux, wx) >= min(ex, fx) and max(ex, fx) >= min(ux, wx)
                        and max(uy, wy) >= min(ey, fy) and max(ey, fy) >= min(uy, wy)):
                    simple = False
                    break
        if not simple:
            out = s0
            for k in range(n):
                vy[out] = work_y[k]
                vx[out] = work_x[k]
                out += 1
        start[i + 1] = out


def _pieces(comps, n):
    """For each piece ``1..n - 1`` of the component image ``comps``: its boundary edges, its
    first pixel in raster order (raveled; -1 if absent) and its pixel count."""
    h, w = comps.shape
    edges = np.zeros(n, dtype=np.int64)
    first = np.full(n, -1, dtype=np.int64)
    size = np.zeros(n, dtype=np.int64)
    for y in range(h):
        for x in range(w):
            v = comps[y, x]
            if v <= 0:
                continue
            if first[v] < 0:
                first[v] = y * w + x
            size[v] += 1
            e = 0
            if y == 0 or comps[y - 1, x] != v:
                e += 1
            if y == h - 1 or comps[y + 1, x] != v:
                e += 1
            if x == 0 or comps[y, x - 1] != v:
                e += 1
            if x == w - 1 or comps[y, x + 1] != v:
                e += 1
            edges[v] += e
    return edges, first, size


@lazy_kernel
def _kernels():
    return njit_cached(nogil=True)(_pieces), njit_cached(nogil=True)(_trace)


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
    from skimage.measure import label as connected_pieces

    lab = np.asarray(labels)
    if lab.ndim != 2 or lab.dtype.kind not in "iu":
        raise ValueError(f"labels must be a 2-D integer array; got shape {lab.shape}, dtype "
                         f"{lab.dtype}")
    if lab.dtype == np.uint64 and lab.size and int(lab.max()) >= 2**63:
        raise ValueError(f"labels must be below 2^63 (ids are int64); got {int(lab.max())}")
    if not (0 <= tolerance_px < np.inf):
        raise ValueError(f"tolerance_px must be a finite number >= 0; got {tolerance_px}")
    ids = np.asarray(ids)
    if ids.size and (ids.dtype.kind not in "iuf" or (ids.dtype.kind == "f" and not np.all(
            np.isfinite(ids) & (ids == np.round(ids))))):
        raise ValueError(f"ids must be integers; got dtype {ids.dtype}")
    ids = np.unique(ids.astype(np.int64))
    ids = ids[ids > 0]
    if ids.size == 0 or lab.size == 0:
        return {}
    # every 4-connected piece of equal label its own id (0 stays 0)
    comps = connected_pieces(lab, background=0, connectivity=1)
    pieces, trace = _kernels() if numba_available() else (_pieces, _trace)
    edges, first, size = pieces(comps, int(comps.max()) + 1)
    piece = np.flatnonzero(first >= 0)
    if piece.size == 0:
        return {}
    first, size, edges = first[piece], size[piece], edges[piece]
    owner = lab.ravel()[first].astype(np.int64)
    # each requested label's largest piece (ties: the first in raster order)
    order = np.lexsort((first, -size, owner))
    owner_sorted = owner[order]
    lead = order[np.r_[True, owner_sorted[1:] != owner_sorted[:-1]]]
    lead = lead[np.isin(owner[lead], ids)]
    if lead.size == 0:
        return {}
    lead = lead[np.argsort(owner[lead])]
    sel, starts, ids = piece[lead].astype(comps.dtype), first[lead], owner[lead]
    cnt = edges[lead]
    m = int(cnt.max())
    vy, vx = np.empty(int(cnt.sum())), np.empty(int(cnt.sum()))
    start = np.zeros(ids.size + 1, dtype=np.int64)
    trace(comps, sel, starts, float(tolerance_px), vy, vx, start, np.empty(m), np.empty(m),
          np.empty(m, dtype=np.bool_), np.empty((m + 2, 2), dtype=np.int64))
    n = int(start[-1])
    xy = np.column_stack([vx[:n] + ox, vy[:n] + oy]).tolist()  # one conversion for all
    rings = {}
    for v, s, e in zip(ids.tolist(), start[:-1].tolist(), start[1:].tolist(), strict=True):
        if e - s >= 3:
            rings[v] = xy[s:e] + [xy[s]]
    return rings
