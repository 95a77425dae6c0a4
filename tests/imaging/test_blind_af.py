"""Blind autofluorescence from a stained slide (qdmed.imaging._blind_af): recovery of a
rendered spectrum on synthetic fields, the half-sample mode, the diagnostics and refusals."""

import numpy as np
import pytest

from qdmed.errors import InputError
from qdmed.imaging import (
    autofluorescence_blind,
    breast_panel_5plex,
    half_sample_mode,
    simulate_field,
    unmix_nnls,
)
from qdmed.imaging._panel import autofluorescence_spectrum, mixing_matrix
from qdmed.optics import emission_spectrum


def _cos(u, v):
    return float(u @ v / np.linalg.norm(u) / np.linalg.norm(v))


def _panel_with_af(n_channels, peak_nm, fwhm_nm, her2_shift_nm=None):
    """The breast panel's endmembers with another autofluorescence (and HER2) spectrum."""
    p = breast_panel_5plex(n_channels)
    e = p.endmembers.copy()
    af = mixing_matrix([autofluorescence_spectrum(peak_nm, fwhm_nm)], p.channels)[:, 0]
    e[:, -1] = af / af.sum() * p.endmembers[:, -1].sum()
    if her2_shift_nm is not None:  # HER2 as a 34 nm wide peak, shifted from the catalog's
        k = p.components.index("HER2")
        h = mixing_matrix([emission_spectrum(p.spectra[k].peak_nm + her2_shift_nm, 34.0)],
                          p.channels)[:, 0]
        e[:, k] = h / h.sum() * p.endmembers[:, k].sum()
    return p, e


def test_half_sample_mode():
    assert half_sample_mode([1.0, 1.1, 1.2, 1.15, 5.0, 9.0, 13.0]) == pytest.approx(1.125)
    assert half_sample_mode([3.0, 3.0, 3.0, 40.0]) == 3.0
    assert half_sample_mode([2.5]) == 2.5
    rng = np.random.default_rng(0)
    # gamma(shape 3, scale 1) has its mode at (3 - 1) * 1 = 2; the mean is 3, the median 2.67
    assert half_sample_mode(rng.gamma(3.0, 1.0, 20001)) == pytest.approx(2.0, abs=0.25)
    # a tight cluster at 5 with 40 % of far outliers on one side (the mean would be ~11)
    x = np.r_[rng.normal(5.0, 0.1, 6000), rng.uniform(10.0, 30.0, 4000)]
    assert half_sample_mode(x) == pytest.approx(5.0, abs=0.05)
    with pytest.raises(InputError, match="finite"):
        half_sample_mode([1.0, np.nan])


@pytest.mark.parametrize("n_channels, peak, fwhm", [(8, 560.0, 180.0), (16, 600.0, 120.0)])
def test_blind_autofluorescence_recovers_the_rendered_spectrum(n_channels, peak, fwhm):
    """A field rendered with an autofluorescence unlike the panel's model: the blind
    estimate matches the rendered spectrum (measured: cosine 0.9999 and 0.9998; the model's
    0.935 and 0.589) and unmixes the markers nearly as well as the true spectrum (mean
    absolute marker error measured +1.2 % and -1.5 % relative to it; the model +30 % and
    +148 %)."""
    p, e = _panel_with_af(n_channels, peak, fwhm)
    f = simulate_field((384, 384), preset="BT474", endmembers=e, marker_names=list(p.markers),
                       seed=1)
    labels = e[:, :-1]
    prof, info = autofluorescence_blind(f.image, labels, label_names=list(p.markers))
    assert prof.sum() == pytest.approx(1.0) and np.all(prof >= 0)
    assert _cos(prof, e[:, -1]) > 0.999
    assert _cos(prof, e[:, -1]) > _cos(p.endmembers[:, -1], e[:, -1]) + 0.05
    assert info["warnings"] == []
    assert info["angle_to_labels_deg"] > 5 and info["split_half_cosine"] > 0.99
    assert info["signal_zscore"] > 10 and info["map_coherence"] > 0.05
    assert min(info["label_stability"].values()) > 0.9
    assert info["offset_fraction"] < 0.15
    assert set(info["label_stability"]) == set(p.markers)
    err = {}
    truth = f.abundances.reshape(-1, e.shape[1])[:, :-1]
    for name, af in (("true", e[:, -1]), ("blind", prof * e[:, -1].sum()),
                     ("model", p.endmembers[:, -1])):
        x = unmix_nnls(f.image.reshape(-1, n_channels), np.column_stack([labels, af])) / 1000.0
        err[name] = float(np.mean(np.abs(x[:, :-1] - truth)))
    assert err["blind"] < 1.05 * err["true"] < 1.05 * err["model"], err


def test_blocks_with_invalid_pixels_are_left_out():
    """`valid` (e.g. not saturated) leaves out every block holding an invalid pixel, and
    the estimate still matches the rendered spectrum with 10 % of the pixels clipped at a
    ceiling. (Measured on this field, 1 - cosine to the rendered spectrum for 1, 5 and 10 %
    clipped: 1.8, 2.0, 2.9e-4 with those blocks left out, 2.8, 3.2, 1.9e-4 kept, 1.8e-4
    unclipped: no measurable difference here, the half-sample mode shrugs the clipped blocks
    off.) Bad masks are refused."""
    p, e = _panel_with_af(8, 560.0, 180.0)
    f = simulate_field((384, 384), preset="BT474", endmembers=e, marker_names=list(p.markers),
                       seed=1)
    level = float(np.percentile(f.image.max(-1), 90.0))
    clipped = np.minimum(f.image, level)
    sat = (clipped >= level).any(-1)
    prof, info = autofluorescence_blind(clipped, e[:, :-1], valid=~sat)
    blocks = sat.reshape(96, 4, 96, 4).any(axis=(1, 3))
    assert info["n_blocks_left_out"] == int(blocks.sum()) > 0
    assert _cos(prof, e[:, -1]) > 0.999
    _, kept = autofluorescence_blind(clipped, e[:, :-1])
    assert kept["n_blocks_left_out"] == 0
    # what lies in left-out blocks changes no diagnostic: the right half replaced by noise
    left = np.zeros(sat.shape, bool)
    left[:, :192] = True
    noisy = f.image.copy()
    noisy[:, 192:] = np.random.default_rng(2).poisson(50.0, noisy[:, 192:].shape)
    _, a = autofluorescence_blind(f.image, e[:, :-1], valid=left)
    _, b = autofluorescence_blind(noisy, e[:, :-1], valid=left)
    assert a["n_blocks_left_out"] == b["n_blocks_left_out"] == 96 * 48
    for key in ("map_coherence", "signal_zscore", "split_half_cosine", "offset_fraction"):
        assert a[key] == pytest.approx(b[key], rel=1e-9), key
    with pytest.raises(InputError, match="boolean"):
        autofluorescence_blind(clipped, e[:, :-1], valid=np.ones((10, 10), bool))
    with pytest.raises(InputError, match="left out as not valid"):
        autofluorescence_blind(clipped, e[:, :-1], valid=np.zeros(sat.shape, bool))


def test_a_wrong_label_spectrum_is_flagged():
    """HER2 6 nm redder than the spectrum given: its mismatch is taken for autofluorescence
    (measured cosine 0.73), and the mean residual turns with HER2's abundance (stability
    measured -0.99 for DAPI and 0.95 for HER2: the sign flips where HER2 dominates)."""
    p, e = _panel_with_af(8, 575.0, 110.0, her2_shift_nm=6.0)
    f = simulate_field((384, 384), preset="HER2-enriched", endmembers=e,
                       marker_names=list(p.markers), autofluorescence=0.5, seed=5)
    _, given = _panel_with_af(8, 575.0, 110.0, her2_shift_nm=0.0)
    _, info = autofluorescence_blind(f.image, given[:, :-1], label_names=list(p.markers))
    assert any("label spectrum is probably wrong" in w for w in info["warnings"])
    assert min(info["label_stability"].values()) < 0.9


def test_blind_autofluorescence_refuses_what_it_cannot_do():
    p = breast_panel_5plex(8)
    e = p.endmembers
    labels = e[:, :-1]
    none = simulate_field((256, 256), preset="BT474", endmembers=e, marker_names=list(p.markers),
                          autofluorescence=0.0, seed=3)
    with pytest.raises(InputError, match="no autofluorescence found"):
        autofluorescence_blind(none.image, labels)
    img = np.random.default_rng(0).poisson(20.0, (64, 64, 8)).astype(float)
    with pytest.raises(InputError, match="more channels than labels"):
        autofluorescence_blind(img, np.ones((8, 8)) + np.eye(8))
    with pytest.raises(InputError, match=r"\(C, K\) with C = 8"):
        autofluorescence_blind(img, labels[:5])
    with pytest.raises(InputError, match="degenerate"):
        autofluorescence_blind(img, np.column_stack([labels[:, :2], labels[:, :1]]))
    with pytest.raises(InputError, match="too small"):
        autofluorescence_blind(img[:20, :20], labels)
    with pytest.raises(InputError, match="block_px"):
        autofluorescence_blind(img, labels, block_px=0)
    with pytest.raises(InputError, match="real numeric"):
        autofluorescence_blind(img.astype(complex), labels)
    with pytest.raises(InputError, match="label_names"):
        autofluorescence_blind(img, labels, label_names=["a"])
    bad = img.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        autofluorescence_blind(bad, labels)
    with pytest.raises(InputError, match="offset"):
        autofluorescence_blind(img, labels, offset=[1.0, 2.0])


def test_an_uncorrected_offset_is_warned_about():
    """A dark level of 20 counts not subtracted: part of the residual does not scale with
    the autofluorescence (measured offset_fraction 0.17 against 0.005 without; cosine to
    the truth 0.98 against 1.0000), and given as `offset` it is removed. A uniform flat
    image has a residual but no spatial structure: the map-coherence warning."""
    p, e = _panel_with_af(8, 560.0, 180.0)
    f = simulate_field((384, 384), preset="MCF-7", endmembers=e, marker_names=list(p.markers),
                       seed=2)
    img = f.image.astype(float) + 20.0
    prof, info = autofluorescence_blind(img, e[:, :-1])
    assert info["offset_fraction"] > 0.15
    assert any("detector offset" in w for w in info["warnings"])
    prof, info = autofluorescence_blind(img, e[:, :-1], offset=20.0)
    assert info["offset_fraction"] < 0.05 and _cos(prof, e[:, -1]) > 0.999
    flat = np.random.default_rng(1).poisson(50.0, (256, 256, 8)).astype(float)
    _, info = autofluorescence_blind(flat, p.endmembers[:, :-1])
    assert info["map_coherence"] < 0.05
    assert any("little spatial structure" in w for w in info["warnings"])


def test_half_sample_mode_small_samples_and_ties():
    assert half_sample_mode([4.0, 6.0]) == 5.0
    assert half_sample_mode([1.0, 2.0, 3.0]) == 2.0  # equally spaced: the middle value
    assert half_sample_mode([1.0, 1.5, 3.0]) == 1.25
    assert half_sample_mode([0.0, 0.0, 0.0, 10.0, 10.0, 10.0]) == 0.0  # ties: the lowest
    with pytest.raises(InputError, match="real numbers"):
        half_sample_mode(["a", "b"])
    with pytest.raises(InputError, match="finite"):
        half_sample_mode([])


def test_diagnostics_not_measurable_say_so():
    """With most blocks left out, the offset fraction cannot be measured: NaN (it read 0.0,
    "no offset"); a mask leaving a checkerboard of blocks gives halves without blocks,
    which the split-half cosine reports as NaN (it raised an IndexError)."""
    p, e = _panel_with_af(8, 560.0, 180.0)
    f = simulate_field((384, 384), preset="BT474", endmembers=e, marker_names=list(p.markers),
                       seed=1)
    valid = np.ones((384, 384), bool)
    valid[:, 3::8] = False  # a bad pixel column in every other block column
    _, info = autofluorescence_blind(f.image + 100.0, e[:, :-1], valid=valid, offset=0.0)
    assert info["n_blocks_left_out"] == 96 * 48
    assert np.isnan(info["offset_fraction"])
    checker = np.ones((384, 384), bool)
    by, bx = np.indices((96, 96))
    checker[np.kron((by + bx) % 2 == 1, np.ones((4, 4), bool))] = False
    _, info = autofluorescence_blind(f.image, e[:, :-1], valid=checker)
    assert np.isnan(info["split_half_cosine"]) and info["n_blocks_left_out"] == 96 * 48
