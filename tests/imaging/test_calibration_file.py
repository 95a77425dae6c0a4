"""The calibration file and the intensity scale of its controls (_calibration_file)."""

from __future__ import annotations

import json
import re

import pytest

from qdmed.errors import FileFormatError
from qdmed.imaging import load_calibration
from qdmed.imaging._calibration_file import (
    controls_scale,
    intensity_scale,
    scale_warnings,
)

SPECTRAL = {"labels": {"HER2": "Qdot 525", "ER": "Qdot 565"},
            "channels_nm": [[440, 478], [478, 515], [515, 552]]}
EXPORT = {"unmixed": True, "labels": {"DAPI": "DAPI", "HER2": "Qdot 525", "ER": "Qdot 565"}}
SLIDE16 = {"dtype": "uint16", "significant_bits": 12, "exposure_ms": [10.0, 20.0, 20.0],
           "channel_names": ["440-478nm", "478-515nm", "515-552nm"]}


def _summary(panel, slide):
    return {"panel": panel, "slide": slide}


def test_a_slide_on_the_controls_scale_is_not_warned():
    sc = intensity_scale(SPECTRAL, SLIDE16)
    assert scale_warnings(sc, intensity_scale(SPECTRAL, SLIDE16)) == []
    # an exposure known on one side only, or within 1 %, is not a difference
    assert scale_warnings(sc, intensity_scale(SPECTRAL, {**SLIDE16, "exposure_ms": None})) == []
    assert scale_warnings(sc, intensity_scale(
        SPECTRAL, {**SLIDE16, "exposure_ms": [10.05, 20.0, 20.0]})) == []
    assert scale_warnings(None, sc) == []  # a calibration of unknown scale: nothing to say


def test_an_export_another_pixel_type_or_exposure_is_warned():
    sc = intensity_scale(SPECTRAL, SLIDE16)
    (w,) = scale_warnings(sc, intensity_scale(EXPORT, {**SLIDE16, "dtype": "float32"}))
    assert ("what was analysed: an already-unmixed export here, the detector's spectra in "
            "the controls") in w
    assert "pixel type: float32 here, uint16 in the controls" in w
    assert "do not carry over" in w
    (w,) = scale_warnings(sc, intensity_scale(
        SPECTRAL, {**SLIDE16, "exposure_ms": [10.0, 40.0, 20.0]}))
    assert ("exposure times (ms): 440-478nm: 10, 478-515nm: 40, 515-552nm: 20 here, "
            "440-478nm: 10, 478-515nm: 20, 515-552nm: 20 in the controls") in w
    other = {**SPECTRAL, "labels": {"HER2": "Qdot 605", "ER": "Qdot 565"}}
    (w,) = scale_warnings(sc, intensity_scale(other, SLIDE16))
    assert "labels (marker: QD): HER2: Qdot 605, ER: Qdot 565 here" in w
    # the excitation sets the labels' brightness: a panel declaring another laser is warned;
    # a calibration that recorded none (made before it was recorded) says nothing
    sc405 = intensity_scale({**SPECTRAL, "excitation_nm": 405.0}, SLIDE16)
    (w,) = scale_warnings(sc405, intensity_scale({**SPECTRAL, "excitation_nm": 488}, SLIDE16))
    assert "excitation (nm): 488 here, 405 in the controls" in w
    assert scale_warnings(sc, intensity_scale({**SPECTRAL, "excitation_nm": 488}, SLIDE16)) \
        == []
    assert intensity_scale({**EXPORT, "excitation_nm": 405.0}, SLIDE16)["excitation_nm"] is None
    # significant bits are metadata exporters write differently: not compared
    assert scale_warnings(sc, intensity_scale(SPECTRAL, {**SLIDE16, "significant_bits": 16})) == []


def test_the_unmixing_is_part_of_the_scale():
    """Poisson maximum likelihood moves dim abundances (a review: an ER gate 4.11 with
    plain NNLS, 5.55 with --poisson): controls unmixed one way and a slide the other are
    warned; a calibration made before the unmixing was recorded says nothing."""
    plain, poisson = {"unmix_weights": None}, {"unmix_weights": "poisson",
                                               "read_noise_adu": 2.0}
    sc = intensity_scale(SPECTRAL, SLIDE16, plain)
    assert sc["unmixing"] == "plain NNLS"
    assert scale_warnings(sc, intensity_scale(SPECTRAL, SLIDE16, plain)) == []
    (w,) = scale_warnings(sc, intensity_scale(SPECTRAL, SLIDE16, poisson))
    assert ("unmixing: Poisson maximum likelihood (read noise 2 counts) here, plain NNLS in "
            "the controls") in w
    assert scale_warnings(intensity_scale(SPECTRAL, SLIDE16),
                          intensity_scale(SPECTRAL, SLIDE16, poisson)) == []
    # an export already unmixed is not unmixed again: nothing to compare
    assert intensity_scale(EXPORT, SLIDE16, poisson)["unmixing"] is None


def test_exposures_are_compared_by_channel_name_and_for_counts_only():
    """A review: float exports (which no longer scale with exposure) were warned for their
    exposures, and exposures were compared by position where components are bound by name."""
    comps = {"unmixed": True, "labels": {"DAPI": "DAPI", "HER2": "Opal 570"}}
    f32 = {"dtype": "float32", "channel_names": ["DAPI", "Opal 570"]}
    assert scale_warnings(intensity_scale(comps, {**f32, "exposure_ms": [5.0, 40.0]}),
                          intensity_scale(comps, {**f32, "exposure_ms": [5.0, 80.0]})) == []
    u16 = {"dtype": "uint16", "channel_names": ["DAPI", "Opal 570"], "exposure_ms": [5.0, 40.0]}
    swapped = {"dtype": "uint16", "channel_names": ["Opal 570", "DAPI"],
               "exposure_ms": [40.0, 5.0]}  # the same exposures, channels in another order
    assert scale_warnings(intensity_scale(comps, u16), intensity_scale(comps, swapped)) == []
    (w,) = scale_warnings(intensity_scale(comps, u16), intensity_scale(
        comps, {**u16, "exposure_ms": [5.0, 80.0]}))
    assert "exposure times (ms): DAPI: 5, Opal 570: 80 here" in w
    # an export's components are read from channels, not labels: said as such
    (w,) = scale_warnings(intensity_scale(comps, u16), intensity_scale(
        {**comps, "labels": {"DAPI": "DAPI", "HER2": "Opal 620"}}, u16))
    assert "components' channels: DAPI: DAPI, HER2: Opal 620 here" in w


def test_controls_on_different_scales_are_warned_at_calibration():
    same, warns = controls_scale({"BT474": _summary(SPECTRAL, SLIDE16),
                                  "MCF-7": _summary(SPECTRAL, SLIDE16)})
    assert same == intensity_scale(SPECTRAL, SLIDE16) and warns == []
    _, warns = controls_scale({"BT474": _summary(SPECTRAL, SLIDE16),
                               "MCF-7": _summary(SPECTRAL, {**SLIDE16, "dtype": "uint8"})})
    assert warns == ["controls BT474 and MCF-7 differ in pixel type: uint16 against uint8; "
                     "their intensities are not on one scale"]
    sc, warns = controls_scale({"BT474": _summary(SPECTRAL, SLIDE16), "MCF-7": None})
    assert sc is not None and "MCF-7 came without their analysis summary.json" in warns[0]
    assert controls_scale({"BT474": None}) == (None, [])


def test_load_calibration_gives_cutoffs_gates_and_scale(tmp_path):
    """The public loader (a review found the README's Python example dropping the gates)."""
    doc = {"her2": {"marker": "HER2", "faint": 1.0, "weak_moderate": 2.0, "intense": 3.0},
           "gates": {"ER": {"compartment": "nucleus", "threshold": 4.5}},
           "controls_intensity_scale": intensity_scale(SPECTRAL, SLIDE16)}
    p = tmp_path / "cal.json"
    p.write_text(json.dumps(doc))
    c = load_calibration(p)
    assert c.her2.marker == "HER2" and c.her2.intense == 3.0
    assert c.gates["ER"].threshold == 4.5 and c.gates["ER"].compartment == "nucleus"
    assert c.intensity_scale["dtype"] == "uint16"
    assert c.to_dict()["gates"]["ER"]["threshold"] == 4.5
    p.write_text(json.dumps({"gates": {"ER": {"threshold": 1}}}))
    with pytest.raises(FileFormatError, match="gate 'ER' needs 'compartment'"):
        load_calibration(p)
    p.write_text("[1, 2]")
    with pytest.raises(FileFormatError, match="not a calibration"):
        load_calibration(p)
    # hand-edited cut-offs (a review): a string crashed the scoring, True read as 1, an
    # unknown statistic was warned about elsewhere (a cut-off below 0 is allowed: the
    # background-subtracted membrane values it may be read on go below 0)
    for field, bad, said in (("faint", "35.1", "must be finite numbers"),
                             ("faint", True, "must be finite numbers"),
                             ("statistic", "max", "statistic must be one of"),
                             ("compartment", "nucleolus", "compartment must be one of"),
                             ("scale", "cubic", "scale must be 'log', 'linear'")):
        p.write_text(json.dumps({"her2": {**doc["her2"], field: bad}}))
        with pytest.raises(FileFormatError, match=f"cal.json: 'her2': .*{said}"):
            load_calibration(p)
    p.write_bytes(b'{"her2": {"faint": 1, "weak_moderate": 2, "intense": 3, "rule": "\xff"}}')
    with pytest.raises(FileFormatError, match="not a UTF-8 text"):
        load_calibration(p)
    # numbers as numbers: a gate's true and "5" were read as 1 and 5, a faint quantile of 5
    # passed, a control without its category was an internal KeyError (a review)
    for bad, said in (({"gates": {"ER": {"compartment": "nucleus", "threshold": True}}},
                       "gate 'ER': a gate's threshold must be a finite number; got True"),
                      ({"gates": {"ER": {"compartment": "nucleus", "threshold": "5"}}},
                       "gate 'ER': a gate's threshold must be a finite number; got '5'"),
                      ({"her2": {**doc["her2"], "faint_quantile": 5}},
                       "'her2': faint_quantile must be a number from 0.9 to 1; got 5"),
                      ({"her2": {**doc["her2"], "controls": [{"name": "BT-474"}]}},
                       "'her2': each of a HER2 calibration's controls needs name, category")):
        p.write_text(json.dumps(bad))
        with pytest.raises(FileFormatError, match=said):
            load_calibration(p)
    # a misspelt field was ignored (a review): at the top, in the cut-offs, in a gate
    for bad, said in (({**doc, "gate": {}}, "cal.json: unknown field.s. gate; accepted"),
                      ({"her2": {**doc["her2"], "feint": 1.5}},
                       "cal.json: her2: unknown field.s. feint"),
                      ({"gates": {"ER": {"compartment": "nucleus", "threshold": 1,
                                         "treshold": 2}}},
                       "cal.json: gates.ER: unknown field.s. treshold")):
        p.write_text(json.dumps(bad))
        with pytest.raises(FileFormatError, match=said):
            load_calibration(p)
    p.write_text('{"gates": {"ER": {"compartment": "nucleus", "threshold": 1}}, '
                 '"gates": {}}')
    with pytest.raises(FileFormatError, match="key 'gates' is given twice"):
        load_calibration(p)


def test_calibrate_controls_in_python_records_the_controls_scale(tmp_path):
    """calibrate_her2 on bare tables records no scale, so a slide imaged otherwise was
    scored unwarned from Python; calibrate_controls on the controls' analyses records it,
    as `qdmed image calibrate` does, and saves the same file."""
    import matplotlib.pyplot as plt

    from qdmed.errors import InputError
    from qdmed.imaging import (
        analyze_slide,
        breast_panel_5plex,
        calibrate_controls,
        simulate_field,
        write_ome_tiff,
    )

    panel = breast_panel_5plex()
    kw = dict(endmembers=panel.endmembers, marker_names=list(panel.markers),
              photons_per_unit=300.0)
    res = {}
    for name, preset in (("MDA-MB-468", "MDA-MB-468"), ("BT-474", "BT474")):
        f = simulate_field((320, 320), preset=preset, seed=5, **kw)
        p = write_ome_tiff(tmp_path / f"{preset}.ome.tif", f.image, pixel_size_um=0.5,
                           channel_names=list(panel.channel_names))
        res[name] = analyze_slide(p, panel, tmp_path / preset, tile=320, progress=False,
                                  write_unmixed=False, outlines=False)
    cal = calibrate_controls(res, negatives={"ER": "MDA-MB-468"})
    assert cal.her2 is not None and set(cal.gates) == {"ER"}
    assert cal.intensity_scale["dtype"] == "uint16"
    assert cal.controls_scored["BT-474"] == {"category": "3+", "scored": "3+"}
    assert not [w for w in cal.warnings if "gate" in w]
    # the controls' nuclear level is recorded, and a slide imaged brighter is warned from
    # its nuclei where its metadata are silent (a review: 1000 photons per unit against
    # the controls' 300, no exposure recorded, read ER and PR 100 % positive, unsaid)
    level = cal.intensity_scale["nuclear_level"]
    assert level["marker"] == "DAPI" and set(level["by_control"]) == set(res)
    for photons, warned in ((300.0, False), (1000.0, True)):
        f = simulate_field((320, 320), preset="BT474", seed=6,
                           **{**kw, "photons_per_unit": photons})
        p = write_ome_tiff(tmp_path / f"s{photons:g}.ome.tif", f.image, pixel_size_um=0.5,
                           channel_names=list(panel.channel_names))
        r = analyze_slide(p, panel, tmp_path / f"s{photons:g}", tile=320, progress=False,
                          write_unmixed=False, outlines=False, her2_calibration=cal.her2,
                          gates=cal.gates, calibration_scale=cal.intensity_scale)
        said = [w for w in r.warnings if "nuclei read DAPI" in w]
        assert bool(said) is warned, said
    ratio = float(said[0].split("read DAPI ")[1].split("x the")[0])
    assert ratio == pytest.approx(1000 / 300, abs=0.15) and "brighter" in said[0]
    # an ER-positive line named ER's negative control (a review): its gate, ~90x the
    # ER-negative line's level, would call ER-rich tissue negative; warned
    wrong = calibrate_controls(res, negatives={"ER": "BT-474"})
    (said,) = [w for w in wrong.warnings if w.startswith("the ER gate")]
    assert "99th percentile of BT-474) is" in said and "is BT-474 negative for ER?" in said
    ratio = float(said.split(" is ")[1].split("x that")[0])
    assert ratio > 20
    # a folder and a SlideResult give the same calibration
    by_folder = calibrate_controls({n: r.out_dir for n, r in res.items()},
                                   negatives={"ER": "MDA-MB-468"})
    assert by_folder.document() == cal.document()
    saved = cal.save(tmp_path / "cal.json")
    assert load_calibration(saved.path).document() == cal.document()
    assert load_calibration(saved.path) == saved
    # a 3+ control has no faint-quantile value: None (it was NaN, read back as None, so a
    # loaded calibration never equalled the one saved)
    assert [c[4] is None for c in cal.her2.controls] == [False, True]
    plt.close(cal.plot())
    with pytest.raises(InputError, match="holds no control cells"):
        load_calibration(saved.path).plot()
    # the gap rule travels through the file, with its floor, and the plot redraws its
    # cut-off from the controls' cells
    gap = calibrate_controls(res, faint_rule="gap")
    assert gap.her2.faint_from_gap, gap.her2.rule
    back = load_calibration(gap.save(tmp_path / "gap.json").path).her2
    assert back == gap.her2 and back.null_stained_percent == gap.her2.null_stained_percent
    plt.close(gap.plot())
    # bare tables: no scale, said when mixed with analyses
    bare = calibrate_controls({n: r.cells() for n, r in res.items()})
    assert bare.intensity_scale is None
    assert any("records no intensity scale" in w for w in bare.warnings)
    mixed = calibrate_controls({"MDA-MB-468": res["MDA-MB-468"].cells(),
                                "BT-474": res["BT-474"]})
    assert any("came without their analysis summary" in w for w in mixed.warnings)
    # the scale reaches a slide imaged otherwise (a float32 export of the same field)
    f = simulate_field((320, 320), preset="MCF-7", seed=6, **kw)
    p = write_ome_tiff(tmp_path / "mcf7.ome.tif", f.image.astype("float32"),
                       pixel_size_um=0.5, channel_names=list(panel.channel_names))
    r = analyze_slide(p, panel, tmp_path / "mcf7", tile=320, progress=False,
                      write_unmixed=False, outlines=False, her2_calibration=cal.her2,
                      gates=cal.gates, calibration_scale=cal.intensity_scale)
    assert any("pixel type: float32 here, uint16 in the controls" in w for w in r.warnings)
    for bad, said in (({"categories": {"X": "1+"}}, "category X=1+: no control X"),
                      ({"negatives": {"ER": "X"}}, "negative ER=X: no control X"),
                      ({"categories": {"BT-474": "4+"}}, "category BT-474=4+")):
        with pytest.raises(InputError, match=re.escape(said)):
            calibrate_controls(res, **bad)



def test_a_file_written_before_the_floor_took_the_controls_size(tmp_path):
    """Calibration files written before recorded a gate's noise floor as 100 (1 - q) % (1 %
    at the 99th percentile, whatever the control's size); read back, the floor is the
    order-statistics expectation of the control's cells, and the recomputation is said.
    Files written now say their floor's rule and are read as written."""
    import json

    from qdmed.imaging import MarkerGate, gate_noise_floor_percent, load_calibration

    old = {"gates": {"ER": {"compartment": "nucleus", "threshold": 2.0,
                            "false_positive_percent": 1.0, "control_cells": 100}}}
    f = tmp_path / "old.json"
    f.write_text(json.dumps(old))
    cal = load_calibration(f)
    assert cal.gates["ER"].false_positive_percent == gate_noise_floor_percent(100, 0.99)
    assert any("recorded as 1 %" in w and "is 1.97 % from its 100 control cells" in w
               for w in cal.warnings)
    new = {"gates": {"ER": MarkerGate("nucleus", 2.0, false_positive_percent=1.97,
                                      control_cells=100).to_dict()}}
    f.write_text(json.dumps(new))
    cal = load_calibration(f)
    assert cal.gates["ER"].false_positive_percent == 1.97 and not cal.warnings


def test_a_scored_marker_labelled_with_another_qd_is_refused():
    """A review: a HER2 1+ slide analysed with the built-in panel (HER2: Qdot 525) against
    a calibration whose controls carried HER2 on Qdot 605 read 0, with only a warning. The
    cut-offs are abundances of the other QD: refused before any tile is analysed."""
    from qdmed.errors import InputError
    from qdmed.imaging import MarkerGate, breast_panel_5plex, design_panel, spectral_channels
    from qdmed.imaging._analyze import check_calibration
    from qdmed.imaging._her2_calibration import Her2Calibration

    builtin = breast_panel_5plex()
    fixed = {"HER2": "Qdot 605", "ER": "Qdot 705", "EGFR": "Qdot 655"}
    custom = design_panel(list(fixed), list(fixed.values()), spectral_channels(8, 440, 740),
                          fixed=fixed)
    cal = Her2Calibration(faint=1.0, weak_moderate=2.0, intense=4.0)
    theirs = intensity_scale(custom.to_dict(), SLIDE16)
    assert theirs["labels"]["HER2"] != builtin.to_dict()["labels"]["HER2"]
    with pytest.raises(InputError, match=r"labelled otherwise \(HER2: Qdot 525 here, "
                                         r"Qdot 605 in the controls\).*--panel"):
        check_calibration(builtin, cal, None, theirs)
    gate = {"ER": MarkerGate(threshold=1.0, compartment="nucleus")}
    with pytest.raises(InputError, match=r"ER: Qdot 565 here, Qdot 705 in"):
        check_calibration(builtin, None, gate, theirs)
    # the controls' own panel, a calibration of unknown labels, and a marker not scored pass
    check_calibration(custom, cal, gate, theirs)
    check_calibration(builtin, cal, None, None)
    check_calibration(builtin, None, None, theirs)
    # one catalog QD however spelled is one label (a review: "qdot 525" was refused)
    spelled = {**builtin.to_dict()["labels"], "HER2": "qdot525 ", "ER": "565"}
    check_calibration(builtin, cal, gate, {"labels": spelled})
    assert scale_warnings({"labels": spelled}, {"labels": builtin.to_dict()["labels"]}) == []


def test_controls_on_different_scales_are_warned():
    """A review: a BT-474 control imaged 3.3x brighter than the other controls moved the
    intense cut-off from 158 to 385 and a 3+ slide scored 2+, unsaid (the slides' check
    compares a slide with the controls' median)."""
    import numpy as np
    import pandas as pd

    from qdmed.imaging._calibration_file import nuclear_level, nuclear_level_spread_warnings

    def table(level):
        return pd.DataFrame({"DAPI_nucleus_mean": np.full(20, level)})

    level = nuclear_level({"MDA-MB-468": table(306.0), "MCF-7": table(310.0),
                           "BT-474": table(1025.0)}, "DAPI")
    (w,) = nuclear_level_spread_warnings(level)
    assert w.startswith("control BT-474's nuclei read DAPI 3.3x control MDA-MB-468's "
                        "(median nucleus mean 1025 against 306)")
    # within the factor (cell lines differ somewhat), one control, or none: nothing
    assert nuclear_level_spread_warnings(nuclear_level(
        {"a": table(306.0), "b": table(600.0)}, "DAPI")) == []
    assert nuclear_level_spread_warnings(nuclear_level({"a": table(306.0)}, "DAPI")) == []
    assert nuclear_level_spread_warnings(None) == []
