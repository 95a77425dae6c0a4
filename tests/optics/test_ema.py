"""Brus equation (rows 27-29 of qd-physics.md §7) and the core/shell effective-mass model."""

import pytest

from qdmed.errors import InputError
from qdmed.optics import bohr_radius_nm, brus_gap_ev, bulk_alignment, core_shell_gap, peak_from_size


def test_row27_brus_cdse_4nm_terms():
    # Brus 1984 / Kayanuma 1988 coefficients 1.786 and 0.248; E_g 1.74, me 0.13, mh 0.45, eps 9.5
    r = brus_gap_ev("CdSe", 4.0)
    assert r.confinement_eV == pytest.approx(0.932, rel=1e-3)
    assert r.coulomb_eV == pytest.approx(0.135, rel=3e-3)  # table gives 3 decimals
    assert r.correlation_eV == pytest.approx(0.004, abs=5e-4)
    assert r.gap_eV == pytest.approx(2.533, rel=1e-3)
    assert r.peak_nm == pytest.approx(489, abs=0.5)


def test_row28_brus_fails_against_experiment_documented():
    # Brus 3.21 eV vs Yu 2.26 eV at d = 3 nm: the model is known to overestimate by ~0.95 eV
    brus = brus_gap_ev("CdSe", 3.0).gap_eV
    yu = 1239.84 / peak_from_size("CdSe", 3.0)
    assert brus == pytest.approx(3.21, abs=0.01)
    assert brus - yu == pytest.approx(0.95, abs=0.02)


def test_row29_bohr_radius():
    assert bohr_radius_nm("CdSe") == pytest.approx(4.98, rel=1e-3)


def test_brus_public_script_variant():
    r = brus_gap_ev("CdSe", 4.0, coulomb_coeff=1.8, rydberg_coeff=0.0)
    assert r.correlation_eV == 0.0
    assert r.coulomb_eV == pytest.approx(0.135 * 1.8 / 1.786, rel=3e-3)


def test_core_only_limit_reduces_to_brus_terms():
    # with no shell and a (nearly) infinite barrier, the solver must give the particle-in-a-
    # sphere confinement and a 1.786 e^2/(4 pi eps0 eps R) Coulomb term; the residual 1.5 %
    # comes from the finite 1e4 eV barrier with the free-electron mass outside.
    r = core_shell_gap("CdSe", 4.0, outer_barrier_eV=1e4)
    b = brus_gap_ev("CdSe", 4.0)
    assert r.electron_level_eV - r.hole_level_eV - 1.74 == pytest.approx(b.confinement_eV, rel=0.015)
    assert r.coulomb_eV == pytest.approx(b.coulomb_eV, rel=0.01)


@pytest.mark.parametrize(("core", "shell", "expected"), [
    ("CdSe", "ZnS", "type I"), ("InP", "ZnS", "type I"), ("CdSe", "CdS", "quasi-type II"),
    ("InP", "CdS", "type II"), ("CdTe", "CdSe", "type II"),
])
def test_alignment_classification(core, shell, expected):
    # expected classes: reference document §5 (Dennis et al. Nano Lett. 2012 for InP/CdS)
    r = core_shell_gap(core, 3.5, shell, 1.5)
    assert r.alignment == expected
    assert r.gap_eV < core_shell_gap(core, 3.5).gap_eV  # a shell always red-shifts


def test_bulk_alignment_offsets_from_affinities():
    label, dcb, dvb = bulk_alignment("CdSe", "ZnS")
    assert label == "type I" and dcb > 0.5 and dvb > 0.5
    label, dcb, _ = bulk_alignment("InP", "CdS")
    assert label == "type II" and dcb == pytest.approx(-0.41, abs=0.05)  # PyNCband uses -0.39


def test_bad_inputs():
    with pytest.raises(InputError):
        core_shell_gap("CdSe", -1.0)
    with pytest.raises(InputError):
        core_shell_gap("CdSe", 3.0, None, 1.0)
