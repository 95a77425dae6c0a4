"""Nuclei segmented elsewhere (cellpose, StarDist, Mesmer, QuPath label exports) as the
pipeline's nuclei: the label image is read tile by tile, cells grow from it, each nucleus is
owned by exactly one tile and keeps its given id (``nucleus_label``).

Ground truth: the synthetic slide's own nucleus labels (written beside it as NGFF labels), so
every true nucleus must come back once, with its exact pixel area, whatever the tiling."""

import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from qdmed.errors import InputError
from qdmed.imaging import (
    AnalysisSettings,
    analyze_cohort,
    analyze_field,
    analyze_slide,
    breast_panel_5plex,
    cells_from_labels,
    nuclei_from_labels,
    simulate_field,
    simulate_slide,
)

PANEL = breast_panel_5plex()
KW = dict(endmembers=PANEL.endmembers, marker_names=list(PANEL.markers), photons_per_unit=300.0)
RUN = dict(scheduler="synchronous", progress=False, write_unmixed=False)


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    d = tmp_path_factory.mktemp("labels")
    return simulate_slide(d / "s.ome.zarr", (1024, 1024), preset="her2-heterogeneous", seed=5,
                          channel_names=list(PANEL.channel_names), tile=512, write_labels=True,
                          **KW)


def _truth_labels(slide):
    import zarr

    return np.asarray(zarr.open_group(str(slide.path), mode="r")["labels/nuclei/0"])


def test_nuclei_from_labels_renumbers_and_keeps_the_given_ids():
    given = np.array([[0, 70, 70], [3, 3, 0], [0, 1200, 70]], dtype=np.uint16)
    nuclei, ids = nuclei_from_labels(given)
    assert nuclei.dtype == np.int32
    np.testing.assert_array_equal(ids[nuclei], np.where(given > 0, given, 0))
    assert sorted(np.unique(nuclei).tolist()) == [0, 1, 2, 3]
    # QuPath and ImageJ write labels as float32: whole numbers are accepted
    n2, ids2 = nuclei_from_labels(given.astype(np.float32))
    np.testing.assert_array_equal(n2, nuclei)
    np.testing.assert_array_equal(ids2, ids)


@pytest.mark.parametrize("bad, match", [
    (np.full((3, 3), 0.5), "fractional"),
    (np.array([[0, -2], [1, 1]]), "non-negative"),
    (np.array([[0, np.nan], [1, 1]]), "NaN"),
    (np.zeros((2, 3, 3), int), "2-D"),
    (np.array([["a"]]), "integer"),
])
def test_nuclei_from_labels_refuses_what_is_not_a_label_image(bad, match):
    with pytest.raises(InputError, match=match):
        nuclei_from_labels(bad)


def test_binary_masks_and_ids_reused_per_tile_are_refused(slide, tmp_path):
    """A binary (semantic) mask gives every nucleus one id, and a mask stitched from tiles
    each numbered from 1 gives one id to nuclei far apart: measured as is, either would
    make giant objects. A label with one stray piece besides its object is accepted."""
    truth = _truth_labels(slide)
    with pytest.raises(InputError, match="label 1 covers [0-9]+ separate regions: .*binary"):
        nuclei_from_labels(truth > 0)
    per_tile = np.zeros_like(truth)
    for y in range(0, truth.shape[0], 256):
        for x in range(0, truth.shape[1], 256):
            block = truth[y:y + 256, x:x + 256]
            _, per_tile[y:y + 256, x:x + 256] = np.unique(block, return_inverse=True)
    with pytest.raises(InputError, match="numbered anew per tile"):
        nuclei_from_labels(per_tile, what="masks.tif")
    # two fields numbered alike: most ids cover exactly two nuclei, far apart
    halves = truth.copy()
    for x in (0, truth.shape[1] // 2):
        block = truth[:, x:x + truth.shape[1] // 2]
        _, halves[:, x:x + truth.shape[1] // 2] = np.unique(block, return_inverse=True)
    with pytest.raises(InputError, match="labels .* each cover two separate objects far "
                       "apart: .*numbered anew per tile"):
        nuclei_from_labels(halves, what="masks.tif")
    stray = truth.copy()
    stray[0:3, 0:3] = stray[truth > 0][0]  # a second piece of one nucleus, far from it
    nuclei_from_labels(stray)
    # ... and of three more (6 x 6 px pieces: > 1/20 of any nucleus, so each counts):
    # still accepted, a segmenter's artefacts; the halves above give hundreds
    ids = np.unique(truth[truth > 0])
    assert np.bincount(truth.ravel())[1:].max() < 20 * 36
    for k in range(3):
        stray[100 * k:100 * k + 6, 1010:1016] = ids[k + 5]
    nuclei_from_labels(stray)
    # specks next to an object count as they would at the file's resolution, repeated 4x
    speck = np.zeros((60, 60), np.int32)
    speck[5:55, 5:55] = 7
    speck[1, 1] = speck[1, 58] = speck[58, 1] = 7
    nuclei_from_labels(np.repeat(np.repeat(speck, 4, 0), 4, 1))
    # a tile window cuts an irregular object into pieces that join outside it: accepted
    comb = np.zeros((100, 100), np.int32)
    comb[60:70, 5:95] = 3
    for x in (5, 30, 55, 80):
        comb[70:95, x:x + 10] = 3
    nuclei_from_labels(comb)
    nuclei_from_labels(comb[75:])  # four teeth, each cut by the window's top edge
    with pytest.raises(InputError, match="label 3 covers 4 separate regions"):
        nuclei_from_labels(np.pad(comb[75:], 1))  # the same teeth inside the window
    path = tmp_path / "binary.tif"
    tifffile.imwrite(path, (truth > 0).astype(np.uint8) * 255)
    with pytest.raises(InputError, match="label 255 covers"):
        analyze_slide(slide.path, PANEL, tmp_path / "b", tile=512, nuclei_labels=path, **RUN)


def test_field_with_true_nuclei_measures_every_true_nucleus():
    f = simulate_field((384, 384), preset="BT474", seed=3, **KW)
    fa = analyze_field(f.image, PANEL, nuclei=f.nuclei * 10 + 5 * (f.nuclei > 0))
    t = fa.table
    assert fa.settings.segmentation == "labels"
    present = np.unique(f.nuclei[f.nuclei > 0])
    assert len(t) == present.size
    # each cell keeps its given id, and its nucleus is exactly the given pixels
    assert sorted(((t["nucleus_label"] - 5) // 10).tolist()) == present.tolist()
    area = np.bincount(f.nuclei.ravel())[((t["nucleus_label"] - 5) // 10).to_numpy()]
    np.testing.assert_allclose(t["nucleus_area_um2"], area * f.pixel_size_um ** 2)
    with pytest.raises(InputError, match="shape"):
        analyze_field(f.image, PANEL, nuclei=f.nuclei[:-1])
    with pytest.raises(InputError, match="needs the nuclei labels"):
        analyze_field(f.image, PANEL, AnalysisSettings(segmentation="labels"))


def test_optional_segmenters_are_reached_from_the_settings(monkeypatch):
    """settings.segmentation picks cellpose/StarDist (not installed here: the adapter is
    replaced by a stand-in that records the call and returns the true nuclei)."""
    import qdmed.imaging._cells as cells_mod

    f = simulate_field((256, 256), preset="BT474", seed=4, **KW)
    seen = []

    def fake(img, method, *args):
        seen.append((method, img.shape, *args))
        return f.nuclei

    monkeypatch.setattr(cells_mod, "segment_external", fake)
    settings = AnalysisSettings(segmentation="stardist", segmentation_pixel_size_um=0.4,
                                segmentation_range=(0.0, 3.0))
    fa = analyze_field(f.image, PANEL, settings)
    # (method, shape, pixel size, model, the model's pixel size, the nuclear range)
    assert seen == [("stardist", (256, 256), 0.5, None, 0.4, (0.0, 3.0))]
    assert fa.settings.segmentation == "stardist" and len(fa.table) > 0


def test_slide_tiles_own_each_given_nucleus_once(slide, tmp_path):
    labels = slide.path / "labels" / "nuclei"  # NGFF labels inside the OME-Zarr
    one = analyze_slide(slide.path, PANEL, tmp_path / "one", tile=2048, outlines=False,
                        nuclei_labels=labels, **RUN)
    tiled = analyze_slide(slide.path, PANEL, tmp_path / "tiled", tile=384, nuclei_labels=labels,
                          **RUN)
    assert tiled.summary["n_tiles"] == 9
    assert tiled.summary["settings"]["segmentation"] == "labels"
    assert tiled.summary["labels"]["nuclei"]["channel"] == 0
    assert tiled.summary["labels"]["cells"] is None
    a, b = one.cells(), tiled.cells()
    truth = _truth_labels(slide)
    true_ids = np.unique(truth[truth > 0])
    # every true nucleus exactly once, with its exact area, across 9 tiles
    assert sorted(b["nucleus_label"].tolist()) == true_ids.tolist()
    area = np.bincount(truth.ravel())[b["nucleus_label"].to_numpy()]
    np.testing.assert_allclose(b["nucleus_area_um2"], area * 0.25)
    # the tiling changes nothing but the cell ids
    m = a.merge(b, on="nucleus_label", suffixes=("_a", "_b"))
    assert len(m) == len(a) == len(b)
    for col in ("cell_area_um2", "HER2_membrane_mean", "ER_nucleus_mean"):
        np.testing.assert_allclose(m[f"{col}_a"], m[f"{col}_b"], rtol=1e-9)
    gj = json.loads((tmp_path / "tiled" / "cells.geojson").read_text())
    assert len(gj["features"]) == len(b)
    assert not tiled.summary["labels"]["warnings"]  # the true nuclei lie on their DAPI


def test_given_nuclei_off_their_stain_are_warned(slide, tmp_path):
    """The true nuclei transposed (a review's cellpose masks on a square slide, used unsaid:
    the cells' nuclear DAPI fell from ~900 to 21) hold about their area's share of the DAPI
    signal, not several times it: warned among the labels' warnings."""
    from qdmed.imaging import read_slide
    from qdmed.imaging._analyze import labels_on_stain_warnings

    truth = _truth_labels(slide)
    tifffile.imwrite(tmp_path / "t.tif", np.ascontiguousarray(truth.T))
    res = analyze_slide(slide.path, PANEL, tmp_path / "o", tile=1024, outlines=False,
                        nuclei_labels=tmp_path / "t.tif", **RUN)
    (w,) = [x for x in res.warnings if x.startswith("labels: the given nuclei do not lie")]
    assert "transposed, flipped, or from another image?" in w
    # the slide's own labels on its pixels: no warning; transposed: warned
    ref = np.asarray(read_slide(slide.path).read_region(0, 512, 0, 512))
    s = AnalysisSettings(pixel_size_um=0.5)
    assert labels_on_stain_warnings(ref, PANEL, s, truth[:512, :512]) == []
    assert labels_on_stain_warnings(ref, PANEL, s, truth[:512, :512].T) != []
    # dense tissue: correct masks on 64 % of the area, DAPI 10x brighter inside them, are
    # not warned (a share-based first version warned them whatever the masks; a review)
    yy, xx = np.mgrid[:200, :200]
    dense = ((yy % 10) < 8) & ((xx % 10) < 8)
    ab = np.zeros((200, 200, len(PANEL.components)))
    ab[..., PANEL.components.index("DAPI")] = np.where(dense, 10.0, 1.0)
    img = ab @ PANEL.endmembers.T * 300.0
    assert dense.mean() == pytest.approx(0.64)
    assert labels_on_stain_warnings(img, PANEL, s, dense.astype(np.int32)) == []
    assert labels_on_stain_warnings(img, PANEL, s, (~dense).astype(np.int32)) != []


def test_labels_as_tiff_with_channels_and_resume(slide, tmp_path):
    truth = _truth_labels(slide)
    # a two-channel label file (as Mesmer writes whole-cell and nuclear masks), ids shifted
    path = tmp_path / "masks.ome.tif"
    both = np.stack([np.zeros_like(truth), truth + 1000 * (truth > 0)]).astype(np.uint32)
    tifffile.imwrite(path, both, photometric="minisblack",
                     metadata={"axes": "CYX", "Channel": {"Name": ["cell", "nucleus"]}})
    with pytest.raises(InputError, match="2 channels.*'cell', 'nucleus'"):
        analyze_slide(slide.path, PANEL, tmp_path / "x", nuclei_labels=path, **RUN)
    with pytest.raises(InputError, match="no channel 'nuclear'"):
        analyze_slide(slide.path, PANEL, tmp_path / "x", nuclei_labels=path,
                      labels_channel="nuclear", **RUN)
    r = analyze_slide(slide.path, PANEL, tmp_path / "t", tile=512, outlines=False,
                      nuclei_labels=path, labels_channel="Nucleus", **RUN)
    ids = np.unique(truth[truth > 0]) + 1000
    assert sorted(r.cells()["nucleus_label"].tolist()) == ids.tolist()
    again = analyze_slide(slide.path, PANEL, tmp_path / "t", tile=512, outlines=False,
                          nuclei_labels=path, labels_channel=1, **RUN)
    assert again.summary["n_tiles_resumed"] == 4
    # other labels: the finished tiles are not reused
    both[1] = np.where(truth > 0, truth + 2000, 0)
    tifffile.imwrite(path, both, photometric="minisblack",
                     metadata={"axes": "CYX", "Channel": {"Name": ["cell", "nucleus"]}})
    third = analyze_slide(slide.path, PANEL, tmp_path / "t", tile=512, outlines=False,
                          nuclei_labels=path, labels_channel=1, **RUN)
    assert third.summary["n_tiles_resumed"] == 0
    assert third.cells()["nucleus_label"].min() > 2000


@pytest.mark.parametrize("size", ["ceil", "floor"])
def test_downsampled_label_image_reads_back_block_by_block(tmp_path, size):
    """A label pixel of a downsample-3 file covers its 3 x 3 block of slide pixels from the
    top-left corner; slide pixels beyond a floor-sized file's last pixel are background."""
    from qdmed.imaging._given_labels import LabelImage

    rng = np.random.default_rng(1)
    h, w = 100, 77  # not multiples of 3
    shape = (-(-h // 3), -(-w // 3)) if size == "ceil" else (h // 3, w // 3)
    small = rng.integers(0, 50, shape).astype(np.uint16)
    path = tmp_path / "small.tif"
    tifffile.imwrite(path, small)
    full = np.zeros((h, w), np.uint16)
    up = np.repeat(np.repeat(small, 3, 0), 3, 1)[:h, :w]
    full[: up.shape[0], : up.shape[1]] = up
    li = LabelImage(str(path), 0, 3)
    for y0, y1, x0, x1 in ((0, h, 0, w), (1, 50, 2, 31), (47, 100, 60, 77), (99, 100, 76, 77),
                           (5, 6, 5, 6)):
        np.testing.assert_array_equal(li.read(y0, y1, x0, x1), full[y0:y1, x0:x1])


@pytest.mark.parametrize("factor", [2.5, 3.5714285714])
def test_fractional_downsample_reads_each_pixel_centre(factor, tmp_path):
    """Labels made at a fractional downsample (QuPath exports at requestedPixelSize /
    pixelSize), checked against two independent makers of such files: a QuPath-style export
    (a label pixel is the object's when its centre, in slide coordinates, is inside it) and
    scikit-image's nearest-neighbour resize. Read back at full resolution, every slide pixel
    further than one label pixel from an object's edge has the object's label."""
    from scipy import ndimage
    from skimage.transform import resize

    from qdmed.imaging._given_labels import LabelImage

    h, w = 301, 257
    yy, xx = np.mgrid[0:h, 0:w] + 0.5  # slide pixel centres
    disks = [(60.3, 70.1, 31.0), (200.7, 90.2, 45.5), (150.2, 200.9, 38.2)]
    truth = np.zeros((h, w), np.uint16)
    for k, (cy, cx, r) in enumerate(disks, start=1):
        truth[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = k
    shape = (round(h / factor), round(w / factor))  # QuPath: Math.round(width / downsample)
    ly, lx = (np.mgrid[0:shape[0], 0:shape[1]] + 0.5) * factor  # label pixel centres
    qupath = np.zeros(shape, np.uint16)
    for k, (cy, cx, r) in enumerate(disks, start=1):
        qupath[(ly - cy) ** 2 + (lx - cx) ** 2 < r * r] = k
    rescaled = resize(truth, shape, order=0, preserve_range=True,
                      anti_aliasing=False).astype(np.uint16)
    edge = ndimage.morphological_gradient(truth, size=3) > 0
    near = ndimage.binary_dilation(edge, iterations=int(np.ceil(factor)) + 1)
    for name, lab in (("qupath", qupath), ("rescaled", rescaled)):
        tifffile.imwrite(tmp_path / f"{name}.tif", lab)
        li = LabelImage(str(tmp_path / f"{name}.tif"), 0, factor)
        whole = li.read(0, h, 0, w)
        parts = [[li.read(y0, min(h, y0 + 97), x0, min(w, x0 + 61))
                  for x0 in range(0, w, 61)] for y0 in range(0, h, 97)]
        np.testing.assert_array_equal(np.block(parts), whole)  # any window, the same pixels
        assert (whole[~near] == truth[~near]).all()
        for k in range(1, 4):  # areas within the boundary band
            assert abs(np.sum(whole == k) - np.sum(truth == k)) < np.sum(edge & (truth == k)) \
                * factor
    # exactly: QuPath draws label pixel j over slide coordinates [j f, (j + 1) f) (its
    # Graphics2D scale 1/f), and each slide pixel's centre lies in the one it reads
    ids = (np.arange(shape[0])[:, None] * 1000 + np.arange(shape[1])[None, :] + 1)
    tifffile.imwrite(tmp_path / "ids.tif", ids.astype(np.uint32))
    got = LabelImage(str(tmp_path / "ids.tif"), 0, factor).read(0, h, 0, w).astype(np.int64)
    for j, c in (((got - 1) // 1000, yy), ((got - 1) % 1000, xx)):
        inside = got > 0  # 0: beyond the file's last pixel (its size rounded down)
        assert (j[inside] * factor <= c[inside] + 1e-9).all()
        assert (c[inside] < (j[inside] + 1) * factor).all()
        assert inside[:-int(np.ceil(factor)), :-int(np.ceil(factor))].all()


def test_slide_with_labels_at_a_downsample(slide, tmp_path):
    """QuPath-style labels exported at downsample 2: every nucleus that survives the
    downsampling is found once, whatever the tiling, with 4 slide pixels per label pixel;
    a wrong or missing factor is refused, naming the right one."""
    truth = _truth_labels(slide)
    half = truth[::2, ::2]
    path = tmp_path / "half.tif"
    tifffile.imwrite(path, half.astype(np.uint32))
    with pytest.raises(InputError, match=r"points to a downsample of 2: give labels_downsample=2"):
        analyze_slide(slide.path, PANEL, tmp_path / "x", nuclei_labels=path, **RUN)
    with pytest.raises(InputError, match="at a downsample of 3; their size points to .* 2"):
        analyze_slide(slide.path, PANEL, tmp_path / "x", nuclei_labels=path,
                      labels_downsample=3, **RUN)
    with pytest.raises(InputError, match="at a downsample of 2.5; their size points to .* 2"):
        analyze_slide(slide.path, PANEL, tmp_path / "x", nuclei_labels=path,
                      labels_downsample=2.5, **RUN)
    # the same as its nearest-neighbour upsampling given at full resolution, whatever the
    # tiling
    full = tmp_path / "full.tif"
    up = np.repeat(np.repeat(half, 2, 0), 2, 1)
    tifffile.imwrite(full, up.astype(np.uint32))
    one = analyze_slide(slide.path, PANEL, tmp_path / "one", tile=2048, outlines=False,
                        nuclei_labels=full, **RUN)
    tiled = analyze_slide(slide.path, PANEL, tmp_path / "tiled", tile=384, outlines=False,
                          nuclei_labels=path, labels_downsample=2, **RUN)
    assert tiled.summary["labels"]["nuclei"]["downsample"] == 2
    a, b = one.cells(), tiled.cells()
    assert sorted(b["nucleus_label"].tolist()) == np.unique(half[half > 0]).tolist()
    m = a.merge(b, on="nucleus_label", suffixes=("_a", "_b"))
    assert len(m) == len(a) == len(b)
    for col in ("nucleus_area_um2", "cell_area_um2", "HER2_membrane_mean", "ER_nucleus_mean"):
        np.testing.assert_allclose(m[f"{col}_a"], m[f"{col}_b"], rtol=1e-9)
    # 4 slide pixels per label pixel (the membrane may take some where a nucleus reaches
    # its cell's boundary: compartments())
    want = np.bincount(half.ravel())[b["nucleus_label"].to_numpy()] * 4 * 0.25
    assert (b["nucleus_area_um2"].to_numpy() <= want).all()
    assert np.mean(b["nucleus_area_um2"].to_numpy() == want) > 0.95
    # a downsampled export that copied the slide's pixel size: the given factor rules
    ome = tmp_path / "half.ome.tif"
    tifffile.imwrite(ome, half.astype(np.uint32), metadata={"axes": "YX", "PhysicalSizeX": 0.5,
                                                             "PhysicalSizeY": 0.5})
    r = analyze_slide(slide.path, PANEL, tmp_path / "ome", tile=2048, outlines=False,
                      nuclei_labels=ome, labels_downsample=2, **RUN)
    assert r.summary["n_cells"] == one.summary["n_cells"]
    # full-resolution labels given a factor: the message says 1
    with pytest.raises(InputError, match="points to a downsample of 1: give labels_downsample=1"):
        analyze_slide(slide.path, PANEL, tmp_path / "x", nuclei_labels=full,
                      labels_downsample=4, **RUN)
    for bad in (float("inf"), np.True_, 0, -2, "2", 0.5, float("nan")):
        with pytest.raises(InputError, match="labels_downsample must be a number"):
            analyze_slide(slide.path, PANEL, tmp_path / "x", nuclei_labels=path,
                          labels_downsample=bad, **RUN)


def test_labels_that_do_not_fit_the_slide_are_refused(slide, tmp_path):
    truth = _truth_labels(slide)
    small = tmp_path / "small.tif"
    tifffile.imwrite(small, truth[:512])
    with pytest.raises(InputError, match=r"512 x 1024 px .* slide is 1024 x 1024"):
        analyze_slide(slide.path, PANEL, tmp_path / "x", nuclei_labels=small, **RUN)
    # one "nucleus" as large as a tissue region: larger than a tile's margin, refused
    blob = tmp_path / "blob.tif"
    big = truth.copy()
    big[300:700, 300:700] = 99999
    tifffile.imwrite(blob, big)
    with pytest.raises(InputError, match="nucleus 99999 of the labels blob.tif .* margin"):
        analyze_slide(slide.path, PANEL, tmp_path / "x", tile=384, nuclei_labels=blob, **RUN)
    with pytest.raises(InputError, match="drop segmentation='cellpose'"):
        analyze_slide(slide.path, PANEL, tmp_path / "x", nuclei_labels=small,
                      settings=AnalysisSettings(segmentation="cellpose"), **RUN)
    with pytest.raises(InputError, match=r"labels_channel \(--labels-channel\) needs nuclei_labels"):
        analyze_slide(slide.path, PANEL, tmp_path / "x", labels_channel=1, **RUN)
    with pytest.raises(InputError, match="unknown segmentation 'otsu'"):
        analyze_slide(slide.path, PANEL, tmp_path / "x",
                      settings=AnalysisSettings(segmentation="otsu"), **RUN)


def test_cli_nuclei_labels(slide, tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "qdmed", "image", "analyze",
                               str(slide.path), "--no-progress", "--no-report", "--no-unmixed",
                               *args], capture_output=True, text=True, timeout=600)

    r = run("--out", str(tmp_path / "o"), "--nuclei-labels",
            str(slide.path / "labels" / "nuclei"), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["settings"]["segmentation"] == "labels"
    r = run("--out", str(tmp_path / "o3"), "--nuclei-labels",
            str(slide.path / "labels" / "nuclei"), "--cell-labels",
            str(slide.path / "labels" / "cells"))
    assert r.returncode == 0, r.stderr
    assert "without a nucleus left out" in r.stdout
    r = run("--out", str(tmp_path / "o2"), "--nuclei-labels", str(tmp_path / "missing.tif"))
    assert r.returncode == 2 and "missing.tif" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = run("--out", str(tmp_path / "o2"), "--nuclei-labels",
            str(slide.path / "labels" / "nuclei"), "--labels-downsample", "2.5")
    assert r.returncode == 2, r.stderr
    assert "at a downsample of 2.5; their size points to a downsample of 1" in r.stderr


def test_labels_file_matches_each_slide_to_its_own_masks(tmp_path):
    from qdmed.imaging._cohort import labels_file

    for name in ("A.tif", "A_2_cp_masks.tif", "B_cp_masks.tif", "B_nuclei.tif", "C.ome.zarr",
                 "notes.txt"):
        (tmp_path / name).mkdir() if name.endswith(".zarr") else (tmp_path / name).touch()
    stems = ["A", "A_2", "B", "C", "D"]
    assert labels_file(tmp_path, "A.ome.tif", stems).name == "A.tif"
    # A_2's masks are not A's, though their name starts with "A_"
    assert labels_file(tmp_path, "A_2.ome.tif", stems).name == "A_2_cp_masks.tif"
    assert labels_file(tmp_path, "C.qptiff", stems).name == "C.ome.zarr"
    with pytest.raises(InputError, match="several .* B_cp_masks.tif, B_nuclei.tif"):
        labels_file(tmp_path, "B.tif", stems)
    with pytest.raises(InputError, match="no nuclei label image D.tif"):
        labels_file(tmp_path, "D.tif", stems)
    with pytest.raises(InputError, match="no cell label image D.tif"):
        labels_file(tmp_path, "D.tif", stems, "cell")


def test_cohort_with_a_folder_of_masks(tmp_path):
    folder, masks = tmp_path / "slides", tmp_path / "masks"
    folder.mkdir()
    masks.mkdir()
    truth = {}
    for name, seed in (("a", 1), ("a_2", 2), ("b", 3)):
        s = simulate_slide(folder / f"{name}.ome.zarr", (384, 384), preset="BT474", seed=seed,
                           channel_names=list(PANEL.channel_names), tile=384,
                           write_labels=True, **KW)
        truth[name] = _truth_labels(s)
    for name in ("a", "a_2"):  # b has no masks: failed, not segmented another way
        tifffile.imwrite(masks / f"{name}_cp_masks.tif", truth[name].astype(np.uint16))
    res = analyze_cohort(folder, PANEL, tmp_path / "out", scheduler="synchronous",
                         progress=False, outlines=False, write_unmixed=False,
                         nuclei_labels_dir=masks)
    rows = {r["slide"]: r for r in res["slides"]}
    assert rows["a.ome.zarr"]["status"] == rows["a_2.ome.zarr"]["status"] == "ok"
    assert rows["b.ome.zarr"]["status"] == "failed"
    assert "no nuclei label image b.tif" in rows["b.ome.zarr"]["message"]
    import pandas as pd

    cells = pd.read_parquet(tmp_path / "out" / "cells.parquet")
    for name in ("a", "a_2"):
        got = cells.loc[cells["slide"] == f"{name}.ome.zarr", "nucleus_label"]
        t = truth[name]
        assert sorted(got.tolist()) == np.unique(t[t > 0]).tolist()
    assert res["parameters"]["nuclei_labels_dir"] == str(masks)


def test_cli_cohort_with_mesmer_masks_of_cells_and_nuclei(tmp_path):
    """A cohort whose masks hold whole cells and nuclei as two channels of one file per
    slide (Mesmer's output): the same folder for both, told apart by channel."""
    folder, masks = tmp_path / "slides", tmp_path / "masks"
    folder.mkdir()
    masks.mkdir()
    import zarr

    want = {}
    for name, seed in (("p1", 4), ("p2", 6)):
        s = simulate_slide(folder / f"{name}.ome.zarr", (384, 384), preset="BT474", seed=seed,
                           channel_names=list(PANEL.channel_names), tile=384,
                           write_labels=True, **KW)
        g = zarr.open_group(str(s.path), mode="r")
        cl, nl = np.asarray(g["labels/cells/0"]), np.asarray(g["labels/nuclei/0"])
        tifffile.imwrite(masks / f"{name}_mesmer.ome.tif", np.stack([cl, nl]).astype(np.int32),
                         photometric="minisblack",
                         metadata={"axes": "CYX", "Channel": {"Name": ["whole-cell", "nuclear"]}})
        want[f"{name}.ome.zarr"] = np.unique(cl[(nl > 0) & (cl > 0)]).tolist()
    with pytest.raises(InputError, match="needs the nuclei labels folder"):
        analyze_cohort(folder, PANEL, tmp_path / "x", cell_labels_dir=masks, **RUN)
    with pytest.raises(InputError, match="labels_downsample needs a nuclei labels folder"):
        analyze_cohort(folder, PANEL, tmp_path / "x", labels_downsample=2, **RUN)
    with pytest.raises(InputError, match="cell labels folder .*nowhere.* does not exist"):
        analyze_cohort(folder, PANEL, tmp_path / "x", nuclei_labels_dir=masks,
                       cell_labels_dir=tmp_path / "nowhere", **RUN)
    r = subprocess.run([sys.executable, "-m", "qdmed", "image", "cohort", str(folder),
                        "--out", str(tmp_path / "out"), "--scheduler", "synchronous",
                        "--no-progress", "--no-unmixed", "--no-outlines", "--json",
                        "--nuclei-labels-dir", str(masks), "--labels-channel", "nuclear",
                        "--cell-labels-dir", str(masks), "--cell-labels-channel", "0"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["parameters"]["cell_labels_dir"] == str(masks)
    assert res["parameters"]["cell_labels_channel"] == 0
    import pandas as pd

    cells = pd.read_parquet(tmp_path / "out" / "cells.parquet")
    for slide_name, ids in want.items():
        got = cells.loc[cells["slide"] == slide_name, "cell_label"]
        assert sorted(got.tolist()) == ids


def test_cells_from_labels_pairs_each_cell_with_the_nuclei_inside_it():
    cells = np.array([[5, 5, 5, 0], [5, 5, 5, 0], [9, 9, 0, 0], [9, 9, 0, 7]])
    nuc = np.array([[0, 3, 3, 0], [0, 3, 4, 0], [0, 0, 0, 0], [0, 0, 0, 8]])
    nuclei, out, cell_ids, nucleus_ids, lost = cells_from_labels(cells, nuc)
    # cell 5 holds nuclei 3 (3 px) and 4 (1 px): one nucleus compartment, labelled 3;
    # cell 9 holds none and is left out; nucleus ids need not match cell ids
    np.testing.assert_array_equal(out, [[1, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 2]])
    np.testing.assert_array_equal(nuclei, [[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0],
                                           [0, 0, 0, 2]])
    assert cell_ids.tolist() == [0, 5, 7, 9] and nucleus_ids.tolist() == [0, 3, 8, 0]
    assert lost == 1


def test_field_with_true_cells_keeps_their_outlines():
    f = simulate_field((384, 384), preset="BT474", seed=3, **KW)
    with pytest.raises(InputError, match="need nuclei labels too"):
        analyze_field(f.image, PANEL, cells=f.cells)
    fa = analyze_field(f.image, PANEL, nuclei=f.nuclei, cells=f.cells + 100 * (f.cells > 0))
    t = fa.table.set_index("cell_label")
    truth = f.truth.set_index("cell_id")
    ids = t.index.to_numpy() - 100
    # with a nucleus in the field: every true cell, with its exact area
    with_nucleus = np.unique(f.cells[(f.nuclei > 0) & (f.cells > 0)])
    assert sorted(ids.tolist()) == with_nucleus.tolist()
    np.testing.assert_allclose(t["cell_area_um2"].to_numpy(),
                               np.bincount(f.cells.ravel())[ids] * f.pixel_size_um ** 2)
    assert (t["nucleus_label"].to_numpy() == ids).all()  # the synthetic ids are shared
    assert fa.table.attrs["cells_without_nucleus"] == int(np.setdiff1d(
        np.unique(f.cells[f.cells > 0]), with_nucleus).size)
    # on the true outlines, the membrane HER2 follows the rendered truth closely
    got = t["HER2_membrane_mean"].to_numpy()
    want = truth.loc[ids, "HER2_membrane"].to_numpy()
    ok = np.isfinite(got) & np.isfinite(want)
    assert ok.mean() > 0.95 and np.corrcoef(got[ok], want[ok])[0, 1] > 0.9


def test_slide_with_cell_and_nuclei_labels_tiles_alike(slide, tmp_path):
    cells_dir = slide.path / "labels" / "cells"
    nuc_dir = slide.path / "labels" / "nuclei"
    one = analyze_slide(slide.path, PANEL, tmp_path / "one", tile=2048, outlines=False,
                        nuclei_labels=nuc_dir, cell_labels=cells_dir, **RUN)
    tiled = analyze_slide(slide.path, PANEL, tmp_path / "tiled", tile=384, outlines=False,
                          nuclei_labels=nuc_dir, cell_labels=cells_dir, **RUN)
    a, b = one.cells(), tiled.cells()
    import zarr

    g = zarr.open_group(str(slide.path), mode="r")
    cl, nl = np.asarray(g["labels/cells/0"]), np.asarray(g["labels/nuclei/0"])
    with_nucleus = np.unique(cl[(nl > 0) & (cl > 0)])
    assert sorted(b["cell_label"].tolist()) == with_nucleus.tolist()
    np.testing.assert_allclose(b["cell_area_um2"],
                               np.bincount(cl.ravel())[b["cell_label"].to_numpy()] * 0.25)
    m = a.merge(b, on="cell_label", suffixes=("_a", "_b"))
    assert len(m) == len(a) == len(b)
    for col in ("membrane_area_um2", "HER2_membrane_mean", "HER2_membrane_completeness"):
        np.testing.assert_allclose(m[f"{col}_a"], m[f"{col}_b"], rtol=1e-9)
    lost = int(np.setdiff1d(np.unique(cl[cl > 0]), with_nucleus).size)
    assert one.summary["labels"]["cells_without_nucleus"] == lost
    assert tiled.summary["labels"]["cells_without_nucleus"] == lost
    assert tiled.summary["labels"]["cells"]["file"].endswith("cells")


def test_cell_and_nuclei_labels_in_one_file(slide, tmp_path):
    """Mesmer-style: whole-cell and nuclear masks as two channels of one TIFF; cells whose
    nucleus was removed from the file are left out and counted."""
    import zarr

    g = zarr.open_group(str(slide.path), mode="r")
    cl, nl = np.asarray(g["labels/cells/0"]), np.asarray(g["labels/nuclei/0"])
    drop = np.unique(nl[nl > 0])[:5]
    nl = np.where(np.isin(nl, drop), 0, nl)
    path = tmp_path / "mesmer.ome.tif"
    tifffile.imwrite(path, np.stack([cl, nl]).astype(np.int32), photometric="minisblack",
                     metadata={"axes": "CYX", "Channel": {"Name": ["whole-cell", "nuclear"]}})
    with pytest.raises(InputError, match="say which to read .*--cell-labels-channel"):
        analyze_slide(slide.path, PANEL, tmp_path / "x", nuclei_labels=path, labels_channel=1,
                      cell_labels=path, **RUN)
    with pytest.raises(InputError, match="same image"):
        analyze_slide(slide.path, PANEL, tmp_path / "x", nuclei_labels=path, labels_channel=1,
                      cell_labels=path, cell_labels_channel="Nuclear", **RUN)
    r = analyze_slide(slide.path, PANEL, tmp_path / "m", tile=512, outlines=False,
                      nuclei_labels=path, labels_channel="nuclear", cell_labels=path,
                      cell_labels_channel="whole-cell", **RUN)
    with_nucleus = np.unique(cl[(nl > 0) & (cl > 0)])
    assert sorted(r.cells()["cell_label"].tolist()) == with_nucleus.tolist()
    assert not np.isin(drop, r.cells()["cell_label"]).any()
    assert r.summary["labels"]["cells_without_nucleus"] == int(
        np.setdiff1d(np.unique(cl[cl > 0]), with_nucleus).size)
    with pytest.raises(InputError, match=r"cell_labels \(--cell-labels\) needs nuclei_labels"):
        analyze_slide(slide.path, PANEL, tmp_path / "x", cell_labels=path, **RUN)


def test_review_cases_large_ids_long_nuclei_and_masks_beside_slides(tmp_path):
    from qdmed.imaging._cohort import labels_file

    a = np.zeros((2, 4), np.uint64)
    a[0, 0], a[0, 1], a[1, 0] = 2**53, 2**53 + 1, 2**53 + 2  # not exact in float64
    nuclei, ids = nuclei_from_labels(a)
    assert nuclei[0, :2].tolist() == [1, 2] and nuclei[1, 0] == 3
    assert ids.tolist() == [0, 2**53, 2**53 + 1, 2**53 + 2]
    with pytest.raises(InputError, match="below 2\\*\\*63"):
        nuclei_from_labels(np.array([[2**64 - 1]], np.uint64))
    # a long thin given nucleus stays whole in its cell (the expansion trims by radius)
    f = simulate_field((336, 336), preset="BT474", seed=3, **KW)
    lab = np.zeros((336, 336), np.uint32)
    lab[150:156, 100:180] = 7
    t = analyze_field(f.image, PANEL, nuclei=lab).table
    assert len(t) == 1 and t["nucleus_area_um2"].iloc[0] + t["membrane_area_um2"].iloc[0] \
        >= 480 * f.pixel_size_um ** 2 * 0.999
    # masks kept beside the slides: the slide is never its own label image
    for name in ("A.ome.tif", "A_cp_masks.tif"):
        (tmp_path / name).touch()
    assert labels_file(tmp_path, tmp_path / "A.ome.tif", ["A"]).name == "A_cp_masks.tif"
    # a mask of the slide's own name in another folder is its mask (a review: passed over)
    (tmp_path / "masks").mkdir()
    (tmp_path / "masks" / "A.ome.tif").touch()
    assert labels_file(tmp_path / "masks", tmp_path / "A.ome.tif", ["A"]) == \
        tmp_path / "masks" / "A.ome.tif"
