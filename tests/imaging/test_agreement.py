"""Case-by-case HER2 agreement (QD-IHC vs DAB IHC) and the `qdmed image compare` command."""

import json
import subprocess
import sys

import numpy as np
import pytest

from qdmed.errors import InputError
from qdmed.imaging import cohen_kappa, compare_her2


def test_cross_table_agreement_and_kappas():
    qd = {"p1": "3+", "p2": "0", "p3": "1+", "p4": "2+", "p5": "1+", "p6": "0"}
    dab = {"p6": "0", "p1": "3+", "p2": "1+", "p3": "1+", "p4": "3+", "p5": "1+"}  # any order
    r = compare_her2(qd, dab)
    assert r.n_cases == 6 and r.cases == ("p1", "p2", "p3", "p4", "p5", "p6")
    t = np.array(r.table)
    assert t.sum() == 6 and np.trace(t) == 4
    assert t[0, 1] == 1 and t[2, 3] == 1  # 0 vs 1+ (p2), 2+ vs 3+ (p4)
    assert r.percent_agreement == pytest.approx(400 / 6)
    a = [qd[c] for c in r.cases]
    b = [dab[c] for c in r.cases]
    labels = ["0", "1+", "2+", "3+"]
    assert r.kappa == pytest.approx(cohen_kappa(a, b, labels=labels))
    assert r.kappa_linear == pytest.approx(cohen_kappa(a, b, weights="linear", labels=labels))
    # clinical calls: negative (0, 1+) / equivocal / positive: p4 differs
    assert r.percent_agreement_negative_positive == pytest.approx(500 / 6)
    assert r.percent_agreement_null_low == pytest.approx(500 / 6)  # p2: 0 vs 1+
    assert [d["case"] for d in r.disagreements()] == ["p2", "p4"]
    d = r.to_dict()
    json.dumps(d)
    assert d["table"] == [list(row) for row in r.table]
    assert r.plot() is not None


def test_perfect_agreement_and_numeric_labels():
    r = compare_her2([0, 1, 2, 3, 3], ["0", "1+", "2+", "3+", "3+"])
    assert r.percent_agreement == 100 and r.kappa == pytest.approx(1.0)
    assert r.kappa_quadratic == pytest.approx(1.0)
    # a CSV column with a blank cell reads as floats: 3.0 is 3+
    r = compare_her2(["0.0", "1.0", "2.0", "3.0"], ["0", "1+", "2+", "3+"])
    assert r.percent_agreement == 100
    with pytest.raises(InputError, match="'2.5'"):
        compare_her2(["0", "2.5"], ["0", "1+"])


def test_confidence_intervals():
    """Wilson intervals of the agreement, checked against Newcombe's (1998) table (81/263:
    0.2553-0.3662; 0/20: 0-0.1611); bootstrap intervals of the kappas around the estimates
    (seeded: the same cases give the same interval); few cases warned."""
    from qdmed.imaging._agreement import _kappas_of_tables

    r = compare_her2(["0"] * 263, ["0"] * 81 + ["1+"] * 182)
    assert r.percent_agreement_ci95 == pytest.approx((25.53, 36.62), abs=5e-3)
    r = compare_her2(["0"] * 20, ["1+"] * 20)
    assert r.percent_agreement_ci95 == pytest.approx((0.0, 16.11), abs=5e-3)
    rng = np.random.default_rng(4)
    truth = rng.integers(0, 4, 60)
    other = np.where(rng.random(60) < 0.8, truth, rng.integers(0, 4, 60))
    cats = np.array(["0", "1+", "2+", "3+"])
    r = compare_her2(list(cats[truth]), list(cats[other]))
    table = np.array(r.table, float)
    d = np.abs(np.arange(4)[:, None] - np.arange(4)[None, :]) / 3
    assert _kappas_of_tables(table, d) == pytest.approx(r.kappa_linear)  # as cohen_kappa
    for k in ("kappa", "kappa_linear", "kappa_quadratic"):
        lo, hi = getattr(r, k + "_ci95")
        assert lo < getattr(r, k) < hi and hi - lo < 0.5
    lo, hi = r.percent_agreement_ci95
    assert lo < r.percent_agreement < hi
    assert compare_her2(list(cats[truth]), list(cats[other])).kappa_ci95 == r.kappa_ci95
    # the same cases in another order: the same interval (a walk-through's shuffled sheet
    # had moved it in the third decimal)
    perm = rng.permutation(60)
    shuffled = compare_her2(list(cats[truth][perm]), list(cats[other][perm]))
    assert shuffled.kappa_ci95 == r.kappa_ci95
    assert shuffled.kappa_linear_ci95 == r.kappa_linear_ci95
    # one case under keys of two types is refused, not counted twice
    with pytest.raises(InputError, match="case '1' is given twice"):
        compare_her2({1: "0", 2: "3+", "1": "1+"}, {"1": "0", "2": "3+"})
    assert not r.warnings
    few = compare_her2(["0", "1+", "3+"], ["0", "1+", "3+"])
    assert few.warnings and "only 3 cases" in few.warnings[0]
    # perfect agreement: the bootstrap has no spread, the interval is not estimable (it
    # read 1.00 to 1.00 before), and the warning says why, not "so few" (a review: 3 cases
    # of which one differed got an interval)
    assert all(np.isnan(v) for v in few.kappa_ci95)
    assert "every case agrees, so kappa is 1 in every resample and has no interval; the " \
        "percent agreement's is 44-100 %" in few.warnings[0]
    json.dumps(few.to_dict())


def test_compare_errors_name_the_cases():
    with pytest.raises(InputError, match=r"only in QD-IHC: \['b'\]"):
        compare_her2({"a": "0", "b": "1+"}, {"a": "0", "c": "1+"})
    with pytest.raises(InputError, match="case '1' has HER2 category '4\\+'"):
        compare_her2(["0", "4+"], ["0", "1+"])
    with pytest.raises(InputError, match="different names"):
        compare_her2(["0", "1+"], ["0", "1+"], method_a="IHC", method_b="IHC")
    with pytest.raises(InputError, match="at least 2"):
        compare_her2(["0"], ["0"])
    with pytest.raises(InputError, match="same length|one category per case"):
        compare_her2(["0", "1+"], ["0"])


def test_compare_cli(tmp_path):
    a = tmp_path / "cohort.csv"
    a.write_text("slide,status,her2_category\ns1,ok,3+\ns2,ok,0\ns3,failed,\ns4,ok,1+\ns5,ok,2+\n")
    b = tmp_path / "dab.csv"
    b.write_text("case,score\ns1,3+\ns2,1+\ns3,2+\ns4,1+\ns6,0\n")
    args = [sys.executable, "-m", "qdmed", "image", "compare", str(a), str(b), "--column-b",
            "score", "--plot", str(tmp_path / "x.png")]
    r = subprocess.run([*args, "--json"], capture_output=True, text=True)
    assert r.returncode == 2 and "no column 'slide'" in r.stderr  # table b has 'case'
    r = subprocess.run([*args, "--key-b", "case", "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["n_cases"] == 3
    a2 = tmp_path / "dab2.csv"
    a2.write_text(b.read_text().replace("case,", "slide,"))
    args[6] = str(a2)
    r = subprocess.run([*args, "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["n_cases"] == 3 and d["percent_agreement"] == pytest.approx(200 / 3)
    # the scorings are named by their files unless --name-a / --name-b are given
    assert d["excluded"] == {"no category in cohort": ["s3"], "only in cohort": ["s5"],
                             "only in dab2": ["s6"]}
    assert (tmp_path / "x.png").stat().st_size > 1000
    r = subprocess.run([*args, "--name-a", "QD-IHC", "--name-b", "pathologist"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "HER2 agreement: QD-IHC vs pathologist" in r.stdout
    # a category that is none is named with its file and column, whatever the scoring
    reads = tmp_path / "reads.csv"
    reads.write_text("slide,score\ns1,Positive\ns2,1+\n")
    r = subprocess.run([*args[:5], str(a), str(reads), "--column-b", "score"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and f"{reads}, column 'score': case 's1' has HER2 category " \
        "'Positive'" in r.stderr
    # a case only the reads hold is left out, whatever it says (a master sheet's "not
    # evaluable" was refused: a review)
    reads.write_text("slide,score\ns1,3+\ns2,0\nZ,not evaluable\n")
    r = subprocess.run([*args[:5], str(a), str(reads), "--column-b", "score", "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["excluded"]["only in reads"] == ["Z"]
    # two readers in one sheet: named by their columns
    two = tmp_path / "two.csv"
    two.write_text("slide,p1,p2\ns1,3+,3+\ns2,0,1+\ns3,1+,1+\n")
    r = subprocess.run([*args[:5], str(two), str(two), "--column-a", "p1", "--column-b",
                        "p2"], capture_output=True, text=True)
    assert r.returncode == 0 and "HER2 agreement: p1 vs p2" in r.stdout, r.stderr
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 0 and "cross-table" in r.stdout and "excluded" in r.stdout
    # cohort.csv names slide files, a pathologist's table names cases: matched by stem
    c = tmp_path / "cohort2.csv"
    c.write_text("slide,her2_category\ns1.ome.tif,3+\ns2.ome.zarr,0\ns4.tif,1+\n")
    r = subprocess.run([*args[:5], str(c), str(a2), "--column-b", "score", "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["n_cases"] == 3
    other = tmp_path / "other.csv"
    other.write_text("slide,score\nX1,0\nX2,1+\n")
    r = subprocess.run([*args[:5], str(a), str(other), "--column-b", "score"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "share no case" in r.stderr and "X1" in r.stderr
    r = subprocess.run([*args[:5], str(a), str(a2), "--column-b", "score", "--plot",
                        str(a / "x.png")], capture_output=True, text=True)
    # refused as the command starts, naming the file that stands where a folder is needed
    assert r.returncode == 2 and f"{a} is a file where a folder is needed" in r.stderr


def test_cohort_report_figure_and_page(tmp_path):
    from qdmed.imaging._report import cohort_figure, write_cohort_report

    rows = [{"slide": "a.ome.tif", "status": "ok", "n_cells": 900, "her2_category": "3+",
             "total_her2_load": 5e4, "her2_mean_membrane": 40.0},
            {"slide": "b.ome.tif", "status": "ok", "n_cells": 800, "her2_category": "0",
             "total_her2_load": 1e3, "her2_mean_membrane": 0.5},
            {"slide": "c.ome.tif", "status": "failed", "n_cells": 0, "her2_category": None,
             "message": "not a TIFF"}]
    fig = cohort_figure(rows)
    assert len(fig.axes) == 2
    assert [p.get_height() for p in fig.axes[0].patches] == [1, 0, 0, 1]
    assert [p.get_height() for p in fig.axes[1].patches] == [0.5, 40.0]  # sorted
    assert cohort_figure(rows[2:]) is None
    summary = {"folder": str(tmp_path), "n_slides": 3, "n_ok": 2, "n_failed": 1, "slides": rows}
    html = write_cohort_report(summary, tmp_path).read_text()
    assert "not a TIFF" in html and "slides/a/report.html" in html and "<img" in html
    assert "ER / PgR" not in html and "heterogeneity" not in html
    # receptor statuses counted, and slides with spatial HER2 heterogeneity named
    rows[0].update(ER_status="positive", PR_status="positive", her2_spatial_p_value=0.005)
    rows[1].update(ER_status="low positive (borderline)", PR_status="negative",
                   her2_spatial_p_value=0.4)
    html = write_cohort_report(summary, tmp_path).read_text()
    assert "ER / PgR (ASCO/CAP 2020)" in html and "low positive (borderline)" in html
    assert "(permutation p &lt; 0.05, uncorrected for the 2 slides tested): a.ome.tif." in html


def test_one_scoring_in_one_category_is_named_as_the_reason():
    """Every DAB case 3+: kappa is 0 whatever QD-IHC says, which the warning now says (it
    blamed the number of cases, also with many)."""
    qd = ["0", "1+", "2+", "3+"] * 3
    few = compare_her2(dict(enumerate(qd)), dict(enumerate(["3+"] * 12)))
    assert few.warnings == ("only 12 cases; one scoring put every case in one category: "
                            "kappa is 0 or undefined whatever the other says (compare the "
                            "percent agreement instead)",)
    assert all(np.isnan(v) for v in few.kappa_ci95)  # it read (-0.00, 0.00)
    many = compare_her2(dict(enumerate(qd * 3)), dict(enumerate(["3+"] * 36)))
    assert many.warnings == ("one scoring put every case in one category: kappa is 0 or "
                             "undefined whatever the other says (compare the percent "
                             "agreement instead)",)
    assert many.kappa == pytest.approx(0.0) and many.percent_agreement == pytest.approx(25.0)


def test_reads_saved_by_excel_or_qupath_are_said(tmp_path):
    """A review: a semicolon CSV (European Excel) read "no column 'case'; columns:
    ['case;score']", a tab-separated one likewise, Excel's 'sep=,' line read as the header,
    and Windows-1252 text met a bare codec error."""
    from qdmed.errors import FileFormatError
    from qdmed.imaging import compare_her2_tables

    ours = tmp_path / "ours.csv"
    ours.write_text("case,her2_category\nP1,3+\nP2,0\nP3,1+\n")
    files = {"semi.csv": (b"case;score\nP1;3+\n", "separated by semicolons, not commas"),
             "tab.csv": (b"case\tscore\nP1\t3+\n", "separated by tabs, not commas"),
             "sep.csv": (b"sep=,\ncase,score\nP1,3+\n", "Excel's 'sep=' line"),
             "latin.csv": (b"case,score,comment\nP1,3+,caf\xe9\n", "not UTF-8 text: save it "
                                                                   "as CSV UTF-8")}
    for name, (data, said) in files.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(FileFormatError, match=said):
            compare_her2_tables(ours, tmp_path / name, key="case", column_b="score")


def test_case_names_alike_but_for_letter_case_are_said(tmp_path):
    """A review: p1 against P1 was listed as two exclusions without a hint. Names are still
    matched as written (a case is what its table calls it), and the pairs are said."""
    from qdmed.imaging import compare_her2_tables

    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("case,her2_category\nP1,3+\nP2,0\nP3,1+\np4,2+\n")
    b.write_text("case,score\nP1,3+\nP2,0\nP3,1+\nP4,2+\n")
    r = compare_her2_tables(a, b, key="case", column_b="score")
    assert r.cases == ("P1", "P2", "P3")
    assert r.excluded["named alike but for letter case, not matched"] == ["p4 / P4"]
    b.write_text("case,score\np1,3+\np2,0\n")
    with pytest.raises(InputError, match=r"share no case .*; 2 differ in letter case only "
                                         r"\(e\.g\. P1 / p1\): names are matched as written"):
        compare_her2_tables(a, b, key="case", column_b="score")


def test_rows_without_a_case_are_skipped_in_her2_tables(tmp_path):
    """A spreadsheet's trailing blank rows: two read as two rows naming the case '' (an
    error), one as a case '' excluded (a walk-through); skipped now, as compare --measure
    skips them."""
    from qdmed.imaging import compare_her2_tables

    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("case,her2_category\nP1,3+\nP2,0\nP3,1+\n,\n,\n")
    b.write_text("case,score\nP1,3+\nP2,0\nP3,2+\n , \n")
    r = compare_her2_tables(a, b, key="case", column_b="score")
    assert r.cases == ("P1", "P2", "P3") and r.excluded == {}
