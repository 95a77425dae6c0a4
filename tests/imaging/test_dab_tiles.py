"""Conventional DAB IHC of whole slides and large regions, tile by tile: the same cells as
scoring the whole image at once, memory of one tile."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from qdmed.errors import InputError
from qdmed.imaging import score_dab, write_ome_tiff
from qdmed.imaging._brightfield import deconvolve_dab
from qdmed.imaging._cells import histogram_otsu_threshold, otsu_foreground_threshold
from qdmed.imaging._dab_regions import HIST_BINS, analyze_dab_regions, check_tile

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
    (tiled,) = d["tiled_regions"]
    assert (tiled["region"], tiled["n_tiles"]) == ("ihc.ome.tif", 16)
    thr = tiled["hematoxylin_threshold_od"]
    # the threshold is the whole image's Otsu threshold, to the histogram's bin width
    sm = ndi.gaussian_filter(deconvolve_dab(img).hematoxylin, 1.0)
    assert thr == pytest.approx(otsu_foreground_threshold(sm), abs=3.0 / HIST_BINS)
    whole = score_dab(img, od_cutoffs=CUT, pixel_size_um=0.5, nuclear_threshold=thr).cells
    cells = pd.read_parquet(tmp_path / "t" / "cells.parquet")
    assert len(cells) == len(whole) == d["n_cells"] > 1000
    b, dist = _matched(cells, whole)
    assert dist.max() < 1e-9
    for col in ("cell_area_um2", "DAB_membrane_mean", "DAB_membrane_completeness"):
        np.testing.assert_allclose(cells[col], b[col], rtol=1e-12, atol=1e-12)
    (row,) = d["regions_scored"]["regions"]
    assert row["region"] == "ihc.ome.tif" and row["her2_category"] == "3+"
    assert d["parameters"]["regions"] is None and d["parameters"]["tile_px"] == 256
    # in one tile (the default 2048 px) the slide is one crop with its own Otsu threshold
    one = analyze_dab_regions(path, None, tmp_path / "o", od_cutoffs=CUT, min_cells=20,
                              progress=False)
    assert one["tiled_regions"] == [] and one["n_cells"] == len(
        score_dab(img, od_cutoffs=CUT, pixel_size_um=0.5).cells)


def test_tiles_on_two_dask_workers_give_the_same_cells(tmp_path, ihc_slide):
    path, _ = ihc_slide
    a = analyze_dab_regions(path, None, tmp_path / "a", od_cutoffs=CUT, tile=512,
                            progress=False)
    b = analyze_dab_regions(path, None, tmp_path / "b", od_cutoffs=CUT, tile=512,
                            n_workers=2, progress=False)
    assert a["tiled_regions"] == b["tiled_regions"]
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
    (tiled,) = d["tiled_regions"]
    # its pixels 99..899 x 99..699 (QuPath coordinates are index + 0.5): 3 x 3 tiles of 300
    assert tiled["region"] == "T" and tiled["n_tiles"] == 9
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



def test_dab_report_and_plot(tmp_path, brightfield_tma):
    # report.html beside the tables: the overview with the cells by DAB class, the OD
    # histogram against the cut-offs, the regions' map and table
    import json as _json

    from qdmed.imaging import find_tma_cores

    p, _ = brightfield_tma(tmp_path / "bf.ome.tif")
    found, _ = find_tma_cores(p)
    cores = tmp_path / "cores.geojson"
    cores.write_text(_json.dumps(found.to_geojson()))
    d = analyze_dab_regions(p, cores, tmp_path / "dab", od_cutoffs=CUT, min_cells=20,
                            progress=False)
    html = (tmp_path / "dab" / "report.html").read_text()
    assert d["report"] == str(tmp_path / "dab" / "report.html")
    assert html.count("<img") == 2 and "A-3" in html and "cells by DAB class" in html
    assert "uncalibrated" not in html  # the CLI's warning, not the function's
    from skimage.data import immunohistochemistry

    sc = score_dab(immunohistochemistry(), od_cutoffs=CUT)
    fig = sc.plot(immunohistochemistry())
    left, right = fig.axes[:2]
    assert len(left.images) == 1 and left.collections[0].get_offsets().shape[0] == sc.n_cells
    assert [ln.get_xdata()[0] for ln in right.lines] == list(CUT)
    assert len(sc.plot().axes[0].images) == 0  # cells only



def test_killed_dab_run_resumes_from_its_finished_crops(tmp_path, ihc_slide, monkeypatch):
    # a run killed after 5 of 16 tiles: the rerun scores the 11 left and writes what an
    # uninterrupted run writes; other parameters throw the finished crops away
    import qdmed.imaging._dab_regions as dr

    path, _ = ihc_slide
    full = analyze_dab_regions(path, None, tmp_path / "full", od_cutoffs=CUT, tile=256,
                               progress=False)
    real, calls = dr._score_crop, []

    def dies_after_five(*args):
        if len(calls) == 5:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(dr, "_score_crop", dies_after_five)
    with pytest.raises(KeyboardInterrupt):
        analyze_dab_regions(path, None, tmp_path / "k", od_cutoffs=CUT, tile=256,
                            progress=False)
    assert len(list((tmp_path / "k" / "tiles").glob("job_*.parquet"))) == 5
    monkeypatch.setattr(dr, "_score_crop", real)
    again = analyze_dab_regions(path, None, tmp_path / "k", od_cutoffs=CUT, tile=256,
                                progress=False)
    assert (again["n_crops"], again["n_crops_resumed"]) == (16, 5)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "k" / "cells.parquet"),
                                  pd.read_parquet(tmp_path / "full" / "cells.parquet"))
    assert again["tiled_regions"] == full["tiled_regions"]
    other = analyze_dab_regions(path, None, tmp_path / "k", od_cutoffs=(0.1, 0.2, 0.4),
                                tile=256, progress=False)
    assert other["n_crops_resumed"] == 0
