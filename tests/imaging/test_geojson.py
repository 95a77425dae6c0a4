"""QuPath GeoJSON export: outline geometry, the structure QuPath's reader expects
(qupath-core PathObjectTypeAdapters: UUID ids, top-level nucleusGeometry, measurements and
metadata objects, classification), streaming and classification."""

import json
import uuid

import numpy as np
import pandas as pd
import pytest

from qdmed.imaging._geojson import cell_features, star_outlines, write_feature_collection


def _area(ring):
    a = np.asarray(ring)
    x, y = a[:, 0], a[:, 1]
    return 0.5 * abs(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))


@pytest.mark.parametrize("radius", [5.0, 8.0, 12.0, 20.0])
@pytest.mark.parametrize("centre", [(30.0, 30.0), (30.3, 29.6)])
def test_outline_area_matches_the_pixel_count(radius, centre):
    yy, xx = np.mgrid[:64, :64]
    lab = (((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) < radius**2).astype(np.int32)
    ring = star_outlines(lab, [1])[1]
    assert ring[0] == ring[-1]
    assert _area(ring) == pytest.approx(lab.sum(), rel=0.02)


def test_outline_coordinates_are_global_pixel_edges():
    lab = np.zeros((10, 10), np.int32)
    lab[2:5, 3:7] = 4  # rows 2-4, columns 3-6
    ring = np.asarray(star_outlines(lab, [4], oy=100, ox=200)[4])
    # QuPath coordinates: x = column, y = row, pixel (r, c) covers [c, c+1) x [r, r+1)
    assert ring[:, 0].min() >= 203 - 1e-9 and ring[:, 0].max() <= 207 + 1e-9
    assert ring[:, 1].min() >= 102 - 1e-9 and ring[:, 1].max() <= 105 + 1e-9


def test_cell_features_and_streamed_collection(tmp_path):
    cells = np.zeros((40, 40), np.int32)
    nuclei = np.zeros((40, 40), np.int32)
    yy, xx = np.mgrid[:40, :40]
    for lid, (cy, cx) in ((1, (10, 10)), (2, (28, 25))):
        cells[(yy - cy) ** 2 + (xx - cx) ** 2 < 64] = lid
        nuclei[(yy - cy) ** 2 + (xx - cx) ** 2 < 16] = lid
    table = pd.DataFrame({"cell_id": [7000001, 7000002], "cell_area_um2": [50.0, 51.0],
                          "HER2_cell_mean": [1.0, 2.0], "HER2_membrane_mean": [3.0, np.nan],
                          "HER2_membrane_completeness": [0.5, 0.9],
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
        "Cell: Area um^2": 50.0, "HER2: Membrane: Mean": 3.0,
        "HER2: Membrane: Completeness": 0.5, "ER: Nucleus: Mean": 0.4}
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
