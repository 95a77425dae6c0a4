"""Joint HR/HER2 breast subtype: the HER2 status of each IHC category (ASCO/CAP 2018, Wolff
et al., J Clin Oncol 2018;36:2105, doi:10.1200/JCO.2018.77.8738: 3+ positive, 2+ equivocal,
0 and 1+ negative), HR positive when ER (positive or low positive) or PgR is positive
(ASCO/CAP 2020, Allison et al., doi:10.1200/JCO.19.02309), and the four groups of Howlader et
al. (J Natl Cancer Inst 2014;106:dju055, doi:10.1093/jnci/dju055)."""

import pytest

from qdmed.errors import InputError
from qdmed.imaging import breast_subtype


def st(status, borderline=False):
    return {"status": status, "borderline": borderline}


NEG, POS, LOW = st("negative"), st("positive"), st("low positive")


@pytest.mark.parametrize(("her2", "er", "pr", "subtype", "hr"), [
    ("3+", POS, POS, "HR+/HER2+", "positive"),
    ("3+", NEG, NEG, "HR-/HER2+", "negative"),
    ("3+", NEG, POS, "HR+/HER2+", "positive"),  # PgR alone makes HR positive
    ("1+", POS, NEG, "HR+/HER2-", "positive"),
    ("0", LOW, NEG, "HR+/HER2-", "positive"),  # ER low positive is reported positive
    ("0", NEG, NEG, "triple negative", "negative"),
    ("1+", NEG, NEG, "triple negative", "negative"),  # HER2-low is HER2 negative
    ("2+", POS, NEG, "HR+/HER2 equivocal", "positive"),
    ("2+", NEG, NEG, "HR-/HER2 equivocal", "negative"),
    ("1+", NEG, st("insufficient cells"), "HER2-, HR undetermined", "undetermined"),
    ("3+", NEG, None, "HER2+, HR undetermined", "undetermined"),
    ("0", None, POS, "HR+/HER2-", "positive"),  # a positive PgR decides without ER
])
def test_subtype_rules(her2, er, pr, subtype, hr):
    rs = {k: v for k, v in (("ER", er), ("PR", pr)) if v is not None}
    r = breast_subtype(her2, rs)
    assert (r.subtype, r.hr_status) == (subtype, hr)
    assert r.her2_status == {"0": "negative", "1+": "negative", "2+": "equivocal",
                             "3+": "positive"}[her2]


def test_borderline_and_notes():
    # triple negative with ER near its 1 % cut-off
    r = breast_subtype("0", {"ER": st("negative", True), "PR": NEG})
    assert r.label == "triple negative (borderline)"
    # HR positive on a borderline ER, but PgR is surely positive: not borderline
    assert not breast_subtype("1+", {"ER": st("low positive", True), "PR": POS}).borderline
    assert breast_subtype("1+", {"ER": st("low positive", True), "PR": NEG}).borderline
    low = breast_subtype("0", {"ER": LOW, "PR": NEG})
    assert any("ER low positive" in n for n in low.notes)
    eq = breast_subtype("2+", {"ER": POS, "PR": POS})
    assert any("in situ hybridisation" in n for n in eq.notes)
    d = eq.to_dict()
    assert d["label"] == "HR+/HER2 equivocal" and "10.1093/jnci/dju055" in d["reference"]


def test_bad_values_are_refused():
    with pytest.raises(InputError, match="HER2 category '4\\+'"):
        breast_subtype("4+", {"ER": POS})
    with pytest.raises(InputError, match="receptor status 'weak'"):
        breast_subtype("0", {"ER": st("weak")})


def test_borderline_is_about_the_1_percent_cutoff_only():
    """Only the 1 % cut-off decides a receptor's part in the HR group (ASCO/CAP 2020): ER
    at 12 % whose interval reaches 10 % is 'positive (borderline)' as a receptor status, but
    the tumour is HR+ either way (a review found the subtype flagged); ER at 1.5 % whose
    interval holds 1 % flags it. Statuses from receptor_status on counted nuclei."""
    import pandas as pd

    from qdmed.imaging import MarkerGate, receptor_status

    gates = {"ER": MarkerGate("nucleus", 1.0), "PR": MarkerGate("nucleus", 1.0)}

    def status(n_er):
        cells = pd.DataFrame({"ER_nucleus_mean": [5.0] * n_er + [0.0] * (200 - n_er),
                              "PR_nucleus_mean": [0.0] * 200})
        return receptor_status(cells, gates)

    twelve = status(24)
    assert twelve["ER"].label == "positive (borderline)"  # its interval reaches 10 %
    assert breast_subtype("0", twelve).label == "HR+/HER2-"
    low = status(3)
    assert low["ER"].status == "low positive" and low["ER"].ci95_percent[0] < 1.0
    assert breast_subtype("0", low).label == "HR+/HER2- (borderline)"
    # the same through the statuses' dicts (summary.json's)
    assert breast_subtype("0", {m: s.to_dict() for m, s in twelve.items()}).label == \
        "HR+/HER2-"


def test_a_case_under_the_highest_core_rule_keeps_each_status_with_its_interval():
    """cases.csv under --case-rule highest: each receptor's status comes with the corrected
    percentage it was read from and its interval, and the case's subtype is flagged only by
    the 1 % cut-off (a review: ER at 12 % whose interval reaches 10 % flagged the case
    'HR+/HER2- (borderline)', and ER_percent_positive_corrected was missing beside a status
    read from it)."""
    import pandas as pd

    from qdmed.imaging import MarkerGate, receptor_status
    from qdmed.imaging._region_scores import _highest_core_fields, score_fields

    gates = {"ER": MarkerGate("nucleus", 1.0, false_positive_percent=1.0, control_cells=500),
             "PR": MarkerGate("nucleus", 1.0)}
    cells = pd.DataFrame({"ER_nucleus_mean": [5.0] * 26 + [0.0] * 174,
                          "PR_nucleus_mean": [0.0] * 200})
    status = receptor_status(cells, gates)
    assert status["ER"].label == "positive (borderline)"  # 12.1 % corrected, CI reaches 10
    markers = {"percent_positive": {m: s.percent_positive for m, s in status.items()},
               "receptor_status": {m: s.to_dict() for m, s in status.items()}}
    core = {"region": "A1", "her2_category": "1+", "her2_ultralow": False,
            "her2_mean_membrane": 1.0, **score_fields(None, markers)}
    assert core["ER_percent_positive_ci95_low"] == status["ER"].ci95_percent[0]
    row = _highest_core_fields([core])
    assert row["ER_percent_positive_corrected"] == status["ER"].percent_positive_corrected
    assert row["ER_percent_positive_ci95_high"] == status["ER"].ci95_percent[1]
    assert row["ER_status"] == "positive (borderline)"
    assert row["subtype"] == breast_subtype("1+", status).label == "HR+/HER2-"
