"""Tests for qdmed.imaging._synthetic: geometry, presets, image formation, slides."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qdmed.errors import InputError, UnknownNameError
from qdmed.imaging._slideio import read_slide
from qdmed.imaging._synthetic import (
    COMPARTMENT_CODES,
    HER2_CATEGORIES,
    HER2_CATEGORY_MODEL,
    list_markers,
    list_presets,
    simulate_field,
    simulate_slide,
    simulate_tissue,
)

MARKERS = ("HER2", "EGFR", "ER", "PR", "mTOR")


def gaussian_endmembers(n_markers: int = len(MARKERS), n_channels: int = 8) -> np.ndarray:
    """(C, K+1) matrix: Gaussian QD emission bands (FWHM ~35 nm) in 30 nm wide channels and
    a broad autofluorescence band (last column)."""
    centres = np.linspace(510, 720, n_channels)
    peaks = np.linspace(525, 705, n_markers)
    sig = np.r_[np.full(n_markers, 15.0), 90.0]
    mu = np.r_[peaks, 560.0]
    e = np.exp(-0.5 * ((centres[:, None] - mu[None, :]) / sig[None, :]) ** 2)
    return e / e.sum(axis=0, keepdims=True)


E = gaussian_endmembers()


def field(shape=(512, 512), **kw):
    args = {"preset": "her2-heterogeneous", "endmembers": E, "marker_names": MARKERS,
            "seed": 7}
    args.update(kw)
    return simulate_field(shape, **args)


@pytest.fixture(scope="module")
def noiseless():
    return field((512, 640), noise=False, dtype="float32", photons_per_unit=1.0,
                 tissue_fraction=0.6, seed=11)


# --------------------------------------------------------------------------- registries
REQUIRED_PRESETS = ("MCF-7", "BT474", "SK-BR-3", "MDA-MB-231", "MDA-MB-468", "luminal-A",
                    "HER2-enriched", "triple-negative", "her2-heterogeneous")


def test_registry_contents():
    presets = list_presets()
    for name in REQUIRED_PRESETS:
        p = presets[name]
        assert p.description and p.citation
        assert set(p.her2_mix) == set(HER2_CATEGORIES)
        assert sum(p.her2_mix.values()) == pytest.approx(1.0)
        assert set(p.markers) <= set(list_markers())
    markers = list_markers()
    assert {m: markers[m].compartment for m in MARKERS} == {
        "HER2": "membrane", "EGFR": "membrane", "ER": "nucleus", "PR": "nucleus",
        "mTOR": "cytoplasm"}
    for m, comp in (("CA125", "membrane"), ("claudin-4", "membrane"), ("PSA", "cytoplasm"),
                    ("AR", "nucleus")):
        assert markers[m].compartment == comp
    assert presets["BT474"].her2_mix["3+"] > 0.9 and presets["BT474"].markers["ER"]
    assert "ER" not in presets["SK-BR-3"].markers
    assert presets["MDA-MB-468"].markers["EGFR"].level >= presets["MDA-MB-231"].markers[
        "EGFR"].level
    json.dumps({k: v.to_dict() for k, v in presets.items()})
    with pytest.raises(TypeError):
        presets["new"] = presets["MCF-7"]  # read-only mapping


# --------------------------------------------------------------------------- determinism
def test_deterministic_from_seed():
    a, b = field(seed=3), field(seed=3)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.abundances, b.abundances)
    np.testing.assert_array_equal(a.cells, b.cells)
    pd.testing.assert_frame_equal(a.truth, b.truth)
    c = field(seed=4)
    assert not np.array_equal(a.cells, c.cells)
    assert a.params["seed"] == 3
    d = simulate_field((64, 64), preset="MCF-7", endmembers=E, marker_names=MARKERS, seed=None)
    assert isinstance(d.params["seed"], int)  # drawn seed recorded for reproduction


def test_a_panel_gives_its_spectra_markers_and_channels(tmp_path):
    """simulate_* take the panel the analysis takes (a Python walk-through: only endmembers
    and marker_names were accepted); the same image as its three parts given by hand."""
    from qdmed.imaging import breast_panel_5plex, unmixed_panel
    from qdmed.imaging._tma import simulate_tma

    p = breast_panel_5plex()
    a = simulate_field((96, 96), preset="BT474", panel=p, seed=1)
    b = simulate_field((96, 96), preset="BT474", endmembers=p.endmembers,
                       marker_names=list(p.markers), channel_names=list(p.channel_names),
                       seed=1)
    np.testing.assert_array_equal(a.image, b.image)
    assert a.marker_names == p.markers and a.channel_names == p.channel_names
    s = simulate_tma(tmp_path / "t.ome.zarr", rows=1, cols=1, presets=["BT474"], panel=p,
                     core_diameter_um=100, seed=0)
    assert read_slide(s.path).channel_names == p.channel_names
    for kw, msg in ((dict(panel=p, marker_names=["HER2"]), "the panel or marker_names, not"),
                    ({}, "give the panel to simulate"),
                    (dict(panel=p.endmembers), r"must be a qdmed Panel .*got ndarray"),
                    (dict(panel=unmixed_panel({"DAPI": 0, "HER2": 1})), "already-unmixed")):
        with pytest.raises(InputError, match=msg):
            simulate_field((64, 64), preset="BT474", **kw)


def test_field_is_crop_independent_of_other_parameters_not_touching_geometry():
    # expression and optics do not move the cells
    a = field(preset="MCF-7")
    b = field(preset="BT474", read_noise_e=0.0, photons_per_unit=50.0)
    np.testing.assert_array_equal(a.cells, b.cells)
    np.testing.assert_array_equal(a.nuclei, b.nuclei)


# --------------------------------------------------------------------------- geometry
def check_geometry(nuclei, cells, comp):
    assert nuclei.dtype == np.int32 and cells.dtype == np.int32
    incell = cells > 0
    # compartments are disjoint (one code per pixel) and cover exactly the cells
    assert np.array_equal(comp > 0, incell)
    assert set(np.unique(comp)) <= set(COMPARTMENT_CODES.values())
    # a nucleus carries its cell's id, lies inside it and is the nucleus compartment
    nuc = nuclei > 0
    assert np.array_equal(nuclei[nuc], cells[nuc])
    assert np.array_equal(nuc, comp == COMPARTMENT_CODES["nucleus"])


def test_tissue_geometry():
    t = simulate_tissue((400, 500), seed=2)
    check_geometry(t.nuclei, t.cells, t.compartments)
    assert t.n_cells > 50
    assert (t.nucleus | t.cytoplasm | t.membrane).sum() == (t.cells > 0).sum()
    ids = np.unique(t.cells)
    np.testing.assert_array_equal(ids[1:], t.cell_table["cell_id"].to_numpy())
    # every cell has a nucleus, a cytoplasm and a membrane ring
    for mask in (t.nucleus, t.cytoplasm, t.membrane):
        assert set(np.unique(t.cells[mask])) == set(ids[1:])
    # the membrane is ~1 um thick: pixels of a cell within 2 px of another label
    assert 0.08 < t.membrane.mean() < 0.3
    # nuclei are ellipses: rendered area ~ pi a b for cells away from the border
    tab = t.cell_table
    interior = tab[(tab.center_y > 20) & (tab.center_y < 380) & (tab.center_x > 20)
                   & (tab.center_x < 480)]
    area = np.bincount(t.nuclei.ravel(), minlength=t.cells.max() + 1)[interior.cell_id]
    expect = np.pi * interior.nucleus_major_um * interior.nucleus_minor_um / 4 / 0.25
    np.testing.assert_allclose(area, expect, rtol=0.15)  # pixelisation of ~50-300 px ellipses
    assert (interior.nucleus_major_um >= interior.nucleus_minor_um).all()
    json.dumps(t.to_dict())


@settings(max_examples=8, deadline=None)
@given(h=st.integers(1, 160), w=st.integers(1, 160), seed=st.integers(0, 2**32),
       density=st.floats(500, 6000), frac=st.floats(0, 1))
def test_geometry_invariants_property(h, w, seed, density, frac):
    t = simulate_tissue((h, w), seed=seed, cell_density_per_mm2=density, tissue_fraction=frac)
    check_geometry(t.nuclei, t.cells, t.compartments)


def test_tissue_free_and_partial():
    t = simulate_tissue((300, 300), tissue_fraction=0.0, seed=1)
    assert t.n_cells == 0 and not t.cells.any() and not t.tissue.any()
    f = field((300, 300), tissue_fraction=0.0, read_noise_e=0.0)
    assert f.n_cells == 0 and len(f.truth) == 0
    assert not f.abundances.any() and not f.image.any()  # no signal at all on glass
    assert list(f.truth.columns) == list(field((64, 64)).truth.columns)
    half = simulate_tissue((1024, 1024), tissue_fraction=0.5, seed=5)
    assert 0.05 < half.tissue.mean() < 0.95 and half.n_cells > 0


def test_bad_input():
    with pytest.raises(UnknownNameError, match="unknown preset 'MCF-10A'"):
        field(preset="MCF-10A")
    # past any detector (a review: 1e300 photons failed in numpy; a 1e12 offset saturated
    # every pixel, unsaid)
    with pytest.raises(InputError, match=r"photons_per_unit .*<= 1e\+06 \(a 16-bit pixel"):
        field(photons_per_unit=1e300)
    with pytest.raises(InputError, match=r"offset_adu .*<= 65535"):
        field(offset_adu=1e12)
    # cell lines are written with and without hyphens: MCF7 is the preset MCF-7
    from qdmed.imaging._synthetic import _get_preset

    assert _get_preset("MCF7") is list_presets()["MCF-7"]
    assert _get_preset("bt-474") is list_presets()["BT474"]
    with pytest.raises(UnknownNameError, match="HER3"):
        field(marker_names=("HER3",), endmembers=E[:, :2])
    with pytest.raises(InputError, match=r"endmembers must be \(n_channels, K\+1\)"):
        field(endmembers=E[:, :3])
    with pytest.raises(InputError, match="shape"):
        simulate_tissue((0, 10))
    with pytest.raises(InputError, match="cell_density_per_mm2"):
        simulate_tissue((10, 10), cell_density_per_mm2=-1)
    with pytest.raises(InputError, match="too high"):
        simulate_tissue((10, 10), cell_density_per_mm2=1e5)
    with pytest.raises(InputError, match="tissue_fraction"):
        simulate_tissue((10, 10), tissue_fraction=1.5)
    with pytest.raises(InputError, match="photobleaching"):
        field((32, 32), photobleaching=1.2)
    with pytest.raises(InputError, match="qd_brightness"):
        field((32, 32), qd_brightness=[1, 2])
    with pytest.raises(InputError, match="dtype"):
        field((32, 32), dtype="int8")
    with pytest.raises(InputError, match="seed"):
        simulate_tissue((10, 10), seed=-1)
    with pytest.raises(InputError, match=r"junctions must be one of \['resolved', 'shared'\]"):
        simulate_tissue((10, 10), junctions="one")


# --------------------------------------------------------------------------- expression
def test_her2_category_distribution():
    f = field((1024, 1024), noise=False)
    mix = list_presets()["her2-heterogeneous"].her2_mix
    n = f.n_cells
    assert n > 600
    freq = f.truth["her2_category"].value_counts(normalize=True)
    for cat, p in mix.items():
        assert freq.get(cat, 0.0) == pytest.approx(p, abs=4 * np.sqrt(p * (1 - p) / n))
    # each category's intensity and completeness follow the ASCO/CAP-derived model
    for cat, ((ilo, ihi), (clo, chi)) in HER2_CATEGORY_MODEL.items():
        sub = f.truth[f.truth.her2_category == cat]
        assert sub.her2_intensity.between(ilo, ihi).all()
        assert sub.her2_completeness.between(clo, chi).all()
    t = f.truth
    assert (t[t.her2_category == "1+"].her2_completeness < 0.8).all()       # incomplete
    assert (t[t.her2_category.isin(["2+", "3+"])].her2_completeness >= 0.9).all()
    assert t[t.her2_category == "3+"].her2_intensity.min() > t[
        t.her2_category == "2+"].her2_intensity.max()
    assert (t[t.her2_category == "0"].HER2_membrane == 0).all()
    # the rendered stained fraction of the ring follows the nominal completeness
    inner = t[(t.centroid_y > 30) & (t.centroid_y < 994) & (t.centroid_x > 30)
              & (t.centroid_x < 994) & (t.her2_category != "0")]
    r = np.corrcoef(inner.her2_completeness, inner.her2_stained_fraction)[0, 1]
    assert r > 0.9


@pytest.mark.parametrize("name", sorted(list_presets()))
def test_presets_phenotype(name):
    p = list_presets()[name]
    f = field((384, 384), preset=name, noise=False, seed=5)
    t = f.truth
    allowed = {c for c, v in p.her2_mix.items() if v > 0}
    assert set(t.her2_category) <= allowed
    for k, m in enumerate(MARKERS):
        if m == "HER2":
            continue
        if m not in p.markers:  # absent marker: exactly zero everywhere
            assert not f.abundances[..., k].any()
            assert (t[f"{m}_level"] == 0).all()
        else:
            pos = (t[f"{m}_level"] > 0).mean()
            fr = p.markers[m].positive_fraction
            assert pos == pytest.approx(fr, abs=4 * np.sqrt(fr * (1 - fr) / len(t)) + 0.02)


def test_abundances_zero_where_absent(noiseless):
    f = noiseless
    a = f.abundances
    assert a.dtype == np.float32 and a.shape == (*f.cells.shape, len(MARKERS) + 1)
    assert (a >= 0).all()
    for k, m in enumerate(MARKERS):
        code = COMPARTMENT_CODES[list_markers()[m].compartment]
        assert not a[..., k][f.compartments != code].any(), m  # exactly 0 outside
        assert a[..., k][f.compartments == code].any(), m
    # glass: nothing at all, not even autofluorescence
    assert not f.tissue.all()
    assert not a[~f.tissue].any()
    # autofluorescence: present in tissue, smooth, stronger in stroma/cytoplasm than nuclei
    af = a[..., -1]
    stroma = f.tissue & (f.cells == 0)
    assert af[f.tissue].mean() > 0
    assert af[f.compartments == 2].mean() > af[f.compartments == 1].mean()
    if stroma.sum() > 100:
        assert af[stroma].mean() > af[f.compartments == 1].mean()


def test_truth_table(noiseless):
    f = noiseless
    t = f.truth
    for col in ("cell_id", "centroid_y", "centroid_x", "area_px", "her2_category",
                "her2_completeness", "HER2_membrane", "ER_nucleus", "mTOR_cytoplasm"):
        assert col in t.columns
    area = np.bincount(f.cells.ravel())
    np.testing.assert_array_equal(t.area_px, area[t.cell_id])
    yy, xx = np.indices(f.cells.shape)
    np.testing.assert_allclose(t.centroid_y, np.bincount(f.cells.ravel(), yy.ravel())[t.cell_id]
                               / area[t.cell_id])
    np.testing.assert_allclose(t.centroid_x, np.bincount(f.cells.ravel(), xx.ravel())[t.cell_id]
                               / area[t.cell_id])
    # uniform compartment levels: rendered mean == nominal level (float32 storage)
    for m in ("ER", "PR", "mTOR", "EGFR"):
        comp = list_markers()[m].compartment
        ok = t[f"{m}_{comp}"].notna()
        np.testing.assert_allclose(t.loc[ok, f"{m}_{comp}"], t.loc[ok, f"{m}_level"],
                                   rtol=1e-6)
        other = [c for c in ("nucleus", "cytoplasm", "membrane") if c != comp]
        for c in other:
            assert (t[f"{m}_{c}"].fillna(0) == 0).all()
    # HER2: mean over the ring = intensity x stained fraction
    np.testing.assert_allclose(t.HER2_membrane, t.her2_intensity * t.her2_stained_fraction,
                               rtol=1e-5, atol=1e-7)
    d = f.to_dict()
    s = json.dumps(d)
    assert len(s) < 20000 and d["params"]["seed"] == 11 and d["n_cells"] == len(t)
    assert "preset" in f.report() and f._repr_html_().startswith("<pre>")


# --------------------------------------------------------------------------- image formation
def test_noiseless_mixing_equals_abundances_times_endmembers(noiseless):
    f = noiseless
    assert f.image.dtype == np.float32 and f.image.shape == (*f.cells.shape, E.shape[0])
    np.testing.assert_allclose(f.image, f.abundances @ E.T.astype(np.float32), rtol=1e-5,
                               atol=1e-7)
    assert f.channel_names == tuple(f"C{i}" for i in range(E.shape[0]))


def test_photons_gain_offset_bleaching():
    kw = {"noise": False, "dtype": "float32", "tissue_fraction": 1.0}
    ref = field((256, 256), photons_per_unit=1.0, **kw)
    g = field((256, 256), photons_per_unit=500.0, gain_adu_per_e=2.0, offset_adu=100.0, **kw)
    np.testing.assert_allclose(g.image, 1000.0 * ref.image + 100.0, rtol=1e-5)
    b = field((256, 256), photons_per_unit=1.0, photobleaching=0.1, **kw)
    factor = 0.9 ** np.arange(E.shape[0])
    np.testing.assert_allclose(b.image, ref.image * factor, rtol=1e-5, atol=1e-9)
    np.testing.assert_array_equal(b.abundances, ref.abundances)  # truth at first exposure
    br = field((256, 256), photons_per_unit=1.0, qd_brightness=[2, 1, 1, 1, 1], **kw)
    np.testing.assert_allclose(br.abundances[..., 0], 2 * ref.abundances[..., 0])
    np.testing.assert_array_equal(br.abundances[..., 1:], ref.abundances[..., 1:])


def test_shot_and_read_noise():
    kw = {"shape": (512, 512), "photons_per_unit": 200.0, "seed": 9}
    mean = field(noise=False, dtype="float32", **kw).image.astype(np.float64)
    noisy = field(read_noise_e=3.0, dtype="float32", **kw).image.astype(np.float64)
    assert noisy.dtype == np.float64
    resid = noisy - mean
    assert abs(resid.mean()) < 0.05
    # variance = lambda + read_noise^2 (Poisson + Gaussian)
    bright = mean > 20
    ratio = resid[bright].var() / (mean[bright] + 9.0).mean()
    assert ratio == pytest.approx(1.0, rel=0.05)
    u16 = field(read_noise_e=3.0, **kw).image
    assert u16.dtype == np.uint16
    # same draws; float32 storage may round a value at .5 the other way
    diff = u16.astype(np.int64) - np.clip(np.rint(noisy), 0, 65535)
    assert np.abs(diff).max() <= 1 and (diff != 0).mean() < 1e-4


# --------------------------------------------------------------------------- slides
@pytest.mark.parametrize("junctions", ["resolved", "shared"])
def test_slide_tiles_are_independent(tmp_path, junctions):
    kw = {"preset": "her2-heterogeneous", "endmembers": E, "marker_names": MARKERS,
          "seed": 21, "tissue_fraction": 0.8, "junctions": junctions}
    shape = (600, 700)
    a = simulate_slide(tmp_path / "a.ome.zarr", shape, tile=256, **kw)
    b = simulate_slide(tmp_path / "b.ome.zarr", shape, tile=384, **kw)
    ra, rb = read_slide(a.path), read_slide(b.path)
    img_a = ra.data.compute()
    np.testing.assert_array_equal(img_a, rb.data.compute())
    assert ra.channel_names == a.channel_names and ra.pixel_size_um == 0.5
    pd.testing.assert_frame_equal(a.truth, b.truth)
    # a field is the same scene: identical pixels, labels and truth
    f = simulate_field(shape, **kw)
    np.testing.assert_array_equal(img_a, f.image)
    pd.testing.assert_frame_equal(a.truth, f.truth)
    import zarr

    root = zarr.open_group(str(a.path), mode="r")
    np.testing.assert_array_equal(root["labels/cells/0"][:], f.cells)
    np.testing.assert_array_equal(root["labels/nuclei/0"][:], f.nuclei)
    # NGFF: each label image has its image's levels (every other pixel: ids, not means)
    levels = len(root.attrs["multiscales"][0]["datasets"])
    assert levels > 1
    for name in ("cells", "nuclei"):
        ms = root[f"labels/{name}"].attrs["multiscales"][0]
        assert len(ms["datasets"]) == levels
        np.testing.assert_array_equal(root[f"labels/{name}/1"][:],
                                      getattr(f, name)[::2, ::2])
        assert root[f"labels/{name}/{levels - 1}"].shape == root[str(levels - 1)].shape[1:]
    # a region straddling tile borders rendered alone equals the full render
    r = a.render_region(200, 520, 230, 610)
    np.testing.assert_array_equal(r["cells"], f.cells[200:520, 230:610])
    np.testing.assert_array_equal(r["nuclei"], f.nuclei[200:520, 230:610])
    np.testing.assert_array_equal(r["image"], img_a[200:520, 230:610])
    np.testing.assert_array_equal(r["abundances"], f.abundances[200:520, 230:610])
    # cells crossing the 256 px tile border keep one label on both sides
    border = np.intersect1d(f.cells[255, :], f.cells[256, :])
    assert border[border > 0].size > 5
    assert root.attrs["qdmed"]["synthetic"]["seed"] == 21
    # chunk edge: the largest divisor of the tile dividing 1024, if >= 256 px, else the tile
    assert root["0"].chunks[1:] == (256, 256)
    assert zarr.open_group(str(b.path), mode="r")["0"].chunks[1:] == (384, 384)
    json.dumps(a.to_dict())
    with pytest.raises(InputError, match="region"):
        a.render_region(0, 700, 0, 10)
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temporaries


def test_membrane_thinner_than_a_pixel_is_still_drawn():
    """At 1.3 um per pixel a 1 um membrane is under a pixel: it is drawn one pixel wide
    (before: no membrane pixel at all, so HER2 vanished while the truth said 3+)."""
    f = field((256, 256), preset="SK-BR-3", noise=False, dtype="float32", pixel_size_um=1.3,
              cell_density_per_mm2=1000)
    mem = f.compartments == COMPARTMENT_CODES["membrane"]
    assert mem.mean() > 0.05
    assert f.abundances[..., MARKERS.index("HER2")][mem].mean() > 0
    assert f.truth["HER2_membrane"].notna().mean() > 0.9


def test_shared_junctions_are_one_line_showing_both_cells():
    """junctions='shared': where two cells touch, the membrane is one line of the
    membrane's width, half in each cell, and every pixel of it shows both cells' membranes
    (two membranes 10-20 nm apart are one line at light-microscope resolution)."""
    from scipy import ndimage as ndi

    kw = dict(shape=(512, 512), noise=False, dtype="float32", photons_per_unit=1.0, seed=7,
              tissue_fraction=0.8)
    res, sha = field(**kw), field(junctions="shared", **kw)
    assert sha.params["junctions"] == "shared" and res.params["junctions"] == "resolved"
    # the same cells and expression; only the membranes differ
    check_geometry(sha.nuclei, sha.cells, sha.compartments)
    np.testing.assert_array_equal(sha.cells, res.cells)
    np.testing.assert_array_equal(sha.nuclei, res.nuclei)
    for col in ("her2_category", "her2_intensity", "her2_completeness", "HER2_level"):
        pd.testing.assert_series_equal(sha.truth[col], res.truth[col])
    lab, code = sha.cells, COMPARTMENT_CODES["membrane"]
    mem_s, mem_r = sha.compartments == code, res.compartments == code
    assert not (mem_s & ~mem_r).any()  # within the resolved rings
    cross = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)
    big = np.where(lab > 0, lab, lab.max() + 1)
    touches = (lab > 0) & ((ndi.maximum_filter(lab, footprint=cross) != lab)
                           | (ndi.minimum_filter(big, footprint=cross) != lab))
    near_stroma = (lab > 0) & (ndi.minimum_filter(lab, footprint=np.ones((5, 5), bool)) == 0)
    # a pixel touching another cell is membrane; a membrane pixel touches one or lies in
    # the full ring (2 px) at stroma; between cells the line is 2 px: 1 px each side
    inner = np.zeros(lab.shape, bool)  # a neighbour beyond the image's edge is not seen
    inner[2:-2, 2:-2] = True
    assert (mem_s[inner & touches & (sha.compartments != COMPARTMENT_CODES["nucleus"])]).all()
    assert (touches | near_stroma)[mem_s & inner].all()
    junction = mem_s & ~near_stroma
    assert junction.sum() > 0.2 * mem_s.sum()  # measured 0.31 (tissue_fraction 0.8)
    assert 0.4 < mem_s.sum() / mem_r.sum() < 0.9  # junctions lose half their width (0.75)
    her2 = MARKERS.index("HER2")
    a_s, a_r = sha.abundances[..., her2], res.abundances[..., her2]
    # each junction carries both membranes: the image's total HER2 is kept (2 px of a + b
    # against 2 px of a and 2 px of b), within the pixelisation of the lines' ends
    assert a_s.sum() == pytest.approx(a_r.sum(), rel=0.05)  # measured 1.025x
    # a line under 1.4 px still takes a pixel on each side, both membranes spread over
    # them (a 0.5 um membrane, 1 px: 1.000x; 1.48x before the spread, a review)
    thin = dict(kw, membrane_thickness_um=0.5)
    assert field(junctions="shared", **thin).abundances[..., her2].sum() == pytest.approx(
        field(**thin).abundances[..., her2].sum(), rel=0.02)
    # the spread: resolved ring over shared line, straight junctions over 0-85 degrees
    from qdmed.imaging._synthetic import _junction_spread

    assert [_junction_spread(r) for r in (1.0, 1.5, 2.0, 3.0, 20.0)] == [0.5, 0.72, 1.0,
                                                                         1.1, 1.0]
    # thicker membranes: the line carries the rings' signal (measured 1.05x at 3 px and
    # 1.07x at 4 px)
    for um in (1.5, 2.0):
        thick = dict(kw, membrane_thickness_um=um)
        assert field(junctions="shared", **thick).abundances[..., her2].sum() == \
            pytest.approx(field(**thick).abundances[..., her2].sum(), rel=0.1)
    # a 0 cell's side of a junction with a stained cell shows that cell's membrane: its
    # truth's membrane mean is above 0 here, exactly 0 with resolved rings
    t_s, t_r = (f.truth.set_index("cell_id") for f in (sha, res))
    zero = t_s.index[t_s.her2_category == "0"]
    assert (t_r.loc[zero, "HER2_membrane"] == 0).all()
    lvl = t_s.her2_intensity.reindex(np.arange(lab.max() + 1), fill_value=0).to_numpy()
    cat = t_s.her2_category.reindex(np.arange(lab.max() + 1), fill_value="").to_numpy()
    # a 0 cell's junction pixels facing one stained cell only (no third cell or stroma
    # within 2 px, no end of its stained arc within 3 px) read that cell's level
    nb = ndi.maximum_filter(np.where(junction & (a_r > 0), lab, 0), footprint=cross)
    two = inner.copy()
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            q = np.roll(lab, (dy, dx), axis=(0, 1))
            two &= (q == lab) | (q == nb)
    arc_end = ndi.binary_dilation(mem_r & (a_r == 0) & (cat[lab] != "0"), iterations=3)
    pick = junction & (cat[lab] == "0") & (nb > 0) & two & ~arc_end
    assert pick.sum() > 50
    np.testing.assert_allclose(a_s[pick], lvl[nb[pick]], rtol=1e-5)
    assert (t_s.loc[zero, "HER2_membrane"] > 0).mean() > 0.2  # measured 0.36


def test_custom_presets_are_checked():
    from qdmed.imaging._synthetic import MarkerLevel, Preset

    def preset(mix, **markers):
        return Preset("mine", "tumour", "d", "c", None, mix,
                      {k: MarkerLevel(*v) for k, v in markers.items()})

    ok = field((64, 64), preset=preset({"0": 0.5, "3+": 0.5}, ER=(0.5, 0.5, 0.3)))
    assert set(ok.truth["her2_category"]) <= {"0", "3+"}
    for mix, markers, match in (({"0": 0.5, "1+": 0.3}, {}, "sum to 1"),
                                ({"0": -1, "3+": 2}, {}, ">= 0"),
                                ({"4+": 1.0}, {}, "unknown HER2 categories"),
                                ({"0": 1.0}, {"FOO": (0.5, 0.5, 0.3)}, "unknown markers"),
                                ({"0": 1.0}, {"ER": (1.5, 0.5, 0.3)}, "positive_fraction")):
        with pytest.raises(InputError, match=match):
            field((64, 64), preset=preset(mix, **markers))


def test_bit_depth_travels_with_an_ome_zarr(tmp_path):
    """A 12-bit detector simulated to OME-Zarr is read back with its 4095 ceiling (NGFF has
    no field: qdmed records it), as an OME-TIFF carries SignificantBits."""
    from qdmed.imaging import write_ome_zarr

    s = simulate_slide(tmp_path / "s.ome.zarr", (128, 128), preset="BT474", endmembers=E,
                       marker_names=MARKERS, bit_depth=12, photons_per_unit=20000.0, seed=1)
    r = read_slide(s.path)
    assert r.significant_bits == 12 and int(r.data.max().compute()) == 4095
    img = np.asarray(r.data)
    w = read_slide(write_ome_zarr(tmp_path / "w.ome.zarr", img, significant_bits=12))
    assert w.significant_bits == 12
    assert read_slide(write_ome_zarr(tmp_path / "x.ome.zarr", img)).significant_bits is None
    with pytest.raises(InputError, match="significant_bits must be an integer from 1"):
        write_ome_zarr(tmp_path / "y.ome.zarr", img, significant_bits=17)


def test_a_scene_too_large_to_hold_its_cells_is_refused(tmp_path):
    # --size 100000000 grew 130 MB/s until killed (a review): refused up front, unwritten
    from qdmed.errors import InputError
    from qdmed.imaging import breast_panel_5plex, simulate_slide

    p = breast_panel_5plex()
    with pytest.raises(InputError, match=r"would hold ~7.5e\+12 cells"):
        simulate_slide(tmp_path / "x.ome.zarr", (10 ** 8, 10 ** 8), preset="BT474",
                       endmembers=p.endmembers, marker_names=list(p.markers))
    assert not (tmp_path / "x.ome.zarr").exists()
