"""Probe design: rows 34-38, 40, 41 of qd-physics.md §7 (Choi 2007/2010, Stokes-Einstein,
PEG Flory radius) and the file format."""

import pytest

from qdmed.errors import FileFormatError, InputError, UnknownNameError
from qdmed.probe import (
    RENAL_THRESHOLD_NM,
    Probe,
    diffusion_coefficient_um2_s,
    flory_radius_nm,
    peg_layer,
    water_viscosity_mPa_s,
)


def test_row40_stokes_einstein():
    # d_H = 5.5 nm in water at 25 degC: 89.2 um^2/s (eta = 0.890 mPa s)
    assert water_viscosity_mPa_s(25.0) == pytest.approx(0.890, rel=1e-3)
    assert diffusion_coefficient_um2_s(5.5, temperature_C=25.0) == pytest.approx(89.2, rel=1e-3)
    assert diffusion_coefficient_um2_s(10.0, temperature_C=25.0) == pytest.approx(49.1, rel=1e-3)


def test_row41_peg_flory_radius():
    # the table gives 3 significant figures: half a unit in the last digit
    assert flory_radius_nm(2000) == pytest.approx(3.45, abs=0.005)
    assert flory_radius_nm(5000) == pytest.approx(5.99, abs=0.005)


def test_peg_regimes():
    assert peg_layer(2000, 0.01).regime == "mushroom"
    brush = peg_layer(2000, 1.0)
    assert brush.regime == "brush" and brush.thickness_nm > flory_radius_nm(2000)


def test_row34_small_zwitterionic_probe_is_renally_cleared():
    # Choi 2007: final HD 4.5 nm with a zwitterionic (cysteine) coat -> rapid urinary excretion
    p = Probe("CdSe", 2.5, shell="ZnS", shell_thickness_nm=0.4, coating="cysteine")
    assert p.hydrodynamic_diameter_nm == pytest.approx(4.5, abs=0.05)
    assert p.renal_clearable


def test_row35_threshold_is_explicit_and_strict():
    assert RENAL_THRESHOLD_NM == 5.5
    p = Probe("CdSe", 3.3, shell="ZnS", shell_thickness_nm=0.4, coating="cysteine")
    assert p.hydrodynamic_diameter_nm == pytest.approx(5.3, abs=1e-9)
    assert p.renal_clearable
    q = p.with_(core_diameter_nm=3.5)
    assert q.hydrodynamic_diameter_nm == pytest.approx(5.5) and not q.renal_clearable


def test_row36_large_peg_probe_not_cleared():
    # Gao 2010: QD800-PEG with HD 15.9 nm is not renally cleared
    p = Probe("CdSe", 5.0, shell="ZnS", shell_thickness_nm=1.0, coating="dhla-peg", peg_mw=2000)
    assert p.hydrodynamic_diameter_nm > 15
    assert not p.renal_clearable
    assert any("not renally cleared" in f for f in p.flags())


def test_row37_protein_corona_on_non_zwitterionic_surface():
    # Choi 2007: HD0 = 5 nm, non-zwitterionic coat, serum: HD grows by > 15 nm
    p = Probe("CdSe", 2.8, shell="ZnS", shell_thickness_nm=0.4, coating="mpa")
    assert p.hydrodynamic_diameter_nm == pytest.approx(5.0, abs=0.01)
    assert p.serum_hydrodynamic_diameter_nm - p.hydrodynamic_diameter_nm >= 15
    assert not p.renal_clearable


def test_row38_ligand_budget_reports_choi2010_limit():
    p = Probe("CdSe", 2.5, shell="ZnS", shell_thickness_nm=0.4, coating="cysteine")
    b = p.ligand_budget("folic-acid")
    assert b["choi2010_limit"] == [5, 10]
    assert b["model_max_count"] >= 1
    many = p.with_(ligands=(("folic-acid", 12),))
    assert any("5-10" in f for f in many.flags())
    # a target named without anything on the surface to bind it is said
    bare = p.with_(targets=("EGFR",))
    assert any("targets EGFR but carries no ligand" in f for f in bare.flags())
    assert not any("carries no ligand" in f for f in many.with_(targets=("FR",)).flags())


def test_heavy_metal_dose():
    p = Probe("CdSe", 4.0)
    hm = p.heavy_metals(dose_mg_per_kg=2.0)
    frac = hm["elements"]["Cd"]["mass_fraction"]
    assert frac == pytest.approx(112.41 / (112.41 + 78.971))
    assert hm["elements"]["Cd"]["ug_per_kg"] == pytest.approx(2000 * frac)
    assert any("without a passivating shell" in f for f in p.flags())
    inp = Probe("InP", 1.8, shell="ZnS", shell_thickness_nm=0.6)
    assert set(inp.heavy_metals()["elements"]) == {"In"}


def test_igg_probe_is_15_to_40_nm():
    # reference §4.4: a QD with several IgGs reaches HD ~15-30 nm; our protrusion rule with a
    # PEG2000 brush lands in the same range or slightly above (documented heuristic)
    p = Probe.from_emission("CdSe", 605, shell="ZnS", shell_thickness_nm=0.9,
                            coating="dhla-peg", peg_mw=2000, ligands=(("igg", 2),))
    assert 15 < p.hydrodynamic_diameter_nm < 45
    assert p.emission().emission_peak_nm == pytest.approx(605, abs=0.01)


def test_yaml_roundtrip(tmp_path):
    p = Probe.from_emission("CdSe", 605, shell="ZnS", shell_thickness_nm=0.9,
                            coating="dhla-peg", peg_mw=2000, ligands=(("igg", 2),),
                            targets=("HER2",), name="her2")
    f = p.to_file(tmp_path / "p.yaml")
    q = Probe.from_file(f)
    assert q.core_diameter_nm == pytest.approx(p.core_diameter_nm, rel=1e-6)
    assert q.ligands == p.ligands and q.targets == ("HER2",) and q.peg_mw == 2000
    g = p.to_file(tmp_path / "p.json")
    assert Probe.from_file(g).shell == "ZnS"


def test_grafting_density_round_trips_with_the_default_peg(tmp_path):
    # a density given for a coating's default PEG was dropped on writing (12.8 -> 10.8 nm)
    f = tmp_path / "g.yaml"
    f.write_text("core: {material: CdSe, diameter_nm: 4}\n"
                 "coating: {name: dhla-peg, grafting_density_per_nm2: 1.5}\n")
    p = Probe.from_file(f)
    q = Probe.from_file(p.to_file(tmp_path / "g2.yaml"))
    assert q.peg_grafting_density_per_nm2 == 1.5
    assert q.hydrodynamic_diameter_nm == pytest.approx(p.hydrodynamic_diameter_nm, rel=1e-9)


def test_yaml_emission_and_monolayers(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("core: {material: CdSe, emission_nm: 600}\nshell: {material: ZnS, monolayers: 3}\n")
    p = Probe.from_file(f)
    assert p.shell_thickness_nm == pytest.approx(3 * 0.5409 / 3**0.5, rel=1e-2)
    # a thickness from monolayers (a numpy number) writes as plain YAML and reads back
    q = Probe.from_file(p.to_file(tmp_path / "again.yaml"))
    assert q.shell_thickness_nm == pytest.approx(p.shell_thickness_nm, rel=1e-6)


@pytest.mark.parametrize(("text", "match"), [
    ("core: {material: CdSe\n", "line"),
    ("core: CdSe\n", "core"),
    ("core: {material: CdSe, diameter_nm: 4}\ncolour: red\n", "unknown field"),
    ("- 1\n- 2\n", "mapping"),
    # misspelt or conflicting keys inside a field were ignored
    ("core: {material: CdSe, diameter_nm: 4, emission_nm: 650}\n", "core: give diameter_nm or"),
    ("core: {material: CdSe, diameter: 4}\n", "core: unknown field"),
    ("core: {material: CdSe, diameter_nm: 4}\nshell: {material: ZnS, thickness_nm: 0.9, "
     "monolayers: 5}\n", "shell: give thickness_nm or monolayers, not both"),
    ("core: {material: CdSe, diameter_nm: 4}\ncoating: {name: dhla-peg, pegmw: 2000}\n",
     "coating: unknown field"),
    ("core: {material: CdSe, diameter_nm: 4}\nligands: [{name: igg, cout: 2}]\n",
     r"ligands\[0\]: unknown field"),
])
def test_malformed_yaml(tmp_path, text, match):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(FileFormatError, match=match):
        Probe.from_file(f)


_CORE = "core: {material: CdSe, diameter_nm: 4}\n"


@pytest.mark.parametrize(("text", "match"), [
    # a review: YAML's yes was read as a 1 nm core, 2.5 antibodies as 2, and 1e9 (text to
    # YAML 1.1) ended in an internal error; a 1e308 nm shell said "hydrodynamic_diameter_nm
    # must be > 0, got inf", without the file
    ("core: {material: CdSe, diameter_nm: yes}\n",
     r"bad.yaml: core.diameter_nm must be a number of nm > 0 and <= 100; got True"),
    ("core: {material: CdSe, diameter_nm: '4'}\n", r"got '4' \(text, not a number"),
    ("core: {material: CdSe, emission_nm: 5000.0}\n",
     r"core.emission_nm must be a number of nm from 300 to 3000"),
    (_CORE + "ligands: [{name: igg, count: 2.5}]\n",
     r"ligands\[0\].count must be a whole number from 0 to 10000; got 2.5"),
    (_CORE + "ligands: [{name: igg, count: 1e9}]\n",
     r"got '1e9' \(text, not a number: YAML reads 1e9 and 1.0e9 as text, 1.0e\+9"),
    (_CORE + "shell: {material: ZnS, thickness_nm: 1.0e+308}\n",
     r"shell.thickness_nm must be a number of nm from 0 to 50; got 1e\+308"),
    (_CORE + "shell: {material: ZnS, monolayers: -1}\n", r"shell.monolayers must be"),
    (_CORE + "coating: {name: dhla-peg, peg_mw: true}\n", r"coating.peg_mw must be a number"),
    (_CORE + "coating: {name: dhla-peg, grafting_density_per_nm2: 0}\n",
     r"coating.grafting_density_per_nm2 must be a number of chains/nm\^2 > 0"),
    (_CORE + "quantum_yield: yes\n", r"bad.yaml: quantum_yield must be a number from 0 to 1"),
    (_CORE + "size_dispersion: .nan\n", r"bad.yaml: size_dispersion must be a number"),
    (_CORE + "stokes_shift_meV: -3\n", r"bad.yaml: stokes_shift_meV must be"),
    (_CORE + "targets: [yes]\n", r"bad.yaml: targets must be a list of marker names"),
    (_CORE + "ligands: [{name: igg, target: 5}]\n", r"ligands\[0\].target must be a marker"),
    (_CORE + "ligands: igg\n", r"bad.yaml: ligands must be a list"),
    (_CORE + "name: yes\n", r"bad.yaml: name must be text; got True"),
    (_CORE + "extrapolate: 'no'\n", r"bad.yaml: extrapolate must be true or false"),
    # an integer of 400 digits is no float: it was an internal OverflowError
    (_CORE + "ligands: [{name: igg, count: " + "9" * 400 + "}]\n",
     r"ligands\[0\].count must be a whole number from 0 to 10000; got 9{24}\.\.\. \(400 "),
    (_CORE + "ligands: [{name: igg, target: [HER2]}]\n",
     r"ligands\[0\].target must be a marker name \(text\); got \['HER2'\]"),
])
def test_probe_file_numbers_and_names_are_typed_and_bounded(tmp_path, text, match):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(FileFormatError, match=match) as err:
        Probe.from_file(f)
    assert str(err.value).count("bad.yaml") == 1, err.value


def test_bad_values():
    with pytest.raises(InputError):
        Probe("CdSe", -1.0)
    with pytest.raises(InputError, match="core_diameter_nm must be a number"):
        Probe("CdSe", True)
    with pytest.raises(InputError, match="ligand count of 'igg' must be a whole number"):
        Probe("CdSe", 4.0, ligands=(("igg", 2.5),))
    assert Probe("CdSe", 4.0, ligands=(("igg", 2.0),)).ligands == (("igg", 2),)
    with pytest.raises(InputError, match="shell_thickness_nm must be a number of nm from 0"):
        Probe("CdSe", 4.0, shell="ZnS", shell_thickness_nm=1e308)
    # checked before the size is solved for (NaN ended in the solver's own message)
    with pytest.raises(InputError, match="stokes_shift_meV must be a number of meV"):
        Probe.from_emission("CdSe", 605, stokes_shift_meV=float("nan"))
    # an empty target was written to a file that could not be read back
    with pytest.raises(InputError, match="targets must be marker names"):
        Probe("CdSe", 4.0, targets=("",))


def test_an_extrapolated_probe_reads_back(tmp_path):
    # to_dict left extrapolate out: the file of a 9 nm CdSe core could not be read back
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = Probe("CdSe", 9.0, extrapolate=True)
        p.to_file(tmp_path / "p.yaml")
        q = Probe.from_file(tmp_path / "p.yaml")
    assert q.extrapolate and q.core_diameter_nm == 9.0
    with pytest.raises(UnknownNameError):
        Probe("CdSe", 4.0, coating="teflon")
    with pytest.raises(UnknownNameError):
        Probe("CdSe", 4.0, ligands=(("unicorn", 1),))
    with pytest.raises(InputError):
        Probe("CdSe", 4.0, quantum_yield=2)
    with pytest.raises(InputError):
        Probe("CdSe", 4.0, shell_thickness_nm=1.0)


def test_peg_without_named_coating_resists_corona():
    p = Probe("CdSe", 3.0, peg_mw=2000)
    assert p.resists_protein_adsorption
    assert p.serum_hydrodynamic_diameter_nm == p.hydrodynamic_diameter_nm


def test_sheet_plot_draws_on_given_axes():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sheet = Probe("CdSe", 4.0, shell="ZnS", shell_thickness_nm=0.9).sheet()
    fig, axes = plt.subplots(1, 2)
    assert sheet.plot(axes) is fig  # ax was accepted and never read before
    assert axes[0].lines and axes[1].patches
    assert len(sheet.plot().axes) == 2
    with pytest.raises(InputError, match="two matplotlib Axes"):
        sheet.plot(axes[:1])
    plt.close("all")
