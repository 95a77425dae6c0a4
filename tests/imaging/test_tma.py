"""Tissue microarrays: layout and names (QuPath's default "A-1"), the dearrayer on synthetic
TMAs with known cores (rotated grids, lost cores), and bad input."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from qdmed.errors import FileFormatError, InputError
from qdmed.imaging import breast_panel_5plex, core_name, cores_geojson, find_tma_cores
from qdmed.imaging._regions import read_regions
from qdmed.imaging._tma import grid_angle, simulate_tma, tma_layout

PANEL = breast_panel_5plex()
KW = dict(endmembers=PANEL.endmembers, marker_names=list(PANEL.markers), photons_per_unit=300.0,
          channel_names=list(PANEL.channel_names))


def test_core_names_follow_qupaths_default_labels():
    # QuPath TMADearrayerPluginIJ: row labels A-J, column labels 1-16, row first, "-"
    assert core_name(0, 0) == "A-1" and core_name(1, 15) == "B-16"
    assert core_name(25, 0) == "Z-1" and core_name(26, 2) == "AA-3"


def test_layout_and_its_bad_input():
    shape, cores = tma_layout(2, 3, core_diameter_um=600, position_jitter_um=0,
                              pixel_size_um=0.5, missing=["B-2"])
    assert [c["name"] for c in cores] == ["A-1", "A-2", "A-3", "B-1", "B-2", "B-3"]
    assert [c["missing"] for c in cores] == [False] * 4 + [True, False]
    # default spacing diameter + 200 um = 1600 px; margin half of it (800 px) of glass
    # between the slide's edge and the cores' (radius 600 px)
    assert cores[1]["center_x"] - cores[0]["center_x"] == pytest.approx(1600)
    assert cores[0]["center_x"] == pytest.approx(800 + 600 - 0.5)
    assert shape == (2 * 1400 + 1600, 2 * 1400 + 2 * 1600)
    with pytest.raises(InputError, match="not in the 2 x 3 grid"):
        tma_layout(2, 3, missing=["C-1"])
    with pytest.raises(InputError, match="at least 20 um of glass"):
        tma_layout(2, 2, core_diameter_um=600, spacing_um=610)
    with pytest.raises(InputError, match="rows must be an integer"):
        tma_layout(0, 2)
    with pytest.raises(InputError, match="rotation_deg"):
        tma_layout(2, 2, rotation_deg=60)


def test_grid_angle_of_an_exact_grid():
    rr, cc = np.divmod(np.arange(20), 5)
    for deg in (0.0, 4.0, -12.0, 30.0):
        t = math.radians(deg)
        y = cc * 100 * math.sin(t) + rr * 100 * math.cos(t)
        x = cc * 100 * math.cos(t) - rr * 100 * math.sin(t)
        assert math.degrees(grid_angle(y, x)) == pytest.approx(deg, abs=1e-9)


@pytest.mark.parametrize("rotation", [0.0, 8.0])
def test_dearrayer_on_a_rotated_grid_with_lost_cores(tmp_path, rotation):
    s = simulate_tma(tmp_path / "t.ome.zarr", rows=3, cols=4, presets=["luminal-A"],
                     core_diameter_um=150.0, spacing_um=230.0, rotation_deg=rotation,
                     missing=["A-4", "C-2"], tile=1024, seed=2, **KW)
    found, _ = find_tma_cores(s.path)
    truth = {c["name"]: c for c in s.params["tma"]["cores"]}
    assert (found.n_rows, found.n_cols, found.n_found) == (3, 4, 10)
    assert found.rotation_deg == pytest.approx(rotation, abs=1.5)
    for c in found.cores:
        t = truth[c["name"]]
        assert c["missing"] == t["missing"]
        # found cores to 6 px (3 um); lost ones at the fitted grid's place, which cannot
        # know the 15 um the arrayer's jitter moved them (30 px)
        tol = 50.0 if c["missing"] else 6.0
        assert math.hypot(c["center_x"] - t["center_x"], c["center_y"] - t["center_y"]) < tol
    assert not found.warnings


def test_cores_geojson_reads_back_as_tma_cores(tmp_path):
    doc = cores_geojson([{"name": "A-1", "center_x": 100, "center_y": 100, "radius_px": 50},
                         {"name": "A-2", "center_x": 300, "center_y": 100, "radius_px": 50,
                          "missing": True}])
    f = doc["features"][0]
    assert f["geometry"]["isEllipse"] is True and f["properties"]["objectType"] == "annotation"
    p = tmp_path / "c.geojson"
    p.write_text(json.dumps(doc))
    reg = read_regions(p)
    assert reg.is_tma and reg.names == ("A-1",) and reg.missing == ("A-2",)
    # QuPath coordinates are pixel-index + 0.5: the centre pixel (100, 100) is inside
    assert reg.region_index([100.5, 160.0], [100.5, 100.5]).tolist() == [0, -1]
    # the 64-gon of radius 50 px: area n r^2 sin(2 pi / n) / 2 (shoelace)
    assert reg.areas["A-1"] == pytest.approx(32 * 2500 * math.sin(2 * math.pi / 64), rel=1e-4)


def test_region_areas_less_their_holes(tmp_path):
    outer = [[0, 0], [100, 0], [100, 50], [0, 50], [0, 0]]
    hole = [[10, 10], [20, 10], [20, 20], [10, 20], [10, 10]]
    p = tmp_path / "r.geojson"
    p.write_text(json.dumps([
        {"type": "Feature", "properties": {"name": "T"},
         "geometry": {"type": "Polygon", "coordinates": [outer, hole]}},
        {"type": "Feature", "properties": {"name": "T"},  # a second piece of the region
         "geometry": {"type": "Polygon", "coordinates": [hole[::-1]]}}]))
    assert read_regions(p).areas == {"T": 100 * 50 - 10 * 10 + 10 * 10}


def test_dearrayer_bad_input(tmp_path):
    with pytest.raises(InputError, match="min_area_fraction"):
        find_tma_cores(tmp_path / "x.ome.zarr", min_area_fraction=2)
    with pytest.raises(InputError, match="core_diameter_um"):
        find_tma_cores(tmp_path / "x.ome.zarr", core_diameter_um=-1)
    with pytest.raises(InputError, match=r"from 60 to 20000 um \(cores are punched"):
        find_tma_cores(tmp_path / "x.ome.zarr", core_diameter_um=0.001)  # a review: a grid
    s = simulate_tma(tmp_path / "glass.ome.zarr", rows=1, cols=2, presets=["luminal-A"],
                     core_diameter_um=100.0, missing=["A-1", "A-2"], tile=512, **KW)
    with pytest.raises(InputError, match="no cores found to dearray.*glass alone"):
        find_tma_cores(s.path)
    # a whole section (tissue everywhere) is not a TMA: said so, not "no tissue"
    from qdmed.imaging import simulate_slide

    whole = simulate_slide(tmp_path / "section.ome.zarr", (512, 512), preset="luminal-A",
                           seed=2, tile=512, **KW)
    with pytest.raises(InputError, match="no cores found to dearray.*tissue everywhere, as "
                                         "in a whole section rather than a TMA"):
        find_tma_cores(whole.path)
    # a simulated whole slide is OME-Zarr: a TIFF name is refused, not made a folder
    with pytest.raises(InputError, match="written as OME-Zarr.*ending in .zarr"):
        simulate_slide(tmp_path / "section.ome.tif", (256, 256), preset="luminal-A", **KW)
    with pytest.raises(InputError, match="slide or TMA is written as OME-Zarr"):
        simulate_tma(tmp_path / "tma.ome.tiff", rows=1, cols=1, presets=["luminal-A"], **KW)
    assert not (tmp_path / "section.ome.tif").exists()
    assert not (tmp_path / "tma.ome.tiff").exists()


@pytest.mark.parametrize(("rows", "cols", "missing", "rotation"), [
    (3, 3, ["B-1", "B-2", "B-3"], 0.0),  # a whole row lost inside the grid
    (1, 4, ["A-2"], 20.0),               # a column lost, grid turned
    (1, 2, [], 30.0),                    # two cores: their direction is the grid's
])
def test_dearrayer_keeps_names_across_lost_rows_and_columns(tmp_path, rows, cols, missing,
                                                            rotation):
    s = simulate_tma(tmp_path / "g.ome.zarr", rows=rows, cols=cols, presets=["luminal-A"],
                     core_diameter_um=80.0, spacing_um=130.0, rotation_deg=rotation,
                     missing=missing, tile=512, seed=1, **KW)
    found, _ = find_tma_cores(s.path)
    truth = {c["name"]: c for c in s.params["tma"]["cores"]}
    assert (found.n_rows, found.n_cols) == (rows, cols)
    assert [c["name"] for c in found.cores if c["missing"]] == missing
    for c in found.cores:
        t = truth[c["name"]]
        tol = 40.0 if c["missing"] else 6.0
        assert math.hypot(c["center_x"] - t["center_x"], c["center_y"] - t["center_y"]) < tol
    assert bool(found.warnings) == bool(missing)  # an empty line inside the grid is said


def test_region_names_duplicates_and_order(tmp_path):
    from qdmed.imaging._region_scores import score_regions

    sq = [[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]

    def feat(props):
        return {"type": "Feature", "properties": props,
                "geometry": {"type": "Polygon", "coordinates": [sq]}}

    p = tmp_path / "r.geojson"
    p.write_text(json.dumps([feat({"name": "region 2"}), feat({}), feat({"name": "T"}),
                             feat({"name": "T"})]))
    reg = read_regions(p)  # same-named annotations are one region; auto names stay unique
    assert reg.names == ("region 2", "region 2'", "T") and not reg.is_tma
    p.write_text(json.dumps([feat({"name": "A-1", "isMissing": False}),
                             feat({"name": "A-1", "isMissing": True})]))
    with pytest.raises(InputError, match="'A-1' is used by features 0 and 1"):
        read_regions(p)
    p.write_text(json.dumps([feat({"name": "A-1", "isMissing": True})]))
    with pytest.raises(InputError, match="marked missing"):
        read_regions(p)
    # rows in file (grid) order, missing cores in their place
    p.write_text(json.dumps([feat({"name": "A-1", "isMissing": False}),
                             feat({"name": "A-2", "isMissing": True}),
                             feat({"name": "B-1", "isMissing": False})]))
    reg = read_regions(p)
    assert reg.order == ("A-1", "A-2", "B-1")
    cells = pd.DataFrame({"region": ["A-1"] * 3 + ["B-1"] * 2})
    rows = score_regions(cells, cells, reg.names, reg.missing, order=reg.order, min_cells=3)
    assert [(r["region"], r["status"]) for r in rows] == [
        ("A-1", "ok"), ("A-2", "missing"), ("B-1", "too few cells")]


def test_tma_map_reading_and_its_errors(tmp_path):
    from qdmed.imaging._region_scores import case_column, read_tma_map

    p = tmp_path / "map.csv"
    p.write_text("slide,core,case\nblock1.ome.zarr,A-1,P1\n,A-2,P2\nblock2,A-1,P9\n")
    m = read_tma_map(p)
    assert m == {("block1", "A-1"): "P1", (None, "A-2"): "P2", ("block2", "A-1"): "P9"}
    # a slide's own rows first, then rows for every slide; unmapped cores get None
    assert case_column(["A-1", "A-2", "A-3"], "block1.ome.zarr", m) == ["P1", "P2", None]
    assert case_column(["A-1"], "block2.ome.tif", m) == ["P9"]
    # rows longer than the header, or a repeated column, are refused (pandas would take
    # the first column for an index, and read case names as cores)
    for text, error, match in (
            ("core,patient\nA-1,P1\n", InputError, "no column 'case'"),
            ("core,case\nA-1,P1\nA-1,P2\n", InputError, "line 3: core 'A-1' is given two"),
            ("core,case\nA-1,\n", InputError, "line 2: empty core or case"),
            ("core,case\n", InputError, "no rows"),
            ("core,case\nA-1,P1,block1\n", FileFormatError, "line 2: 3 fields for the 2 "),
            ("core,case,case\nA-1,P1,P2\n", FileFormatError, "appear more than once"),
            # a GeoJSON given for the map: named as such, not its 50 "columns" listed
            ('{"type": "FeatureCollection", "features": []}\n', FileFormatError,
             "it reads as JSON"),
            (",".join(f"c{i}" for i in range(50)) + "\n1\n", InputError,
             r"no column 'core'; columns: \['c0', .*'c7', \.\.\. \(50 columns\)\]")):
        p.write_text(text)
        with pytest.raises(error, match=match):
            read_tma_map(p)
    # a slide given by path, with a trailing slash (shell completion of a zarr folder)
    p.write_text("slide,core,case\ntmas/block1.ome.zarr/,A-1,P1\n")
    assert read_tma_map(p) == {("block1", "A-1"): "P1"}
    with pytest.raises(InputError, match="cannot read TMA map"):
        read_tma_map(tmp_path / "none.csv")


def test_cases_pool_their_cores_cells():
    from qdmed.imaging._region_scores import score_cases

    rng = np.random.default_rng(0)
    cells = pd.DataFrame({"region": ["A-1"] * 150 + ["B-1"] * 60 + ["A-2"] * 50,
                          "case": ["P1"] * 210 + [None] * 50,
                          "x": rng.random(260)})
    rows = score_cases(cells, min_cells=100)
    assert rows == [{"case": "P1", "status": "ok", "n_cores": 2, "cores": "A-1;B-1",
                     "n_scored": 210, "her2_category": None, "message": ""}]
    cells["slide"] = ["s1"] * 150 + ["s2"] * 110  # cores of one case on two blocks
    rows = score_cases(cells, min_cells=300)
    assert rows[0]["cores"] == "s1:A-1;s2:B-1" and rows[0]["status"] == "too few cells"
    # a mapped case with nothing to score (its cores lost) keeps its row
    rows = score_cases(cells, {"P1": ["s1:A-1", "s2:B-1"], "P7": ["s1:C-3"]}, min_cells=100,
                       notes={"P7": ["core C-4 on failed slide s3"]})
    assert [(r["case"], r["status"], r["n_cores"]) for r in rows] == [
        ("P1", "ok", 2), ("P7", "no cells", 1)]
    assert rows[1]["message"].endswith("; core C-4 on failed slide s3")
    # with the cores' rows: a core lost from the section (status missing) and a mapped core
    # no regions file holds both count as missing (the second was counted 0 beside its note)
    regions = [{"slide": "s1", "region": "A-1", "case": "P1", "status": "ok"},
               {"slide": "s2", "region": "B-1", "case": "P1", "status": "missing"}]
    rows = score_cases(cells, {"P1": ["s1:A-1", "s2:B-1"], "P7": ["s1:C-3"]}, min_cells=100,
                       notes={"P7": ["core s1:C-3 not in the regions file"]},
                       region_rows=regions)
    assert [(r["case"], r["n_cores"], r["n_cores_missing"]) for r in rows] == [
        ("P1", 2, 1), ("P7", 1, 1)]
    assert rows[0]["message"] == "1 of 2 cores missing (s2:B-1 lost from the section)"
    assert rows[1]["message"] == ("no scored cells; 1 of 1 cores missing; core s1:C-3 not in "
                                  "the regions file")


def test_labels_in_qupaths_notation():
    # QuPath PathObjectTools.parseTMALabelString: number ranges (zero padding kept, counting
    # down allowed), single-letter ranges, or labels separated by spaces
    from qdmed.imaging import tma_labels

    assert tma_labels("A-E") == ("A", "B", "C", "D", "E")
    assert tma_labels("1-3") == ("1", "2", "3")
    assert tma_labels("08-10") == ("08", "09", "10")
    assert tma_labels("12-10") == ("12", "11", "10")
    assert tma_labels("C-A") == ("C", "B", "A")
    assert tma_labels("A B D") == ("A", "B", "D")
    assert tma_labels("A,B D") == ("A,B", "D")  # spaces separate labels, not commas
    assert tma_labels(["A-C", "D"]) == ("A-C", "D")  # a list is the labels themselves
    for bad, match in [("A1-B2", "a range is of numbers"), ("a-C", "one case"),
                       ("A-C,E", "a range is of numbers"), ("\u00b2-\u00b3", "a range"),
                       ("", "none given"), ("A B A", "'A' is given twice"),
                       (7, "must be a string"), (b"A-C", "must be a string"),
                       ("1-100000000", "100000000 labels; a TMA has at most 1000")]:
        with pytest.raises(InputError, match=match):
            tma_labels(bad)


def test_labels_name_the_cores_and_a_lost_edge_row_is_refused(tmp_path):
    # the first row lost entirely: the slide alone shows a 2 x 3 grid (names shifted to A,
    # B); the array's labels say a row is missing and which labels to give
    s = simulate_tma(tmp_path / "e.ome.zarr", rows=3, cols=3, presets=["luminal-A"],
                     core_diameter_um=80.0, spacing_um=130.0, missing=["A-1", "A-2", "A-3"],
                     tile=512, seed=3, **KW)
    truth = {c["name"]: c for c in s.params["tma"]["cores"]}
    found, _ = find_tma_cores(s.path)
    assert [c["name"] for c in found.cores][:3] == ["A-1", "A-2", "A-3"]  # shifted
    with pytest.raises(InputError, match="give the labels of the rows present, 'B-C' or "
                                         "'A-B'"):
        find_tma_cores(s.path, row_labels="A-C")
    with pytest.raises(InputError, match=r"3 column\(s\) of cores found, but 4 column"):
        find_tma_cores(s.path, row_labels="B-C", col_labels="1-4")
    found, _ = find_tma_cores(s.path, row_labels="B-C")
    for c in found.cores:
        t = truth[c["name"]]
        assert math.hypot(c["center_x"] - t["center_x"], c["center_y"] - t["center_y"]) < 6
    found, _ = find_tma_cores(s.path, row_labels="B C", col_labels="01-03", row_first=False)
    assert [c["name"] for c in found.cores] == ["01-B", "02-B", "03-B", "01-C", "02-C",
                                                "03-C"]
    with pytest.raises(InputError, match="row_first"):
        find_tma_cores(s.path, row_first="yes")


def test_case_rules_pooled_and_highest_core():
    # Allott EH et al., Cancer Epidemiol Biomarkers Prev 25, 470 (2016): "weighted" (cells
    # pooled) and "any positive" (a case is as high as its highest core) collapsing
    from qdmed.imaging._region_scores import score_cases

    def core(name, case, status, n, cat=None, mem=None, er=None, er_status=None,
             ultralow=False):
        r = {"region": name, "case": case, "status": status, "n_scored": n,
             "her2_category": cat, "message": ""}
        if status == "ok":  # the labels ReceptorStatus gives
            r.update(her2_mean_membrane=mem, her2_ultralow=ultralow, ER_percent_positive=er,
                     ER_status=er_status or ("positive" if er > 10 else "low positive"))
        return r

    rows = [core("A-1", "P1", "ok", 150, "1+", 2.0, 60.0),
            core("B-1", "P1", "ok", 120, "2+", 1.0, 5.0),
            core("C-1", "P1", "too few cells", 20),
            core("A-2", "P2", "ok", 200, "1+", 1.0, 0.5),
            core("B-2", "P2", "ok", 200, "1+", 3.0, 2.0),
            core("A-3", "P3", "too few cells", 30),
            core("B-3", "P4", "missing", 0),
            # within 0, ultralow outranks null whatever the mean; a core too small for an
            # ER status does not give the case its percentage
            core("A-4", "P5", "ok", 400, "0", 5.0, 12.0),
            core("B-4", "P5", "ok", 60, "0", 2.0, 30.0, er_status="insufficient cells",
                 ultralow=True),
            core("C-4", "P5", "ok", 300, "0", float("nan"), float("nan"))]
    cells = pd.DataFrame({"case": np.repeat([r["case"] for r in rows],
                                            [r["n_scored"] for r in rows]),
                          "region": np.repeat([r["region"] for r in rows],
                                              [r["n_scored"] for r in rows])})
    expected = {"P1": ["A-1", "B-1", "C-1"], "P2": ["A-2", "B-2"], "P3": ["A-3"],
                "P4": ["B-3"], "P5": ["A-4", "B-4", "C-4"]}
    got = {r["case"]: r for r in score_cases(cells, expected, rule="highest",
                                             region_rows=rows)}
    p1 = got["P1"]  # HER2 from the 2+ core, ER from the most positive core
    assert (p1["her2_category"], p1["her2_core"], p1["her2_mean_membrane"]) == ("2+", "B-1",
                                                                                1.0)
    assert (p1["ER_percent_positive"], p1["ER_status"]) == (60.0, "positive")
    assert p1["ER_core"] == "A-1"  # named, as her2_core: n_scored counts all the cores
    # the case's subtype from its own parts: HER2 2+ from B-1, ER positive from A-1 (Howlader
    # et al. 2014 groups; ASCO/CAP 2018: 2+ equivocal; no PR: ER positive decides HR)
    assert p1["subtype"] == "HR+/HER2 equivocal"
    assert (p1["n_cores"], p1["n_cores_scored"], p1["n_scored"]) == (3, 2, 290)
    assert got["P2"]["her2_core"] == "B-2"  # same category: the stronger membrane signal
    assert (got["P3"]["status"], got["P4"]["status"]) == ("too few cells", "no cells")
    assert "no core has the 100 scored cells" in got["P3"]["message"]
    assert (p1["her2_core_categories"], p1["her2_cores_discordant"]) == ("A-1:1+;B-1:2+",
                                                                          True)
    assert got["P2"]["her2_cores_discordant"] is False and "her2_cores_discordant" not in \
        got["P3"]
    pooled = {r["case"]: r for r in score_cases(cells, expected, region_rows=rows)}
    assert pooled["P1"]["her2_core_categories"] == "A-1:1+;B-1:2+"
    p5 = got["P5"]
    assert (p5["her2_core"], p5["her2_ultralow"]) == ("B-4", True)
    assert (p5["ER_percent_positive"], p5["ER_status"]) == (12.0, "positive")
    assert [r["case"] for r in score_cases(cells.iloc[:0], {"P10": ["X"], "P2": ["Y"]})] == [
        "P2", "P10"]  # cases in natural order
    with pytest.raises(InputError, match="needs the cores' own scores"):
        score_cases(cells, expected, rule="highest")
    with pytest.raises(InputError, match=r"case_rule \(--case-rule\) must be one of pooled, highest"):
        score_cases(cells, expected, rule="max")


def test_map_cores_in_no_regions_file_keep_their_cases():
    from qdmed.imaging._region_scores import cores_not_in_regions

    tma_map = {("b1", "A-1"): "P1", ("b1", "A-2"): "P2", ("b2", "A-1"): "P3",
               ("bX", "A-1"): "P4", (None, "Z-9"): "P5", (None, "A-2"): "P2"}
    held = {"b1": {"A-1"}, "b2": {"A-1", "A-2"}}
    cores, notes = cores_not_in_regions(tma_map, held, {"b1": "b1.ome.zarr",
                                                        "b2": "b2.ome.zarr"})
    # b1 lacks A-2; Z-9 is on no slide; bX was not analysed (the caller's to report);
    # a slide-less A-2 is held by b2
    assert cores == {"P2": ["b1.ome.zarr:A-2"], "P5": ["Z-9"]}
    assert notes["P5"] == ["core Z-9 not in the regions file"]
    # with a slide that failed, a slide-less core may be on it: said so
    _, notes = cores_not_in_regions(tma_map, held, {"b1": "b1.ome.zarr", "b2": "b2.ome.zarr"},
                                    failed=("b9.ome.zarr",))
    assert notes["P5"] == ["core Z-9 in no regions file of the slides analysed (it may be on "
                           "failed slide b9.ome.zarr)"]
    assert notes["P2"] == ["core b1.ome.zarr:A-2 not in the regions file"]


def test_qupath_tma_grid_file_round_trip_and_errors(tmp_path):
    # QuPath's .qptma (qupath-gui-fx TMADataIO): image path and name, a blank line, the grid
    # size, then a tab-separated table of bounding boxes (X, Y top-left), Present
    from qdmed.errors import FileFormatError
    from qdmed.imaging._tma import cores_qptma

    cores = [{"name": "A-1", "center_x": 99.5, "center_y": 99.5, "radius_px": 50},
             {"name": "A-2", "center_x": 299.5, "center_y": 99.5, "radius_px": 50,
              "missing": True}]
    text = cores_qptma(cores, 1, 2, image_path="/data/t.ome.tif", image_name="t.ome.tif")
    lines = text.splitlines()
    assert lines[:6] == ["/data/t.ome.tif", "t.ome.tif", "", "TMA grid width: 2",
                         "TMA grid height: 1", "Core name\tX\tY\tWidth\tHeight\tPresent"]
    assert lines[6:] == ["A-1\t50.00\t50.00\t100.00\t100.00\ttrue",
                         "A-2\t250.00\t50.00\t100.00\t100.00\tfalse"]
    p = tmp_path / "t.ome.tif.qptma"
    p.write_text(text)
    q = tmp_path / "t.geojson"
    q.write_text(json.dumps(cores_geojson(cores)))
    a, b = read_regions(p), read_regions(q)
    assert (a.names, a.missing, a.is_tma) == (b.names, b.missing, True) == (("A-1",),
                                                                            ("A-2",), True)
    assert a.areas["A-1"] == pytest.approx(b.areas["A-1"], rel=1e-6)
    assert a.centers == b.centers
    # as QuPath writes it: integer boxes, a Unique ID column, a core without a region
    p.write_text("x\ny\n\nTMA grid width: 2\nTMA grid height: 2\n"
                 "Core name\tX\tY\tWidth\tHeight\tPresent\tUnique ID\n"
                 "A-1\t50\t50\t100\t100\ttrue\tP7\n"
                 "A-2\t250\t50\t100\t100\tfalse\n"
                 "B-1\t\t\t\t\n"
                 "B-2\t250\t250\t100\t80\ttrue\n")
    r = read_regions(p)
    assert r.names == ("A-1", "B-2") and r.missing == ("A-2", "B-1")
    assert r.areas["B-2"] == pytest.approx(math.pi * 50 * 40, rel=2e-3)  # an ellipse
    # written by QuPath on Windows: CRLF, and the image path in cp1252 (a walk-through's
    # was refused as "not a QuPath TMA grid file")
    p.write_bytes(p.read_text().replace("x\n", "C:\\Users\\M\u00fcller\\t.svs\n", 1)
                  .replace("\n", "\r\n").encode("cp1252"))
    w = read_regions(p)
    assert (w.names, w.missing) == (r.names, r.missing)
    # a GeoJSON with a byte-order mark (Windows editors)
    q.write_bytes(b"\xef\xbb\xbf" + q.read_bytes())
    assert read_regions(q).names == ("A-1",)
    for body, match in [("TMA grid width: 2\nX\tY\n", "no 'TMA grid width:'"),
                        ("TMA grid width: 2\nTMA grid height: 1\nX\tY\tWidth\n",
                         "no column Height"),
                        ("TMA grid width: 2\nTMA grid height: 1\nX\tY\tWidth\tHeight\n"
                         "1\t1\t2\t2\n", "needs 2 cores; the table has 1"),
                        ("TMA grid width: 1\nTMA grid height: 1\nX\tY\tWidth\tHeight\n"
                         "1\tone\t2\t2\n", "line 4: X, Y, Width and Height must be numbers")]:
        p.write_text(body)
        with pytest.raises(FileFormatError, match=match):
            read_regions(p)
    with pytest.raises(InputError, match="needs 4 cores"):
        cores_qptma(cores, 2, 2)


def test_example_brightfield_tma_and_its_bad_input(tmp_path):
    from qdmed.imaging import example_brightfield_tma

    p, centres = example_brightfield_tma(tmp_path / "ex.ome.tif", missing=(), no_dab=())
    assert list(centres) == ["A-1", "A-2", "A-3", "B-1", "B-2", "B-3"]
    found, overview = find_tma_cores(p)  # by its optical density (8-bit RGB)
    assert found.n_found == 6 and not any(c["missing"] for c in found.cores)
    # the overview to draw the grid on is the slide in colour (block means of its 0-255
    # values: the glass 255 as written), the plot draws it as such
    assert overview.ndim == 3 and overview.shape[2] == 3 and overview.max() == 255
    import matplotlib.pyplot as plt

    fig = found.plot(overview)
    assert fig.axes[0].images[0].get_array().shape[2] == 3
    plt.close(fig)
    with pytest.raises(InputError, match=r"outside the example's 2 x 3 grid"):
        example_brightfield_tma(tmp_path / "x.ome.tif", missing=("C-1",))
    with pytest.raises(InputError, match="written as an OME-TIFF"):
        example_brightfield_tma(tmp_path / "x.png")
    assert not (tmp_path / "x.ome.tif").exists() and not (tmp_path / "x.png").exists()


def test_dearrayer_on_a_brightfield_tma(tmp_path, brightfield_tma):
    # tissue absorbs: found by its optical density (auto for 8-bit RGB), as QuPath's
    # dearrayer does for brightfield
    p, truth = brightfield_tma(tmp_path / "bf.ome.tif")
    found, _ = find_tma_cores(p)
    assert (found.n_rows, found.n_cols, found.n_found) == (2, 3, 5)
    assert [c["name"] for c in found.cores if c["missing"]] == ["B-2"]
    for c in found.cores:
        ty, tx = truth[c["name"]]
        assert math.hypot(c["center_x"] - tx, c["center_y"] - ty) < (30 if c["missing"] else 6)
    with pytest.raises(InputError, match="no cores found to dearray|no tissue"):
        find_tma_cores(p, brightfield=False)  # glass is the bright part: no dark tissue


def test_dab_tma_scored_core_by_core_and_case_by_case(tmp_path, brightfield_tma):
    # conventional IHC of the same cases on a brightfield TMA: per core, the ASCO/CAP rule
    # on membrane DAB OD; a core without DAB is 0, cores of the stained tissue 2+/3+ (the
    # whole scikit-image IHC image scores 3+ with these cut-offs, test_brightfield)
    from qdmed.imaging._dab_regions import analyze_dab_regions

    p, _ = brightfield_tma(tmp_path / "bf.ome.tif")
    found, _ = find_tma_cores(p)
    cores = tmp_path / "cores.geojson"
    cores.write_text(json.dumps(found.to_geojson()))
    tma_map = tmp_path / "map.csv"
    tma_map.write_text("core,case\nA-1,P1\nB-1,P1\nA-3,P3\nB-2,P4\n")
    d = analyze_dab_regions(p, cores, tmp_path / "dab", od_cutoffs=(0.05, 0.15, 0.3),
                            tma_map=tma_map, min_cells=20, progress=False)
    got = {r["region"]: r for r in d["regions_scored"]["regions"]}
    assert got["A-3"]["her2_category"] == "0" and got["B-2"]["status"] == "missing"
    assert {got[c]["her2_category"] for c in ("A-1", "A-2", "B-1", "B-3")} <= {"2+", "3+"}
    cells = pd.read_parquet(tmp_path / "dab" / "cells.parquet")
    assert cells["cell_id"].is_unique and set(cells["region"]) == {"A-1", "A-2", "A-3", "B-1",
                                                                   "B-3"}
    # the cells of a core are those score_dab finds on the core cut with its 40 um (80 px)
    # margin, at the core's threshold (Otsu's over its tissue)
    from qdmed.imaging import read_regions, read_slide, score_dab

    reg = read_regions(cores)
    ring = reg.polygons[0][0]
    assert reg.labels[0] == "A-1"
    ya, yb = int(np.floor(ring[:, 1].min() - 0.5)), int(np.ceil(ring[:, 1].max()))
    xa, xb = int(np.floor(ring[:, 0].min() - 0.5)), int(np.ceil(ring[:, 0].max()))
    y0, x0 = max(ya - 80, 0), max(xa - 80, 0)
    thr = {t["region"]: t["hematoxylin_threshold_od"] for t in d["thresholds"]}
    alone = score_dab(read_slide(p).read_region(y0, yb + 80, x0, xb + 80),
                      od_cutoffs=(0.05, 0.15, 0.3), pixel_size_um=0.5,
                      nuclear_threshold=thr["A-1"], origin_px=(y0, x0)).cells
    alone["centroid_x"] += x0
    alone["centroid_y"] += y0
    from qdmed.imaging._regions import Regions

    a1 = Regions(source="", polygons=(reg.polygons[0],), classes=(None,), labels=("A-1",))
    inside = a1.contains_cells(alone)
    assert got["A-1"]["n_cells"] == int(inside.sum()) >= 30
    assert (cells["region"] == "A-1").sum() == got["A-1"]["n_cells"]
    cases = {r["case"]: r for r in d["cases_scored"]["cases"]}
    assert (cases["P1"]["cores"], cases["P3"]["her2_category"], cases["P4"]["status"]) == (
        "A-1;B-1", "0", "no cells")
    assert (tmp_path / "dab" / "cases.csv").exists()
    assert json.loads((tmp_path / "dab" / "summary.json").read_text())["parameters"][
        "od_cutoffs"] == [0.05, 0.15, 0.3]
    # Macenko vectors and the white level estimated once, on the slide: the core without DAB
    # stays 0 (per core, it would have been given a made-up DAB vector)
    m = analyze_dab_regions(p, cores, tmp_path / "mac", od_cutoffs=(0.05, 0.15, 0.3),
                            stain_matrix="macenko", background="auto", min_cells=20,
                            progress=False)
    got_m = {r["region"]: r for r in m["regions_scored"]["regions"]}
    assert got_m["A-3"]["her2_category"] == "0"
    assert {got_m[c]["her2_category"] for c in ("A-1", "A-2", "B-1", "B-3")} <= {"2+", "3+"}
    assert len(m["parameters"]["background"]) == 3
    assert np.asarray(m["parameters"]["stain_matrix"]).shape == (3, 3)
    fluo = simulate_tma(tmp_path / "q.ome.zarr", rows=1, cols=1, presets=["luminal-A"],
                        core_diameter_um=80.0, tile=256, **KW)
    with pytest.raises(InputError, match="8-bit RGB brightfield slide; got 8 channels"):
        analyze_dab_regions(fluo.path, cores, tmp_path / "x", od_cutoffs=(0.05, 0.15, 0.3))
    with pytest.raises(InputError, match="od_cutoffs must be three"):
        analyze_dab_regions(p, cores, tmp_path / "x", od_cutoffs=(0.3, 0.15, 0.05))
    # a nuclear antigen (ER): nuclear DAB OD, positive from t1, percent positive and the
    # ASCO/CAP status, which needs 100 nuclei (these 120 um cores hold 30-60 cells)
    er = analyze_dab_regions(p, cores, tmp_path / "er", od_cutoffs=(0.05, 0.15, 0.3),
                             marker="ER", min_cells=20, progress=False)
    got = {r["region"]: r for r in er["regions_scored"]["regions"]}
    assert got["A-3"]["ER_percent_positive"] == 0.0
    assert min(got[c]["ER_percent_positive"] for c in ("A-1", "A-2", "B-1", "B-3")) > 50
    assert got["A-1"]["ER_status"] == "insufficient cells" and "her2_category" not in {
        k for k, v in got["A-1"].items() if v is not None}
    assert er["parameters"]["compartment"] == "nucleus"
    with pytest.raises(InputError, match="marker 'CD8' is not a DAB antigen"):
        analyze_dab_regions(p, cores, tmp_path / "x", od_cutoffs=(0.05, 0.15, 0.3),
                            marker="CD8")
    # a region on glass: no cells, and the cell table keeps its columns
    glass = tmp_path / "glass.geojson"
    glass.write_text(json.dumps([{"type": "Feature", "properties": {"name": "G"},
                                  "geometry": {"type": "Polygon", "coordinates": [[
                                      [600, 560], [640, 560], [640, 600], [600, 600],
                                      [600, 560]]]}}]))
    g = analyze_dab_regions(p, glass, tmp_path / "g", od_cutoffs=(0.05, 0.15, 0.3),
                            progress=False)
    assert g["regions_scored"]["regions"][0]["status"] == "no cells"
    assert {"centroid_x", "dab_class"} <= set(pd.read_parquet(tmp_path / "g" /
                                                              "cells.parquet").columns)


def _disc_slide(tmp_path, shape_yx, discs, name="discs.ome.tif"):
    """A 2-channel fluorescence slide at 1 um/px: glass (10 +- 1) and tissue discs
    (y, x, radius px) 200 brighter."""
    from qdmed.imaging._slideio import write_ome_tiff

    rng = np.random.default_rng(0)
    img = rng.normal(10, 1, (*shape_yx, 2)).clip(0).astype(np.float32)
    yy, xx = np.mgrid[:shape_yx[0], :shape_yx[1]]
    for y, x, r in discs:
        img[(yy - y) ** 2 + (xx - x) ** 2 <= r * r] += 200
    path = tmp_path / name
    write_ome_tiff(path, img, pixel_size_um=1.0)
    return path


def test_missing_core_placed_when_whole_cores_fill_one_row_alone(tmp_path):
    # row A whole cores (radius 60 px, 200 px apart); row B broken cores (a third of a
    # core each) and B-2 lost: the grid's step between rows comes from the broken ones
    # (the whole cores' fit alone put B-2 on A-2)
    discs = [(100, 100 + 200 * j, 60) for j in range(4)] + [(300, x, 35) for x in (100, 500,
                                                                                 700)]
    cores, _ = find_tma_cores(_disc_slide(tmp_path, (420, 820), discs))
    b2 = next(c for c in cores.cores if c["name"] == "B-2")
    assert b2["missing"] and b2["center_y"] == pytest.approx(300, abs=2)
    assert b2["center_x"] == pytest.approx(300, abs=2)


def test_a_core_torn_into_small_pieces_is_one_core(tmp_path):
    # one row: cores at x = 100, 300, 700 and one torn into two pieces (each 0.17 of a
    # core, under the 0.2 debris limit; 0.35 together) at 880 and 940: a core, A-5
    discs = [(100, 100, 60), (100, 300, 60), (100, 700, 60), (100, 880, 25), (100, 940, 25)]
    cores, _ = find_tma_cores(_disc_slide(tmp_path, (220, 1020), discs))
    by = {c["name"]: c for c in cores.cores}
    assert list(by) == ["A-1", "A-2", "A-3", "A-4", "A-5"] and by["A-3"]["missing"]
    assert not by["A-5"]["missing"] and by["A-5"]["center_x"] == pytest.approx(910, abs=2)
    assert by["A-5"]["area_fraction"] == pytest.approx(2 * 25 ** 2 / 60.6 ** 2, rel=0.1)
    assert any("core A-5: 2 pieces merged" in w for w in cores.warnings)
    # a core torn along its diagonal in two large halves (not joined as small pieces,
    # merged by the grid) is 2 pieces, not 3 (a review)
    from qdmed.imaging._slideio import write_ome_tiff

    img = np.random.default_rng(0).normal(10, 1, (420, 1020, 2)).clip(0).astype(np.float32)
    yy, xx = np.mgrid[:420, :1020]
    for y in (100, 300):
        for x in (100, 300, 500, 700, 900):
            disc = (yy - y) ** 2 + (xx - x) ** 2 <= 60 ** 2
            if (y, x) == (300, 500):
                disc &= np.abs((xx - x) - (yy - y)) / np.sqrt(2) > 7  # a 14 px tear
            img[disc] += 200
    write_ome_tiff(tmp_path / "halves.ome.tif", img, pixel_size_um=1.0)
    cores, _ = find_tma_cores(tmp_path / "halves.ome.tif")
    assert (cores.n_rows, cores.n_cols, cores.n_found) == (2, 5, 10)
    assert [w for w in cores.warnings if "pieces merged" in w] == [
        "core B-3: 2 pieces merged (a torn core, or neighbours closer than half a diameter)"]
    # debris strung along the gap between two cores (9 specks of 0.03 of a core, 12 px
    # apart, 0.25 together, spread over more than a core's diameter) is no core
    specks = [(150, 100, 60), (150, 300, 60), (150, 500, 60)] + [
        (10 + 32 * i, 200, 10) for i in range(9)]
    cores, _ = find_tma_cores(_disc_slide(tmp_path, (300, 620), specks, "specks.ome.tif"))
    assert [c["name"] for c in cores.cores] == ["A-1", "A-2", "A-3"]


def test_dab_regions_outside_the_slide_are_said(tmp_path, brightfield_tma):
    # analyze warns when no cell lies in the regions; DAB scoring said nothing (a review)
    from qdmed.imaging import analyze_dab_regions

    p, _ = brightfield_tma(tmp_path / "bf.ome.tif")
    ring = [[50000, 50000], [50300, 50000], [50300, 50300], [50000, 50300], [50000, 50000]]
    (tmp_path / "far.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
         "properties": {"objectType": "annotation", "name": "far"}}]}))
    # every region outside: refused, before the output folder is made (a review's run
    # wrote "no cells" everywhere and exited 0)
    with pytest.raises(InputError, match=r"every region of .*far.geojson lies wholly outside "
                                         r"bf.ome.tif's"):
        analyze_dab_regions(p, tmp_path / "far.geojson", tmp_path / "dab",
                            od_cutoffs=(0.05, 0.15, 0.3), progress=False)
    assert not (tmp_path / "dab").exists()
    # some outside: scored where they meet the slide, the others said
    near = [[10, 10], [200, 10], [200, 200], [10, 200], [10, 10]]
    (tmp_path / "some.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [r]},
         "properties": {"objectType": "annotation", "name": n}}
        for r, n in ((near, "near"), (ring, "far"))]}))
    d = analyze_dab_regions(p, tmp_path / "some.geojson", tmp_path / "dab",
                            od_cutoffs=(0.05, 0.15, 0.3), progress=False)
    assert any("1 of the 2 regions lie outside the slide's" in w and "(far;" in w
               for w in d["warnings"])
    far_row = [r for r in d["regions_scored"]["regions"] if r["region"] == "far"][0]
    assert far_row["message"].startswith("wholly outside the slide's")
