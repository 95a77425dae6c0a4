"""Linear-time Euclidean distance transform (Felzenszwalb & Huttenlocher 2012) against
scipy.ndimage.distance_transform_edt: exact squared distances, so identical values."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi

from qdmed.imaging._distance import distance_transform_edt


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), h=st.integers(1, 30), w=st.integers(1, 30),
       p=st.floats(0.0, 1.0))
def test_identical_to_scipy_on_random_masks(seed, h, w, p):
    mask = np.random.default_rng(seed).random((h, w)) < p
    assert np.array_equal(distance_transform_edt(mask), ndi.distance_transform_edt(mask))


def test_identical_on_blobs_and_degenerate_masks():
    rng = np.random.default_rng(3)
    blobs = ndi.binary_dilation(rng.random((300, 257)) > 0.995, iterations=12)
    for mask in (blobs, ~blobs, np.ones((5, 7), bool), np.zeros((5, 7), bool),
                 np.eye(40, dtype=np.uint8), rng.integers(0, 4, (64, 1))):
        assert np.array_equal(distance_transform_edt(mask), ndi.distance_transform_edt(mask))


def test_known_values():
    # a single background pixel in the middle of a 5 x 5 image: distances sqrt(dy^2 + dx^2)
    mask = np.ones((5, 5), bool)
    mask[2, 2] = False
    yy, xx = np.mgrid[:5, :5]
    assert np.array_equal(distance_transform_edt(mask), np.hypot(yy - 2.0, xx - 2.0))
