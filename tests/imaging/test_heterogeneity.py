"""HER2 spatial heterogeneity: regional categories on a grid and Shannon indices.

Sources: Shannon (1948) for the index (values checked by hand: ln 4 for four equal
categories, 1.5 ln 2 for (1/2, 1/4, 1/4)); Potts et al. (2012, Lab Invest,
doi:10.1038/labinvest.2012.91) for the cell-level / tumour-level split; the regional rule is
score_her2's (Wolff et al. 2018), checked region by region against score_her2 itself."""

import math

import numpy as np
import pandas as pd
import pytest

from qdmed.errors import InputError
from qdmed.imaging import (
    Her2Calibration,
    analyze_field,
    breast_panel_5plex,
    calibrate_her2,
    her2_heterogeneity,
    score_her2,
    shannon_index,
    simulate_field,
)

CAL = Her2Calibration(faint=1.0, weak_moderate=2.0, intense=3.0)


def test_shannon_index_hand_values():
    assert shannon_index([25, 25, 25, 25]) == pytest.approx(math.log(4), rel=1e-15)
    assert shannon_index([2, 1, 1, 0]) == pytest.approx(1.5 * math.log(2), rel=1e-15)
    assert shannon_index([7, 0, 0, 0]) == 0.0
    assert np.isnan(shannon_index([0, 0, 0, 0]))
    rows = shannon_index(np.array([[1, 1, 0, 0], [0, 0, 0, 3]]), axis=1)
    np.testing.assert_allclose(rows, [math.log(2), 0.0])
    with pytest.raises(InputError, match="non-negative"):
        shannon_index([1, -1])


def _random_cells(rng, n):
    return pd.DataFrame({
        "cell_id": np.arange(1, n + 1),
        "HER2_membrane_mean": rng.gamma(1.2, 1.3, n),
        "HER2_membrane_completeness": rng.uniform(0.3, 1.0, n),
        "centroid_x_um": rng.uniform(0, 1500, n),
        "centroid_y_um": rng.uniform(0, 900, n),
    })


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_region_is_scored_as_the_slide_rule_scores_its_cells_alone(seed):
    rng = np.random.default_rng(seed)
    cells = _random_cells(rng, 4000)
    sc = score_her2(cells, CAL, intense_min_percent=0.5)
    het = her2_heterogeneity(sc, region_um=300, min_cells=20)
    assert het.n_regions == 15 and het.n_regions_sparse == 0
    for r in het.regions.itertuples():
        inside = ((cells.centroid_x_um // 300 == r.col) & (cells.centroid_y_um // 300 == r.row))
        alone = score_her2(cells[inside], CAL, intense_min_percent=0.5)
        assert r.category == alone.category
        assert r.ultralow == alone.her2_ultralow
        assert r.n_cells == alone.n_cells
        assert r.percent_cells_3plus == pytest.approx(alone.percent_cells_3plus)
    # indices: the tumour level from the regions' categories, the cell level from each region
    counts = het.regions["category"].value_counts().reindex(["0", "1+", "2+", "3+"]).fillna(0)
    assert het.tumour_level_shannon == pytest.approx(float(shannon_index(counts.to_numpy())))
    assert het.cell_level_shannon_mean == pytest.approx(het.regions["shannon"].mean())
    assert sum(het.percent_regions.values()) == pytest.approx(100.0)


def test_sparse_regions_are_not_scored():
    cells = pd.DataFrame({"HER2_membrane_mean": [3.5] * 120 + [0.2] * 5,
                          "HER2_membrane_completeness": [1.0] * 125,
                          "centroid_x_um": [10.0] * 120 + [900.0] * 5,
                          "centroid_y_um": [10.0] * 125})
    het = her2_heterogeneity(score_her2(cells, CAL), region_um=500, min_cells=100)
    assert (het.n_regions, het.n_regions_sparse) == (1, 1)
    assert het.percent_regions == {"0": 0.0, "1+": 0.0, "2+": 0.0, "3+": 100.0}
    assert het.tumour_level_shannon == 0.0
    # one scored region differs from nothing: no spatial test (p was 1, always: a review)
    assert math.isnan(het.spatial_p_value) and math.isnan(het.tumour_level_shannon_null)
    assert "One region: no spatial test" in het.report()
    sparse = het.regions[~het.regions["scored"]]
    assert sparse["category"].isna().all() and int(sparse["n_cells"].iloc[0]) == 5
    d = het.to_dict()
    assert d["regions"][1]["category"] is None and d["parameters"]["region_um"] == 500.0
    assert "regions" not in het.to_dict(include_regions=False)
    # a map of scored and sparse regions together (pandas 3 made the sparse ones NaN once)
    assert het.plot().axes[0].get_title().startswith("HER2 by 500 um region")
    # no region reaches min_cells: nothing scored, NaN indices and shares, a clear report
    none = her2_heterogeneity(score_her2(cells, CAL), min_cells=1000)
    assert none.n_regions == 0 and none.highest_region_category is None
    assert math.isnan(none.tumour_level_shannon) and math.isnan(none.spatial_p_value)
    assert all(math.isnan(v) for v in none.percent_regions.values())
    assert "no 500 um region" in none.report()
    none.plot()


def test_bad_input():
    cells = _random_cells(np.random.default_rng(0), 200)
    sc = score_her2(cells, CAL)
    for bad in (0, -5, 5.0, 1e-300, float("nan"), float("inf"), "wide"):
        with pytest.raises(InputError, match="region_um"):
            her2_heterogeneity(sc, region_um=bad)
    for bad in (0, 2.5, True):
        with pytest.raises(InputError, match="min_cells"):
            her2_heterogeneity(sc, min_cells=bad)
    for bad in (-1, 1.5):
        with pytest.raises(InputError, match="n_permutations"):
            her2_heterogeneity(sc, n_permutations=bad)
    for bad in (-1, 1.5, "a", True):
        with pytest.raises(InputError, match="seed must be a whole number"):
            her2_heterogeneity(sc, seed=bad)
    no_xy = score_her2(cells.drop(columns=["centroid_x_um"]), CAL)
    with pytest.raises(InputError, match="centroid_x_um"):
        her2_heterogeneity(no_xy)
    with pytest.raises(InputError, match="Her2Score"):
        her2_heterogeneity(cells)


def test_two_clones_side_by_side_on_a_synthetic_field():
    """A HER2-null clone (MDA-MB-468) beside a 3+ clone (SK-BR-3), simulated, unmixed and
    segmented: the regions recover the two halves; the slide alone says only 3+."""
    panel = breast_panel_5plex()
    kw = dict(endmembers=panel.endmembers, marker_names=list(panel.markers),
              photons_per_unit=300.0)
    ctrls = {name: analyze_field(simulate_field((640, 640), preset=name, seed=seed,
                                                **kw).image, panel).table
             for name, seed in (("MDA-MB-468", 10), ("MCF-7", 11), ("BT474", 12))}
    cal = calibrate_her2(ctrls, categories={"MDA-MB-468": "0", "MCF-7": "1+"})
    left = simulate_field((1000, 1000), preset="MDA-MB-468", seed=21, **kw)
    right = simulate_field((1000, 1000), preset="SK-BR-3", seed=22, **kw)
    table = analyze_field(np.concatenate([left.image, right.image], axis=1), panel).table
    sc = score_her2(table, cal)
    het = her2_heterogeneity(sc, region_um=250)  # 0.5 um px: a 500 x 1000 um field
    assert sc.category == "3+"
    # measured: the 4 left regions 0, the 4 right ones 3+ (x0 500 and 750 um)
    assert het.n_regions == 8
    cats = dict(zip(het.regions["x0_um"].astype(int) // 250 * 10 + het.regions["row"],
                    het.regions["category"], strict=True))
    assert all(cats[c * 10 + r] == ("0" if c < 2 else "3+") for c in range(4) for r in range(2))
    assert het.tumour_level_shannon == pytest.approx(math.log(2))
    # no shuffle of these cells over their places splits them as cleanly (199 permutations)
    assert het.spatial_p_value == pytest.approx(1 / 200)
    assert het.tumour_level_shannon_null < 0.2
    assert het.percent_regions_discordant == 50.0 and het.highest_region_category == "3+"
    # cell level: each region is nearly one population (measured mean 0.38, max 0.62 nats),
    # far below the four-category maximum ln 4 = 1.39
    assert het.cell_level_shannon_max < 0.8
    fig = het.plot()
    assert fig.axes[0].get_title().startswith("HER2 by 250 um region")


def test_regions_as_qupath_annotations():
    cells = pd.DataFrame({"HER2_membrane_mean": [3.5] * 120 + [0.2] * 130,
                          "HER2_membrane_completeness": [1.0] * 250,
                          "centroid_x_um": [10.0] * 120 + [600.0] * 130,
                          "centroid_y_um": [10.0] * 250})
    het = her2_heterogeneity(score_her2(cells, CAL), region_um=500)
    gj = het.to_geojson(0.5, shape_yx=(800, 1500))
    feats = gj["features"]
    assert [f["properties"]["classification"]["name"] for f in feats] == [
        "HER2 region 3+", "HER2 region 0"]
    # 500 um = 1000 px; the second square is clipped at the image's 1500 px width
    assert feats[1]["geometry"]["coordinates"][0] == [[1000.0, 0.0], [1500.0, 0.0],
                                                      [1500.0, 800.0], [1000.0, 800.0],
                                                      [1000.0, 0.0]]
    m = feats[0]["properties"]["measurements"]
    assert m["Cells"] == 120 and m["HER2 3+: %"] == 100.0 and m["Shannon index (nats)"] == 0.0
    with pytest.raises(InputError, match="pixel_size_um"):
        het.to_geojson(0)


@pytest.mark.parametrize("seed", [3, 4])
def test_spatially_random_cells_near_a_cut_off_show_sampling_not_structure(seed):
    """Cells placed at random, 9 % intense complete (just under the 10 % cut-off): regions
    of ~150 cells flip between 2+ and 3+ by sampling alone. The permutation null reproduces
    that spread, and the p-value does not call it spatial structure."""
    rng = np.random.default_rng(seed)
    n = 15_000
    inten = np.where(rng.random(n) < 0.09, 3.5, 0.5)
    cells = pd.DataFrame({"HER2_membrane_mean": inten,
                          "HER2_membrane_completeness": np.ones(n),
                          "centroid_x_um": rng.uniform(0, 5000, n),
                          "centroid_y_um": rng.uniform(0, 1500, n)})
    het = her2_heterogeneity(score_her2(cells, CAL), region_um=500)
    assert het.n_regions == 30 and het.slide_category == "2+"
    assert 0 < het.percent_regions["3+"] < 100  # sampling alone makes 3+ regions
    assert het.percent_regions_discordant_null > 5
    assert het.spatial_p_value > 0.05
    # reproducible: the permutations follow the seed
    again = her2_heterogeneity(score_her2(cells, CAL), region_um=500)
    assert again.spatial_p_value == het.spatial_p_value
    assert math.isnan(her2_heterogeneity(score_her2(cells, CAL), n_permutations=0)
                      .spatial_p_value)
