"""Detector saturation: the ceiling, saturated pixels per channel and per cell, and clipping
below a ceiling the file does not declare, checked against the simulator's own clipping
(the same scene rendered with a 16-bit and a narrower ADC differs exactly where the counts
exceeded the narrower ceiling)."""

import json

import numpy as np
import pytest

from qdmed.errors import FileFormatError, InputError
from qdmed.imaging import (
    AnalysisSettings,
    analyze_field,
    analyze_slide,
    breast_panel_5plex,
    read_slide,
    simulate_field,
    write_ome_tiff,
)
from qdmed.imaging._detector import (
    cell_saturated_fraction,
    channel_stats,
    check_offset,
    merge_channel_stats,
    offset_summary,
    saturation_level,
    saturation_summary,
)

PANEL = breast_panel_5plex()
KW = dict(preset="her2-heterogeneous", endmembers=PANEL.endmembers,
          marker_names=list(PANEL.markers), channel_names=list(PANEL.channel_names),
          photons_per_unit=300.0, seed=3)


@pytest.fixture(scope="module")
def fields():
    """The same scene with a 16-bit and an 8-bit ADC (its brightest pixels reach ~500
    counts, so the 8-bit one saturates)."""
    return simulate_field((640, 640), **KW), simulate_field((640, 640), bit_depth=8, **KW)


def test_ceiling_from_type_bits_or_user():
    assert saturation_level(np.uint16) == (65535.0, "uint16 maximum")
    assert saturation_level(np.uint8) == (255.0, "uint8 maximum")
    assert saturation_level(np.uint16, significant_bits=12) == (4095.0, "OME SignificantBits 12")
    assert saturation_level(np.uint16, significant_bits=16)[0] == 65535.0
    assert saturation_level(np.uint16, level=1000) == (1000.0, "given")
    level, why = saturation_level(np.float32)
    assert level is None and "float32" in why
    assert saturation_level(np.float32, level=5e4) == (5e4, "given")
    for bad in (0, -3, float("nan"), float("inf"), "4095", True):
        with pytest.raises(InputError, match="saturation_level"):
            saturation_level(np.uint16, level=bad)


def test_simulated_adc_clips_at_its_ceiling(fields):
    f16, f8 = fields
    assert f16.image.max() > 255  # the scene does exceed the 8-bit range
    np.testing.assert_array_equal(f8.image, np.minimum(f16.image, 255))
    with pytest.raises(InputError, match="bit_depth"):
        simulate_field((64, 64), bit_depth=20, **KW)
    with pytest.raises(InputError, match="bit_depth"):
        simulate_field((64, 64), bit_depth=12, dtype="float32", **KW)


def test_tile_stats_merge_to_the_whole_image_exactly():
    rng = np.random.default_rng(0)
    img = np.minimum(rng.poisson(rng.gamma(2.0, 900.0, (300, 400, 3))), 4095).astype(np.uint16)
    img[:5, :5, 2] = 60000  # channel 2's maximum sits in one corner tile only
    whole = channel_stats(img, 4095.0)
    for ty, tx in ((100, 100), (64, 256), (300, 7)):
        parts = [channel_stats(img[y:y + ty, x:x + tx], 4095.0)
                 for y in range(0, 300, ty) for x in range(0, 400, tx)]
        assert merge_channel_stats(parts) == whole
    assert whole["saturated"] == [int((img[..., c] >= 4095).sum()) for c in range(3)]
    assert whole["max"] == [4095, 4095, 60000]
    assert whole["at_max"][2] == 25
    assert whole["below_max"][0] == int((img[..., 0] == 4094).sum())


def test_pileup_at_an_undeclared_ceiling_is_flagged(fields):
    f16, f8 = fields
    names = list(PANEL.channel_names)
    clipped = {names[c] for c in range(8) if (f16.image[..., c] > 255).any()}
    assert clipped  # the 8-bit scene is clipped in some channels only
    d8 = saturation_summary(65535.0, "uint16 maximum", channel_stats(f8.image, 65535.0), names,
                            None, None)
    assert set(d8["clipping_suspected"]) == clipped
    assert all(v["value"] == 255 for v in d8["clipping_suspected"].values())
    assert any("2^8 - 1" in w and "--saturation-level 255" in w for w in d8["warnings"])
    d16 = saturation_summary(65535.0, "uint16 maximum", channel_stats(f16.image, 65535.0),
                             names, None, None)
    assert d16["clipping_suspected"] == {} and d16["warnings"] == []  # a natural tail
    # once the ceiling is known, the same pixels are saturation, not suspected clipping
    d = saturation_summary(255.0, "given", channel_stats(f8.image, 255.0), names, None, None)
    assert d["clipping_suspected"] == {}
    assert d["saturated_pixels"] == {n: int((f16.image[..., c] >= 255).sum())
                                     for c, n in enumerate(names)}


def test_cell_fraction_on_a_hand_made_image():
    img = np.zeros((2, 3, 2), np.uint16)
    img[0, 0, 1] = 9
    img[1, 2, 0] = 12
    cells = np.array([[1, 1, 2], [1, 0, 2]])
    np.testing.assert_allclose(cell_saturated_fraction(img, cells, 9.0), [0.0, 1 / 3, 0.5])
    assert cell_saturated_fraction(img, cells, None) is None


def test_field_cells_carry_their_saturated_fraction(fields):
    f16, f8 = fields
    fa = analyze_field(f8.image, PANEL, AnalysisSettings(saturation_level=255.0))
    truth = (f16.image >= 255).any(axis=-1)  # where the 16-bit counts reached the ceiling
    t = fa.table
    for cid, frac in zip(t["cell_id"], t["saturated_fraction"], strict=True):
        assert frac == pytest.approx(truth[fa.cells == cid].mean(), abs=1e-6)
    assert 0.2 < (t["saturated_fraction"] > 0).mean() < 0.7  # measured 0.40
    assert fa.saturation["level_adu"] == 255.0
    # default ceiling of a uint16 field: never reached here
    assert (analyze_field(f8.image, PANEL).table["saturated_fraction"] == 0).all()
    # a float field is not checked unless a ceiling is given
    fl = analyze_field(f16.image.astype(np.float32), PANEL)
    assert "saturated_fraction" not in fl.table and fl.saturation["level_adu"] is None


def test_slide_summary_from_the_ome_significant_bits(fields, tmp_path):
    f16, f8 = fields
    p = write_ome_tiff(tmp_path / "s8.ome.tif", f8.image, channel_names=list(PANEL.channel_names),
                       pixel_size_um=0.5, significant_bits=8)
    assert read_slide(p).significant_bits == 8
    res = analyze_slide(p, PANEL, tmp_path / "a", tile=256, scheduler="synchronous",
                        progress=False, outlines=False, write_unmixed=False)
    sat = res.summary["saturation"]
    assert (sat["level_adu"], sat["source"]) == (255.0, "OME SignificantBits 8")
    names = list(PANEL.channel_names)
    assert sat["saturated_pixels"] == {n: int((f16.image[..., c] >= 255).sum())
                                       for c, n in enumerate(names)}
    cells = res.cells()
    assert sat["n_cells_saturated"] == int((cells["saturated_fraction"] > 0).sum()) > 0
    assert any("detector ceiling" in w for w in sat["warnings"])
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["saturation"][
        "percent_scored_cells_saturated"] == pytest.approx(sat["percent_scored_cells_saturated"])
    res_x = analyze_slide(p, PANEL, tmp_path / "a", tile=256, scheduler="synchronous",
                          progress=False, outlines=False, write_unmixed=False,
                          exclude_flagged="saturated")
    assert res_x.summary["scored_cells"]["n_scored"] == len(cells) - sat["n_cells_saturated"]
    assert res_x.summary["scored_cells"]["excluded"]["saturated"] == sat["n_cells_saturated"]
    # the warning says they are left out, and what that costs (the brightest cells go)
    warn = [w for w in res_x.summary["saturation"]["warnings"] if "detector ceiling" in w]
    assert "left out of the scores" in warn[0] and "read low" in warn[0]
    # the same file without the declaration: the pile-up names the ceiling to give
    q = write_ome_tiff(tmp_path / "plain.ome.tif", f8.image, pixel_size_um=0.5,
                       channel_names=names)
    assert read_slide(q).significant_bits is None
    res2 = analyze_slide(q, PANEL, tmp_path / "b", tile=256, scheduler="synchronous",
                         progress=False, outlines=False, write_unmixed=False)
    s2 = res2.summary["saturation"]
    assert s2["level_adu"] == 65535.0 and s2["n_cells_saturated"] == 0
    assert s2["clipping_suspected"] and all(v["value"] == 255
                                            for v in s2["clipping_suspected"].values())
    # given explicitly, it equals the declared run
    res3 = analyze_slide(q, PANEL, tmp_path / "c", tile=256, scheduler="synchronous",
                         progress=False, outlines=False, write_unmixed=False,
                         saturation_level=255)
    np.testing.assert_array_equal(res3.cells()["saturated_fraction"], cells["saturated_fraction"])


def test_bad_significant_bits(tmp_path):
    img = np.zeros((32, 32, 2), np.uint16)
    for bad in (0, 17, 12.0, True):
        with pytest.raises(InputError, match="significant_bits"):
            write_ome_tiff(tmp_path / "x.ome.tif", img, significant_bits=bad)
    with pytest.raises(InputError, match="significant_bits"):
        write_ome_tiff(tmp_path / "x.ome.tif", img.astype(np.float32), significant_bits=12)
    p = write_ome_tiff(tmp_path / "x.ome.tif", img, significant_bits=12)
    assert read_slide(p).significant_bits == 12
    text = p.read_bytes().replace(b'SignificantBits="12"', b'SignificantBits="ab"', 1)
    bad_file = tmp_path / "bad.ome.tif"
    bad_file.write_bytes(text)
    with pytest.raises(FileFormatError, match="SignificantBits"):
        read_slide(bad_file)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int32])
def test_compiled_stats_equal_the_numpy_reference(dtype, monkeypatch):
    import qdmed.imaging._detector as sat

    rng = np.random.default_rng(1)
    img = np.minimum(rng.poisson(rng.gamma(2.0, 50.0, (300, 400, 3))), 200).astype(dtype)
    img[5:9, 3, 1] = 120  # a maximum below another channel's, and a core view (strided)
    img[20:30, 20:30, :] = 0  # padding: 0 in every channel, not counted as nonpositive
    img[40, 40:50, 0] = 0
    if np.issubdtype(dtype, np.signedinteger):
        img[50, 50:60, 2] = -7  # negative counts (a dark-corrected signed image)
    views = (img, img[10:250, 7:390])
    compiled = [sat.channel_stats(v, lv) for v in views for lv in (200.0, None)]
    monkeypatch.setattr(sat, "numba_available", lambda: False)
    assert [sat.channel_stats(v, lv) for v in views for lv in (200.0, None)] == compiled
    lit = (img > 0).any(axis=2)
    assert compiled[0]["nonpositive"] == [int(((img[..., c] <= 0) & lit).sum())
                                          for c in range(3)]
    assert compiled[0]["nonpositive"][2] >= (10 if np.issubdtype(dtype, np.signedinteger)
                                             else 0)


def test_offset_is_subtracted_and_an_uncorrected_one_is_suspected():
    kw = dict(KW, preset="luminal-A")
    f0 = simulate_field((512, 512), **kw)
    f1 = simulate_field((512, 512), offset_adu=100.0, **kw)
    names = list(PANEL.channel_names)
    ref = analyze_field(f0.image, PANEL).table
    raw = analyze_field(f1.image, PANEL).table
    fixed = analyze_field(f1.image, PANEL, AnalysisSettings(offset_adu=100.0)).table
    per_channel = analyze_field(f1.image, PANEL, AnalysisSettings(offset_adu=(100.0,) * 8)).table
    np.testing.assert_array_equal(fixed["EGFR_membrane_mean"], per_channel["EGFR_membrane_mean"])
    assert len(fixed) == len(ref)
    for col in ("EGFR_membrane_mean", "mTOR_cytoplasm_mean", "ER_nucleus_mean"):
        r, f, x = (float(t[col].median()) for t in (ref, fixed, raw))
        # the same cells with the offset removed (the dark-corrected field clips noise at 0)
        assert f == pytest.approx(r, rel=0.05, abs=0.5), col
        assert x > r + 20, col  # measured: EGFR 2.6 -> 95, mTOR 66 -> 268, ER 212 -> 275
    s0 = offset_summary(channel_stats(f0.image, None), None, names)
    s1 = offset_summary(channel_stats(f1.image, None), None, names)
    s2 = offset_summary(channel_stats(f1.image, None), check_offset(100, 8), names)
    assert not s0["suspected"] and s0["warnings"] == []
    assert s1["suspected"] and "uncorrected detector offset" in s1["warnings"][0]
    assert 85 <= min(s1["channel_min"].values()) <= 100
    assert not s2["suspected"] and max(s2["floor_after_offset"].values()) < 0
    assert s2["issue"] is None and set(s2["percent_pixels_at_or_below_zero"].values()) == {0}
    # with Poisson unmixing's read noise (the simulation's: 2 e-, gain 1) an offset 10 counts
    # too large is said (floor -19; no raw zero shows it); the right one (floor -9) is not
    stats1 = channel_stats(f1.image, None)
    assert offset_summary(stats1, check_offset(100, 8), names, read_noise=2.0)["issue"] is None
    s4 = offset_summary(stats1, check_offset(110, 8), names, read_noise=2.0)
    assert s4["issue"] == "below the read noise" and s4["suspected"]
    assert "the offset is larger than the detector's dark level" in s4["warnings"][0]
    padded = f1.image.copy()
    padded[:64, :64] = 0  # 1.6 % of the slide unscanned, 0 in every channel: not signal
    s2p = offset_summary(channel_stats(padded, None), check_offset(100, 8), names)
    assert s2p["issue"] is None and s2p["warnings"] == []
    # an offset given to the dark-corrected field: its zeros say it was corrected already
    s3 = offset_summary(channel_stats(f0.image, None), check_offset(100, 8), names)
    assert (s3["suspected"], s3["issue"], s1["issue"]) == (True, "over-subtracted",
                                                           "uncorrected")
    assert "dark-corrected already" in s3["warnings"][0]
    assert min(s3["percent_pixels_at_or_below_zero"].values()) >= 0.1
    over = analyze_field(f0.image, PANEL, AnalysisSettings(offset_adu=100.0)).table
    assert len(over) < 0.8 * len(ref)  # measured: 118 cells of 187; membrane HER2 median 0
    assert float(over["HER2_membrane_mean"].median()) < 0.1 * float(
        ref["HER2_membrane_mean"].median())


def test_offset_values():
    assert check_offset(None, 3) is None and check_offset(0, 3) is None
    np.testing.assert_array_equal(check_offset(5, 3), [5.0, 5.0, 5.0])
    np.testing.assert_array_equal(check_offset([1, 2, 3], 3), [1.0, 2.0, 3.0])
    for bad in ([1, 2], "x", float("nan"), [[1, 2, 3]], -5, [1, -2, 3]):  # a dark level >= 0
        with pytest.raises(InputError, match="offset must be one number or 3 numbers"):
            check_offset(bad, 3)


def test_slide_with_an_offset_equals_the_dark_corrected_slide(tmp_path):
    """The offset reaches every step of a slide run, the slide-wide thresholds included:
    the same cells as the dark-corrected slide."""
    kw = dict(KW, preset="luminal-A")
    runs = {}
    for name, off in (("dark", 0.0), ("raw", 100.0)):
        f = simulate_field((512, 512), offset_adu=off, **kw)
        p = write_ome_tiff(tmp_path / f"{name}.ome.tif", f.image, pixel_size_um=0.5,
                           channel_names=list(PANEL.channel_names))
        runs[name] = analyze_slide(p, PANEL, tmp_path / name, tile=256,
                                   scheduler="synchronous", progress=False, outlines=False,
                                   write_unmixed=False, offset_adu=off or None)
    dark, raw = (runs[k].summary for k in ("dark", "raw"))
    assert raw["settings"]["nuclear_threshold"] == pytest.approx(
        dark["settings"]["nuclear_threshold"], rel=0.05)
    assert abs(raw["n_cells"] - dark["n_cells"]) <= 0.02 * dark["n_cells"]
    assert raw["offset"]["suspected"] is False and dark["offset"]["suspected"] is False
    m_dark, m_raw = (runs[k].cells()["EGFR_membrane_mean"].median() for k in ("dark", "raw"))
    assert m_raw == pytest.approx(m_dark, rel=0.1, abs=0.5)


def test_big_endian_store_is_read_in_native_order(tmp_path):
    from qdmed.imaging import write_ome_zarr

    img = np.arange(64 * 64 * 2, dtype=np.uint16).reshape(64, 64, 2) % 4096
    p = write_ome_zarr(tmp_path / "be.ome.zarr", img.astype(">u2"))
    region = read_slide(p).read_region(0, 64, 0, 64)
    assert region.dtype.isnative
    np.testing.assert_array_equal(region, img)
    assert channel_stats(region, 4095.0)["saturated"] == [int((img[..., c] >= 4095).sum())
                                                         for c in range(2)]


def test_a_declared_ceiling_the_data_exceed_is_warned():
    img = np.zeros((8, 8, 2), np.uint16)
    img[0, 0, 1] = 5000
    d = saturation_summary(4095.0, "OME SignificantBits 12", channel_stats(img, 4095.0),
                           ["a", "b"], None, None)
    assert any("holds 5000 counts, above the ceiling the file declares" in w
               for w in d["warnings"])
    d = saturation_summary(4095.0, "given", channel_stats(img, 4095.0), ["a", "b"], None, None)
    assert not any("declares" in w for w in d["warnings"])


def test_one_dead_pixel_does_not_hide_an_offset():
    rng = np.random.default_rng(2)
    tiles = [channel_stats((100 + rng.poisson(20.0, (64, 64, 3))).astype(np.uint16), None)
             for _ in range(12)]
    dead = (100 + rng.poisson(20.0, (64, 64, 3))).astype(np.uint16)
    dead[3, 3, :] = 0
    tiles.append(channel_stats(dead, None))
    merged = merge_channel_stats(tiles)
    assert merged["min"] == [0, 0, 0]
    assert not offset_summary(merged, None, "abc")["suspected"]  # the slide minimum alone
    d = offset_summary(merged, None, "abc", tiles)
    assert d["suspected"] and min(d["floor_after_offset"].values()) >= 100


def test_excluding_saturated_cells_needs_a_ceiling(tmp_path):
    img = np.zeros((64, 64, 8), np.float32)
    p = write_ome_tiff(tmp_path / "f.ome.tif", img, channel_names=list(PANEL.channel_names))
    with pytest.raises(InputError, match="needs a detector ceiling"):
        analyze_slide(p, PANEL, tmp_path / "o", exclude_flagged="saturated", progress=False)


def test_a_channel_without_signal_is_warned(fields, tmp_path):
    """A channel of one value everywhere (a microscopist's walk-through: 590-628 nm all 0
    read HER2 at 0 of its truth with the fit at 0.0 %, unsaid) is named, integer or float."""
    from qdmed.imaging._detector import dead_channels

    names = list(PANEL.channel_names)
    img = fields[0].image.copy()
    img[..., 4] = 0
    p = write_ome_tiff(tmp_path / "z.ome.tif", img, channel_names=names, pixel_size_um=0.5)
    res = analyze_slide(p, PANEL, tmp_path / "a", tile=320, scheduler="synchronous",
                        progress=False, outlines=False, write_unmixed=False)
    assert res.summary["offset"]["dead_channels"] == [names[4]]
    assert any(w.startswith(f"offset: channel(s) {names[4]} read one value in every pixel")
               for w in res.warnings)
    assert dead_channels(channel_stats(img.astype(np.float32), None), names) == [names[4]]
    img[..., 2] = 7  # a constant other than 0
    assert dead_channels(channel_stats(img, None), names) == [names[2], names[4]]
    # floats: zero padding beside the image, a channel of signal in 25 px only, a float
    # constant other than 0 (a review found the first and last missed, the second named)
    f = fields[0].image.astype(np.float32)
    padded = np.zeros((640, 900, 8), np.float32)
    padded[:, :640] = f
    padded[:, :640, 4] = 0
    assert dead_channels(channel_stats(padded, None), names) == [names[4]]
    sparse = f.copy()
    sparse[..., 7] = 0
    sparse[:5, :5, 7] = 50
    assert dead_channels(channel_stats(sparse, None), names) == []
    sparse[..., 2] = 100.0
    assert dead_channels(channel_stats(sparse, None), names) == [names[2]]
    # a real slide's channels pass, however dim
    assert dead_channels(channel_stats(fields[0].image, None), names) == []
    assert dead_channels(channel_stats(fields[0].image.astype(np.float32), None), names) == []


def test_unsigned_counts_stored_as_signed_are_said(fields, tmp_path):
    """uint16 counts saved as int16 (a microscopist's walk-through: HER2 read at 0.36 of its
    truth, warned only as clipping at 32760 with the wrong fix): the wrap is said; a
    dark-corrected int16 image with small negatives (read noise) is not."""
    from qdmed.imaging._detector import wrapped_warnings

    names = list(PANEL.channel_names)
    wrapped = (fields[0].image.astype(np.int64) * 120).clip(0, 65535).astype(np.uint16)
    p = write_ome_tiff(tmp_path / "w.ome.tif", wrapped.view(np.int16), channel_names=names,
                       pixel_size_um=0.5)
    res = analyze_slide(p, PANEL, tmp_path / "a", tile=320, scheduler="synchronous",
                        progress=False, outlines=False, write_unmixed=False)
    assert res.summary["offset"]["issue"] == "signed"
    assert any(w.startswith("offset: the int16 image holds values down to -") and
               "image.view(np.uint16)" in w for w in res.warnings)
    assert wrapped_warnings(np.int16, [-40, -3]) == []  # read noise about 0
    assert wrapped_warnings(np.uint16, [0, 0]) == [] and wrapped_warnings(None, [-9e9]) == []
    assert wrapped_warnings(np.int32, [-2 ** 31])  # any signed type


def test_float_images_clipped_below_their_type_are_flagged(fields):
    """Float counts clipped at 4095 (a 12-bit camera's data saved as float32) were not
    checked for a pile-up (integers only): they are now, and the same unclipped float image
    passes (a microscopist's walk-through)."""
    names = list(PANEL.channel_names)
    raw = fields[0].image.astype(np.float32) * 16  # the brightest pixels pass 4095
    clipped = np.minimum(raw, 4095.0)
    got = saturation_summary(None, "none", channel_stats(clipped, None), names, None, None)
    assert got["clipping_suspected"] and all(v["value"] == 4095
                                             for v in got["clipping_suspected"].values())
    assert any("largest value 4095 = 2^12 - 1" in w for w in got["warnings"])
    free = saturation_summary(None, "none", channel_stats(raw + 0.25, None), names, None, None)
    assert free["clipping_suspected"] == {}
    # merged over tiles as over the whole image
    parts = [channel_stats(clipped[:320], None), channel_stats(clipped[320:], None)]
    assert saturation_summary(None, "none", merge_channel_stats(parts), names, None,
                              None)["clipping_suspected"] == got["clipping_suspected"]
