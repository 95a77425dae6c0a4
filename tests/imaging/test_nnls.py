"""Tests of qdmed.imaging._nnls: exact per-pixel NNLS unmixing."""

from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy.optimize import nnls
from scipy.special import erf

from qdmed.errors import InputError
from qdmed.imaging._nnls import (
    UnmixResult,
    kkt_violation,
    unmix_block,
    unmix_lstsq,
    unmix_nnls,
)

HAS_NUMBA = importlib.util.find_spec("numba") is not None
METHODS = ["numpy", pytest.param("numba", marks=pytest.mark.skipif(
    not HAS_NUMBA, reason="numba not installed"))]


def qd_endmembers() -> np.ndarray:
    """5 Gaussian QD emissions (525-705 nm) + broad autofluorescence, 8 bands 500-740 nm."""
    edges = np.linspace(500.0, 740.0, 9)
    cols = []
    for centre, fwhm in zip((525, 565, 605, 655, 705), (30, 32, 34, 37, 40), strict=True):
        sigma = fwhm / 2.3548
        cols.append(np.diff(0.5 * (1 + erf((edges - centre) / (sigma * np.sqrt(2))))))
    mid = 0.5 * (edges[1:] + edges[:-1])
    auto = np.exp(-0.5 * ((mid - 540) / 70) ** 2) + 0.3 * np.exp(-0.5 * ((mid - 650) / 90) ** 2)
    cols.append(auto / auto.sum())
    return np.array(cols).T * 1000.0


def realistic(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    a = qd_endmembers()
    x = rng.gamma(2.0, 1.0, (n, 6))
    x[rng.random((n, 6)) < 0.4] = 0.0
    y = rng.poisson(x @ a.T + 2.0).astype(float) - 2.0
    return a, x, y


def scipy_nnls(a, y):
    return np.array([nnls(a, row)[0] for row in y])


@pytest.mark.parametrize("method", METHODS)
def test_agrees_with_scipy_realistic(method):
    a, _, y = realistic(2000)
    x = unmix_nnls(y, a, method=method)
    ref = scipy_nnls(a, y)
    # both are exact; difference is rounding in the Gram form, cond(A_n)~24
    np.testing.assert_allclose(x, ref, rtol=0, atol=1e-8 * np.abs(ref).max())
    assert np.all(x >= 0)
    assert kkt_violation(y, a, x).max() < 1e-9
    assert np.mean(x == 0) > 0.1  # exact zeros where markers are absent


@pytest.mark.parametrize(("method", "k"), [
    ("numpy", 1), ("numpy", 9),
    # each K compiles its own numba kernel (~2 s): test one K besides the realistic K = 6
    pytest.param("numba", 3, marks=pytest.mark.skipif(not HAS_NUMBA, reason="no numba")),
])
def test_agrees_with_scipy_random(method, k):
    rng = np.random.default_rng(k)
    a = rng.random((12, k)) + 0.05
    y = rng.normal(size=(300, 12)) + a @ rng.random(k)
    x = unmix_nnls(y, a, method=method)
    ref = scipy_nnls(a, y)
    np.testing.assert_allclose(x, ref, rtol=0, atol=1e-8 * max(1.0, np.abs(ref).max()))
    assert kkt_violation(y, a, x).max() < 1e-9


@pytest.mark.skipif(not HAS_NUMBA, reason="numba not installed")
@pytest.mark.parametrize("dtype", [np.float64, np.uint16])  # each dtype compiles (~2 s)
def test_numba_and_numpy_agree(dtype):
    a, _, y = realistic(3000, seed=3)
    y = np.clip(y, 0, None).astype(dtype)
    xn = unmix_nnls(y, a, method="numba")
    xp = unmix_nnls(y, a, method="numpy")
    np.testing.assert_allclose(xn, xp, rtol=0, atol=1e-10 * np.abs(xp).max())


@pytest.mark.parametrize("method", METHODS)
def test_exact_recovery_noiseless_with_zeros(method):
    a, x, _ = realistic(500, seed=5)
    y = x @ a.T
    got = unmix_nnls(y, a, method=method)
    np.testing.assert_allclose(got, x, rtol=0, atol=1e-9 * x.max())
    assert np.all(got[x == 0] < 1e-9 * x.max())


@pytest.mark.parametrize("method", METHODS)
def test_zero_pixels_give_zero(method):
    a = qd_endmembers()
    x = unmix_nnls(np.zeros((5, 8)), a, method=method)
    assert x.shape == (5, 6)
    assert np.all(x == 0)


@pytest.mark.parametrize("method", METHODS)
def test_nan_pixels_raise_with_count(method):
    a, _, y = realistic(50)
    y[[3, 7, 9], 2] = np.nan
    y[11, 0] = np.inf
    with pytest.raises(InputError, match="4 NaN or infinite"):
        unmix_nnls(y, a, method=method)


def test_degenerate_endmembers_raise():
    a = qd_endmembers()
    a[:, 2] = a[:, 1] * 1.5  # columns 1 and 2 collinear
    with pytest.raises(InputError, match=r"condition number.*columns 1 and 2"):
        unmix_nnls(np.ones((3, 8)), a)
    with pytest.raises(InputError, match="only 2 channels for 3 components"):
        unmix_nnls(np.ones((3, 2)), np.ones((2, 3)) + np.eye(2, 3))
    b = qd_endmembers()
    b[:, 0] = 0.0
    with pytest.raises(InputError, match="all zero"):
        unmix_nnls(np.ones((3, 8)), b)


@pytest.mark.parametrize(("bad", "match"), [
    (-np.eye(3), "non-negative"),
    (np.full((3, 3), np.nan), "finite"),
    (np.ones(3), "2-D"),
    (np.ones((14, 13)), "at most 12"),
])
def test_bad_endmembers_raise(bad, match):
    with pytest.raises(InputError, match=match):
        unmix_nnls(np.ones((2, bad.shape[0])), bad)


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(InputError, match=r"\(4, 7\).*8 channels"):
        unmix_nnls(np.ones((4, 7)), qd_endmembers())
    with pytest.raises(InputError, match=r"\(2, 3, 7\).*\(8, 6\)"):
        unmix_block(np.ones((2, 3, 7)), qd_endmembers())


def test_bad_options_raise():
    a, _, y = realistic(10)
    with pytest.raises(InputError, match="method"):
        unmix_nnls(y, a, method="fast")
    with pytest.raises(InputError, match="device"):
        unmix_nnls(y, a, device="tpu")
    with pytest.raises(InputError, match="weights"):
        unmix_nnls(y, a, weights="gauss")
    with pytest.raises(InputError, match="strictly positive"):
        unmix_nnls(y, a, weights=np.zeros(8))


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="cupy installed")
def test_gpu_without_cupy_raises():
    a, _, y = realistic(10)
    with pytest.raises(InputError, match=r"cupy.*qdmed\[gpu\]"):
        unmix_nnls(y, a, device="gpu")


def test_gpu_path_runs_the_array_module_generic_algorithm(monkeypatch):
    """No GPU here: a stand-in 'cupy' (numpy under another name, with asnumpy) exercises the
    device='gpu' code path, which must use only the array module it is given."""
    import sys
    import types

    fake = types.ModuleType("cupy")
    fake.__getattr__ = lambda name: getattr(np, name)
    calls = []

    def asnumpy(a):
        calls.append(a.shape)
        return np.asarray(a)

    fake.asnumpy = asnumpy
    monkeypatch.setitem(sys.modules, "cupy", fake)
    a, _, y = realistic(500, seed=4)
    x = unmix_nnls(y, a, device="gpu")
    assert calls == [(500, a.shape[1])]
    assert np.allclose(x, unmix_nnls(y, a, method="numpy"), rtol=0, atol=1e-12)
    with pytest.raises(InputError, match="unweighted"):
        unmix_nnls(y, a, device="gpu", weights="poisson")


def test_weighted_agrees_with_scipy_on_row_scaled_problem():
    a, _, y = realistic(300, seed=7)
    w = np.random.default_rng(1).uniform(0.2, 3.0, y.shape)
    x = unmix_nnls(y, a, weights=w)
    sw = np.sqrt(w)
    ref = np.array([nnls(a * s[:, None], s * row)[0] for s, row in zip(sw, y, strict=True)])
    np.testing.assert_allclose(x, ref, rtol=0, atol=1e-8 * np.abs(ref).max())
    assert kkt_violation(y, a, x, weights=w).max() < 1e-9


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("read_noise", [None, 0.3, 5.0])
def test_poisson_solution_is_its_own_weighted_nnls_solution(read_noise, method):
    """At the Poisson maximum-likelihood solution the weighted NNLS with the weights
    1 / (A x + s) (s the read variance) returns it: the likelihood's KKT conditions
    (Snyder et al. 1993's shifted Poisson). Counts below -s are taken as -s. The compiled
    kernel and the numpy loop give the same abundances."""
    a, _, y = realistic(300, seed=7)  # counts down to -2 (a 2-count offset removed)
    x = unmix_nnls(y, a, weights="poisson", read_noise=read_noise, method=method)
    if method == "numba":
        np.testing.assert_allclose(x, unmix_nnls(y, a, weights="poisson", method="numpy",
                                                 read_noise=read_noise),
                                   rtol=0, atol=1e-9 * np.abs(x).max())
    s = (1.0 if read_noise is None else read_noise) ** 2
    sw = np.sqrt(1.0 / (x @ a.T + s))
    yc = np.maximum(y, -s)
    ref = np.array([nnls(a * q[:, None], q * row)[0] for q, row in zip(sw, yc, strict=True)])
    np.testing.assert_allclose(x, ref, rtol=0, atol=1e-7 * np.abs(ref).max())
    assert kkt_violation(y, a, x, weights="poisson", read_noise=read_noise).max() < 1e-7
    assert kkt_violation(y, a, x).max() > 1e-4  # not the unweighted solution
    res = unmix_nnls(y, a, weights="poisson", read_noise=read_noise, return_residual=True,
                     method=method)
    np.testing.assert_array_equal(res.abundances, x)
    r2 = np.sum((x @ a.T - y) ** 2 / (x @ a.T + s), axis=1)  # Pearson's chi^2
    np.testing.assert_allclose(res.residual_norm, np.sqrt(r2), rtol=1e-10)


def test_poisson_maximises_the_likelihood():
    """The abundances maximise sum (y + s) log(A x + s) - A x over x >= 0: L-BFGS-B on the
    likelihood itself (scipy.optimize.minimize, a different algorithm) finds no better
    point, from a cold start or from the solution. (Its own solutions differ by up to 0.04
    in directions where the likelihood is flat: a QD and the autofluorescence overlap.)"""
    from scipy.optimize import minimize

    a, _, y = realistic(40, seed=11)
    y = np.maximum(y, 0.0)
    s = 1.0
    x = unmix_nnls(y, a, weights="poisson")

    def nll(v, row):
        mu = a @ v + s
        return np.sum(mu - (row + s) * np.log(mu)), a.T @ (1.0 - (row + s) / mu)

    for xi, row in zip(x, y, strict=True):
        for start in (np.full(a.shape[1], 0.1), xi):
            ref = minimize(nll, start, args=(row,), jac=True, method="L-BFGS-B",
                           bounds=[(0, None)] * a.shape[1],
                           options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 5000}).x
            assert nll(xi, row)[0] <= nll(ref, row)[0] + 1e-12 * abs(nll(ref, row)[0])


def test_poisson_abundances_are_unbiased_at_low_counts():
    """Observed counts as weights (1 / max(y, 1), Neyman's chi^2) bias abundances low by
    about a count per channel (Mighell, ApJ 518:380, 1999): -7 % to -13 % here, 3 labels
    in 8 channels at ~5 counts per channel, every label present. The Poisson maximum
    likelihood's score is unbiased, and so is its estimate off the constraint x >= 0: its
    mean over 20,000 pixels is within 1 % (the mean's SD is ~0.25 %) of the truth, and
    its standard deviation is no larger than unweighted NNLS's."""
    lam = np.linspace(0, 1, 8)
    a = np.stack([np.exp(-((lam - c) / 0.18) ** 2) for c in (0.2, 0.5, 0.8)], axis=1)
    a /= a.sum(axis=0)
    truth = np.full(3, 40 / 3)  # 40 photons a pixel
    y = np.random.default_rng(1).poisson(np.tile(a @ truth, (20000, 1))).astype(float)
    neyman = unmix_nnls(y, a, weights=1.0 / np.maximum(y, 1.0)).mean(axis=0) / truth - 1
    assert np.all(neyman < -0.05)
    x = unmix_nnls(y, a, weights="poisson")
    np.testing.assert_allclose(x.mean(axis=0) / truth - 1, 0, atol=0.01)
    assert np.all(x.std(axis=0) <= unmix_nnls(y, a).std(axis=0) * 1.01)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("read_noise", [0.1, 1.0])
def test_poisson_dim_channel_of_a_bright_pixel_converges(method, read_noise):
    """5 counts in the channel only a dim label reaches, ~1e6 in the others: each Newton
    step moves that channel's expected count by ~s only, below the step test on the
    largest count, and the pixel stopped with the dim label at 1e-6 (a review); it now
    stops when -l decreases by no more than its rounding too. The dim label's maximum
    likelihood is near its 5 counts."""
    a = np.array([[1.0, 0.01], [1.0, 0.0], [0.0, 1.0]])
    y = np.array([[9000.0, 11000.0, 5.0], [9.9e5, 1.01e6, 5.0]])
    x = unmix_nnls(y, a, weights="poisson", read_noise=read_noise, method=method)
    assert np.all(np.abs(x[:, 1] - 5.0) < 0.01)
    assert kkt_violation(y, a, x, weights="poisson", read_noise=read_noise).max() < 1e-12


def test_poisson_steps_with_singular_weights_fall_back_to_scipy(monkeypatch):
    """A Newton weight that dominates a pixel (a dark channel with counts) made its
    weighted Gram matrix singular and np.linalg.solve failed the whole image; such a chunk
    is solved pixel by pixel by scipy.optimize.nnls (on QR), the same abundances."""
    from qdmed.imaging import _nnls

    a, _, y = realistic(50, seed=2)
    want = unmix_nnls(y, a, weights="poisson", method="numpy")

    def singular(*args):
        raise _nnls.SingularWeightsError("singular")

    monkeypatch.setattr(_nnls, "_solve_weighted_numpy", singular)
    got = unmix_nnls(y, a, weights="poisson", method="numpy")
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10 * np.abs(want).max())
    w = np.ones_like(y)  # an explicit weight array that does it: refused, said
    w[:, 0] = 1e20
    monkeypatch.undo()
    with pytest.raises(InputError, match="weights span up to 1e20"):
        unmix_nnls(y, a, weights=w)


@pytest.mark.parametrize("method", METHODS)
def test_poisson_pixels_still_moving_are_warned(monkeypatch, method):
    """A pixel still moving after the last Newton step keeps it, and is counted in a
    warning (one step allowed here; the default 50; measured on noisy pixels: 4 on
    average, up to ~15)."""
    from qdmed.errors import QdmedWarning
    from qdmed.imaging import _poisson

    a, _, y = realistic(200, seed=7)
    monkeypatch.setattr(_poisson, "MAX_ITER", 1)
    with pytest.warns(QdmedWarning, match=r"of 200 pixels still moved after 1 Newton step"):
        x = unmix_nnls(np.abs(y) * 10, a, weights="poisson", method=method)
    assert np.all(np.isfinite(x)) and np.all(x >= 0)


def test_poisson_options_are_checked():
    a, _, y = realistic(20, seed=7)
    for bad in (0, -1.0, np.nan, np.inf, 0.05, 1e300, "loud", True):
        with pytest.raises(InputError, match="read_noise must be"):
            unmix_nnls(y, a, weights="poisson", read_noise=bad)
    with pytest.raises(InputError, match="weights='poisson' only"):
        unmix_nnls(y, a, read_noise=2.0)
    with pytest.raises(InputError, match="weights='poisson' only"):
        kkt_violation(y, a, unmix_nnls(y, a), read_noise=2.0)
    sel = np.zeros((8, 2))
    sel[0, 0], sel[3, 1] = 2.0, 0.5  # each label one channel: the exact solution directly
    x = unmix_nnls(y, sel, weights="poisson")
    np.testing.assert_allclose(x, np.maximum(y[:, [0, 3]] / [2.0, 0.5], 0.0))


def test_return_residual_result():
    a, _, y = realistic(200)
    res = unmix_nnls(y, a, return_residual=True)
    assert isinstance(res, UnmixResult)
    r = np.linalg.norm(res.abundances @ a.T - y, axis=1)
    np.testing.assert_allclose(res.residual_norm, r, rtol=1e-12)
    assert np.all((res.relative_residual >= 0) & (res.relative_residual <= 1 + 1e-12))
    d = res.to_dict()
    assert d["n_pixels"] == 200 and d["n_components"] == 6


def test_lstsq_matches_pinv_and_nnls_beats_clipping():
    a, _, y = realistic(500)
    ls = unmix_lstsq(y, a)
    np.testing.assert_allclose(ls, y @ np.linalg.pinv(a).T, rtol=1e-12, atol=1e-9)
    x = unmix_nnls(y, a)
    obj = np.sum((x @ a.T - y) ** 2, axis=1)
    clip = np.sum((np.clip(ls, 0, None) @ a.T - y) ** 2, axis=1)
    assert np.all(obj <= clip * (1 + 1e-12) + 1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_block_api_shape(method):
    a, _, y = realistic(4 * 5)
    block = y.reshape(4, 5, 8)
    out = unmix_block(block, a, method=method)
    assert out.shape == (4, 5, 6)
    np.testing.assert_allclose(out.reshape(-1, 6), unmix_nnls(y, a, method="numpy"),
                               atol=1e-10)


def test_inputs_not_mutated_and_lists_accepted():
    a, _, y = realistic(20)
    y0, a0 = y.copy(), a.copy()
    unmix_nnls(y, a)
    assert np.array_equal(y, y0) and np.array_equal(a, a0)
    np.testing.assert_allclose(unmix_nnls(y.tolist(), a.tolist()), unmix_nnls(y, a))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 5), c=st.integers(5, 9),
       scale=st.floats(1e-3, 1e4))
def test_property_kkt_nonneg_and_objective(seed, k, c, scale):
    rng = np.random.default_rng(seed)
    a = rng.random((c, k)) + 0.1 * np.eye(c, k)
    # random columns are sometimes nearly collinear; above max_condition unmix_nnls refuses
    # them by contract (tested elsewhere), so they are not part of this property
    an = a / np.linalg.norm(a, axis=0)
    assume(np.linalg.cond(an) <= 1e3)
    y = scale * rng.normal(size=(20, c))
    x = unmix_nnls(y, a, method="numpy")
    assert np.all(x >= 0)
    assert kkt_violation(y, a, x).max() < 1e-9
    obj = np.sum((x @ a.T - y) ** 2, axis=1)
    clip = np.clip(unmix_lstsq(y, a), 0, None)
    assert np.all(obj <= np.sum((clip @ a.T - y) ** 2, axis=1) * (1 + 1e-10) + 1e-20)
    ref = scipy_nnls(a, y)
    np.testing.assert_allclose(x, ref, rtol=0, atol=1e-8 * max(scale, np.abs(ref).max()))


@pytest.mark.skipif(not HAS_NUMBA, reason="numba not installed")
@pytest.mark.parametrize("n", [1, 255, 257, 2 * 8192 + 3])  # tile (256) and thread edges
def test_numba_tiles_agree_with_numpy_and_scipy(n):
    a, _, y = realistic(n, seed=11)
    xn = unmix_nnls(y, a, method="numba")
    np.testing.assert_allclose(xn, unmix_nnls(y, a, method="numpy"), rtol=0,
                               atol=1e-10 * max(1.0, np.abs(xn).max()))
    m = min(n, 300)
    ref = scipy_nnls(a, y[-m:])
    np.testing.assert_allclose(xn[-m:], ref, rtol=0, atol=1e-8 * max(1.0, np.abs(ref).max()))
    assert kkt_violation(y, a, xn).max() < 1e-9


@pytest.mark.skipif(not HAS_NUMBA, reason="numba not installed")
def test_numba_nan_in_later_tile_counted():
    a, _, y = realistic(2 * 8192 + 600, seed=12)
    y[[300, 9000, 16000], 1] = np.nan
    with pytest.raises(InputError, match="3 NaN or infinite"):
        unmix_nnls(y, a, method="numba")


def test_pivot_tables_consistent():
    from qdmed.imaging._nnls import _prepare

    prep = _prepare(qd_endmembers(), 1e6)
    b = np.random.default_rng(2).normal(size=(5, 6))
    z0 = b @ prep.t[-1]  # unconstrained solution (all components passive)
    for m in (0, 5, 37, 63):
        want = b @ prep.t[m]
        np.testing.assert_allclose(z0 @ prep.u[m], want, rtol=0, atol=1e-12 * np.abs(want).max())


def test_caller_endmember_array_is_not_frozen_or_mutated():
    rng = np.random.default_rng(5)
    a = rng.uniform(0.1, 1.0, (8, 4))
    before = a.copy()
    unmix_nnls(rng.uniform(0, 1, (10, 8)), a)
    assert a.flags.writeable
    np.testing.assert_array_equal(a, before)


@pytest.mark.parametrize("method", ["numba", "numpy"])
def test_ill_conditioned_endmembers_exact_or_refused(method):
    """Two nearly collinear columns: exact (vs scipy) up to the default max_condition 1e4,
    refused above it (the Gram form squares the condition number)."""
    from scipy.optimize import nnls

    def case(spread):
        rng = np.random.default_rng(0)
        a = rng.random((16, 4))
        a[:, 1] = np.abs(a[:, 0] + rng.normal(size=16) / spread)
        y = rng.normal(size=(500, 16)) + rng.random((500, 4)) @ a.T
        return a, y

    a, y = case(3e3)  # cond 4.9e3
    ref = np.array([nnls(a, row)[0] for row in y])
    x = unmix_nnls(y, a, method=method)
    np.testing.assert_allclose(x, ref, rtol=0, atol=1e-7 * np.abs(ref).max())
    assert kkt_violation(y, a, x).max() < 1e-8
    a, y = case(3e4)  # cond 4.9e4
    with pytest.raises(InputError, match="max_condition=1e\\+04"):
        unmix_nnls(y, a, method=method)


@pytest.mark.parametrize("weights", [None, "counts"])
@pytest.mark.parametrize("method", ["numba", "numpy"])
def test_wrong_passive_sets_of_an_ill_conditioned_panel_are_caught(method, weights):
    """The Gram form's sign tests passed a wrong passive set inside their tolerance: 5 of
    5,000 pixels at cond 4.9e3 had their abundance on the wrong label (a review); every
    pixel now equals scipy.optimize.nnls (Lawson-Hanson, on QR) to rounding."""
    from scipy.optimize import nnls

    rng = np.random.default_rng(0)
    a = rng.random((16, 4))
    a[:, 1] = np.abs(a[:, 0] + rng.normal(size=16) / 3e3)  # cond 4.9e3
    r2 = np.random.default_rng(100)
    y = r2.normal(size=(5000, 16)) + r2.random((5000, 4)) @ a.T
    if weights is not None:
        y = np.abs(y) * 50  # counts
    sw = np.sqrt(1.0 / np.maximum(y, 1.0)) if weights else np.ones_like(y)
    ref = np.array([nnls(a * s[:, None], row * s)[0] for s, row in zip(sw, y, strict=True)])
    x = unmix_nnls(y, a, method=method, weights=sw ** 2 if weights else None)
    err = np.abs(x - ref).max(axis=1) / np.abs(ref).max()
    assert err.max() < 1e-6  # 0.48 before (the wrong label)


def test_generated_kernel_cache_and_its_fallback(monkeypatch, tmp_path):
    """The generated NNLS kernel is written to the cache directory (so numba can cache it);
    an unwritable cache directory falls back to compiling in memory, same results."""
    from qdmed.imaging._jit import generated_module
    from qdmed.imaging._nnls import _build_numba_kernel, _prepare

    monkeypatch.setenv("QDMED_CACHE_DIR", str(tmp_path / "cache"))
    mod = generated_module("probe", "X = 41 + 1\n")
    assert mod.X == 42 and len(list((tmp_path / "cache").glob("probe_*.py"))) == 1
    assert generated_module("probe", "X = 41 + 1\n") is mod  # imported once per process
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("QDMED_CACHE_DIR", str(blocker))
    assert generated_module("probe2", "X = 1\n") is None
    a, _, y = realistic(200, seed=9)
    a2 = a[:, :2]
    prep = _prepare(a2, 1e4)
    kern = _build_numba_kernel(2)  # compiled in memory
    x = np.empty((200, 2))
    z0 = y @ prep.pn
    kern(z0, y, prep.u, prep.d, prep.rtol, prep.smax, 16, x)
    assert np.allclose(x, unmix_nnls(y, a2, method="numpy"), rtol=0, atol=1e-9)


@pytest.mark.skipif(not HAS_NUMBA, reason="numba not installed")
@pytest.mark.parametrize("k", [1, 8])  # one partial sum; the widest SIMD kernel (~1.5 s each)
def test_simd_kernel_edges_of_k_agree_with_scipy(k):
    """The 8-lane kernel serves K = 1..8: K = 1 (one partial sum) and K = 8 (all lanes, the
    8-bit mask) against scipy.optimize.nnls."""
    rng = np.random.default_rng(40 + k)
    a = rng.random((10, k)) + 0.05
    x_true = rng.gamma(2.0, 1.0, (400, k)) * (rng.random((400, k)) > 0.4)
    y = x_true @ a.T + rng.normal(scale=0.3, size=(400, 10))
    x = unmix_nnls(y, a, method="numba")
    ref = scipy_nnls(a, y)
    np.testing.assert_allclose(x, ref, rtol=0, atol=1e-8 * max(1.0, np.abs(ref).max()))
    assert kkt_violation(y, a, x).max() < 1e-9


@pytest.mark.skipif(not HAS_NUMBA, reason="numba not installed")
def test_vtranspose8_is_the_transpose():
    from numba import njit

    from qdmed.imaging._simd import vload_row, vstore, vtranspose8

    @njit
    def transpose(a, out):
        cols = vtranspose8(vload_row(a, 0, 0), vload_row(a, 1, 0), vload_row(a, 2, 0),
                           vload_row(a, 3, 0), vload_row(a, 4, 0), vload_row(a, 5, 0),
                           vload_row(a, 6, 0), vload_row(a, 7, 0))
        for i in range(8):
            vstore(out, 8 * i, cols[i])

    a = np.arange(64.0).reshape(8, 8) * 1.5 - 7.0
    out = np.empty(64)
    transpose(a, out)
    np.testing.assert_array_equal(out.reshape(8, 8), a.T)
    for dtype in (np.float32, np.uint16, np.uint8):  # loaded exactly as float64
        b = np.arange(64).reshape(8, 8).astype(dtype) * 3
        transpose(b, out)
        np.testing.assert_array_equal(out.reshape(8, 8), b.T.astype(np.float64))


@pytest.mark.skipif(not HAS_NUMBA, reason="numba not installed")
@pytest.mark.parametrize(("c", "k"), [(8, 3), (16, 8)])
def test_eight_pixels_per_vector_path_agrees_with_scipy(c, k):
    """Channel counts that are multiples of 8 compute z0 eight pixels at a time (a pixel per
    lane, rows transposed in 8 x 8 blocks); the last pixels of a chunk and of each thread's
    range (here 8 * m + 5) take the pixel-per-vector path. Every stored dtype, and a NaN
    or an infinite pixel inside a block of eight, are handled as by the other path."""
    rng = np.random.default_rng(c + k)
    a = rng.random((c, k)) + 0.05
    n = 2 * 8192 + 8 * 37 + 5
    x_true = rng.gamma(2.0, 1.0, (n, k)) * (rng.random((n, k)) > 0.4)
    y = np.rint(np.maximum(x_true @ a.T * 20 + rng.normal(scale=3.0, size=(n, c)), 0))
    x = unmix_nnls(y, a, method="numba")
    pick = np.r_[0:200, 8187:8200, n - 300:n]  # chunk and range boundaries, the tail
    ref = scipy_nnls(a, y[pick])
    np.testing.assert_allclose(x[pick], ref, rtol=0, atol=1e-8 * np.abs(ref).max())
    assert kkt_violation(y, a, x).max() < 1e-9
    for dtype in (np.float32, np.uint16, np.uint8):
        yd = np.minimum(y, 255).astype(dtype)
        np.testing.assert_allclose(unmix_nnls(yd, a, method="numba"),
                                   unmix_nnls(yd.astype(np.float64), a, method="numpy"),
                                   rtol=0, atol=1e-9 * np.abs(x).max())
    for bad in (np.nan, -np.inf):
        yb = y.copy()
        yb[8 * 5 + 3, c - 1] = bad
        with pytest.raises(InputError, match="1 NaN or infinite"):
            unmix_nnls(yb, a, method="numba")


@pytest.mark.skipif(not HAS_NUMBA, reason="numba not installed")
def test_simd_leftover_pixels_go_to_the_safeguarded_scalar_kernel():
    """Pixels still infeasible after the SIMD kernel's lockstep passes are solved by the
    scalar kernel (Murty's rule, then all passive sets): with no pass after the first step
    (taken by every pixel), every pixel that step leaves infeasible takes that route, across
    both threads' pixel ranges, and the answer is the same as the normal path's and scipy's."""
    from qdmed.imaging._nnls import _prepare, _solve_scalar, _solve_simd

    a, _, y = realistic(2 * 8192 + 601, seed=21)
    prep = _prepare(a, 1e4)
    normal = _solve_simd(y, prep)
    for passes in (0, 1):
        np.testing.assert_allclose(_solve_simd(y, prep, passes=passes), normal, rtol=0,
                                   atol=1e-10 * np.abs(normal).max())
    np.testing.assert_allclose(_solve_scalar(y, prep), normal, rtol=0,
                               atol=1e-10 * np.abs(normal).max())
    ref = scipy_nnls(a, y[-300:])
    np.testing.assert_allclose(normal[-300:], ref, rtol=0, atol=1e-8 * np.abs(ref).max())


@pytest.mark.skipif(not HAS_NUMBA, reason="numba not installed")
def test_more_than_eight_components_use_the_scalar_kernel():
    rng = np.random.default_rng(9)
    a = rng.random((14, 9)) + 0.05
    y = rng.normal(size=(300, 14)) + a @ rng.random(9)
    x = unmix_nnls(y, a, method="numba")
    ref = scipy_nnls(a, y)
    np.testing.assert_allclose(x, ref, rtol=0, atol=1e-8 * max(1.0, np.abs(ref).max()))


@pytest.mark.skipif(not HAS_NUMBA, reason="numba not installed")
@pytest.mark.parametrize("k", [2, 9])  # the SIMD kernel and the scalar one
def test_finite_pixels_whose_products_overflow_raise(k):
    """1e308 counts are finite, but the unconstrained solution overflows: the compiled
    kernels refuse the pixel with a count rather than return NaN abundances (review
    finding)."""
    a = np.eye(k) + 0.9 * (1 - np.eye(k))
    y = np.ones((2, k))
    y[0, 0] = 1e308
    with pytest.raises(InputError, match="1 NaN or infinite"):
        unmix_nnls(y, a, method="numba", max_condition=1e6)


@pytest.mark.parametrize("c", [3, 8, 10])  # scalar-path reading, blocks of eight, SIMD
@pytest.mark.parametrize("how", ["numba", "numpy", "poisson", "selection"])
def test_abundances_beyond_float64_are_refused_not_inf(c, how):
    """A count of 1e308 in a channel whose endmember entry is 0.05: the exact abundance
    (2e309) is not a float64. Every path returned inf for it (the numpy one with an
    overflow warning); all refuse the pixel now, with the count of such pixels."""
    a = np.vstack([[0.05, 0.0], [0.0, 1.0], [0.0, 0.5], np.full((c - 3, 2), 0.01)])
    if how == "selection":  # every component one channel of its own
        a = np.zeros((c, 2))
        a[0, 0], a[1, 1] = 0.05, 1.0
    y = np.ones((20, c))
    y[3, 0] = 1e308
    kw = {"weights": "poisson", "method": "numpy"} if how == "poisson" else \
        {"method": "numba" if how == "numba" else "numpy"}
    if how == "numba" and not HAS_NUMBA:
        pytest.skip("numba not installed")
    if how == "poisson":
        y[3, :] = 1e308  # every channel: the weights cannot down-weight it away
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputError, match="1 NaN or infinite pixel"):
            unmix_nnls(y, a, **kw)
    y[3, 0] = 1e6  # large, but representable: solved
    y[3, :] = np.where(np.arange(c) == 0, 1e6, 1.0)
    x = unmix_nnls(y, a, **kw)
    assert np.all(np.isfinite(x))
    if how != "poisson":
        np.testing.assert_allclose(x[3], nnls(a, y[3])[0], rtol=1e-9, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_big_endian_pixels_and_huge_residual_norms(method):
    """Big-endian arrays (tifffile keeps a big-endian TIFF's byte order) are read as their
    values (the compiled path raised a numba TypingError); residual norms of pixels above
    ~1e154, whose squares overflow, are computed from scaled rows (they were inf and NaN
    with a warning; review findings)."""
    a, _, y = realistic(300, seed=4)
    y16 = np.rint(np.maximum(y, 0)).astype(np.uint16)
    for yy in (y, y16, y.astype(np.float32)):
        np.testing.assert_array_equal(unmix_nnls(yy.astype(yy.dtype.newbyteorder(">")), a,
                                                 method=method), unmix_nnls(yy, a, method=method))
    big = y[:5] * 1e155
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = unmix_nnls(big, a, method=method, return_residual=True)
    ref = unmix_nnls(y[:5], a, method=method, return_residual=True)
    np.testing.assert_allclose(r.residual_norm, ref.residual_norm * 1e155, rtol=1e-9)
    np.testing.assert_allclose(r.relative_residual, ref.relative_residual, rtol=1e-9)


@pytest.mark.parametrize("weighted", [False, True])
def test_numpy_path_refuses_overflowing_pixels_like_the_kernels(weighted):
    """The numpy path returned inf abundances (with overflow warnings) for a 1e308 pixel;
    it now refuses it with the compiled kernels' message, and warns nothing."""
    a = np.array([[1.0, 0.2], [0.5, 1.0], [0.1, 0.6]])
    y = np.array([[1e308, 1e308, 1e308], [1.0, 2.0, 3.0]])
    w = np.ones_like(y) if weighted else None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputError, match="1 NaN or infinite pixel"):
            unmix_nnls(y, a, method="numpy", weights=w)


def test_parallel_pieces_do_not_wait_for_a_busy_pool():
    """The calling thread claims pieces itself and waits only for pieces another thread
    took: with every pool thread busy, a call still finishes, results in order. (A fixed
    one-range-per-thread split waited for a pool thread to become free.)"""
    import threading
    import time

    from qdmed.imaging import _nnls

    release = threading.Event()
    pool = _nnls._executor()
    blockers = [pool.submit(release.wait, 60) for _ in range(_nnls._n_threads())]
    try:
        calls = []
        t0 = time.monotonic()
        out = _nnls._run_ranges(lambda i: calls.append(i) or i * i, [(i,) for i in range(7)])
        assert time.monotonic() - t0 < 10  # not held until the blockers time out (60 s)
        assert out == [i * i for i in range(7)]
        assert sorted(calls) == list(range(7))
    finally:
        release.set()
        for b in blockers:
            b.result()


def test_parallel_pieces_reraise_a_kernel_error():
    from qdmed.imaging import _nnls

    def kernel(i):
        if i == 3:
            raise RuntimeError("piece 3 failed")
        return i

    with pytest.raises(RuntimeError, match="piece 3"):
        _nnls._run_ranges(kernel, [(i,) for i in range(6)])


@pytest.mark.parametrize("n", [100, 20_000, 100_000, 1_000_001])
def test_pieces_cover_the_pixels(n, monkeypatch):
    from qdmed.imaging import _nnls

    for threads in (1, 2, 16):
        monkeypatch.setattr(_nnls, "_n_threads", lambda t=threads: t)
        e = _nnls._ranges(n)
        assert e[0] == 0 and e[-1] == n and np.all(np.diff(e) > 0)
        assert len(e) - 1 <= max(1, _nnls._PIECES_PER_THREAD * threads)
        if len(e) > 2:
            assert np.diff(e).min() >= _nnls._MIN_PIXELS_PER_THREAD


def test_parallel_pieces_run_serially_when_the_pool_is_shut_down(monkeypatch):
    """At interpreter exit the executor refuses new work (review finding: RuntimeError
    from a non-daemon thread still unmixing); the caller then runs every piece."""
    from concurrent.futures import ThreadPoolExecutor

    from qdmed.imaging import _nnls

    dead = ThreadPoolExecutor(1)
    dead.shutdown()
    monkeypatch.setattr(_nnls, "_executor", lambda: dead)
    monkeypatch.setattr(_nnls, "_n_threads", lambda: 4)
    assert _nnls._run_ranges(lambda i: -i, [(i,) for i in range(5)]) == [0, -1, -2, -3, -4]


def test_well_conditioned_panels_skip_the_second_check():
    # the channel-space check costs ~20x the compiled solver's time: it switched on at cond
    # ~17 (its gate read rtol, which grows with cond^2: a review), not above 300
    from qdmed.imaging import breast_panel_5plex
    from qdmed.imaging._nnls import RECHECK_COND, _prepare, _recheck_in_channel_space

    prep = _prepare(breast_panel_5plex().endmembers, 1e4)
    assert prep.cond < 20 < RECHECK_COND == 300
    y = np.ones((3, prep.a.shape[0]))
    x = np.zeros((3, prep.a.shape[1]))  # not the solution: left as it is below the gate
    assert _recheck_in_channel_space(y, prep, x, None) is x


def test_analysis_settings_check_and_record_the_read_noise():
    """The read noise Poisson unmixing uses is recorded, the default too; one given without
    Poisson weights, or out of range, is refused when the settings are made."""
    from dataclasses import replace

    from qdmed.imaging import AnalysisSettings

    s = AnalysisSettings(unmix_weights="poisson")
    assert s.to_dict()["read_noise_adu"] == 1.0 and s.unmix_options()["read_noise"] == 1.0
    assert AnalysisSettings(**s.to_dict()).to_dict() == s.to_dict()  # the summary's
    assert replace(s, unmix_weights=None).to_dict()["read_noise_adu"] is None  # back to plain
    assert AnalysisSettings(unmix_weights="poisson", read_noise_adu=3).to_dict()[
        "read_noise_adu"] == 3.0
    assert AnalysisSettings().to_dict()["read_noise_adu"] is None
    with pytest.raises(InputError, match="used by unmix_weights='poisson' only"):
        AnalysisSettings(read_noise_adu=2.0)
    with pytest.raises(InputError, match="read_noise_adu must be from 0.1"):
        AnalysisSettings(unmix_weights="poisson", read_noise_adu=-1)
    with pytest.raises(InputError, match="None \\(plain NNLS\\) or 'poisson'"):
        AnalysisSettings(unmix_weights="gauss")


def test_unmixing_described_old_poisson_summaries_too():
    """Summaries of qdmed's earlier --poisson (observed counts as weights) recorded no read
    noise: they are described as what they were, and a calibration on them is warned
    against a slide unmixed by maximum likelihood (a review)."""
    from qdmed.imaging import AnalysisSettings
    from qdmed.imaging._calibration_file import intensity_scale, scale_warnings
    from qdmed.imaging._poisson import describe_unmixing

    old = {"unmix_weights": "poisson"}
    assert describe_unmixing(old).startswith("Poisson-weighted NNLS (weights 1 / max(counts")
    assert describe_unmixing({}) == "plain NNLS"
    new = AnalysisSettings(unmix_weights="poisson").to_dict()
    assert describe_unmixing(new) == "Poisson maximum likelihood (read noise 1 counts)"
    panel = {"labels": {"HER2": "Qdot 605"}, "channels_nm": [[590, 620]]}
    slide = {"dtype": "uint16"}
    (w,) = scale_warnings(intensity_scale(panel, slide, old), intensity_scale(panel, slide, new))
    assert "Poisson maximum likelihood (read noise 1 counts) here, Poisson-weighted" in w


@pytest.mark.parametrize("method", METHODS)
def test_poisson_on_an_ill_conditioned_panel(method):
    """Above a condition number of 300 the compiled Poisson kernel is not used: the numpy
    loop, each step checked in channel space, serves both methods; its solution is the
    likelihood's (its own weighted NNLS solution to rounding)."""
    rng = np.random.default_rng(0)
    a = rng.random((16, 4))
    a[:, 1] = np.abs(a[:, 0] + rng.normal(size=16) / 1e3)  # cond ~1.6e3
    y = rng.poisson(rng.random((400, 4)) @ a.T * 50).astype(float)
    x = unmix_nnls(y, a, weights="poisson", method=method)
    assert kkt_violation(y, a, x, weights="poisson").max() < 1e-9
    np.testing.assert_allclose(x, unmix_nnls(y, a, weights="poisson", method="numpy"),
                               rtol=0, atol=1e-9 * np.abs(x).max())
