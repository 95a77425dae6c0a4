"""Conventional DAB IHC of whole slides and large regions, tile by tile: the same cells as
scoring the whole image at once, memory of one tile."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from qdmed.errors import InputError
from qdmed.imaging import score_dab, write_ome_tiff
from qdmed.imaging._brightfield import HIST_BINS, deconvolve_dab
from qdmed.imaging._cells import histogram_otsu_threshold, otsu_foreground_threshold
from qdmed.imaging._dab_regions import _even_grid, analyze_dab_regions, check_tile

CUT = (0.05, 0.15, 0.3)


@pytest.fixture(scope="module")
def ihc_slide(tmp_path_factory):
    """scikit-image's real H-DAB image mirrored into a 1024^2 slide (0.5 um/px)."""
    from skimage.data import immunohistochemistry

    ihc = immunohistochemistry()
    img = np.concatenate([np.concatenate([ihc, ihc[:, ::-1]], 1),
                          np.concatenate([ihc[::-1], ihc[::-1, ::-1]], 1)], 0)
    path = tmp_path_factory.mktemp("dab") / "ihc.ome.tif"
    return write_ome_tiff(path, img, pixel_size_um=0.5), img


def _matched(a, b):
    """Rows of `b` matched to `a`'s by nearest centroid, and the distances."""
    d, j = cKDTree(b[["centroid_x", "centroid_y"]].to_numpy()).query(
        a[["centroid_x", "centroid_y"]].to_numpy())
    return b.iloc[j].reset_index(drop=True), d


def test_tiled_slide_has_the_cells_of_the_whole_image(tmp_path, ihc_slide):
    # 16 tiles of 256 px, 40 um margins: every cell found as score_dab finds it on the whole
    # image at the same haematoxylin threshold (nuclei split with slide coordinates as the
    # watershed's tie-breaker), each counted once
    path, img = ihc_slide
    d = analyze_dab_regions(path, None, tmp_path / "t", od_cutoffs=CUT, tile=256,
                            min_cells=20, progress=False)
    (tiled,) = d["thresholds"]
    assert (tiled["region"], tiled["n_tiles"]) == ("ihc.ome.tif", 16)
    thr = tiled["hematoxylin_threshold_od"]
    # the threshold is the one score_dab takes on the whole image (the same histogram)
    sc = score_dab(img, od_cutoffs=CUT, pixel_size_um=0.5)
    assert sc.nuclear_threshold_od == thr
    whole = sc.cells
    cells = pd.read_parquet(tmp_path / "t" / "cells.parquet")
    assert len(cells) == len(whole) == d["n_cells"] > 1000
    b, dist = _matched(cells, whole)
    assert dist.max() < 1e-9
    for col in ("cell_area_um2", "DAB_membrane_mean", "DAB_membrane_completeness"):
        np.testing.assert_allclose(cells[col], b[col], rtol=1e-12, atol=1e-12)
    (row,) = d["regions_scored"]["regions"]
    assert row["region"] == "ihc.ome.tif" and row["her2_category"] == "3+"
    # cells.geojson for review in QuPath (a review found none): one cell object per row of
    # cells.parquet, named by its cell_id, classified by its DAB class, its outline's area
    # that of its pixels (traced along pixel edges, simplified within 0.4 px)
    gj = json.loads((tmp_path / "t" / "cells.geojson").read_text())["features"]
    by_id = cells.set_index("cell_id")
    assert sorted(int(f["properties"]["name"]) for f in gj) == sorted(by_id.index.tolist())
    assert all(f["properties"]["classification"]["name"] ==
               f"DAB {by_id.loc[int(f['properties']['name']), 'dab_class']}" for f in gj)
    assert all("nucleusGeometry" in f for f in gj)

    def area(ring):
        x, y = np.asarray(ring, float).T
        return 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))

    ratio = [area(f["geometry"]["coordinates"][0]) * 0.25
             / by_id.loc[int(f["properties"]["name"]), "cell_area_um2"] for f in gj]
    assert abs(np.median(ratio) - 1) < 0.02
    # the region's H-score and DAB classes, as score_dab gives them for the whole image (a
    # review found regions.csv without them, where QuPath gives them per core)
    assert row["h_score"] == pytest.approx(sc.h_score, abs=1e-9)
    assert [row[f"dab_percent_{k}"] for k in ("0", "1plus", "2plus", "3plus")] == \
        pytest.approx([sc.percent_0, sc.percent_1plus, sc.percent_2plus, sc.percent_3plus])
    assert d["parameters"]["regions"] is None and d["parameters"]["tile_px"] == 256
    # in one tile (the default 2048 px) the slide is one crop, at the same threshold: the
    # same cells
    one = analyze_dab_regions(path, None, tmp_path / "o", od_cutoffs=CUT, min_cells=20,
                              progress=False)
    assert one["thresholds"] == [{**tiled, "n_crops": 1, "n_tiles": 0}]
    crop = pd.read_parquet(tmp_path / "o" / "cells.parquet")
    b, dist = _matched(cells, crop)
    assert len(crop) == len(cells) and dist.max() < 1e-9
    np.testing.assert_allclose(cells["DAB_membrane_mean"], b["DAB_membrane_mean"],
                               rtol=1e-12)


def test_region_table_columns_do_not_follow_the_first_row():
    # a missing core first gave another column order than a scored core first (a review)
    from qdmed.imaging._region_scores import region_table

    scored = {"region": "A-1", "status": "ok", "n_cells": 9, "her2_category": "3+",
              "message": "", "h_score": 120.0, "dab_percent_0": 10.0, "area_mm2": 0.1}
    missing = {"region": "A-2", "status": "missing", "n_cells": 0, "message": ""}
    a, b = region_table([missing, scored]), region_table([scored, missing])
    assert list(a.columns) == list(b.columns)
    # a case under the "highest" rule takes its H-score from its highest core, named
    from qdmed.imaging._region_scores import _highest_core_fields

    low = {**scored, "region": "B-1", "h_score": 40.0, "dab_percent_0": 60.0}
    got = _highest_core_fields([low, scored])
    assert (got["h_score"], got["dab_percent_0"], got["h_score_core"]) == (120.0, 10.0, "A-1")


def test_dab_outlines_can_be_left_out(tmp_path, ihc_slide):
    path, _ = ihc_slide
    d = analyze_dab_regions(path, None, tmp_path / "n", od_cutoffs=CUT, min_cells=20,
                            progress=False, outlines=False)
    assert d["cells_geojson"] is None and not (tmp_path / "n" / "cells.geojson").exists()
    assert not list((tmp_path / "n" / "tiles").glob("*.geojson.json"))
    # asked for later, outlines rescore the crops that have none; left out again, nothing
    # is rescored (the switch rescored every crop: it was part of the run's fingerprint)
    kw = dict(od_cutoffs=CUT, min_cells=20, progress=False)
    on = analyze_dab_regions(path, None, tmp_path / "n", **kw)
    assert on["n_crops_resumed"] == 0 and (tmp_path / "n" / "cells.geojson").exists()
    off = analyze_dab_regions(path, None, tmp_path / "n", outlines=False, **kw)
    assert off["n_crops_resumed"] == off["n_crops"]
    assert off["regions_scored"] == on["regions_scored"] == d["regions_scored"]


def test_tiles_on_two_dask_workers_give_the_same_cells(tmp_path, ihc_slide):
    path, _ = ihc_slide
    a = analyze_dab_regions(path, None, tmp_path / "a", od_cutoffs=CUT, tile=512,
                            progress=False)
    b = analyze_dab_regions(path, None, tmp_path / "b", od_cutoffs=CUT, tile=512,
                            n_workers=2, progress=False)
    assert a["thresholds"] == b["thresholds"]
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a" / "cells.parquet"),
                                  pd.read_parquet(tmp_path / "b" / "cells.parquet"))


def test_a_large_annotation_is_tiled_and_keeps_to_its_outline(tmp_path, ihc_slide):
    # a tumour annotation larger than a tile: its cells are those inside it, once each
    path, img = ihc_slide
    geo = tmp_path / "tumour.geojson"
    geo.write_text(json.dumps([{"type": "Feature", "properties": {"name": "T"},
                                "geometry": {"type": "Polygon", "coordinates": [[
                                    [100, 100], [900, 100], [900, 700], [100, 700],
                                    [100, 100]]]}}]))
    d = analyze_dab_regions(path, geo, tmp_path / "r", od_cutoffs=CUT, tile=300,
                            min_cells=20, progress=False)
    (tiled,) = d["thresholds"]
    # its pixels are those whose centres (index + 0.5 in QuPath coordinates) lie in it:
    # 100..899 x 100..699, 800 x 600 px, 3 x 2 tiles of at most 300 (the box took a pixel
    # more on either side, 801 x 601 px, and cut it into 3 x 3)
    assert tiled["region"] == "T" and tiled["n_tiles"] == 6
    cells = pd.read_parquet(tmp_path / "r" / "cells.parquet")
    x, y = cells["centroid_x"] + 0.5, cells["centroid_y"] + 0.5  # QuPath coordinates
    assert ((x >= 100) & (x <= 900) & (y >= 100) & (y <= 700)).all()
    whole = score_dab(img, od_cutoffs=CUT, pixel_size_um=0.5,
                      nuclear_threshold=tiled["hematoxylin_threshold_od"]).cells
    wx, wy = whole["centroid_x"] + 0.5, whole["centroid_y"] + 0.5
    inside = (wx >= 100) & (wx <= 900) & (wy >= 100) & (wy <= 700)
    assert len(cells) == int(inside.sum()) == d["regions_scored"]["regions"][0]["n_cells"]


def test_dab_tiling_options_are_checked(tmp_path, ihc_slide):
    path, _ = ihc_slide
    for bad in (100, 2048.0, True, "512"):
        with pytest.raises(InputError, match="tile must be an integer of at least 256"):
            check_tile(bad)
    with pytest.raises(InputError, match="need regions"):
        analyze_dab_regions(path, None, tmp_path / "x", od_cutoffs=CUT,
                            tma_map=tmp_path / "map.csv")
    with pytest.raises(InputError, match="n_workers"):
        analyze_dab_regions(path, None, tmp_path / "x", od_cutoffs=CUT, n_workers=0)


def test_histogram_otsu_matches_the_image_otsu():
    # Otsu (1979) from a histogram built piece by piece: the image's threshold to one bin,
    # and noise alone (one class) still refused
    from skimage.data import immunohistochemistry

    sm = ndi.gaussian_filter(deconvolve_dab(immunohistochemistry()).hematoxylin, 1.0).ravel()
    rng = np.random.default_rng(0)
    for values, top in ((sm, 3.0), (rng.normal(1.0, 0.1, 200_000), 3.0)):
        k = np.minimum((values * (HIST_BINS / top)).astype(np.int64), HIST_BINS - 1)
        pieces = np.array_split(np.arange(values.size), 7)
        hist = sum(np.stack([np.bincount(k[p], minlength=HIST_BINS),
                             np.bincount(k[p], weights=values[p], minlength=HIST_BINS),
                             np.bincount(k[p], weights=values[p] ** 2, minlength=HIST_BINS)])
                   for p in pieces)
        got = histogram_otsu_threshold(*hist, (np.arange(HIST_BINS) + 0.5) * top / HIST_BINS)
        want = otsu_foreground_threshold(values)
        if np.isfinite(want):
            assert got == pytest.approx(want, abs=2 * top / HIST_BINS)
        else:
            assert got == np.inf
    assert histogram_otsu_threshold(np.r_[5.0, 0, 0], np.r_[5.0, 0, 0], np.r_[5.0, 0, 0],
                                    np.r_[1.0, 2, 3]) == np.inf  # one value


def _tma_and_cores(tmp_path, brightfield_tma):
    """The synthetic brightfield TMA (conftest) and the GeoJSON of the cores found on it."""
    from qdmed.imaging import find_tma_cores

    p, _ = brightfield_tma(tmp_path / "bf.ome.tif")
    found, _ = find_tma_cores(p)
    cores = tmp_path / "cores.geojson"
    cores.write_text(json.dumps(found.to_geojson()))
    return p, cores


def test_dab_report_and_plot(tmp_path, brightfield_tma):
    # report.html beside the tables: the overview with the cells by DAB class, the OD
    # histogram against the cut-offs, the regions' map and table
    p, cores = _tma_and_cores(tmp_path, brightfield_tma)
    d = analyze_dab_regions(p, cores, tmp_path / "dab", od_cutoffs=CUT, min_cells=20,
                            progress=False)
    html = (tmp_path / "dab" / "report.html").read_text()
    assert d["report"] == str(tmp_path / "dab" / "report.html")
    assert html.count("<img") == 2 and "A-3" in html and "cells by DAB class" in html
    assert "uncalibrated example" in html  # CUT is the CLI's example: said in the report
    assert "href='cells.geojson'" in html and "cases.csv" not in html  # no TMA map
    # another antigen's cores are mapped too, by their status (the map was HER2's only)
    er = analyze_dab_regions(p, cores, tmp_path / "er", od_cutoffs=CUT, min_cells=20,
                             marker="ER", progress=False)
    assert (tmp_path / "er" / "report.html").read_text().count("<img") == 2
    from matplotlib.colors import to_hex

    from qdmed.imaging._report import _STATUS_COLOURS, regions_map_figure

    # (its ~55 cells a core are too few for a receptor status: grey, and said)
    rows = er["regions_scored"]["regions"]
    assert {r.get("ER_status") for r in rows} == {"insufficient cells", None}
    for r, status in zip(rows, ("negative", "low positive", "positive (borderline)",
                                "positive", None, "insufficient cells"), strict=True):
        r["ER_status"] = status  # B-2 is missing
    ax = regions_map_figure(rows, "ER_status", "ER status").axes[0]
    drawn = [to_hex(c.get_facecolors()[0]) for c in ax.collections  # (missing: hollow)
             if len(c.get_offsets()) and len(c.get_facecolors())]
    assert drawn == [_STATUS_COLOURS[k] for k in ("negative", "low positive", "positive",
                                                  "positive")] + ["#bbbbbb"]
    assert [t.get_text().split("\n")[1] for t in ax.texts] == [
        "negative", "low positive", "positive (borderline)", "positive", "missing",
        "insufficient cells"]
    assert ax.get_legend().get_title().get_text() == "ER status"
    # PgR's rule has no "low positive": its map's legend neither
    for r in rows:
        r["PR_status"] = r.pop("ER_status", None)
    legend = regions_map_figure(rows, "PR_status", "PR status").axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["negative", "positive", "not scored"]
    from skimage.data import immunohistochemistry

    sc = score_dab(immunohistochemistry(), od_cutoffs=CUT)
    fig = sc.plot(immunohistochemistry())
    left, right = fig.axes[:2]
    assert len(left.images) == 1 and left.collections[0].get_offsets().shape[0] == sc.n_cells
    assert [ln.get_xdata()[0] for ln in right.lines] == list(CUT)
    assert len(sc.plot().axes[0].images) == 0  # cells only


def _killed_and_resumed(tmp_path, monkeypatch, after: int, run):
    """``run(out)`` uninterrupted, then killed after ``after`` crops and run again into one
    folder: (uninterrupted summary, resumed summary), their cells and thresholds equal."""
    import qdmed.imaging._dab_regions as dr

    full = run(tmp_path / "full")
    real, calls = dr._score_crop, []

    def dies(*args):
        if len(calls) == after:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(dr, "_score_crop", dies)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "k")
    assert len(list((tmp_path / "k" / "tiles").glob("job_*.parquet"))) == after
    monkeypatch.setattr(dr, "_score_crop", real)
    again = run(tmp_path / "k")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "k" / "cells.parquet"),
                                  pd.read_parquet(tmp_path / "full" / "cells.parquet"))
    assert (tmp_path / "k" / "cells.geojson").read_text() == \
        (tmp_path / "full" / "cells.geojson").read_text()
    assert again["thresholds"] == full["thresholds"]
    # and each region's tissue area, kept with its threshold
    areas = [r.get("tissue_area_mm2") for r in again["regions_scored"]["regions"]]
    assert areas == [r.get("tissue_area_mm2") for r in full["regions_scored"]["regions"]]
    assert all(a > 0 for a, r in zip(areas, again["regions_scored"]["regions"], strict=True)
               if r["status"] != "missing")
    return full, again


def test_killed_dab_run_resumes_from_its_finished_crops(tmp_path, ihc_slide, monkeypatch):
    # a run killed after 5 of 16 tiles: the rerun scores the 11 left and writes what an
    # uninterrupted run writes; other parameters throw the finished crops away
    path, _ = ihc_slide
    _, again = _killed_and_resumed(tmp_path, monkeypatch, 5, lambda out: analyze_dab_regions(
        path, None, out, od_cutoffs=CUT, tile=256, progress=False))
    assert (again["n_crops"], again["n_crops_resumed"]) == (16, 5)
    other = analyze_dab_regions(path, None, tmp_path / "k", od_cutoffs=(0.1, 0.2, 0.4),
                                tile=256, progress=False)
    assert other["n_crops_resumed"] == 0


def test_another_slides_dab_run_into_the_folder_is_refused(tmp_path, ihc_slide, monkeypatch):
    # a killed run's finished crops, then its finished analysis, are not thrown away or
    # replaced by a run of another slide (a run of the same slide resumes, as above)
    import qdmed.imaging._dab_regions as dr

    path, _ = ihc_slide
    other = shutil.copyfile(path, tmp_path / "other.ome.tif")
    real, calls = dr._score_crop, []

    def dies(*args):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(dr, "_score_crop", dies)
    run = dict(od_cutoffs=CUT, tile=256, progress=False)
    with pytest.raises(KeyboardInterrupt):
        analyze_dab_regions(path, None, tmp_path / "k", **run)
    monkeypatch.setattr(dr, "_score_crop", real)
    with pytest.raises(InputError, match=r"holds an unfinished analysis of another slide "
                                         r"\(ihc.ome.tif, 3 crop\(s\) done"):
        analyze_dab_regions(other, None, tmp_path / "k", **run)
    assert analyze_dab_regions(path, None, tmp_path / "k", **run)["n_crops_resumed"] == 3
    with pytest.raises(InputError, match=r"holds the analysis of another slide "
                                         r"\(ihc.ome.tif\); this run of other.ome.tif"):
        analyze_dab_regions(other, None, tmp_path / "k", **run)


def test_tile_size_changes_no_threshold_and_no_cell(tmp_path, brightfield_tma):
    # review finding: a core's threshold once depended on whether it was tiled (A-2 went
    # from 2+ to 3+ with --tile 256); now every region has one threshold, Otsu's over its
    # polygons, whatever the tiling
    p, cores = _tma_and_cores(tmp_path, brightfield_tma)
    whole = analyze_dab_regions(p, cores, tmp_path / "a", od_cutoffs=CUT, min_cells=20,
                                progress=False)
    tiled = analyze_dab_regions(p, cores, tmp_path / "b", od_cutoffs=CUT, min_cells=20,
                                tile=256, progress=False)
    assert [t["n_tiles"] for t in whole["thresholds"]] == [0] * 5
    assert all(t["n_tiles"] == 4 for t in tiled["thresholds"])  # 276 px cores: 2 x 2
    assert [t["hematoxylin_threshold_od"] for t in tiled["thresholds"]] == pytest.approx(
        [t["hematoxylin_threshold_od"] for t in whole["thresholds"]], abs=1e-12)
    a = pd.read_parquet(tmp_path / "a" / "cells.parquet")
    b = pd.read_parquet(tmp_path / "b" / "cells.parquet")
    # the same cells; a cell by a tile's edge may grow a little differently where a
    # neighbour's nucleus is cut by that tile's 40 um margin (1 of 291 cells: its outline
    # 6 % smaller, centroid 1.4 px away)
    m, dist = _matched(a, b)
    assert len(a) == len(b) and (m["region"] == a["region"]).all()
    assert dist.max() < 2.0 and np.mean(dist < 1e-9) > 0.99
    assert [r["her2_category"] for r in whole["regions_scored"]["regions"]] == [
        r["her2_category"] for r in tiled["regions_scored"]["regions"]]


def _rect(name, x0, y0, x1, y1):
    return {"type": "Feature", "properties": {"name": name},
            "geometry": {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1],
                                                             [x0, y1], [x0, y0]]]}}


def test_overlapping_pieces_and_regions_count_each_cell_once(tmp_path, ihc_slide):
    # review finding: a region in two overlapping pieces counted the overlap's cells twice
    # (37 pairs under 3 px apart survived the rounded-centroid dedupe), and two overlapping
    # regions both kept them; a cell now belongs to the first polygon holding its centroid
    from qdmed.imaging import read_regions

    path, img = ihc_slide
    multi = {"type": "Feature", "properties": {"name": "T"},
             "geometry": {"type": "MultiPolygon", "coordinates": [
                 [[[100, 100], [600, 100], [600, 600], [100, 600], [100, 100]]],
                 [[[400, 400], [900, 400], [900, 900], [400, 900], [400, 400]]]]}}
    one, two = tmp_path / "t.geojson", tmp_path / "tb.geojson"
    one.write_text(json.dumps({"type": "FeatureCollection", "features": [multi]}))
    two.write_text(json.dumps({"type": "FeatureCollection", "features": [
        multi, _rect("B", 500, 500, 1000, 1000)]}))
    for tile in (2048, 300):
        # the pieces of one region share its threshold: the overlap's cells are found alike
        # by both crops and kept once
        d = analyze_dab_regions(path, one, tmp_path / f"t{tile}", od_cutoffs=CUT,
                                min_cells=20, tile=tile, progress=False)
        cells = pd.read_parquet(tmp_path / f"t{tile}" / "cells.parquet")
        assert not cKDTree(cells[["centroid_x", "centroid_y"]].to_numpy()).query_pairs(3.0)
        assert d["regions_scored"]["regions"][0]["n_cells"] == len(cells) > 500
        # two regions: each cell in the first that holds it (B keeps none of T's)
        d = analyze_dab_regions(path, two, tmp_path / f"b{tile}", od_cutoffs=CUT,
                                min_cells=20, tile=tile, progress=False)
        cells = pd.read_parquet(tmp_path / f"b{tile}" / "cells.parquet")
        in_t = read_regions(one).contains_cells(cells)
        assert (cells.loc[in_t, "region"] == "T").all()
        t = {r["region"]: r["n_cells"] for r in d["regions_scored"]["regions"]}
        assert t["T"] + t["B"] == len(cells)


def test_an_object_longer_than_the_margin_is_not_counted_per_tile(tmp_path):
    # review finding: a haematoxylin strand 320 x 6 px (480 um^2, dropped as oversize in
    # the whole image) crossing a tile's window edge was cut there and counted as two
    # cells; cells reaching a window edge inside the slide are now left out
    rgb = np.full((512, 512, 3), 245, np.uint8)
    yy, xx = np.mgrid[:512, :512]
    for cy in (60, 140, 380, 460):
        for cx in range(40, 480, 60):
            rgb[(yy - cy) ** 2 + (xx - cx) ** 2 <= 36] = (70, 60, 150)  # round nuclei
    rgb[253:259, 100:420] = (70, 60, 150)  # the strand, across the tiles' edge at x = 256
    path = write_ome_tiff(tmp_path / "s.ome.tif", rgb, pixel_size_um=0.5)
    d = analyze_dab_regions(path, None, tmp_path / "t", od_cutoffs=CUT, tile=256,
                            min_cells=1, progress=False)
    whole = score_dab(rgb, od_cutoffs=CUT, pixel_size_um=0.5,
                      nuclear_threshold=d["thresholds"][0]["hematoxylin_threshold_od"])
    cells = pd.read_parquet(tmp_path / "t" / "cells.parquet")
    # before the fix: two "cells" at x = 214 and 301 (354 and 366 um^2), 34 against 32
    assert not ((cells["centroid_y"] - 255.5).abs() < 3).any()
    assert len(cells) == whole.n_cells == 32


def test_dask_options_as_analyze_slide(tmp_path, ihc_slide):
    # review finding: n_workers=None (one per core) crashed; scheduler='synchronous' with
    # n_workers=2 tried to connect to a scheduler called 'synchronous' (then ran in this
    # process, the workers ignored: now the contradiction is refused, as for analyze_slide)
    path, _ = ihc_slide
    with pytest.raises(InputError, match="starts local worker processes; scheduler "
                                         "'synchronous' runs in this process"):
        analyze_dab_regions(path, None, tmp_path / "x", od_cutoffs=CUT, tile=512,
                            scheduler="synchronous", n_workers=2, progress=False)
    assert not (tmp_path / "x").exists()
    a = analyze_dab_regions(path, None, tmp_path / "a", od_cutoffs=CUT, tile=512,
                            scheduler="synchronous", progress=False)
    b = analyze_dab_regions(path, None, tmp_path / "b", od_cutoffs=CUT, tile=512,
                            n_workers=None, progress=False)
    assert a["n_cells"] == b["n_cells"] > 1000


def test_even_grid_has_no_slivers():
    assert _even_grid(0, 277, 256) == [(0, 138), (138, 277)]
    assert _even_grid(10, 522, 256) == [(10, 266), (266, 522)]
    assert _even_grid(0, 100, 256) == [(0, 100)]


def test_glass_does_not_pull_the_nuclear_threshold_down(tmp_path):
    # review findings: Otsu's split over glass and tissue moved down as the glass grew (the
    # same tissue: 282 cells alone, 205 with 94 % glass); glass (every channel's OD below
    # that of 95 % transmittance against the glass's own level, which may read below the
    # white level used) is now left out of it, in one image and in a slide's tiles
    from skimage.data import immunohistochemistry

    ihc = immunohistochemistry()
    for background in ("auto", 1.0):  # the IHC image's glass reads 0.92-0.93: not white
        counts, thresholds = [], []
        for n in (512, 2048):
            # the IHC image's own glass: its one flat patch (rows 310-379, x < 25) reads
            # 236/236/234 (test_white_level_is_the_glass_not_its_brightest_pixels)
            img = np.full((n, n, 3), (236, 236, 234), np.uint8)
            img[:512, :512] = ihc
            sc = score_dab(img, od_cutoffs=CUT, background=background)
            counts.append(sc.n_cells)
            thresholds.append(sc.nuclear_threshold_od)
            path = write_ome_tiff(tmp_path / f"g{n}.ome.tif", img, pixel_size_um=0.5)
            d = analyze_dab_regions(path, None, tmp_path / f"g{n}{background}",
                                    od_cutoffs=CUT, background=background, tile=1024,
                                    progress=False)
            thresholds.append(d["thresholds"][0]["hematoxylin_threshold_od"])
            counts.append(d["n_cells"])
        assert max(thresholds) - min(thresholds) < 1e-3, (background, thresholds)
        assert max(counts) - min(counts) <= 3 and min(counts) > 270, (background, counts)


def test_a_piece_too_small_to_score_claims_no_cell(tmp_path, ihc_slide):
    # review finding: a 4-6 px annotation listed first (no crop: under 8 px) took a cell of
    # the region it lay in, which then lost it from every region; now the cell is kept,
    # in the first region holding it (as assign_regions places every cell)
    path, _ = ihc_slide
    geo = tmp_path / "r.geojson"
    feats = [_rect("B", 300, 300, 700, 700)]
    base = analyze_dab_regions(path, _write(geo, feats), tmp_path / "a", od_cutoffs=CUT,
                               min_cells=1, progress=False)
    b_cells = pd.read_parquet(tmp_path / "a" / "cells.parquet")
    x, y = b_cells["centroid_x"].iloc[0] + 0.5, b_cells["centroid_y"].iloc[0] + 0.5
    small = _rect("S", x - 2, y - 2, x + 2, y + 2)  # under 8 px: not cropped
    d = analyze_dab_regions(path, _write(geo, [small, *feats]), tmp_path / "b",
                            od_cutoffs=CUT, min_cells=1, progress=False)
    got = {r["region"]: r["n_cells"] for r in d["regions_scored"]["regions"]}
    want = base["regions_scored"]["regions"][0]["n_cells"]
    assert got["S"] + got["B"] == want == d["n_scored"] == base["n_scored"]


def _write(path, features):
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def test_a_bad_stain_matrix_is_refused_before_any_pixel_is_read(tmp_path, ihc_slide,
                                                                monkeypatch):
    import qdmed.imaging._dab_regions as dr
    from qdmed.errors import UnknownNameError

    path, _ = ihc_slide
    monkeypatch.setattr(dr, "_crop_histogram", None)  # reading a crop would fail here
    with pytest.raises(UnknownNameError, match="Unknown stain_matrix 'Ruifrok'"):
        analyze_dab_regions(path, None, tmp_path / "x", od_cutoffs=CUT,
                            stain_matrix="Ruifrok")
    with pytest.raises(InputError, match="stain_matrix must be a finite"):
        analyze_dab_regions(path, None, tmp_path / "x", od_cutoffs=CUT,
                            stain_matrix=np.eye(2))


def test_killed_tma_run_resumes_with_each_cores_own_threshold(tmp_path, brightfield_tma,
                                                              monkeypatch):
    # a core (a region of one crop) takes its threshold from its own read, kept beside its
    # cells: a run killed after two cores resumes with the same thresholds and cells
    p, cores = _tma_and_cores(tmp_path, brightfield_tma)
    full, again = _killed_and_resumed(tmp_path, monkeypatch, 2, lambda out: (
        analyze_dab_regions(p, cores, out, od_cutoffs=CUT, min_cells=20, progress=False)))
    assert all(t["n_crops"] == 1 for t in full["thresholds"])
    assert again["n_crops_resumed"] == 2
    # a core's tissue, from its own read: about its disc of 240 px (0.0113 mm2 at 0.5 um/px),
    # none for the lost core
    area = {r["region"]: r["tissue_area_mm2"] for r in full["regions_scored"]["regions"]}
    assert area.pop("B-2") is None
    assert all(0.8 * 0.0113 < a < 1.1 * 0.0113 for a in area.values()), area


def test_a_region_is_thresholded_on_its_own_tissue(tmp_path, ihc_slide):
    # review suggestion: Otsu's split over the tissue inside the region's polygon, not its
    # bounding box (a thin or diagonal annotation would be thresholded on the tissue around
    # it); the same value tiled or not, and as computed here on the whole image
    from qdmed.imaging._brightfield import (
        glass_level,
        hematoxylin_histogram,
        hematoxylin_top,
        histogram_threshold,
        tissue_hematoxylin,
    )
    from qdmed.imaging._regions import Regions

    path, img = ihc_slide
    tri = [[100, 100], [950, 180], [180, 950], [100, 100]]
    geo = _write(tmp_path / "t.geojson", [{"type": "Feature", "properties": {"name": "T"},
                                           "geometry": {"type": "Polygon",
                                                        "coordinates": [tri]}}])
    got = [analyze_dab_regions(path, geo, tmp_path / f"t{tile}", od_cutoffs=CUT, tile=tile,
                               min_cells=1, progress=False)["thresholds"][0]
           for tile in (2048, 300)]
    assert (got[0]["n_tiles"], got[1]["n_tiles"]) == (0, 9)
    sep = deconvolve_dab(img)
    smooth, tissue = tissue_hematoxylin(img, sep, 0.5, glass_level(img, 1.0, 1.0))
    yy, xx = np.mgrid[:1024, :1024]
    reg = Regions(source="", polygons=((np.array(tri, float),),), classes=(None,),
                  labels=("T",))
    inside = reg.region_index(xx.ravel() + 0.5, yy.ravel() + 0.5).reshape(1024, 1024) >= 0
    top = hematoxylin_top(None, 1.0)
    want = histogram_threshold(hematoxylin_histogram(smooth[tissue & inside], top), top)
    box = histogram_threshold(hematoxylin_histogram(smooth[tissue], top), top)
    assert got[0]["hematoxylin_threshold_od"] == got[1]["hematoxylin_threshold_od"] == want
    assert want != box  # the bounding box (here the whole image) would give another


def test_glass_tiles_are_not_scored_and_the_cells_are_the_same(tmp_path, monkeypatch):
    # a slide three quarters glass: the tiles of glass alone add nothing to the threshold's
    # histogram and are not read a second time to be scored (their darkest values rule out
    # any nucleus), and the slide still has score_dab's cells of the whole image
    from skimage.data import immunohistochemistry

    from qdmed.imaging._slideio import SlideImage

    img = np.full((1024, 1024, 3), 242, np.uint8)
    img[512:, 512:] = immunohistochemistry()
    path = write_ome_tiff(tmp_path / "section.ome.tif", img, pixel_size_um=0.5)
    reads = []
    read = SlideImage.read_region
    monkeypatch.setattr(SlideImage, "read_region",
                        lambda self, *box: reads.append(box) or read(self, *box))
    d = analyze_dab_regions(path, None, tmp_path / "t", od_cutoffs=CUT, tile=256,
                            min_cells=20, progress=False)
    (thr,) = d["thresholds"]
    assert thr["n_tiles"] == 16
    # 16 reads for the threshold, then those of the 9 tiles whose window (80 px of margin)
    # reaches the tissue: the 7 of glass alone are not read again
    assert len([b for b in reads if b[1] - b[0] < 1024]) == 16 + 9
    sc = score_dab(img, od_cutoffs=CUT, pixel_size_um=0.5)
    assert sc.nuclear_threshold_od == thr["hematoxylin_threshold_od"]
    cells = pd.read_parquet(tmp_path / "t" / "cells.parquet")
    b, dist = _matched(cells, sc.cells)
    assert len(cells) == len(sc.cells) == d["n_cells"] > 200 and dist.max() < 1e-9
    # the slide's tissue, glass left out: what the whole image's threshold was split from,
    # within the IHC block's 0.0655 mm2 (its pale lumina read as glass)
    (row,) = d["regions_scored"]["regions"]
    assert row["tissue_area_mm2"] == pytest.approx(sc.tissue_area_um2 / 1e6, rel=1e-12)
    assert 0.8 * 0.065536 < row["tissue_area_mm2"] <= 0.065536 == row["area_mm2"] / 4
    assert row["cells_per_tissue_mm2"] == pytest.approx(len(cells) / row["tissue_area_mm2"])
    np.testing.assert_allclose(cells["DAB_membrane_mean"], b["DAB_membrane_mean"],
                               rtol=1e-12, atol=1e-12)


def test_annotations_of_one_tumour_are_also_scored_pooled(tmp_path, ihc_slide):
    """Annotations drawn in pieces of one tumour: each scored, and their cells pooled into
    one score (a review found no total, where a QD slide's scores pool its regions); the
    pooled H-score is that of every region's measured cells together. A TMA's cores are
    patients: not pooled."""
    path, _ = ihc_slide

    def square(name, x0, y0, s=400):
        ring = [[x0, y0], [x0 + s, y0], [x0 + s, y0 + s], [x0, y0 + s], [x0, y0]]
        return {"type": "Feature", "properties": {"name": name},
                "geometry": {"type": "Polygon", "coordinates": [ring]}}

    geo = _write(tmp_path / "t.geojson", [square("T1", 50, 50), square("T2", 550, 550)])
    d = analyze_dab_regions(path, geo, tmp_path / "o", od_cutoffs=CUT, min_cells=20,
                            progress=False)
    rows = d["regions_scored"]["regions"]
    pooled = d["all_regions"]
    assert [r["region"] for r in rows] == ["T1", "T2"] and pooled["region"] == "all regions"
    assert pooled["n_scored"] == sum(r["n_scored"] for r in rows) > 100
    cells = pd.read_parquet(tmp_path / "o" / "cells.parquet")
    c = cells.loc[cells["in_region"], "dab_class"].astype(str)
    c = c[c != "unmeasured"]
    want = sum(k * 100 * float((c == cls).mean()) for k, cls in ((1, "1+"), (2, "2+"),
                                                                 (3, "3+")))
    assert pooled["h_score"] == pytest.approx(want, abs=1e-9)
    assert pooled["her2_category"] in ("0", "1+", "2+", "3+")
    # annotations mapped to cases are patients (cores drawn by hand): not pooled (a review)
    (tmp_path / "map.csv").write_text("core,case\nT1,P1\nT2,P2\n")
    mapped = analyze_dab_regions(path, geo, tmp_path / "m", od_cutoffs=CUT, min_cells=20,
                                 tma_map=tmp_path / "map.csv", progress=False)
    assert mapped["all_regions"] is None and mapped["cases_scored"] is not None
    # each cell's region and case in its QuPath metadata
    feats = json.loads((tmp_path / "m" / "cells.geojson").read_text())["features"]
    meta = {(f["properties"]["metadata"]["region"], f["properties"]["metadata"].get("case"))
            for f in feats}
    assert meta == {("T1", "P1"), ("T2", "P2")}
    assert "href='cases.csv'" in (tmp_path / "m" / "report.html").read_text()


def test_a_region_of_tissue_without_nuclei_says_so(tmp_path):
    """A region of stained tissue where no nucleus stands out (DAB alone, no haematoxylin)
    read "no cells / no scored cells" unexplained (a review): its message names its tissue
    area and that no nuclei were found in it."""
    img = np.full((512, 512, 3), 250, np.uint8)
    dab_only = 255 * 10 ** (-0.3 * np.array([0.268, 0.570, 0.776]))
    img[100:400, 100:400] = np.rint(dab_only).astype(np.uint8)
    path = write_ome_tiff(tmp_path / "dab.ome.tif", img, pixel_size_um=0.5, tile=256,
                          channel_names=["R", "G", "B"])
    ring = [[120, 120], [380, 120], [380, 380], [120, 380], [120, 120]]
    geo = _write(tmp_path / "r.geojson", [{"type": "Feature", "properties": {"name": "P"},
                                           "geometry": {"type": "Polygon",
                                                        "coordinates": [ring]}}])
    (row,) = analyze_dab_regions(path, geo, tmp_path / "o", od_cutoffs=CUT, min_cells=20,
                                 progress=False)["regions_scored"]["regions"]
    assert row["n_cells"] == 0 and row["tissue_area_mm2"] == pytest.approx(0.0169, rel=0.02)
    assert row["message"].startswith("no nuclei found in its 0.0169 mm^2 of tissue")


def test_ki67_index_is_the_percent_of_positive_nuclei(tmp_path, ihc_slide):
    """Ki-67 (refused before: a review) is scored as a nuclear antigen: the percent of nuclei
    at or above the first cut-off, the Ki-67 index (Nielsen et al., J Natl Cancer Inst 2021,
    doi:10.1093/jnci/djaa201), counted here by hand from the cells' nuclear DAB OD."""
    path, _ = ihc_slide
    d = analyze_dab_regions(path, None, tmp_path / "k", od_cutoffs=CUT, marker="Ki67",
                            min_cells=20, progress=False)
    (row,) = d["regions_scored"]["regions"]
    cells = pd.read_parquet(tmp_path / "k" / "cells.parquet")
    v = cells.loc[cells["in_region"], "DAB_nucleus_mean"].dropna()
    assert row["Ki67_percent_positive"] == pytest.approx(100 * float((v >= CUT[0]).mean()))
    assert d["parameters"]["compartment"] == "nucleus" and "Ki67_status" not in row
