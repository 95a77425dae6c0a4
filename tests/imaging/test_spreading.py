"""Spillover spreading matrix of the panel (Nguyen et al., Cytometry A 2013;83:306-315,
doi:10.1002/cyto.a.22251): the analytic shot-noise form checked against the paper's
empirical definition, sqrt(var_pos - var_neg) / sqrt(signal_pos - signal_neg), measured on
simulated Poisson single-stain pixels unmixed by least squares."""

import numpy as np
import pytest

from qdmed.imaging import breast_panel_5plex, spreading_matrix


@pytest.mark.parametrize(("bright", "spread_into"), [("ER", "PR"), ("DAPI", "HER2"),
                                                     ("EGFR", "mTOR"), ("PR", "PR")])
def test_analytic_spreading_equals_the_single_stain_measurement(bright, spread_into):
    panel = breast_panel_5plex()
    a = panel.endmembers
    comps = panel.components
    j, i = comps.index(bright), comps.index(spread_into)
    rng = np.random.default_rng(7)
    n, level = 200_000, 400.0
    p = np.linalg.pinv(a)
    pos = rng.poisson(np.tile(a[:, j] * level, (n, 1))) @ p.T
    neg = rng.poisson(np.full((n, a.shape[0]), 1e-12)) @ p.T  # an unstained, noiseless blank
    emp = np.sqrt(pos[:, i].var() - neg[:, i].var()) / np.sqrt(pos[:, j].mean()
                                                                - neg[:, j].mean())
    # sampling error of a variance from 2e5 draws: ~0.3 % on the standard deviation
    assert spreading_matrix(a)[i, j] == pytest.approx(emp, rel=0.01)


def test_spreading_in_the_panel_summary_and_plot():
    panel = breast_panel_5plex()
    d = panel.to_dict()
    s = np.array(d["spreading"])
    k = len(panel.components)
    assert s.shape == (k, k) and np.all(s >= 0)
    # an orthogonal (one channel per component) mixing matrix spreads nothing off-diagonal
    eye = spreading_matrix(np.eye(4) * 2.0)
    np.testing.assert_allclose(eye, np.diag([2.0 ** -0.5] * 4), atol=1e-15)
    fig = panel.plot()
    assert fig.axes[2].get_title() == "spillover spreading (off-diagonal)"
