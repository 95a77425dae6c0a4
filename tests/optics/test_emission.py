"""Emission, linewidth conversions (row 31), spectra and the Qdot catalog (rows 32-33)."""

import numpy as np
import pytest

from qdmed.constants import fwhm_mev_to_nm, fwhm_nm_to_mev
from qdmed.errors import InputError, OutOfRangeError, UnknownNameError
from qdmed.optics import (
    Spectrum,
    brightness,
    core_for_emission,
    emission_spectrum,
    ensemble_fwhm_meV,
    get_qdot,
    predict_emission,
    qdot_catalog,
)


def test_row31_fwhm_conversion():
    # 30 nm at 525 nm = 135 meV (1 meV tolerance); §3.3 also 25 nm @ 605 = 85, 80 nm @ 800 = 155
    assert fwhm_nm_to_mev(30, 525) == pytest.approx(135, abs=1)
    assert fwhm_nm_to_mev(25, 605) == pytest.approx(85, abs=1)
    assert fwhm_nm_to_mev(80, 800) == pytest.approx(155, abs=1)
    assert fwhm_mev_to_nm(fwhm_nm_to_mev(30, 525), 525) == pytest.approx(30, rel=1e-9)


def test_row32_qdot_lookup():
    q = get_qdot("Qdot 655")
    assert q.emission_peak_nm == 655 and q.excitation_nm == 405
    assert get_qdot("qdot605").name == "Qdot 605"
    assert len(qdot_catalog()) == 9
    with pytest.raises(UnknownNameError):
        get_qdot("Qdot 999")


def test_row33_qdot_photophysics_from_gaigalas():
    # Gaigalas 2014: tau ~26 ns (~600 nm) and ~150 ns (~800 nm), +/-20 %; QY 0.4-0.9
    assert get_qdot("Qdot 605").lifetime_ns == pytest.approx(26, rel=0.2)
    assert get_qdot("Qdot 800").lifetime_ns == pytest.approx(150, rel=0.2)
    assert get_qdot("Qdot 655").quantum_yield_range == (0.4, 0.9)


def test_emission_spectrum_lineshape():
    s = emission_spectrum(605, 25, wavelength_nm=np.arange(450, 800, 0.1))
    assert s.integral() == pytest.approx(1.0, rel=1e-4)
    # the per-nm curve (what a spectrometer records) peaks at the given emission maximum
    assert s.peak_nm == pytest.approx(605.0, abs=0.05)
    # symmetric two-sided conversion of the width: the per-nm FWHM is within 0.35 %
    assert s.fwhm_nm == pytest.approx(25, rel=0.0035)


def test_emission_is_gaussian_in_energy_after_the_jacobian():
    # Mooney & Kambhampati, J Phys Chem Lett 2013 (doi 10.1021/jz401508t): an emission
    # spectrum per nm times lambda^2 / hc is the spectrum per unit energy. That one is a
    # Gaussian of the given FWHM, centred at E_p - 2 sigma^2 / E_p (E_p = hc / peak), the
    # centre whose per-nm curve has its maximum at the peak.
    from qdmed.constants import HC_EV_NM
    from qdmed.optics import gaussian_in_energy

    wl = np.arange(600.0, 1100.0, 0.01)
    per_nm = gaussian_in_energy(wl, 800.0, 150.0)
    assert wl[np.argmax(per_nm)] == pytest.approx(800.0, abs=0.01)
    e = HC_EV_NM / wl
    per_ev = per_nm * wl**2 / HC_EV_NM
    sigma = 0.150 / (2 * np.sqrt(2 * np.log(2)))
    e0 = HC_EV_NM / 800.0 - 2 * sigma**2 / (HC_EV_NM / 800.0)
    assert e[np.argmax(per_ev)] == pytest.approx(e0, abs=2e-5)
    half = e[per_ev >= per_ev.max() / 2]
    assert half.max() - half.min() == pytest.approx(0.150, abs=1e-4)
    with pytest.raises(InputError, match="cannot peak"):
        gaussian_in_energy(wl, 800.0, 5000.0)


def test_catalog_spectra_peak_at_the_vendor_maximum():
    for name, q in qdot_catalog().items():
        s = q.emission_spectrum(np.arange(450.0, 1000.0, 0.02))
        assert s.peak_nm == pytest.approx(q.emission_peak_nm, abs=0.02), name


def test_spectrum_validation():
    with pytest.raises(InputError):
        Spectrum([500, 400], [1, 2])
    with pytest.raises(InputError):
        Spectrum([400, 500], [1, np.nan])
    s = Spectrum([400, 500, 600], [0, 1, 0])
    with pytest.raises(ValueError):
        s.values[0] = 3  # immutable


def test_predicted_emission_is_red_of_absorption_and_shell_red_shifts():
    bare = predict_emission("CdSe", 4.0)
    coated = predict_emission("CdSe", 4.0, shell="ZnS", shell_thickness_nm=0.9)
    assert bare.emission_peak_nm > bare.absorption_peak_nm
    assert coated.absorption_peak_nm > bare.absorption_peak_nm
    # ZnS on 4 nm CdSe: a few nm (reference §5: "a few nm to ~10 nm")
    assert 0.5 < coated.absorption_peak_nm - bare.absorption_peak_nm < 10
    assert bare.stokes_source.startswith("M")


def test_core_for_emission_roundtrip_and_range():
    p = core_for_emission("CdSe", 605, shell="ZnS", shell_thickness_nm=0.9)
    assert p.emission_peak_nm == pytest.approx(605, abs=0.01)
    with pytest.raises(OutOfRangeError, match="reaches"):
        core_for_emission("CdSe", 800)


def test_linewidth_grows_with_dispersion():
    a = ensemble_fwhm_meV("CdSe", 4.0, 0.05)
    b = ensemble_fwhm_meV("CdSe", 4.0, 0.10)
    assert b == pytest.approx(2 * a, rel=1e-6)
    assert ensemble_fwhm_meV("CdSe", 4.0, 0.05, homogeneous_fwhm_meV=60) == pytest.approx(
        np.hypot(a, 60))
    with pytest.raises(InputError):
        ensemble_fwhm_meV("CdSe", 4.0, -0.1)


def test_brightness():
    assert brightness(1e5, 0.5) == 5e4
    with pytest.raises(InputError):
        brightness(1e5, 1.5)


def test_core_for_emission_handles_non_monotonic_emission():
    # InP/CdS: the emission falls with core size over part of the range (shell and Stokes
    # shifts shrink faster than the core gap); targets inside the reachable span must solve
    from qdmed.optics import get_curve

    c = get_curve("InP")
    lo, hi = c.diameter_range_nm
    ems = [predict_emission("InP", d, shell="CdS", shell_thickness_nm=1.0).emission_peak_nm
           for d in np.linspace(lo, hi, 21)]
    target = 0.5 * (min(ems) + max(ems))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = core_for_emission("InP", target, shell="CdS", shell_thickness_nm=1.0)
    assert p.emission_peak_nm == pytest.approx(target, abs=0.01)


def test_inp_zns_shell_shift_is_flagged():
    p = predict_emission("InP", 1.5, shell="ZnS", shell_thickness_nm=0.6)
    assert any("shell shift" in w for w in p.warnings)
    assert not predict_emission("CdSe", 4.0, shell="ZnS", shell_thickness_nm=0.9).warnings
