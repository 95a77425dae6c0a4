"""Tumour-region selection from QuPath GeoJSON annotations (RFC 7946 polygons with holes)."""

import json

import numpy as np
import pandas as pd
import pytest

from qdmed.errors import FileFormatError, InputError
from qdmed.imaging._regions import read_regions


def _square(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def _write(path, features):
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def _feat(geometry, cls=None):
    props = {"objectType": "annotation"}
    if cls:
        props["classification"] = {"name": cls, "color": [200, 0, 0]}
    return {"type": "Feature", "geometry": geometry, "properties": props}


def test_polygon_with_hole_multipolygon_and_class_filter(tmp_path):
    p = _write(tmp_path / "r.geojson", [
        _feat({"type": "Polygon", "coordinates": [_square(0, 0, 100, 100),
                                                  _square(40, 40, 60, 60)]}, "Tumor"),
        _feat({"type": "MultiPolygon", "coordinates": [[_square(200, 0, 210, 10)]]}, "Stroma"),
        _feat({"type": "Point", "coordinates": [5, 5]}),  # ignored
    ])
    reg = read_regions(p)
    assert reg.to_dict() == {"source": str(p), "n_polygons": 2, "classes": ["Stroma", "Tumor"]}
    x = np.array([10, 50, 150, 205, 99.9])
    y = np.array([10, 50, 50, 5, 99.9])
    assert reg.contains(x, y).tolist() == [True, False, False, True, True]
    tumour = read_regions(p, region_class="Tumor")
    assert tumour.contains(x, y).tolist() == [True, False, False, False, True]
    # cell tables hold pixel-index centroids: QuPath's coordinate is +0.5
    cells = pd.DataFrame({"centroid_x": [99.4, 99.6], "centroid_y": [10.0, 10.0]})
    assert read_regions(p).contains_cells(cells).tolist() == [True, False]


def test_region_errors_name_the_file_and_feature(tmp_path):
    bad = tmp_path / "bad.geojson"
    bad.write_text("{not json")
    with pytest.raises(FileFormatError, match="bad.geojson"):
        read_regions(bad)
    p = _write(tmp_path / "ring.geojson", [_feat({"type": "Polygon",
                                                  "coordinates": [[[0, 0], [1, 1]]]})])
    with pytest.raises(FileFormatError, match="feature 0"):
        read_regions(p)
    p = _write(tmp_path / "points.geojson", [_feat({"type": "Point", "coordinates": [1, 2]})])
    with pytest.raises(InputError, match="no Polygon"):
        read_regions(p)
    p = _write(tmp_path / "t.geojson", [_feat({"type": "Polygon",
                                               "coordinates": [_square(0, 0, 5, 5)]}, "Tumor")])
    with pytest.raises(InputError, match="classified 'Necrosis'"):
        read_regions(p, region_class="Necrosis")
    with pytest.raises(InputError, match="cannot read"):
        read_regions(tmp_path / "missing.geojson")
