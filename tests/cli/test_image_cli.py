"""`qdmed image ...` as a subprocess: simulate -> analyze -> cohort, and bad input (exit 2)."""

import json
import subprocess
import sys

import numpy as np


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "qdmed", *args], capture_output=True,
                          text=True, timeout=600, cwd=cwd)


def test_simulate_analyze_cohort(tmp_path):
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    r = run("image", "simulate", "--size", "512", "--preset", "HER2-enriched",
            "--out", str(cohort / "a.ome.tif"), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["n_cells"] > 50
    # a corrupt slide in the cohort is reported, not fatal
    (cohort / "broken.ome.tif").write_bytes(b"II*\x00garbage")
    r = run("image", "analyze", str(cohort / "a.ome.tif"), "--out", str(tmp_path / "one"),
            "--no-progress", "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["n_cells"] > 50 and (tmp_path / "one" / "report.html").exists()
    assert "Unmixing: exact non-negative least squares per pixel." in \
        (tmp_path / "one" / "report.html").read_text()
    r = run("image", "cohort", str(cohort), "--out", str(tmp_path / "co"), "--workers", "1",
            "--no-progress", "--json")
    # written for the good slide, but exit code 3: a pipeline must not take it as complete
    assert r.returncode == 3, r.stderr
    assert "1 of 2 slides failed" in r.stderr
    c = json.loads(r.stdout)
    status = {row["slide"]: row["status"] for row in c["slides"]}
    assert status == {"a.ome.tif": "ok", "broken.ome.tif": "failed"}
    # the failed slide's error among the warnings, in the JSON and on stderr
    # (named once: "failed: '.../broken.ome.tif' is truncated ..."; the error names its file)
    (said,) = [w for w in c["warnings"] if w.startswith("failed: ") and "broken.ome.tif" in w]
    assert said.count("broken.ome.tif") == 1
    assert f"! {said}" in r.stderr
    assert (tmp_path / "co" / "cells.parquet").exists()
    html = (tmp_path / "co" / "report.html").read_text()
    assert "broken.ome.tif" in html and "slides/a/report.html" in html
    assert c["report"].endswith("report.html") and c["parameters"]["tile"] == 2048
    (cohort / "broken.ome.tif").unlink()  # the runs below test other options
    # per-slide tumour annotations (<stem>.geojson): scored on the cells inside them (the
    # left half here); tiles are reused from the run above
    regs = tmp_path / "regions"
    regs.mkdir()
    ring = [[0, 0], [256, 0], [256, 512], [0, 512], [0, 0]]
    (regs / "a.geojson").write_text(json.dumps({"type": "Feature", "geometry": {
        "type": "Polygon", "coordinates": [ring]}, "properties": {"objectType": "annotation"}}))
    assert (tmp_path / "co" / "slides" / "a" / "cells.geojson").exists()
    r = run("image", "cohort", str(cohort), "--out", str(tmp_path / "co"), "--workers", "1",
            "--no-progress", "--json", "--regions-dir", str(regs), "--no-outlines",
            "--no-unmixed", "--autofluorescence", "blind", "--exclude-flagged", "saturated")
    assert r.returncode == 0, r.stderr
    c = json.loads(r.stdout)
    assert c["parameters"]["outlines"] is False and c["parameters"]["write_unmixed"] is False
    assert c["parameters"]["autofluorescence"] == "blind"
    slide_summary = json.loads((tmp_path / "co" / "slides" / "a" / "summary.json").read_text())
    assert slide_summary["autofluorescence"]["source"].startswith("blind: ")
    # the slide folder holds this run's outputs only: the earlier run's optional ones go
    assert not (tmp_path / "co" / "slides" / "a" / "cells.geojson").exists()
    assert not (tmp_path / "co" / "slides" / "a" / "unmixed.ome.zarr").exists()
    rows = {row["slide"]: row for row in c["slides"]}
    assert rows["a.ome.tif"]["status"] == "ok"
    assert 0 < rows["a.ome.tif"]["n_scored"] < rows["a.ome.tif"]["n_cells"]
    assert rows["a.ome.tif"]["n_excluded"] == slide_summary["scored_cells"]["excluded"]["total"]
    r = run("image", "cohort", str(cohort), "--out", str(tmp_path / "co"), "--region-class",
            "Tumor", "--no-progress")
    assert r.returncode == 2 and "needs a regions folder" in r.stderr
    r = run("image", "cohort", str(cohort), "--out", str(tmp_path / "co"), "--autofluorescence",
            "unstained", "--no-progress")
    assert r.returncode == 2 and "'panel' or 'blind'" in r.stderr
    # the analysis settings analyze takes, for every slide of a cohort too
    r = run("image", "cohort", str(cohort), "--out", str(tmp_path / "cp"), "--workers", "1",
            "--no-progress", "--json", "--poisson", "--read-noise", "2", "--no-outlines",
            "--no-unmixed", "--no-report")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["parameters"]["settings"]["unmix_weights"] == "poisson"
    assert json.loads(r.stdout)["parameters"]["settings"]["read_noise_adu"] == 2.0
    assert json.loads(r.stdout)["report"] is None  # --no-report: neither the cohort's ...
    assert not (tmp_path / "cp" / "report.html").exists()
    assert not (tmp_path / "cp" / "slides" / "a" / "report.html").exists()  # ... nor a slide's
    slide_summary = json.loads((tmp_path / "cp" / "slides" / "a" / "summary.json").read_text())
    assert slide_summary["settings"]["unmix_weights"] == "poisson"
    assert slide_summary["settings"]["pixel_size_um"] == 0.5  # the slide's own
    r = run("image", "cohort", str(cohort), "--out", str(tmp_path / "cq"), "--segmentation",
            "otsu", "--no-progress")
    assert r.returncode == 2 and "unknown segmentation 'otsu'" in r.stderr, r.stderr
    assert not (tmp_path / "cq").exists()
    # a cellpose model that is not a file, and a model for the watershed: one line each,
    # before any slide is read
    for extra, said in ((["--segmentation", "cellpose"], "is not a file"),
                        ([], "is for cellpose or stardist")):
        r = run("image", "cohort", str(cohort), "--out", str(tmp_path / "cr"), *extra,
                "--segmentation-model", str(tmp_path / "none.pt"), "--no-progress")
        assert r.returncode == 2 and said in r.stderr and len(r.stderr.splitlines()) == 1, \
            r.stderr
        assert not (tmp_path / "cr").exists()


def test_calibrate_gates_then_analyze(tmp_path):
    r = run("image", "simulate", "--size", "384", "--preset", "MDA-MB-468", "--seed", "2",
            "--out", str(tmp_path / "neg.ome.tif"))
    assert r.returncode == 0, r.stderr
    r = run("image", "analyze", str(tmp_path / "neg.ome.tif"), "--out", str(tmp_path / "neg"),
            "--no-progress", "--no-report")
    assert r.returncode == 0, r.stderr
    r = run("image", "calibrate", "--control", f"MDA-MB-468={tmp_path / 'neg' / 'cells.parquet'}",
            "--negative", "ER=MDA-MB-468", "--out", str(tmp_path / "cal.json"), "--json")
    assert r.returncode == 0, r.stderr
    assert "ER" in json.loads(r.stdout)["gates"]
    # the control's analysis folder does as well as its cells.parquet
    r = run("image", "calibrate", "--control", f"MDA-MB-468={tmp_path / 'neg'}",
            "--negative", "ER=MDA-MB-468", "--out", str(tmp_path / "cal2.json"), "--json",
            "--plot", str(tmp_path / "cal.png"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "cal.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(r.stdout)["gates"] == json.loads((tmp_path / "cal.json").read_text())[
        "gates"]
    r = run("image", "calibrate", "--control", f"MDA-MB-468={tmp_path / 'neg'}",
            "--negative", "ERR=MDA-MB-468")
    assert r.returncode == 2 and "known markers:" in r.stderr
    r = run("image", "analyze", str(tmp_path / "neg.ome.tif"), "--out", str(tmp_path / "again"),
            "--calibration", str(tmp_path / "cal.json"), "--no-progress", "--no-report", "--json",
            "--no-outlines", "--no-unmixed")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "again" / "cells.parquet").exists()
    assert not (tmp_path / "again" / "cells.geojson").exists()
    assert not (tmp_path / "again" / "unmixed.ome.zarr").exists()
    # the negative control scored with its own 99th-percentile gate: ~1 % positive
    pct = json.loads(r.stdout)["markers_scored"]["percent_positive"]["ER"]
    assert pct < 5
    # each cell's positivity in cells.parquet, counting as the slide's percent
    import pandas as pd
    import pytest

    er = pd.read_parquet(tmp_path / "again" / "cells.parquet")["ER_positive"]
    assert str(er.dtype) == "boolean" and 100 * er.sum() / er.notna().sum() == pytest.approx(pct)
    # the calibration records the scale its controls were analysed on (from their
    # summary.json); the same slide matches it, an 8-bit export of it does not and is warned
    # (a review scored an 8-bit export 2+ where the 16-bit slide was 3+, unsaid)
    scale = json.loads((tmp_path / "cal.json").read_text())["controls_intensity_scale"]
    assert scale["dtype"] == "uint16" and scale["unmixed"] == "the detector's spectra"
    assert scale["unmixing"] == "plain NNLS" and scale["excitation_nm"] == 405.0
    assert not [w for w in json.loads(r.stdout)["warnings"] if w.startswith("calibration:")]
    import numpy as np

    from qdmed.imaging import read_slide, write_ome_tiff

    src = read_slide(tmp_path / "neg.ome.tif")
    write_ome_tiff(tmp_path / "neg8.ome.tif", (np.asarray(src.data) >> 8).astype(np.uint8),
                   channel_names=list(src.channel_names), pixel_size_um=src.pixel_size_um)
    said = _analyzed_warnings(tmp_path / "neg8.ome.tif", tmp_path / "n8", tmp_path / "cal.json",
                              "calibration:")
    assert len(said) == 1 and "pixel type: uint8 here, uint16 in the controls" in said[0]
    # a gate far above the tissue (none of ~100 nuclei pass, where its noise floor predicts
    # 10 %): the receptor warning is said by analyze too, in full (it was only in
    # summary.json)
    cal = json.loads((tmp_path / "cal.json").read_text())
    cal["gates"]["ER"] = {**cal["gates"]["ER"], "threshold": 1e9,
                          "false_positive_percent": 10.0, "control_cells": 100000}
    (tmp_path / "high.json").write_text(json.dumps(cal))
    said = _analyzed_warnings(tmp_path / "neg.ome.tif", tmp_path / "hi", tmp_path / "high.json",
                              "ER: ")
    assert len(said) == 1 and "quieter than the control's" in said[0]


def test_a_calibration_with_her2_gives_its_gates_to_a_panel_without_her2(tmp_path):
    """A review found a calibration holding HER2 cut-offs and gates refused whole on an
    ER/PR panel; its gates are now used, and the HER2 cut-offs said to be left out."""
    r = run("image", "panel", "--markers", "ER,PR", "--out", str(tmp_path / "erpr.yaml"))
    assert r.returncode == 0, r.stderr
    r = run("image", "simulate", "--panel", str(tmp_path / "erpr.yaml"), "--size", "256",
            "--preset", "MCF-7", "--out", str(tmp_path / "s.ome.tif"))
    assert r.returncode == 0, r.stderr
    (tmp_path / "cal.json").write_text(json.dumps({
        "her2": {"marker": "HER2", "faint": 1.0, "weak_moderate": 2.0, "intense": 3.0},
        "gates": {"ER": {"compartment": "nucleus", "threshold": 0.5}}}))
    r = run("image", "analyze", str(tmp_path / "s.ome.tif"), "--panel",
            str(tmp_path / "erpr.yaml"), "--calibration", str(tmp_path / "cal.json"), "--out",
            str(tmp_path / "a"), "--no-progress", "--no-report", "--json", "--no-outlines",
            "--no-unmixed")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["warnings"][0] == ("the calibration's HER2 cut-offs score HER2, which the panel "
                                "lacks: only its positivity gates are used")
    assert d["markers_scored"]["percent_positive"]["ER"] is not None and d["her2"] is None
    # the table says why HER2 is not scored (it said "no --calibration", one being given)
    r = run("image", "analyze", str(tmp_path / "s.ome.tif"), "--panel",
            str(tmp_path / "erpr.yaml"), "--calibration", str(tmp_path / "cal.json"), "--out",
            str(tmp_path / "a"), "--no-progress", "--no-report", "--no-outlines",
            "--no-unmixed")
    assert r.returncode == 0, r.stderr
    row = next(ln for ln in r.stdout.splitlines() if "HER2 category" in ln)  # (wrapped)
    assert "not scored: the calibration has" in row and "--calibration" not in row
    # HER2 cut-offs the panel can use, but no cell to score: said as such (a review read
    # "the calibration has no HER2 cut-offs for this panel" there)
    import numpy as np

    from qdmed.imaging import breast_panel_5plex, write_ome_tiff

    p5 = breast_panel_5plex()
    p5.to_file(tmp_path / "p5.yaml")
    write_ome_tiff(tmp_path / "empty.ome.tif", np.zeros((128, 128, 8), np.uint16),
                   channel_names=list(p5.channel_names), pixel_size_um=0.5)
    r = run("image", "analyze", str(tmp_path / "empty.ome.tif"), "--panel",
            str(tmp_path / "p5.yaml"), "--calibration", str(tmp_path / "cal.json"), "--out",
            str(tmp_path / "e"), "--no-progress", "--no-report", "--no-outlines",
            "--no-unmixed")
    assert r.returncode == 0, r.stderr
    row = next(ln for ln in r.stdout.splitlines() if "HER2 category" in ln)
    assert "not scored: no cell to score" in row


def test_a_panel_beside_the_slide_is_named_when_no_panel_is_given(tmp_path):
    """A review: a custom panel's slide analysed without --panel read each marker from
    another QD's abundance, unsaid (the built-in panel holds every QD: a perfect fit). The
    panel file simulate writes beside it is now named."""
    r = run("image", "panel", "--markers", "HER2,ER,EGFR", "--labels",
            "Qdot 605,Qdot 705,Qdot 655", "--out", str(tmp_path / "p3.yaml"))
    assert r.returncode == 0, r.stderr
    for name, panel in (("s", ["--panel", str(tmp_path / "p3.yaml")]), ("b", [])):
        r = run("image", "simulate", *panel, "--size", "192", "--preset", "BT474",
                "--out", str(tmp_path / f"{name}.ome.tif"))
        assert r.returncode == 0, r.stderr
    opts = ["--no-progress", "--no-report", "--json", "--no-outlines", "--no-unmixed"]
    r = run("image", "analyze", str(tmp_path / "s.ome.tif"), "--out", str(tmp_path / "a"),
            *opts)
    assert r.returncode == 0, r.stderr
    (w,) = [w for w in json.loads(r.stdout)["warnings"] if w.startswith("no --panel")]
    assert w == (f"no --panel given: the built-in panel is used, but {tmp_path}/s-panel.yaml "
                 "beside the slide labels its markers otherwise; if it is the slide's panel, "
                 f"give --panel {tmp_path}/s-panel.yaml")
    r = run("image", "unmix", str(tmp_path / "s.ome.tif"), "--out",
            str(tmp_path / "u.ome.zarr"), "--no-progress", "--json")
    assert r.returncode == 0, r.stderr
    assert any(w.startswith("no --panel given") for w in json.loads(r.stdout)["warnings"])
    import shutil

    (tmp_path / "c").mkdir()
    for f in ("s.ome.tif", "s-panel.yaml"):
        shutil.copy(tmp_path / f, tmp_path / "c" / f)
    r = run("image", "cohort", str(tmp_path / "c"), "--out", str(tmp_path / "co"), "--json",
            "--no-progress", "--no-outlines", "--no-unmixed", "--scheduler", "synchronous")
    assert r.returncode == 0, r.stderr
    assert any(w.startswith("no --panel given") and "c/s-panel.yaml" in w
               for w in json.loads(r.stdout)["warnings"])
    # the panel given, or the built-in panel's own file beside the slide: nothing to say
    for slide, panel in (("s", ["--panel", str(tmp_path / "s-panel.yaml")]), ("b", [])):
        r = run("image", "analyze", str(tmp_path / f"{slide}.ome.tif"), *panel, "--out",
                str(tmp_path / f"a{slide}"), *opts)
        assert r.returncode == 0, r.stderr
        assert not any(w.startswith("no --panel") for w in json.loads(r.stdout)["warnings"])


def _analyzed_warnings(slide, out, calibration, prefix: str) -> list[str]:
    """The warnings starting with `prefix` of `analyze --json` run on `slide`, each also
    printed on stderr."""
    r = run("image", "analyze", str(slide), "--out", str(out), "--calibration",
            str(calibration), "--no-progress", "--no-report", "--json", "--no-outlines",
            "--no-unmixed")
    assert r.returncode == 0, r.stderr
    said = [w for w in json.loads(r.stdout)["warnings"] if w.startswith(prefix)]
    assert all(f"! {w}" in r.stderr for w in said)
    return said


def test_panel_json(tmp_path):
    r = run("image", "panel", "--json", "--plot", str(tmp_path / "panel.png"))
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["components"][-1] == "autofluorescence" and d["condition_number"] < 100
    assert (tmp_path / "panel.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a plot that cannot be written is refused before the panel is written
    r = run("image", "panel", "--out", str(tmp_path / "p.yaml"), "--plot",
            str(tmp_path / "panel.png" / "x.png"))
    assert r.returncode == 2 and "panel.png is a file where a folder is needed" in r.stderr
    assert not (tmp_path / "p.yaml").exists()


def test_bad_inputs_exit_2(tmp_path):
    bad = tmp_path / "bad.ome.tif"
    bad.write_bytes(b"not a tiff at all")
    r = run("image", "analyze", str(bad), "--out", str(tmp_path / "o"), "--no-progress")
    assert r.returncode == 2 and "bad.ome.tif" in r.stderr and "Traceback" not in r.stderr
    r = run("image", "analyze", str(tmp_path / "missing.ome.zarr"))
    assert r.returncode == 2
    r = run("image", "panel", "--filters", "600-500")
    assert r.returncode == 2
    r = run("image", "cohort", str(tmp_path / "nope"))
    assert r.returncode == 2
    for cmd in (("analyze", str(tmp_path / "missing.ome.zarr")), ("cohort", str(tmp_path))):
        r = run("image", *cmd, "--saturation-level", "-5", "--no-progress")
        assert r.returncode == 2 and "saturation_level (--saturation-level) must be a positive" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    r = run("image", "simulate", "--bit-depth", "20", "--out", str(tmp_path / "s.ome.tif"))
    assert r.returncode == 2 and "bit_depth (--bit-depth) must be an integer from 8 to 16" in r.stderr
    r = run("image", "simulate", "--size", "9000", "--out", str(tmp_path / "big.ome.tif"))
    assert r.returncode == 2 and "write larger slides as .ome.zarr" in r.stderr
    r = run("image", "calibrate", "--control", f"a={tmp_path / 'no.parquet'}", "--faint-rule",
            "middle")
    assert r.returncode == 2 and "faint_rule (--faint-rule) must be one of ['quantile', " \
        "'gap']; got 'middle'" in r.stderr, r.stderr
    r = run("image", "simulate", "--junctions", "one", "--out", str(tmp_path / "j.ome.tif"))
    assert r.returncode == 2 and "junctions (--junctions) must be one of ['resolved', " \
        "'shared']; got 'one'" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run("image", "simulate", "--junctions", "shared", "--size", "128", "--out",
            str(tmp_path / "j.ome.tif"), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["n_cells"] > 5, r.stderr
    r = run("image", "analyze", str(tmp_path / "missing.ome.zarr"), "--exclude-flagged",
            "saturated,blurry")
    assert r.returncode == 2 and "exclude_flagged (--exclude-flagged) takes" in r.stderr and "'blurry'" in r.stderr
    for value, said in (("1,2", "offset (--offset) must be one number or 8 numbers"),
                        ("abc", "--offset must be a number or comma-separated numbers")):
        r = run("image", "analyze", str(tmp_path / "missing.ome.zarr"), "--offset", value)
        assert r.returncode == 2 and said in r.stderr, r.stderr
    # malformed calibration files: one line naming the file and the gate, before any slide
    for doc, what in (({"gates": [1, 2]}, "'gates' must map"),
                      ({"gates": {"ER": "x"}}, "gate 'ER' needs"),
                      ({"gates": {"ER": {"compartment": "nucleus", "threshold": 1,
                                         "false_positive_percent": 200}}},
                       "false_positive_percent")):
        cal = tmp_path / "cal.json"
        cal.write_text(json.dumps(doc))
        r = run("image", "analyze", str(tmp_path / "missing.ome.zarr"), "--calibration",
                str(cal))
        assert r.returncode == 2 and what in r.stderr and "cal.json" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


def test_outputs_never_replace_inputs_and_late_errors_come_first(tmp_path):
    """Review findings: unmix onto its own slide, an existing file as an output folder,
    malformed panels and calibrations, options that need another: one line, exit 2, before
    any work is written."""
    slide = tmp_path / "s.ome.zarr"
    r = run("image", "simulate", "--size", "256", "--out", str(slide))
    assert r.returncode == 0, r.stderr
    for out, what in ((slide, "is an input"), (tmp_path / "u.tif", "must end in .zarr")):
        r = run("image", "unmix", str(slide), "--out", str(out))
        assert r.returncode == 2 and what in r.stderr, r.stderr
    # another raw slide as the output: kept (a review's was replaced, label images and all);
    # an earlier unmixed image is replaced
    other = tmp_path / "other.ome.zarr"
    other.mkdir()
    (other / ".zattrs").write_text("{}")
    r = run("image", "unmix", str(slide), "--out", str(other))
    assert r.returncode == 2 and "is a Zarr image this command did not write" in r.stderr, \
        r.stderr
    assert sorted(p.name for p in other.iterdir()) == [".zattrs"]
    for _ in range(2):
        r = run("image", "unmix", str(slide), "--out", str(tmp_path / "u.ome.zarr"),
                "--no-progress")
        assert r.returncode == 0, r.stderr
    (tmp_path / "afile").write_text("x")
    r = run("image", "analyze", str(slide), "--out", str(tmp_path / "afile"), "--no-progress")
    assert r.returncode == 2 and "afile" in r.stderr and "Traceback" not in r.stderr, r.stderr
    cal = tmp_path / "cal.json"
    cal.write_text(json.dumps({"gates": {"XYZ": {"compartment": "nucleus", "threshold": 1}}}))
    r = run("image", "analyze", str(slide), "--out", str(tmp_path / "o"), "--calibration",
            str(cal), "--no-progress")
    assert r.returncode == 2 and "'XYZ', which is not a component" in r.stderr, r.stderr
    assert not (tmp_path / "o" / "cells.parquet").exists()
    cal.write_text(json.dumps({"gates": {"ER": {"compartment": "bogus", "threshold": 1}}}))
    r = run("image", "analyze", str(slide), "--out", str(tmp_path / "o"), "--calibration",
            str(cal), "--no-progress")
    assert r.returncode == 2 and "compartment must be one of" in r.stderr, r.stderr
    panel = tmp_path / "p.yaml"
    panel.write_text("markers: {HER2: {label: Qdot 605}}\nchannels_nm: [[500, 600], "
                     "[600, 700]]\nexcitation_nm: abc\n")
    r = run("image", "unmix", str(slide), "--panel", str(panel), "--out",
            str(tmp_path / "u.ome.zarr"))
    assert r.returncode == 2 and "excitation_nm must be a number" in r.stderr, r.stderr
    # (one field is now scored for any antigen: --marker ER alone is no longer refused)
    for args, what in ((("dab", "--example", "--no-outlines"), "they need --out"),
                       (("dab", "--example", "--case-rule", "highest"), "need --regions"),
                       (("simulate", "--out", str(tmp_path / "x.png")), "--out must be"),
                       (("simulate", "--missing", "A-1"), "need --tma"),
                       (("analyze", str(slide), "--workers", "0"), "n_workers (--workers)"),
                       (("calibrate", "--control", f"a={tmp_path}", "--control", f"a={tmp_path}"),
                        "given twice"),
                       # a review: "4+" was answered by "need a 0 or 1+ and a 3+ control"
                       (("calibrate", "--control", f"X={tmp_path}", "--category", "X=4+"),
                        "--category X=4+: HER2 category must be one of"),
                       # ... and HER2 twice was answered with DAPI among the duplicates
                       (("panel", "--markers", "HER2,ER,HER2"),
                        "--markers names HER2 more than once: HER2,ER,HER2"),
                       # more markers than default candidates: the catalog's others named
                       (("panel", "--markers", "HER2,ER,PR,EGFR,mTOR,Ki67,CD8,AR"),
                        "catalog Qdots not given are Qdot 545, Qdot 585, Qdot 625")):
        r = run("image", *args)
        assert r.returncode == 2 and what in r.stderr, (args, r.stderr)


def test_unmix_says_when_the_panel_does_not_explain_the_slide(tmp_path):
    """A new user's `image unmix` with a panel lacking three of the slide's labels said
    nothing (analyze warned: 40 % of the signal unexplained). unmix measures the same fit
    on a sample of every chunk's pixels: ~0 with the slide's panel, warned without."""
    slide = tmp_path / "s.ome.zarr"
    assert run("image", "simulate", "--size", "512", "--out", str(slide),
               "--no-progress").returncode == 0
    r = run("image", "unmix", str(slide), "--out", str(tmp_path / "a.ome.zarr"), "--json",
            "--no-progress")
    d = json.loads(r.stdout)
    assert r.returncode == 0 and d["misfit"] < 0.02 and d["warnings"] == [], r.stderr
    r = run("image", "panel", "--markers", "HER2,ER", "--out", str(tmp_path / "p2.yaml"))
    assert r.returncode == 0, r.stderr
    r = run("image", "unmix", str(slide), "--panel", str(tmp_path / "p2.yaml"), "--out",
            str(tmp_path / "b.ome.zarr"), "--json", "--no-progress")
    d = json.loads(r.stdout)
    assert r.returncode == 0 and d["misfit"] > 0.1, r.stderr
    assert any("does not explain the brightest" in w for w in d["warnings"])


def test_unmixed_image_rounded_to_fewer_bits(tmp_path):
    """--unmixed-bits 10: every value within 2**-11 relative of the exact float32 (numcodecs
    BitRound, round to nearest), a plain float32 OME-Zarr, and a smaller one; bad bit counts
    and --unmixed-bits without an unmixed image are refused before any work."""
    import zarr

    slide = tmp_path / "s.ome.tif"
    assert run("image", "simulate", "--size", "512", "--out", str(slide)).returncode == 0
    for bits, out in ((None, "exact.ome.zarr"), (10, "b10.ome.zarr")):
        extra = ("--plot", str(tmp_path / "u.png")) if bits is None else \
            ("--unmixed-bits", str(bits))
        r = run("image", "unmix", str(slide), "--out", str(tmp_path / out), "--json", *extra)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["unmixed_keep_bits"] == bits
    assert (tmp_path / "u.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    exact = np.asarray(zarr.open_group(str(tmp_path / "exact.ome.zarr"), mode="r")["0"])
    b10 = np.asarray(zarr.open_group(str(tmp_path / "b10.ome.zarr"), mode="r")["0"])
    assert b10.dtype == np.float32 and b10.shape == exact.shape
    assert np.all(np.abs(b10 - exact) <= 2.0 ** -11 * np.abs(exact))
    assert np.any(b10 != exact) and np.all((b10 == 0) == (exact == 0))

    def size(d):
        return sum(f.stat().st_size for f in d.rglob("*") if f.is_file())

    assert size(tmp_path / "b10.ome.zarr") < 0.85 * size(tmp_path / "exact.ome.zarr")
    for args, what in ((("unmix", str(slide), "--out", str(tmp_path / "x.ome.zarr"),
                         "--unmixed-bits", "0"), "from 1 to 23"),
                       (("analyze", str(slide), "--out", str(tmp_path / "a"), "--no-unmixed",
                         "--unmixed-bits", "10"), "is not written")):
        r = run("image", *args)
        assert r.returncode == 2 and what in r.stderr, (args, r.stderr)
    assert not (tmp_path / "x.ome.zarr").exists() and not (tmp_path / "a").exists()


def test_poisson_unmixing_from_the_command_line(tmp_path):
    """--poisson writes the Poisson maximum-likelihood abundances (unmix_nnls's, with the
    read noise given); --read-noise is checked, and refused without --poisson."""
    from qdmed.imaging import breast_panel_5plex, read_slide, unmix_nnls

    slide = tmp_path / "s.ome.tif"
    assert run("image", "simulate", "--size", "256", "--out", str(slide)).returncode == 0
    outs = {}
    for name, extra in (("plain", ()), ("poisson", ("--poisson", "--read-noise", "3"))):
        r = run("image", "unmix", str(slide), "--out", str(tmp_path / f"{name}.ome.zarr"),
                "--json", *extra)
        assert r.returncode == 0, r.stderr
        outs[name] = (json.loads(r.stdout),
                      np.asarray(read_slide(tmp_path / f"{name}.ome.zarr").data))
    assert outs["plain"][0]["unmix_weights"] is None
    assert outs["plain"][0]["read_noise_adu"] is None
    assert outs["poisson"][0]["unmix_weights"] == "poisson"
    assert outs["poisson"][0]["read_noise_adu"] == 3.0
    plain, ml = outs["plain"][1], outs["poisson"][1]
    img = np.asarray(read_slide(slide).data).reshape(-1, 8)
    a = breast_panel_5plex().endmembers
    want = unmix_nnls(img, a, weights="poisson", read_noise=3.0).astype(np.float32)
    got = ml.reshape(img.shape[0], -1)[:, :a.shape[1]]  # then the residual
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * want.max())
    assert not np.array_equal(ml, plain)
    import zarr

    how = zarr.open_group(str(tmp_path / "poisson.ome.zarr"), mode="r").attrs["qdmed"][
        "unmixing"]  # how the unmixed image was made, in it
    assert how["unmix_weights"] == "poisson" and how["read_noise_adu"] == 3.0
    assert "weighted by 1 / (A x + read_noise^2)" in how["residual"]
    for extra, said in ((("--read-noise", "2"), "is used by --poisson only"),
                        (("--poisson", "--read-noise", "0"), "--read-noise must be from 0.1 to"),
                        (("--poisson", "--read-noise", "1e300"), "must be from 0.1")):
        r = run("image", "unmix", str(slide), "--out", str(tmp_path / "x.ome.zarr"), *extra)
        assert r.returncode == 2 and said in r.stderr and len(r.stderr.splitlines()) == 1, \
            r.stderr
    assert not (tmp_path / "x.ome.zarr").exists()


def test_saturated_slide_is_flagged(tmp_path):
    """An 8-bit detector (the simulated scene exceeds 255 counts): the OME-TIFF declares it,
    the analysis flags the cells and prints the warning."""
    r = run("image", "simulate", "--size", "384", "--bit-depth", "8", "--seed", "3",
            "--out", str(tmp_path / "s8.ome.tif"), "--json")
    assert r.returncode == 0, r.stderr
    r = run("image", "analyze", str(tmp_path / "s8.ome.tif"), "--out", str(tmp_path / "a"),
            "--no-progress", "--no-report", "--no-unmixed")
    assert r.returncode == 0, r.stderr
    assert "OME SignificantBits 8" in r.stdout and "! saturation:" in r.stderr
    # the panel's fit is printed, and clipped pixels are saturation's, not a misfit's
    assert "panel fit" in r.stdout and "! fit:" not in r.stderr
    # --json: the analysis's warnings (nested by block in the summary) listed at the top
    # level as well, and printed as without --json
    r = run("image", "analyze", str(tmp_path / "s8.ome.tif"), "--out", str(tmp_path / "a"),
            "--no-progress", "--no-report", "--no-unmixed", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["warnings"] == [f"saturation: {w}" for w in d["saturation"]["warnings"]]
    assert d["warnings"] and all(f"! {w}" in r.stderr for w in d["warnings"])
    sat = json.loads((tmp_path / "a" / "summary.json").read_text())["saturation"]
    assert sat["level_adu"] == 255 and sat["percent_scored_cells_saturated"] > 1


def test_detector_offset(tmp_path):
    """A camera that is not dark-corrected (100 counts of offset): warned without --offset,
    subtracted with it."""
    r = run("image", "simulate", "--size", "384", "--offset", "100", "--preset", "luminal-A",
            "--out", str(tmp_path / "raw.ome.tif"), "--json")
    assert r.returncode == 0, r.stderr
    for name, extra in (("plain", ()), ("fixed", ("--offset", "100"))):
        r = run("image", "analyze", str(tmp_path / "raw.ome.tif"), "--out", str(tmp_path / name),
                "--no-progress", "--no-report", "--no-unmixed", *extra)
        assert r.returncode == 0, r.stderr
        off = json.loads((tmp_path / name / "summary.json").read_text())["offset"]
        assert off["suspected"] is (name == "plain")
        assert ("! offset:" in r.stderr) is (name == "plain")
    assert set(off["offset_adu"].values()) == {100.0}
    # quality control alone, on the slide and on its folder
    r = run("image", "qc", str(tmp_path / "raw.ome.tif"), "--json", "--no-progress",
            "--plot", str(tmp_path / "focus.png"))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["offset"]["suspected"] is True
    assert (tmp_path / "focus.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = run("image", "qc", str(tmp_path), "--out", str(tmp_path / "qc"), "--no-progress",
            "--plot", str(tmp_path / "qc.png"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "qc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "! raw.ome.tif: offset:" in r.stderr and (tmp_path / "qc" / "qc.csv").exists()
    r = run("image", "qc", str(tmp_path / "raw.ome.tif"), "--offset", "1,2")
    assert r.returncode == 2 and "offset (--offset) must be" in r.stderr


def test_a_folder_whose_every_slide_fails_exits_2(tmp_path):
    (tmp_path / "x.ome.tif").write_bytes(b"II*\x00garbage")
    for cmd in (("qc", str(tmp_path), "--out", str(tmp_path / "q")),
                ("qc", str(tmp_path), "--out", str(tmp_path / "q"), "--json"),
                ("cohort", str(tmp_path), "--out", str(tmp_path / "c"), "--workers", "1")):
        r = run("image", *cmd, "--no-progress")
        assert r.returncode == 2, (cmd, r.stdout[-500:], r.stderr[-500:])
        assert "error: none of the 1 slides could be analysed" in r.stderr, r.stderr


def test_qc_of_a_folder_with_one_unreadable_slide_exits_3(tmp_path):
    """The good slide's results are written and the exit code says the run is incomplete
    (it was 0: a pipeline took the run as complete)."""
    r = run("image", "simulate", "--size", "256", "--out", str(tmp_path / "a.ome.tif"))
    assert r.returncode == 0, r.stderr
    (tmp_path / "x.ome.tif").write_bytes(b"II*\x00garbage")
    for extra in ((), ("--json",)):
        r = run("image", "qc", str(tmp_path), "--out", str(tmp_path / "q"), "--no-progress",
                *extra)
        assert r.returncode == 3, (r.stdout[-500:], r.stderr[-500:])
        assert "1 of 2 slides failed" in r.stderr and (tmp_path / "q" / "qc.csv").exists()
        # its error names the file once (it read "x.ome.tif: '.../x.ome.tif': ...")
        said = [ln for ln in r.stderr.splitlines() if "x.ome.tif" in ln]
        assert said and not any(ln.count("x.ome.tif") > 1 for ln in said), said


def test_tma_simulate_dearray_and_cohort_per_core(tmp_path):
    folder = tmp_path / "tmas"
    folder.mkdir()
    r = run("image", "simulate", "--tma", "1x2", "--presets", "HER2-enriched,her2-ultralow",
            "--core-diameter-um", "250", "--out", str(folder / "tma1.ome.zarr"), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert (tmp_path / "tmas" / "tma1-truth" / "cores.geojson").exists()
    assert info["cores"] == "1x2 (0 missing)"
    regs = tmp_path / "cores"
    regs.mkdir()
    r = run("image", "tma", str(folder / "tma1.ome.zarr"), "--out", str(regs / "tma1.geojson"),
            "--plot", str(tmp_path / "grid.png"), "--qptma", str(tmp_path / "tma1.qptma"),
            "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert (d["n_rows"], d["n_cols"], d["n_found"]) == (1, 2, 2)
    from qdmed.imaging import read_regions

    grid = read_regions(tmp_path / "tma1.qptma")  # QuPath's TMA grid file, read back
    assert grid.names == read_regions(regs / "tma1.geojson").names == ("A-1", "A-2")
    assert (tmp_path / "grid.png").stat().st_size > 0
    # --qptma alone writes the grid file only (the default cores.geojson was replaced)
    r = run("image", "tma", str(folder / "tma1.ome.zarr"), "--qptma", "only.qptma", "--json",
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["geojson"] is None and (tmp_path / "only.qptma").exists()
    assert not (tmp_path / "cores.geojson").exists()
    # the array's own labels, QuPath's notation and label order
    r = run("image", "tma", str(folder / "tma1.ome.zarr"), "--out", str(tmp_path / "l.json"),
            "--row-labels", "7", "--col-labels", "b-a", "--label-order", "column-first",
            "--json")
    assert r.returncode == 0, r.stderr
    assert [c["name"] for c in json.loads(r.stdout)["cores"]] == ["b-7", "a-7"]
    for bad, said in ((["--row-labels", "A-B"], "the rows present, 'B' or 'A'"),
                      (["--label-order", "rows"], "row-first or column-first"),
                      (["--qptma", "grid.txt"], "must end in .qptma")):
        r = run("image", "tma", str(folder / "tma1.ome.zarr"), "--out",
                str(tmp_path / "l.json"), *bad)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert said in r.stderr
    # TMA cores are scored one by one without being asked: regions.csv per slide and cohort
    r = run("image", "cohort", str(folder), "--regions-dir", str(regs), "--out",
            str(tmp_path / "co"), "--workers", "1", "--no-progress", "--no-unmixed", "--json")
    assert r.returncode == 0, r.stderr
    c = json.loads(r.stdout)
    assert c["slides"][0]["n_regions"] == 2
    table = (tmp_path / "co" / "regions.csv").read_text().splitlines()
    assert table[0].startswith("slide,region,status,n_cells,n_scored")
    assert [line.split(",")[1] for line in table[1:]] == ["A-1", "A-2"]
    assert (tmp_path / "co" / "slides" / "tma1" / "regions.csv").exists()
    # a TMA map (core -> case) gives one row per case (compare --key case reads it)
    (tmp_path / "map.csv").write_text("slide,core,case\ntma1,A-1,P1\ntma1,A-2,P2\n"
                                      "tma2,A-1,P1\nblockX,A-1,P9\n")
    (folder / "tma2.ome.tif").write_bytes(b"II*\x00garbage")  # P1's other block fails
    r = run("image", "cohort", str(folder), "--regions-dir", str(regs), "--tma-map",
            str(tmp_path / "map.csv"), "--out", str(tmp_path / "co"), "--workers", "1",
            "--no-progress", "--no-unmixed", "--json")
    assert r.returncode == 3, r.stderr  # results written, one slide failed
    c = json.loads(r.stdout)
    assert c["n_cases"] == 3 and c["parameters"]["tma_map"].endswith("map.csv")
    assert c["case_warnings"] == [f"TMA map slides not in {folder}: blockX"]
    cases = (tmp_path / "co" / "cases.csv").read_text().splitlines()
    assert [line.split(",")[:3] for line in cases[1:]] == [["P1", "ok", "2"], ["P2", "ok", "1"],
                                                           ["P9", "no cells", "1"]]
    assert cases[1].endswith("core A-1 on failed slide tma2.ome.tif")
    # a case whose core lies on a slide not in the folder says so in its own row (a
    # walk-through's case read "ok", complete, its other core on a misspelt slide)
    assert cases[3].endswith("1 of 1 cores missing; core A-1 on slide blockX, not among the "
                             "slides analysed\"")
    (folder / "tma2.ome.tif").unlink()
    # the highest-core rule across the cohort (the slides resume from their finished tiles):
    # one case of both cores takes the more ER-positive core's percentage; a mapped core
    # that no regions file holds keeps its case
    (tmp_path / "map.csv").write_text("slide,core,case\ntma1,A-1,P1\ntma1,A-2,P1\n"
                                      "tma1,B-7,P7\n")
    (tmp_path / "gates.json").write_text(json.dumps(
        {"gates": {"ER": {"compartment": "nucleus", "threshold": 20.0}}}))
    r = run("image", "cohort", str(folder), "--regions-dir", str(regs), "--tma-map",
            str(tmp_path / "map.csv"), "--case-rule", "highest", "--out", str(tmp_path / "co"),
            "--calibration", str(tmp_path / "gates.json"), "--workers", "1", "--no-progress",
            "--no-unmixed", "--json")
    assert r.returncode == 0, r.stderr
    c = json.loads(r.stdout)
    assert c["parameters"]["case_rule"] == "highest"
    assert c["case_warnings"] == ["1 core(s) of the TMA map in no regions file "
                                  "(tma1.ome.zarr:B-7)"]
    import pandas as pd

    cases = pd.read_csv(tmp_path / "co" / "cases.csv").set_index("case")
    regions = pd.read_csv(tmp_path / "co" / "regions.csv").set_index("region")
    assert cases.loc["P1", "cores"] == "tma1.ome.zarr:A-1;tma1.ome.zarr:A-2"
    assert cases.loc["P1", "n_cores_scored"] == (regions["status"] == "ok").sum() == 2
    assert cases.loc["P1", "ER_percent_positive"] == regions["ER_percent_positive"].max()
    assert cases.loc["P7", "status"] == "no cells" and cases.loc["P7", "n_cores_missing"] == 1
    html = (tmp_path / "co" / "report.html").read_text()
    assert "Cases (TMA map)" in html and "highest-scoring core" in html and "P7" in html
    # the cases are printed as analyze prints them (a review found only the file's name)
    assert [r["case"] for r in c["cases_scored"]["cases"]] == list(cases.index)
    r = run("image", "cohort", str(folder), "--regions-dir", str(regs), "--tma-map",
            str(tmp_path / "map.csv"), "--case-rule", "highest", "--out", str(tmp_path / "co"),
            "--calibration", str(tmp_path / "gates.json"), "--workers", "1", "--no-progress",
            "--no-unmixed")
    assert r.returncode == 0, r.stderr
    printed = r.stdout[r.stdout.index("Cases (cases.csv)"):]
    assert "P1" in printed and "P7" in printed and "no cells" in printed
    # tumour drawn in the left half of core A-1 only, one file per slide: A-2 has nothing
    a1 = d["cores"][0]
    x, y, r = a1["center_x"] + 0.5, a1["center_y"] + 0.5, a1["radius_px"] + 5
    (tmp_path / "tumour").mkdir()
    (tmp_path / "tumour" / "tma1.geojson").write_text(json.dumps([{
        "type": "Feature", "properties": {"objectType": "annotation"},
        "geometry": {"type": "Polygon", "coordinates": [[[x - r, y - r], [x, y - r],
                                                         [x, y + r], [x - r, y + r],
                                                         [x - r, y - r]]]}}]))
    r = run("image", "cohort", str(folder), "--regions-dir", str(regs), "--tumour-regions-dir",
            str(tmp_path / "tumour"), "--out", str(tmp_path / "co"), "--workers", "1",
            "--no-progress", "--no-unmixed", "--json")
    assert r.returncode == 0, r.stderr
    regions = pd.read_csv(tmp_path / "co" / "regions.csv").set_index("region")
    assert 0.3 < regions.loc["A-1", "n_scored"] / regions.loc["A-1", "n_cells"] < 0.7
    assert regions.loc["A-2", "message"] == ("none of its cells in the tumour annotations; "
                                             "no scored cells")
    assert cases.loc["P7", "message"].endswith("core tma1.ome.zarr:B-7 not in the regions file")
    r = run("image", "analyze", str(folder / "tma1.ome.zarr"), "--regions",
            str(regs / "tma1.geojson"), "--region-min-cells", "0", "--out", str(tmp_path / "a"))
    assert r.returncode == 2 and "region_min_cells" in r.stderr
    r = run("image", "cohort", str(folder), "--regions-dir", str(regs), "--case-rule",
            "highest", "--out", str(tmp_path / "co2"))
    assert r.returncode == 2 and "needs a TMA map (--tma-map)" in r.stderr
    r = run("image", "simulate", "--tma", "2x2", "--out", str(tmp_path / "x.ome.tif"))
    assert r.returncode == 2 and "OME-Zarr" in r.stderr


def test_dab_image_and_brightfield_tma(tmp_path, brightfield_tma):
    # the example brightfield TMA, written for a new user to try the DAB commands on
    r = run("image", "dab", "--example-tma", str(tmp_path / "ex.ome.tif"), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["missing"] == "B-2" and (tmp_path / "ex.ome.tif").is_file()
    r = run("image", "dab", "--example-tma", str(tmp_path / "ex2.ome.tif"), "--example")
    assert r.returncode == 2 and "give it alone" in r.stderr
    r = run("image", "dab", "--example", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["her2"]["category"] == "3+"
    assert any("uncalibrated example" in w for w in d["warnings"])  # the default cut-offs
    # with --json the warnings are printed too, as without it
    assert r.stderr.splitlines() == [f"! {w}" for w in d["warnings"]]
    r = run("image", "dab", "--example", "--od-cutoffs", "0.1,0.25,0.5", "--background",
            "241,241,241")
    assert r.returncode == 0, r.stderr
    assert "241.0, 241.0, 241.0" in r.stdout and "uncalibrated" not in r.stdout + r.stderr
    # summary.json's transmittances pasted back: refused with the levels to give (a review
    # got "internal error: ZeroDivisionError", exit 1)
    r = run("image", "dab", "--example", "--background", "0.926,0.925,0.918")
    assert r.returncode == 2 and "give 236.1,235.9,234.1" in r.stderr
    # stain vectors from the command line (a review: only Python could give them): the
    # published ones given as QuPath shows them, at any scale, score as the default
    r = run("image", "dab", "--example", "--json", "--stains", "1.3,1.408,0.572;0.268,0.570,0.776")
    assert r.returncode == 0, r.stderr
    assert abs(json.loads(r.stdout)["h_score"] - d["h_score"]) < 1e-9
    r = run("image", "dab", "--example", "--stains", "0.65,0.70")
    assert r.returncode == 2 and "two OD vectors 'R,G,B;R,G,B'" in r.stderr
    # DAB given first: refused (it scored 25 cells instead of 279; a review); a vector
    # refused by the stain matrix names the option
    r = run("image", "dab", "--example", "--stains", "0.269,0.568,0.778;0.651,0.701,0.290")
    assert r.returncode == 2 and "give haematoxylin first" in r.stderr
    r = run("image", "dab", "--example", "--stains", "-0.65,0.70,0.29;0.27,0.57,0.78")
    assert r.returncode == 2 and r.stderr.startswith("error: --stains '-0.65")
    # one field for ER: the count beside the status, two decimals (0.96 % read as 1.0 %)
    r = run("image", "dab", "--example", "--marker", "ER")
    assert r.returncode == 0 and "251 of 283 nuclei (88.69 %)" in r.stdout
    r = run("image", "dab", "--example", "--plot", str(tmp_path / "dab.png"))
    assert r.returncode == 0 and (tmp_path / "dab.png").read_bytes()[:4] == b"\x89PNG"
    # a brightfield TMA: dearrayed (optical density), then DAB scored core by core, case by
    # case, for `compare` against the QD-IHC cases
    slide, _ = brightfield_tma(tmp_path / "bf.ome.tif")
    r = run("image", "tma", str(slide), "--out", str(tmp_path / "cores.geojson"), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["n_found"] == 5
    (tmp_path / "map.csv").write_text("core,case\nA-1,P1\nB-1,P1\nA-3,P3\n")
    r = run("image", "dab", str(slide), "--regions", str(tmp_path / "cores.geojson"),
            "--tma-map", str(tmp_path / "map.csv"), "--region-min-cells", "20", "--out",
            str(tmp_path / "dab"), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "DAB IHC (HER2) by region" in r.stdout and "Cases (cases.csv)" in r.stdout
    assert (tmp_path / "dab" / "cases.csv").read_text().startswith("case,status,n_cores")
    # the whole slide tile by tile (--out without --regions): one region, the slide
    r = run("image", "dab", str(slide), "--out", str(tmp_path / "whole"), "--tile", "256",
            "--no-progress", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["thresholds"][0]["n_tiles"] == 12 and d["n_cells"] > 150
    assert [row["region"] for row in d["regions_scored"]["regions"]] == ["bf.ome.tif"]
    r = run("image", "dab", str(slide), "--out", str(tmp_path / "whole"), "--tile", "256",
            "--no-progress")
    assert r.returncode == 0 and "bf.ome.tif: 12 tiles, nuclei at haematoxylin OD >" in r.stdout
    assert (tmp_path / "whole" / "report.html").exists()
    for bad, said in ((["--example", "--tma-map", str(tmp_path / "map.csv")], "not --example"),
                      ([str(slide), "--tma-map", str(tmp_path / "map.csv")], "need regions"),
                      (["--example", "--regions", str(tmp_path / "cores.geojson")],
                       "not --example"),
                      ([str(slide), "--regions", str(tmp_path / "cores.geojson"),
                        "--od-cutoffs", "0.3,0.1"], "od_cutoffs (--od-cutoffs) must be three")):
        r = run("image", "dab", *bad, "--out", str(tmp_path / "x"))
        assert r.returncode == 2 and said in r.stderr, r.stderr
    for bad, said in ((["--example", "--tma-map", str(tmp_path / "map.csv")], "need --regions"),
                      ([str(slide), "--workers", "2"], "need --out"),
                      ([str(slide), "--out", str(tmp_path / "x"), "--plot",
                        str(tmp_path / "x.png")], "in the output folder's report.html"),
                      ([str(slide), "--tile", "512"], "need --out")):
        r = run("image", "dab", *bad)
        assert r.returncode == 2 and said in r.stderr, r.stderr


def test_already_unmixed_qptiff(tmp_path, write_qptiff):
    """An inForm-style component image (QPTIFF): `image info` lists its channels, `image
    panel --components --slide` maps markers to them, analyze and cohort run on it."""
    from qdmed.imaging import breast_panel_5plex, simulate_field, unmixed_panel

    sp = breast_panel_5plex()
    names = ["DAPI", *sp.labels[1:], "Autofluorescence"]
    up = unmixed_panel({**dict(zip(sp.markers, sp.labels, strict=True)),
                        "autofluorescence": "Autofluorescence"}, image_channels=names)
    f = simulate_field((512, 512), preset="HER2-enriched", seed=2, endmembers=up.endmembers,
                       marker_names=list(up.markers), photons_per_unit=300.0, dtype="float32")
    (tmp_path / "co").mkdir()
    slide = write_qptiff(tmp_path / "co" / "case1.qptiff", f.image, names)
    r = run("image", "info", str(slide), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["format"] == "qptiff" and info["channels"] == names
    comps = "DAPI=DAPI,HER2=qdot 525,ER=Qdot 565,PR=Qdot 605,EGFR=Qdot 655,mTOR=Qdot 705," \
            "autofluorescence=6"
    r = run("image", "panel", "--components", comps, "--slide", str(slide),
            "--out", str(tmp_path / "up.yaml"), "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["image_channel_index"] == {"DAPI": 0, "HER2": 1, "ER": 2, "PR": 3, "EGFR": 4,
                                        "mTOR": 5, "autofluorescence": 6}
    assert d["image_channels"] == names
    r = run("image", "analyze", str(slide), "--panel", str(tmp_path / "up.yaml"),
            "--out", str(tmp_path / "one"), "--no-progress", "--json")
    assert r.returncode == 0, r.stderr
    assert abs(json.loads(r.stdout)["n_cells"] - len(f.truth)) <= 0.03 * len(f.truth)
    assert "unmixed before qdmed read it" in (tmp_path / "one" / "report.html").read_text()
    # its channels are components, not detector counts: no Poisson model of their noise
    for cmd, where, out in (("analyze", slide, "pois"), ("cohort", tmp_path / "co", "pois"),
                            ("unmix", slide, "pois.ome.zarr")):
        r = run("image", cmd, str(where), "--panel", str(tmp_path / "up.yaml"), "--poisson",
                "--out", str(tmp_path / out), "--no-progress" if cmd != "unmix" else "--json")
        assert r.returncode == 2 and "already unmixed" in r.stderr, (cmd, r.stderr)
        assert len(r.stderr.splitlines()) == 1 and not (tmp_path / out).exists()
    # an inForm export folder also holds composite images: --pattern picks the components;
    # a second case recorded with twice the HER2 exposure is not flagged: float component
    # images no longer scale with exposure (only raw integer counts are compared)
    (tmp_path / "co" / "case1_composite_image.tif").write_bytes(b"II*\x00not read")
    write_qptiff(tmp_path / "co" / "case2.qptiff", f.image, names,
                 exposure_us=[1000, 2000] + [1000] * 5)
    r = run("image", "cohort", str(tmp_path / "co"), "--panel", str(tmp_path / "up.yaml"),
            "--out", str(tmp_path / "cohort"), "--workers", "1", "--no-progress", "--json",
            "--pattern", "*.QPTIFF")
    assert r.returncode == 0, r.stderr
    co = json.loads(r.stdout)
    assert [(s["slide"], s["status"]) for s in co["slides"]] == [("case1.qptiff", "ok"),
                                                                  ("case2.qptiff", "ok")]
    assert "exposure_differs" not in co["slides"][1] and co["acquisition_warnings"] == []
    # what a folder holds, slide by slide (the bad one said, not fatal)
    r = run("image", "info", str(tmp_path / "co"), "--json")
    assert r.returncode == 0, r.stderr
    rows = {d["slide"]: d for d in json.loads(r.stdout)}
    assert rows["case1_composite_image.tif"]["status"] == "unreadable"
    assert rows["case2.qptiff"]["exposure_ms"] == [1.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert rows["case1.qptiff"]["channels"] == names
    # bad input: one line, exit 2
    for args, msg in (
            (("image", "panel", "--components", "DAPI=DAPI,HER2=Qdot 999", "--slide",
              str(slide)), "case1.qptiff: component 'HER2': the image has no channel"),
            (("image", "panel", "--components", "DAPI"), "COMPONENT=CHANNEL pairs"),
            (("image", "panel", "--components", "DAPI=DAPI", "--filters", "500-540"),
             "give one of them"),
            (("image", "cohort", str(tmp_path / "co"), "--pattern", "*.zarr", "--out",
              str(tmp_path / "y")), "matching '*.zarr'"),
            (("image", "analyze", str(slide), "--panel", str(tmp_path / "up.yaml"),
              "--offset", "100", "--out", str(tmp_path / "x")), "already unmixed")):
        r = run(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_simulate_names_and_reproducible_bytes(tmp_path):
    """The truth and panel beside a slide take its name without the image suffix (a.v1 and
    a.v2 no longer share one truth folder); the same command writes the same OME-TIFF
    bytes (its OME UUID comes from the parameters, not the clock)."""
    for name in ("a.v1.ome.zarr", "a.v2.ome.zarr"):
        r = run("image", "simulate", "--size", "128", "--out", str(tmp_path / name))
        assert r.returncode == 0, r.stderr
    for stem in ("a.v1", "a.v2"):
        assert (tmp_path / f"{stem}-truth" / "truth.parquet").exists()
        assert (tmp_path / f"{stem}-panel.yaml").exists()
    # a.v1.ome.tif would replace a.v1.ome.zarr's truth: refused
    r = run("image", "simulate", "--size", "128", "--out", str(tmp_path / "a.v1.ome.tif"))
    assert r.returncode == 2 and "holds the truth of a.v1.ome.zarr" in r.stderr
    for d in ("x", "y"):
        (tmp_path / d).mkdir()
        r = run("image", "simulate", "--size", "160", "--out", "s.ome.tif", cwd=tmp_path / d)
        assert r.returncode == 0, r.stderr
    assert (tmp_path / "x" / "s.ome.tif").read_bytes() == (tmp_path / "y" / "s.ome.tif").read_bytes()


def test_dab_image_too_large_for_memory_is_refused(tmp_path, monkeypatch, brightfield_tma):
    # `qdmed image dab IMAGE` scores in memory (~120 bytes per pixel): an image above the
    # limit is refused from its header, before it is read, with the tile-by-tile way out
    import numpy as np
    import pytest
    from PIL import Image

    import qdmed.cli.image as cli_image
    from qdmed.errors import InputError

    png = tmp_path / "field.png"
    Image.fromarray(np.full((300, 200, 3), 255, np.uint8)).save(png)
    slide, _ = brightfield_tma(tmp_path / "bf.ome.tif")
    assert cli_image._read_brightfield_image(png)[0].shape == (300, 200, 3)
    monkeypatch.setattr(cli_image, "MAX_DAB_IN_MEMORY_PIXELS", 200 * 299)
    for path, size, way in ((png, "200 x 300 px", "save it as a tiled TIFF"),
                            (slide, "960 x 660 px", "give --out DIR to score it tile by tile")):
        with pytest.raises(InputError, match=f"is {size}, too large to score in memory.*"
                                             + way):
            cli_image._read_brightfield_image(path)


def test_dab_reads_a_16_bit_rgb_image_in_memory(tmp_path):
    # a 16-bit RGB TIFF was refused as "a fluorescence slide" (a review): scored in memory
    # as its 8-bit original; tile by tile it is refused, saying to convert it
    import pytest
    import tifffile
    from skimage.data import immunohistochemistry

    img = immunohistochemistry()
    tifffile.imwrite(tmp_path / "ihc16.tif", img.astype(np.uint16) * 257, photometric="rgb")
    tifffile.imwrite(tmp_path / "ihc8.tif", img, photometric="rgb")
    got = [json.loads(run("image", "dab", str(tmp_path / f"ihc{b}.tif"), "--json").stdout)
           for b in (16, 8)]
    assert got[0]["n_cells"] == got[1]["n_cells"] > 200
    assert got[0]["h_score"] == pytest.approx(got[1]["h_score"], abs=1e-9)
    r = run("image", "dab", str(tmp_path / "ihc16.tif"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "convert it to 8 bits per channel" in r.stderr
    # a grey-level PNG was said as "rgb must be a (Y, X, 3) array", without the file
    from skimage.io import imsave

    imsave(tmp_path / "grey.png", img[..., 0])
    r = run("image", "dab", str(tmp_path / "grey.png"))
    assert r.returncode == 2 and r.stderr.strip() == (
        "error: grey.png: DAB IHC needs an RGB brightfield image; got a grey-level image "
        "(one channel) of uint8"), r.stderr
    # a CMYK JPEG was said as "rgb has a transparent alpha channel (RGBA)", without the
    # file; a PNG with transparent pixels said it without the file
    from PIL import Image

    Image.fromarray(img).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    r = run("image", "dab", str(tmp_path / "cmyk.jpg"))
    assert r.returncode == 2 and r.stderr.strip() == (
        "error: cmyk.jpg: a CMYK image (print colours); DAB IHC needs the RGB the scanner or "
        "camera recorded: save it as RGB"), r.stderr
    rgba = np.dstack([img, np.full(img.shape[:2], 255, np.uint8)])
    rgba[:10, :10, 3] = 0
    Image.fromarray(rgba).save(tmp_path / "clear.png")
    r = run("image", "dab", str(tmp_path / "clear.png"))
    assert r.returncode == 2 and r.stderr.strip() == (
        "error: clear.png: the image has transparent pixels (an alpha channel below full); "
        "give an opaque RGB image"), r.stderr
    # a palette PNG with a transparent colour was scored as opaque; a 16-bit grey PNG with
    # alpha was scored as RGBA (the decoder's); a CMYK or RGBA TIFF was called "a
    # fluorescence slide" (a review)
    pal = Image.fromarray(img).convert("P", palette=Image.ADAPTIVE, colors=255)
    pal.save(tmp_path / "pal.png", transparency=0)
    r = run("image", "dab", str(tmp_path / "pal.png"))
    assert r.returncode == 2 and "pal.png: the image has transparent pixels" in r.stderr
    import struct
    import zlib

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    la = np.dstack([img[..., 0].astype(np.uint16) * 257, np.full(img.shape[:2], 65535,
                                                                  np.uint16)])
    raw = b"".join(b"\0" + row.astype(">u2").tobytes() for row in la)
    (tmp_path / "la16.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 512, 512, 16, 4, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    r = run("image", "dab", str(tmp_path / "la16.png"))
    assert r.returncode == 2 and r.stderr.strip() == (
        "error: la16.png: DAB IHC needs an RGB brightfield image; got a grey-level image with "
        "alpha (16-bit PNG)"), r.stderr
    Image.fromarray(img).convert("CMYK").save(tmp_path / "cmyk.tif")
    r = run("image", "dab", str(tmp_path / "cmyk.tif"))
    assert r.returncode == 2 and "got 4 channels of uint8 (RGBA or CMYK? save it as RGB" in \
        r.stderr, r.stderr
    rgba[:10, :10, 3] = 255  # opaque everywhere: scored as its RGB
    Image.fromarray(rgba).save(tmp_path / "opaque.png")
    got = json.loads(run("image", "dab", str(tmp_path / "opaque.png"), "--json").stdout)
    assert got["n_cells"] == json.loads(run("image", "dab", str(tmp_path / "ihc8.tif"),
                                            "--json").stdout)["n_cells"]


def test_dab_nuclear_threshold_for_a_faint_counterstain(tmp_path):
    """A counterstain half as dark (every OD of the IHC image halved) saved as a quality-30
    JPEG gives no cells by Otsu's split; --nuclear-threshold sets it, in memory and tile by
    tile alike."""
    import io

    import tifffile
    from PIL import Image
    from skimage.data import immunohistochemistry

    buf = io.BytesIO()
    Image.fromarray(np.rint(255 * (immunohistochemistry() / 255.0) ** 0.5).astype(
        np.uint8)).save(buf, "JPEG", quality=30)
    faint = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    tifffile.imwrite(tmp_path / "faint.tif", faint, photometric="rgb")
    cut = ["--od-cutoffs", "0.05,0.12,0.25"]
    d = json.loads(run("image", "dab", str(tmp_path / "faint.tif"), *cut, "--json").stdout)
    assert d["n_cells"] == 0 and any("--nuclear-threshold" in w for w in d["warnings"])
    r = run("image", "dab", str(tmp_path / "faint.tif"), *cut, "--nuclear-threshold",
            "0.055", "--json")
    assert r.returncode == 0, r.stderr
    mem = json.loads(r.stdout)
    assert mem["n_cells"] > 250 and mem["nuclear_threshold_od"] == 0.055
    r = run("image", "dab", str(tmp_path / "faint.tif"), *cut, "--nuclear-threshold",
            "0.055", "--out", str(tmp_path / "o"), "--tile", "256", "--no-progress", "--json")
    assert r.returncode == 0, r.stderr
    tiles = json.loads(r.stdout)
    assert tiles["parameters"]["nuclear_threshold_od"] == 0.055
    assert tiles["thresholds"][0]["hematoxylin_threshold_od"] == 0.055
    assert tiles["thresholds"][0]["n_tiles"] == 4 and tiles["n_cells"] == mem["n_cells"]
    for bad in ("-1", "nan", "11"):
        r = run("image", "dab", str(tmp_path / "faint.tif"), "--nuclear-threshold", bad)
        assert r.returncode == 2 and r.stderr.startswith("error: --nuclear-threshold must"), \
            r.stderr


def test_dab_flat_field(tmp_path, vignetted_ihc):
    # a vignetted camera image and its blank field as PNGs: corrected before scoring
    from PIL import Image

    _, seen, blank = vignetted_ihc
    Image.fromarray(seen).save(tmp_path / "img.png")
    Image.fromarray(blank).save(tmp_path / "blank.png")
    r = run("image", "dab", str(tmp_path / "img.png"), "--json")
    assert r.returncode == 0, r.stderr
    assert "blank field" in " ".join(json.loads(r.stdout)["warnings"])
    r = run("image", "dab", str(tmp_path / "img.png"), "--background", "auto")
    assert r.returncode == 2 and "correct the image with a blank field" in r.stderr
    r = run("image", "dab", str(tmp_path / "img.png"), "--flat-field",
            str(tmp_path / "blank.png"), "--background", "auto", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["n_cells"] > 250
    # a PNG records no pixel size: the default is said, as for a slide scored tile by tile
    assert "the image declares no pixel size: 0.5 um/px assumed" in " ".join(d["warnings"])
    r = run("image", "dab", str(tmp_path / "img.png"), "--flat-field",
            str(tmp_path / "blank.png"), "--background", "auto", "--pixel-size-um", "0.5",
            "--json")
    assert "declares no pixel size" not in " ".join(json.loads(r.stdout)["warnings"])
    for bad, what in (((str(tmp_path / "img.png"), "--dark-field", str(tmp_path / "blank.png")),
                       "goes with --flat-field"),
                      ((str(tmp_path / "img.png"), "--flat-field", str(tmp_path / "blank.png"),
                        "--out", str(tmp_path / "o")), "single camera image"),
                      ((str(tmp_path / "img.png"), "--flat-field", str(tmp_path / "nope.png")),
                       "nope.png")):
        r = run("image", "dab", *bad)
        assert r.returncode == 2 and what in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_new_user_mistakes_are_named(tmp_path):
    """Mistakes a new user made following the README, each one line and exit code 2 (or a
    warning where the run is valid but its result is empty)."""
    import numpy as np
    import skimage.data
    import tifffile

    # a fluorescence-minus-one control simulated without DAPI: simulate says so, and the
    # analysis (0 cells) says why instead of passing an empty table on to calibrate
    r = run("image", "simulate", "--preset", "BT-474", "--only", "HER2,ER", "--size", "256",
            "--out", str(tmp_path / "fmo.ome.tif"), "--json")
    assert r.returncode == 0, r.stderr  # BT-474 is the preset BT474
    assert "DAPI is not in --only" in json.loads(r.stdout)["warnings"][0]
    r = run("image", "simulate", "--only", "her2", "--out", str(tmp_path / "x.ome.tif"))
    assert r.returncode == 2 and "(names are case-sensitive: HER2?)" in r.stderr, r.stderr
    r = run("image", "analyze", str(tmp_path / "fmo.ome.tif"), "--out", str(tmp_path / "fmo"),
            "--no-progress")
    assert r.returncode == 0 and "no nuclei stand out on the nuclear channel (DAPI)" in r.stderr
    # options that would do nothing here
    for args, said in ((("--her2-region-um", "50"), "needs HER2 cut-offs"),
                       (("--her2-region-um", "-1"), "must be a finite number >= 10 um"),
                       (("--region-min-cells", "3"), "give --regions"),
                       (("--workers", "4", "--scheduler", "synchronous"),
                        "starts local worker processes")):
        r = run("image", "analyze", str(tmp_path / "fmo.ome.tif"), *args, "--out",
                str(tmp_path / "o3"))
        assert r.returncode == 2 and said in r.stderr, r.stderr
    # a --scheduler that answers but is not Dask (an HTTP server): the error came after 2 s,
    # then the failed client hung the exit ~60 s and printed a traceback
    import socket
    import threading
    import time

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    accepted = []

    def serve():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            accepted.append(c)
            c.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n" * 8)

    threading.Thread(target=serve, daemon=True).start()
    t0 = time.perf_counter()
    try:
        r = run("image", "analyze", str(tmp_path / "fmo.ome.tif"), "--out", str(tmp_path / "o4"),
                "--scheduler", f"tcp://127.0.0.1:{srv.getsockname()[1]}")  # progress bar on:
        # the scheduler is asked before the bar starts, so the error is the only line
    finally:
        srv.close()
        for c in accepted:
            c.close()
    assert r.returncode == 2 and "is not a Dask scheduler" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and time.perf_counter() - t0 < 25
    for args, said in ((("info", str(tmp_path / "fmo.ome.tif"), "--pattern", "*.zarr"),
                        "--pattern picks slides in a folder"),
                       (("panel", "--filters", "505-545,590-630", "--channels", "4"),
                        "give one of them")):
        r = run("image", *args)
        assert r.returncode == 2 and said in r.stderr, r.stderr
    # a file that is not a calibration
    (tmp_path / "summary.json").write_text(json.dumps({"n_cells": 3}))
    r = run("image", "analyze", str(tmp_path / "fmo.ome.tif"), "--calibration",
            str(tmp_path / "summary.json"), "--out", str(tmp_path / "o2"))
    assert r.returncode == 2 and "not a calibration" in r.stderr and "n_cells" in r.stderr
    r = run("image", "analyze", str(tmp_path / "fmo.ome.tif"), "--nuclear-threshold", "-5",
            "--out", str(tmp_path / "o3"))
    assert r.returncode == 2 and "nuclear_threshold (--nuclear-threshold) must be a number" in \
        r.stderr
    assert not (tmp_path / "o3").exists()
    # DAB on a truncated compressed TIFF, on a fluorescence slide, at pixel size 0
    tifffile.imwrite(tmp_path / "ihc.tif", skimage.data.immunohistochemistry(),
                     compression="zlib", tile=(128, 128))
    data = (tmp_path / "ihc.tif").read_bytes()
    (tmp_path / "trunc.tif").write_bytes(data[: len(data) // 2])
    for args, said in (((str(tmp_path / "trunc.tif"),), "is truncated"),
                       ((str(tmp_path / "fmo.ome.tif"),), "got 8 channels of uint16"),
                       ((str(tmp_path / "ihc.tif"), "--pixel-size-um", "0"),
                        "pixel_size_um (--pixel-size-um) must be a positive number")):
        r = run("image", "dab", *args)
        assert r.returncode == 2 and said in r.stderr and "internal error" not in r.stderr, \
            r.stderr
    r = run("image", "calibrate", "--control", f"X={tmp_path / 'nofile.parquet'}",
            "--negative", "ER=X")
    assert r.returncode == 2 and "--control X: no such file" in r.stderr, r.stderr
    # a --category that cannot be used, and a control used by nothing, were dropped silently
    import pandas as pd

    pd.DataFrame({"HER2_membrane_mean": [1.0]}).to_parquet(tmp_path / "t.parquet")
    t = tmp_path / "t.parquet"
    for args, said in ((("--control", f"MCF7={t}", "--category", "MCF7=1+", "--negative",
                         "ER=MCF7"), "need two or more controls of known HER2 category"),
                       # known lines alone: which are known, and which are not in the table
                       # ("nothing to calibrate: give --category" was said before)
                       (("--control", f"BT-474={t}"), "known here: BT-474 (3+)"),
                       (("--control", f"SK-BR-3={t}", "--control", f"MDA-MB-468={t}"),
                        "known here: MDA-MB-468 (0); not in the table: SK-BR-3 (give its "
                        "--category"),
                       (("--control", f"A={t}", "--control", f"B={t}", "--negative", "ER=A"),
                        "--control B: used by nothing; give it a HER2 --category NAME=0|1+|2+|3+")):
        r = run("image", "calibrate", *args, "--out", str(tmp_path / "cal.json"))
        assert r.returncode == 2 and said in r.stderr, r.stderr
    assert not (tmp_path / "cal.json").exists()
    r = run("image", "dab", str(tmp_path / "ihc.tif"), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["n_cells"] > 200
    # a slide file's own pixel size is used (it was 0.5 whatever the file said)
    from qdmed.imaging import write_ome_tiff

    write_ome_tiff(tmp_path / "ihc25.ome.tif", skimage.data.immunohistochemistry(),
                   pixel_size_um=0.25)
    r = run("image", "dab", str(tmp_path / "ihc25.ome.tif"), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["pixel_size_um"] == 0.25
    assert np.array_equal(tifffile.imread(tmp_path / "ihc.tif"),
                          skimage.data.immunohistochemistry())


def test_plot_must_be_a_png_and_is_checked_first(tmp_path):
    """--plot x.txt wrote a PNG named .txt after the work was done; it is refused first."""
    r = run("image", "library", "--unstained", str(tmp_path / "missing.ome.zarr"), "--plot",
            str(tmp_path / "lib.txt"), "--out", str(tmp_path / "lib.yaml"))
    assert r.returncode == 2 and "--plot writes a PNG image" in r.stderr, r.stderr
    assert not (tmp_path / "lib.txt").exists() and not (tmp_path / "lib.yaml").exists()


def test_dab_reads_scanner_whole_slide_files(tmp_path, write_svs, write_ndpi):
    # Aperio SVS and Hamamatsu NDPI brightfield scans: scored in memory with the pixel size
    # their files record, and tile by tile with --out; a format qdmed does not read is named
    # with the way to convert it (not Pillow's "cannot identify image file")
    from skimage.data import immunohistochemistry

    img = np.ascontiguousarray(np.tile(immunohistochemistry(), (2, 2, 1)))
    svs = write_svs(tmp_path / "case.svs", img, mpp="0.2520")
    ndpi = write_ndpi(tmp_path / "case.ndpi", [img, np.ascontiguousarray(img[::4, ::4])],
                      pixel_size_um=0.2270)
    n = {}
    for path, ps in ((svs, 0.252), (ndpi, 0.227)):
        r = run("image", "dab", str(path), "--od-cutoffs", "0.05,0.15,0.3", "--json")
        assert r.returncode == 0, r.stderr
        d = json.loads(r.stdout)
        assert abs(d["pixel_size_um"] - ps) < 1e-6 and d["n_cells"] > 300
        n[path.suffix] = d["n_cells"]
    r = run("image", "dab", str(svs), "--od-cutoffs", "0.05,0.15,0.3", "--out",
            str(tmp_path / "t"), "--tile", "512", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["n_cells"] == n[".svs"]  # tile by tile: the same cells
    # a scan whose JPEG tiles are damaged: one line naming the file and where, then exit 2
    # (nothing else on stderr: test_corrupted_tile_data_raises checks the reads left behind)
    import tifffile

    with tifffile.TiffFile(svs) as tf:
        off = int(tf.pages[0].dataoffsets[5])
    data = bytearray(svs.read_bytes())
    data[off:off + 4000] = bytes(4000)
    (tmp_path / "bad.svs").write_bytes(bytes(data))
    r = run("image", "dab", str(tmp_path / "bad.svs"))
    assert r.returncode == 2
    assert "bad.svs': cannot decode level 0 within y 0-1024, x 0-1024 px" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    # tile by tile on two worker processes: the same one line (the workers' own error logs
    # of the failed task are silenced), and the output folder the run made is gone again
    r = run("image", "dab", str(tmp_path / "bad.svs"), "--out", str(tmp_path / "o"),
            "--tile", "512", "--workers", "2", "--no-progress")
    assert r.returncode == 2 and "cannot decode level 0 within y" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "o").exists()
    (tmp_path / "x.scn").write_bytes(b"II*\x00")
    r = run("image", "dab", str(tmp_path / "x.scn"))
    assert r.returncode == 2 and "Leica SCN" in r.stderr and "bfconvert" in r.stderr
    # a folder of them, with a conversion beside its original (same stem: fine for a
    # listing, which writes nothing) and the file qdmed does not read, named with its way
    from qdmed.imaging import write_ome_tiff

    write_ome_tiff(tmp_path / "case.ome.tif", img[:256, :256], pixel_size_um=0.252)
    r = run("image", "info", str(tmp_path), "--json")
    assert r.returncode == 0, r.stderr
    rows = {d["slide"]: d for d in json.loads(r.stdout)}
    assert {k: v["status"] for k, v in rows.items()} == {
        "bad.svs": "ok", "case.ndpi": "ok", "case.ome.tif": "ok", "case.svs": "ok",
        "x.scn": "unreadable"}
    assert rows["case.svs"]["channels"] == ["R", "G", "B"]
    assert rows["case.svs"]["format"] == "svs" and rows["case.ndpi"]["format"] == "ndpi"
    assert "Leica SCN" in rows["x.scn"]["message"]
    # a fluorescence cohort of this folder: the scans are not slides to analyse (and the
    # one beside its conversion does not clash with it)
    from qdmed.imaging._cohort import find_slides

    assert [p.name for p in find_slides(tmp_path)] == ["case.ome.tif"]
    r = run("image", "info", str(svs))
    assert r.returncode == 0 and "levels (width x height)" in r.stdout
    assert "1024 x 1024, 256 x 256" in r.stdout and "exposure" not in r.stdout


def test_analyze_of_a_corrupted_slide_leaves_no_folder(tmp_path):
    # the run fails on its first read: one line, exit 2, and no output folder is left
    # (test_stale_outputs checks a folder made and then removed); one given is kept
    import tifffile

    slide = tmp_path / "s.ome.tif"
    r = run("image", "simulate", "--size", "512", "--out", str(slide))
    assert r.returncode == 0, r.stderr
    with tifffile.TiffFile(slide) as tf:
        page = tf.series[0].pages[0]
        off, n = int(page.dataoffsets[0]), int(page.databytecounts[0])
    data = bytearray(slide.read_bytes())
    data[off:off + n] = bytes(n)
    slide.write_bytes(bytes(data))
    r = run("image", "analyze", str(slide), "--out", str(tmp_path / "a"), "--no-progress")
    assert r.returncode == 2 and "cannot decode level 0 within y" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "a").exists()
    (tmp_path / "kept").mkdir()
    r = run("image", "analyze", str(slide), "--out", str(tmp_path / "kept"), "--no-progress")
    assert r.returncode == 2 and (tmp_path / "kept").is_dir()


def test_outputs_never_written_over_the_inputs(tmp_path):
    # a review's `tma t.ome.tif --out t.ome.tif` replaced the slide with GeoJSON, calibrate
    # wrote over a control's cells.parquet and library over its own panel (all exit 0)
    import numpy as np
    import pandas as pd

    from qdmed.imaging import write_ome_tiff

    slide = tmp_path / "t.ome.tif"
    write_ome_tiff(slide, np.zeros((64, 64, 3), np.uint8))
    before = slide.read_bytes()
    r = run("image", "tma", str(slide), "--out", str(slide))
    assert r.returncode == 2 and "is an input of this command" in r.stderr
    assert slide.read_bytes() == before
    cells = tmp_path / "c0" / "cells.parquet"
    cells.parent.mkdir()
    pd.DataFrame({"cell_id": [1, 2], "ER_nucleus_mean": [1.0, 2.0]}).to_parquet(cells)
    before = cells.read_bytes()
    r = run("image", "calibrate", "--control", f"A={cells.parent}", "--negative", "ER=A",
            "--out", str(cells))
    assert r.returncode == 2 and "is an input of this command" in r.stderr
    assert cells.read_bytes() == before
    r = run("image", "panel", "--markers", "HER2,ER", "--out", str(tmp_path / "p.yaml"))
    assert r.returncode == 0, r.stderr
    panel = (tmp_path / "p.yaml").read_text()
    r = run("image", "library", "--panel", str(tmp_path / "p.yaml"), "--unstained",
            str(slide), "--out", str(tmp_path / "p.yaml"))
    assert r.returncode == 2 and "is an input of this command" in r.stderr
    assert (tmp_path / "p.yaml").read_text() == panel
    r = run("image", "library", "--panel", str(tmp_path / "p.yaml"), "--unstained",
            str(slide), "--counterstain", "Hoechst", "--out", str(tmp_path / "q.yaml"))
    assert r.returncode == 2 and "--counterstain Hoechst: not a marker of the panel" in \
        r.stderr and not (tmp_path / "q.yaml").exists()


def test_info_says_an_ome_zarr_slide_misses_chunks(tmp_path):
    """A slide folder copied partway (an OME-Zarr missing a chunk file) reads as dark
    tissue there; `image info` of the folder flags it in the slide's row, the others ok."""
    from qdmed.imaging import write_ome_zarr

    img = np.ones((64, 64, 2), np.uint16)
    for name in ("a.ome.zarr", "b.ome.zarr"):
        write_ome_zarr(tmp_path / name, img, channel_names=["DAPI", "HER2"], chunks=(32, 32))
    (tmp_path / "b.ome.zarr" / "0" / "1" / "1" / "0").unlink()
    r = run("image", "info", str(tmp_path), "--json")
    assert r.returncode == 0, r.stderr
    rows = {d["slide"]: d for d in json.loads(r.stdout)}
    assert rows["a.ome.zarr"]["status"] == "ok" and "message" not in rows["a.ome.zarr"]
    assert rows["b.ome.zarr"]["status"] == "ok"  # readable: said in its message
    assert "1 of 8 chunks" in rows["b.ome.zarr"]["message"] and \
        "(channel HER2, y 32-64, x 0-32)" in rows["b.ome.zarr"]["message"]


def test_an_output_file_named_as_a_folder_is_said_by_its_name(tmp_path):
    """A review's panel --out FOLDER read "error: .../.FOLDER.k1712fru.tmp: Is a directory"."""
    (tmp_path / "made").mkdir()
    r = run("image", "panel", "--out", str(tmp_path / "made"))
    assert r.returncode == 2 and r.stderr.strip() == (
        f"error: {tmp_path / 'made'} is a folder: give the path of a file to write, in it or "
        "elsewhere"), r.stderr


def test_calibrate_faint_rule_gap(tmp_path):
    """--faint-rule gap: the faint cut-off in the middle of the gap between a 0 control's
    null cells and its separate stained group, recorded in the calibration file."""
    import pandas as pd
    import pytest

    rng = np.random.default_rng(8)
    null, stained = rng.normal(1.0, 0.1, 950), rng.uniform(15, 30, 50)
    args = []
    for name, v, cat, c in (("A", np.concatenate([null, stained]), "0", 0.5),
                            ("B", rng.uniform(20, 40, 300), "1+", 0.5),
                            ("C", rng.uniform(150, 250, 300), "3+", 1.0)):
        pd.DataFrame({"cell_id": np.arange(1, v.size + 1), "HER2_membrane_stained_mean": v,
                      "HER2_membrane_completeness": c}).to_parquet(tmp_path / f"{name}.parquet")
        args += ["--control", f"{name}={tmp_path / f'{name}.parquet'}", "--category", f"{name}={cat}"]
    r = run("image", "calibrate", *args, "--faint-rule", "gap", "--out",
            str(tmp_path / "cal.json"), "--json")
    assert r.returncode == 0, r.stderr
    her2 = json.loads((tmp_path / "cal.json").read_text())["her2"]
    assert her2["faint_from_gap"] is True and json.loads(r.stdout)["her2"] == her2
    assert her2["faint"] == pytest.approx(np.sqrt(stained.min() * null.max()))
    # the quantile (default) writes no faint_from_gap: older qdmed reads the file
    r = run("image", "calibrate", *args, "--out", str(tmp_path / "q.json"))
    assert r.returncode == 0, r.stderr
    assert "faint_from_gap" not in json.loads((tmp_path / "q.json").read_text())["her2"]


def test_a_field_too_small_for_cells_is_said(tmp_path):
    """simulate --size 10 wrote a field of one cut cell without a word (a walk-through)."""
    r = run("image", "simulate", "--size", "32", "--out", str(tmp_path / "t.ome.tif"),
            "--json")
    assert r.returncode == 0, r.stderr
    assert any("a 32 x 32 px field holds" in w and "--size 256" in w
               for w in json.loads(r.stdout)["warnings"])
