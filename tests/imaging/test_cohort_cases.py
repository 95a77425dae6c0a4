"""Cases imaged as several fields (a case map, slide -> case): each case scored on the pooled
cells of its slides, as the whole tumour is scored."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from qdmed.errors import InputError
from qdmed.imaging import (
    breast_panel_5plex,
    score_her2,
    simulate_field,
    write_ome_tiff,
)
from qdmed.imaging._cohort import analyze_cohort
from qdmed.imaging._region_scores import read_case_map

PANEL = breast_panel_5plex()
KW = dict(endmembers=PANEL.endmembers, marker_names=list(PANEL.markers), photons_per_unit=300.0)


def test_fields_pooled_into_their_cases(tmp_path, control_calibration):
    cal = control_calibration(PANEL, size=512, **KW)
    # the calibration's own warnings are the cohort's: said once (a review found one in
    # every slide's row, hiding the slides' own, and some 20 times in the report)
    cal = replace(cal, warnings=(*cal.warnings, "the calibration's own warning"))
    d = tmp_path / "fields"
    d.mkdir()
    for name, preset, seed in (("P1_f1", "HER2-enriched", 1), ("P1_f2", "triple-negative", 2),
                               ("P2_f1", "luminal-A", 3), ("X_f1", "luminal-A", 4)):
        f = simulate_field((384, 384), preset=preset, seed=seed, **KW)
        write_ome_tiff(d / f"{name}.ome.tif", f.image, channel_names=list(PANEL.channel_names),
                       pixel_size_um=0.5)
    write_ome_tiff(d / "P4_f1.ome.tif", np.zeros((256, 256, 8), np.uint16),  # no tissue
                   channel_names=list(PANEL.channel_names), pixel_size_um=0.5)
    cmap = tmp_path / "cases.csv"
    # (p2_F1: the slide's name but for letter case, matched as the folder's names are: a
    # walk-through's had been said as a slide not among those analysed)
    cmap.write_text("slide,case\nP1_f1.ome.tif,P1\nfields/P1_f2,P1\np2_F1,P2\nP3_f1,P3\n"
                    "P4_f1,P4\n")
    assert read_case_map(cmap) == {"P1_f1": "P1", "P1_f2": "P1", "p2_F1": "P2", "P3_f1": "P3",
                                   "P4_f1": "P4"}
    res = analyze_cohort(d, PANEL, tmp_path / "co", her2_calibration=cal, case_map=cmap,
                         progress=False, scheduler="synchronous", outlines=False,
                         write_unmixed=False,
                         region_min_cells=50)
    cases = pd.read_csv(tmp_path / "co" / "cases.csv", dtype={"her2_category": str},
                        keep_default_na=False).set_index("case")
    cells = pd.read_parquet(tmp_path / "co" / "cells.parquet")
    p1 = cells[cells["case"] == "P1"]
    assert set(p1["slide"]) == {"P1_f1.ome.tif", "P1_f2.ome.tif"}
    # a case is scored as one slide of its fields' cells (each field weighs by its cells)
    assert cases.loc["P1", "cores"] == "P1_f1.ome.tif;P1_f2.ome.tif"
    assert cases.loc["P1", "n_scored"] == len(p1)
    assert cases.loc["P1", "her2_category"] == score_her2(p1, cal, nan_policy="omit").category
    assert cases.loc["P2", "n_scored"] == (cells["slide"] == "P2_f1.ome.tif").sum()
    # a mapped slide missing from the folder: its case has a row saying so
    assert cases.loc["P3", "status"] == "no cells"
    assert "slide P3_f1 not among the slides analysed" in cases.loc["P3", "message"]
    # a mapped slide without cells: its case has no cells, the slide its case
    assert cases.loc["P4", "status"] == "no cells"
    p4 = next(r for r in res["slides"] if r["slide"] == "P4_f1.ome.tif")
    assert p4["n_cells"] == 0 and "no case" not in p4["message"]
    # and its row says so (a review's empty section read "ok"): not a failure
    assert p4["status"] == "no cells" and p4["message"].startswith("no cells found")
    assert (res["n_ok"], res["n_no_cells"], res["n_failed"]) == (4, 1, 0)
    assert "slide P4_f1.ome.tif has no cells" in cases.loc["P4", "message"]
    # a slide without a case: noted on its row, left out of the cases
    x = next(r for r in res["slides"] if r["slide"] == "X_f1.ome.tif")
    assert "no case in the case map" in x["message"]
    assert any("1 slide(s) have no case (X_f1.ome.tif)" in w for w in res["case_warnings"])
    assert res["parameters"]["case_map"] == str(cmap)
    assert "Cases (case map)" in (tmp_path / "co" / "report.html").read_text()
    assert res["calibration_warnings"] == list(cal.warnings)
    assert not any("the calibration's own warning" in r["message"] for r in res["slides"])
    # as a warning once (and in the parameters' record of the calibration)
    assert (tmp_path / "co" / "report.html").read_text().count(
        "Warning: the calibration&#x27;s own warning") == 1
    # the cases from the slides' names instead (as inForm names fields: <case>_[x,y]_...);
    # the same output folder: the slides' finished tiles are reused
    named = analyze_cohort(d, PANEL, tmp_path / "co", her2_calibration=cal,
                           case_from_name=r"^(P\d+)_f", progress=False,
                           scheduler="synchronous", outlines=False, write_unmixed=False,
                           region_min_cells=50)
    by_name = pd.read_csv(tmp_path / "co" / "cases.csv", dtype={"her2_category": str},
                          keep_default_na=False).set_index("case")
    assert list(by_name.index) == ["P1", "P2", "P4"]  # no P3: no such slide to name it
    assert by_name.loc["P1"].to_dict() == cases.loc["P1"].to_dict()
    x = next(r for r in named["slides"] if r["slide"] == "X_f1.ome.tif")
    assert "its name gives no case" in x["message"]
    assert named["parameters"]["case_map"] == r"names: ^(P\d+)_f"
    with pytest.raises(InputError, match="not a regular expression"):
        analyze_cohort(d, PANEL, tmp_path / "x", case_from_name="(")
    with pytest.raises(InputError, match="finds a case in no slide name"):
        analyze_cohort(d, PANEL, tmp_path / "x", case_from_name="^Z")
    with pytest.raises(InputError, match="case map or case_from_name"):
        analyze_cohort(d, PANEL, tmp_path / "x", case_map=cmap, case_from_name="^(P1)")
    with pytest.raises(InputError, match="not both"):
        analyze_cohort(d, PANEL, tmp_path / "x", case_map=cmap, tma_map={(None, "A-1"): "P1"})
    with pytest.raises(InputError, match="pools each case's slides"):
        analyze_cohort(d, PANEL, tmp_path / "x", case_map=cmap, case_rule="highest")
    with pytest.raises(InputError, match="must be one of pooled, highest; got 'bogus'"):
        analyze_cohort(d, PANEL, tmp_path / "x", case_map=cmap, case_rule="bogus")
    for mapping, msg in (({"A_f1.ome.tif": "A", "A_f1": "B"}, "given two cases"),
                         ({"B": None}, "entry 'B': slide and case must be non-empty text")):
        with pytest.raises(InputError, match=msg):
            analyze_cohort(d, PANEL, tmp_path / "x", case_map=mapping)
    bad = tmp_path / "bad.csv"
    bad.write_text("slide,case\nP1_f1,P1\n\nP1_f1.ome.tif,P2\n")  # the file's line, blank
    with pytest.raises(InputError, match="line 4: slide 'P1_f1.ome.tif' is given two cases"):
        analyze_cohort(d, PANEL, tmp_path / "x", case_map=bad)


def test_a_tma_map_without_slides_on_several_blocks_is_warned(tmp_path):
    """Two TMA blocks with cores of the same names and a map without a slide column: both
    blocks' A-1 were pooled into one case, and cores without a case were left out, unsaid
    on the cohort's warnings (a review)."""
    import json

    d, regs = tmp_path / "tmas", tmp_path / "cores"
    d.mkdir()
    regs.mkdir()

    def core(name, x0):
        ring = [[x0, 10], [x0 + 100, 10], [x0 + 100, 110], [x0, 110], [x0, 10]]
        return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {"objectType": "tmacore", "name": name, "isMissing": False}}

    for stem, seed in (("tma1", 1), ("tma2", 2)):
        f = simulate_field((128, 256), preset="luminal-A", seed=seed, **KW)
        write_ome_tiff(d / f"{stem}.ome.tif", f.image,
                       channel_names=list(PANEL.channel_names), pixel_size_um=0.5)
        (regs / f"{stem}.geojson").write_text(json.dumps(
            {"type": "FeatureCollection", "features": [core("A-1", 10), core("A-2", 130)]}))
    res = analyze_cohort(d, PANEL, tmp_path / "co", regions_dir=regs,
                         tma_map={(None, "A-1"): "P1"}, region_min_cells=5, progress=False,
                         scheduler="synchronous", outlines=False, write_unmixed=False)
    w = res["case_warnings"]
    assert any(x.startswith("1 core name(s) of the TMA map, given without a slide, are on "
                            "several slides (e.g. A-1 on tma1.ome.tif, tma2.ome.tif)")
               for x in w), w
    assert any(x.startswith("2 core(s) have no case in the TMA map (e.g. tma1.ome.tif:A-2, "
                            "tma2.ome.tif:A-2)") for x in w), w
    # a map giving each block's core its slide says neither
    res = analyze_cohort(d, PANEL, tmp_path / "co", regions_dir=regs,
                         tma_map={("tma1", "A-1"): "P1", ("tma1", "A-2"): "P2",
                                  ("tma2", "A-1"): "P3", ("tma2", "A-2"): "P4"},
                         region_min_cells=5, progress=False, scheduler="synchronous",
                         outlines=False, write_unmixed=False)
    assert res["case_warnings"] == []


def test_a_slide_failing_in_an_unforeseen_way_does_not_end_the_cohort(tmp_path, monkeypatch):
    """A review: one slide whose reading raised something other than qdmed's own errors (a
    ZeroDivisionError of a malformed Zarr, a PermissionError inside a Zarr folder) ended the
    cohort with no table. It is now that slide's failure, said by what was raised."""
    import qdmed.imaging._analyze as an

    d = tmp_path / "slides"
    d.mkdir()
    for stem in ("a", "b"):
        f = simulate_field((128, 128), preset="luminal-A", seed=1, **KW)
        write_ome_tiff(d / f"{stem}.ome.tif", f.image, channel_names=list(PANEL.channel_names),
                       pixel_size_um=0.5)
    real = an.analyze_slide

    def flaky(path, *a, **k):
        if str(path).endswith("b.ome.tif"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(an, "analyze_slide", flaky)
    res = analyze_cohort(d, PANEL, tmp_path / "co", progress=False, scheduler="synchronous",
                         outlines=False, write_unmixed=False)
    rows = {r["slide"]: r for r in res["slides"]}
    assert rows["a.ome.tif"]["status"] == "ok" and rows["b.ome.tif"]["status"] == "failed"
    assert rows["b.ome.tif"]["message"].startswith(
        "could not be read or analysed (PermissionError: [Errno 13] Permission denied")
    assert (tmp_path / "co" / "cohort.csv").exists()
