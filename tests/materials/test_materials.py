"""The materials registry: every value has a source; the required properties exist."""

import pytest

from qdmed.errors import UnknownNameError
from qdmed.materials import get_material, list_materials

ISSUE_MATERIALS = ["CdSe", "CdTe", "CdS", "ZnS", "ZnSe", "InP", "InAs", "PbS", "PbSe", "CuInS2",
                   "Si", "GaAs"]


def test_all_issue_materials_present():
    assert set(ISSUE_MATERIALS) <= set(list_materials())


@pytest.mark.parametrize("sym", ISSUE_MATERIALS)
def test_every_value_cites_a_source(sym):
    m = get_material(sym)
    for p in m.properties.values():
        assert p.source.citation
        assert p.tag in {"P", "C", "C1", "T", "E", "M"}
        if p.range:
            assert p.range[0] <= p.value <= p.range[1]
    assert m.molar_mass_g_mol > 0
    assert m.density_g_cm3 > 0


def test_values_used_by_validation_rows():
    # qd-physics.md §2.2 worked example parameters for CdSe
    m = get_material("CdSe")
    assert (m.band_gap_eV, m.electron_mass_m0, m.hole_mass_m0, m.dielectric_static) == (
        1.74, 0.13, 0.45, 9.5)
    assert get_material("PbS").band_gap_eV == 0.41
    assert get_material("InP").band_gap_eV == pytest.approx(1.344)


def test_molar_mass_and_fraction():
    m = get_material("CdSe")
    assert m.molar_mass_g_mol == pytest.approx(112.41 + 78.971)
    assert m.mass_fraction("Cd") == pytest.approx(112.41 / (112.41 + 78.971))
    assert m.heavy_metals == ("Cd",)


def test_case_insensitive_and_unknown():
    assert get_material("cdse").symbol == "CdSe"
    with pytest.raises(UnknownNameError, match="accepted"):
        get_material("Mithril")
