"""The compiled per-cell sums equal the np.bincount reference bit for bit."""

import numpy as np
import pytest

from qdmed.imaging._cellsums import compartment_totals, pixels_by_component, sector_totals


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint16])
def test_compiled_sums_equal_bincount(dtype):
    rng = np.random.default_rng(5)
    ab = (rng.gamma(1.5, 2.0, (64, 48, 5)) * 100).astype(dtype)
    n = 37
    flat = rng.integers(0, n + 1, 64 * 48)
    code = np.where(flat > 0, rng.integers(1, 4, flat.size), 0).astype(np.int8)
    ab = pixels_by_component(ab)
    fast = compartment_totals(ab, flat, code, n, method="numba")
    ref = compartment_totals(ab, flat, code, n, method="numpy")
    assert fast.shape == (n, 3, 5)
    assert np.array_equal(fast, ref)
    # one check against a plain loop
    i, c, k = 7, 2, 3
    sel = (flat == i + 1) & (code == c + 1)
    assert fast[i, c, k] == pytest.approx(ab[sel, k].astype(float).sum())
    sel = np.flatnonzero(code == 3)
    key = rng.integers(0, 90, sel.size)
    assert np.array_equal(sector_totals(ab, sel, key, 90, method="numba"),
                          sector_totals(ab, sel, key, 90, method="numpy"))


def test_no_cells():
    ab = pixels_by_component(np.ones((4, 4, 2), np.float32))
    flat = np.zeros(16, np.int64)
    code = np.zeros(16, np.int8)
    assert compartment_totals(ab, flat, code, 0).shape == (0, 3, 2)


def test_compiled_tiebreak_and_reach_trim_equal_numpy():
    from qdmed.imaging._cells import (
        _global_tiebreak,
        _tiebreak_numpy,
        _trim_reach,
        _trim_reach_numpy,
    )

    for shape, off in (((37, 53), (0, 0)), ((20, 9), (-5, 2**33 + 7)), ((1, 1), (4096, 77))):
        assert np.array_equal(_global_tiebreak(shape, off), _tiebreak_numpy(shape, off))
    rng = np.random.default_rng(3)
    lab = np.zeros((80, 90), np.int32)
    lab[rng.integers(0, 80, 40), rng.integers(0, 90, 40)] = rng.integers(1, 12, 40)
    out = rng.integers(0, 12, (80, 90)).astype(np.int32)
    out[out == 11] = 0
    for reach in (0.5, 3.0, 20.0):
        assert np.array_equal(_trim_reach(lab, out, reach), _trim_reach_numpy(lab, out, reach))
