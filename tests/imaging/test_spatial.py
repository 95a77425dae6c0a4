"""Spatial analysis of cell classes: nearest distances, neighbours within a radius and
neighbourhood enrichment, checked against point-process theory (Clark & Evans 1954), exact
enumeration of the labellings, and hand-computed cases; and `qdmed image spatial`."""

import itertools
import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from qdmed.errors import InputError
from qdmed.imaging import spatial_analysis, spatial_by_group, spatial_cells
from qdmed.imaging._spatial import (
    _classify,
    _group_expectation,
    _group_variance,
    _ordered_counts,
    _pairs,
)


def _table(x, y, cls, **extra):
    return pd.DataFrame({"cell_id": np.arange(1, len(x) + 1), "centroid_x_um": x,
                         "centroid_y_um": y, "phenotype": cls, **extra})


def _poisson(lam_per_um2, side_um, seed):
    rng = np.random.default_rng(seed)
    n = rng.poisson(lam_per_um2 * side_um ** 2)
    return rng.uniform(0, side_um, n), rng.uniform(0, side_um, n)


def test_poisson_pattern_matches_clark_evans_1954():
    # Clark PJ, Evans FC, Ecology 1954;35:445 (doi:10.2307/1931034): in a Poisson pattern
    # of density rho the mean nearest-neighbour distance is 1 / (2 sqrt(rho)), with SE
    # 0.26136 / sqrt(N rho); and the distribution G(r) = 1 - exp(-rho pi r^2). Cells far
    # enough from the edges (30 um: P(d > 30) = exp(-28)) see the whole neighbourhood.
    x, y = _poisson(0.01, 2000.0, seed=7)
    side = 2000.0
    lam = len(x) / side ** 2  # the observed density, as Clark & Evans define rho
    cells = _table(x, y, ["A"] * len(x))
    per = spatial_cells(cells, radius_um=10.0)
    inner = ((x > 30) & (x < side - 30) & (y > 30) & (y < side - 30))
    d = per["nearest_um:A"].to_numpy()[inner]
    n = inner.sum()
    se = 0.26136 / math.sqrt(n * lam)
    assert abs(d.mean() - 1 / (2 * math.sqrt(lam))) < 4 * se  # 5 um, SE 0.013 um
    g5 = 1 - math.exp(-lam * math.pi * 25)  # 0.544
    assert abs(np.mean(d <= 5.0) - g5) < 4 * math.sqrt(g5 * (1 - g5) / n)
    # neighbours within r of a typical point of a Poisson process: rho pi r^2 (Slivnyak);
    # the variance of the mean count is ~ 2 rho pi r^2 / n (each pair counted twice)
    counts = per["n_within_10um:A"].to_numpy(dtype=float)[inner]
    mu = lam * math.pi * 100
    assert abs(counts.mean() - mu) < 4.5 * math.sqrt(2 * mu / n)


def test_counts_and_distances_against_brute_force():
    rng = np.random.default_rng(3)
    x, y = rng.uniform(0, 200, 300), rng.uniform(0, 200, 300)
    cls = rng.choice(["A", "B", "C"], 300)
    per = spatial_cells(_table(x, y, cls), radius_um=15.0)
    d = np.hypot(x[:, None] - x[None], y[:, None] - y[None])
    np.fill_diagonal(d, np.inf)
    for c in "ABC":
        to = cls == c
        assert np.allclose(per[f"nearest_um:{c}"], d[:, to].min(axis=1))
        assert np.array_equal(per[f"n_within_15um:{c}"].to_numpy(dtype=int),
                              (d[:, to] <= 15.0).sum(axis=1))
    assert list(per["class"]) == list(cls)


def test_hand_computed_line_of_three_cells():
    # A at 0, B at 10, A at 30 um; radius 15: one pair (A-B). Random labelling of 3 cells
    # (2 A, 1 B) with 1 pair: E[ordered A-B] = 2 * 1 * 2 * 1 / (3 * 2) = 2/3, E[A-A] = 2/3
    cells = _table([0.0, 10.0, 30.0], [0.0, 0.0, 0.0], ["A", "B", "A"])
    r = spatial_analysis(cells, radius_um=15.0, n_permutations=0, within=None)
    assert r.classes == ("A", "B") and r.n_cells == (2, 1) and r.n_pairs == 1
    assert r.nearest_median_um == ((30.0, 15.0), (10.0, None))  # the lone B has no other B
    assert r.nearest_n == ((2, 2), (1, 0))
    assert r.mean_neighbours == ((0.0, 0.5), (1.0, 0.0))
    assert r.fraction_within == ((0.0, 0.5), (1.0, 0.0))
    assert np.allclose(r.expected_neighbours, ((1 / 3, 1 / 3), (2 / 3, 0.0)))
    # the three places of the B: ordered A-B counts 1, 1, 0 (mean 2/3, variance 2/9), A-A
    # counts 0, 0, 2 (mean 2/3, variance 8/9); a lone B never neighbours a B (no z)
    h = 1 / math.sqrt(2)
    assert np.allclose(np.array(r.z, dtype=float), ((-h, h), (h, np.nan)), equal_nan=True)
    assert r.p_enrichment[0][0] is None  # no permutations


def _exhaustive_moments(labels, groups, pairs, k):
    """Mean and variance of the ordered neighbour counts over every labelling within
    groups (enumerated)."""
    idx = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    total, square, count = np.zeros((k, k)), np.zeros((k, k)), 0
    for perms in itertools.product(*(itertools.permutations(labels[i]) for i in idx)):
        lab = labels.copy()
        for i, p in zip(idx, perms, strict=True):
            lab[i] = p
        m = _ordered_counts(lab, pairs, k)
        total += m
        square += m * m
        count += 1
    mean = total / count
    return mean, square / count - mean ** 2


def test_expected_neighbours_is_the_mean_over_every_labelling():
    # the join-count expectation under random labelling (Cliff & Ord 1981) is the exact
    # mean over all permutations of the labels within each group: enumerated here
    rng = np.random.default_rng(5)
    x, y = rng.uniform(0, 30, 9), rng.uniform(0, 30, 9)
    cells = _table(x, y, ["A", "B", "C", "A", "B", "A", "C", "A", "B"],
                   region=["r1"] * 5 + ["r2"] * 4)
    c = _classify(cells, ("phenotype",), "region", ("centroid_x_um", "centroid_y_um"))
    pairs = _pairs(c, 15.0)
    assert pairs.shape[1] > 3
    exact, var = _exhaustive_moments(c.label, c.group, pairs, len(c.classes))
    assert np.allclose(_group_expectation(c, pairs).sum(axis=0), exact, rtol=1e-12)
    # and so is the join-count variance under non-free sampling (Cliff & Ord 1981)
    assert np.allclose(_group_variance(c, pairs), var, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("radius", [8.0, 14.0, 25.0, 100.0])
def test_join_count_variance_is_the_variance_over_every_labelling(radius):
    # one group of 8 cells, 3 classes (3 A, 3 B, 2 C: 560 labellings), radii from sparse
    # neighbours to every pair (where no count can change: variance 0)
    rng = np.random.default_rng(int(radius))
    x, y = rng.uniform(0, 40, 8), rng.uniform(0, 40, 8)
    cells = _table(x, y, list("AAABBBCC"))
    c = _classify(cells, ("phenotype",), None, ("centroid_x_um", "centroid_y_um"))
    pairs = _pairs(c, radius)
    _, var = _exhaustive_moments(c.label, c.group, pairs, len(c.classes))
    assert np.allclose(_group_variance(c, pairs), var, rtol=1e-9, atol=1e-9)
    if radius == 100.0:
        assert pairs.shape[1] == 28 and np.all(_group_variance(c, pairs) == 0)


def test_rare_class_z_is_exact_and_does_not_depend_on_the_seed():
    # two B cells side by side among 1600 on a 10 um grid (radius 10.5: 3120 pairs). The
    # B-B count is 2 (ordered) with probability 3120 / C(1600, 2), else 0: z is exact
    # (the shuffles, all 0, once gave z ~1e10 from a rounding residue)
    yy, xx = np.mgrid[0:40, 0:40] * 10.0
    cls = np.array(["A"] * 1600, dtype=object)
    cls[[0, 1]] = "B"
    cells = _table(xx.ravel(), yy.ravel(), cls)
    p = 3120 / (1600 * 1599 / 2)
    z_exact = (2 - 2 * p) / (2 * math.sqrt(p * (1 - p)))
    for seed in (0, 1, 2):
        r = spatial_analysis(cells, radius_um=10.5, n_permutations=199, seed=seed,
                             within=None)
        assert r.n_pairs == 3120
        assert r.z[1][1] == pytest.approx(z_exact, rel=1e-9)  # 20.2
        # shuffles reaching 2: binomial(199, 0.0024), mean 0.49; more than 5: p < 1e-5
        assert 1 / 200 <= r.p_enrichment[1][1] <= 6 / 200


def test_too_many_pairs_are_refused_and_groups_of_two_images_warned():
    rng = np.random.default_rng(2)
    x, y = rng.uniform(0, 3000, 20000), rng.uniform(0, 3000, 20000)
    cells = _table(x, y, rng.choice(["A", "B"], 20000))
    # 20,000 cells within 3 mm of each other: ~2e8 pairs of the 5e7 allowed
    with pytest.raises(InputError, match="radius_um=3000: about .* neighbour pairs"):
        spatial_analysis(cells, radius_um=3000.0, n_permutations=0, within=None)
    # one case on two slides sharing coordinates: each group's own result warns as well
    two = pd.concat([cells[:300].assign(slide="s1"), cells[:300].assign(slide="s2")])
    per = spatial_by_group(two.assign(case="c1"), within="case", n_permutations=0)
    assert any("several slide values" in w for w in per["c1"].warnings)


def test_segregated_classes_are_enriched_with_their_own():
    yy, xx = np.mgrid[0:30, 0:30] * 12.0
    cls = np.where(xx.ravel() < 180, "tumour", "stroma")
    r = spatial_analysis(_table(xx.ravel(), yy.ravel(), cls), radius_um=13.0,
                         n_permutations=199, seed=2)
    (ss, st), (ts, tt) = r.z
    assert ss > 10 and tt > 10 and st < -10 and ts < -10 and st == ts
    assert r.p_enrichment[0][0] == pytest.approx(1 / 200)  # none of 199 reach it
    assert r.p_depletion[0][1] == pytest.approx(1 / 200)


def test_random_labels_give_no_enrichment():
    rng = np.random.default_rng(11)
    x, y = _poisson(0.005, 800.0, seed=11)
    cls = rng.choice(["A", "B", "C"], len(x), p=[0.5, 0.3, 0.2])
    r = spatial_analysis(_table(x, y, cls), radius_um=20.0, n_permutations=299, seed=1)
    z = np.array(r.z, dtype=float)
    assert np.all(np.abs(z) < 4)
    # the permutations' mean is the exact expectation: observed ~ expected
    assert np.allclose(r.mean_neighbours, r.expected_neighbours, atol=0.1)


def test_groups_keep_neighbours_and_shuffles_apart():
    # two TMA cores imaged at the same coordinates: with within=region no cell of one is a
    # neighbour of the other's; 'auto' finds the region (or the case) column
    rng = np.random.default_rng(4)
    x, y = rng.uniform(0, 300, 200), rng.uniform(0, 300, 200)
    one = _table(x, y, rng.choice(["A", "B"], 200))
    both = pd.concat([one.assign(region="A-1"), one.assign(region="A-2")], ignore_index=True)
    alone = spatial_analysis(one, radius_um=25.0, n_permutations=0)
    grouped = spatial_analysis(both, radius_um=25.0, n_permutations=0)
    assert grouped.within == ("region",) and grouped.n_groups == 2
    assert grouped.n_pairs == 2 * alone.n_pairs
    assert np.allclose(grouped.mean_neighbours, alone.mean_neighbours)
    assert np.allclose(grouped.nearest_median_um, alone.nearest_median_um)
    pooled = spatial_analysis(both, radius_um=25.0, n_permutations=0, within=None)
    assert pooled.within is None and pooled.n_pairs > 4 * alone.n_pairs  # x2 + the copies
    # a TMA's cells carry their core (region) and their case: grouped by core, as a case's
    # cores are separate pieces of tissue (a review: grouped by case, distances ran between
    # two cores of a patient)
    assert spatial_analysis(both.assign(case="c1"), n_permutations=0).within == ("region",)
    assert spatial_analysis(one.assign(case="c1"), n_permutations=0).within == ("case",)
    # a cohort's table: two slides that share coordinates never pair across slides
    cohort = pd.concat([one.assign(slide="s1"), one.assign(slide="s2")], ignore_index=True)
    by_slide = spatial_analysis(cohort, radius_um=25.0, n_permutations=0)
    assert by_slide.within == ("slide",) and by_slide.n_pairs == 2 * alone.n_pairs
    both_cols = spatial_analysis(cohort.assign(region="A-1"), n_permutations=0)
    assert both_cols.within == ("slide", "region") and both_cols.n_groups == 2
    per = spatial_by_group(cohort.assign(region="A-1"), n_permutations=0)
    assert list(per) == ["s1 / A-1", "s2 / A-1"]
    with pytest.raises(InputError, match="no column 'core'"):
        spatial_analysis(cohort, within=["slide", "core"])


def test_each_group_on_its_own():
    rng = np.random.default_rng(9)
    parts = []
    for core, kinds in (("A-1", ["A", "B"]), ("A-2", ["A", "C"]), ("B-1", ["B", "C"])):
        x, y = rng.uniform(0, 250, 150), rng.uniform(0, 250, 150)
        parts.append(_table(x, y, rng.choice(kinds, 150), region=core))
    cells = pd.concat(parts, ignore_index=True)
    res = spatial_by_group(cells, n_permutations=49, seed=3)
    assert list(res) == ["A-1", "A-2", "B-1"]
    assert all(r.classes == ("A", "B", "C") for r in res.values())
    assert res["A-1"].n_cells[2] == 0 and res["A-1"].nearest_median_um[0][2] is None
    assert not any("C (0)" in w for w in res["A-1"].warnings)  # absent is not "few"
    alone = spatial_analysis(parts[1], n_permutations=49, classes=("A", "B", "C"))
    assert alone.mean_neighbours == res["A-2"].mean_neighbours
    assert alone.nearest_median_um == res["A-2"].nearest_median_um
    # a group's shuffles do not depend on the other groups
    without = spatial_by_group(cells[cells.region != "A-1"], n_permutations=49, seed=3)
    assert without["B-1"].z == res["B-1"].z and without["A-2"].z == res["A-2"].z
    with pytest.raises(InputError, match="needs a column of groups"):
        spatial_by_group(cells.drop(columns="region"))


def test_class_from_marker_columns_and_missing_classes():
    cells = _table([0.0, 10.0, 20.0, 30.0], [0.0] * 4, [None] * 4,
                   ER_positive=pd.array([True, False, None, True], dtype="boolean"),
                   PR_positive=pd.array([True, True, True, False], dtype="boolean"))
    per = spatial_cells(cells, ["ER_positive", "PR_positive"], radius_um=10.5, within=None)
    assert list(per["class"].astype(object).where(per["class"].notna(), None)) == \
        ["ER+ PR+", "ER- PR+", None, "ER+ PR-"]
    assert per["nearest_um:ER- PR+"].iloc[0] == 10.0
    assert np.isnan(per["nearest_um:ER+ PR+"].iloc[2])  # unclassified: not measured
    r = spatial_analysis(cells, ["ER_positive", "PR_positive"], n_permutations=0)
    assert r.n_unclassified == 1 and sum(r.n_cells) == 3
    # a phenotype column of missing values only: nothing to measure, said, no crash
    empty = spatial_analysis(cells, n_permutations=10)
    assert empty.classes == () and "no cell has a class" in empty.warnings[0]


def test_warnings_for_few_cells_and_a_short_radius():
    yy, xx = np.mgrid[0:10, 0:10] * 30.0
    cls = np.array(["A"] * 95 + ["B"] * 5)
    r = spatial_analysis(_table(xx.ravel(), yy.ravel(), cls), radius_um=10.0,
                         n_permutations=20)
    text = " ".join(r.warnings)
    assert "fewer than 20 cells: B (5)" in text
    assert "nearest neighbour is 30 um, beyond the radius" in text
    assert "no two cells lie within 10 um" in text
    assert "20 permutations" in text


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"by": "missing"}, "no column 'missing'; class columns it has: phenotype"),
    ({"by": "area_um2"}, "holds numbers that are not whole"),
    ({"radius_um": 0}, "radius_um must be a positive"),
    ({"radius_um": "ten"}, "radius_um must be a number"),
    ({"n_permutations": -1}, "n_permutations must be a whole number"),
    ({"n_permutations": 9.5}, "n_permutations must be a whole number"),
    ({"n_permutations": 10**9}, r"from 0 to 99999 \(p-values resolve"),  # ran for days
    ({"within": "core"}, "within 'core': the cells table has no column 'core'"),
    ({"within": []}, "name at least one column of groups"),
    ({"xy_columns": ("X", "Y")}, "no column 'X', 'Y'"),
])
def test_bad_input_is_named(kwargs, match):
    cells = _table([0.0, 5.0], [0.0, 0.0], ["A", "B"], area_um2=[1.5, 2.0])
    with pytest.raises(InputError, match=match):
        spatial_analysis(cells, **kwargs)


def test_non_finite_centroid_names_the_cell():
    cells = _table([0.0, np.nan], [0.0, 0.0], ["A", "B"])
    with pytest.raises(InputError, match=r"row 1 \(cell_id 2\).*not a finite number"):
        spatial_analysis(cells)
    far = _table([-1e308, 1e308], [0.0, 0.0], ["A", "B"])  # overflowed the k-d tree
    with pytest.raises(InputError, match=r"row 0 \(cell_id 1\).*within 1e\+06 um"):
        spatial_analysis(far)
    with pytest.raises(InputError, match="pandas table"):
        spatial_analysis(np.zeros((2, 2)))


def test_result_is_reproducible_and_serialises():
    rng = np.random.default_rng(8)
    cells = _table(rng.uniform(0, 200, 150), rng.uniform(0, 200, 150),
                   rng.choice(["A", "B"], 150))
    a = spatial_analysis(cells, n_permutations=50, seed=4)
    assert a == spatial_analysis(cells, n_permutations=50, seed=4)
    d = json.loads(json.dumps(a.to_dict()))
    assert d["classes"] == ["A", "B"] and d["n_permutations"] == 50
    t = a.table()
    assert len(t) == 4 and list(t["from"]) == ["A", "A", "B", "B"]
    import matplotlib

    matplotlib.use("Agg")
    fig = a.plot()
    assert len(fig.axes) >= 3


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "qdmed", "image", "spatial", *args],
                          capture_output=True, text=True)


def test_spatial_cli_on_a_qupath_style_table(tmp_path):
    rng = np.random.default_rng(2)
    t = pd.DataFrame({"Centroid X µm": rng.uniform(0, 300, 120),
                      "Centroid Y µm": rng.uniform(0, 300, 120),
                      "Class": rng.choice(["Tumor", "Stroma"], 120)})
    src = tmp_path / "detections.tsv"
    t.to_csv(src, sep="\t", index=False)
    out = [tmp_path / "pairs.csv", tmp_path / "per_cell.parquet", tmp_path / "s.png"]
    r = _cli(str(src), "--by", "Class", "--xy", "Centroid X µm,Centroid Y µm",
             "--permutations", "99", "--table", str(out[0]), "--cells-out", str(out[1]),
             "--plot", str(out[2]), "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["classes"] == ["Stroma", "Tumor"] and d["n_permutations"] == 99
    assert all(p.is_file() for p in out)
    assert len(pd.read_csv(out[0])) == 4
    per = pd.read_parquet(out[1])  # with the centroids that join it back
    assert list(per.columns[:4]) == ["Centroid X µm", "Centroid Y µm", "class",
                                     "nearest_um:Stroma"] and len(per) == 120
    assert "n_within_20um:Tumor" in per.columns
    # typed with the Greek mu (U+03BC) instead of QuPath's micro sign (U+00B5), which look
    # alike: the same columns (a review was told its column was missing)
    r = _cli(str(src), "--by", "Class", "--xy", "Centroid X \u03bcm,Centroid Y \u03bcm",
             "--permutations", "99", "--cells-out", str(out[1]), "--json")
    assert r.returncode == 0, r.stderr
    assert list(pd.read_parquet(out[1]).columns[:2]) == ["Centroid X \u00b5m",
                                                         "Centroid Y \u00b5m"]


def test_spatial_cli_bad_input_is_one_line(tmp_path):
    src = tmp_path / "cells.csv"
    _table([0.0, 5.0], [0.0, 0.0], ["A", "B"]).to_csv(src, index=False)
    for extra, match in ((["--by", "nope"], "no column 'nope'"),
                         (["--table", str(tmp_path / "t.txt")], "--table"),
                         (["--xy", "a"], "--xy 'a'"),
                         (["--radius-um", "-1"], "(--radius-um) must be a positive")):
        r = _cli(str(src), *extra)
        assert r.returncode == 2, (extra, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and match in lines[0], r.stderr
    r = _cli(str(src), "--per-group")
    assert r.returncode == 2 and "--per-group writes one row per group" in r.stderr
    # outputs checked before any work: never the input, never each other
    for extra, match in ((["--cells-out", str(src)], "is the cells table read"),
                         (["--table", str(tmp_path / "o.csv"), "--cells-out",
                           str(tmp_path / "o.csv")], "name the same file"),
                         (["--table", str(tmp_path)], "give a file name ending in .csv")):
        r = _cli(str(src), *extra)
        assert r.returncode == 2 and match in r.stderr, r.stderr
    assert src.read_text().startswith("cell_id,")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("centroid_x_um,centroid_y_um,phenotype\n0,0,caf\u00e9\n".encode("cp1252"))
    r = _cli(str(latin))
    assert r.returncode == 2 and "is not UTF-8 text" in r.stderr
    r = _cli(str(tmp_path / "none.parquet"))
    assert r.returncode == 2 and "no such file" in r.stderr
    # no class column and no centroids: the table's columns listed once, not twice
    other = tmp_path / "other.csv"
    other.write_text("cell_id,x,y,kind\n1,0,0,A\n")
    r = _cli(str(other))
    assert r.returncode == 2 and r.stderr.count("x, y, kind") == 1, r.stderr


def test_spatial_of_a_header_only_table_says_it_has_no_cells(tmp_path):
    # a header-only CSV's columns have no number type: not "'centroid_x_um' is not numbers"
    src = tmp_path / "cells.csv"
    src.write_text("cell_id,centroid_x_um,centroid_y_um,phenotype\n")
    r = _cli(str(src), "--json")
    assert r.returncode == 0, r.stderr
    assert "the table has no cells" in r.stderr and json.loads(r.stdout)["classes"] == []


def test_p_values_against_every_labelling():
    # the permutation p-value estimates the exact tail probability over all labellings;
    # enumerated here for 8 cells (3 A, 3 B, 2 C: 560 distinct labellings)
    rng = np.random.default_rng(12)
    x, y = rng.uniform(0, 40, 8), rng.uniform(0, 40, 8)
    cls = np.array(["A", "A", "B", "A", "C", "B", "B", "C"])
    cells = _table(x, y, cls)
    c = _classify(cells, ("phenotype",), None, ("centroid_x_um", "centroid_y_um"))
    pairs = _pairs(c, 18.0)
    obs = _ordered_counts(c.label, pairs, 3)
    counts = np.array([_ordered_counts(np.array(p), pairs, 3)
                       for p in set(itertools.permutations(c.label))])
    exact_hi = (counts >= obs).mean(axis=0)
    r = spatial_analysis(cells, radius_um=18.0, n_permutations=20000, seed=0, within=None)
    got = np.array(r.p_enrichment, dtype=float)
    assert np.allclose(got, exact_hi, atol=0.015)


def test_spatial_cells_keeps_the_tables_index():
    rng = np.random.default_rng(6)
    cells = _table(rng.uniform(0, 100, 40), rng.uniform(0, 100, 40), rng.choice(["A", "B"], 40))
    cells.index = rng.permutation(np.arange(1000, 1040))
    cells.loc[cells.index[3], "phenotype"] = None
    sub = cells.iloc[::2]
    per = spatial_cells(sub, radius_um=30.0)
    assert per.index.equals(sub.index)
    x, y = sub["centroid_x_um"].to_numpy(), sub["centroid_y_um"].to_numpy()
    d = np.hypot(x[:, None] - x[None], y[:, None] - y[None])
    np.fill_diagonal(d, np.inf)
    known = sub["phenotype"].notna().to_numpy()
    to_a = known & (sub["phenotype"] == "A").to_numpy()
    assert np.allclose(per["nearest_um:A"].to_numpy()[known], d[known][:, to_a].min(axis=1))
    # two slides' tables stacked without a new index (each label twice): row by row
    twice = pd.concat([sub.assign(slide="s1"), sub.assign(slide="s2")])
    per2 = spatial_cells(twice, radius_um=30.0)
    assert len(per2) == 2 * len(sub) and per2.index.equals(twice.index)
    assert np.allclose(per2["nearest_um:A"].to_numpy()[:len(sub)][known],
                       per["nearest_um:A"].to_numpy()[known])


def test_what_the_classes_and_groups_are_read_from(tmp_path):
    rng = np.random.default_rng(1)
    n = 60
    base = _table(rng.uniform(0, 200, n), rng.uniform(0, 200, n), rng.choice(["A", "B"], n))
    # booleans with a gap, through a CSV (an object column of True/False/NaN)
    base["ER_positive"] = pd.array(rng.choice([True, False], n), dtype="boolean")
    base.loc[0, "ER_positive"] = pd.NA
    base.to_csv(tmp_path / "c.csv", index=False)
    back = pd.read_csv(tmp_path / "c.csv")
    assert back["ER_positive"].dtype == object
    r = spatial_analysis(back, by=["ER_positive", "phenotype"], n_permutations=0)
    assert r.classes == ("ER+ A", "ER+ B", "ER- A", "ER- B") and r.n_unclassified == 1
    # cluster ids with gaps (floats): whole numbers, sorted as numbers
    ids = np.array([2.0, 10.0, 1.0, np.nan] * 15)
    r = spatial_analysis(base.assign(cluster=ids), by="cluster", n_permutations=0)
    assert r.classes == ("1", "2", "10")
    with pytest.raises(InputError, match="not whole"):
        spatial_analysis(base.assign(cluster=ids + 0.5), by="cluster")
    with pytest.raises(InputError, match="has no values"):
        spatial_analysis(base.assign(cluster=np.nan), by="cluster")
    with pytest.raises(InputError, match="60 distinct classes"):
        spatial_analysis(base, by="cell_id")
    # values holding a space are joined by ' | ': ('A B', 'C') and ('A', 'B C') stay apart
    two = base.assign(u=np.where(np.arange(n) % 2, "A B", "A"),
                      v=np.where(np.arange(n) % 2, "C", "B C"))
    assert spatial_analysis(two, by=["u", "v"], n_permutations=0).classes == \
        ("A B | C", "A | B C")
    # a blank group is no group: its cells are left out, and said
    grp = base.assign(region=np.where(np.arange(n) < 10, "", "A-1"))
    r = spatial_analysis(grp, n_permutations=0)
    assert r.n_groups == 1 and r.n_ungrouped == 10 and "10 cells with a class have no " \
        "region" in r.warnings[0]
    # a class column is no group column: 'auto' leaves it out, an explicit one is refused
    assert spatial_analysis(grp, by="region", n_permutations=0).within is None
    with pytest.raises(InputError, match="is a class column too"):
        spatial_analysis(grp, by="region", within="region")
    with pytest.raises(InputError, match="seed must be a whole number"):
        spatial_analysis(base, seed=-1)
    with pytest.raises(InputError, match="name a class twice"):
        spatial_analysis(base, classes=["A", "A"])
    with pytest.raises(InputError, match="centroid column 'centroid_x_um' is not numbers"):
        spatial_analysis(base.assign(centroid_x_um=base["centroid_x_um"].map(
            lambda v: f"{v:.1f}".replace(".", ","))))


def test_untestable_pairs_have_no_p_and_duplicates_are_warned():
    # A only in core 1, B only in core 2: A-B pairs can never form, whatever the shuffle
    cells = pd.concat([_table([0.0, 10, 20], [0.0] * 3, ["A"] * 3, region="1"),
                       _table([0.0, 10, 20], [0.0] * 3, ["B"] * 3, region="2")])
    r = spatial_analysis(cells, radius_um=15.0, n_permutations=50)
    assert r.z[0][1] is None and r.p_enrichment[0][1] is None and r.p_depletion[0][1] is None
    dup = _table([0.0, 0.0, 10.0, 30.0], [0.0] * 4, ["A", "A", "B", "B"])
    r = spatial_analysis(dup, radius_um=15.0, n_permutations=0)
    assert r.nearest_median_um[0][0] == 0.0
    assert any("2 cells share their centroid" in w for w in r.warnings)


def test_per_group_uses_the_whole_tables_classes():
    # one core's phenotypes hold no space, another's do: the ' | ' separator is the whole
    # table's, so every core's cells keep their class (a review lost a core's 203 cells)
    a = _table([0.0, 10, 20, 30], [0.0] * 4, ["HER2-enriched"] * 4, region="A-1 ")
    b = _table([0.0, 10, 20, 30], [0.0] * 4, ["luminal HER2+", "luminal HER2+",
                                              "HER2-enriched", "luminal HER2+"], region="A-2")
    cells = pd.concat([a, b], ignore_index=True).assign(
        ER_positive=[True, False, True, False] * 2)
    res = spatial_by_group(cells, by=["phenotype", "ER_positive"], radius_um=15.0,
                           n_permutations=0)
    assert list(res) == ["A-1", "A-2"]  # group names stripped
    assert [sum(r.n_cells) for r in res.values()] == [4, 4]
    assert res["A-1"].classes[0] == "HER2-enriched | ER+"


def test_auto_groups_by_image_and_then_core():
    rng = np.random.default_rng(2)
    x, y = rng.uniform(0, 200, 80), rng.uniform(0, 200, 80)
    one = _table(x, y, rng.choice(["A", "B"], 80))
    # a cohort of a whole section (no regions) and a TMA: the section is one group
    cohort = pd.concat([one.assign(slide="section", region=pd.NA),
                        one.assign(slide="tma", region=np.where(x < 100, "A-1", "A-2"))],
                       ignore_index=True)
    r = spatial_analysis(cohort, radius_um=20.0, n_permutations=0)
    assert r.within == ("slide", "region") and r.n_ungrouped == 0
    assert set(spatial_by_group(cohort, n_permutations=0)) == {"section", "tma / A-1",
                                                               "tma / A-2"}
    # the cores split neighbours of one image: the pairs left uncounted are said
    assert any("lie across two slide / region groups of one image" in w for w in r.warnings)
    # a QuPath project export: images by the Image column
    qp = pd.concat([one.assign(Image="a.svs"), one.assign(Image="b.svs")], ignore_index=True)
    r = spatial_analysis(qp, n_permutations=0)
    assert r.within == ("Image",) and r.n_groups == 2
    # images pooled on request are warned: their coordinates overlap
    pooled = spatial_analysis(qp, n_permutations=0, within=None)
    assert any("hold cells of several Image values" in w for w in pooled.warnings)


def test_a_radius_holding_all_pairs_but_one_keeps_its_small_variance():
    # 3,000 cells within a radius of each other but u and v: A-A (ordered, twice the
    # unordered count) is 2 C(1500, 2) - 2 [u, v both A], variance 4 p (1 - p) with
    # p = 1500 * 1499 / (3000 * 2999); a tolerance of 1e-9 of the terms zeroed it (a review)
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-1, 1, 2998), [-6.0, 6.0]])
    y = np.concatenate([rng.uniform(-1, 1, 2998), [0.0, 0.0]])
    cells = _table(x, y, ["A", "B"] * 1500)
    c = _classify(cells, ("phenotype",), None, ("centroid_x_um", "centroid_y_um"))
    pairs = _pairs(c, 10.0)
    assert pairs.shape[1] == 3000 * 2999 // 2 - 1
    p = 1500 * 1499 / (3000 * 2999)
    var = _group_variance(c, pairs)
    # the terms (~1e12) cancel to it: rounding leaves ~1e-6 of it here, plenty for a z
    assert var[0, 0] == pytest.approx(4 * p * (1 - p), rel=1e-4)  # 0.7498


def test_cut_pairs_too_many_to_count_are_said_not_refused(monkeypatch):
    # cases sharing one coordinate frame (no image column) hold more pairs across them
    # than within: the within-case analysis runs, and the uncounted cut pairs are said
    import qdmed.imaging._spatial as sp

    monkeypatch.setattr(sp, "MAX_PAIRS", 20_000)
    rng = np.random.default_rng(1)
    parts = [_table(rng.uniform(0, 300, 600), rng.uniform(0, 300, 600),
                    rng.choice(["A", "B"], 600), case=f"c{i}") for i in range(8)]
    r = spatial_analysis(pd.concat(parts, ignore_index=True), within="case",
                         n_permutations=0)
    assert r.n_groups == 8 and r.n_pairs < 20_000
    assert any("too many to count" in w for w in r.warnings)
