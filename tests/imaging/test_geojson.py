"""QuPath GeoJSON export: outline geometry (traced pixel-edge outlines), the structure QuPath's reader expects
(qupath-core PathObjectTypeAdapters: UUID ids, top-level nucleusGeometry, measurements and
metadata objects, classification), streaming and classification."""

import json
import uuid

import numpy as np
import pandas as pd
import pytest

from qdmed.imaging._geojson import cell_features, write_feature_collection
from qdmed.imaging._outlines import label_outlines


def _area(ring):
    a = np.asarray(ring)
    x, y = a[:, 0], a[:, 1]
    return 0.5 * abs(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))


@pytest.mark.parametrize("radius", [5.0, 8.0, 12.0, 20.0])
@pytest.mark.parametrize("centre", [(30.0, 30.0), (30.3, 29.6)])
def test_outline_area_matches_the_pixel_count(radius, centre):
    yy, xx = np.mgrid[:64, :64]
    lab = (((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) < radius**2).astype(np.int32)
    ring = label_outlines(lab, [1])[1]
    assert ring[0] == ring[-1]
    assert _area(ring) == pytest.approx(lab.sum(), rel=0.01)


def test_outline_coordinates_are_global_pixel_edges():
    lab = np.zeros((10, 10), np.int32)
    lab[2:5, 3:7] = 4  # rows 2-4, columns 3-6
    ring = np.asarray(label_outlines(lab, [4], oy=100, ox=200)[4])
    # QuPath coordinates: x = column, y = row, pixel (r, c) covers [c, c+1) x [r, r+1)
    assert ring[:, 0].min() == 203 and ring[:, 0].max() == 207
    assert ring[:, 1].min() == 102 and ring[:, 1].max() == 105


def _inside(ring, px, py):
    """Even-odd point-in-polygon test for points (px, py)."""
    a = np.asarray(ring)[:-1]
    x0, y0 = a[:, 0], a[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    px, py = np.asarray(px, float)[:, None], np.asarray(py, float)[:, None]
    cross = (y0 > py) != (y1 > py)
    with np.errstate(divide="ignore", invalid="ignore"):
        xi = x0 + (py - y0) * (x1 - x0) / (y1 - y0)
    return (cross & (px < xi)).sum(axis=1) % 2 == 1


def test_concave_cells_are_outlined_as_they_are():
    """A C-shaped cell wrapped round its neighbour: the outline holds every pixel centre
    of the cell and none of the neighbour's (the star-shaped polygons qdmed wrote before
    covered the neighbour, which sits in the C's mouth)."""
    lab = np.zeros((40, 40), np.int32)
    yy, xx = np.mgrid[:40, :40]
    r = np.hypot(yy - 20, xx - 20)
    lab[(r >= 8) & (r < 14) & ~((xx > 20) & (np.abs(yy - 20) < 5))] = 1  # a C opening east
    lab[r < 8] = 2  # its neighbour fills the middle
    lab[(xx > 20) & (np.abs(yy - 20) < 5) & (r < 14)] = 2
    from scipy import ndimage as ndi

    exact = label_outlines(lab, [1, 2], tolerance_px=0)
    rings = label_outlines(lab, [1, 2])  # simplified to within 0.4 px
    for own, other in ((1, 2), (2, 1)):
        ys, xs = np.nonzero(lab == own)
        assert _inside(exact[own], xs + 0.5, ys + 0.5).all()
        ys, xs = np.nonzero(lab == other)
        assert not _inside(exact[own], xs + 0.5, ys + 0.5).any()
        # simplified: only a neighbour pixel diagonal to the cell can fall inside
        hit = _inside(rings[own], xs + 0.5, ys + 0.5)
        dist = ndi.distance_transform_edt(lab != own)[ys, xs]
        assert hit.sum() <= 3 and (dist[hit] <= np.sqrt(2) + 1e-9).all()
        assert _area(rings[own]) == pytest.approx((lab == own).sum(), rel=0.02)


def test_unsimplified_outlines_are_skimage_marching_squares_contours():
    """With no simplification the ring is find_contours' 0.5 iso-contour of the label's
    mask (fully_connected='low': the label 4-connected): same area, and every vertex on
    it (collinear midpoints are dropped). Random labels, single pixels, diagonal touches."""
    from scipy import ndimage as ndi
    from skimage.measure import find_contours

    rng = np.random.default_rng(3)
    for trial in range(40):
        mask = rng.random((24, 24)) < 0.55
        if trial % 2:
            mask = ndi.binary_opening(mask)
        labs, n = ndi.label(mask)  # 4-connected components
        rings = label_outlines(labs, range(1, n + 1), oy=5, ox=7, tolerance_px=0)
        for i in range(1, n + 1):
            c = max(find_contours(np.pad(labs == i, 1), 0.5), key=len)
            ring = np.asarray(rings[i])
            sk = np.column_stack([c[:, 1] - 0.5 + 7, c[:, 0] - 0.5 + 5])  # x, y, QuPath
            assert _area(ring) == pytest.approx(_area(sk), abs=1e-9)
            on = {(round(x, 6), round(y, 6)) for x, y in sk}
            assert all((round(x, 6), round(y, 6)) in on for x, y in ring)


def test_simplified_ring_stays_within_the_tolerance():
    from skimage.measure import find_contours

    yy, xx = np.mgrid[:80, :80]
    lab = ((((yy - 40) / 30.0) ** 2 + ((xx - 38) / 17.0) ** 2) < 1).astype(np.int32)
    for tol in (0.4, 1.0, 2.0):
        ring = np.asarray(label_outlines(lab, [1], tolerance_px=tol)[1])
        c = max(find_contours(np.pad(lab == 1, 1), 0.5), key=len)
        pts = np.column_stack([c[:, 1] - 0.5, c[:, 0] - 0.5])
        # distance of every traced midpoint to the simplified ring's segments
        a, b = ring[:-1], ring[1:]
        ab = b - a
        t = np.clip(((pts[:, None] - a) * ab).sum(-1) / (ab**2).sum(-1), 0, 1)
        d = np.linalg.norm(pts[:, None] - (a + t[..., None] * ab), axis=-1).min(axis=1)
        assert d.max() <= tol + 1e-9
        assert len(ring) < len(pts) / 3


def test_outlines_of_missing_or_no_ids_and_bad_labels():
    lab = np.zeros((6, 6), np.uint16)
    lab[1:4, 1:4] = 3
    assert label_outlines(lab, []) == {}
    assert set(label_outlines(lab, [3, 9])) == {3}  # 9 has no pixel
    with pytest.raises(ValueError, match="2-D integer"):
        label_outlines(lab.astype(float), [3])
    with pytest.raises(ValueError, match="tolerance_px"):
        label_outlines(lab, [3], tolerance_px=-1)


def test_cell_features_and_streamed_collection(tmp_path):
    cells = np.zeros((40, 40), np.int32)
    nuclei = np.zeros((40, 40), np.int32)
    yy, xx = np.mgrid[:40, :40]
    for lid, (cy, cx) in ((1, (10, 10)), (2, (28, 25))):
        cells[(yy - cy) ** 2 + (xx - cx) ** 2 < 64] = lid
        nuclei[(yy - cy) ** 2 + (xx - cx) ** 2 < 16] = lid
    table = pd.DataFrame({"cell_id": [7000001, 7000002], "cell_area_um2": [50.0, 51.0],
                          "nucleus_area_um2": [12.0, 13.0],
                          "HER2_cell_mean": [1.0, 2.0], "HER2_membrane_mean": [3.0, np.nan],
                          "HER2_membrane_completeness": [0.5, 0.9],
                          "HER2_membrane_stained_mean": [4.5, np.nan],
                          "ER_cell_mean": [0.1, 0.2], "ER_nucleus_mean": [0.4, 0.8]})
    feats = cell_features(cells, nuclei, table, [1, 2], table["cell_id"], 0, 0, "s.ome.tif")
    assert len(feats) == 2
    f = feats[0]
    assert uuid.UUID(f["id"]).version == 5
    assert f["id"] == cell_features(cells, nuclei, table, [1, 2], table["cell_id"], 0, 0,
                                    "s.ome.tif")[0]["id"]  # deterministic
    assert f["properties"]["name"] == "7000001"
    assert f["properties"]["metadata"] == {"cell_id": "7000001"}
    assert f["properties"]["measurements"] == {
        "Cell: Area \u00b5m^2": 50.0, "Nucleus: Area \u00b5m^2": 12.0, "HER2: Membrane: Mean": 3.0,
        "HER2: Membrane: Completeness": 0.5, "HER2: Membrane: Stained mean": 4.5,
        "ER: Nucleus: Mean": 0.4}
    assert "HER2: Membrane: Mean" not in feats[1]["properties"]["measurements"]  # NaN left out
    assert _area(f["nucleusGeometry"]["coordinates"][0]) < _area(f["geometry"]["coordinates"][0])
    # streamed collection, one tile file at a time, with classifications
    parts = []
    for i, chunk in enumerate((feats[:1], [], feats[1:])):
        p = tmp_path / f"t{i}.json"
        p.write_text(json.dumps(chunk))
        parts.append(p)
    out = tmp_path / "cells.geojson"
    write_feature_collection(out, parts, lambda ids: {7000002: ("HER2 3+", [230, 40, 40])})
    gj = json.loads(out.read_text())
    assert [g["properties"]["name"] for g in gj["features"]] == ["7000001", "7000002"]
    assert "classification" not in gj["features"][0]["properties"]
    assert gj["features"][1]["properties"]["classification"] == {"name": "HER2 3+",
                                                                 "color": [230, 40, 40]}
    write_feature_collection(tmp_path / "empty.geojson", [parts[1]])
    assert json.loads((tmp_path / "empty.geojson").read_text())["features"] == []


def test_outlines_without_numba_are_the_same(monkeypatch):
    from qdmed.imaging import _outlines

    rng = np.random.default_rng(5)
    lab = rng.integers(0, 4, (20, 20)).astype(np.int32)
    want = label_outlines(lab, [1, 2, 3])
    monkeypatch.setattr(_outlines, "numba_available", lambda: False)
    assert label_outlines(lab, [1, 2, 3]) == want


def test_a_stray_corner_pixel_does_not_replace_the_cell():
    """Review finding: expanded cells sometimes carry a pixel touching them only at a
    corner above their top row; the outline traced from that pixel was a 0.5 px^2 diamond.
    Each label's largest 4-connected piece is outlined."""
    lab = np.zeros((30, 30), np.int32)
    lab[5:25, 5:25] = 4
    lab[4, 25] = 4  # corner contact only, first in raster order
    ring = label_outlines(lab, [4])[4]
    assert _area(ring) == pytest.approx(400, rel=0.01)


def test_large_tolerances_keep_at_least_a_triangle():
    lab = np.zeros((60, 60), np.int32)
    lab[5:55, 5:55] = 1
    lab[58, 10:20] = 2  # a 1 x 10 px line
    for tol in (0.5, 5.0, 40.0, 80.0):
        rings = label_outlines(lab, [1, 2], tolerance_px=tol)
        assert 4 <= len(rings[1]) <= 5 + 1 and 4 <= len(rings[2]) <= 22
        assert _area(rings[1]) > 0 and _area(rings[2]) > 0


def test_outline_ids_are_checked_and_cost_nothing_when_huge():
    lab = np.zeros((5, 6), np.int32)
    lab[1:3, 1:3] = 7
    assert set(label_outlines(lab, [7, 10**15])) == {7}  # no array sized by the id
    assert set(label_outlines(lab, np.array([7.0]))) == {7}
    with pytest.raises(ValueError, match="ids must be integers"):
        label_outlines(lab, [7.9])


def _self_intersections(ring) -> int:
    """Pairs of edges of a closed ring that meet other than at the vertex they share:
    intersection parameters solved with Cramer's rule (collinear pairs by projection), a
    formulation independent of the orientation tests in _outlines."""
    p = np.asarray(ring[:-1], dtype=float)
    m = len(p)
    a, d = p, np.roll(p, -1, axis=0) - p  # edge k: a[k] + t d[k], t in [0, 1]
    bad = 0
    for i in range(m):
        for j in range(i + 1, m):
            shared = j == i + 1 or (i == 0 and j == m - 1)
            den = d[i, 0] * d[j, 1] - d[i, 1] * d[j, 0]
            r = a[j] - a[i]
            if den != 0:
                t = (r[0] * d[j, 1] - r[1] * d[j, 0]) / den
                u = (r[0] * d[i, 1] - r[1] * d[i, 0]) / den
                if 0 <= t <= 1 and 0 <= u <= 1 and not (shared and min(t, 1 - t) == 0):
                    bad += 1
            elif r[0] * d[i, 1] - r[1] * d[i, 0] == 0:  # on one line: overlap length
                s = d[i] @ d[i]
                t0, t1 = sorted([(r @ d[i]) / s, ((r + d[j]) @ d[i]) / s])
                if min(t1, 1) - max(t0, 0) > (0 if shared else -1e-12):
                    bad += 1
    return bad


def test_simplified_rings_are_simple_polygons():
    """Ramer-Douglas-Peucker can make a ring cross or touch itself (QuPath's geometry
    library rejects such polygons); where it does, the traced ring is kept whole. Ragged
    random labels at large tolerances, where simplification crosses often."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(11)
    rings_checked = 0
    for _ in range(12):
        mask = ndi.binary_opening(rng.random((48, 48)) < 0.6)
        labs, n = ndi.label(mask)
        for tol in (0.4, 1.5, 3.0):
            for ring in label_outlines(labs, range(1, n + 1), tolerance_px=tol).values():
                assert _self_intersections(ring) == 0
                rings_checked += 1
    assert rings_checked > 300


def test_uint64_labels_beyond_int64_are_refused():
    lab = np.zeros((4, 4), np.uint64)
    lab[1:3, 1:3] = 2**63 + 5
    with pytest.raises(ValueError, match="2\\^63"):
        label_outlines(lab, [1])
    lab[1:3, 1:3] = 5
    assert set(label_outlines(lab, [5])) == {5}
