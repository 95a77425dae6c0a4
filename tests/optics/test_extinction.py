"""Extinction and concentration: validation rows 6, 7, 9, 12, 14, 18, 43 of qd-physics.md §7
(formula-evaluated [E] rows, rtol 1e-3 as stated there)."""

import pytest

from qdmed.errors import InputError, UnknownNameError
from qdmed.optics import (
    concentration_from_absorbance,
    extinction_at,
    extinction_first_exciton,
    extinction_from_volume,
    extinction_models,
    mass_concentration_mg_per_ml,
    particles_per_ml,
)


def test_row6_cdse_yu_power_and_energy_forms():
    assert extinction_first_exciton("CdSe", diameter_nm=3.040) == pytest.approx(1.115e5, rel=1e-3)
    assert extinction_first_exciton("CdSe", peak_nm=550, model="yu2003-energy") == pytest.approx(
        1.014e5, rel=1e-3)


def test_row7_concentration_cdse():
    eps = extinction_first_exciton("CdSe", peak_nm=550)
    assert concentration_from_absorbance(0.10, eps, path_length_cm=1.0) * 1e6 == pytest.approx(
        0.897, rel=1e-3)


def test_row9_cdte_and_row12_cds():
    assert extinction_first_exciton("CdTe", peak_nm=650) == pytest.approx(2.257e5, rel=1e-3)
    assert extinction_first_exciton("CdS", peak_nm=400) == pytest.approx(3.553e5, rel=1e-3)
    # the transition-energy forms: 2.23e5 and 3.589e5 (3 significant figures given)
    assert extinction_first_exciton("CdTe", peak_nm=650, model="yu2003-energy") == pytest.approx(
        2.23e5, rel=5e-3)
    assert extinction_first_exciton("CdS", peak_nm=400, model="yu2003-energy") == pytest.approx(
        3.589e5, rel=1e-3)


def test_row14_jasieniak_linewidth_normalisation():
    kw = dict(peak_nm=550, model="jasieniak2009", sizing_model="jasieniak2009")
    assert extinction_first_exciton("CdSe", hwhm_ev=0.06, **kw) == pytest.approx(1.906e5, rel=1e-3)
    assert extinction_first_exciton("CdSe", hwhm_ev=0.08, **kw) == pytest.approx(1.430e5, rel=1e-3)
    # the Yu relations do not depend on the linewidth: a linewidth given to them is refused,
    # not ignored
    with pytest.raises(InputError, match="hwhm_ev is used only by jasieniak2009-CdSe"):
        extinction_first_exciton("CdSe", peak_nm=550, hwhm_ev=0.08)
    with pytest.raises(InputError, match="sizing_model 'peng1998' would not be used"):
        extinction_first_exciton("InAs", diameter_nm=4.0, sizing_model="peng1998")
    with pytest.raises(InputError, match="hwhm_ev must be positive"):
        extinction_first_exciton("CdSe", hwhm_ev=0.0, **kw)


def test_row18_pbs_400nm_and_row43_inas():
    assert extinction_at("PbS", 400, diameter_nm=5.0) == pytest.approx(2.91e6, rel=1e-3)
    # InAs: sigma = 3.15e-16 R^1.28 cm^2 at R = 2 nm -> ~2.0e5 M^-1 cm^-1 (2 s.f.)
    assert extinction_first_exciton("InAs", diameter_nm=4.0) == pytest.approx(2.0e5, rel=1e-2)


def test_concentration_helpers():
    c = 1e-6
    assert particles_per_ml(c) == pytest.approx(6.02214076e14)
    # 4 nm CdSe at 5.81 g/cm3: 1.947e-19 g per particle
    assert mass_concentration_mg_per_ml(c, 4.0, 5.81) == pytest.approx(
        6.02214076e14 * 3.14159265 / 6 * (4e-7) ** 3 * 5.81 * 1000, rel=1e-6)


def test_volume_extinction_consistency_with_moreels():
    # Moreels' eps_400 = 2.33e4 d^3 corresponds to mu_i = 2.33e4 * 6000 ln10 / (pi N_A 1e-21)
    import numpy as np

    mu = 2.33e4 * 6 * 1000 * np.log(10) / (np.pi * 6.02214076e23 * 1e-21)
    assert extinction_from_volume(5.0, mu) == pytest.approx(2.33e4 * 125, rel=1e-9)


def test_errors():
    with pytest.raises(InputError):
        extinction_first_exciton("CdSe", peak_nm=550, diameter_nm=3)
    with pytest.raises(UnknownNameError):
        extinction_first_exciton("GaAs", diameter_nm=3)
    with pytest.raises(UnknownNameError, match="400 nm"):
        extinction_at("PbS", 500, diameter_nm=5)
    with pytest.raises(InputError):
        concentration_from_absorbance(-0.1, 1e5)


def test_registry_entries_cite_sources():
    for m in extinction_models().values():
        assert m.reference.citation
        assert m.tag in {"P", "C", "C1", "T", "E", "M"}
