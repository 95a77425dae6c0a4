"""Panel design: which labels, for which markers, under which excitation and detection.

References: the noise gain and condition number are properties of least squares (a column
orthogonal to the others has noise gain 1; scaling a column changes neither its noise gain
nor the separability of the normalised spectra); the excitation rules follow the qd-physics
reference (section 3.1: a QD is excited below its emission band) and DAPI's UV absorption
(maximum 358 nm, used with UV or violet lasers)."""

import itertools

import numpy as np
import pytest

from qdmed.errors import InputError
from qdmed.imaging import Panel, breast_panel_5plex, spectral_channels
from qdmed.imaging._panel import (
    autofluorescence_spectrum,
    condition_number,
    design_panel,
    mixing_matrix,
    noise_gains,
)
from qdmed.optics import default_grid, emission_spectrum, get_qdot
from qdmed.probe import Probe

QDOTS = ["Qdot 525", "Qdot 545", "Qdot 565", "Qdot 585", "Qdot 605", "Qdot 625", "Qdot 655",
         "Qdot 705", "Qdot 800"]
CH = spectral_channels(8, 440, 740)


def test_noise_gain_and_condition_number_of_known_matrices():
    eye = np.eye(4)[:, :3] * [1.0, 5.0, 0.2]  # orthogonal columns of any scale
    np.testing.assert_allclose(noise_gains(eye), 1.0)
    assert condition_number(eye) == pytest.approx(1.0)
    two = np.array([[1.0, 1.0], [0.0, 0.1]])  # nearly parallel columns
    cos = 1 / np.sqrt(1.01)
    np.testing.assert_allclose(noise_gains(two), [1 / np.sqrt(1 - cos**2)] * 2)
    assert condition_number(two) == pytest.approx(np.sqrt((1 + cos) / (1 - cos)))
    dead = np.array([[1.0, 0.0], [0.0, 0.0]])
    assert noise_gains(dead).tolist() == [1.0, np.inf] and condition_number(dead) == np.inf


def test_brightness_never_counts_against_a_label():
    """Scaling a column is brightness, not separability: the condition number and noise
    gains of the panel do not change, and a label chosen at brightness 1 stays chosen when
    brighter."""
    base = design_panel(["DAPI", "HER2", "ER", "PR"], QDOTS, CH, fixed={"DAPI": "DAPI"})
    for label in base.labels[1:]:
        brighter = design_panel(["DAPI", "HER2", "ER", "PR"], QDOTS, CH, fixed={"DAPI": "DAPI"},
                                brightness={label: 100.0})
        assert label in brighter.labels
        a, b = base.to_dict(), brighter.to_dict()
        if sorted(base.labels) == sorted(brighter.labels):
            assert b["condition_number"] == pytest.approx(a["condition_number"])
    p = breast_panel_5plex()
    scaled = design_panel(list(p.markers), list(p.labels[1:]), list(p.channels),
                          fixed={"DAPI": "DAPI"}, brightness={"Qdot 605": 16, "Qdot 705": 4})
    assert scaled.to_dict()["condition_number"] == pytest.approx(
        p.to_dict()["condition_number"])
    assert not any("condition number" in w for w in scaled.warnings)


def test_design_picks_the_subset_with_the_best_worst_marker():
    """Exhaustive: no other subset reads its worst marker with less noise."""
    grid = default_grid(350, 1000, 0.5)
    p = design_panel(["DAPI", "A", "B", "C"], QDOTS, CH, fixed={"DAPI": "DAPI"},
                     brightness={"Qdot 800": 0.05})
    dapi = emission_spectrum(461.0, 70.0, wavelength_nm=grid)
    af = autofluorescence_spectrum(wavelength_nm=grid)

    def worst(combo):
        b = np.array([1.0] + [0.05 if n == "Qdot 800" else 1.0 for n in combo])
        m = mixing_matrix([dapi] + [get_qdot(n).emission_spectrum(grid) for n in combo] + [af],
                          CH)
        signal = b * m.sum(axis=0)[:4]  # brightness x share of the emission detected
        return float(np.max(noise_gains(m)[:4] / np.sqrt(signal)))

    best = min(worst(c) for c in itertools.combinations(QDOTS, 3))
    assert worst(p.labels[1:]) == pytest.approx(best)
    assert "Qdot 800" not in p.labels  # 1/20 as bright: its marker would be the noisiest


def test_labels_mostly_outside_the_channels_are_not_picked():
    """The CLI's default candidates include Qdot 800, whose emission barely reaches a
    detector ending at 740 nm: scored by the signal it gives, it is not picked (it was, on
    spectral separability alone), and a panel that holds it is warned."""
    p = design_panel(["DAPI", "HER2", "ER", "PR", "EGFR", "mTOR"],
                     ["Qdot 525", "Qdot 565", "Qdot 605", "Qdot 655", "Qdot 705", "Qdot 800"],
                     CH, fixed={"DAPI": "DAPI"})
    assert "Qdot 800" not in p.labels
    q = design_panel(["A"], ["Qdot 800"], CH)
    assert any(w.startswith("A: only ") and "of its label's emission falls in the channels"
               in w for w in q.warnings)


def test_excitation_decides_which_labels_can_be_used():
    p = design_panel(["A", "B"], ["Qdot 525", "Qdot 605", "Qdot 655"], CH, excitation_nm=405)
    assert not p.warnings
    # 600 nm excites neither Qdot 525 nor Qdot 605 (emission bands above it): not candidates
    with pytest.raises(InputError, match=r"only 1 usable .*Qdot 525 .*not excited at 600 nm"):
        design_panel(["A", "B"], ["Qdot 525", "Qdot 605", "Qdot 655"], CH, excitation_nm=600)
    q = design_panel(["A"], ["Qdot 525", "Qdot 655"], CH, excitation_nm=600)
    assert q.labels == ("Qdot 655",)
    # DAPI is kept when fixed, with a warning; a 488 nm line inside a band is warned
    r = design_panel(["DAPI", "A"], ["Qdot 605"], CH, fixed={"DAPI": "DAPI"}, excitation_nm=488)
    assert any(w.startswith("DAPI is not excited at 488 nm") for w in r.warnings)
    assert any("488 nm falls in the 478-515 nm channel" in w for w in r.warnings)
    assert r.to_dict()["excitation_nm"] == 488.0
    with pytest.raises(InputError, match="excitation_nm must be a number of nm from 200 to 2000"):
        design_panel(["A"], ["Qdot 605"], CH, excitation_nm=0.405)


def test_candidates_named_once_and_by_their_own_names():
    p = design_panel(["A", "B"], ["Qdot 605", "Qdot 605", "Qdot 705"], CH)
    assert sorted(p.labels) == ["Qdot 605", "Qdot 705"]
    with pytest.raises(InputError, match="2 markers but only 1 usable candidate"):
        design_panel(["A", "B"], ["Qdot 605", "Qdot 605"], CH)
    grid = default_grid(350, 1000, 0.5)
    s590 = emission_spectrum(590, 30, wavelength_nm=grid, label="dye590")
    s680 = emission_spectrum(680, 30, wavelength_nm=grid, label="dye680")
    q = design_panel(["A", "B"], [s590, s680], CH)
    assert sorted(q.labels) == ["dye590", "dye680"]
    twin = emission_spectrum(600, 30, wavelength_nm=grid, label="dye590")
    with pytest.raises(InputError, match="two different candidate labels are named 'dye590'"):
        design_panel(["A", "B"], [s590, twin, s680], CH)
    with pytest.raises(InputError, match="fixed labels for 'DAPI', which is not among"):
        design_panel(["A", "B"], QDOTS, CH, fixed={"DAPI": "DAPI"})


def test_a_probe_made_for_a_target_labels_that_target_only():
    # an anti-EGFR conjugate is no label for ER (the README's panel put it there)
    def probe(nm, target):
        return Probe.from_emission("CdSe", nm, shell="ZnS", shell_thickness_nm=0.9,
                                   ligands=(("igg", 2),), targets=(target,),
                                   name=f"qd{nm} anti-{target}")

    egfr = probe(640, "EGFR")
    p = design_panel(["HER2", "ER"], ["Qdot 605", "Qdot 705", egfr], CH)
    assert sorted(p.labels) == ["Qdot 605", "Qdot 705"]
    p = design_panel(["HER2", "EGFR", "ER"], ["Qdot 565", "Qdot 705", egfr], CH)
    assert dict(zip(p.markers, p.labels, strict=False))["EGFR"] == "qd640 anti-EGFR"
    # whatever the candidates' order and the markers' expression
    p = design_panel(["EGFR", "HER2"], [egfr, "Qdot 525"], CH,
                     expression={"EGFR": 1.0, "HER2": 0.1}, brightness={"Qdot 525": 3})
    assert dict(zip(p.markers, p.labels, strict=False)) == {"EGFR": "qd640 anti-EGFR",
                                                           "HER2": "Qdot 525"}
    with pytest.raises(InputError, match="2 markers but only 1 usable.*targets EGFR, not "
                                         "among the markers"):
        design_panel(["HER2", "ER"], ["Qdot 605", egfr], CH)
    # two probes for one marker cannot both be used
    with pytest.raises(InputError, match="cannot each take one of them"):
        design_panel(["EGFR", "ER"], [egfr, probe(580, "EGFR")], CH)


def test_custom_probe_under_a_catalog_name_round_trips(tmp_path):
    """A probe named like a catalog product but emitting elsewhere keeps its own spectrum in
    the panel file (before: reloaded as the catalog product, 15 nm off)."""
    probe = Probe.from_emission("CdSe", 620, name="Qdot 605")
    p = design_panel(["A", "B"], [probe, "Qdot 705"], CH)
    q = Panel.from_file(p.to_file(tmp_path / "p.yaml"))
    j = p.labels.index("Qdot 605")
    assert q.spectra[j].peak_nm == pytest.approx(p.spectra[j].peak_nm, abs=0.6)
    assert abs(q.spectra[j].peak_nm - get_qdot("Qdot 605").emission_peak_nm) > 10
    np.testing.assert_allclose(q.endmembers, p.endmembers, atol=1e-3 * p.endmembers.max())
    catalog = breast_panel_5plex()  # catalog labels are stored by name alone
    doc = catalog.to_yaml_dict()
    assert all("spectrum" not in e for e in doc["markers"].values())


def test_options_and_entries_that_would_be_ignored_are_refused(tmp_path):
    """Typos a user made: a brightness for a label that is not a candidate, an expression
    for a marker not in the panel, a catalog label's peak edited in the panel file, a
    misspelt catalog name; each silently changed nothing before."""
    from qdmed.errors import FileFormatError

    with pytest.raises(InputError, match="brightness given for 'Qdot 70', not among"):
        design_panel(["A", "B"], QDOTS, CH, brightness={"Qdot 70": 4.0})
    with pytest.raises(InputError, match="expression given for 'HER3', not among the markers"):
        design_panel(["A", "B"], QDOTS, CH, expression={"HER3": 0.1})
    with pytest.raises(InputError, match="brightness of 'DAPI': a label fixed"):
        design_panel(["DAPI", "A"], QDOTS + ["DAPI"], CH, fixed={"DAPI": "DAPI"},
                     brightness={"DAPI": 5.0})
    doc = breast_panel_5plex().to_yaml_dict()
    # as written (peaks and widths for reading), and as older files wrote them (up to 2.9 nm
    # blue of the catalog's peak), the file reads back
    Panel.from_dict(doc)
    doc["markers"]["ER"]["peak_nm"] -= 2.9
    Panel.from_dict(doc)
    doc["markers"]["ER"]["peak_nm"] = 700
    with pytest.raises(FileFormatError, match=r"markers.ER: .* is a catalog label .*peak_nm 700 "
                                              "would not be used"):
        Panel.from_dict(doc)
    doc["markers"]["ER"] = {"label": "Qdot 566", "peak_nm": 566}
    with pytest.raises(FileFormatError, match="'Qdot 566' is not a catalog Qdot"):
        Panel.from_dict(doc)
    doc["markers"]["ER"] = {"label": "Qdot 606"}  # no peak: the catalog's names are listed
    with pytest.raises(FileFormatError, match=r"markers.ER: label 'Qdot 606' is not in the "
                                              r"catalog \(catalog labels: DAPI, Qdot 525, .*"
                                              r"Qdot 605, .*give its 'peak_nm'"):
        Panel.from_dict(doc)
    # misspelt fields: a marker's width, the autofluorescence switched off
    doc["markers"]["ER"] = {"label": "dye 566", "peak_nm": 566, "fwhm": 20}
    with pytest.raises(FileFormatError, match="markers.ER: unknown field.*fwhm.*accepted"):
        Panel.from_dict(doc)
    bad = dict(doc, autofluoresence=None)
    bad["markers"] = dict(doc["markers"], ER={"label": "dye 566", "peak_nm": 566})
    with pytest.raises(FileFormatError, match="unknown field.*autofluoresence"):
        Panel.from_dict(bad)
    doc["markers"]["ER"] = {"label": "dye 566", "peak_nm": 566}  # a custom label
    assert Panel.from_dict(doc).spectra[list(doc["markers"]).index("ER")].peak_nm == \
        pytest.approx(566, abs=0.5)
    # a custom label's peak and width named with their range (a review: fwhm_nm 1e9 was
    # "fwhm_meV must be > 0, got -0.00496", peak_nm 1500 "spectrum is zero", true 1 nm)
    for key in (True, None, 123):  # YAML's yes, null, 123: not marker names (a review)
        bad = dict(doc, markers={**doc["markers"], key: {"label": "Qdot 705"}})
        with pytest.raises(FileFormatError, match=rf"marker name {key!r} is not text"):
            Panel.from_dict(bad)
    for field, value, rng in (("fwhm_nm", 1e9, "1 to 300"), ("peak_nm", 1500, "350 to 1000"),
                              ("peak_nm", True, "350 to 1000")):
        doc["markers"]["ER"] = {"label": "dye 566", "peak_nm": 566, field: value}
        with pytest.raises(FileFormatError, match=rf"markers.ER.{field} must be a number of nm "
                                                  rf"from {rng}; got {value!r}"):
            Panel.from_dict(doc)


def test_bands_must_be_nanometres_and_collect_signal():
    with pytest.raises(InputError, match="band 0.5-0.56 nm .*look like micrometres"):
        design_panel(["A"], ["Qdot 605"], [(0.5, 0.56), (0.58, 0.64)])
    with pytest.raises(InputError, match="high > low"):
        design_panel(["A"], ["Qdot 605"], [(560, 500), (580, 640)])
    from qdmed.errors import FileFormatError

    with pytest.raises(FileFormatError, match="p.yaml: channels_nm: band 0.5-0.56 nm"):
        Panel.from_dict({"channels_nm": [[0.5, 0.56], [0.58, 0.64]], "autofluorescence": None,
                         "markers": {"HER2": {"label": "Qdot 605"}}}, source="p.yaml")
    p = design_panel(["A", "B"], ["Qdot 605", "Qdot 705"],
                     [(500, 560), (580, 640), (660, 720), (1200, 1300)])
    assert "channel 1200-1300nm collects no signal from any component" in p.warnings
    # a label whose emission misses every band (1e-5 of it in the channels)
    q = design_panel(["A", "B"], ["Qdot 525", "Qdot 605"], [(480, 520), (520, 540), (540, 550)],
                     autofluorescence=None)
    assert any(w.startswith("B gives no signal in any channel") for w in q.warnings)


def test_cli_panel_options(tmp_path):
    import json
    import subprocess
    import sys

    probe = Probe.from_emission("CdSe", 590, name="custom590")
    probe.to_file(tmp_path / "custom590.yaml")

    def run(*args):
        return subprocess.run([sys.executable, "-m", "qdmed", "image", "panel", *args],
                              capture_output=True, text=True, timeout=300, cwd=tmp_path)

    r = run("--markers", "HER2,ER", "--labels", "custom590.yaml,Qdot 705,Qdot 655",
            "--brightness", "Qdot 705=4", "--expression", "HER2=0.1", "--expression", "ER=1",
            "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["labels"]["HER2"] == "Qdot 705"  # the brightest label to the scarcest marker
    r = run("--excitation-nm", "488", "--json")
    assert r.returncode == 0, r.stderr
    assert any("DAPI is not excited" in w for w in json.loads(r.stdout)["warnings"])
    r = run("--excitation-nm", "800")
    assert r.returncode == 2 and "left out: Qdot 525, Qdot 565" in r.stderr
    assert len(r.stderr) < 400  # one reason, not one per label
    for args, msg in ((("--brightness", "Qdot 705=x"), "not a number"),
                      (("--counterstain", "Hoechst"), "accepted: DAPI"),
                      (("--markers", ""), "--markers names no marker"),
                      (("--labels", "missing.yaml"), "does not exist"),
                      (("--filters", "0.50-0.56,0.58-0.64"), "micrometres")):
        r = run(*args)
        assert r.returncode == 2 and msg in r.stderr, r.stderr


def test_a_key_given_twice_in_a_panel_or_probe_file_is_refused(tmp_path):
    # a panel edited to give HER2 a second line lost ER's and read HER2 from ER's label,
    # exit 0 (a review): PyYAML keeps the last of two equal keys unless told
    from qdmed.errors import FileFormatError

    p = design_panel(["HER2", "ER"], QDOTS, CH)
    p.to_file(tmp_path / "p.yaml")
    text = (tmp_path / "p.yaml").read_text()
    assert "\n  ER:" in text
    (tmp_path / "dup.yaml").write_text(text.replace("\n  ER:", "\n  HER2:", 1))
    with pytest.raises(FileFormatError, match=r"dup.yaml: line \d+ malformed YAML: key "
                                              r"'HER2' is given twice \(lines \d+ and \d+\)"):
        Panel.from_file(tmp_path / "dup.yaml")
    (tmp_path / "probe.yaml").write_text("core: CdSe\ncore: InP\ndiameter_nm: 3\n")
    with pytest.raises(FileFormatError, match="key 'core' is given twice"):
        Probe.from_file(tmp_path / "probe.yaml")
    (tmp_path / "probe.json").write_text('{"core": "CdSe", "core": "InP"}')
    with pytest.raises(FileFormatError, match="key 'core' is given twice"):
        Probe.from_file(tmp_path / "probe.json")


_P = ("channels_nm: [[500.0, 560.0], [580.0, 640.0]]\n"
      "markers: {A: {label: Qdot 605, brightness: 1.0}}\nautofluorescence: null\n")


@pytest.mark.parametrize(("old", "new", "match"), [
    # a review: brightness 1e308 overflowed the simulated photons (an internal error), yes
    # was read as 1, and a band edge or the excitation given as true as 1 nm
    ("brightness: 1.0", "brightness: 1.0e+308",
     r"p.yaml: markers.A.brightness must be a number > 0 and <= 1e\+12; got 1e\+308"),
    ("brightness: 1.0", "brightness: yes", r"markers.A.brightness must be .*; got True"),
    ("brightness: 1.0", "brightness: 1e3", r"got '1e3' \(text, not a number"),
    ("[500.0, 560.0]", "[true, 560.0]", r"p.yaml: channels_nm: .* pairs of numbers"),
    ("[500.0, 560.0]", "['500', 560.0]", r"p.yaml: channels_nm: .* pairs of numbers"),
    ("autofluorescence: null", "autofluorescence: null\nexcitation_nm: yes",
     r"p.yaml: excitation_nm must be a number of nm from 200 to 2000; got True"),
])
def test_panel_file_numbers_are_typed_and_bounded(tmp_path, old, new, match):
    from qdmed.errors import FileFormatError

    (tmp_path / "p.yaml").write_text(_P.replace(old, new))
    with pytest.raises(FileFormatError, match=match):
        Panel.from_file(tmp_path / "p.yaml")
    (tmp_path / "p.yaml").write_text(_P)
    assert Panel.from_file(tmp_path / "p.yaml").brightness == (1.0,)


def test_expression_and_brightness_must_be_positive_numbers():
    for bad in (float("nan"), -1.0, 0.0, "high"):
        with pytest.raises(InputError, match="expression of 'HER2' must be a number > 0"):
            design_panel(["HER2", "ER"], QDOTS, CH, expression={"HER2": bad})
    with pytest.raises(InputError, match="brightness of 'Qdot 705' must be a number > 0"):
        design_panel(["HER2", "ER"], QDOTS, CH, brightness={"Qdot 705": float("inf")})
    # a candidate not chosen is checked too (1e308 passed when Qdot 605 was not assigned)
    with pytest.raises(InputError, match="brightness of 'Qdot 605' must be a number > 0"):
        design_panel(["HER2"], QDOTS, CH, brightness={"Qdot 605": 1e308})
    # a vendor's extinction and receptors per cell may be given as they are (a review: 8.8e6
    # and 2e6 were refused at a bound of 1e6)
    design_panel(["HER2", "ER"], QDOTS, CH, brightness={"Qdot 800": 8.8e6},
                 expression={"HER2": 2e6, "ER": 1e4})


def test_the_least_noisy_label_goes_to_the_scarcest_marker():
    """A review: with expression alone the scarce marker took the first-listed label
    (Qdot 525, on the autofluorescence peak: noise 2.78x per unit signal against 1.08x for
    Qdot 705), and with Qdot 525 made 1.3x brighter, still it (2.4 against 1.15). The
    label read with the least noise per unit signal now goes to the scarcest marker,
    whatever the candidates' order."""
    from qdmed.imaging._panel import noise_gains

    markers = ["HER2", "ER", "PR", "EGFR", "mTOR"]
    qd = ["Qdot 525", "Qdot 565", "Qdot 605", "Qdot 655", "Qdot 705"]
    chans = spectral_channels(8, 440.0, 740.0)
    for bright in (None, {"Qdot 525": 1.3}):
        picks = set()
        for order in (qd, qd[::-1]):
            p = design_panel(markers, order, chans, expression={"HER2": 0.05},
                             brightness=bright)
            picks.add(dict(zip(p.markers, p.labels, strict=True))["HER2"])
        assert len(picks) == 1  # the candidates' order does not decide
        (her2,) = picks
        a = p.endmembers
        # a column's sum is the label's signal: its brightness times its share in the bands
        share = mixing_matrix([p.spectra[i] for i in range(len(markers))], chans).sum(0)
        signal = np.array([(bright or {}).get(n, 1.0) for n in p.labels]) * share
        np.testing.assert_allclose(a.sum(0)[: len(markers)] / signal,
                                   a.sum(0)[0] / signal[0], rtol=1e-9)
        g = noise_gains(a)[: len(markers)]
        score = dict(zip(p.labels, g / np.sqrt(a.sum(0)[: len(markers)]), strict=True))
        assert her2 != "Qdot 525" and score[her2] == min(score.values())
    # expressions that do not differ assign as none do: in the candidates' order (a review:
    # expression={"ER": 1.0}, the default, reordered the labels)
    plain = design_panel(markers, qd, chans)
    assert design_panel(markers, qd, chans, expression={"ER": 1.0}).labels == plain.labels


def test_a_spectral_detector_has_at_most_1024_channels():
    with pytest.raises(InputError, match="100000 channels: at most 1024"):  # a review's
        spectral_channels(100000, 450, 750)
    assert len(spectral_channels(1024, 400, 750)) == 1024


def test_marker_names_equal_but_for_case_are_refused():
    """``--markers HER2,her2`` built a panel of two HER2 markers, warned as a typo only (a
    review): columns HER2_* and her2_* that most tables and QuPath read as one."""
    from qdmed.imaging._panel import build_panel_from_spectra, unmixed_panel

    spectra = [emission_spectrum(525.0, 30.0), emission_spectrum(605.0, 30.0)]
    with pytest.raises(InputError, match=r"marker names given more than once \(case aside\): "
                                         "HER2, her2"):
        build_panel_from_spectra(["HER2", "her2"], ["a", "b"], spectra,
                                 spectral_channels(8, 450, 750))
    with pytest.raises(InputError, match=r"component names given more than once \(case "
                                         r"aside\): ER, Er"):
        unmixed_panel({"ER": 0, "Er": 1})
