"""Focus QC: out-of-focus tiles found by the blur effect of the nuclear channel (Crete et al.
2007, doi:10.1117/12.702790), on synthetic slides with a known blurred patch: the expected
counts of one block of tiles are blurred (Gaussian, sigma 1 px = 0.5 um) before the
photon noise is drawn, as a defocused patch would be recorded."""

import json

import numpy as np
import pytest
from scipy import ndimage as ndi

from qdmed.errors import InputError
from qdmed.imaging import analyze_slide, breast_panel_5plex, simulate_field, write_ome_tiff
from qdmed.imaging._focus import _windows, focus_summary, tile_blur
from qdmed.imaging._qc import qc_folder, qc_slide

PANEL = breast_panel_5plex()
KW = dict(preset="her2-heterogeneous", endmembers=PANEL.endmembers,
          marker_names=list(PANEL.markers), channel_names=list(PANEL.channel_names),
          photons_per_unit=300.0, seed=5, noise=False, dtype="float32")


def _slide(tmp_path, name, blur_box=None, sigma=1.0, **kw):
    f = simulate_field((768, 768), **{**KW, **kw})
    lam = f.image.astype(np.float64)
    if blur_box is not None:
        y0, y1, x0, x1 = blur_box
        for c in range(lam.shape[2]):
            lam[y0:y1, x0:x1, c] = ndi.gaussian_filter(lam[..., c], sigma)[y0:y1, x0:x1]
    img = np.random.default_rng(1).poisson(lam).astype(np.uint16)
    return write_ome_tiff(tmp_path / f"{name}.ome.tif", img, pixel_size_um=0.5,
                          channel_names=list(PANEL.channel_names))


def _run(path, out):
    return analyze_slide(path, PANEL, out, tile=256, scheduler="synchronous", progress=False,
                         outlines=False, write_unmixed=False)


def test_blurred_patch_is_found_and_nothing_else(tmp_path):
    # tiles are 256 px, row-major over 3 x 3: the block [512:768, 0:512] is tiles 6 and 7
    res = _run(_slide(tmp_path, "blurred", blur_box=(512, 768, 0, 512)), tmp_path / "b")
    foc = res.summary["focus"]
    assert foc["out_of_focus_tiles"] == [6, 7]
    blur = {t["tile"]: t["blur"] for t in foc["tiles"]}
    # measured: 0.31-0.32 sharp, 0.42-0.44 blurred (sigma 1 px)
    assert max(blur[i] for i in range(6)) < 0.34 < 0.40 < min(blur[6], blur[7])
    cells = res.cells()
    np.testing.assert_array_equal(cells["out_of_focus"], cells["tile"].isin([6, 7]))
    assert foc["percent_scored_cells_out_of_focus"] == pytest.approx(
        100 * cells["out_of_focus"].mean())
    assert len(foc["warnings"]) == 1 and "2 of 9 measured tiles" in foc["warnings"][0]
    gj = json.loads((tmp_path / "b" / "qc_regions.geojson").read_text())
    boxes = sorted(f["geometry"]["coordinates"][0][0] for f in gj["features"])
    assert boxes == [[0, 512], [256, 512]]
    assert gj["features"][0]["properties"]["classification"]["name"] == "Out of focus"
    # quality control alone (no segmentation) judges the same tiles with the same values
    qc = qc_slide(tmp_path / "blurred.ome.tif", PANEL, tmp_path / "qc", tile=256)
    assert qc["focus"]["out_of_focus_tiles"] == [6, 7]
    for t_qc, t_an in zip(qc["focus"]["tiles"], foc["tiles"], strict=True):
        assert t_qc["blur"] == pytest.approx(t_an["blur"], abs=1e-12)
    assert (tmp_path / "qc" / "qc_regions.geojson").exists()
    # left out of the scores on request (the finished tiles are reused)
    kept = analyze_slide(tmp_path / "blurred.ome.tif", PANEL, tmp_path / "b", tile=256,
                         scheduler="synchronous", progress=False, outlines=False,
                         write_unmixed=False, exclude_flagged=["out_of_focus"])
    sel = kept.summary["scored_cells"]
    assert sel["excluded"] == {"out_of_focus": int(cells["out_of_focus"].sum()),
                               "total": int(cells["out_of_focus"].sum())}
    assert sel["n_scored"] == len(cells) - int(cells["out_of_focus"].sum())
    assert "less out of focus cells" in sel["cells"]
    assert "their cells are left out of the scores" in kept.summary["focus"]["warnings"][0]
    # per region: the annotation over the blurred block says so in regions.csv
    sq = [[[0, 512], [512, 512], [512, 768], [0, 768], [0, 512]]]
    top = [[[0, 0], [768, 0], [768, 256], [0, 256], [0, 0]]]
    regs = tmp_path / "regions.geojson"
    regs.write_text(json.dumps([
        {"type": "Feature", "properties": {"name": n},
         "geometry": {"type": "Polygon", "coordinates": g}}
        for n, g in (("blurred", sq), ("sharp", top))]))
    per = analyze_slide(tmp_path / "blurred.ome.tif", PANEL, tmp_path / "b", tile=256,
                        scheduler="synchronous", progress=False, outlines=False,
                        write_unmixed=False, regions=regs, per_region=True)
    rows = {r["region"]: r for r in per.summary["regions_scored"]["regions"]}
    assert rows["blurred"]["percent_cells_out_of_focus"] > 95
    assert "% of its cells in out-of-focus tiles" in rows["blurred"]["message"]
    assert rows["sharp"]["percent_cells_out_of_focus"] == 0
    assert rows["sharp"]["area_mm2"] == pytest.approx(768 * 256 * 0.25e-6)
    with pytest.raises(InputError, match=r"exclude_flagged \(--exclude-flagged\) takes saturated, out_of_focus"):
        analyze_slide(tmp_path / "blurred.ome.tif", PANEL, tmp_path / "b",
                      exclude_flagged=("blurred",))
    # the same scene in focus: no tile flagged
    sharp = _run(_slide(tmp_path, "sharp"), tmp_path / "s").summary["focus"]
    assert sharp["out_of_focus_tiles"] == [] and sharp["warnings"] == []
    assert sharp["n_tiles_measured"] == 9 and sharp["median"] == pytest.approx(0.315, abs=0.02)


def test_glass_is_not_judged(tmp_path):
    """Half the field without tissue: its tiles are not measured (no nuclei) or read sharp,
    never out of focus."""
    foc = _run(_slide(tmp_path, "half", tissue_fraction=0.5), tmp_path / "h").summary["focus"]
    assert foc["out_of_focus_tiles"] == []
    assert foc["n_tiles_measured"] >= 3


def test_tile_blur_needs_nuclei_and_summary_needs_tiles():
    rng = np.random.default_rng(0)
    img = rng.random((600, 600))
    assert tile_blur(img, np.zeros((600, 600), int)) is None
    lab = np.zeros((600, 600), int)
    lab[::2] = 1
    assert 0 <= tile_blur(img, lab) < 0.5  # white noise is sharp
    assert len(_windows(2048, 2048, 512)) == 4 and _windows(700, 2048, 512) == [(0, 700, 0, 2048)]
    d = focus_summary([0.3, None], [(0, 1, 0, 1)] * 2, None, None, 0.5)
    # one measured tile: its value compares the slide with others, but no tile is judged
    assert d["median"] == 0.3 and d["threshold"] is None and d["out_of_focus_tiles"] == []
    assert d["n_tiles_measured"] == 1
    # flat windows (nuclei at the detector's ceiling) have no edges to judge: skipped, not
    # read as "all blur" (skimage's blur_effect gives a constant image 1)
    flat = np.full((1100, 1100), 5.0)
    flat[:550, :550] = rng.random((550, 550))
    assert tile_blur(flat, np.ones((1100, 1100), int)) < 0.5  # its noisy quarter: sharp
    assert tile_blur(np.full((600, 600), 5.0), np.ones((600, 600), int)) is None


def test_a_slide_blurred_all_over_stands_out_in_its_cohort():
    from qdmed.imaging._cohort import _flag_blurred_slides

    rows = [{"slide": f"s{i}", "message": "", "focus_median_blur": v}
            for i, v in enumerate((0.31, 0.32, 0.315, 0.43, 0.312))]
    rows.append({"slide": "failed", "message": "cannot read"})
    _flag_blurred_slides(rows)
    assert [r.get("slide_out_of_focus") for r in rows] == [False, False, False, True, False,
                                                          None]
    assert "whole slide may be out of focus" in rows[3]["message"]
    assert rows[5]["message"] == "cannot read"


def test_qc_of_a_folder(tmp_path):
    folder = tmp_path / "slides"
    folder.mkdir()
    _slide(folder, "sharp")
    _slide(folder, "raw", offset_adu=100.0)
    (folder / "broken.ome.tif").write_bytes(b"II*\x00garbage")
    res = qc_folder(folder, PANEL, tmp_path / "qc", tile=256, progress=False)
    rows = {r["slide"]: r for r in res["slides"]}
    assert rows["broken.ome.tif"]["status"] == "failed"
    assert rows["raw.ome.tif"]["offset_suspected"] is True
    assert any(w.startswith("offset: ") for w in rows["raw.ome.tif"]["warnings"])
    assert rows["sharp.ome.tif"]["offset_suspected"] is False
    assert rows["sharp.ome.tif"]["warnings"] == []
    assert (tmp_path / "qc" / "qc.csv").read_text().startswith("slide,status,message")
    assert (tmp_path / "qc" / "slides" / "raw" / "qc.json").exists()
    # the figure: a bar per slide in each panel, the unreadable slide marked as failed
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from qdmed.imaging._qc import qc_folder_figure

    fig = qc_folder_figure(res)
    assert [len(ax.patches) for ax in fig.axes] == [3, 3, 3]
    assert [t.get_text() for t in fig.axes[0].texts] == ["failed"]
    plt.close(fig)
    # the offset given: nothing left to warn
    res = qc_folder(folder, PANEL, tmp_path / "qc2", tile=256, progress=False, offset_adu=100)
    assert {r["slide"]: r.get("offset_suspected") for r in res["slides"]}["raw.ome.tif"] is False


def test_qc_of_a_section_without_nuclei_says_so(tmp_path):
    # a review's empty section read "ok", with no message
    path = write_ome_tiff(tmp_path / "empty.ome.tif", np.zeros((256, 256, 8), np.uint16),
                          channel_names=list(PANEL.channel_names), pixel_size_um=0.5)
    qc = qc_slide(path, PANEL, tile=256)
    assert qc["warnings"][0].startswith("no nuclei: the nuclear channel (DAPI) shows none")
    assert not any(w.startswith("no nuclei") for w in qc_slide(
        _slide(tmp_path, "sharp"), PANEL, tile=256)["warnings"])


def test_qc_folder_refuses_bad_options_and_clashing_names(tmp_path):
    folder = tmp_path / "slides"
    folder.mkdir()
    p = _slide(folder, "a")
    with pytest.raises(InputError, match="tile must be"):
        qc_folder(folder, PANEL, tmp_path / "qc", tile=10, progress=False)
    (folder / "a.tif").write_bytes(p.read_bytes())
    with pytest.raises(InputError, match="share the name 'a'"):
        qc_folder(folder, PANEL, tmp_path / "qc", tile=256, progress=False)


def test_qc_output_folders_are_checked_as_analyze_checks_them(tmp_path):
    """A review's qc wrote qc.json into the slide's own Zarr group, into a folder of slides,
    over a user's own qc.json, and its folder run among the slides: each is refused, and
    qc run again into its own output is not."""
    from qdmed.imaging import write_ome_zarr

    folder = tmp_path / "slides"
    folder.mkdir()
    tif = _slide(folder, "a")
    zarr_slide = write_ome_zarr(tmp_path / "z.ome.zarr", np.zeros((64, 64, 8), np.uint16),
                                channel_names=list(PANEL.channel_names), pixel_size_um=0.5)
    with pytest.raises(InputError, match="is an input of this command"):
        qc_slide(zarr_slide, PANEL, zarr_slide, tile=256)
    with pytest.raises(InputError, match="holds slides"):
        qc_slide(tif, PANEL, folder, tile=256)
    own = tmp_path / "mine"
    own.mkdir()
    (own / "qc.json").write_text("{}")
    with pytest.raises(InputError, match="not an earlier run's output folder"):
        qc_slide(tif, PANEL, own, tile=256)
    assert (own / "qc.json").read_text() == "{}"
    with pytest.raises(InputError, match="holds slides"):
        qc_folder(folder, PANEL, folder, tile=256, progress=False)
    for _ in range(2):  # its own output again
        qc_slide(tif, PANEL, tmp_path / "q1", tile=256)
        qc_folder(folder, PANEL, tmp_path / "q2", tile=256, progress=False)
