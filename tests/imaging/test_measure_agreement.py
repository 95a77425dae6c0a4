"""Agreement of two measurements of one continuous quantity (ER % positive against a
pathologist's %, an H-score): Bland-Altman limits, Lin's CCC, status agreement, and
`qdmed image compare --measure`."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from qdmed.errors import InputError
from qdmed.imaging import cohen_kappa, compare_measure, compare_measure_tables

# Bland JM, Altman DG, Lancet 1986 (doi:10.1016/S0140-6736(86)90837-8), Table 1: peak
# expiratory flow rate (l/min) of 17 subjects, first reading with the Wright and with the
# mini Wright peak flow meter.
WRIGHT = [494, 395, 516, 434, 476, 557, 413, 442, 650, 433, 417, 656, 267, 478, 178, 423, 427]
MINI = [512, 430, 520, 428, 500, 600, 364, 380, 658, 445, 432, 626, 260, 477, 259, 350, 451]


def test_bland_altman_1986_worked_example():
    r = compare_measure(WRIGHT, MINI, method_a="Wright", method_b="mini Wright",
                        measure="PEFR", unit="l/min")
    # the paper: mean difference -2.1 l/min, SD 38.8, r = 0.94, and its 95 % interval of
    # the bias -2.1 +- 2.12 x 9.4 = -22.0 to 17.8 (t on 16 degrees of freedom)
    assert r.bias == pytest.approx(-2.1, abs=0.05)
    assert r.sd_difference == pytest.approx(38.8, abs=0.05)
    assert r.pearson_r == pytest.approx(0.94, abs=0.005)
    assert r.bias_ci95 == pytest.approx((-22.0, 17.8), abs=0.06)
    # the paper's limits are mean +- 2 SD of the rounded values: -79.7 to 75.5; qdmed's
    # use 1.96 SD (Bland & Altman 1999)
    assert r.bias - 2 * r.sd_difference == pytest.approx(-79.7, abs=0.1)
    assert r.bias + 2 * r.sd_difference == pytest.approx(75.5, abs=0.1)
    lo, hi = r.limits_of_agreement
    assert lo == pytest.approx(r.bias - 1.96 * r.sd_difference)
    assert hi == pytest.approx(r.bias + 1.96 * r.sd_difference)
    # Bland & Altman 1999 (section 2.2): SE of a limit sqrt(s^2/n + 1.96^2 s^2 / (2(n-1)))
    se = r.sd_difference * np.sqrt(1 / 17 + 1.96 ** 2 / 32)
    assert r.lower_limit_ci95 == pytest.approx((lo - 2.1199 * se, lo + 2.1199 * se), abs=0.01)
    assert r.upper_limit_ci95 == pytest.approx((hi - 2.1199 * se, hi + 2.1199 * se), abs=0.01)
    # ... of which the 1986 paper's sqrt(3 s^2 / n) = 16.3 is the large-n form
    assert np.sqrt(3 * 38.8 ** 2 / 17) == pytest.approx(16.3, abs=0.05)
    assert 16.3 < se < 17.0
    # subject 15 (178 against 259) is the one pair outside the limits
    assert [o["case"] for o in r.outside_limits()] == ["14"]
    assert r.difference_slope_p > 0.05  # no trend with the level
    assert len(r.warnings) == 1 and "only 17 cases" in r.warnings[0]
    json.dumps(r.to_dict())
    assert r.plot() is not None


def test_lin_ccc_is_r_times_cb_and_closed_form_for_a_shift():
    rng = np.random.default_rng(3)
    x = rng.normal(30, 10, 40)
    y = 0.8 * x + 5 + rng.normal(0, 3, 40)
    r = compare_measure(x, y)
    assert r.ccc == pytest.approx(r.pearson_r * r.bias_correction_factor)
    assert r.pearson_r == pytest.approx(np.corrcoef(x, y)[0, 1])
    # Lin 1989: y = x + c has r = 1 and rho_c = 2 s^2 / (2 s^2 + c^2) (variances over n)
    s2 = np.var(x)
    r2 = compare_measure(x, x + 4.0)
    assert r2.ccc == pytest.approx(2 * s2 / (2 * s2 + 16.0))
    assert r2.pearson_r == pytest.approx(1.0)
    # r = 1: Lin's variance keeps its bias terms, so the interval is defined (a review: it
    # was NaN), and holds rho_c
    lo, hi = r2.ccc_ci95
    assert lo < r2.ccc < hi < 1.0
    r3 = compare_measure(x, x)  # rho_c = 1: atanh(1), no interval
    assert r3.ccc == pytest.approx(1.0) and np.isnan(r3.ccc_ci95[0])
    assert r2.bias == pytest.approx(-4.0) and r2.sd_difference == pytest.approx(0.0, abs=1e-12)
    assert r2.outside_limits() == []  # rounding in x + 4 - x is no difference (a review)


def test_lin_ccc_interval_covers_the_true_value():
    """Coverage of the z-transform interval (Lin 1989, 2000) on bivariate normal samples
    of 50 with a location and a scale shift: close to the nominal 95 %."""
    rng = np.random.default_rng(11)
    rho, mu_a, mu_b, sa, sb = 0.9, 0.0, 0.3, 1.0, 1.2
    true = 2 * rho * sa * sb / (sa ** 2 + sb ** 2 + (mu_a - mu_b) ** 2)
    cov = [[sa ** 2, rho * sa * sb], [rho * sa * sb, sb ** 2]]
    hits = 0
    reps = 400
    for _ in range(reps):
        ab = rng.multivariate_normal([mu_a, mu_b], cov, 50)
        lo, hi = compare_measure(ab[:, 0], ab[:, 1]).ccc_ci95
        hits += lo <= true <= hi
    assert 0.92 <= hits / reps <= 0.98


def test_er_status_agreement_follows_asco_cap_2020():
    # 10 % is ER low positive (1-10 %), 1 % is positive at all (ASCO/CAP 2020)
    qd = {"a": 0.5, "b": 1.0, "c": 10.0, "d": 10.5, "e": 60.0}
    path = {"a": 0.0, "b": 2.0, "c": 12.0, "d": 10.0, "e": 70.0}
    r = compare_measure(qd, path, status_rule="ER", unit="%")
    st = r.status
    assert st.labels == ("negative", "low positive", "positive")
    assert st.a == ("negative", "low positive", "low positive", "positive", "positive")
    assert st.b == ("negative", "low positive", "positive", "low positive", "positive")
    assert st.percent_agreement == pytest.approx(60.0)
    # by hand: p_o = 3/5, marginals (1, 2, 2)/5 both, p_e = 9/25: (0.6 - 0.36) / 0.64;
    # linear weights 0 / 0.5 / 1: sum w O = 0.2, sum w E = 0.4
    assert st.kappa == pytest.approx(0.375)
    assert st.kappa_linear == pytest.approx(0.5)
    assert st.kappa == pytest.approx(cohen_kappa(list(st.a), list(st.b),
                                                 labels=list(st.labels)))
    assert np.array(st.table).sum() == 5 and np.trace(np.array(st.table)) == 3
    d = r.to_dict()
    assert [x["case"] for x in d["status_disagreements"]] == ["c", "d"]
    pr = compare_measure(qd, path, status_rule="PgR").status
    assert pr.labels == ("negative", "positive") and pr.percent_agreement == 100.0


def test_cutoffs_take_the_higher_status_on_the_cut():
    r = compare_measure([4.0, 5.0, 29.0, 30.0], [5.0, 5.0, 30.0, 31.0], status_rule=(5, 30))
    assert r.status.labels == ("< 5", "5 to < 30", ">= 30")
    assert r.status.a == ("< 5", "5 to < 30", "5 to < 30", ">= 30")
    assert r.status.b == ("5 to < 30", "5 to < 30", ">= 30", ">= 30")


def test_bad_inputs_are_refused_with_the_value_named():
    with pytest.raises(InputError, match="case 'b' has the value 'high'"):
        compare_measure({"a": 1, "b": "high", "c": 3}, {"a": 1, "b": 2, "c": 3})
    with pytest.raises(InputError, match="at least 3 cases"):
        compare_measure([1, 2], [1, 2])
    with pytest.raises(InputError, match="only in qdmed: \\['c'\\]"):
        compare_measure({"a": 1, "b": 2, "c": 3}, {"a": 1, "b": 2, "d": 3})
    with pytest.raises(InputError, match="increasing order"):
        compare_measure([1, 2, 3], [1, 2, 3], status_rule=(10, 1))
    with pytest.raises(InputError, match="rule 'HER2' is not known"):
        compare_measure([1, 2, 3], [1, 2, 3], status_rule="HER2")
    with pytest.raises(InputError, match="finite number"):
        compare_measure([1, float("nan"), 3], [1, 2, 3])


def test_fractions_against_percentages_are_warned():
    r = compare_measure([0.02, 0.3, 0.9, 0.5], [2.0, 30.0, 90.0, 50.0], unit="%")
    assert any("fractions (0-1)" in w for w in r.warnings)
    # an ER rule means percentages too; a low-ER cohort (0.8 against 3) is not warned
    r = compare_measure([0.005, 0.3, 0.95, 0.5], [0.0, 30.0, 90.0, 50.0], status_rule="ER")
    assert any("fractions (0-1)" in w for w in r.warnings)
    r = compare_measure([0.1, 0.5, 0.8, 0.2], [0.0, 1.0, 3.0, 0.5], status_rule="ER")
    assert not any("fractions" in w for w in r.warnings)
    # a percentage outside 0-100 is refused
    with pytest.raises(InputError, match="case '3' has 150 %"):
        compare_measure([5, 10, 20, 150], [0, 10, 20, 100], unit="%")
    with pytest.raises(InputError, match="case '0' has -5 %"):
        compare_measure([-5, 10, 20], [0, 10, 20], status_rule="ER")


def test_tables_join_by_slide_stem_and_list_excluded(tmp_path):
    a = tmp_path / "cohort.csv"
    a.write_text("slide,ER_percent_positive,status\n"
                 "S1.ome.tif,12.5,ok\nS2.ome.tif,0.4,ok\nS3.ome.tif,55,ok\nS4.ome.tif,,failed\n"
                 "S5.ome.tif,7,ok\nS9.ome.tif,3,ok\n")
    b = tmp_path / "reads.csv"
    b.write_text("case,er\nS1,10%\nS2,0%\nS3,60 %\nS4,5\nS5,5\nS6,1\n")
    r = compare_measure_tables(a, b, column_a="ER_percent_positive", column_b="er",
                               key_b="case", unit="%", status_rule="ER")
    assert r.cases == ("S1", "S2", "S3", "S5")
    assert r.b == (10.0, 0.0, 60.0, 5.0)
    assert r.excluded == {"no value in qdmed": ["S4"], "only in qdmed": ["S9"],
                          "only in pathologist": ["S6"]}
    assert r.measure == "ER_percent_positive / er"
    assert not r.warnings[1:]
    # the observed percentage compared for a status, where cohort.csv has the corrected one
    # qdmed reads its status from: warned
    a2 = tmp_path / "cohort2.csv"
    a2.write_text("slide,ER_percent_positive,ER_percent_positive_corrected\n"
                  "S1,1.98,0.99\nS2,12,11\nS3,40,39.5\n")
    r = compare_measure_tables(a2, b, column_a="ER_percent_positive", column_b="er",
                               key_b="case", status_rule="ER")
    assert any("ER_percent_positive_corrected (its gate's noise floor removed)" in w
               for w in r.warnings)
    r = compare_measure_tables(a2, b, column_a="ER_percent_positive_corrected",
                               column_b="er", key_b="case", status_rule="ER")
    assert not any("observed percentage" in w for w in r.warnings)

    def reads(name, text, **kw):
        (tmp_path / name).write_text(text)
        return compare_measure_tables(a, tmp_path / name, column_a="ER_percent_positive",
                                      column_b="er", key_b="case", **kw)

    # R's NA and Excel's #N/A leave a case out; blank trailing rows (an Excel export) are
    # skipped
    r = reads("na.csv", "case,er\nS1,10\nS2,0\nS3,#N/A\nS5,NA\nS9,3\n,\n,\n")
    assert r.cases == ("S1", "S2", "S9")
    assert r.excluded == {"no value in pathologist": ["S3", "S5"], "only in qdmed": ["S4"]}
    for name, text, said in (
            ("bad.csv", "case,er\nS1,ten\nS2,0\nS3,1\n",
             r"bad.csv, line 2: er = 'ten' for case 'S1'"),
            ("dup.csv", "case,er\nS1,10\nS2,1\nS1.ome.tif,3\n",
             r"dup.csv, lines 2 and 4: 'S1' and 'S1.ome.tif'"),
            ("inf.csv", "case,er\nS1,inf\nS2,1\nS3,3\n",
             r"inf.csv, line 2: er = 'inf' .* not finite"),  # an error upstream
            ("head.csv", "case,er\n", "no rows under the header")):
        with pytest.raises(InputError, match=said):
            reads(name, text)


def test_compare_measure_cli(tmp_path):
    a = tmp_path / "a.csv"
    b = tmp_path / "b.csv"
    a.write_text("slide,ER_percent_positive\n" + "".join(
        f"S{i},{v}\n" for i, v in enumerate([0.2, 3, 12, 45, 80, 95])))
    b.write_text("slide,ER_percent_positive\n" + "".join(
        f"S{i},{v}\n" for i, v in enumerate([0, 5, 10, 50, 80, 90])))
    base = [sys.executable, "-m", "qdmed", "image", "compare", str(a), str(b)]
    r = subprocess.run([*base, "--measure", "--column-a", "ER_percent_positive",
                        "--status", "ER", "--unit", "%", "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["n_cases"] == 6 and d["status"]["labels"] == ["negative", "low positive",
                                                            "positive"]
    assert d["bias"] == pytest.approx(np.mean([0.2, -2, 2, -5, 0, 5]))
    png = tmp_path / "ba.png"
    r = subprocess.run([*base, "--measure", "--column-a", "ER_percent_positive",
                        "--status", "5,30", "--plot", str(png)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert "limits of agreement" in r.stdout and ">= 30" in r.stdout and png.stat().st_size
    assert "a vs b" in r.stdout  # named by the tables' files
    # bad input: one line, exit 2
    for extra, msg in ((["--measure"], "name TABLE_A's column with --column-a"),
                       (["--measure", "--column-b", "x"], "with --column-a"),
                       (["--status", "ER"], "go with --measure"),
                       (["--measure", "--column-a", "ER_percent_positive", "--status", "x,1"],
                        "--status 'x,1'")):
        r = subprocess.run([*base, *extra], capture_output=True, text=True)
        assert r.returncode == 2 and msg in r.stderr, r.stderr


def test_her2_compare_of_numbers_points_to_measure(tmp_path):
    from qdmed.imaging import compare_her2, compare_her2_tables

    with pytest.raises(InputError, match="compare --measure"):
        compare_her2([12.5, 3.0], ["1+", "2+"])
    # NA and #N/A cells leave a case out of the HER2 comparison too
    (tmp_path / "a.csv").write_text("slide,her2_category\nA,3+\nB,0\nC,1+\nD,2+\n")
    (tmp_path / "b.csv").write_text("slide,her2_category\nA,3+\nB,NA\nC,1+\nD,#N/A\n")
    r = compare_her2_tables(tmp_path / "a.csv", tmp_path / "b.csv")
    assert r.cases == ("A", "C") and r.excluded == {"no category in DAB IHC": ["B", "D"]}


def test_calibrate_messages_name_the_options():
    """calibrate_controls' messages as the command line says them (qdmed.cli.image)."""
    from qdmed.cli import _with_option
    from qdmed.cli.image import _calibrate_message

    argv = ["image", "calibrate", "--control", "A=a/", "--control", "B=b/", "--category",
            "X=1+", "--negative", "ER=A"]

    def printed(msg):  # as the command raises it and the error printer prints it
        return _with_option(_calibrate_message(msg), argv)

    assert printed("category X=1+: no control X was given (controls: A)") == \
        "--category X=1+: no --control X=... was given (controls: A)"
    assert printed("control B: used by nothing; give it a HER2 category (0, 1+, 2+, 3+) or "
                   "name it as a marker's negative control") == \
        ("--control B: used by nothing; give it a HER2 --category NAME=0|1+|2+|3+ or name it "
         "in --negative MARKER=NAME")
    # the gates' own "negative control ..." is not what --negative gave
    said = printed("negative control 'X' has 3 cells with ER_nucleus_mean")
    assert not said.startswith("--negative") and "--negative MARKER=NAME" in said


def test_ki67_status_by_the_ikwg_2021_cut_offs():
    # Nielsen TO et al., J Natl Cancer Inst 2021 (doi:10.1093/jnci/djaa201): Ki-67 <= 5 %
    # or >= 30 % estimates prognosis; 5 % is low, 30 % high, the values between intermediate
    a = {"p1": 5.0, "p2": 5.5, "p3": 29.9, "p4": 30.0, "p5": 2.0, "p6": 45.0}
    b = {"p1": 4.0, "p2": 6.0, "p3": 31.0, "p4": 30.0, "p5": 6.0, "p6": 50.0}
    st = compare_measure(a, b, status_rule="Ki-67", unit="%").status
    assert st.labels == ("low", "intermediate", "high")
    assert st.a == ("low", "intermediate", "intermediate", "high", "low", "high")
    assert st.b == ("low", "intermediate", "high", "high", "intermediate", "high")
    assert "<= 5 % low" in st.rule and ">= 30 % high" in st.rule
    assert compare_measure(a, b, status_rule="KI67").status.table == st.table


def test_cases_with_too_few_cells_for_a_status_are_left_out(tmp_path):
    # a DAB ER table whose P2 has 59 nuclei: its percentage is written, its status is
    # "insufficient cells"; neither its value nor a status made from it is compared
    from qdmed.imaging import compare_measure_tables

    (tmp_path / "qd.csv").write_text(
        "case,ER_percent_positive_corrected,ER_status\n"
        "P1,40,positive\nP2,0.5,negative\nP3,80,positive\nP4,0,negative\nP5,5,low positive\n")
    (tmp_path / "dab.csv").write_text(
        "case,ER_percent_positive_corrected,ER_status\n"
        "P1,35,positive\nP2,30,insufficient cells\nP3,70,positive\nP4,,\nP5,4,low positive\n")
    r = compare_measure_tables(tmp_path / "qd.csv", tmp_path / "dab.csv", key="case",
                               column_a="ER_percent_positive_corrected", status_rule="ER",
                               method_a="qd", method_b="dab")
    assert r.cases == ("P1", "P3", "P5")
    assert r.excluded == {"no value in dab": ["P4"], "insufficient cells in dab": ["P2"]}
    assert sum(map(sum, r.status.table)) == 3
    # too few cases left: the error counts them by their reason (it had said "no value"
    # for the cases of insufficient cells, a pathologist's walk-through)
    (tmp_path / "few.csv").write_text(
        "case,ER_percent_positive_corrected,ER_status\n"
        "P1,35,positive\nP2,30,insufficient cells\nP3,70,insufficient cells\nP4,,\n"
        "P5,4,low positive\n")
    with pytest.raises(InputError, match=r"2 of them have one \(no value in dab: 1; "
                                         r"insufficient cells in dab: 2\)"):
        compare_measure_tables(tmp_path / "qd.csv", tmp_path / "few.csv", key="case",
                               column_a="ER_percent_positive_corrected", method_a="qd",
                               method_b="dab")


def test_a_marker_of_ones_own_is_gated_with_its_compartment(tmp_path):
    rng = np.random.default_rng(0)
    pd.DataFrame({"cell_id": np.arange(1, 301), "CD8_membrane_mean": rng.gamma(2, 1, 300)}
                 ).to_parquet(tmp_path / "neg.parquet")
    base = [sys.executable, "-m", "qdmed", "image", "calibrate", "--control",
            f"neg={tmp_path / 'neg.parquet'}", "--negative", "CD8=neg", "--out",
            str(tmp_path / "cal.json")]
    r = subprocess.run(base, capture_output=True, text=True)
    assert r.returncode == 2 and "give --compartment CD8=nucleus, or cytoplasm" in r.stderr
    r = subprocess.run([*base, "--compartment", "CD8=membrane"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    gate = json.loads((tmp_path / "cal.json").read_text())["gates"]["CD8"]
    assert gate["compartment"] == "membrane"
    r = subprocess.run([*base, "--compartment", "CD8=nuc"], capture_output=True, text=True)
    assert r.returncode == 2 and "nucleus, cytoplasm, membrane or cell" in r.stderr
    r = subprocess.run([*base, "--compartment", "CD8=membrane", "--compartment",
                        "CD4=membrane"], capture_output=True, text=True)
    assert r.returncode == 2 and "--compartment CD4: no --negative gates it" in r.stderr
    # a typo of a known marker's name is warned as the panel is made
    from qdmed.imaging._panel import _marker_name_warnings

    assert "named like 'ER': a typo?" in _marker_name_warnings(["ERR"])[0]
    assert all("named like 'HER2'" in w for w in _marker_name_warnings(["her2", "HER-2"]))
    # markers of their own, one letter from a known one (a review found them warned)
    assert _marker_name_warnings(["CD8", "ER", "HER3", "A", "B", "PSMA", "ERK", "ERG", "CAR",
                                  "PRL", "ERa", "autofluorescence"]) == []


def test_a_qd_measure_against_the_dab_one_of_the_same_name_is_warned(tmp_path):
    """total_her2_load is QD abundance in a QD table and DAB optical density in a DAB one
    (a statistician's walk-through: compared without a word, CCC 0.0007)."""
    from qdmed.imaging import compare_measure_tables

    (tmp_path / "qd.csv").write_text("case,total_her2_load\nP1,600000\nP2,20000\nP3,300000\n"
                                     "P4,90000\n")
    (tmp_path / "dab.csv").write_text("case,total_her2_load,h_score\nP1,410,250\nP2,30,20\n"
                                      "P3,220,160\nP4,80,60\n")
    r = compare_measure_tables(tmp_path / "qd.csv", tmp_path / "dab.csv", key="case",
                               column_a="total_her2_load")
    assert any("one table is DAB IHC (optical density) and the other QD-IHC" in w
               for w in r.warnings)
    same = compare_measure_tables(tmp_path / "dab.csv", tmp_path / "dab.csv", key="case",
                                  column_a="total_her2_load", method_b="again")
    assert not any("DAB IHC" in w for w in same.warnings)


def test_an_undefined_status_kappa_is_said():
    """Every case one status in both methods: the status kappa is undefined and said so,
    as compare_her2 says its own (a statistician's walk-through: shown as 'undefined',
    unexplained)."""
    r = compare_measure({"a": 50, "b": 60, "c": 70}, {"a": 55, "b": 65, "c": 80},
                        status_rule="ER", unit="%")
    assert np.isnan(r.status.kappa) and any("status kappa is undefined" in w
                                            for w in r.warnings)


def test_the_status_kappa_has_a_bootstrap_interval():
    """As compare_her2's kappas have (a statistician's walk-through: the status kappa had
    none); the same cases in another order, the same interval."""
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 100, 40)
    b = np.clip(a + rng.normal(0, 8, 40), 0, 100)
    r = compare_measure(list(a), list(b), status_rule="ER", unit="%").status
    lo, hi = r.kappa_ci95
    assert lo < r.kappa <= hi <= 1.0 and hi - lo < 1.0
    perm = rng.permutation(40)
    again = compare_measure(list(a[perm]), list(b[perm]), status_rule="ER", unit="%").status
    assert again.kappa_ci95 == r.kappa_ci95 and again.kappa_linear_ci95 == r.kappa_linear_ci95
