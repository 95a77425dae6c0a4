"""Linear-time reconstruction by dilation and h-maxima (Vincent 1993) against scikit-image's
sort-based implementation: the results must be identical, bit for bit."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi
from skimage.morphology import h_maxima as sk_h_maxima
from skimage.morphology import reconstruction

from qdmed.imaging._reconstruct import h_maxima, reconstruct_dilation


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), h=st.integers(1, 25), w=st.integers(1, 25),
       kind=st.sampled_from(["noise", "integer", "smooth"]))
def test_reconstruction_identical_to_skimage(seed, h, w, kind):
    rng = np.random.default_rng(seed)
    m = rng.random((h, w)) * 10
    if kind == "integer":
        m = np.round(m)  # plateaus and ties
    elif kind == "smooth":
        m = ndi.gaussian_filter(m, 1.5)
    s = m - rng.random((h, w)) * 3
    assert np.array_equal(reconstruct_dilation(s, m), reconstruction(s, m, method="dilation"))


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), hval=st.floats(0.05, 3.0))
def test_h_maxima_identical_to_skimage(seed, hval):
    rng = np.random.default_rng(seed)
    img = ndi.gaussian_filter(rng.random((40, 33)) * 8, 1.0)
    if hval > np.ptp(img):
        assert not h_maxima(img, hval).any()
    else:
        assert np.array_equal(h_maxima(img, hval), sk_h_maxima(img, hval))


def test_h_maxima_on_a_distance_map():
    mask = np.zeros((60, 90), bool)
    yy, xx = np.mgrid[:60, :90]
    mask |= (yy - 30) ** 2 + (xx - 25) ** 2 < 15**2
    mask |= (yy - 30) ** 2 + (xx - 55) ** 2 < 14**2  # two touching discs
    dist = ndi.gaussian_filter(ndi.distance_transform_edt(mask), 1.0)
    got = h_maxima(dist, 0.5)
    assert np.array_equal(got, sk_h_maxima(dist, 0.5))
    assert ndi.label(got)[1] == 2


def test_h_must_be_positive():
    with pytest.raises(ValueError):
        h_maxima(np.array([[0.0, 1.0]]), 0.0)
