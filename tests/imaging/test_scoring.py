"""Tests of qdmed.imaging._scoring, _her2_calibration, _her2_score, _kappa and _segmentation_match:
positivity, H-score, phenotypes, HER2, kappa, F1."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qdmed.errors import InputError, UnknownNameError
from qdmed.imaging._her2_calibration import Her2Calibration, calibrate_her2
from qdmed.imaging._her2_score import score_her2
from qdmed.imaging._kappa import cohen_kappa
from qdmed.imaging._scoring import (
    BREAST_RULES,
    MarkerGate,
    h_score,
    percent_positive,
    phenotype,
    score_positivity,
)
from qdmed.imaging._segmentation_match import f1_at_iou


# ----------------------------------------------------------------------- positivity, H-score
def test_positivity_and_percent_positive():
    df = pd.DataFrame({"ER_nucleus_mean": [0.0, 1.0, 2.0, np.nan]}, index=[5, 6, 7, 8])
    pos = score_positivity(df, marker="ER", compartment="nucleus", threshold=1.0)
    assert pos.tolist() == [False, True, True, False]
    assert list(pos.index) == [5, 6, 7, 8] and pos.name == "ER_positive"
    # the NaN cell (empty compartment: nothing measured) is left out of the denominator,
    # as h_score(nan_policy='omit') does
    assert percent_positive(df, marker="ER", compartment="nucleus", threshold=1.0) == \
        pytest.approx(200 / 3)
    assert h_score(df, marker="ER", compartment="nucleus", thresholds=(1.0, 5.0, 9.0),
                   nan_policy="omit").percent_positive == pytest.approx(200 / 3)


def test_score_markers_uses_the_gate_statistic_and_gates_skip_nan_cells():
    from qdmed.imaging._scoring import MarkerGate, gates_from_negative_controls, score_markers

    df = pd.DataFrame({"ER_nucleus_mean": [1.0, 1.0], "ER_nucleus_total": [60.0, 40.0]})
    out = score_markers(df, {"ER": MarkerGate("nucleus", 50.0, "total")})
    assert out["percent_positive"]["ER"] == 50.0 and out["gates"]["ER"]["statistic"] == "total"
    assert score_markers(df, {"ER": ("nucleus", 0.5)})["percent_positive"]["ER"] == 100.0
    neg = pd.DataFrame({"ER_nucleus_mean": np.r_[np.linspace(0.0, 1.0, 50), np.nan]})
    gate = gates_from_negative_controls({"neg": neg}, {"ER": "neg"})["ER"]
    assert gate.threshold == pytest.approx(np.quantile(np.linspace(0.0, 1.0, 50), 0.99))


def test_h_score_constructed_distribution():
    # 40 negative, 30 weak, 20 moderate, 10 strong -> H = 30 + 2*20 + 3*10 = 100
    v = np.r_[np.full(40, 0.5), np.full(30, 1.5), np.full(20, 2.5), np.full(10, 9.0)]
    df = pd.DataFrame({"PR_nucleus_mean": np.random.default_rng(0).permutation(v)})
    h = h_score(df, marker="PR", compartment="nucleus", thresholds=(1, 2, 3))
    assert h.h_score == pytest.approx(100.0)
    assert (h.percent_negative, h.percent_weak, h.percent_moderate, h.percent_strong) == pytest.approx((40, 30, 20, 10))
    assert h.percent_positive == pytest.approx(60.0)
    assert h.n_cells == 100
    json.dumps(h.to_dict())
    # bin edges belong to the upper bin
    edge = h_score(pd.DataFrame({"PR_nucleus_mean": [1.0, 2.0, 3.0]}), marker="PR", compartment="nucleus", thresholds=(1, 2, 3))
    assert edge.h_score == pytest.approx(200.0)


def test_h_score_errors_and_nan_policy():
    df = pd.DataFrame({"PR_nucleus_mean": [0.0, np.nan, 5.0]})
    with pytest.raises(InputError, match="increasing"):
        h_score(df, marker="PR", compartment="nucleus", thresholds=(2, 1, 3))
    with pytest.raises(InputError, match="NaN"):
        h_score(df, marker="PR", compartment="nucleus", thresholds=(1, 2, 3))
    assert h_score(df, marker="PR", compartment="nucleus", thresholds=(1, 2, 3), nan_policy="omit").h_score == 150.0
    with pytest.raises(UnknownNameError, match="PR") as err:
        h_score(df, marker="Ki67", compartment="nucleus", thresholds=(1, 2, 3))
    assert isinstance(err.value, KeyError)
    with pytest.raises(UnknownNameError, match="membrane"):
        h_score(df, marker="PR", compartment="nuclei", thresholds=(1, 2, 3))


# ----------------------------------------------------------------------- phenotypes
def test_breast_phenotypes():
    df = pd.DataFrame(
        {
            "HER2_membrane_mean": [5, 5, 0, 0, 0, 0],
            "ER_nucleus_mean": [5, 0, 5, 0, 0, 0],
            "PR_nucleus_mean": [0, 0, 0, 5, 0, np.nan],
        }
    )
    gates = {"HER2": MarkerGate("membrane", 1.0), "ER": ("nucleus", 1.0), "PR": ("nucleus", 1.0)}
    got = phenotype(df, "breast", gates=gates).tolist()
    # a NaN (empty nucleus compartment) is neither positive nor negative: not triple negative
    assert got == ["luminal HER2+", "HER2-enriched", "luminal HER2-", "luminal HER2-", "triple negative", "unmeasured"]
    assert phenotype(df, "breast", gates=gates, unmeasured="n/a").tolist()[-1] == "n/a"
    # a NaN the first satisfied rule does not need leaves the phenotype decided
    df2 = pd.DataFrame({"HER2_membrane_mean": [5, 0, 5], "ER_nucleus_mean": [5, 5, np.nan],
                        "PR_nucleus_mean": [np.nan, 0, 0]})
    assert phenotype(df2, "breast", gates=gates).tolist() == [
        "luminal HER2+", "luminal HER2-", "unmeasured"]  # ER NaN decides HER2+ luminal/enriched
    rules = {"luminal": {"ER": True}, "CK+": {"CK": True}}
    df3 = pd.DataFrame({"ER_nucleus_mean": [5.0, 0.0, np.nan], "CK_cytoplasm_mean": [np.nan, np.nan, 5.0]})
    g3 = {"ER": ("nucleus", 1.0), "CK": ("cytoplasm", 1.0)}
    assert phenotype(df3, rules, gates=g3).tolist() == ["luminal", "unmeasured", "unmeasured"]
    assert list(BREAST_RULES) == ["luminal HER2+", "HER2-enriched", "luminal HER2-", "triple negative"]


def test_breast_phenotypes_take_her2_from_the_cells_categories():
    """HER2 from each cell's category, read as ASCO/CAP 2018 reads a tumour's (Wolff et al.
    2018: 3+ positive, 0 and 1+ negative, 2+ equivocal), not from a gate: a review found 29 % of an
    MCF-7 (1+) slide's cells called "luminal HER2+" by a gate at a HER2-0 line's 99th
    percentile, every one of them 1+. No HER2 gate is then needed."""
    df = pd.DataFrame({"HER2_membrane_mean": [5.0] * 6,  # all above any HER2 gate
                       "ER_nucleus_mean": [5, 0, 5, 0, 0, 5],
                       "PR_nucleus_mean": [0, 0, 0, 0, 0, 0]})
    gates = {"ER": ("nucleus", 1.0), "PR": ("nucleus", 1.0)}
    cats = ["3+", "3+", "1+", "0", "2+", None]
    got = phenotype(df, "breast", gates=gates, her2_category=cats).tolist()
    assert got == ["luminal HER2+", "HER2-enriched", "luminal HER2-", "triple negative",
                   "HER2 2+ (equivocal)", "unmeasured"]
    # a HER2 gate, when there is one, does not override the categories
    assert phenotype(df, "breast", gates={**gates, "HER2": ("membrane", 1.0)},
                     her2_category=cats).tolist() == got
    with pytest.raises(InputError, match=r"her2_category holds 4\+"):
        phenotype(df, "breast", gates=gates, her2_category=["4+"] * 6)
    with pytest.raises(InputError, match="one category per cell"):
        phenotype(df, "breast", gates=gates, her2_category=["0"])
    # categories as a pandas Series are aligned on the table's index (a review's categories
    # of another selection were matched by position: 226 of 438 phenotypes changed, unsaid)
    reversed_ = pd.Series(cats, index=df.index)[::-1]
    assert phenotype(df, "breast", gates=gates, her2_category=reversed_).tolist() == got
    with pytest.raises(InputError, match="her2_category is a pandas Series whose index"):
        phenotype(df.iloc[1:], "breast", gates=gates, her2_category=pd.Series(cats[:5]))
    from qdmed.imaging import score_markers

    sm = score_markers(df, gates, her2_category=cats)
    assert sm["phenotypes"]["HER2 2+ (equivocal)"] == 1 and "category" in sm["phenotype_her2"]
    assert "not ASCO/CAP HER2 positive" in score_markers(
        df, {**gates, "HER2": ("membrane", 1.0)})["phenotype_her2"]
    assert "phenotypes" not in score_markers(df, gates)  # neither a HER2 gate nor categories


def test_custom_rules_first_match_and_default():
    df = pd.DataFrame({"CD8_membrane_mean": [3.0, 0.0], "CD3_membrane_mean": [3.0, 0.0]})
    gates = {"CD8": ("membrane", 1.0), "CD3": ("membrane", 1.0)}
    rules = {"cytotoxic T": {"CD3": True, "CD8": True}, "T": {"CD3": True}}
    assert phenotype(df, rules, gates=gates, default="none").tolist() == ["cytotoxic T", "none"]
    with pytest.raises(UnknownNameError, match="CD4"):
        phenotype(df, {"helper": {"CD4": True}}, gates=gates)
    with pytest.raises(UnknownNameError, match="breast"):
        phenotype(df, "lung", gates=gates)


# ----------------------------------------------------------------------- HER2 rule table
CAL = Her2Calibration(faint=1.0, weak_moderate=3.0, intense=10.0)
LEVEL = {"none": 0.2, "faint": 2.0, "wm": 5.0, "intense": 20.0}


def her2_cells(*groups, n_total=100):
    """Cells from (percent, level, complete) groups; the rest unstained."""
    inten, compl = [], []
    for pct, level, complete in groups:
        inten += [LEVEL[level]] * pct
        compl += [1.0 if complete else 0.4] * pct
    rest = n_total - len(inten)
    inten += [LEVEL["none"]] * rest
    compl += [0.0] * rest
    return pd.DataFrame(
        {
            "cell_id": np.arange(1, n_total + 1),
            "HER2_membrane_mean": inten,
            "HER2_membrane_completeness": compl,
            "membrane_area_um2": 30.0,
            "cell_area_um2": 100.0,
        }
    )


# Each row of the ASCO/CAP 2018 table (imaging.md section 2.1; Wolff et al. 2018, Fig. 1)
@pytest.mark.parametrize(
    "groups, category, low, ultralow, rule_word",
    [
        # 3+: circumferential complete intense staining in > 10 %
        ([(20, "intense", True)], "3+", False, False, "intense complete"),
        ([(11, "intense", True)], "3+", False, False, "intense complete"),
        # 2+: weak to moderate complete staining in > 10 %
        ([(30, "wm", True)], "2+", None, False, "weak-to-moderate"),
        ([(6, "wm", True), (6, "intense", True)], "2+", None, False, "weak-to-moderate"),
        # 1+: incomplete faint staining in > 10 %
        ([(50, "faint", False)], "1+", True, False, "faint"),
        ([(11, "faint", False)], "1+", True, False, "faint"),
        # 0: no staining
        ([], "0", False, False, "null"),
        # 0: incomplete faint staining in <= 10 % (HER2-ultralow when > 0)
        ([(10, "faint", False)], "0", False, True, "ultralow"),
        ([(1, "faint", False)], "0", False, True, "ultralow"),
        # unusual pattern: intense complete but in <= 10 % -> 2+
        ([(10, "intense", True)], "2+", None, False, "unusual"),
        ([(2, "intense", True), (60, "faint", False)], "2+", None, False, "unusual"),
        # unusual pattern: moderate-to-intense but incomplete staining -> 2+
        ([(30, "intense", False)], "2+", None, False, "incomplete"),
        ([(30, "wm", False)], "2+", None, False, "incomplete"),
        # weak-to-moderate complete in only <= 10 % with faint elsewhere -> 1+
        ([(10, "wm", True), (20, "faint", False)], "1+", True, False, "faint"),
    ],
)
def test_her2_asco_cap_table(groups, category, low, ultralow, rule_word):
    s = score_her2(her2_cells(*groups), CAL)
    assert s.category == category, s.rule
    assert s.her2_low is low
    assert s.her2_ultralow is ultralow
    assert s.ish_reflex is (category == "2+")
    assert s.result == {"0": "negative", "1+": "negative", "2+": "equivocal", "3+": "positive"}[category]
    assert rule_word in s.rule


def test_her2_1plus_rule_says_whether_the_faint_staining_was_complete():
    # a review: 50 % faint complete cells read "faint/barely perceptible incomplete staining"
    s = score_her2(her2_cells((50, "faint", True)), CAL)
    assert s.category == "1+" and "incomplete" not in s.rule
    assert "complete in 50.0 %" in s.rule
    assert "incomplete staining in 50.0 %" in score_her2(her2_cells((50, "faint", False)),
                                                          CAL).rule


def test_her2_per_cell_categories_and_continuous_measures():
    df = her2_cells((10, "intense", True), (10, "intense", False), (20, "wm", True), (30, "faint", False))
    s = score_her2(df, CAL)
    cells = s.cells
    assert cells["category"].tolist() == ["3+"] * 10 + ["2+"] * 30 + ["1+"] * 30 + ["0"] * 30
    assert cells["intensity_class"].tolist()[:40] == ["intense"] * 20 + ["weak_moderate"] * 20
    assert (s.percent_cells_0, s.percent_cells_1plus, s.percent_cells_2plus, s.percent_cells_3plus) == (30, 30, 30, 10)
    assert s.percent_intense_complete == 10 and s.percent_weak_moderate_complete == 20
    assert s.percent_moderate_intense_incomplete == 10 and s.percent_stained == 70
    mean = (20 * 20 + 20 * 5 + 30 * 2 + 30 * 0.2) / 100
    assert s.mean_membrane_intensity == pytest.approx(mean)
    assert s.total_her2_load == pytest.approx(mean * 100 * 30.0)  # sum of mean x membrane area
    assert s.percent_positive_area == pytest.approx(70.0)
    d = s.to_dict()
    json.dumps(d)
    assert d["category"] == "2+" and d["calibration"]["intense"] == 10.0
    assert "cells" not in d and len(s.to_dict(include_cells=True)["cells"]["category"]) == 100
    assert "HER2 IHC 2+" in s.report()


def test_her2_parameters_and_mask():
    df = her2_cells((5, "intense", True))
    assert score_her2(df, CAL, intense_min_percent=5.0).category == "0"  # 5 % not > 5 %
    assert score_her2(df, CAL, percent_cutoff=4.0).category == "3+"
    mask = np.zeros(100, dtype=bool)
    mask[:10] = True
    assert score_her2(df, CAL, cell_mask=mask).category == "3+"  # 5 of 10 tumour cells
    # a pandas Series is aligned on the table's index, not taken by position (a review's
    # shuffled mask changed the result, unsaid); another index, or positions, are refused
    shuffled = pd.Series(mask, index=df.index).sample(frac=1.0, random_state=0)
    assert score_her2(df, CAL, cell_mask=shuffled).to_dict() == \
        score_her2(df, CAL, cell_mask=mask).to_dict()
    with pytest.raises(InputError, match="index is not the cell table's"):
        score_her2(df, CAL, cell_mask=shuffled.iloc[:50])
    with pytest.raises(InputError, match="cell_mask must be booleans.*got dtype int64"):
        score_her2(df, CAL, cell_mask=np.arange(10, dtype=np.int64))
    # completeness just below the "complete" cut-off makes intense staining incomplete
    df2 = her2_cells((30, "intense", True))
    df2["HER2_membrane_completeness"] = 0.85
    assert score_her2(df2, CAL, completeness_complete=0.9).category == "2+"
    assert score_her2(df2, CAL, completeness_complete=0.8).category == "3+"


def test_her2_single_intense_cell_is_not_a_slide_2plus():
    # one intense complete cell in 10,000 (a mis-segmented or noisy cell) with 20 % faint:
    # the literal "> 0 %" rule would call 2+ and reflex ISH; the default 1 % floor reads 1+
    df = her2_cells((1, "intense", True), (2000, "faint", False), n_total=10_000)
    assert score_her2(df, CAL).category == "1+"
    literal = score_her2(df, CAL, intense_min_percent=0.0)
    assert literal.category == "2+" and "(1 cells)" in literal.rule


def test_her2_intense_cells_below_the_unusual_floor_are_never_null():
    # 1 % intense complete (at the 1 % floor) and nothing else: not 2+ by default, but these
    # are not null-population noise either: 0 with the ultralow flag, cells named for review
    df = her2_cells((100, "intense", True), n_total=10_000)
    for ulp in (None, 5.0):
        s = score_her2(df, CAL, ultralow_min_percent=ulp)
        assert s.category == "0" and s.her2_ultralow, s.rule
        assert "(100 cells)" in s.rule and "review" in s.rule


def test_her2_nan_cells_are_omitted_on_request():
    df = her2_cells((20, "intense", True))
    df.loc[[0, 50], "HER2_membrane_mean"] = np.nan
    with pytest.raises(InputError, match="NaN"):
        score_her2(df, CAL)
    s = score_her2(df, CAL, nan_policy="omit")
    assert s.n_cells == 98 and s.category == "3+"
    assert s.percent_intense_complete == pytest.approx(100 * 19 / 98)
    df["HER2_membrane_mean"] = np.nan
    with pytest.raises(InputError, match="no cells"):
        score_her2(df, CAL, nan_policy="omit")


def test_her2_ultralow_floor_and_total_load_with_stained_mean():
    df = her2_cells((4, "faint", False))
    assert score_her2(df, CAL).her2_ultralow  # explicit cut-offs: no null floor
    assert not score_her2(df, CAL, ultralow_min_percent=5.0).her2_ultralow
    assert score_her2(df, CAL, ultralow_min_percent=3.0).her2_ultralow
    # the total HER2 load (mean x area) is reported whatever statistic grades the cells
    df["HER2_membrane_stained_mean"] = df["HER2_membrane_mean"]
    cal = Her2Calibration(faint=1.0, weak_moderate=4.0, intense=10.0,
                          statistic="stained_mean")
    s = score_her2(df, cal)
    assert s.total_her2_load == pytest.approx((4 * 2.0 + 96 * 0.2) * 30.0)


def test_her2_review_findings_few_cells_and_patterns_the_guideline_does_not_name():
    """A category from fewer than 100 cells carries a warning; staining stronger than faint
    in <= 10 % is 0 (ultralow: membrane staining in > 0 and <= 10 %) named for review, and a
    1+ reached with stronger staining says so rather than calling it all faint."""
    few = score_her2(her2_cells((20, "intense", True), n_total=50), CAL)
    assert few.category == "3+" and "50 cells only" in few.warnings[0]
    assert few.to_dict()["warnings"] == list(few.warnings)
    assert score_her2(her2_cells((20, "intense", True)), CAL).warnings == ()
    s = score_her2(her2_cells((9, "wm", False)), CAL)
    assert s.category == "0" and s.her2_ultralow and "not name: review" in s.rule
    s = score_her2(her2_cells((10, "wm", True), (20, "faint", False)), CAL)
    assert s.category == "1+" and "faint in 20.0 %, stronger in 10.0 %" in s.rule


def test_regions_grade_her2_on_cells_with_a_membrane_only():
    """A region needs min_cells cells with a gradable HER2 membrane, not just rows; a region
    with none is reported, not a crash (review finding)."""
    from qdmed.imaging._region_scores import _scored_row

    df = her2_cells((50, "intense", True))
    df.loc[3:, "HER2_membrane_mean"] = np.nan  # 3 of 100 cells with a membrane value
    row = _scored_row({"status": "ok"}, df, "core", 100, CAL, None)
    assert row.get("her2_category") is None
    assert "HER2 not scored: 3 of 100 cells have a gradable membrane" in row["message"]
    df["HER2_membrane_mean"] = np.nan
    row = _scored_row({"status": "ok"}, df, "core", 100, CAL, None)
    assert "0 of 100 cells" in row["message"]


def test_her2_errors():
    with pytest.raises(InputError, match="no cells"):
        score_her2(her2_cells().iloc[:0], CAL)
    with pytest.raises(UnknownNameError, match="completeness"):
        score_her2(her2_cells().drop(columns="HER2_membrane_completeness"), CAL)
    with pytest.raises(InputError, match="increasing"):
        Her2Calibration(faint=3.0, weak_moderate=2.0, intense=10.0)
    with pytest.raises(InputError, match="completeness_complete"):
        score_her2(her2_cells(), CAL, completeness_complete=1.5)


# ----------------------------------------------------------------------- calibration
def control(median, n=400, sigma=0.3, seed=0):
    v = median * np.exp(np.random.default_rng(seed).normal(0, sigma, n))
    # completeness 1: the whole membrane is stained, so its stained mean equals its mean
    return pd.DataFrame({"HER2_membrane_mean": v, "HER2_membrane_stained_mean": v,
                         "HER2_membrane_completeness": 1.0})


def test_calibration_rule_two_controls():
    neg, pos = control(1.0), control(50.0, seed=1)
    cal = calibrate_her2({"MCF-7": neg, "BT474": pos}, categories={"MCF-7": "0"})
    faint = np.quantile(neg["HER2_membrane_mean"], 0.95)
    m3 = np.median(pos["HER2_membrane_mean"])
    assert cal.faint == pytest.approx(faint)
    # log-linear interpolation between (0.5, faint) and (3, m3) at scores 1.5 and 2.5
    assert cal.weak_moderate == pytest.approx(faint * (m3 / faint) ** (1 / 2.5))
    assert cal.intense == pytest.approx(faint * (m3 / faint) ** (2 / 2.5))
    assert cal.faint < cal.weak_moderate < cal.intense
    d = cal.to_dict()
    json.dumps(d)
    assert [c["category"] for c in d["controls"]] == ["0", "3+"]  # BT474 found in the known table
    # the calibrated scorer calls the controls themselves correctly
    assert score_her2(pos, cal).category == "3+"
    # the 0 control itself: 5 % of its cells lie above the faint cut-off by construction;
    # the calibration's null noise floor is what new null cells would read, (400 * 0.05 +
    # 0.95) / 401 (order statistics, David & Nagaraja 2003), so it is HER2-null, not ultralow
    s0 = score_her2(neg, cal)
    assert s0.category == "0" and cal.null_stained_percent == pytest.approx(100 * 20.95 / 401)
    assert s0.percent_stained == pytest.approx(5.0) and not s0.her2_ultralow
    assert "null" in s0.rule
    # the score's figure: one point per scored cell, the cut-offs drawn
    import matplotlib.pyplot as plt

    fig = s0.plot()
    ax = fig.axes[0]
    assert sum(len(c.get_offsets()) for c in ax.collections) == s0.n_cells
    plt.close(fig)


def test_calibration_with_1plus_and_2plus_controls():
    ctrls = {"ZR-75-1": control(4.0), "x2": control(12.0, seed=2), "BT-474": control(50.0, seed=3)}
    cal = calibrate_her2(ctrls, categories={"x2": "2+"}, scale="linear")
    assert cal.faint == pytest.approx(np.quantile(ctrls["ZR-75-1"]["HER2_membrane_mean"], 0.05))
    # each anchor: the median of the control's cells that read at least faint (here the
    # 1+ control's upper 95 %; the others lie wholly above it)
    m1, m2, m3 = (np.median(v[v >= cal.faint]) for v in (
        ctrls[k]["HER2_membrane_mean"].to_numpy() for k in ("ZR-75-1", "x2", "BT-474")))
    assert m1 > np.median(ctrls["ZR-75-1"]["HER2_membrane_mean"])
    assert cal.weak_moderate == pytest.approx((m1 + m2) / 2)
    assert cal.intense == pytest.approx((m2 + m3) / 2)
    # no 0 control: said (a review calibrated on MCF-7 and BT-474, and a HER2-0 line scored
    # 1+: the 1+ line's 5 % quantile lay among its HER2-0 cells); kept through to_dict
    assert len(cal.warnings) == 1 and cal.warnings[0].startswith("no 0 control")
    assert Her2Calibration.from_dict(json.loads(json.dumps(cal.to_dict()))).warnings == \
        cal.warnings
    with_0 = calibrate_her2({"MDA-MB-468": control(1.0), **ctrls}, categories={"x2": "2+"})
    assert with_0.warnings == ()


def test_controls_scored_with_their_own_calibration():
    from qdmed.imaging import her2_controls_scored

    ctrls = {"MDA-MB-468": control(1.0), "MCF-7": control(4.0, seed=1),
             "BT-474": control(50.0, seed=2)}
    cal = calibrate_her2(ctrls, categories={"MDA-MB-468": "0", "MCF-7": "1+"})
    assert her2_controls_scored(cal, ctrls) == {
        "MDA-MB-468": {"category": "0", "scored": "0"},
        "MCF-7": {"category": "1+", "scored": "1+"},
        "BT-474": {"category": "3+", "scored": "3+"}}
    # a 3+ line whose membranes read half stained: intense but incomplete is 2+ (Wolff 2018)
    ctrls["BT-474"] = ctrls["BT-474"].assign(HER2_membrane_completeness=0.5)
    assert her2_controls_scored(cal, ctrls)["BT-474"] == {"category": "3+", "scored": "2+"}
    with pytest.raises(UnknownNameError, match="'MCF-7' is not among"):
        her2_controls_scored(cal, {"MDA-MB-468": ctrls["MDA-MB-468"]})


def test_calibration_figure_shows_the_cutoffs_and_where_they_came_from():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from qdmed.imaging import MarkerGate, plot_calibration

    ctrls = {"ZR-75-1": control(4.0), "x2": control(12.0, seed=2), "BT-474": control(50.0, seed=3)}
    cal = calibrate_her2(ctrls, categories={"x2": "2+"})
    neg = control(2.0, seed=4).assign(ER_nucleus_mean=lambda d: d["HER2_membrane_mean"])
    gate = MarkerGate("nucleus", float(np.quantile(neg["ER_nucleus_mean"], 0.99)))
    fig = plot_calibration({**ctrls, "neg": neg}, her2=cal, gates={"ER": gate},
                           negatives={"ER": "neg"})
    dist, anchors, gated = fig.axes
    # the three cut-offs as vertical lines where the calibration put them
    xs = sorted(line.get_xdata()[0] for line in dist.lines)
    assert xs == pytest.approx(list(cal.cutoffs))
    # the anchors: (0.5, faint) and each score's control median over its cells at or above
    # the faint cut-off; cut-offs at 1.5 and 2.5
    pts = anchors.lines[1]
    m = [np.median(v[v >= cal.faint]) for v in (ctrls[k]["HER2_membrane_stained_mean"]
                                                 for k in ("ZR-75-1", "x2", "BT-474"))]
    assert list(pts.get_xdata()) == [0.5, 1.0, 2.0, 3.0]
    assert list(pts.get_ydata()) == pytest.approx([cal.faint, *m])
    assert list(anchors.lines[2].get_ydata()) == pytest.approx([cal.weak_moderate, cal.intense])
    assert gated.lines[0].get_xdata()[0] == pytest.approx(gate.threshold)
    assert "1.0 % above" in " ".join(t.get_text() for t in gated.texts)
    plt.close(fig)
    # tables that are not the calibration's, a gate without its control: said so
    with pytest.raises(InputError, match="'x2': its cell table is not the one"):
        plot_calibration({**ctrls, "x2": control(20.0, seed=2)}, her2=cal)
    low = ctrls["ZR-75-1"].copy()  # same cells and median, another low tail (faint cut-off)
    tail = low["HER2_membrane_stained_mean"] < low["HER2_membrane_stained_mean"].quantile(0.1)
    low.loc[tail, "HER2_membrane_stained_mean"] *= 0.5
    with pytest.raises(InputError, match="put the faint cut-off at .* not the tables"):
        plot_calibration({**ctrls, "ZR-75-1": low}, her2=cal)
    # a calibration whose cut-offs another rule placed (an older qdmed's anchors, the
    # medians of all the controls' cells): said, not drawn off the curve (a review)
    import dataclasses

    older = dataclasses.replace(cal, weak_moderate=cal.weak_moderate * 0.9)
    with pytest.raises(InputError, match=r"drawn by another rule \(an older qdmed\?\)"):
        plot_calibration(ctrls, her2=older)
    with pytest.raises(InputError, match="'neg': no cell has a value of ER_nucleus_mean"):
        plot_calibration({**ctrls, "neg": neg.assign(ER_nucleus_mean=np.nan)},
                         gates={"ER": gate}, negatives={"ER": "neg"})
    with pytest.raises(InputError, match="need their negative control"):
        plot_calibration(ctrls, gates={"ER": gate})
    with pytest.raises(InputError, match="nothing to plot"):
        plot_calibration(ctrls)
    # background-subtracted intensities at or below zero: a linear axis shows every cell
    shifted = {k: v.assign(HER2_membrane_stained_mean=v["HER2_membrane_stained_mean"] - 5)
               for k, v in ctrls.items()}
    lin = calibrate_her2(shifted, categories={"x2": "2+"}, scale="linear")
    fig = plot_calibration(shifted, her2=lin)
    assert fig.axes[0].get_xscale() == "linear" and fig.axes[0].get_xlim()[0] < lin.faint
    plt.close("all")


@settings(max_examples=40, deadline=None)
@given(
    low=st.floats(0.1, 10.0),
    ratio=st.floats(3.0, 1000.0),
    sigma=st.floats(0.01, 0.4),
    scale=st.sampled_from(["log", "linear"]),
)
def test_calibration_cutoffs_monotone(low, ratio, sigma, scale):
    cal = calibrate_her2(
        {"neg": control(low, n=200, sigma=sigma), "pos": control(low * ratio, n=200, sigma=sigma, seed=1)},
        categories={"neg": "0", "pos": "3+"},
        scale=scale,
    )
    assert 0 < cal.faint < cal.weak_moderate < cal.intense


def test_calibration_errors():
    with pytest.raises(UnknownNameError, match="MCF-7"):
        calibrate_her2({"MCF-7": control(1.0), "BT474": control(50.0)})
    with pytest.raises(InputError, match="3\\+ control"):
        calibrate_her2({"a": control(1.0), "b": control(5.0)}, categories={"a": "0", "b": "2+"})
    with pytest.raises(InputError, match="0 or 1\\+"):
        calibrate_her2({"a": control(10.0), "b": control(50.0)}, categories={"a": "2+", "b": "3+"})
    with pytest.raises(InputError, match="not ordered"):
        calibrate_her2({"a": control(50.0), "b": control(1.0)}, categories={"a": "0", "b": "3+"})
    # anchors out of order although the derived cut-offs would still increase: 1+ median
    # below the 0 control's faint cut-off, 3 % of its cells above it (a 1+ case needs > 10 %)
    with pytest.raises(InputError, match=r"not ordered like their scores: 3\.2 % of the 1\+ "
                                         r"control's cells read at least faint"):
        calibrate_her2({"a": control(3.0, sigma=0.3), "b": control(2.9, seed=1),
                        "c": control(60.0, seed=2)},
                       categories={"a": "0", "b": "1+", "c": "3+"})
    with pytest.raises(InputError, match="category"):
        calibrate_her2({"a": control(1.0)}, categories={"a": "4+"})
    with pytest.raises(InputError, match="at least"):
        calibrate_her2({"a": control(1.0, n=3), "b": control(50.0)}, categories={"a": "0", "b": "3+"})
    # below 0.9, a 0 control would score 1+ with its own calibration
    with pytest.raises(InputError, match=r"faint_quantile must be in \[0.9, 1\)"):
        calibrate_her2({"a": control(1.0), "b": control(50.0)}, categories={"a": "0", "b": "3+"},
                       faint_quantile=0.85)


# ----------------------------------------------------------------------- kappa
def test_cohen_kappa_textbook_example():
    # 50 items, both "yes" 20, A yes/B no 5, A no/B yes 10, both "no" 15:
    # p_o = 0.70, p_e = 0.5*0.6 + 0.5*0.4 = 0.50, kappa = 0.2/0.5 = 0.4
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)


def test_cohen_kappa_weighted_hand_computed():
    # table O (rows rater A, cols rater B), n = 30; row sums 12,12,6; col sums 11,12,7
    table = np.array([[10, 2, 0], [1, 8, 3], [0, 2, 4]])
    a, b = [], []
    for i in range(3):
        for j in range(3):
            a += [i] * table[i, j]
            b += [j] * table[i, j]
    # unweighted: p_o = 22/30, p_e = (132 + 144 + 42)/900 -> (660 - 318)/(900 - 318) = 342/582
    assert cohen_kappa(a, b) == pytest.approx(342 / 582)
    # linear (w = 0.5, 1): observed 8*0.5/30 = 120/900; expected (432*0.5 + 150)/900 = 366/900
    assert cohen_kappa(a, b, weights="linear") == pytest.approx(1 - 120 / 366)
    # quadratic (w = 0.25, 1): observed 60/900; expected (108 + 150)/900
    assert cohen_kappa(a, b, weights="quadratic") == pytest.approx(1 - 60 / 258)
    # with HER2 labels and explicit ordering
    labels = ["0", "1+", "2+", "3+"]
    ha = [labels[i] for i in a]
    hb = [labels[i] for i in b]
    assert cohen_kappa(ha, hb, weights="linear", labels=labels[:3]) == pytest.approx(1 - 120 / 366)


def test_cohen_kappa_her2_scale_matches_scikit_learn():
    """A 4 x 4 table of HER2 scores in which neither rater used 2+. Reference values from
    scikit-learn 1.9.1, ``cohen_kappa_score(a, b, weights=w, labels=['0', '1+', '2+',
    '3+'])``: 0.6666666666666667 (unweighted), 0.7506925207756233 (linear),
    0.8148148148148149 (quadratic). Without ``labels`` scikit-learn spans only the observed
    categories (linear 0.7238658777120316, quadratic 0.7840755735492577): a 1+/3+
    disagreement would weigh one step instead of two. qdmed takes the HER2 scale when every
    label is a HER2 category."""
    cats = ["0", "1+", "2+", "3+"]
    table = np.array([[20, 5, 0, 1], [4, 15, 0, 2], [0, 0, 0, 0], [0, 1, 0, 12]])
    a, b = [], []
    for i in range(4):
        for j in range(4):
            a += [cats[i]] * table[i, j]
            b += [cats[j]] * table[i, j]
    for weights, ref in ((None, 0.6666666666666667), ("linear", 0.7506925207756233),
                         ("quadratic", 0.8148148148148149)):
        assert cohen_kappa(a, b, weights=weights) == pytest.approx(ref, abs=1e-12)
        assert cohen_kappa(a, b, weights=weights, labels=cats) == pytest.approx(ref, abs=1e-12)
    observed = ["0", "1+", "3+"]  # the observed categories only, given explicitly
    assert cohen_kappa(a, b, weights="linear", labels=observed) == \
        pytest.approx(0.7238658777120316, abs=1e-12)
    assert cohen_kappa(a, b, weights="quadratic", labels=observed) == \
        pytest.approx(0.7840755735492577, abs=1e-12)


def test_cohen_kappa_integer_and_ordered_categorical_scales():
    """Integer ratings span every integer from the smallest to the largest, so HER2 read as
    0-3 gives compare_her2's weighted kappa (a biostatistician's walk-through: 0.586 for
    0.628 with nobody at 2); the same table as the HER2 strings (the scikit-learn reference
    of test_cohen_kappa_her2_scale_matches_scikit_learn). An ordered Categorical's order is
    its scale (it had been sorted alphabetically: -0.43 for 0.0)."""
    import pandas as pd

    table = np.array([[20, 5, 0, 1], [4, 15, 0, 2], [0, 0, 0, 0], [0, 1, 0, 12]])
    a, b = [], []
    for i in range(4):
        for j in range(4):
            a += [i] * table[i, j]
            b += [j] * table[i, j]
    assert cohen_kappa(a, b, weights="linear") == pytest.approx(0.7506925207756233, abs=1e-12)
    assert cohen_kappa(np.array(a) + 5, np.array(b) + 5, weights="quadratic") == \
        pytest.approx(0.8148148148148149, abs=1e-12)  # any origin
    lo, mid, hi = "lo", "mid", "hi"
    c = pd.Categorical([lo, hi, mid, lo], categories=[lo, mid, hi], ordered=True)
    d = pd.Categorical([lo, mid, hi, hi], categories=[lo, mid, hi], ordered=True)
    want = cohen_kappa([0, 2, 1, 0], [0, 1, 2, 2], weights="linear")
    assert want == pytest.approx(0.0, abs=1e-12)
    assert cohen_kappa(c, d, weights="linear") == pytest.approx(want, abs=1e-12)
    assert cohen_kappa(pd.Series(c), pd.Series(d), weights="linear") == \
        pytest.approx(want, abs=1e-12)
    with pytest.raises(InputError, match="not both ordered Categoricals of the same"):
        cohen_kappa(c, d.reorder_categories([hi, mid, lo]), weights="linear")


def test_cohen_kappa_edges():
    assert cohen_kappa([1, 2, 3], [1, 2, 3]) == 1.0
    assert np.isnan(cohen_kappa([1, 1], [1, 1]))
    with pytest.raises(InputError, match="same length"):
        cohen_kappa([1, 2], [1])
    with pytest.raises(UnknownNameError, match="quadratic"):
        cohen_kappa([1], [1], weights="cubic")
    with pytest.raises(InputError, match="not in labels"):
        cohen_kappa([1, 5], [1, 1], labels=[1, 2])


# ----------------------------------------------------------------------- F1 at IoU
def test_f1_at_iou_exact():
    true = np.zeros((40, 60), dtype=np.int32)
    true[0:10, 0:10] = 1
    true[0:10, 20:30] = 2
    true[20:30, 0:10] = 3
    true[20:30, 20:30] = 4
    pred = np.zeros_like(true)
    pred[0:10, 0:10] = 11  # exact: IoU 1
    pred[0:10, 22:32] = 12  # shifted 2: IoU 80/120 = 0.667
    pred[20:30, 5:15] = 13  # shifted 5: IoU 50/150 = 0.333 (no match)
    pred[30:40, 40:50] = 14  # false positive; true 4 missed
    m = f1_at_iou(pred, true, iou=0.5)
    assert (m.n_pred, m.n_true, m.n_matched) == (4, 4, 2)
    assert (m.precision, m.recall, m.f1) == (0.5, 0.5, 0.5)
    assert m.mean_matched_iou == pytest.approx((1 + 80 / 120) / 2)
    m = f1_at_iou(pred, true, iou=0.3)
    assert m.n_matched == 3 and m.f1 == pytest.approx(0.75)
    json.dumps(m.to_dict())


def test_f1_at_iou_low_threshold_one_to_one():
    true = np.zeros((10, 20), dtype=np.int32)
    true[:, 0:10] = 1
    true[:, 10:20] = 2
    pred = np.ones_like(true)  # one object covering both: IoU 0.5 with each
    m = f1_at_iou(pred, true, iou=0.1)
    assert m.n_matched == 1 and m.precision == 1.0 and m.recall == 0.5
    empty = f1_at_iou(np.zeros_like(true), true)
    assert empty.f1 == 0.0 and np.isnan(empty.precision)
    with pytest.raises(InputError, match="same shape"):
        f1_at_iou(pred[:, :5], true)


def test_a_control_table_without_the_column_is_named():
    """A review: calibrate with a control's cell table lacking HER2 said which column was
    missing but not which control."""
    from qdmed.imaging import calibrate_her2

    bare = pd.DataFrame({"DAPI_nucleus_mean": [1.0, 2.0]})
    with pytest.raises(UnknownNameError, match=r"^control 'MDA-MB-468': Column "
                                               r"'HER2_membrane_stained_mean'"):
        calibrate_her2({"MDA-MB-468": bare, "BT-474": bare})


def test_her2_stained_min_completeness_needs_visible_staining():
    # 30 % of cells with a faint ring mean but under 10 % of their membrane stained (a
    # brighter tissue's unstained cells): 1+ by intensity alone, 0 when staining must show
    df = her2_cells((30, "faint", False))
    df.loc[:29, "HER2_membrane_completeness"] = 0.05
    assert score_her2(df, CAL).category == "1+"
    s = score_her2(df, CAL, stained_min_completeness=0.1)
    assert s.category == "0" and s.percent_stained == 0.0
    assert "30.0 % of cells at or above the faint cut-off count as unstained" in s.rule
    assert dict(s.parameters)["stained_min_completeness"] == 0.1
    assert (s.cells["intensity_class"].iloc[:30] == "none").all()
    # cells with 40 % stained stay faint
    assert score_her2(her2_cells((30, "faint", False)), CAL,
                      stained_min_completeness=0.1).category == "1+"
    for bad in (-0.1, 0.95, float("nan")):
        with pytest.raises(InputError, match="stained_min_completeness"):
            score_her2(df, CAL, stained_min_completeness=bad)


def _control_tables(values0, rng, statistic: str) -> dict:
    """Cell tables of a 0 control of ``values0`` and synthetic 1+ and 3+ controls."""
    col = f"HER2_membrane_{statistic}"
    ctrl = {"A": (values0, 0.5), "B": (rng.uniform(20, 40, 300), 0.5),
            "C": (rng.uniform(150, 250, 300), 1.0)}
    return {k: pd.DataFrame({col: v, "HER2_membrane_completeness": c})
            for k, (v, c) in ctrl.items()}


def _calibrated_on(values0, rng, statistic: str, **kw):
    """calibrate_her2 on a 0 control of ``values0`` and synthetic 1+ and 3+ controls."""
    return calibrate_her2(_control_tables(values0, rng, statistic), statistic=statistic,
                          categories={"A": "0", "B": "1+", "C": "3+"}, **kw)


def test_stained_group_of_a_0_control_is_named():
    from qdmed.imaging._her2_calibration import stained_group

    rng = np.random.default_rng(2)
    null = rng.normal(1.0, 0.1, 950)
    # 5 % stained cells, as a synthetic MDA-MB-468 holds ~4 %: the 95th percentile falls
    # at their edge, among them or below them with a cell or two
    stained = rng.uniform(15, 30, 50)
    share, first, last, alt = stained_group(np.concatenate([null, stained]), 0.95)
    assert share == pytest.approx(0.05)
    assert first == pytest.approx(stained.min()) and last == pytest.approx(null.max())
    assert alt < 2 or alt > 15
    # a group far from 5 %, or no gap, is no cliff
    assert stained_group(np.concatenate([null, stained[:5]]), 0.95) is None  # 0.5 %
    assert stained_group(null, 0.95) is None
    assert stained_group(np.concatenate([null, rng.uniform(1.2, 30, 50)]), 0.95) is None
    # calibrate_her2 says so, with both places of the cut-off
    cal = _calibrated_on(np.concatenate([null, stained]), rng, "stained_mean")
    assert any("separate, stained group: 5.0 %" in w for w in cal.warnings), cal.warnings


def test_null_floor_leaves_the_0_controls_stained_group_out():
    # a 0 control of 950 null cells and 30 stained ones (3 %): its 95th percentile lies
    # among the null cells; the null floor counts the null cells above it only
    from qdmed.imaging import gate_noise_floor_percent

    rng = np.random.default_rng(5)
    null = rng.normal(1.0, 0.1, 950)
    cal = _calibrated_on(np.concatenate([null, rng.uniform(15, 30, 30)]), rng, "mean")
    n, q = 980, 0.95
    assert cal.stained_group_percent == pytest.approx(100 * 30 / n)
    # the cut-off's rank among all 980 cells, read among the 950 null ones
    assert cal.null_stained_percent == pytest.approx(100 * (1 - ((n - 1) * q + 1) / 951), abs=1e-6)
    assert cal.null_stained_percent < gate_noise_floor_percent(n, q)
    # kept through a file, and an older calibration without it keeps the old floor
    back = Her2Calibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert back.stained_group_percent == cal.stained_group_percent
    old = cal.to_dict()
    del old["stained_group_percent"]
    assert Her2Calibration.from_dict(old).null_stained_percent == gate_noise_floor_percent(n, q)
    with pytest.raises(InputError, match="stained_group_percent"):
        Her2Calibration(1.0, 2.0, 3.0, stained_group_percent=40.0)


def test_gap_faint_cutoff_does_not_move_with_the_stained_share():
    """faint_rule='gap': a 0 control's faint cut-off in the middle of the gap between its
    null cells and a separate stained group, wherever the quantile would fall."""
    import matplotlib.pyplot as plt

    from qdmed.imaging import plot_calibration

    rng = np.random.default_rng(8)
    null = rng.normal(1.0, 0.1, 950)
    stained = rng.uniform(15, 30, 70)
    quantile, gap = {}, {}
    for k in (30, 50, 70):  # 3.1 %, 5.0 %, 6.9 % of the cells stained
        v = np.concatenate([null, stained[:k]])
        quantile[k] = _calibrated_on(v, np.random.default_rng(1), "mean")
        cal = gap[k] = _calibrated_on(v, np.random.default_rng(1), "mean", faint_rule="gap")
        assert cal.faint_from_gap and not quantile[k].faint_from_gap
        assert cal.faint == pytest.approx(np.sqrt(stained[:k].min() * null.max()))
        assert "middle of the gap" in cal.rule and not cal.warnings
        # above every null cell: the floor is one in (null cells + 1)
        assert cal.null_stained_percent == pytest.approx(100 / (950 + 1))
        back = Her2Calibration.from_dict(json.loads(json.dumps(cal.to_dict())))
        assert back.faint_from_gap and back.null_stained_percent == cal.null_stained_percent
        tables = _control_tables(v, np.random.default_rng(1), "mean")
        # the plot redraws the cut-off from the tables and shades the gap
        fig = plot_calibration(tables, her2=cal)
        said = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        assert any(t.startswith("gap below the 0 control's stained group") for t in said)
        plt.close(fig)
    # the quantile sits among the null cells or among the stained ones (the cliff); the
    # gap's middle does not move with the share
    assert quantile[30].faint < 2 and quantile[70].faint > 15
    assert max(c.faint for c in gap.values()) / min(c.faint for c in gap.values()) < 1.2
    # no separate group: the quantile, as before, and said
    alone = _calibrated_on(null, np.random.default_rng(1), "mean", faint_rule="gap")
    assert not alone.faint_from_gap and alone.faint == pytest.approx(np.quantile(null, 0.95))
    assert any("no separate group" in w and "95 % quantile" in w for w in alone.warnings)
    no0 = _control_tables(null, np.random.default_rng(1), "mean")
    no0.pop("A")  # a 1+ control the lowest: its 5 % quantile, said
    low1 = calibrate_her2(no0, statistic="mean", categories={"B": "1+", "C": "3+"},
                          faint_rule="gap")
    assert not low1.faint_from_gap and any(w.startswith("faint_rule='gap' (--faint-rule "
                                                        "gap): no 0 control; the faint "
                                                        "cut-off is the 5 % quantile")
                                           for w in low1.warnings), low1.warnings
    # written only when true: a quantile calibration still reads in a qdmed without it
    assert "faint_from_gap" not in quantile[50].to_dict()
    assert not Her2Calibration.from_dict(quantile[50].to_dict()).faint_from_gap
    # a 1+ control under the gap's cut-off: the error says where the quantile would put it
    dim = _control_tables(np.concatenate([null, stained[:50]]), np.random.default_rng(1),
                          "mean")
    dim["B"]["HER2_membrane_mean"] = np.random.default_rng(2).uniform(2.0, 4.6, 300)
    with pytest.raises(InputError, match=r"middle of the gap .* faint_rule='quantile' "
                                         r"\(--faint-rule quantile\) puts it at their 95 %"):
        calibrate_her2(dim, statistic="mean", categories={"A": "0", "B": "1+", "C": "3+"},
                       faint_rule="gap")
    # ... and when it fell back to the quantile, the error says so
    dim = _control_tables(null, np.random.default_rng(1), "mean")
    dim["B"]["HER2_membrane_mean"] = np.random.default_rng(2).uniform(0.5, 1.1, 300)
    with pytest.raises(InputError, match=r"found no separate stained group .* its 95 % "
                                         r"quantile"):
        calibrate_her2(dim, statistic="mean", categories={"A": "0", "B": "1+", "C": "3+"},
                       faint_rule="gap")
    with pytest.raises(InputError, match="faint_from_gap needs"):
        Her2Calibration(1.0, 2.0, 3.0, faint_from_gap=True)
    with pytest.raises(InputError, match="faint_from_gap must be true or false"):
        Her2Calibration(1.0, 2.0, 3.0, stained_group_percent=3.0, faint_from_gap="yes")
    with pytest.raises(UnknownNameError, match=r"faint_rule must be one of \['quantile', 'gap'\]"):
        _calibrated_on(null, rng, "mean", faint_rule="middle")
