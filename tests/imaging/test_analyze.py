"""End-to-end imaging on synthetic slides with ground truth: unmixing, segmentation,
per-cell levels, HER2 categories, tiling/stitching, resume, the distributed path, bad input.

The numbers in comments were measured when these tests were written; the asserted bounds
are the accuracy the pipeline must keep (photon budget 300 e- per unit abundance)."""

import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qdmed.errors import FileFormatError, InputError
from qdmed.imaging import (
    AnalysisSettings,
    Panel,
    analyze_field,
    analyze_slide,
    breast_panel_5plex,
    cohen_kappa,
    f1_at_iou,
    score_her2,
    simulate_field,
    simulate_slide,
    unmix_nnls,
    write_ome_tiff,
)

PANEL = breast_panel_5plex()
KW = dict(endmembers=PANEL.endmembers, marker_names=list(PANEL.markers), photons_per_unit=300.0)
PPU = 300.0


@pytest.fixture(scope="module")
def calibration(control_calibration):
    return control_calibration(PANEL, **KW)


def _match(field, table):
    """Predicted cell -> truth cell via the truth label under the predicted centroid."""
    h, w = field.cells.shape
    cy = np.clip(table["centroid_y"].round().astype(int), 0, h - 1)
    cx = np.clip(table["centroid_x"].round().astype(int), 0, w - 1)
    tid = field.cells[cy, cx]
    return tid > 0, tid


def test_field_unmixing_segmentation_and_levels():
    f = simulate_field((768, 768), preset="luminal-A", seed=7, **KW)
    fa = analyze_field(f.image, PANEL)
    # nucleus segmentation: F1 at IoU 0.5 (measured 0.997-0.999)
    assert f1_at_iou(fa.nuclei, f.nuclei).f1 >= 0.97
    # per-cell nuclear marker levels (measured median relative error 0.7 % ER, 0.8 % PR)
    ok, tid = _match(f, fa.table)
    truth = f.truth.set_index("cell_id")
    for m in ("ER", "PR", "DAPI"):
        pred = fa.table[f"{m}_nucleus_mean"][ok].to_numpy() / PPU
        true = truth.loc[tid[ok], f"{m}_nucleus"].to_numpy()
        pos = true > 0.05
        rel = np.abs(pred[pos] - true[pos]) / true[pos]
        assert np.median(rel) < 0.03, m
        assert np.corrcoef(pred, true)[0, 1] > 0.98, m
    # per-pixel abundances on stained pixels (measured median 5.6 % ER, 19 % HER2 whose
    # Qdot 525 overlaps the autofluorescence band)
    ab, true_ab = fa.abundances / PPU, f.abundances
    k = PANEL.components.index("ER")
    sel = true_ab[..., k] > 0.1
    assert np.median(np.abs(ab[..., k][sel] - true_ab[..., k][sel]) / true_ab[..., k][sel]) < 0.1


@pytest.mark.parametrize(("preset", "expected"), [
    ("HER2-enriched", "3+"),       # 80 % 3+ cells
    ("her2-heterogeneous", "3+"),  # 20 % 3+ cells: > 10 % intense complete
    ("triple-negative", "1+"),     # 15 % faint incomplete: > 10 %
    ("her2-ultralow", "0"),        # 5 % faint incomplete: <= 10 %
])
def test_slide_her2_category(calibration, preset, expected):
    f = simulate_field((768, 768), preset=preset, seed=3, **KW)
    sc = score_her2(analyze_field(f.image, PANEL).table, calibration)
    assert sc.category == expected
    if preset == "her2-ultralow":
        # the faint cells are found: 5.3 % read at least faint (4.4 % true 1+, 95 % of them
        # found; 1.2 % of true 0 cells), above the null floor of 2.77 %: the control's null
        # cells, its 2.6 % stained group left out (5.29 % counting them as null, when this
        # tumour was not told from null; seeds 4 and 5 are flagged too). It had been flagged
        # (6.9 %) while 2.9 % of its 0 cells read their faint neighbours' shared membrane
        assert 3.0 <= sc.percent_stained <= 8.0
        assert sc.her2_ultralow
        assert calibration.null_stained_percent == pytest.approx(2.77, abs=0.01)
    if preset == "triple-negative":
        assert sc.her2_low


def test_per_cell_her2_agreement(calibration):
    f = simulate_field((1024, 1024), preset="her2-heterogeneous", seed=3, **KW)
    fa = analyze_field(f.image, PANEL)
    sc = score_her2(fa.table, calibration)
    ok, tid = _match(f, fa.table)
    pred = sc.cells.set_index("cell_id")["category"].reindex(fa.table["cell_id"][ok])
    true = f.truth.set_index("cell_id").loc[tid[ok], "her2_category"]
    kappa = cohen_kappa(true.astype(str).to_numpy(), pred.astype(str).to_numpy(),
                        weights="linear")
    # measured 0.904 (linear-weighted; 0.86-0.91 on seeds 1-6) with a membrane shared with a
    # brighter neighbour left to it; 0.774 (0.71-0.78) with every junction counted for both
    # cells, when 0/1+ cells bordering 3+ ones read their arc; 0.72 (0.65-0.73) while cells
    # facing stroma grew past their membrane and the 1+ anchor was all the 1+ line's cells'
    assert kappa >= 0.85
    # true 1+ cells read 2+: measured 0.049 (4-10 % on seeds 1-6), 0.442 (35-52 %) before
    p3, t3 = pred.astype(str).to_numpy(), true.astype(str).to_numpy() == "3+"
    t1 = true.astype(str).to_numpy() == "1+"
    assert np.mean(p3[t1] == "2+") <= 0.15
    # true 3+ cells read 3+: measured 0.873 (151 of 173; 0.82-0.93 on seeds 1-6); 0.803
    # (0.76-0.88) before cells ended at a membrane facing stroma, the rest read 2+
    assert np.mean(p3[t3] == "3+") >= 0.85


def test_per_cell_her2_agreement_on_shared_junctions(control_calibration):
    """Junctions drawn as one line showing both cells' membranes (as a microscope sees
    them; controls drawn alike): a 0 cell's side of a junction with a 3+ cell reads 3+,
    and the membrane left to the brighter cell is what tells them apart."""
    kw = dict(KW, junctions="shared")
    cal = control_calibration(PANEL, **kw)
    f = simulate_field((1024, 1024), preset="her2-heterogeneous", seed=3, **kw)
    kappa, p0 = {}, {}
    for rule in ("brighter", "both"):
        fa = analyze_field(f.image, PANEL, AnalysisSettings(shared_membranes=rule))
        sc = score_her2(fa.table, cal)
        ok, tid = _match(f, fa.table)
        pred = sc.cells.set_index("cell_id")["category"].reindex(
            fa.table["cell_id"][ok]).astype(str).to_numpy()
        true = f.truth.set_index("cell_id").loc[tid[ok], "her2_category"].astype(str)
        kappa[rule] = cohen_kappa(true.to_numpy(), pred, weights="linear")
        p0[rule] = pred[true.to_numpy() == "0"]
        assert sc.category == "3+"
    # measured 0.883 (0.85-0.90 on seeds 1-6) against 0.750 (0.67-0.75) counting every
    # junction for both cells; with resolved rings 0.904 and 0.774
    assert kappa["brighter"] >= 0.85
    assert kappa["brighter"] >= kappa["both"] + 0.08
    # true 0 cells read 2+ or 3+: none (0-0.8 % on seeds 1-6) against 12.3 % (12-23 %)
    # counting both, their 3+ neighbours' junctions read as theirs; 1+: 15.4 % (10-21 %)
    hi = {rule: np.mean(np.isin(p, ["2+", "3+"])) for rule, p in p0.items()}
    assert hi["brighter"] <= 0.02 and hi["both"] >= 0.08
    assert np.mean(p0["brighter"] != "0") < np.mean(p0["both"] != "0")


def test_empty_and_tissue_free_images_give_zero_cells():
    blank = np.zeros((256, 256, len(PANEL.channels)), np.uint16)
    assert len(analyze_field(blank, PANEL).table) == 0
    f = simulate_field((256, 256), preset="MCF-7", seed=1, tissue_fraction=0.0, **KW)
    assert len(analyze_field(f.image, PANEL).table) == 0
    # images too small to derive a membrane threshold from, and no cell to need one (a
    # review: a 3 x 3 crop was an error naming an option the CLI does not have)
    for n in (1, 3, 8):
        assert len(analyze_field(np.zeros((n, n, len(PANEL.channels)), np.uint16),
                                 PANEL).table) == 0


def test_channel_mismatch_and_degenerate_library(tmp_path):
    img = np.zeros((64, 64, 5), np.uint16)
    with pytest.raises(InputError, match="8 detection channels"):
        analyze_field(img, PANEL)
    path = tmp_path / "five.ome.tif"
    write_ome_tiff(path, img, channel_names=[f"c{i}" for i in range(5)], pixel_size_um=0.5)
    with pytest.raises(InputError, match="5 channels"):
        analyze_slide(path, PANEL, tmp_path / "out", progress=False)
    # an 8-bit RGB image (brightfield) is pointed to the DAB scoring
    rgb = tmp_path / "rgb.ome.tif"
    write_ome_tiff(rgb, np.zeros((64, 64, 3), np.uint8), pixel_size_um=0.5)
    with pytest.raises(InputError, match=r"looks like brightfield: DAB IHC is scored by "
                                         r"`qdmed image dab`"):
        analyze_slide(rgb, PANEL, tmp_path / "out", progress=False)
    # an image unmixed already (qdmed's own unmixed.ome.zarr: one channel per component and
    # a residual, 8 like the panel's bands) is refused, pointing to a components panel
    comps = tmp_path / "unmixed.ome.tif"
    write_ome_tiff(comps, np.zeros((64, 64, 8), np.float32), pixel_size_um=0.5,
                   channel_names=[*PANEL.components, "residual"])
    with pytest.raises(InputError, match=r"named as unmixed components or labels \(DAPI, "
                                         r"HER2.*residual\).*panel --components"):
        analyze_slide(comps, PANEL, tmp_path / "out", progress=False)
    # detector counts whose bands are named after their dyes are not taken for components
    # (a review: uint16 bands named DAPI, Qdot 525, ... with emission wavelengths)
    from qdmed.imaging import read_slide
    from qdmed.imaging._analyze import check_channels

    dyes = tmp_path / "dye_bands.ome.tif"
    write_ome_tiff(dyes, np.zeros((64, 64, 8), np.uint16), pixel_size_um=0.5,
                   channel_names=[*PANEL.labels, "740nm-A", "740nm-B"])
    assert check_channels(read_slide(dyes), PANEL) is PANEL
    # the same QD twice: the panel warns and unmixing refuses the degenerate library
    dup = Panel.from_dict({"markers": {"A": {"label": "Qdot 605"}, "B": {"label": "Qdot 605"}},
                           "channels_nm": [[500, 550], [550, 600], [600, 650], [650, 700]]})
    assert any("cannot be separated" in w for w in dup.warnings)
    with pytest.raises(InputError, match="condition"):
        unmix_nnls(np.ones((4, 4)), dup.endmembers)
    # ... and a slide's analysis refuses it up front, naming the markers
    four = tmp_path / "four.ome.tif"
    write_ome_tiff(four, np.zeros((64, 64, 4), np.uint16),
                   channel_names=[f"c{i}" for i in range(4)], pixel_size_um=0.5)
    with pytest.raises(InputError, match=r"cannot be unmixed: nearly collinear: A and B "
                                         r"\(cosine 1\.000000\).*labels of different colours"):
        analyze_slide(four, dup, tmp_path / "out4", progress=False)
    assert not (tmp_path / "out4").exists()


def test_truncated_tiff_is_a_file_format_error(tmp_path):
    f = simulate_field((256, 256), preset="MCF-7", seed=1, **KW)
    path = tmp_path / "s.ome.tif"
    write_ome_tiff(path, f.image, channel_names=list(PANEL.channel_names), pixel_size_um=0.5)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 6 // 10])
    with pytest.raises(FileFormatError, match="s.ome.tif"):
        analyze_slide(path, PANEL, tmp_path / "out", progress=False)


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    d = tmp_path_factory.mktemp("slide")
    s = simulate_slide(d / "s.ome.zarr", (1024, 1024), preset="her2-heterogeneous", seed=5,
                       channel_names=list(PANEL.channel_names), tile=512, **KW)
    return s


def _key(cells):
    return cells.assign(ky=cells.centroid_y.round(2), kx=cells.centroid_x.round(2))


def test_tiles_stitch_without_duplicates_or_cuts(slide, tmp_path):
    one = analyze_slide(slide.path, PANEL, tmp_path / "one", tile=2048,
                        scheduler="synchronous", progress=False, outlines=False,
                        write_unmixed=False).cells()
    tiled = analyze_slide(slide.path, PANEL, tmp_path / "tiled", tile=384,
                          scheduler="synchronous", progress=False, write_unmixed=False)
    assert tiled.summary["n_tiles"] == 9
    many = tiled.cells()
    assert len(many) == len(one)  # no cell counted twice or lost
    assert many["cell_id"].is_unique
    m = _key(one).merge(_key(many), on=["ky", "kx"], suffixes=("_a", "_b"))
    # measured: 1 cell of ~800 differs (by a few pixels of area) between tilings
    assert len(m) >= 0.99 * len(one)
    np.testing.assert_allclose(m["HER2_membrane_mean_a"], m["HER2_membrane_mean_b"], rtol=1e-6)
    # what a cell leaves to brighter neighbours needs them whole in the margin too (a review:
    # at 22-26 um 4-10 cells of ~790 differed; none at the default 40 um)
    for c in ("completeness", "stained_mean", "ceded_fraction"):
        np.testing.assert_allclose(m[f"HER2_membrane_{c}_a"], m[f"HER2_membrane_{c}_b"],
                                   rtol=1e-6, err_msg=c)
    # GeoJSON for QuPath: one feature per cell
    gj = json.loads((tmp_path / "tiled" / "cells.geojson").read_text())
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == len(many)
    # QuPath's reader keeps the id only if it is a UUID and reads the nucleus ROI from a
    # top-level nucleusGeometry; the cell_id join key travels as name and metadata
    import uuid

    f0 = gj["features"][0]
    uuid.UUID(f0["id"])
    assert f0["properties"]["objectType"] == "cell" and "nucleusGeometry" in f0
    names = {int(f["properties"]["name"]) for f in gj["features"]}
    assert names == set(many["cell_id"].tolist())
    assert all(f["properties"]["metadata"]["cell_id"] == f["properties"]["name"]
               for f in gj["features"])
    assert "HER2: Membrane: Mean" in f0["properties"]["measurements"]


def _die_at_tile(monkeypatch, n: int) -> None:
    """Make the analysis's tile job raise KeyboardInterrupt at its `n`-th call: a run killed
    there (``monkeypatch.undo()`` gives the real job back)."""
    import qdmed.imaging._analyze as an

    real, calls = an.run_tile, {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt("killed")
        return real(*a, **k)

    monkeypatch.setattr(an, "run_tile", dying)


def test_resume_after_kill_gives_identical_output(slide, tmp_path, monkeypatch):
    ref = analyze_slide(slide.path, PANEL, tmp_path / "ref", tile=512, scheduler="synchronous",
                        progress=False, write_unmixed=False).cells()
    _die_at_tile(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        analyze_slide(slide.path, PANEL, tmp_path / "run", tile=512, scheduler="synchronous",
                      progress=False, write_unmixed=False)
    assert not (tmp_path / "run" / "cells.parquet").exists()  # nothing half-written
    assert len(list((tmp_path / "run" / "tiles").glob("tile_*.parquet"))) == 2
    monkeypatch.undo()
    # another slide's run into the folder would throw the two finished tiles away: refused
    other = tmp_path / ("other" + "".join(slide.path.suffixes))
    (shutil.copytree if slide.path.is_dir() else shutil.copyfile)(slide.path, other)
    with pytest.raises(InputError, match=r"holds an unfinished analysis of another slide \("
                                         + slide.path.name.replace(".", r"\.")
                                         + r", 2 tile\(s\) done"):
        analyze_slide(other, PANEL, tmp_path / "run", tile=512, scheduler="synchronous",
                      progress=False, write_unmixed=False)
    res = analyze_slide(slide.path, PANEL, tmp_path / "run", tile=512, scheduler="synchronous",
                        progress=False, write_unmixed=False)
    assert res.summary["n_tiles_resumed"] == 2
    pd.testing.assert_frame_equal(res.cells(), ref)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def dask_cluster(tmp_path):
    """A real `dask scheduler` and two `dask worker` processes on loopback."""
    port = _free_port()
    addr = f"tcp://127.0.0.1:{port}"
    bindir = os.path.dirname(sys.executable)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    procs = [subprocess.Popen([os.path.join(bindir, "dask"), "scheduler", "--host", "127.0.0.1",
                               "--port", str(port), "--no-dashboard"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                              cwd=tmp_path)]
    try:
        time.sleep(1.0)
        for _ in range(2):
            procs.append(subprocess.Popen(
                [os.path.join(bindir, "dask"), "worker", addr, "--nthreads", "1",
                 "--no-dashboard", "--nworkers", "1", "--local-directory", str(tmp_path)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=tmp_path))
        from distributed import Client

        with Client(addr, timeout="30s") as c:
            c.wait_for_workers(2, timeout=60)
        yield addr
    finally:
        for p in procs[::-1]:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def test_distributed_cluster_gives_the_same_cells(slide, tmp_path, dask_cluster):
    local = analyze_slide(slide.path, PANEL, tmp_path / "local", tile=512,
                          scheduler="synchronous", progress=False, write_unmixed=False).cells()
    dist = analyze_slide(slide.path, PANEL, tmp_path / "dist", tile=512,
                         scheduler=dask_cluster, progress=False, write_unmixed=False)
    assert dist.summary["n_workers"] == 2
    pd.testing.assert_frame_equal(dist.cells(), local)
    # a worker's address, given for the scheduler's, is named as such
    from qdmed.errors import InputError
    from qdmed.imaging._scheduler import identify

    info = identify(dask_cluster)
    assert info["type"] == "Scheduler" and len(info["workers"]) == 2
    worker = next(iter(info["workers"]))
    with pytest.raises(InputError, match="is a Dask Worker, not the scheduler"):
        analyze_slide(slide.path, PANEL, tmp_path / "w", tile=512, scheduler=worker,
                      progress=False)
    assert not (tmp_path / "w").exists()
    # a cluster that cannot read the jobs (started from another environment, or before
    # qdmed was updated): a module only this process can import stands in for it
    from qdmed.imaging._analyze import run_jobs
    from qdmed.imaging._scheduler import connect

    (tmp_path / "only_here.py").write_text("def job(v):\n    return v\n")
    sys.path.insert(0, str(tmp_path))
    client = connect(dask_cluster)
    try:
        import only_here

        with pytest.raises(InputError, match="could not read qdmed's jobs: it runs another"):
            run_jobs(only_here.job, [(1,)], client, lambda: None)
    finally:
        client.close()
        sys.path.remove(str(tmp_path))
        sys.modules.pop("only_here", None)


def test_a_scheduler_without_workers_is_said_while_the_run_waits(tmp_path):
    """A run on a scheduler that no worker had joined waited without a word. It still waits
    (an adaptive cluster starts workers once jobs are submitted), and says so."""
    from qdmed.errors import InputError, QdmedWarning
    from qdmed.imaging import _scheduler

    port = _free_port()
    addr = f"tcp://127.0.0.1:{port}"
    p = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "dask"), "scheduler",
                          "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    try:
        deadline = time.time() + 30
        while True:  # until it listens
            try:
                assert _scheduler.identify(addr, 5)["workers"] == {}
                break
            except InputError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        client = _scheduler.connect(addr)
        try:
            with pytest.warns(QdmedWarning, match="no Dask worker has joined .* `dask worker"):
                timer = _scheduler.watch_for_workers(client, 0.2)
                timer.join(10)
        finally:
            client.close()
    finally:
        p.terminate()
        p.wait(timeout=10)


def test_scheduler_addresses_checked_before_connecting():
    from qdmed.errors import InputError
    from qdmed.imaging._scheduler import _host_port

    assert _host_port("tcp://[::1]:8786") == ("::1", 8786)
    assert _host_port("tls://host.example:8786/") == ("host.example", 8786)
    assert _host_port("inproc://10.0.0.1/1234/5") is None
    for bad, said in (("tcp://::1:8786", "IPv6 address goes in brackets"),
                      ("tcp://:8786", "give a host and a port"),
                      ("tcp://127.0.0.1", "give a host and a port")):
        with pytest.raises(InputError, match=said):
            _host_port(bad)
    # the dashboard's web address given for the scheduler's; an unknown scheme is named by
    # distributed, not taken for a server's reply
    from qdmed.imaging._analyze import check_scheduler
    from qdmed.imaging._scheduler import identify

    with pytest.raises(InputError, match="is a web address .* tcp://HOST:8786"):
        check_scheduler("http://127.0.0.1:8787")
    with pytest.raises(InputError, match="unknown address scheme 'foo'"):
        identify("foo://127.0.0.1:1", 2)


def test_workers_hide_numpy_notices_when_the_command_line_does():
    import warnings

    from qdmed.errors import NUMPY_FP_NOTICE
    from qdmed.imaging._scheduler import numpy_notices_hidden, run_hiding_numpy_notices

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert not numpy_notices_hidden()
        warnings.filterwarnings("ignore", message=NUMPY_FP_NOTICE, category=RuntimeWarning)
        assert numpy_notices_hidden()
        warnings.simplefilter("always")  # as a worker process: its own filters
        assert run_hiding_numpy_notices(np.add.reduce, np.array([np.inf, -np.inf])) != 0
        assert seen == []


def test_an_address_that_is_not_a_dask_scheduler(monkeypatch):
    """An HTTP reply read as a Dask message asked for exabytes (MemoryError, an internal
    error); a server that accepts and never answers hung the run: both are bad input."""
    import threading

    from qdmed.errors import InputError
    from qdmed.imaging import _analyze as an
    from qdmed.imaging import _scheduler

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    port = srv.getsockname()[1]

    accepted = []

    def serve(reply):
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            accepted.append(c)  # closed at the end (a dropped socket warns)
            if reply:
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello" * 10)

    threading.Thread(target=serve, args=(True,), daemon=True).start()
    try:
        # the HTTP reply read as a Dask frame's length asked for exbibytes (MemoryError)
        with pytest.raises(InputError, match=r"is not a Dask scheduler \(its handshake "
                           r"failed: what it sent is not a Dask message \(read as a Dask "
                           r"frame, its first bytes gave an impossible length\)\)"):
            an.start_client(f"tcp://127.0.0.1:{port}", 1)
    finally:
        srv.close()
        for c in accepted:
            c.close()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)  # accepts (the kernel's backlog), never answers
    monkeypatch.setattr(_scheduler, "HANDSHAKE_TIMEOUT_S", 1)
    try:
        with pytest.raises(InputError, match="no Dask scheduler answered"):
            an.start_client(f"tcp://127.0.0.1:{silent.getsockname()[1]}", 1)
    finally:
        silent.close()
    import dask

    deadline = time.time() + 10  # the abandoned handshake ends on its own timeout
    while dask.config.get("scheduler", None) == "dask.distributed" and time.time() < deadline:
        time.sleep(0.1)
    # no failed client is left as dask's scheduler (later computations would need it)
    assert dask.config.get("scheduler", None) != "dask.distributed"
    import dask.array as da

    assert int(da.ones(4, chunks=2).sum().compute()) == 4


def test_settings_without_a_pixel_size_take_the_slides(tmp_path):
    """Settings given without a pixel size used the 0.5 um default on a 0.25 um slide (the
    slide's own reached the run only with settings=None)."""
    from qdmed.imaging import simulate_field, write_ome_tiff

    f = simulate_field((256, 256), preset="BT474", seed=3, **KW)
    write_ome_tiff(tmp_path / "s.ome.tif", f.image, channel_names=list(PANEL.channel_names),
                   pixel_size_um=0.25)
    for settings, want in ((None, 0.25), (AnalysisSettings(unmix_weights="poisson"), 0.25),
                           (AnalysisSettings(pixel_size_um=0.5), 0.5)):
        r = analyze_slide(tmp_path / "s.ome.tif", PANEL, tmp_path / f"o{want}", tile=256,
                          settings=settings, progress=False, write_unmixed=False,
                          outlines=False)
        assert r.summary["settings"]["pixel_size_um"] == want
    assert AnalysisSettings().with_pixel_size().pixel_size_um == 0.5
    # a field in memory records no pixel size: the one assumed is said (a review's 0.25 um
    # field read cells 2.8x too large, unsaid), and none when the settings give it
    fa = analyze_field(f.image, PANEL)
    assert fa.settings.pixel_size_um == 0.5 and len(fa.warnings) == 1
    assert "0.5 um/px assumed" in fa.warnings[0] and fa.to_dict()["warnings"] == list(fa.warnings)
    assert analyze_field(f.image, PANEL, AnalysisSettings(pixel_size_um=0.25)).warnings == ()


def test_a_slide_without_a_pixel_size_is_warned_and_can_be_given_one(tmp_path):
    """A review found a slide recording no pixel size analysed at 0.5 um/px unsaid (areas
    and densities off by the square of the scale). It is now warned among the slide's
    warnings (which the CLI prints), and a given pixel size is used and not warned."""
    from qdmed.imaging import simulate_field, write_ome_tiff
    from qdmed.imaging._analyze import summary_warnings
    from qdmed.imaging._qc import qc_slide

    f = simulate_field((256, 256), preset="BT474", seed=3, **KW)
    path = write_ome_tiff(tmp_path / "nops.ome.tif", f.image,
                          channel_names=list(PANEL.channel_names))
    kw = dict(tile=256, progress=False, write_unmixed=False, outlines=False)
    r = analyze_slide(path, PANEL, tmp_path / "a", **kw)
    assert r.summary["settings"]["pixel_size_um"] == 0.5
    assert [w for w in summary_warnings(r.summary) if w.startswith("slide: ")] == [
        "slide: the slide declares no pixel size: 0.5 um/px assumed (give --pixel-size-um, "
        "or AnalysisSettings(pixel_size_um=...))"]
    # ... and in the result's warnings, as the command line prints them
    assert r.warnings[:1] == [w for w in summary_warnings(r.summary) if w.startswith("slide: ")]
    assert r.warnings == summary_warnings(r.summary)  # no receptor gated here
    g = analyze_slide(path, PANEL, tmp_path / "b", settings=AnalysisSettings(pixel_size_um=0.25),
                      **kw)
    assert g.summary["settings"]["pixel_size_um"] == 0.25 and not g.summary["slide"]["warnings"]
    with pytest.raises(InputError, match="pixel_size_um must be a positive number"):
        analyze_slide(path, PANEL, tmp_path / "c", settings=AnalysisSettings(pixel_size_um=0),
                      **kw)
    q = qc_slide(path, PANEL, tile=256)
    assert q["pixel_size_um"] == 0.5 and q["warnings"][0].startswith(
        "slide: the slide declares no pixel size")
    assert not qc_slide(path, PANEL, tile=256, pixel_size_um=0.25)["slide"]["warnings"]


def test_an_output_folder_of_slides_or_of_another_slides_analysis_is_refused(tmp_path):
    """A review's ``analyze slide --out slides/`` wrote its outputs among the slides (a
    later qc of the folder read unmixed.ome.zarr as a slide), and an analysis written into
    a control's folder replaced the control's unsaid. Both are refused before any work;
    the same slide's folder is a resumption, as before."""
    from qdmed.imaging import simulate_field, write_ome_zarr

    f = simulate_field((128, 128), preset="BT474", seed=3, **KW)
    folder = tmp_path / "slides"
    folder.mkdir()
    kw = dict(pixel_size_um=0.5, channel_names=list(PANEL.channel_names))
    a = write_ome_zarr(folder / "a.ome.zarr", f.image, **kw)
    b = write_ome_zarr(tmp_path / "b.ome.zarr", f.image, **kw)
    run = dict(tile=128, progress=False, write_unmixed=False, outlines=False)
    with pytest.raises(InputError, match=r"slides holds slides \(a.ome.zarr\): write the "
                                         "output to a folder of its own"):
        analyze_slide(a, PANEL, folder, **run)
    assert sorted(p.name for p in folder.iterdir()) == ["a.ome.zarr"]
    analyze_slide(a, PANEL, tmp_path / "out", **run)
    analyze_slide(a, PANEL, tmp_path / "out", **run)  # the same slide again: resumed
    with pytest.raises(InputError, match=r"holds the analysis of another slide "
                                         r"\(a.ome.zarr\); this run of b.ome.zarr"):
        analyze_slide(b, PANEL, tmp_path / "out", **run)
    # a cohort into a slide's analysis: named as one (a review: "holds slides
    # (unmixed.ome.zarr)", its own output taken for a slide)
    from qdmed.imaging._cohort import analyze_cohort

    analyze_slide(a, PANEL, tmp_path / "out2", tile=128, progress=False, outlines=False)
    with pytest.raises(InputError, match=r"out2 holds the analysis of a slide \(a.ome.zarr\), "
                                         "not this command's output"):
        analyze_cohort(folder, PANEL, tmp_path / "out2", progress=False)


def test_regions_wholly_outside_the_slide_are_warned(tmp_path):
    """A review analysed a slide with another slide's cores: four of five read "no cells"
    unsaid. Regions wholly outside the slide are now named among the selection's warnings."""
    from qdmed.imaging import simulate_field, write_ome_zarr
    from qdmed.imaging._analyze import summary_warnings

    f = simulate_field((128, 128), preset="BT474", seed=3, **KW)
    path = write_ome_zarr(tmp_path / "s.ome.zarr", f.image, pixel_size_um=0.5,
                          channel_names=list(PANEL.channel_names))

    def square(name, x, y, d=60):
        return {"type": "Feature", "properties": {"objectType": "annotation", "name": name},
                "geometry": {"type": "Polygon", "coordinates": [[[x, y], [x + d, y],
                                                                 [x + d, y + d], [x, y + d],
                                                                 [x, y]]]}}

    regions = tmp_path / "r.geojson"
    regions.write_text(json.dumps({"type": "FeatureCollection", "features": [
        square("in", 10, 10), square("edge", 100, 100), square("far", 500, 20),
        square("below", 20, 900)]}))
    r = analyze_slide(path, PANEL, tmp_path / "a", tile=128, progress=False,
                      write_unmixed=False, outlines=False, regions=regions, per_region=True,
                      region_min_cells=1)
    said = [w for w in summary_warnings(r.summary) if "wholly outside" in w]
    assert said == ["scored_cells: 2 of the 4 regions lie wholly outside the slide's 128 x "
                    "128 px (far, below): nothing of them is scored; do the annotations "
                    "belong to this slide?"]
    rows = {x["region"]: x["message"] for x in r.summary["regions_scored"]["regions"]}
    assert rows["far"].startswith("wholly outside the slide's 128 x 128 px")
    assert rows["below"].startswith("wholly outside") and "outside" not in rows["in"]


def test_absent_ome_zarr_chunks_reach_the_analysis_and_qc_warnings(tmp_path):
    """A chunk missing from an OME-Zarr slide (a copy stopped partway) read as dark tissue
    unsaid; it is now among the slide's warnings of the analysis and of the QC."""
    from qdmed.errors import QdmedWarning
    from qdmed.imaging import simulate_field, write_ome_zarr
    from qdmed.imaging._analyze import summary_warnings
    from qdmed.imaging._qc import qc_slide

    f = simulate_field((256, 256), preset="BT474", seed=3, **KW)
    path = write_ome_zarr(tmp_path / "s.ome.zarr", f.image, pixel_size_um=0.5,
                          channel_names=list(PANEL.channel_names), chunks=(128, 128))
    (path / "0" / "2" / "1" / "1").unlink()
    kw = dict(tile=128, progress=False, write_unmixed=False, outlines=False,
              scheduler="synchronous")
    with pytest.warns(QdmedWarning, match="chunks") as rec:
        r = analyze_slide(path, PANEL, tmp_path / "a", **kw)
    # said once, when the run opens the slide, not again by each of its 4 tiles
    assert sum("chunks" in str(w.message) for w in rec) == 1
    said = [w for w in summary_warnings(r.summary) if w.startswith("slide: ")]
    assert len(said) == 1 and re.search(
        rf"1 of {4 * len(PANEL.channel_names)} chunks .*\(channel "
        rf"{PANEL.channel_names[2]}, y 128-256, x 128-256\)", said[0])
    with pytest.warns(QdmedWarning, match="chunks"):
        q = qc_slide(path, PANEL, tile=128)
    assert q["slide"]["warnings"] == [said[0].removeprefix("slide: ")]


def test_the_calibrations_own_warnings_reach_the_slide(tmp_path):
    """A calibration made without a 0 control says so in calibrate; the slides scored with
    it said nothing (a review: a HER2-0 tissue scored 1+ unwarned). Its warnings are in the
    slide's calibration block, printed with the others."""
    from qdmed.imaging import Her2Calibration, simulate_field, write_ome_tiff

    f = simulate_field((256, 256), preset="BT474", seed=3, **KW)
    path = write_ome_tiff(tmp_path / "s.ome.tif", f.image, pixel_size_um=0.5,
                          channel_names=list(PANEL.channel_names))
    cal = Her2Calibration(faint=20.0, weak_moderate=60.0, intense=150.0,
                          warnings=("no 0 control: the faint cut-off ...",))
    r = analyze_slide(path, PANEL, tmp_path / "a", tile=256, progress=False,
                      write_unmixed=False, outlines=False, her2_calibration=cal)
    assert "calibration: no 0 control: the faint cut-off ..." in r.warnings
    # ... and at the top of the slide's report (a review: a calibration of another panel
    # was said on stderr only, beside an ER 99 % of a 62 % truth)
    from qdmed.imaging._report import write_slide_report

    html = write_slide_report(r).read_text()
    assert "calibration: no 0 control: the faint cut-off ..." in html
    assert html.index("no 0 control") < html.index("Panel</h2>")
    # the report's figures from Python (SlideResult.plot)
    import matplotlib.pyplot as plt

    for what in ("histograms", "her2"):
        plt.close(r.plot(what))
    with pytest.raises(InputError, match="write_unmixed=False.*plot 'histograms' or 'her2'"):
        r.plot()
    plt.close(r.plot("HER2"))  # names in any case
    with pytest.raises(InputError, match="'map' is not known; accepted: overview"):
        r.plot("map")
    u = analyze_slide(path, PANEL, tmp_path / "b", tile=256, progress=False, outlines=False)
    fig = u.plot()
    assert len(fig.axes) == 2
    plt.close(fig)
    with pytest.raises(InputError, match="no HER2 score.*plot 'overview' or 'histograms'"):
        u.plot("her2")
    # the panel's own warnings reach the slide's (only `qdmed image panel` said them)
    from dataclasses import replace

    from qdmed.imaging._panel import _with_warnings

    strict = _with_warnings(replace(PANEL, max_cosine=0.2))
    assert strict.warnings
    p = analyze_slide(path, strict, tmp_path / "c", tile=256, progress=False,
                      write_unmixed=False, outlines=False)
    assert [w for w in p.warnings if w.startswith("panel: ")] == \
        [f"panel: {w}" for w in strict.warnings]


def test_a_run_refused_up_front_leaves_no_folder(slide, tmp_path, monkeypatch):
    """A bad tile size or scheduler, or a scheduler that does not answer, used to leave
    out/tiles/run.json behind."""
    from qdmed.errors import InputError

    with pytest.raises(InputError, match="tile must be an integer >= 64 px"):
        analyze_slide(slide.path, PANEL, tmp_path / "a", tile=0, progress=False)
    with pytest.raises(InputError, match="must be a Dask scheduler's address"):
        analyze_slide(slide.path, PANEL, tmp_path / "b", scheduler="foo", progress=False)
    # an offset at the detector's ceiling leaves no count (it said only "no nuclei")
    with pytest.raises(InputError, match=r"offset \(--offset\) 70000 is at or above "
                                         r"s.ome.zarr's detector ceiling 65535"):
        analyze_slide(slide.path, PANEL, tmp_path / "o", offset_adu=70000, progress=False)
    assert not (tmp_path / "o").exists()
    # host:port is a tcp address, as Dask's Client takes it
    from qdmed.imaging._analyze import check_scheduler

    assert check_scheduler("10.0.0.5:8786") == "tcp://10.0.0.5:8786"
    assert check_scheduler("[::1]:8786") == "tcp://[::1]:8786"
    assert check_scheduler("tls://h:8786") == "tls://h:8786" and check_scheduler(None) is None
    closed = f"tcp://127.0.0.1:{_free_port()}"
    t0 = time.perf_counter()
    with pytest.raises(InputError, match="nothing listens there"):
        analyze_slide(slide.path, PANEL, tmp_path / "c", tile=512, progress=False,
                      scheduler=closed)
    assert time.perf_counter() - t0 < 10  # said at once (distributed retried for 30 s)
    assert not any((tmp_path / n).exists() for n in "abc")
    (tmp_path / "d").mkdir()  # a folder the user made is left in place
    with pytest.raises(InputError, match="nothing listens there"):
        analyze_slide(slide.path, PANEL, tmp_path / "d", tile=512, progress=False,
                      scheduler=closed)
    assert (tmp_path / "d").is_dir()
    # the output folder is not the slide (a Zarr group) nor inside it (a review's analysis
    # wrote itself, unmixed image included, into the slide's group)
    for out in (slide.path, Path(slide.path) / "analysis"):
        with pytest.raises(InputError, match="write the output elsewhere"):
            analyze_slide(slide.path, PANEL, out, tile=512, progress=False)
    assert not (Path(slide.path) / "analysis").exists()
    # nor is an input where the run writes or removes one of its outputs (the same review
    # analysed analysis/unmixed.ome.zarr into analysis/: the slide was removed unread)
    inside = tmp_path / "e" / "unmixed.ome.zarr"
    shutil.copytree(slide.path, inside)
    with pytest.raises(InputError, match=r"is where this run writes unmixed.ome.zarr in"):
        analyze_slide(inside, PANEL, tmp_path / "e", tile=512, progress=False)
    assert (inside / "zarr.json").exists() or (inside / ".zattrs").exists()


def test_unmixed_ome_zarr_is_written(slide, tmp_path):
    from qdmed.imaging import read_slide

    res = analyze_slide(slide.path, PANEL, tmp_path / "u", tile=2048, progress=False,
                        outlines=False)
    u = read_slide(res.out_dir / "unmixed.ome.zarr")
    assert u.channel_names == (*PANEL.components, "residual")
    resid = np.asarray(u.data[..., -1])
    assert 0 <= resid.min() and np.median(resid) < 0.2  # Poisson noise at 300 e-/unit
    assert u.shape[:2] == slide.shape[:2]
    shutil.rmtree(tmp_path / "u")


def test_unmixed_ome_zarr_is_the_tiles_unmixing(slide, tmp_path, monkeypatch):
    """The tile jobs stage their cores' abundances and residuals, and unmixed.ome.zarr is
    copied from them: no second unmixing of the slide (it took 57 of a Poisson analysis's
    117 s on a 2048^2 slide). The image equals the slide unmixed chunk by chunk with the
    panel the tiles read, whether the tiles staged it or it was unmixed after them (tiles
    finished by a run that wrote no image, as on a cluster whose workers may not see this
    machine's folders); nothing is left staged."""
    from qdmed.imaging import AnalysisSettings, read_slide
    from qdmed.imaging._analyze import check_channels
    from qdmed.imaging._panel import Panel
    from qdmed.imaging._unmixed_out import STAGE_NAME, write_unmixed

    kw = dict(tile=512, progress=False, outlines=False, scheduler="synchronous")
    res = analyze_slide(slide.path, PANEL, tmp_path / "u", **kw)
    src = read_slide(slide.path)
    tiles_panel = Panel.from_dict(check_channels(src, PANEL).to_yaml_dict())
    ref = write_unmixed(src, tiles_panel, AnalysisSettings(**res.summary["settings"]),
                        tmp_path / "ref.ome.zarr", src.pixel_size_um)
    want = np.asarray(read_slide(ref).data)
    got = read_slide(res.out_dir / "unmixed.ome.zarr")
    np.testing.assert_array_equal(np.asarray(got.data), want)
    assert got.channel_names == (*PANEL.components, "residual")
    tiles = res.out_dir / "tiles"
    assert not (tiles / STAGE_NAME).exists() and not list(tiles.glob("*.unmixed"))
    # tiles finished without the image: resumed, unmixed after them, the same pixels
    analyze_slide(slide.path, PANEL, tmp_path / "v", write_unmixed=False, **kw)
    again = analyze_slide(slide.path, PANEL, tmp_path / "v", **kw)
    np.testing.assert_array_equal(
        np.asarray(read_slide(again.out_dir / "unmixed.ome.zarr").data), want)
    pd.testing.assert_frame_equal(again.cells(), res.cells())
    # a run killed at its third tile keeps the two staged cores (marked) for its resumption
    _die_at_tile(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        analyze_slide(slide.path, PANEL, tmp_path / "w", **kw)
    assert len(list((tmp_path / "w" / "tiles").glob("tile_*.unmixed"))) == 2
    monkeypatch.undo()
    resumed = analyze_slide(slide.path, PANEL, tmp_path / "w", **kw)
    assert resumed.summary["n_tiles_resumed"] == 2
    np.testing.assert_array_equal(
        np.asarray(read_slide(resumed.out_dir / "unmixed.ome.zarr").data), want)
    # killed again, then finished without the image: its stage is not left behind (a review
    # found it kept, as large as the image)
    _die_at_tile(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        analyze_slide(slide.path, PANEL, tmp_path / "x", **kw)
    assert (tmp_path / "x" / "tiles" / STAGE_NAME).is_dir()
    monkeypatch.undo()
    analyze_slide(slide.path, PANEL, tmp_path / "x", **{**kw, "write_unmixed": False})
    assert not (tmp_path / "x" / "tiles" / STAGE_NAME).exists()
    assert not list((tmp_path / "x" / "tiles").glob("*.unmixed"))
    # staging chunks: a divisor of the tile (one owner each), the largest up to 1024
    from qdmed.imaging._unmixed_out import stage_chunk_px

    assert [stage_chunk_px(t) for t in (512, 1024, 2048, 4096, 2100, 3000, 2053)] == [
        512, 1024, 1024, 1024, 700, 1000, 2053]


def test_positivity_gates_from_negative_controls():
    from qdmed.imaging import gates_from_negative_controls, score_markers

    ctrls = {n: analyze_field(simulate_field((512, 512), preset=n, seed=s, **KW).image,
                              PANEL).table for n, s in (("MDA-MB-468", 21), ("MCF-7", 22))}
    gates = gates_from_negative_controls(ctrls, {"ER": "MDA-MB-468", "PR": "MDA-MB-468",
                                                 "HER2": "MDA-MB-468"})
    assert gates["ER"].compartment == "nucleus"
    f = simulate_field((768, 768), preset="luminal-A", seed=4, **KW)
    scored = score_markers(analyze_field(f.image, PANEL).table, gates)
    # measured: ER 92.7 % vs 90.4 % true; PR 84.0 % vs 71.9 % true. The PR gate comes from an
    # ER-negative control, but in this ER-high tissue the ER photons' shot noise, spread by the
    # unmixing, lifts PR-negative nuclei above it: a negative control must share the panel's
    # co-expression (fluorescence-minus-one) for tight gates. Documented in the gate function.
    for m, tol in (("ER", 5.0), ("PR", 15.0)):
        truth_pct = 100 * float((f.truth[f"{m}_level"] > 0).mean())
        assert abs(scored["percent_positive"][m] - truth_pct) < tol, m
    assert sum(scored["phenotypes"].values()) > 0
    with pytest.raises(InputError):
        gates_from_negative_controls(ctrls, {"ER": "MDA-MB-468"}, quantile=1.5)


def test_measured_endmember_from_single_stain_control(tmp_path):
    from qdmed.imaging import endmember_from_control

    rng = np.random.default_rng(0)
    k = PANEL.components.index("PR")
    true_col = PANEL.endmembers[:, k]
    level = rng.gamma(3.0, 1.0, (128, 128))
    img = rng.poisson(PPU * level[..., None] * true_col).astype(np.uint16)
    prof = endmember_from_control(img)
    np.testing.assert_allclose(prof, true_col / true_col.sum(), atol=2e-3)
    p2 = PANEL.with_measured({"PR": prof})
    np.testing.assert_allclose(p2.endmembers[:, k], true_col, rtol=0.02, atol=2e-3 * true_col.sum())
    # the measured library survives a YAML round trip
    p2.to_file(tmp_path / "p.yaml")
    p3 = Panel.from_file(tmp_path / "p.yaml")
    np.testing.assert_allclose(p3.endmembers[:, k], p2.endmembers[:, k], rtol=1e-3)
    with pytest.raises(InputError, match="not a panel component"):
        PANEL.with_measured({"Ki67": prof})


def test_completeness_background_is_tissue_not_glass():
    full = analyze_field(simulate_field((512, 512), preset="HER2-enriched", seed=8, **KW).image,
                         PANEL).table
    part = analyze_field(simulate_field((512, 512), preset="HER2-enriched", seed=8,
                                        tissue_fraction=0.35, **KW).image, PANEL).table
    t_full = full.attrs["completeness_threshold"]["HER2"]
    t_part = part.attrs["completeness_threshold"]["HER2"]
    assert t_part > 0.5 * t_full  # glass would give 0 and make every membrane "complete"
    assert abs(part["HER2_membrane_completeness"].median()
               - full["HER2_membrane_completeness"].median()) < 0.15


def test_panel_yaml_round_trip_keeps_endmembers(tmp_path):
    q = PANEL
    for _ in range(3):
        q.to_file(tmp_path / "p.yaml")
        q = Panel.from_file(tmp_path / "p.yaml")
    np.testing.assert_allclose(q.endmembers, PANEL.endmembers, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("text", ["markers: [HER2]\nchannels_nm: [[500, 550]]\n",
                                  "markers: {A: {label: Qdot 605}}\nchannels_nm: [[500, 550], "
                                  "[550, 600]]\nautofluorescence: {fwhm_nm: 100}\n",
                                  "markers: {A: {label: Qdot 605, brightness: 0}}\n"
                                  "channels_nm: [[500, 550], [550, 600]]\n"])
def test_malformed_panel_files(tmp_path, text):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(FileFormatError, match="bad.yaml"):
        Panel.from_file(f)


def test_wrong_band_panel_is_refused(slide, tmp_path):
    from qdmed.imaging import spectral_channels
    from qdmed.imaging._panel import design_panel

    other = design_panel(["DAPI", "HER2", "ER", "PR", "EGFR", "mTOR"],
                         ["Qdot 525", "Qdot 565", "Qdot 605", "Qdot 655", "Qdot 705"],
                         spectral_channels(8, 500, 800), fixed={"DAPI": "DAPI"})
    with pytest.raises(InputError, match="does not match the panel's band"):
        analyze_slide(slide.path, other, tmp_path / "o", progress=False)


def test_margin_smaller_than_a_cell_is_refused(slide, tmp_path):
    with pytest.raises(InputError, match="margin_um"):
        analyze_slide(slide.path, PANEL, tmp_path / "o", margin_um=10, progress=False)
    # a cell is measured against its neighbours (shared membranes): twice the largest
    # radius (19.3 um by default), unless every junction counts for both cells
    with pytest.raises(InputError, match="twice the largest cell radius.*margin_um >= 39"):
        analyze_slide(slide.path, PANEL, tmp_path / "o", margin_um=30, progress=False)


def test_default_margin_follows_the_cell_size_settings(slide, tmp_path):
    # a review: with larger cells than the default (2 r_max 41.2 um > 40) every slide of a
    # cohort run, which takes no margin, failed; the default margin now grows with them
    from qdmed.imaging import AnalysisSettings

    s = AnalysisSettings(max_nucleus_area_um2=500.0)
    with pytest.raises(InputError, match="margin_um >= 42"):
        analyze_slide(slide.path, PANEL, tmp_path / "o", margin_um=40, settings=s,
                      progress=False)
    res = analyze_slide(slide.path, PANEL, tmp_path / "ok", settings=s, tile=2048,
                        scheduler="synchronous", progress=False, outlines=False,
                        write_unmixed=False)
    assert len(res.cells()) > 0


def test_bad_heterogeneity_regions_are_refused_before_reading(tmp_path):
    for kw, what in (({"her2_region_um": 0}, "her2_region_um"),
                     ({"her2_region_um": float("nan")}, "her2_region_um"),
                     ({"her2_region_min_cells": 0}, "her2_region_min_cells"),
                     ({"her2_region_min_cells": 2.5}, "her2_region_min_cells")):
        with pytest.raises(InputError, match=what):
            analyze_slide(tmp_path / "missing.ome.zarr", PANEL, tmp_path / "o", **kw)


def test_slide_her2_classes_reach_the_geojson(slide, tmp_path, calibration):
    from qdmed.imaging import MarkerGate

    res = analyze_slide(slide.path, PANEL, tmp_path / "her2", tile=512, scheduler="synchronous",
                        progress=False, write_unmixed=False, her2_calibration=calibration,
                        her2_region_um=256, her2_region_min_cells=30,
                        gates={"ER": MarkerGate("nucleus", 1.0), "PR": MarkerGate("nucleus", 1.0)})
    gj = json.loads((tmp_path / "her2" / "cells.geojson").read_text())
    per_cell = res.her2.cells.set_index("cell_id")["category"]
    classes = {int(f["properties"]["name"]): f["properties"]["classification"]["name"]
               for f in gj["features"]}
    assert classes and all(v == f"HER2 {per_cell[k]}" for k, v in classes.items())
    assert res.summary["her2"]["category"] == res.her2.category
    # ... and cells.parquet: each scored cell's category (a review found it in the GeoJSON
    # only), missing for the others
    got = res.cells().set_index("cell_id")["her2_category"]
    assert got.loc[per_cell.index].tolist() == per_cell.astype(str).tolist()
    assert got.drop(per_cell.index).isna().all()
    # the phenotypes' HER2 is the cell's category (read as ASCO/CAP reads a tumour's), no gate
    # needed: no 0 or 1+ cell is called HER2+, every 2+ cell waits on it (a review found 29 %
    # of an MCF-7 slide's cells, all 1+, called "luminal HER2+" by a HER2 gate)
    t = res.cells().set_index("cell_id")
    ph, cat = t["phenotype"], t["her2_category"]
    her2_pos = ph.isin(["luminal HER2+", "HER2-enriched"])
    assert not (her2_pos & cat.isin(["0", "1+"])).any()
    assert (ph[cat == "2+"] == "HER2 2+ (equivocal)").all() and (cat == "2+").sum() > 0
    assert (her2_pos | (ph == "unmeasured"))[cat == "3+"].all() and her2_pos.sum() > 0
    assert (ph[cat.isna() & t["phenotype"].notna()] == "unmeasured").all()
    assert "category" in res.summary["markers_scored"]["phenotype_her2"]
    # HER2 heterogeneity by region: the slide's 512 um side in 256 um squares, each scored
    het = res.summary["her2_heterogeneity"]
    assert het["region_um"] == 256.0 and het["n_regions"] == 4
    assert sum(r["n_cells"] for r in het["regions"]) == res.her2.n_cells
    assert het["slide_category"] == res.her2.category
    assert res.her2_heterogeneity.to_dict() == het
    regions = json.loads((tmp_path / "her2" / "her2_regions.geojson").read_text())["features"]
    assert len(regions) == 4 and res.summary["outputs"]["her2_regions"] == "her2_regions.geojson"
    r0 = regions[0]  # 256 um squares at 0.5 um/px: corners on a 512 px grid
    ring = r0["geometry"]["coordinates"][0]
    assert {tuple(p) for p in ring} <= {(x, y) for x in (0.0, 512.0, 1024.0)
                                        for y in (0.0, 512.0, 1024.0)}
    assert r0["properties"]["objectType"] == "annotation"
    assert r0["properties"]["classification"]["name"].startswith("HER2 region ")


def test_gallery_windows_fit_named_annotations_of_different_sizes(slide, tmp_path):
    from qdmed.imaging._report import core_gallery_figure

    def square(name, x0, y0, side):
        ring = [[x0, y0], [x0 + side, y0], [x0 + side, y0 + side], [x0, y0 + side], [x0, y0]]
        return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {"objectType": "annotation", "name": name}}

    regs = tmp_path / "named.geojson"
    regs.write_text(json.dumps({"type": "FeatureCollection", "features": [
        square("big", 100, 100, 600), square("small", 800, 800, 120)]}))
    res = analyze_slide(slide.path, PANEL, tmp_path / "named", tile=512,
                        scheduler="synchronous", progress=False, outlines=False,
                        regions=regs, per_region=True, region_min_cells=5)
    fig = core_gallery_figure(res, res.summary["regions_scored"]["regions"])
    titles = [a.get_title() for a in fig.axes if a.get_title()]
    # windows of 1.5 area-equivalent diameters at 0.5 um per px: 600 px -> 0.51 mm,
    # 120 px -> 0.1 mm (one window for both, the median, would crop the big one)
    assert [t.split("(")[-1] for t in titles] == ["0.51 mm)", "0.1 mm)"]
    assert "each window sized to its region" in " ".join(fig._suptitle.get_text().split())


def test_slide_scores_only_cells_in_the_tumour_regions(slide, tmp_path, calibration):
    # the left half of the slide annotated as tumour (QuPath coordinates: x = column)
    reg = tmp_path / "tumour.geojson"
    ring = [[0, 0], [512, 0], [512, 1024], [0, 1024], [0, 0]]
    reg.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
         "properties": {"objectType": "annotation", "classification": {"name": "Tumor"}}}]}))
    res = analyze_slide(slide.path, PANEL, tmp_path / "reg", tile=512, scheduler="synchronous",
                        progress=False, write_unmixed=False, outlines=False,
                        her2_calibration=calibration, regions=reg, region_class="Tumor")
    cells = res.cells()
    inside = cells["centroid_x"].to_numpy() + 0.5 < 512
    assert np.array_equal(cells["in_region"].to_numpy(), inside)
    sel = res.summary["scored_cells"]
    assert sel["n_scored"] == int(inside.sum()) and 0 < sel["n_scored"] < len(cells)
    assert res.her2.n_cells == int(inside.sum())
    assert res.summary["her2"]["n_cells"] == int(inside.sum())
    # annotations that miss every cell: nothing scored, and the summary says so (the tiles
    # are reused: regions select cells after the analysis, outside the run fingerprint)
    def scored_in_square(name, x0, x1):
        f = tmp_path / f"{name}.geojson"
        ring = [[x0, x0], [x1, x0], [x1, x1], [x0, x1], [x0, x0]]
        f.write_text(json.dumps({"type": "Feature", "properties": {},
                                 "geometry": {"type": "Polygon", "coordinates": [ring]}}))
        return analyze_slide(slide.path, PANEL, tmp_path / "reg", tile=512,
                             scheduler="synchronous", progress=False, write_unmixed=False,
                             outlines=False, her2_calibration=calibration, regions=f)

    # every region wholly outside the slide (annotations of another slide): refused before
    # any tile (a review's run wrote tables of "no cells" and exited 0); some outside are
    # warned (test_regions_wholly_outside_the_slide_are_warned)
    with pytest.raises(InputError, match=r"every region of .*far.geojson lies wholly outside "
                                         r"s.ome.zarr's 1024 x 1024 px"):
        scored_in_square("far", 5000, 5100)
    # a region on the slide that holds no cell: none of the cells lies in the regions
    res = scored_in_square("glass", 1, 3)
    assert [w[:12] for w in res.summary["scored_cells"]["warnings"]] == ["none of the "]
    with pytest.raises(InputError, match="needs a regions file"):
        analyze_slide(slide.path, PANEL, tmp_path / "reg2", region_class="Tumor")


def test_nucleus_centroids_equal_ndimage_means_exactly():
    """Tile ownership compares nucleus centroids with tile edges, so the bincount over
    labelled pixels must give the very values of scipy.ndimage.mean over index images."""
    from scipy import ndimage

    from qdmed.imaging._analyze import _nucleus_centroids

    rng = np.random.default_rng(0)
    lab, n = ndimage.label(ndimage.gaussian_filter(rng.random((300, 420)), 4) > 0.52)
    ids = np.arange(1, n + 1)[::-1]  # any order of ids
    cy, cx = _nucleus_centroids(lab, ids, 40, -3)
    assert np.array_equal(cy, np.asarray(ndimage.mean(np.indices(lab.shape)[0], lab, ids)) + 40)
    assert np.array_equal(cx, np.asarray(ndimage.mean(np.indices(lab.shape)[1], lab, ids)) - 3)
    e = _nucleus_centroids(np.zeros((5, 5), np.int32), np.array([], np.int64), 0, 0)
    assert e[0].shape == (0,) and e[1].shape == (0,)


def test_slide_autofluorescence_estimated_blindly(tmp_path):
    """A slide whose autofluorescence is not the panel's model (560 nm, 180 nm FWHM against
    the model's 520/150: cosine 0.935): analysed with autofluorescence='blind', the panel
    used holds the slide's own spectrum (measured cosine 0.9992 at 300 e- per unit)."""
    from qdmed.imaging._panel import autofluorescence_spectrum, mixing_matrix

    e = PANEL.endmembers.copy()
    af = mixing_matrix([autofluorescence_spectrum(560.0, 180.0)], PANEL.channels)[:, 0]
    e[:, -1] = af / af.sum() * PANEL.endmembers[:, -1].sum()
    s = simulate_slide(tmp_path / "af.ome.zarr", (768, 768), preset="BT474", seed=2,
                       channel_names=list(PANEL.channel_names), tile=512,
                       **{**KW, "endmembers": e})
    kw = dict(tile=2048, scheduler="synchronous", progress=False, outlines=False,
              write_unmixed=False)
    res = analyze_slide(s.path, PANEL, tmp_path / "blind", autofluorescence="blind", **kw)
    info = res.summary["autofluorescence"]
    assert info["source"].startswith("blind: ") and info["warnings"] == []
    used = np.array(res.summary["panel"]["mixing_matrix"])[:, -1]
    cos = used @ e[:, -1] / np.linalg.norm(used) / np.linalg.norm(e[:, -1])
    assert cos > 0.999
    from qdmed.imaging._report import write_slide_report

    assert "Autofluorescence endmember: source blind: " in write_slide_report(res).read_text()
    plain = analyze_slide(s.path, PANEL, tmp_path / "plain", **kw)
    assert plain.summary["autofluorescence"] == {"source": "panel (model)"}
    with pytest.raises(InputError, match="'panel' or 'blind'"):
        analyze_slide(s.path, PANEL, tmp_path / "x", autofluorescence="unstained", **kw)


def test_blind_autofluorescence_reads_full_resolution_pixels(slide, monkeypatch):
    """Blocks must stay smaller than the tissue's structure, so a slide larger than
    MAX_CONTROL_PIXELS gives a window at full resolution, not a pyramid level: the one with
    the most signal outside the labels' span (label-rich places lack the places without
    each label that the estimate needs)."""
    from qdmed.imaging import _library, read_slide

    monkeypatch.setattr(_library, "MAX_CONTROL_PIXELS", 256 * 256)
    s = read_slide(slide.path)
    img, px, _ = _library.blind_image(s, PANEL)
    assert px == s.pixel_size_um and img.shape == (256, 256, len(PANEL.channels))
    from qdmed.imaging._analyze import reference_origin

    labels = PANEL.endmembers[:, :-1]
    q, _ = np.linalg.qr(labels)
    perp = np.eye(len(PANEL.channels)) - q @ q.T

    def outside_labels(a):  # signal outside the labels' span: the autofluorescence's
        return np.linalg.norm(a @ perp, axis=-1)

    y0, x0 = reference_origin(s, 256, outside_labels)
    np.testing.assert_array_equal(img, np.asarray(s.data[y0:y0 + 256, x0:x0 + 256]))
    af = outside_labels(np.asarray(s.data, dtype=np.float64))
    assert af[y0:y0 + 256, x0:x0 + 256].mean() > af.mean()  # an autofluorescent window


def _circle(cx, cy, r, n=64):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    ring = np.column_stack([cx + r * np.cos(t), cy + r * np.sin(t)])
    return np.vstack([ring, ring[:1]]).round(2).tolist()


def _core(name, cx, cy, r, missing=False):
    """A TMA core as QuPath exports it (PathObjectTypeAdapters: objectType 'tmaCore', name,
    isMissing; the ellipse ROI as a Polygon flagged isEllipse)."""
    return {"type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [_circle(cx, cy, r)],
                         "isEllipse": True},
            "properties": {"objectType": "tmaCore", "name": name, "isMissing": missing}}


def test_tma_cores_are_scored_one_by_one(slide, tmp_path, calibration):
    cores = tmp_path / "cores.geojson"
    feats = [_core("A-1", 256, 256, 220), _core("A-2", 768, 256, 220),
             _core("B-1", 256, 768, 220), _core("B-2", 768, 768, 30),
             _core("B-3", 1200, 768, 220, missing=True)]
    cores.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    res = analyze_slide(slide.path, PANEL, tmp_path / "tma", tile=512, scheduler="synchronous",
                        progress=False, write_unmixed=False, outlines=False,
                        her2_calibration=calibration, regions=cores)
    cells = res.cells()
    x, y = cells["centroid_x"].to_numpy() + 0.5, cells["centroid_y"].to_numpy() + 0.5
    table = pd.read_csv(tmp_path / "tma" / "regions.csv", keep_default_na=False)
    assert table["region"].tolist() == ["A-1", "A-2", "B-1", "B-2", "B-3"]
    assert table["status"].tolist() == ["ok", "ok", "ok", "too few cells", "missing"]
    for row, (cx, cy, r) in zip(table.itertuples(), [(256, 256, 220), (768, 256, 220),
                                                    (256, 768, 220), (768, 768, 30)], strict=False):
        # the 64-gon lies inside its circle: cells well inside are in, cells outside are out
        d = np.hypot(x - cx, y - cy)
        mine = (cells["region"] == row.region).to_numpy()
        assert mine[d < r * np.cos(np.pi / 64) - 1e-6].all() and not mine[d > r].any()
        assert row.n_cells == row.n_scored == int(mine.sum())
        if row.status == "ok":  # each core scored exactly as a slide of its cells
            ref = score_her2(cells[mine], calibration, nan_policy="omit")
            assert row.her2_category == ref.category
            assert float(row.her2_mean_membrane) == pytest.approx(ref.mean_membrane_intensity)
    assert (cells["region"] == "").to_numpy().tolist() == (~cells["in_region"]).tolist()
    block = res.summary["regions_scored"]
    assert block["by_status"] == {"ok": 3, "too few cells": 1, "missing": 1}
    assert sum(block["her2_categories"].values()) == 3
    assert res.summary["scored_cells"]["regions"]["tma"] is True
    assert res.summary["scored_cells"]["regions"]["missing_cores"] == ["B-3"]
    from qdmed.imaging._report import write_slide_report

    html = write_slide_report(res).read_text()
    assert "Regions scored one by one (TMA cores)" in html and "B-3" in html
    # annotations are not scored one by one unless asked; a file is needed to ask
    plain = analyze_slide(slide.path, PANEL, tmp_path / "tma", tile=512,
                          scheduler="synchronous", progress=False, write_unmixed=False,
                          outlines=False, regions=cores, per_region=False)
    assert plain.summary["regions_scored"] is None and "region" not in plain.cells()
    assert not (tmp_path / "tma" / "regions.csv").exists()
    with pytest.raises(InputError, match="per_region needs a regions file"):
        analyze_slide(slide.path, PANEL, tmp_path / "x", per_region=True)
    with pytest.raises(InputError, match="region_min_cells"):
        analyze_slide(slide.path, PANEL, tmp_path / "x", regions=cores, region_min_cells=0)


@pytest.fixture(scope="module")
def tma_slide(tmp_path_factory):
    from qdmed.imaging._tma import simulate_tma

    d = tmp_path_factory.mktemp("tma")
    return simulate_tma(d / "tma.ome.zarr", rows=2, cols=2, core_diameter_um=300.0,
                        spacing_um=340.0, margin_um=40.0, position_jitter_um=8.0,
                        presets=["HER2-enriched", "triple-negative", "her2-ultralow"],
                        missing=["B-2"], channel_names=list(PANEL.channel_names), tile=512,
                        seed=9, **KW)


def test_tma_simulation_places_each_preset_in_its_core(tma_slide):
    cores = {c["name"]: c for c in tma_slide.params["tma"]["cores"]}
    assert list(cores) == ["A-1", "A-2", "B-1", "B-2"] and cores["B-2"]["missing"]
    t = tma_slide.truth
    assert set(t["core"]) == {"A-1", "A-2", "B-1"}  # nothing where B-2 was lost
    for name, sub in t.groupby("core"):
        c = cores[name]
        d = np.hypot(sub["center_y"] - c["center_y"], sub["center_x"] - c["center_x"])
        assert (d <= c["radius_px"]).all()
    # each core is its preset's tissue: HER2-enriched mostly 3+, the others no 2+/3+
    frac3 = t.groupby("core")["her2_category"].apply(lambda s: (s == "3+").mean())
    assert frac3["A-1"] > 0.6 and frac3["A-2"] == 0 and frac3["B-1"] == 0


def test_dearrayer_finds_and_names_the_cores(tma_slide, tmp_path):
    from qdmed.imaging._tma import find_tma_cores

    found, overview = find_tma_cores(tma_slide.path)
    truth = {c["name"]: c for c in tma_slide.params["tma"]["cores"]}
    assert (found.n_rows, found.n_cols, found.n_found) == (2, 2, 3)
    assert found.core_diameter_um == pytest.approx(300.0, rel=0.05)
    for c in found.cores:
        t = truth[c["name"]]
        assert c["missing"] == t["missing"]
        tol = 40.0 if c["missing"] else 6.0  # px: a missing core sits at the grid's place
        assert abs(c["center_x"] - t["center_x"]) < tol
        assert abs(c["center_y"] - t["center_y"]) < tol
    assert found.plot(overview) is not None
    doc = found.to_geojson()
    assert doc["features"][3]["properties"] == {"objectType": "annotation", "name": "B-2",
                                                "isMissing": True}
    from qdmed.imaging._regions import read_regions

    p = tmp_path / "cores.geojson"
    p.write_text(json.dumps(doc))
    reg = read_regions(p)
    assert reg.is_tma and reg.names == ("A-1", "A-2", "B-1") and reg.missing == ("B-2",)


def test_tma_cores_get_their_presets_her2_category(tma_slide, tmp_path, calibration):
    from qdmed.imaging._tma import find_tma_cores

    found, _ = find_tma_cores(tma_slide.path)
    cores = tmp_path / "cores.geojson"
    cores.write_text(json.dumps(found.to_geojson()))
    tma_map = tmp_path / "map.csv"  # A-1 and B-1 are one patient's replicate cores
    tma_map.write_text("core,case\nA-1,P1\nA-2,P2\nB-1,P1\nB-2,P3\nC-1,P9\n")
    res = analyze_slide(tma_slide.path, PANEL, tmp_path / "out", tile=768,
                        scheduler="synchronous", progress=False, write_unmixed=False,
                        outlines=True, her2_calibration=calibration, regions=cores,
                        tma_map=tma_map)
    got = {r["region"]: (r["status"], r["her2_category"])
           for r in res.summary["regions_scored"]["regions"]}
    # the slide-level categories of these presets (test_slide_her2_category), core by core
    assert got == {"A-1": ("ok", "3+"), "A-2": ("ok", "1+"), "B-1": ("ok", "0"),
                   "B-2": ("missing", None)}
    # no HER2 heterogeneity squares across a TMA: they would mix patients' cores
    assert res.summary["her2_heterogeneity"] is None
    assert not (tmp_path / "out" / "her2_regions.geojson").exists()
    cells = res.cells()
    truth_n = tma_slide.truth["core"].value_counts()
    for r in res.summary["regions_scored"]["regions"][:3]:  # segmentation finds the cells
        assert r["n_cells"] == pytest.approx(truth_n[r["region"]], rel=0.05)
    assert (cells["region"] != "").mean() > 0.97
    # cases: the scored cells of their cores pooled and scored as one slide
    cases = {r["case"]: r for r in res.summary["cases_scored"]["cases"]}
    assert sorted(cases) == ["P1", "P2", "P3", "P9"]  # every mapped case has a row:
    assert (cases["P3"]["status"], cases["P3"]["cores"]) == ("no cells", "B-2")  # lost core
    assert cases["P3"]["n_cores_missing"] == 1 and "1 of 1 cores missing (B-2 lost from the section)" in \
        cases["P3"]["message"]
    assert cases["P1"]["n_cores_missing"] == 0
    # a core the regions file does not hold (a row left out of the grid's labels)
    assert cases["P9"]["status"] == "no cells" and cases["P9"]["n_cores_missing"] == 1
    assert cases["P9"]["message"].endswith("; core C-1 not in the regions file")
    assert any("not in the regions file (C-1)" in w
               for w in res.summary["cases_scored"]["warnings"])
    p1 = cells[cells["region"].isin(["A-1", "B-1"])]
    # QuPath shows each cell's core and case (its metadata), as cells.parquet holds them
    feats = json.loads((tmp_path / "out" / "cells.geojson").read_text())["features"]
    meta = {int(f["properties"]["metadata"]["cell_id"]): f["properties"]["metadata"]
            for f in feats}
    assert len(meta) == len(cells)
    for _, c in cells.iterrows():
        m = meta[int(c["cell_id"])]
        assert m.get("region", "") == c["region"] and m.get("case") == c["case"]
    assert {m.get("case") for m in meta.values()} >= {"P1", "P2"}
    assert cases["P1"]["cores"] == "A-1;B-1" and cases["P1"]["n_scored"] == len(p1)
    assert cases["P1"]["her2_category"] == score_her2(p1, calibration,
                                                      nan_policy="omit").category
    assert cases["P2"]["her2_category"] == "1+"
    # its cores disagree (3+ and 0): said beside the pooled category
    assert (cases["P1"]["her2_core_categories"], cases["P1"]["her2_cores_discordant"]) == (
        "A-1:3+;B-1:0", True)
    assert (tmp_path / "out" / "cases.csv").read_text().startswith(
        "case,status,n_cores,n_cores_missing,cores,n_scored,her2_category,message")
    # per case against a pathologist's reads (P2 read 0 where QD-IHC says 1+)
    from qdmed.imaging import compare_her2_tables

    reads = tmp_path / "reads.csv"
    reads.write_text("patient,dab\nP1,3+\nP2,0\n")
    agree = compare_her2_tables(tmp_path / "out" / "cases.csv", reads, key="case",
                                key_b="patient", column_b="dab")
    assert agree.n_cases == 2 and agree.percent_agreement == 50.0
    with pytest.raises(InputError, match="tma_map needs regions"):
        analyze_slide(tma_slide.path, PANEL, tmp_path / "x", tma_map=tma_map)
    # every core with too few cells: the tables keep their score columns, empty (a
    # statistician's scripts failed on such a run: the columns had depended on the data)
    import pandas as pd

    none = analyze_slide(tma_slide.path, PANEL, tmp_path / "none", tile=768,
                         scheduler="synchronous", progress=False, write_unmixed=False,
                         outlines=False, her2_calibration=calibration, regions=cores,
                         tma_map=tma_map, region_min_cells=10 ** 6)
    for name in ("regions.csv", "cases.csv"):
        full = pd.read_csv(tmp_path / "out" / name)
        empty = pd.read_csv(tmp_path / "none" / name)
        assert set(full.columns) <= set(empty.columns), name
        assert empty["total_her2_load"].isna().all()
    assert {r["status"] for r in none.summary["regions_scored"]["regions"]} <= {
        "too few cells", "missing"}
    # the other rule (Allott 2016's "any positive"): a case takes its highest core's result;
    # the run resumes from its finished tiles, so only the scoring is redone
    hi = analyze_slide(tma_slide.path, PANEL, tmp_path / "out", tile=768,
                       scheduler="synchronous", progress=False, write_unmixed=False,
                       outlines=False, her2_calibration=calibration, regions=cores,
                       tma_map=tma_map, case_rule="highest").summary["cases_scored"]
    core = {r["region"]: r for r in res.summary["regions_scored"]["regions"]}
    by = {r["case"]: r for r in hi["cases"]}
    assert hi["rule"] == "highest"
    assert (by["P1"]["her2_category"], by["P1"]["her2_core"]) == ("3+", "A-1")
    assert by["P1"]["her2_mean_membrane"] == core["A-1"]["her2_mean_membrane"]
    assert by["P1"]["n_cores_scored"] == 2 and by["P1"]["n_scored"] == len(p1)
    assert (by["P2"]["her2_category"], by["P3"]["status"]) == ("1+", "no cells")
    assert by["P9"]["message"].endswith("; core C-1 not in the regions file")
    assert (by["P9"]["n_cores_missing"], by["P3"]["n_cores_missing"]) == (1, 1)
    assert not any("covers several TMA blocks" in w for w in hi["warnings"])  # one lost core
    # a slide-less map of two blocks of the same size (2 x 2) given to one of them: the
    # other block's cores, more than a lost row or column holds, are flagged as such
    two = tmp_path / "two_blocks.csv"
    two.write_text(tma_map.read_text() + "".join(f"{r}-{c},Q{r}{c}\n" for r in "EF"
                                                 for c in (1, 2)))
    wide = analyze_slide(tma_slide.path, PANEL, tmp_path / "out", tile=768,
                         scheduler="synchronous", progress=False, write_unmixed=False,
                         outlines=False, her2_calibration=calibration, regions=cores,
                         tma_map=two).summary["cases_scored"]
    assert any("names 5 cores, without a slide, that this slide's 4 regions lack: if the "
               "map covers several TMA blocks" in w for w in wide["warnings"])
    # tumour drawn inside the cores (here the left half of A-1 only), exported with them
    # from QuPath in one file: each core is scored on its tumour cells
    a1 = next(c for c in found.cores if c["name"] == "A-1")
    x_cut, y0, y1 = (a1["center_x"] + 0.5, a1["center_y"] - a1["radius_px"] - 9,
                     a1["center_y"] + a1["radius_px"] + 10)
    x0 = a1["center_x"] - a1["radius_px"] - 9
    tumour = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[
        [x0, y0], [x_cut, y0], [x_cut, y1], [x0, y1], [x0, y0]]]},
              "properties": {"objectType": "annotation", "classification": {"name": "Tumor"}}}
    both = tmp_path / "cores+tumour.geojson"
    both.write_text(json.dumps({"type": "FeatureCollection",
                                "features": found.to_geojson()["features"] + [tumour]}))
    kw = dict(tile=768, scheduler="synchronous", progress=False, write_unmixed=False,
              outlines=False, her2_calibration=calibration)
    tum = analyze_slide(tma_slide.path, PANEL, tmp_path / "out", regions=both, **kw)
    rows = {r["region"]: r for r in tum.summary["regions_scored"]["regions"]}
    left = cells[(cells["region"] == "A-1") & (cells["centroid_x"] + 0.5 < x_cut)]
    assert 0.3 * core["A-1"]["n_cells"] < rows["A-1"]["n_scored"] == len(left)
    assert rows["A-1"]["n_cells"] == core["A-1"]["n_cells"]  # the core's cells, all of them
    assert (rows["A-2"]["status"], rows["A-2"]["message"]) == (
        "no cells", "none of its cells in the tumour annotations; no scored cells")
    assert tum.cells()["in_tumour"].sum() == len(left)
    assert tum.summary["scored_cells"]["cells"].endswith("and in the tumour annotations")
    # the report's gallery: every core cut from the unmixed image, the lost one an empty frame
    from qdmed.imaging._report import core_gallery_figure

    with_img = analyze_slide(tma_slide.path, PANEL, tmp_path / "out", regions=cores,
                             **{**kw, "write_unmixed": True})
    fig = core_gallery_figure(with_img, with_img.summary["regions_scored"]["regions"])
    titles = [a.get_title() for a in fig.axes if a.get_title()]
    assert titles == ["A-1 3+", "A-2 1+", "B-1 0", "B-2 missing"]
    assert [len(a.images) for a in fig.axes[:4]] == [1, 1, 1, 0]
    assert len(fig.axes) == 4 and fig.axes[2].get_position().y0 < fig.axes[0].get_position().y0
    # laid out as the array: 2 x 2
    # one window size, centred on each core (the core's bright middle at the centre)
    arrays = [a.images[0].get_array() for a in fig.axes[:3]]
    assert len({a.shape for a in arrays}) == 1
    for a in arrays:
        n = a.shape[0]
        mid = a[n // 4:3 * n // 4, n // 4:3 * n // 4].mean()
        assert mid > 2 * a[:n // 10, :n // 10].mean()  # tissue in the middle, glass corner
    # the same from two files (--tumour-regions)
    (tmp_path / "t.geojson").write_text(json.dumps([tumour]))
    sep = analyze_slide(tma_slide.path, PANEL, tmp_path / "out", regions=cores,
                        tumour_regions=tmp_path / "t.geojson", **kw)
    assert sep.summary["regions_scored"]["regions"] == tum.summary["regions_scored"]["regions"]
    with pytest.raises(InputError, match="give the regions too"):
        analyze_slide(tma_slide.path, PANEL, tmp_path / "x", tumour_regions=cores)
    with pytest.raises(InputError, match="give the tumour in one place"):
        analyze_slide(tma_slide.path, PANEL, tmp_path / "x", regions=both,
                      tumour_regions=tmp_path / "t.geojson")
    with pytest.raises(InputError, match="case_rule 'highest' needs a TMA map"):
        analyze_slide(tma_slide.path, PANEL, tmp_path / "x", regions=cores,
                      case_rule="highest")
    for r in res.summary["regions_scored"]["regions"][:3]:  # per-core area, density, QC
        # the dearrayer's circle reaches the farthest tissue pixel: >= the 300 um core
        assert math.pi * 0.15 ** 2 <= r["area_mm2"] <= math.pi * 0.165 ** 2
        assert r["cells_per_mm2"] == pytest.approx(r["n_cells"] / r["area_mm2"])
        assert r["percent_cells_out_of_focus"] == 0.0 and r["percent_cells_saturated"] == 0.0
    truth = {c["name"]: c for c in tma_slide.params["tma"]["cores"]}
    for r in res.summary["regions_scored"]["regions"]:  # the cores' centres, in um
        t = truth[r["region"]]  # a lost core sits where the fitted grid puts it
        tol = 25.0 if r["status"] == "missing" else 3.0
        assert r["center_x_um"] == pytest.approx(t["center_x"] * 0.5, abs=tol)
        assert r["center_y_um"] == pytest.approx(t["center_y"] * 0.5, abs=tol)


def test_tiles_that_mostly_read_margins_are_warned():
    """Each tile reads its core plus the margins: a 1024^2 slide in four 512 px tiles with
    80 px margins reads 4 x 592^2 px (every tile is a corner tile), 1.337x the slide; 100 px
    tiles on a 4096^2 slide read 6.6x (a user's --tile 100 took 184 s where 2048 took 25 s)."""
    from qdmed.imaging._analyze import tiling_summary

    assert tiling_summary((1024, 1024), 512, 80)["read_factor"] == round(
        4 * 592 ** 2 / 1024 ** 2, 3)
    assert tiling_summary((512, 512), 512, 80) == {"tile_px": 512, "margin_px": 80,
                                                    "read_factor": 1.0, "warnings": []}
    small = tiling_summary((4096, 4096), 100, 80)
    assert small["read_factor"] > 6 and small["warnings"][0].startswith(
        "tiles of 100 px with a 80 px margin read 6.6x")


def test_tiles_that_mostly_read_margins_are_warned_before_the_run(tmp_path):
    """The warning comes as the run starts (a Python warning: the CLI prints it at once),
    not only in the summary written when it ends: turned into an error, it stops the run
    before anything is written."""
    import warnings

    from qdmed.errors import QdmedWarning

    f = simulate_field((256, 256), preset="MCF-7", seed=1, **KW)
    path = tmp_path / "s.ome.tif"
    write_ome_tiff(path, f.image, channel_names=list(PANEL.channel_names), pixel_size_um=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", QdmedWarning)
        with pytest.raises(QdmedWarning, match="tiles of 64 px"):
            analyze_slide(path, PANEL, tmp_path / "first", tile=64, scheduler="synchronous",
                          progress=False)
    assert not (tmp_path / "first").exists()
    with pytest.warns(QdmedWarning, match=r"tiles of 64 px with a 80 px margin read 7\.6x"):
        res = analyze_slide(path, PANEL, tmp_path / "out", tile=64, scheduler="synchronous",
                            progress=False, write_unmixed=False, outlines=False)
    assert res.summary["tiling"]["warnings"][0].startswith("tiles of 64 px")


def test_analyze_field_takes_abundances_unmixed_already():
    """The reference region's abundances are passed on rather than unmixed twice; given
    abundances give the same table, and are refused with the residual map (which needs the
    unmixing) or in another shape."""
    from qdmed.imaging import AnalysisSettings, simulate_field, unmix_image

    f = simulate_field((128, 128), preset="BT474", seed=5, **KW)
    s = AnalysisSettings(pixel_size_um=0.5)
    ab = unmix_image(f.image, PANEL)
    a = analyze_field(f.image, PANEL, s, residual=False)
    b = analyze_field(f.image, PANEL, s, residual=False, abundances=ab)
    pd.testing.assert_frame_equal(a.table, b.table)
    with pytest.raises(InputError, match="residual=False only"):
        analyze_field(f.image, PANEL, s, abundances=ab)
    with pytest.raises(InputError, match="abundances must be the field's unmixed image"):
        analyze_field(f.image, PANEL, s, residual=False, abundances=ab[:, :-1])


def test_tma_cores_back_from_qupath_as_annotations_are_scored_as_cores(tma_slide, tmp_path,
                                                                       calibration):
    """qdmed's cores opened in QuPath and exported again lose isMissing (QuPath writes it
    for its TMA core objects only): the TMA had been scored as one slide, its patients
    pooled, unsaid (a QuPath user's walk-through). Annotations named as a grid's cores are
    now scored one by one, and said."""
    from qdmed.imaging._tma import find_tma_cores

    found, _ = find_tma_cores(tma_slide.path)
    doc = found.to_geojson()
    for f in doc["features"]:
        f["properties"].pop("isMissing", None)
        f["properties"]["objectType"] = "annotation"
    back = tmp_path / "back.geojson"
    back.write_text(json.dumps(doc))
    res = analyze_slide(tma_slide.path, PANEL, tmp_path / "out", tile=768,
                        scheduler="synchronous", progress=False, write_unmixed=False,
                        outlines=False, her2_calibration=calibration, regions=back)
    got = {r["region"]: r["her2_category"] for r in res.summary["regions_scored"]["regions"]}
    assert (got["A-1"], got["A-2"], got["B-1"]) == ("3+", "1+", "0")
    assert any("annotations named as TMA cores" in w for w in res.warnings)
    assert res.summary["her2_heterogeneity"] is None  # no squares across patients
    plain = analyze_slide(tma_slide.path, PANEL, tmp_path / "plain", tile=768,
                          scheduler="synchronous", progress=False, write_unmixed=False,
                          outlines=False, her2_calibration=calibration, regions=back,
                          per_region=False)
    assert plain.summary["regions_scored"] is None
