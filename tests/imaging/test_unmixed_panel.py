"""Already-unmixed images (inForm component_data.tif, unmixed QPTIFF, any image with one
channel per marker): the panel that maps components to channels, its exact (trivial) NNLS,
and the whole analysis on a synthetic component image with ground truth."""

import numpy as np
import pytest
from scipy.optimize import nnls

from qdmed.errors import FileFormatError, InputError
from qdmed.imaging import (
    Panel,
    analyze_field,
    analyze_slide,
    bind_unmixed,
    breast_panel_5plex,
    cohen_kappa,
    f1_at_iou,
    score_her2,
    simulate_field,
    spectral_library,
    unmix_image,
    unmix_nnls,
    unmixed_panel,
)

SPECTRAL = breast_panel_5plex()
CHANNELS = ["DAPI", "Qdot 525", "Qdot 565", "Qdot 605", "Qdot 655", "Qdot 705",
            "Autofluorescence", "Opal 780"]  # the last one not analysed
MAPPING = {**dict(zip(SPECTRAL.markers, SPECTRAL.labels, strict=True)),
           "autofluorescence": "Autofluorescence"}
PANEL = unmixed_panel(MAPPING, image_channels=CHANNELS)
PPU = 300.0
# a component image: each channel holds one component's abundance (x PPU), with the shot
# and read noise of the simulator, as float32 as inForm exports it
KW = dict(endmembers=PANEL.endmembers, marker_names=list(PANEL.markers), photons_per_unit=PPU,
          dtype="float32")


def test_panel_maps_components_to_channels():
    assert PANEL.unmixed and not SPECTRAL.unmixed
    assert PANEL.components == SPECTRAL.components  # autofluorescence last, as spectral
    assert PANEL.source_channels() == (0, 1, 2, 3, 4, 5, 6)
    e = PANEL.endmembers
    assert e.shape == (8, 7) and np.array_equal(e[:7], np.eye(7)) and not e[7].any()
    # names match ignoring case and runs of spaces; indices are 0-based
    p = bind_unmixed(unmixed_panel({"DAPI": 0, "HER2": "qdot  605"}), CHANNELS)
    assert p.source_channels() == (0, 3)
    assert p.components == ("DAPI", "HER2")
    # the file form round-trips, bound or not
    for q in (PANEL, unmixed_panel(MAPPING)):
        r = Panel.from_dict(q.to_yaml_dict())
        assert r.components == q.components and r.sources == q.sources
        assert r.channels == q.channels
    d = PANEL.to_dict()
    assert d["unmixed"] and d["labels"]["HER2"] == "Qdot 525"
    assert d["image_channels"] == CHANNELS


def test_unmixed_panel_bad_input():
    with pytest.raises(InputError, match=r"no channel 'Qdot 999'; its channels are 'DAPI'"):
        bind_unmixed(unmixed_panel({"DAPI": "DAPI", "HER2": "Qdot 999"}), CHANNELS,
                     where="scan.qptiff")
    with pytest.raises(InputError, match="scan.qptiff: component 'HER2': channel index 9 is "
                                         "out of range; the image has 8 channels"):
        bind_unmixed(unmixed_panel({"HER2": 9}), CHANNELS, where="scan.qptiff")
    with pytest.raises(InputError, match="given to more than one component"):
        unmixed_panel({"HER2": "Qdot 605", "ER": "qdot 605"})
    with pytest.raises(InputError, match="a channel name or a 0-based index"):
        unmixed_panel({"HER2": -1})
    with pytest.raises(InputError, match="needs components"):
        unmixed_panel({})
    with pytest.raises(FileFormatError, match="spectral .* or already unmixed .*not both"):
        Panel.from_dict({"components": {"DAPI": "DAPI"}, "channels_nm": [[400, 500]]})
    with pytest.raises(FileFormatError, match="takes 'components' and optionally"):
        Panel.from_dict({"components": {"DAPI": "DAPI"}, "excitation_nm": 405})
    with pytest.raises(FileFormatError, match=r"<panel>: .*a channel name or a 0-based"):
        Panel.from_dict({"components": {"DAPI": [1, 2]}})
    unbound = unmixed_panel(MAPPING)
    with pytest.raises(InputError, match="must first be bound"):
        unmix_image(np.zeros((4, 4, 8), np.float32), unbound)
    with pytest.raises(InputError, match="already unmixed"):
        unmix_image(np.zeros((4, 4, 8), np.float32), PANEL, offset_adu=100)
    with pytest.raises(InputError, match="no spectra to measure"):
        PANEL.with_measured({"HER2": np.ones(8)})
    with pytest.raises(InputError, match="no spectra to measure from controls"):
        spectral_library(PANEL, unstained=np.ones((8, 8, 8)))


def test_a_bound_panel_reads_another_slide_by_name():
    """Channels given by index on one image (qdmed image panel --slide) are read by their
    names there on a slide whose channels come in another order."""
    p = unmixed_panel({"DAPI": 0, "HER2": 1, "PR": "Cy5"}, image_channels=["DAPI", "Cy3", "Cy5"])
    q = bind_unmixed(p, ["Cy5", "DAPI", "Cy3"])
    assert q.source_channels() == (1, 2, 0) and q.sources == ("DAPI", "Cy3", "Cy5")
    with pytest.raises(InputError, match="other.tif: component 'HER2': the image has no "
                                         "channel 'Cy3'"):
        bind_unmixed(p, ["DAPI", "FITC", "Cy5"], where="other.tif")
    with pytest.raises(InputError, match="2 channels named 'Cy5' \\(at 1, 2\\): give the "
                                         "0-based index"):
        bind_unmixed(unmixed_panel({"CD8": "Cy5"}), ["DAPI", "Cy5", "Cy5"])
    with pytest.raises(InputError, match="names the autofluorescence twice"):
        unmixed_panel({"autofluorescence": "AF1", "Autofluorescence": "AF2"})
    # more components than the spectral solver's 12: a selection needs no tables
    big = unmixed_panel({f"M{i}": i for i in range(14)}, image_channels=[str(i) for i in
                                                                         range(14)])
    img = np.random.default_rng(0).normal(size=(5, 6, 14)).astype(np.float32)
    np.testing.assert_array_equal(unmix_image(img, big), np.maximum(img, 0))


def test_selection_endmembers_are_solved_exactly():
    """Every component one channel of its own: the NNLS solution (Lawson-Hanson, as in
    scipy.optimize.nnls) is that channel divided by its entry, clipped at zero; weighted
    or not, since the problem separates per component."""
    rng = np.random.default_rng(3)
    a = np.zeros((6, 4))
    a[[2, 0, 5, 3], [0, 1, 2, 3]] = [1.0, 2.0, 0.5, 1.0]
    y = rng.normal(0, 3, (500, 6))
    ref = np.array([nnls(a, v)[0] for v in y])
    np.testing.assert_allclose(unmix_nnls(y, a), ref, atol=1e-12)
    r = unmix_nnls(y, a, weights=np.abs(y) + 0.1, return_residual=True)
    np.testing.assert_allclose(r.abundances, ref, atol=1e-12)
    # the residual is what the general path defines: ||y - A x|| / ||y||
    res = np.linalg.norm(y - ref @ a.T, axis=1) / np.linalg.norm(y, axis=1)
    np.testing.assert_allclose(unmix_nnls(y, a, return_residual=True).relative_residual, res,
                               rtol=1e-12)


@pytest.fixture(scope="module")
def calibration(control_calibration):
    return control_calibration(PANEL, **KW)


def test_component_qptiff_analysed_end_to_end(tmp_path, write_qptiff, calibration):
    """A synthetic component image with ground truth, written as an inForm-style QPTIFF
    and analysed tile by tile with an unbound panel that the slide's names bind."""
    f = simulate_field((1024, 1024), preset="her2-heterogeneous", seed=3, **KW)
    p = write_qptiff(tmp_path / "field_component_data.tif", f.image, CHANNELS, tile=256,
                     levels=2)
    res = analyze_slide(p, unmixed_panel(MAPPING), tmp_path / "out", tile=512,
                        scheduler="synchronous", progress=False, her2_calibration=calibration)
    cells = res.cells()
    # measured: 787 cells found of 783 true; 3+ (20 % of cells 3+ in the preset)
    assert abs(len(cells) - len(f.truth)) <= 0.03 * len(f.truth)
    assert res.summary["her2"]["category"] == "3+"
    assert res.summary["autofluorescence"]["source"] == "image component (already unmixed)"
    assert res.summary["panel"]["image_channels"] == CHANNELS
    # the same field in memory: segmentation, per-cell levels and HER2 per cell vs the truth
    fa = analyze_field(f.image, PANEL)
    assert f1_at_iou(fa.nuclei, f.nuclei).f1 >= 0.97  # measured 0.997
    h, w = f.cells.shape
    tid = f.cells[np.clip(fa.table["centroid_y"].round().astype(int), 0, h - 1),
                  np.clip(fa.table["centroid_x"].round().astype(int), 0, w - 1)]
    ok = tid > 0
    truth = f.truth.set_index("cell_id")
    for m in ("ER", "PR", "DAPI"):
        pred = fa.table[f"{m}_nucleus_mean"][ok].to_numpy() / PPU
        true = truth.loc[tid[ok], f"{m}_nucleus"].to_numpy()
        pos = true > 0.05
        assert np.median(np.abs(pred[pos] - true[pos]) / true[pos]) < 0.03, m
    sc = score_her2(fa.table, calibration)
    pred = sc.cells.set_index("cell_id")["category"].reindex(fa.table["cell_id"][ok])
    true = truth.loc[tid[ok], "her2_category"]
    # measured 0.891 (linear-weighted); 0.790 with every junction counted for both cells
    # (0/1+ cells bordering 3+ ones read their arc); 0.65 while the completeness threshold
    # fell to the 99th percentile of a background half exact zeros, and cells grew past
    # their membrane
    assert cohen_kappa(true.astype(str).to_numpy(), pred.astype(str).to_numpy(),
                       weights="linear") >= 0.85


def test_unmixed_panel_refuses_what_needs_spectra(tmp_path, write_qptiff):
    p = write_qptiff(tmp_path / "c.qptiff", np.zeros((64, 64, 8), np.float32), CHANNELS)
    with pytest.raises(InputError, match="already unmixed"):
        analyze_slide(p, PANEL, tmp_path / "o", offset_adu=10, progress=False)
    with pytest.raises(InputError, match="blind.*already-unmixed panel has none"):
        analyze_slide(p, PANEL, tmp_path / "o", autofluorescence="blind", progress=False)
    with pytest.raises(InputError, match=r"c.qptiff: component 'HER2': the image has no "
                                         r"channel 'HER2-QD'"):
        analyze_slide(p, unmixed_panel({"DAPI": "DAPI", "HER2": "HER2-QD"}), tmp_path / "o",
                      progress=False)


def test_a_component_taken_by_its_place_from_a_named_channel_is_warned(tmp_path, write_qptiff):
    """unmixed_panel({"ER": 2}) in Python reads channel 2 of each slide, whatever it holds:
    a review's export with PR at index 2 was read as ER, unsaid. Said when the channel has a
    name of its own; not for channels named by their place, nor for a panel bound to an
    image (read by name), nor for components given by name."""
    from qdmed.imaging._analyze import positional_warnings

    p = unmixed_panel({"DAPI": "DAPI", "ER": 3})
    w = positional_warnings(p, CHANNELS)
    assert len(w) == 1 and w[0].startswith("component ER is channel 3 ('Qdot 605') by its place")
    assert positional_warnings(p, ["C0", "Chan 1", "Channel 2", "Channel:0:3"]) == []
    assert positional_warnings(bind_unmixed(p, CHANNELS), CHANNELS) == []
    assert positional_warnings(unmixed_panel(MAPPING), CHANNELS) == []
    img = write_qptiff(tmp_path / "c.qptiff", np.zeros((64, 64, 8), np.float32), CHANNELS)
    res = analyze_slide(img, p, tmp_path / "o", tile=64, scheduler="synchronous",
                        progress=False, write_unmixed=False, outlines=False)
    assert [x for x in res.warnings if "by its place" in x] == [f"slide: {w[0]}"]
