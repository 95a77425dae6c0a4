"""The CLI as a subprocess: JSON on stdout, one-line errors, exit codes 0/2."""

import json
import os
import subprocess
import sys

import pytest


def run(*args):
    return subprocess.run([sys.executable, "-m", "qdmed", *args], capture_output=True, text=True,
                          timeout=120)


def test_version():
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("qdmed ")


def test_size_json():
    r = run("optics", "size", "CdSe", "600", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["results"][0]["diameter_nm"] == pytest.approx(4.583, rel=1e-3)


def test_extinction_model_and_linewidth_reach_the_relation():
    # --model chooses the extinction relation and --sizing-model the sizing curve (both
    # were named --model, so the README's Jasieniak example ran the Yu power law); the
    # Jasieniak relation with its linewidth as the Python call (Jasieniak et al. 2009)
    r = run("optics", "extinction", "CdSe", "--peak", "550", "--model", "jasieniak2009",
            "--sizing-model", "jasieniak2009", "--hwhm-ev", "0.08", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["extinction_M_cm"] == pytest.approx(1.430e5, rel=1e-3)
    assert (d["model"], d["sizing_model"]) == ("jasieniak2009-CdSe", "jasieniak2009-CdSe")
    r = run("optics", "concentration", "CdSe", "--peak", "550", "--absorbance", "0.1",
            "--model", "jasieniak2009", "--sizing-model", "jasieniak2009", "--hwhm-ev", "0.08",
            "--json")
    assert r.returncode == 0, r.stderr
    # c = A / (eps l)
    assert json.loads(r.stdout)["concentration_uM"] == pytest.approx(0.1 / 1.430e5 * 1e6,
                                                                      rel=1e-3)
    r = run("optics", "extinction", "CdSe", "--peak", "550", "--hwhm-ev", "0.08")
    assert r.returncode == 2 and "hwhm_ev (--hwhm-ev) is used only by" in r.stderr


def test_design_file_with_options_is_refused(tmp_path):
    r = run("design", "--material", "CdSe", "--emission", "605", "--out", str(tmp_path / "p.yaml"))
    assert r.returncode == 0, r.stderr
    r = run("design", "--file", str(tmp_path / "p.yaml"), "--qy", "0.9", "--emission", "700")
    assert r.returncode == 2 and "--emission, --qy would not be used" in r.stderr, r.stderr


def test_designed_probes_get_distinct_names(tmp_path):
    """A review's two custom labels were both named "CdSe/ZnS", which a panel refuses, and
    design had no --name: the default name now carries the emission peak."""
    import yaml

    for nm in (605, 640):
        r = run("design", "--material", "CdSe", "--shell", "ZnS:0.9", "--emission", str(nm),
                "--target", "HER2", "--out", str(tmp_path / f"p{nm}.yaml"))
        assert r.returncode == 0, r.stderr
    names = [yaml.safe_load((tmp_path / f"p{nm}.yaml").read_text())["name"] for nm in (605, 640)]
    assert names == ["CdSe/ZnS 605nm anti-HER2", "CdSe/ZnS 640nm anti-HER2"]
    r = run("design", "--file", str(tmp_path / "p605.yaml"), "--name", "QD605-HER2", "--out",
            str(tmp_path / "n.yaml"))
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load((tmp_path / "n.yaml").read_text())["name"] == "QD605-HER2"


def test_design_json_issue_example():
    r = run("design", "--material", "CdSe", "--shell", "ZnS:0.9", "--emission", "605",
            "--coating", "dhla-peg:2000", "--ligand", "igg:2", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["optics"]["emission_peak_nm"] == pytest.approx(605, abs=0.01)
    assert d["hydrodynamics"]["renal_clearable"] is False
    assert "Cd" in d["heavy_metals"]["elements"]


@pytest.mark.parametrize("args", [
    ("optics", "size", "CdSe", "-5"),
    ("optics", "size", "Vibranium", "500"),
    ("optics", "size", "CdTe", "440"),
    ("design", "--material", "CdSe", "--emission", "605", "--shell", "ZnS:thick"),
    ("design", "--material", "CdSe"),
    ("optics", "size", "CdSe", "abc"),
])
def test_bad_input_exit_2_one_line(args):
    r = run(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 3 and "error" in r.stderr.lower()


def test_malformed_yaml_file_exit_2(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("core: {material: CdSe\n")
    r = run("design", "--file", str(f))
    assert r.returncode == 2 and str(f) in r.stderr


def test_materials_and_models_json():
    r = run("optics", "materials", "--json")
    assert r.returncode == 0
    d = json.loads(r.stdout)
    assert d["CdSe"]["properties"]["band_gap_eV"]["source"]["citation"]
    r = run("optics", "models", "--json")
    assert "yu2003-CdSe" in json.loads(r.stdout)["sizing"]


def test_demo_quick_prints_the_her2_result_and_writes_the_report(tmp_path):
    r = subprocess.run([sys.executable, "-m", "qdmed", "demo", "--quick", "--out",
                        str(tmp_path / "demo")], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "COLUMNS": "120"})
    assert r.returncode == 0, r.stderr
    assert "HER2 (QD-IHC)" in r.stdout and "report written to" in r.stdout
    assert "blind autofluorescence" in r.stdout
    assert "quality control (saturated cells; offset; blur)" in r.stdout
    assert "0.0 %; none;" in r.stdout  # the demo's 16-bit, dark-corrected field
    # HER2 3+ with ER and PR positive (printed above it): HR+/HER2+ (Howlader et al. 2014)
    assert "positive / positive" in r.stdout and "HR+/HER2+" in r.stdout
    # the TMA's dearrayed cores get the categories their tumours get as whole slides
    assert "A-1 3+ (HER2-enriched)" in r.stdout and "(her2-ultralow)" in r.stdout
    html = (tmp_path / "demo" / "report.html").read_text()
    assert len(html) > 10_000 and "Autofluorescence without an unstained control" in html
    assert "Quality control (as in every analysis)" in html
    assert "Tissue microarray, scored core by core" in html
    # the synthetic tumour's clones are patches: every phenotype neighbours its own kind
    assert "phenotypes with their own kind within 20 um (z)" in r.stdout
    assert "Where the phenotypes lie" in html


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
    """A Ctrl-C: typer turns it into Exit(130), which click hands back silently; the user
    is told "interrupted" (one line, no traceback)."""
    import qdmed.imaging
    from qdmed.cli import main

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(qdmed.imaging, "list_presets", interrupted)
    assert main(["image", "presets"]) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_sigterm_is_one_line_and_exit_143(tmp_path):
    """SIGTERM (kill, a batch scheduler's time limit) ended the run at once, unsaid, its
    temporary files left (a review); it now stops as a Ctrl-C does, saying so."""
    import signal
    import subprocess
    import sys

    code = ("import os, signal, sys, threading\n"
            "from qdmed.cli import exit_with, main\n"
            "threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()\n"
            "exit_with(main(['image', 'simulate', '--size', '6000', '--no-progress', "
            f"'--out', {str(tmp_path / 's.ome.tif')!r}]))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 143 and r.stderr.strip().splitlines()[-1] == \
        "terminated (SIGTERM)", r.stderr
    assert not list(tmp_path.iterdir())  # nothing written half, no temporary left
    # main called from Python gives its caller's handler back
    from qdmed.cli import main

    before = signal.getsignal(signal.SIGTERM)
    assert main(["--version"]) == 0 and signal.getsignal(signal.SIGTERM) is before


def test_an_interrupt_inside_compiled_code_is_an_interrupt(monkeypatch, capsys):
    """numba turns a KeyboardInterrupt raised in its compiled functions into a SystemError
    (a review: a SIGTERM there read "internal error: SystemError: CPUDispatcher(...)")."""
    import qdmed.imaging
    from qdmed.cli import main

    def compiled():
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            raise SystemError("CPUDispatcher(<function flood>) returned a result with an "
                              "exception set") from exc

    monkeypatch.setattr(qdmed.imaging, "list_presets", compiled)
    assert main(["image", "presets"]) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_a_warning_is_said_once():
    # a core outside its sizing curve's range was said five times, once per model call
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "qdmed", "design", "--material", "CdSe",
                        "--diameter", "9", "--extrapolate"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and r.stderr.count("outside the validity range") == 1, r.stderr


def test_main_gives_the_callers_warning_settings_back(capsys):
    # a review: after main() in a notebook, warnings lost their file and line, and a text
    # main had said was hidden
    import warnings

    from qdmed.cli import main

    before = (warnings.formatwarning, list(warnings.filters))
    assert main(["design", "--material", "CdSe", "--diameter", "4"]) == 0
    assert (warnings.formatwarning, list(warnings.filters)) == before
    capsys.readouterr()


def test_local_workers_ignore_ctrl_c():
    """The local cluster's worker processes are started with SIGINT ignored: a Ctrl-C at the
    terminal reaches the whole process group, and each worker printed its own
    KeyboardInterrupt traceback (tens of lines); the main process stops the run instead."""
    import signal

    from qdmed.imaging._analyze import start_client

    before = signal.getsignal(signal.SIGINT)
    client, cluster = start_client(None, 1)
    try:
        assert signal.getsignal(signal.SIGINT) is before  # restored here
        got = list(client.run(lambda: int(signal.getsignal(signal.SIGINT))).values())
        assert got == [int(signal.SIG_IGN)]
    finally:
        client.close()
        cluster.close()


def test_library_parameter_named_with_the_option_typed():
    from qdmed.cli import _with_option

    msg = "shape must be two positive integers (Y, X) in px, got (0, 0)"
    assert _with_option(msg, ["image", "simulate", "--size", "0"]) == \
        "shape (--size) must be two positive integers (Y, X) in px, got (0, 0)"
    assert _with_option("pixel_size_um must be > 0", ["dab", "--pixel-size-um=0"]) == \
        "pixel_size_um (--pixel-size-um) must be > 0"
    # not typed (a value from a file), already named, or not a parameter: unchanged
    assert _with_option(msg, ["image", "simulate"]) == msg
    assert _with_option("n_workers (--workers) must be", ["--workers", "0"]) == \
        "n_workers (--workers) must be"
    assert _with_option("slide.tif: not a TIFF", ["--size", "1"]) == "slide.tif: not a TIFF"
    said = "tile must be a multiple of 256 pixels (--tile); got 100"  # named once only
    assert _with_option(said, ["--tile", "100"]) == said
    # going on with what the option gave: said as typed
    argv = ["calibrate", "--control", "BT-474=bt/", "--category=X=4+"]
    assert _with_option("control BT-474: no such file 'bt/'", argv) == \
        "--control BT-474: no such file 'bt/'"
    assert _with_option("category X=4+: not a HER2 category", argv) == \
        "--category X=4+: not a HER2 category"
    assert _with_option("control Y: no such file", argv) == \
        "control (--control) Y: no such file"


def test_a_file_given_as_output_folder_is_named(tmp_path):
    from qdmed.cli import _file_in_path

    (tmp_path / "afile").write_text("x")
    assert _file_in_path(tmp_path / "afile" / "tiles") == str(tmp_path / "afile")
    assert _file_in_path(tmp_path / "nothing" / "tiles") is None
    assert _file_in_path("") is None
    # as the CLI meets it: an output under an existing file (mkdir: FileExistsError)
    r = subprocess.run([sys.executable, "-m", "qdmed", "image", "simulate", "--size", "64",
                        "--out", str(tmp_path / "afile" / "x.ome.tif")], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and r.stderr == f"error: {tmp_path / 'afile'} is a file where a " \
        "folder is needed (was a file given as the output folder?)\n", r.stderr


def test_numpy_floating_point_notices_hidden_unless_filters_chosen(monkeypatch):
    # a numpy notice ("invalid value encountered in reduce") names a machine operation and
    # depends on the CPU; qdmed's own warnings are still shown, as one line "! text"
    import warnings

    import numpy as np

    from qdmed.cli import _warning_filters
    from qdmed.errors import QdmedWarning

    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # put back after

    def shown(options):
        monkeypatch.setattr(sys, "warnoptions", options)
        with warnings.catch_warnings(record=True) as seen:
            warnings.resetwarnings()
            _warning_filters()
            np.add.reduce(np.array([np.inf, -np.inf]))  # inf - inf: numpy's "invalid value"
            warnings.warn("the panel is poorly conditioned", QdmedWarning, stacklevel=1)
            return [warnings.formatwarning(w.message, w.category, w.filename, w.lineno)
                    for w in seen]

    assert shown([]) == ["! the panel is poorly conditioned\n"]
    # python -W or PYTHONWARNINGS: the user's filters decide
    assert shown(["default"]) == ["! invalid value encountered in reduce\n",
                                  "! the panel is poorly conditioned\n"]


def test_help_reads_whole_at_80_columns():
    """Typer's rich help cut --her2-region-min-cells to --her2-region-min-cel... at 80
    columns, showed <bool> beside flags and kept the docstrings' line breaks in the command
    lists: the help is click's plain text, each command listed by a short line."""
    env = {**os.environ, "COLUMNS": "80"}
    out = {args: subprocess.run([sys.executable, "-m", "qdmed", *args, "--help"],
                                capture_output=True, text=True, env=env, check=True).stdout
           for args in ((), ("image",), ("optics",), ("image", "analyze"),
                        ("image", "cohort"))}
    assert "--her2-region-min-cells <int>" in out[("image", "analyze")]
    # no markup escapes left from the rich help: the example expression reads as typed
    assert "'^(.+?)_\\['" in out[("image", "cohort")]
    for text in out.values():
        assert "<bool>" not in text and "…" not in text
        assert all(len(line) <= 80 for line in text.splitlines())
        listed = text.partition("Commands:\n")[2].splitlines()
        assert all(not line.endswith("...") for line in listed), listed
