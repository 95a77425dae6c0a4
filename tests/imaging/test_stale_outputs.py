"""An output folder holds one run's outputs: what a killed or earlier run left there (temporary
files of atomic writes, a report, tiles without their run manifest, a cohort table when every
slide now fails) never passes for this run's (review findings)."""

import json

import pytest

from qdmed.errors import InputError
from qdmed.imaging import analyze_cohort, analyze_slide, breast_panel_5plex, simulate_slide

PANEL = breast_panel_5plex()
KW = dict(endmembers=PANEL.endmembers, marker_names=list(PANEL.markers), photons_per_unit=300.0,
          channel_names=list(PANEL.channel_names))
RUN = dict(scheduler="synchronous", progress=False, write_unmixed=False, outlines=False)


def test_slide_folder_left_by_a_killed_or_earlier_run(tmp_path):
    s = simulate_slide(tmp_path / "s.ome.zarr", (384, 384), preset="BT474", seed=2, tile=384,
                       **KW)
    out = tmp_path / "out"
    first = analyze_slide(s.path, PANEL, out, tile=192, **RUN)
    # a killed run's temporaries, an earlier report
    (out / ".unmixed.ome.zarr.tmp-0123456789ab").mkdir()
    (out / ".unmixed.ome.zarr.tmp-0123456789ab" / "0").write_bytes(b"x" * 100)
    (out / "tiles" / ".tile_000001.parquet.abc.tmp").write_bytes(b"half")
    (out / "report.html").write_text("<html>an earlier run</html>")
    # tiles whose manifest is lost: of unknown origin, so not reused
    (out / "tiles" / "run.json").unlink()
    again = analyze_slide(s.path, PANEL, out, tile=192, **RUN)
    assert again.summary["n_tiles_resumed"] == 0
    assert again.summary["n_cells"] == first.summary["n_cells"]
    left = sorted(p.name for p in out.rglob(".*"))
    assert left == [] and not (out / "report.html").exists()
    # with its manifest, a finished run is reused whole
    assert analyze_slide(s.path, PANEL, out, tile=192, **RUN).summary["n_tiles_resumed"] == 4
    # outlines asked for re-run the tiles without them; left out again, no tile is re-run
    # (the switch re-ran every tile: it was part of the run's fingerprint)
    kw = {**RUN, "outlines": True}
    on = analyze_slide(s.path, PANEL, out, tile=192, **kw)
    assert on.summary["n_tiles_resumed"] == 0 and (out / "cells.geojson").exists()
    off = analyze_slide(s.path, PANEL, out, tile=192, **{**kw, "outlines": False})
    assert off.summary["n_tiles_resumed"] == 4 and not (out / "cells.geojson").exists()
    assert off.cells().equals(on.cells())


def test_cohort_whose_every_slide_now_fails_keeps_no_table(tmp_path):
    folder = tmp_path / "slides"
    folder.mkdir()
    simulate_slide(folder / "A.ome.zarr", (256, 256), preset="BT474", seed=1, tile=256, **KW)
    out = tmp_path / "co"
    res = analyze_cohort(folder, PANEL, out, **RUN)
    assert res["panel_warnings"] == list(PANEL.warnings)  # the panel's own, said once
    assert res["n_ok"] == 1 and (out / "cells.parquet").exists()
    assert (out / "slides" / "A" / "summary.json").exists()
    regs = tmp_path / "regions"
    regs.mkdir()  # no annotation file for A: it fails
    res = analyze_cohort(folder, PANEL, out, regions_dir=regs, **RUN)
    assert res["n_ok"] == 0 and res["cells"] is None
    assert (f"no annotation file A.geojson (or .json, .qptma; A.ome.geojson; or "
            f"A.ome.zarr.geojson) in {regs}") in json.dumps(res["slides"])
    assert not (out / "cells.parquet").exists()
    assert not (out / "slides" / "A" / "summary.json").exists()
    assert json.loads((out / "cohort.json").read_text())["n_ok"] == 0
    # slides whose names differ in case only would share a folder on macOS and Windows
    simulate_slide(folder / "a.ome.zarr", (256, 256), preset="BT474", seed=2, tile=256, **KW)
    with pytest.raises(InputError, match="share the name"):
        analyze_cohort(folder, PANEL, tmp_path / "co2", **RUN)


def test_cohort_rerun_on_another_folder_names_the_folders_left(tmp_path):
    """A cohort run into a folder an earlier run of other slides used: the earlier slides'
    folders are neither removed (they may be wanted) nor passed off as this run's: they are
    named in a warning."""
    first, second = tmp_path / "first", tmp_path / "second"
    for folder, name in ((first, "B"), (second, "A")):
        folder.mkdir()
        simulate_slide(folder / f"{name}.ome.zarr", (256, 256), preset="BT474", seed=1,
                       tile=256, **KW)
    out = tmp_path / "co"
    assert analyze_cohort(first, PANEL, out, **RUN)["output_warnings"] == []
    res = analyze_cohort(second, PANEL, out, **RUN)
    assert [r["slide"] for r in res["slides"]] == ["A.ome.zarr"]
    assert len(res["output_warnings"]) == 1 and "1 slide folder(s) an earlier run left are " \
        "not slides of this cohort (nor in its tables): B;" in res["output_warnings"][0]
    assert (out / "slides" / "B" / "summary.json").exists()


def test_cohort_rerun_with_another_file_of_a_slides_stem(tmp_path):
    """A cohort's slides converted (A.ome.zarr -> A.ome.tif) and run again into its folder:
    slides/A is the cohort's own, analysed again (a review's rerun found its summary gone
    and the slide refused as "an unfinished analysis of another slide")."""
    import shutil

    from qdmed.imaging import read_slide, write_ome_tiff

    first, second = tmp_path / "first", tmp_path / "second"
    for folder in (first, second):
        folder.mkdir()
    s = simulate_slide(first / "A.ome.zarr", (256, 256), preset="BT474", seed=1, tile=256,
                       **KW)
    src = read_slide(s.path)
    write_ome_tiff(second / "A.ome.tif", src.data, channel_names=list(src.channel_names),
                   pixel_size_um=src.pixel_size_um)
    out = tmp_path / "co"
    one = analyze_cohort(first, PANEL, out, **RUN)
    two = analyze_cohort(second, PANEL, out, **RUN)
    assert [r["status"] for r in two["slides"]] == ["ok"], two["slides"]
    assert two["slides"][0]["n_cells"] == one["slides"][0]["n_cells"]
    assert (out / "slides" / "A" / "summary.json").exists()
    # another kind of analysis in a slide's folder (a DAB one, its summary naming the slide
    # by path) is not the cohort's to clear: that slide is refused, the folder left (a
    # review's cohort removed it whole)
    dab = out / "slides" / "A"
    shutil.rmtree(dab)
    dab.mkdir()
    (dab / "summary.json").write_text(json.dumps({"slide": "/scans/A.svs"}))
    (dab / "regions.csv").write_text("region\n")
    three = analyze_cohort(second, PANEL, out, **RUN)
    assert [r["status"] for r in three["slides"]] == ["failed"]
    assert "holds the analysis of another slide (A.svs)" in three["slides"][0]["message"]
    assert (dab / "regions.csv").exists()
    analyze_cohort(second, PANEL, tmp_path / "co2", **RUN)  # a clean copy of its folder
    shutil.copytree(tmp_path / "co2" / "slides" / "A", tmp_path / "alone")
    # analysed alone into that folder, the other file is still refused (not a cohort's)
    with pytest.raises(InputError, match=r"holds the analysis of another slide \(A.ome.tif\)"):
        analyze_slide(first / "A.ome.zarr", PANEL, tmp_path / "alone", progress=False)


def test_a_run_that_fails_before_any_tile_is_done_leaves_no_folder(tmp_path, monkeypatch):
    # nothing finished to resume from: the folder the run made goes (a corrupted slide used
    # to leave tiles/run.json alone); once a tile is done, it stays for the resume
    import qdmed.imaging._analyze as an

    s = simulate_slide(tmp_path / "s.ome.zarr", (384, 384), preset="BT474", seed=2, tile=384,
                       **KW)
    run_tile, calls = an.run_tile, []

    def failing(*args):
        calls.append(1)
        if len(calls) > failing.after:
            raise OSError("the tile's bytes could not be read")
        return run_tile(*args)

    monkeypatch.setattr(an, "run_tile", failing)
    failing.after = 0
    with pytest.raises(OSError, match="could not be read"):
        analyze_slide(s.path, PANEL, tmp_path / "out", tile=192, **RUN)
    assert not (tmp_path / "out").exists()
    failing.after, calls[:] = 2, []
    with pytest.raises(OSError, match="could not be read"):
        analyze_slide(s.path, PANEL, tmp_path / "out", tile=192, **RUN)
    assert len(list((tmp_path / "out" / "tiles").glob("tile_*.parquet"))) == 2
    monkeypatch.setattr(an, "run_tile", run_tile)
    res = analyze_slide(s.path, PANEL, tmp_path / "out", tile=192, **RUN)
    assert res.summary["n_tiles_resumed"] == 2


def test_a_dab_run_that_fails_before_any_crop_is_done_leaves_no_folder(tmp_path, monkeypatch):
    from skimage.data import immunohistochemistry

    import qdmed.imaging._dab_regions as dr
    from qdmed.imaging import write_ome_tiff

    path = write_ome_tiff(tmp_path / "ihc.ome.tif", immunohistochemistry(), pixel_size_um=0.5)

    def failing(*args):
        raise OSError("the crop's bytes could not be read")

    monkeypatch.setattr(dr, "_crop_histogram", failing)
    with pytest.raises(OSError, match="could not be read"):
        dr.analyze_dab_regions(path, None, tmp_path / "d", od_cutoffs=(0.05, 0.15, 0.3),
                               tile=256, progress=False)
    assert not (tmp_path / "d").exists()


def test_a_folder_that_is_no_earlier_runs_is_left_alone(tmp_path):
    """``analyze --out .`` removed the user's own report.html (and would remove a tiles
    folder's tile_* files): a folder holding the run's output names without any file only
    such a run writes is refused, untouched (analyze, cohort, DAB slide)."""
    from qdmed.imaging._dab_regions import analyze_dab_regions

    s = simulate_slide(tmp_path / "s.ome.zarr", (256, 256), preset="BT474", seed=2, tile=256,
                       **KW)
    mine = tmp_path / "mine"
    (mine / "tiles").mkdir(parents=True)
    (mine / "report.html").write_text("my own report")
    (mine / "tiles" / "tile_01.png").write_bytes(b"my own tile")
    with pytest.raises(InputError, match=r"holds report.html, tiles, which this run replaces "
                                         r"or removes, and is not an earlier run's"):
        analyze_slide(s.path, PANEL, mine, **RUN)
    folder = tmp_path / "slides"
    folder.mkdir()
    (tmp_path / "s.ome.zarr").rename(folder / "s.ome.zarr")
    with pytest.raises(InputError, match=r"holds report.html, which .* \(it has no "
                                         r"cohort.json or slides/\*/tiles/run.json\)"):
        analyze_cohort(folder, PANEL, mine, **RUN)
    # a table of the user's named cohort.csv is no earlier run's either (it was replaced)
    own = tmp_path / "own"
    own.mkdir()
    (own / "cohort.csv").write_text("slide,her2\nmine,3+\n")
    with pytest.raises(InputError, match=r"holds cohort.csv, which"):
        analyze_cohort(folder, PANEL, own, **RUN)
    assert (own / "cohort.csv").read_text() == "slide,her2\nmine,3+\n"
    with pytest.raises(InputError, match=r"holds report.html, tiles, which"):
        analyze_dab_regions(folder / "s.ome.zarr", None, mine, od_cutoffs=(0.1, 0.2, 0.3))
    assert sorted(p.name for p in mine.rglob("*")) == ["report.html", "tile_01.png", "tiles"]
    assert (mine / "report.html").read_text() == "my own report"
    # an earlier run's folder is still rerun into, its report replaced
    out = tmp_path / "out"
    analyze_slide(folder / "s.ome.zarr", PANEL, out, **RUN)
    (out / "report.html").write_text("an earlier run's report")
    analyze_slide(folder / "s.ome.zarr", PANEL, out, **RUN)
    assert not (out / "report.html").exists()  # RUN writes no report


def test_a_killed_cohort_rerun_leaves_no_earlier_table(tmp_path, monkeypatch):
    """A cohort rerun (other settings) stopped during its slides: the earlier run's
    cohort.csv and cells.parquet had stayed, looking current (a walk-through's killed rerun
    kept the earlier calibration's tables); every table is written last and goes first."""
    import qdmed.imaging._analyze as an

    folder = tmp_path / "slides"
    folder.mkdir()
    for i, preset in enumerate(("BT474", "MCF-7")):
        simulate_slide(folder / f"s{i}.ome.zarr", (256, 256), preset=preset, seed=i, tile=256,
                       **KW)
    out = tmp_path / "co"
    analyze_cohort(folder, PANEL, out, **RUN)
    assert (out / "cohort.csv").exists() and (out / "cells.parquet").exists()
    real = an.analyze_slide

    def stopped(path, *a, **k):
        if "s1" in str(path):
            raise KeyboardInterrupt
        return real(path, *a, **k)

    monkeypatch.setattr(an, "analyze_slide", stopped)
    with pytest.raises(KeyboardInterrupt):
        analyze_cohort(folder, PANEL, out, **RUN)
    left = {p.name for p in out.iterdir()}
    assert not left & {"cohort.csv", "cohort.json", "cells.parquet", "report.html"}
    # a bad tile size is refused before any slide, and no folder is made (a walk-through's
    # --tile 10 failed every slide one by one, writing tables of failures)
    with pytest.raises(InputError, match=r"tile must be an integer >= 64 px \(--tile\), got 10"):
        analyze_cohort(folder, PANEL, tmp_path / "co10", tile=10, **RUN)
    assert not (tmp_path / "co10").exists()


def test_slides_in_subfolders_are_said(tmp_path):
    """A cohort does not enter subfolders: their slides were left out without a word (a
    walk-through), and a folder of subfolders alone read "no slides"; brightfield scans
    were listed among the accepted suffixes."""
    from qdmed.imaging._cohort import find_slides

    top = tmp_path / "cohort"
    (top / "batch1").mkdir(parents=True)
    simulate_slide(top / "batch1" / "a.ome.zarr", (128, 128), preset="BT474", seed=1,
                   tile=128, **KW)
    (top / "case1.svs").write_bytes(b"II*\x00")
    with pytest.raises(InputError, match=r"no slides in .*cohort \(accepted: [^)]*\); 1 in "
                                         r"its subfolders \(batch1/a.ome.zarr\), which a "
                                         r"cohort does not enter: give the subfolder; "
                                         r"brightfield scans \(case1.svs\) are left out"):
        find_slides(top, required=True)
    simulate_slide(top / "b.ome.zarr", (128, 128), preset="BT474", seed=2, tile=128, **KW)
    res = analyze_cohort(top, PANEL, tmp_path / "out", **RUN)
    assert res["n_slides"] == 1 and res["input_warnings"] == [
        f"1 slide(s) in subfolders of {top} are not analysed (batch1/a.ome.zarr): a cohort "
        "reads the folder's own slides; give each subfolder as a cohort"]
    # an analysis's output folder inside the cohort folder is no slide
    analyze_slide(top / "b.ome.zarr", PANEL, top / "b-analysis", progress=False,
                  outlines=False, scheduler="synchronous")
    from qdmed.imaging._cohort import slides_in_subfolders

    assert slides_in_subfolders(top) == ["batch1/a.ome.zarr"]
    # a folder the run uses otherwise (its labels, a review) is not said
    assert slides_in_subfolders(top, skip=(top / "batch1",)) == []


def test_a_lost_cluster_stops_the_cohort_without_blaming_the_slides(tmp_path, monkeypatch):
    """A walk-through killed the Dask scheduler: the slide then analysed failed with a
    multi-line cancellation and every later one "could not be read or analysed". A lost
    cluster now ends the run with one error that says so (exit 1 on the command line)."""
    import qdmed.imaging._analyze as an
    from qdmed.errors import ClusterLostError
    from qdmed.imaging._cohort import cluster_lost

    folder = tmp_path / "slides"
    folder.mkdir()
    for i in range(2):
        simulate_slide(folder / f"s{i}.ome.zarr", (128, 128), preset="BT474", seed=i,
                       tile=128, **KW)

    class ClosedClientError(Exception):  # distributed's, by its name
        pass

    def lost(*a, **k):
        raise ClosedClientError("Client is closed")

    monkeypatch.setattr(an, "analyze_slide", lost)
    with pytest.raises(ClusterLostError, match=r"the Dask cluster \(local\) was lost while "
                                               r"s0.ome.zarr was analysed"):
        analyze_cohort(folder, PANEL, tmp_path / "co", n_workers=1, progress=False,
                       write_unmixed=False, outlines=False)
    assert not (tmp_path / "co" / "cohort.csv").exists()

    class Client:
        status = "running"

    assert not cluster_lost(ValueError("bad slide"), Client())
    assert not cluster_lost(ClosedClientError("Client is closed"), None)  # no cluster
    Client.status = "closed"
    assert cluster_lost(OSError("could not read"), Client())
