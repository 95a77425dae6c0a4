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
    assert reg.to_dict() == {"source": str(p), "n_polygons": 2, "classes": ["Stroma", "Tumor"],
                             "n_regions": 2, "tma": False, "missing_cores": []}
    x = np.array([10, 50, 150, 205, 99.9])
    y = np.array([10, 50, 50, 5, 99.9])
    assert reg.contains(x, y).tolist() == [True, False, False, True, True]
    tumour = read_regions(p, region_class="Tumor")
    assert tumour.contains(x, y).tolist() == [True, False, False, False, True]
    # cell tables hold pixel-index centroids: QuPath's coordinate is +0.5
    cells = pd.DataFrame({"centroid_x": [99.4, 99.6], "centroid_y": [10.0, 10.0]})
    assert read_regions(p).contains_cells(cells).tolist() == [True, False]
    # tumour and stroma scored together, unless a class is picked: said (a review: stroma
    # was scored as tumour, unsaid)
    from qdmed.imaging._regions import mixed_classes_warnings

    (w,) = mixed_classes_warnings(reg, None)
    assert "carry several classes (Stroma, Tumor) and all are scored" in w and "--region-class" in w
    assert mixed_classes_warnings(tumour, "Tumor") == mixed_classes_warnings(reg, "Tumor") == []


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
    # the classes the file has are named (a review: "Tumour" against "Tumor", unnamed)
    with pytest.raises(InputError, match=r"classified 'Necrosis' \(the file's classes: "
                                         r"'Tumor'\)"):
        read_regions(p, region_class="Necrosis")
    with pytest.raises(InputError, match="cannot read"):
        read_regions(tmp_path / "missing.geojson")


def test_edges_are_shared_out_whatever_the_ring_orientation(tmp_path):
    """Half-open crossing rule: abutting squares split their common edge, and a square and
    its reversed copy agree on every boundary point (matplotlib's contains_points does not)."""
    cw = _square(0, 0, 10, 10)
    ccw = cw[::-1]
    right = _square(10, 0, 20, 10)[::-1]
    pts_x = np.array([0, 10, 5, 5, 10, 0, 20, 15])
    pts_y = np.array([5, 5, 0, 10, 0, 0, 5, 10])
    got = {}
    for name, ring in (("cw", cw), ("ccw", ccw), ("right", right)):
        p = _write(tmp_path / f"{name}.geojson", [_feat({"type": "Polygon", "coordinates": [ring]})])
        got[name] = read_regions(p).contains(pts_x, pts_y)
    assert got["cw"].tolist() == got["ccw"].tolist()
    # left and top (small y) edges in, right and bottom out
    assert got["cw"].tolist() == [True, False, True, False, False, True, False, False]
    shared = (pts_x == 10) & (pts_y < 10)
    assert np.all(got["cw"][shared] ^ got["right"][shared])  # exactly one of the two
    rng = np.random.default_rng(0)  # random points on the integer grid: never in both
    x, y = rng.integers(-2, 23, 2000), rng.integers(-2, 13, 2000)
    p = _write(tmp_path / "two.geojson", [_feat({"type": "Polygon", "coordinates": [cw]}),
                                          _feat({"type": "Polygon", "coordinates": [right]})])
    a = read_regions(tmp_path / "cw.geojson").contains(x, y)
    b = read_regions(tmp_path / "right.geojson").contains(x, y)
    assert not np.any(a & b)
    assert np.array_equal(read_regions(p).contains(x, y), a | b)
    inner = (x >= 0) & (x < 20) & (y >= 0) & (y < 10)
    assert np.array_equal(a | b, inner)


def test_cells_and_detections_are_not_regions(tmp_path):
    """A QuPath export of all objects holds cell polygons classified like the annotation."""
    cell = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [_square(500, 500, 510, 510)]},
            "properties": {"objectType": "cell", "classification": {"name": "Tumor"}}}
    old = {"type": "Feature", "id": "PathDetectionObject",
           "geometry": {"type": "Polygon", "coordinates": [_square(600, 600, 610, 610)]},
           "properties": {"classification": {"name": "Tumor"}}}
    p = _write(tmp_path / "all.geojson", [
        _feat({"type": "Polygon", "coordinates": [_square(0, 0, 100, 100)]}, "Tumor"), cell, old])
    reg = read_regions(p, region_class="Tumor")
    assert reg.to_dict()["n_polygons"] == 1
    assert reg.contains([505, 605, 50], [505, 605, 50]).tolist() == [False, False, True]
    only = _write(tmp_path / "cells.geojson", [cell])
    with pytest.raises(InputError, match="1 of them cells, detections or other objects"):
        read_regions(only)


def test_derived_qupath_class_names(tmp_path):
    f = _feat({"type": "Polygon", "coordinates": [_square(0, 0, 10, 10)]})
    f["properties"]["classification"] = {"names": ["Tumor", "Positive"], "color": [1, 2, 3]}
    p = _write(tmp_path / "d.geojson", [f])
    reg = read_regions(p, region_class="Tumor: Positive")
    assert reg.to_dict()["classes"] == ["Tumor: Positive"]
    # QuPath 0.2-0.3: the PathClass's fields, the parent nested
    f["properties"]["classification"] = {"name": "Positive", "colorRGB": -1, "parentClass": {
        "name": "Tumor", "colorRGB": -3670016}}
    p = _write(tmp_path / "d03.geojson", [f])
    assert read_regions(p, region_class="Tumor: Positive").to_dict()["classes"] == [
        "Tumor: Positive"]


def test_derived_classes_left_out_by_a_class_are_said(tmp_path):
    """--region-class Tumor matches exactly: QuPath's derived 'Tumor: Positive' annotations
    are left out, and now said (a pathologist's walk-through: they were dropped unsaid)."""
    from qdmed.imaging._regions import region_warnings

    derived = _feat({"type": "Polygon", "coordinates": [_square(20, 0, 30, 10)]})
    derived["properties"]["classification"] = {"names": ["Tumor", "Positive"]}
    p = _write(tmp_path / "d.geojson", [
        _feat({"type": "Polygon", "coordinates": [_square(0, 0, 10, 10)]}, "Tumor"), derived,
        _feat({"type": "Polygon", "coordinates": [_square(40, 0, 50, 10)]}, "Stroma")])
    reg = read_regions(p, "Tumor")
    assert reg.names == ("Tumor 1",)
    (w,) = region_warnings(reg, None, "Tumor")
    assert "'Tumor: Positive' (1)" in w and "matched exactly" in w and "Stroma" not in w
    assert region_warnings(read_regions(p, "Stroma"), None, "Stroma") == []


def test_lines_and_points_left_out_are_said(tmp_path):
    """Annotations of lines or points only enclose no cell: left out, and said (beside
    areas), or named in the error (alone)."""
    from qdmed.imaging._regions import region_warnings

    line = _feat({"type": "LineString", "coordinates": [[0, 0], [5, 5]]}, "Tumor")
    point = _feat({"type": "Point", "coordinates": [3, 3]}, "Tumor")
    area = _feat({"type": "Polygon", "coordinates": [_square(0, 0, 10, 10)]}, "Tumor")
    reg = read_regions(_write(tmp_path / "l.geojson", [area, line, point, line]), "Tumor")
    assert reg.names == ("Tumor 1",)
    (w,) = region_warnings(reg, None, "Tumor")
    assert "3 annotation(s) of lines or points only (2 LineString, 1 Point)" in w
    # a tumour file's notes are said too, once each
    assert region_warnings(reg, reg, "Tumor") == [w]
    with pytest.raises(InputError, match="2 annotation.s. of lines or points only"):
        read_regions(_write(tmp_path / "o.geojson", [line, point]))
    empty = _feat({"type": "Polygon", "coordinates": [_square(0, 0, 10, 10)]})
    empty_geom = {"type": "Feature", "geometry": None, "properties": {}}
    assert read_regions(_write(tmp_path / "e.geojson", [empty, empty_geom])).notes == ()


def test_geometry_collection_members_are_regions(tmp_path):
    geom = {"type": "GeometryCollection", "geometries": [
        {"type": "LineString", "coordinates": [[0, 0], [5, 5]]},
        {"type": "Polygon", "coordinates": [_square(0, 0, 10, 10)]},
        {"type": "MultiPolygon", "coordinates": [[_square(20, 0, 30, 10)]]}]}
    reg = read_regions(_write(tmp_path / "gc.geojson", [_feat(geom, "Tumor")]), "Tumor")
    assert reg.to_dict()["n_polygons"] == 2
    assert reg.contains([5, 15, 25], [5, 5, 5]).tolist() == [True, False, True]


def test_qupath_object_types_across_versions(tmp_path):
    """0.4+: properties.objectType ('tmaCore' is a region); 0.3: properties.object_type."""
    sq = {"type": "Polygon", "coordinates": [_square(0, 0, 10, 10)]}
    far = {"type": "Polygon", "coordinates": [_square(50, 50, 60, 60)]}
    feats = [{"type": "Feature", "geometry": sq, "properties": {"objectType": "tmaCore"}},
             {"type": "Feature", "geometry": far, "properties": {"object_type": "cell"}},
             {"type": "Feature", "geometry": far, "properties": {"object_type": "detection"}}]
    reg = read_regions(_write(tmp_path / "v.geojson", feats))
    assert reg.to_dict()["n_polygons"] == 1
    assert reg.contains([5, 55], [5, 55]).tolist() == [True, False]


def test_numpy_crossing_rule_equals_the_compiled_one():
    from qdmed.imaging._regions import _edges, _pnpoly_kernel, _pnpoly_numpy

    rng = np.random.default_rng(1)
    t = np.sort(rng.uniform(0, 2 * np.pi, 40))
    ring = np.column_stack([50 + 40 * np.cos(t) * rng.uniform(0.3, 1, 40), 50 + 40 * np.sin(t)])
    hole = np.array([[45.0, 45], [55, 45], [55, 55], [45, 55]])
    e = _edges((ring, hole))
    x = np.concatenate([rng.uniform(0, 100, 3000), ring[:, 0], [45, 50, 55]])
    y = np.concatenate([rng.uniform(0, 100, 3000), ring[:, 1], [50, 45, 50]])
    a = _pnpoly_kernel()(x, y, *e, np.zeros(x.size, bool))
    b = _pnpoly_numpy(x, y, *e, np.zeros(x.size, bool))
    assert np.array_equal(a, b) and 0 < a.sum() < x.size


def test_cores_and_annotations_in_one_file(tmp_path):
    # QuPath exports the TMA cores with the tumour drawn inside them: the class picks the
    # annotations, the cores are kept whatever theirs, and the two come apart by kind
    sq = [[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]
    big = [[0, 0], [40, 0], [40, 40], [0, 40], [0, 0]]

    def feat(kind, name=None, cls=None, ring=sq, **extra):
        props = {"objectType": kind, **extra}
        if name:
            props["name"] = name
        if cls:
            props["classification"] = {"name": cls}
        return {"type": "Feature", "properties": props,
                "geometry": {"type": "Polygon", "coordinates": [ring]}}

    p = tmp_path / "both.geojson"
    p.write_text(json.dumps([feat("tmaCore", "A-1", ring=big, isMissing=False),
                             feat("tmaCore", "A-2", isMissing=True),
                             feat("annotation", cls="Tumor"), feat("annotation", cls="Stroma")]))
    reg = read_regions(p, "Tumor")
    assert reg.mixes_cores_and_annotations and not reg.is_tma
    cores, tumour = reg.subset(cores=True), reg.subset(cores=False)
    assert (cores.names, cores.missing, cores.is_tma) == (("A-1",), ("A-2",), True)
    # an unnamed annotation is named by its class (and its order among that class's)
    assert tumour.names == ("Tumor 1",) and tumour.classes == ("Tumor",)
    assert [c[0] for c in cores.centers] == ["A-1", "A-2"]
    # unnamed annotations: "<class> <k>" by their order among their class's, "region <n>"
    # (order among all regions) when unclassified; a name in use is primed
    q = tmp_path / "named.geojson"
    q.write_text(json.dumps([feat("annotation", cls="Tumor"), feat("annotation", cls="Stroma"),
                             feat("annotation", "Tumor 2"), feat("annotation", cls="Tumor"),
                             feat("annotation")]))
    assert read_regions(q).names == ("Tumor 1", "Stroma 1", "Tumor 2", "Tumor 2'",
                                     "region 5")
    # a name is the same whichever class is read: "Tumor 1" is a Stroma annotation's here
    q.write_text(json.dumps([feat("annotation", "Tumor 1", cls="Stroma"),
                             feat("annotation", cls="Tumor"), feat("annotation", cls="Tumor")]))
    assert read_regions(q).names == ("Tumor 1", "Tumor 1'", "Tumor 2")
    assert read_regions(q, "Tumor").names == ("Tumor 1'", "Tumor 2")
    with pytest.raises(InputError, match=r"no annotation classified 'Necrosis'.*2 TMA core\(s\)"):
        read_regions(p, "Necrosis")
    # split for scoring: annotations of two classes need the class that is the tumour
    from qdmed.imaging._regions import regions_and_tumour

    with pytest.raises(InputError, match=r"several classes \(Stroma, Tumor\)"):
        regions_and_tumour(p)
    reg, tum = regions_and_tumour(p, region_class="Tumor")
    assert (reg.names, tum.classes) == (("A-1",), ("Tumor",))
    # cores alone, the tumour in a file of its own: the class picks the tumour, not cores
    cores = tmp_path / "cores.geojson"
    cores.write_text(json.dumps([feat("tmaCore", "A-1", ring=big, isMissing=False)]))
    t = tmp_path / "t.geojson"
    t.write_text(json.dumps([feat("annotation", cls="Tumor"), feat("annotation", cls="Stroma")]))
    reg, tum = regions_and_tumour(cores, t, "Tumor")
    assert (reg.names, reg.is_tma, tum.classes) == (("A-1",), True, ("Tumor",))
    # in a file of cores alone the class picks cores, as before
    cores.write_text(json.dumps([feat("tmaCore", "A-1", cls="Tumor", isMissing=False),
                                 feat("tmaCore", "A-2", cls="Normal", isMissing=False)]))
    assert read_regions(cores, "Tumor").names == ("A-1",)


def test_a_slides_regions_file_by_its_names(tmp_path):
    from qdmed.imaging._cohort import regions_file

    for name in ("A.geojson", "B.ome.geojson", "C.ome.tif.geojson", "D.qptma"):
        (tmp_path / name).write_text("{}")
    assert regions_file(tmp_path, "A.ome.zarr").name == "A.geojson"
    assert regions_file(tmp_path, "B.ome.zarr").name == "B.ome.geojson"
    assert regions_file(tmp_path, "C.ome.tif").name == "C.ome.tif.geojson"
    assert regions_file(tmp_path, "D.svs").name == "D.qptma"
    assert regions_file(tmp_path, "E.ome.zarr") is None


def test_overlapping_regions_are_said(tmp_path):
    """A review: a hotspot drawn inside a whole-core annotation read "no scored cells", as
    every shared cell went to the core (the first in the file), unsaid."""
    from qdmed.imaging._region_scores import overlap_warnings

    def named(square, name):
        f = _feat({"type": "Polygon", "coordinates": [square]})
        f["properties"]["name"] = name
        return f

    p = _write(tmp_path / "o.geojson", [named(_square(0, 0, 100, 100), "whole A-1"),
                                        named(_square(20, 20, 40, 40), "hotspot"),
                                        named(_square(200, 0, 300, 100), "B-1")])
    reg = read_regions(p)
    # cells at pixel centres (QuPath's coordinates minus 0.5): 2 in the hotspot, 1 in the
    # core only, 1 in B-1
    cells = pd.DataFrame({"centroid_x": [24.5, 29.5, 79.5, 249.5],
                          "centroid_y": [24.5, 29.5, 79.5, 49.5]})
    assert reg.overlaps_cells(cells) == {("whole A-1", "hotspot"): 2}
    (w,) = overlap_warnings(reg, cells)
    assert w.startswith("regions overlap: 2 cell(s) of 'hotspot' lie in 'whole A-1', "
                        "earlier in the file. A cell is scored in one region")
    apart = _write(tmp_path / "a.geojson", [named(_square(0, 0, 100, 100), "A-1"),
                                            named(_square(200, 0, 300, 100), "B-1")])
    assert overlap_warnings(read_regions(apart), cells) == []
    # pieces of one region (a MultiPolygon, two features of one name) are no overlap
    same = _write(tmp_path / "s.geojson", [named(_square(0, 0, 100, 100), "A-1"),
                                           named(_square(20, 20, 40, 40), "A-1")])
    assert read_regions(same).overlaps_cells(cells) == {}
