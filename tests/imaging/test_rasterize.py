"""Cells and nuclei given as GeoJSON polygons (QuPath's File > Export objects as GeoJSON)
drawn into label images.

References: the pixel-centre rule against scikit-image's ``draw.polygon`` (an independent
rasterizer) on random polygons; holes against the point-in-polygon test of the regions
module; the synthetic slides' true nuclei and cells, traced along their pixel edges and
drawn back, which must return the very same pixels."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from qdmed.errors import FileFormatError, InputError
from qdmed.imaging import analyze_slide, breast_panel_5plex, simulate_slide
from qdmed.imaging._outlines import label_outlines
from qdmed.imaging._rasterize import (
    Outlines,
    rasterize_objects,
    read_label_objects,
    write_object_labels,
)
from qdmed.imaging._regions import _edges, _pnpoly_numpy
from qdmed.imaging._slideio import read_slide

PANEL = breast_panel_5plex()
KW = dict(endmembers=PANEL.endmembers, marker_names=list(PANEL.markers), photons_per_unit=300.0)
RUN = dict(scheduler="synchronous", progress=False, write_unmixed=False, outlines=False)


def _objects(rings_per_object):
    return Outlines.from_rings([[np.asarray(r, float) for r in rings]
                                for rings in rings_per_object])


@pytest.mark.parametrize("method", ["numba", "numpy"])
def test_random_polygons_match_scikit_image(method):
    """Pixel (r, c) is drawn when its centre (c + 0.5, r + 0.5) is inside: what
    skimage.draw.polygon draws for vertices shifted by half a pixel (ties have measure zero
    for random vertices)."""
    from skimage.draw import polygon

    rng = np.random.default_rng(3)
    for _ in range(30):
        n = int(rng.integers(3, 12))
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = rng.uniform(3, 25, n)
        cx, cy = rng.uniform(-5, 65, 2)  # some reach beyond the 60 x 60 window
        ring = np.c_[cx + rad * np.cos(ang), cy + rad * np.sin(ang)]
        got = rasterize_objects(_objects([[ring]]), 0, 60, 0, 60, method=method)
        want = np.zeros((60, 60), np.int32)
        rr, cc = polygon(ring[:, 1] - 0.5, ring[:, 0] - 0.5, shape=want.shape)
        want[rr, cc] = 1
        np.testing.assert_array_equal(got, want)


def test_holes_parts_overlaps_and_windows():
    """A square with a hole and a second part (MultiPolygon), overlapped by a later object:
    the even-odd rule of the regions module's point test, the later object on top, and any
    window of the image the same as the whole image's."""
    donut = [[[4, 4], [30, 4], [30, 30], [4, 30]], [[10, 10], [20, 10], [20, 20], [10, 20]],
             [[34.2, 2.7], [39.9, 2.7], [39.9, 9.1]]]
    over = [[[25.5, 25.5], [36, 25.5], [36, 36], [25.5, 36]]]
    objs = _objects([donut, over])
    full = rasterize_objects(objs, 0, 40, 0, 45)
    yy, xx = np.mgrid[0:40, 0:45] + 0.5
    inside = np.zeros(yy.size, int)
    for k, rings in ((1, donut), (2, over)):
        e = _edges([np.asarray(r, float) for r in rings])
        hit = _pnpoly_numpy(xx.ravel(), yy.ravel(), *e, np.zeros(yy.size, bool))
        inside = np.where(hit, k, inside)
    np.testing.assert_array_equal(full.ravel(), inside)
    assert (full[12:18, 12:18] == 0).all() and full[27, 27] == 2
    for y0, y1, x0, x1 in ((0, 13, 0, 45), (5, 31, 26, 45), (39, 40, 44, 45)):
        np.testing.assert_array_equal(rasterize_objects(objs, y0, y1, x0, x1),
                                      full[y0:y1, x0:x1])
    np.testing.assert_array_equal(rasterize_objects(objs, 0, 40, 0, 45, "numpy"), full)


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    d = tmp_path_factory.mktemp("objects")
    return simulate_slide(d / "s.ome.zarr", (512, 512), preset="BT474", seed=8,
                          channel_names=list(PANEL.channel_names), tile=512, write_labels=True,
                          **KW)


def _truth(slide):
    import zarr

    g = zarr.open_group(str(slide.path), mode="r")
    return np.asarray(g["labels/nuclei/0"]), np.asarray(g["labels/cells/0"])


def _qupath_cells(path, cells, nuclei, tolerance_px):
    """The true cells as QuPath cell objects (cell outline, nucleusGeometry), in id order,
    with an annotation first (skipped)."""
    ids = np.unique(cells[cells > 0])
    cr = label_outlines(cells, ids, tolerance_px=tolerance_px)
    nr = label_outlines(nuclei, ids, tolerance_px=tolerance_px)
    feats = [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [
        [[0, 0], [10, 0], [10, 10], [0, 0]]]}, "properties": {"objectType": "annotation"}}]
    for i in ids.tolist():
        f = {"type": "Feature", "id": f"cell-{i}",
             "geometry": {"type": "Polygon", "coordinates": [cr[i]]},
             "properties": {"objectType": "cell"}}
        if i in nr:
            f["nucleusGeometry"] = {"type": "Polygon", "coordinates": [nr[i]]}
        feats.append(f)
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return ids


def test_traced_outlines_come_back_as_their_pixels(slide, tmp_path):
    """Outlines traced along pixel edges (label_outlines, unsimplified) are drawn back as the
    very pixels of every single-piece label; simplified within 0.4 px (as cells.geojson),
    only boundary pixels can differ, and few do."""
    from skimage.measure import label as pieces
    from skimage.segmentation import find_boundaries

    nuclei, cells = _truth(slide)
    path = tmp_path / "cells.geojson"
    ids = _qupath_cells(path, cells, nuclei, 0.0)
    objs = read_label_objects(path)
    assert objs.to_dict()["n_objects"] == ids.size  # the annotation is skipped
    out = write_object_labels(objs, cells.shape, tmp_path / "l.ome.zarr", pixel_size_um=0.5,
                              block=200)
    img = read_slide(out)
    assert img.channel_names == ("nuclei", "cells") and img.pixel_size_um == 0.5
    got = img.read_region(0, 512, 0, 512)
    want_c = np.where(cells > 0, np.searchsorted(ids, cells) + 1, 0)
    single = [k + 1 for k, i in enumerate(ids) if pieces(cells == i, connectivity=1).max() == 1]
    sel = np.isin(want_c, single) | np.isin(got[..., 1], single)
    np.testing.assert_array_equal(got[..., 1][sel], want_c[sel])
    inside = (nuclei > 0) & np.isin(nuclei, ids)
    want_n = np.where(inside, np.searchsorted(ids, nuclei) + 1, 0)
    np.testing.assert_array_equal(got[..., 0], want_n)
    # simplified outlines
    _qupath_cells(path, cells, nuclei, 0.4)
    simple = rasterize_objects(read_label_objects(path).cells, 0, 512, 0, 512)
    diff = simple != want_c
    assert diff.mean() < 1e-3
    assert find_boundaries(want_c, mode="inner")[diff & (want_c > 0)].all()


def test_detections_only_and_bad_files(tmp_path):
    det = {"type": "Feature", "geometry": {"type": "MultiPolygon", "coordinates": [
        [[[1, 1], [5, 1], [5, 5], [1, 5], [1, 1]]]]}, "properties": {"objectType": "detection"}}
    line = {"type": "Feature", "geometry": {"type": "LineString", "coordinates": [[0, 0], [3, 3]]},
            "properties": {}}
    p = tmp_path / "det.geojson"
    p.write_text(json.dumps([det, line]))
    objs = read_label_objects(p)
    assert objs.cells is None and objs.to_dict() == {"source": str(p), "n_objects": 1,
                                                     "n_nuclei": 1, "n_cells": 0,
                                                     "n_skipped": 1}  # the line
    lab = rasterize_objects(objs.nuclei, 0, 8, 0, 8)
    assert lab.sum() == 16 and (lab[1:5, 1:5] == 1).all()
    # read one feature at a time whatever the layout: keys around "features", one Feature
    d, ln = json.dumps(det), json.dumps(line)
    for i, text in enumerate((
            '{"bbox": [0, 0, 9, 9], "features": [' + d + ", " + ln
            + '], "type": "FeatureCollection"}',
            ' {"type": "FeatureCollection",\n "features" : [ ' + d + " ,\n" + ln + " ] }\n",
            "\ufeff" + d)):  # with a byte-order mark
        (tmp_path / f"l{i}.geojson").write_text(text, encoding="utf-8")
        assert read_label_objects(tmp_path / f"l{i}.geojson").to_dict()["n_nuclei"] == 1
    for text, match in (('{"type": "FeatureCollection", "features": [' + d, "not a GeoJSON"),
                        ("[" + d + "] []", "extra data"),
                        ("[" * 100000, "nested too deeply"),
                        ('{"type": "Polygon"}', "expected a FeatureCollection")):
        (tmp_path / "t.geojson").write_text(text)
        with pytest.raises(FileFormatError, match=match):
            read_label_objects(tmp_path / "t.geojson")
    far = dict(det, geometry={"type": "Polygon", "coordinates": [[[0, 0], [1e19, 0], [0, 5]]]})
    nulls = dict(det, geometry={"type": "MultiPolygon", "coordinates": [None]})
    for feat, match in ((far, "coordinates beyond"), (nulls, "a polygon must be a list")):
        (tmp_path / "t.geojson").write_text(json.dumps([feat]))
        with pytest.raises(FileFormatError, match=match):
            read_label_objects(tmp_path / "t.geojson")
    (tmp_path / "bad.geojson").write_text("{not json")
    with pytest.raises(FileFormatError, match="bad.geojson: not a GeoJSON file"):
        read_label_objects(tmp_path / "bad.geojson")
    (tmp_path / "none.geojson").write_text(json.dumps([line]))
    with pytest.raises(InputError, match="no cell or detection with an outline"):
        read_label_objects(tmp_path / "none.geojson")
    bad_ring = dict(det, geometry={"type": "Polygon", "coordinates": [[[0, 0], [1, "x"]]]})
    (tmp_path / "ring.geojson").write_text(json.dumps([det, bad_ring]))
    with pytest.raises(FileFormatError, match="feature 1: a ring"):
        read_label_objects(tmp_path / "ring.geojson")


def test_objects_off_the_slide_are_counted_and_most_off_refused(tmp_path):
    """A review drew a 2048^2 slide's cells on its 1024^2 crop: 803 of 3141 drawn and
    "objects 3141" said. Objects wholly outside are counted; most of them outside (another
    image, or a downsampled export) is refused, naming the slide's size and the objects'."""
    from qdmed.imaging._rasterize import check_on_image, n_outside, write_object_labels

    def square(x, y):
        return {"type": "Feature", "properties": {"objectType": "detection"},
                "geometry": {"type": "Polygon", "coordinates": [
                    [[x, y], [x + 4, y], [x + 4, y + 4], [x, y + 4], [x, y]]]}}

    p = tmp_path / "o.geojson"
    # 3 on a 64^2 slide, one across its right edge (drawn in part), 2 wholly beyond it
    p.write_text(json.dumps([square(2, 2), square(30, 30), square(50, 10), square(62, 20),
                             square(64, 0), square(100, 100)]))
    objs = read_label_objects(p)
    assert n_outside(objs.nuclei, (64, 64)) == 2 and check_on_image(objs, (64, 64)) == 2
    out = write_object_labels(objs, (64, 64), tmp_path / "l.ome.zarr")
    assert read_slide(out).read_region(0, 64, 0, 64)[..., 0].max() == 4
    with pytest.raises(InputError, match=r"4 of its 6 objects lie wholly outside the slide "
                                         r"\(32 x 32 px; the objects span x 2-104"):
        write_object_labels(objs, (32, 32), tmp_path / "m.ome.zarr")
    assert not (tmp_path / "m.ome.zarr").exists()


def test_a_file_with_cells_reads_only_its_cells(tmp_path):
    """QuPath exports subcellular spots as detections beside the cells: with cells in the
    file, only they are objects (a spot would cover its cell's nucleus); null geometries
    (RFC 7946 allows them) are skipped."""
    sq = lambda x0, y0, s: [[[x0, y0], [x0 + s, y0], [x0 + s, y0 + s], [x0, y0 + s]]]  # noqa: E731
    cell = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": sq(0, 0, 12)},
            "nucleusGeometry": {"type": "Polygon", "coordinates": sq(3, 3, 6)},
            "properties": {"objectType": "cell"}}
    spot = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": sq(5, 5, 2)},
            "properties": {"objectType": "detection"}}
    empty = {"type": "Feature", "geometry": None, "properties": {"objectType": "annotation"}}
    p = tmp_path / "mixed.geojson"
    p.write_text(json.dumps([spot, cell, empty, spot, cell]))
    objs = read_label_objects(p)
    assert objs.to_dict()["n_objects"] == 2 and objs.n_skipped == 3
    nuc = rasterize_objects(objs.nuclei, 0, 12, 0, 12)
    assert (nuc[3:9, 3:9] == 2).all() and nuc.sum() == 2 * 36  # the later cell on top


def test_slide_analysed_from_qupath_cells(slide, tmp_path):
    """--nuclei-labels / --cell-labels given the GeoJSON: the same cells as from the label
    image it draws; drawn once, so a second run resumes every tile."""
    nuclei, cells = _truth(slide)
    path = tmp_path / "s.ome.zarr.geojson"  # QuPath names exports after the image
    _qupath_cells(path, cells, nuclei, 0.0)
    a = analyze_slide(slide.path, PANEL, tmp_path / "a", tile=256, nuclei_labels=path,
                      cell_labels=path, **RUN)
    assert a.summary["labels"]["objects"] == str(path) and a.summary["labels"]["warnings"] == []
    # a few objects off the slide are drawn as nothing, and said (a review found them only
    # in the label image's attributes)
    doc = json.loads(path.read_text())
    feats = doc["features"] if isinstance(doc, dict) else doc
    ring = [[900, 900], [904, 900], [904, 904], [900, 904], [900, 900]]
    far = {"type": "Feature", "properties": {"objectType": "cell"},
           "geometry": {"type": "Polygon", "coordinates": [ring]},
           "nucleusGeometry": {"type": "Polygon", "coordinates": [ring]}}
    extra = tmp_path / "extra.geojson"
    extra.write_text(json.dumps([*feats, far, far, far]))
    e = analyze_slide(slide.path, PANEL, tmp_path / "e", tile=512, nuclei_labels=extra, **RUN)
    from qdmed.imaging._analyze import summary_warnings

    n = len(feats) - 1 + 3  # its annotation is not an object
    assert [w for w in summary_warnings(e.summary) if w.startswith("labels: ")] == [
        f"labels: 3 of the {n} objects of extra.geojson lie wholly outside the slide and are "
        "not drawn"]
    from qdmed.imaging._report import segmentation_paragraph

    assert segmentation_paragraph(a.summary).startswith(
        "Segmentation given: nuclei from s.ome.zarr.geojson (GeoJSON objects), cells from "
        "s.ome.zarr.geojson (")
    img = tmp_path / "a" / "given_labels.ome.zarr"
    assert a.summary["labels"]["cells"]["file"] == str(img.resolve())
    shutil.copytree(img, tmp_path / "b" / img.name)  # as if an earlier run had drawn it
    b = analyze_slide(slide.path, PANEL, tmp_path / "b", tile=512, nuclei_labels=img,
                      labels_channel="nuclei", cell_labels=img, cell_labels_channel="cells",
                      **RUN)
    ca, cb = a.cells(), b.cells()
    assert sorted(ca["cell_label"]) == sorted(cb["cell_label"])
    assert not (tmp_path / "b" / img.name).exists()  # no objects file this time: not kept
    m = ca.merge(cb, on="cell_label", suffixes=("_a", "_b"))
    np.testing.assert_allclose(m["HER2_membrane_mean_a"], m["HER2_membrane_mean_b"], rtol=1e-9)
    again = analyze_slide(slide.path, PANEL, tmp_path / "a", tile=256, nuclei_labels=path,
                          cell_labels=path, **RUN)
    assert again.summary["n_tiles_resumed"] == a.summary["n_tiles"] == 4
    # the folder's drawn labels given as a label image are an input: kept
    analyze_slide(slide.path, PANEL, tmp_path / "a", tile=512, nuclei_labels=img,
                  labels_channel="nuclei", **RUN)
    assert img.is_dir()
    with pytest.raises(InputError, match="has no channels"):
        analyze_slide(slide.path, PANEL, tmp_path / "x", nuclei_labels=path,
                      labels_channel=0, **RUN)
    with pytest.raises(InputError, match="need their nuclei from the same file"):
        analyze_slide(slide.path, PANEL, tmp_path / "x", nuclei_labels=img,
                      labels_channel=0, cell_labels=path, **RUN)


def test_cli_rasterize_and_cohort_folder_of_exports(slide, tmp_path):
    from qdmed.imaging._cohort import labels_file

    nuclei, cells = _truth(slide)
    path = tmp_path / "s.ome.zarr.geojson"
    _qupath_cells(path, cells, nuclei, 0.4)
    r = subprocess.run([sys.executable, "-m", "qdmed", "image", "rasterize", str(path),
                        "--slide", str(slide.path), "--out", str(tmp_path / "m.ome.zarr"),
                        "--no-progress", "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["channels"] == ["nuclei", "cells"] and d["shape_yx"] == [512, 512]
    r = subprocess.run([sys.executable, "-m", "qdmed", "image", "rasterize",
                        str(tmp_path / "missing.geojson"), "--slide", str(slide.path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "does not exist" in r.stderr
    for out in (slide.path, path, tmp_path / "labels.tif"):  # never over an input
        r = subprocess.run([sys.executable, "-m", "qdmed", "image", "rasterize", str(path),
                            "--slide", str(slide.path), "--out", str(out)],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 2, r.stderr
    assert read_slide(slide.path).channel_names == tuple(PANEL.channel_names)
    masks = tmp_path / "masks"
    masks.mkdir()
    for name in ("A.ome.tif.geojson", "B.geojson", "C_2.ome.tif.geojson", "D.geojson",
                 "D_cp_masks.tif", "E_params.json"):
        (masks / name).touch()
    stems = ["A", "B", "C", "C_2", "D", "E"]
    assert labels_file(masks, "A.ome.tif", stems).name == "A.ome.tif.geojson"
    assert labels_file(masks, "B.qptiff", stems).name == "B.geojson"
    # a label image wins over GeoJSON (a labels folder may hold annotations too)
    assert labels_file(masks, "D.ome.tif", stems).name == "D_cp_masks.tif"
    for name in ("C.ome.tif", "E.ome.tif"):
        with pytest.raises(InputError, match="no nuclei label image"):
            labels_file(masks, name, stems)
