"""Bucket-queue watershed against scikit-image's heap watershed: identical labels whenever
the marker pixels have distinct values (including images with plateaus elsewhere)."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi
from skimage.segmentation import watershed as sk_watershed

from qdmed.imaging._watershed import watershed


def _case(seed, h, w, kind):
    rng = np.random.default_rng(seed)
    img = rng.random((h, w))
    if kind == "plateaus":
        img = np.round(img * 4)
    elif kind == "smooth":
        img = ndi.gaussian_filter(img, 2.0)
    markers = np.zeros((h, w), np.int32)
    nm = int(rng.integers(1, 7))
    markers[rng.integers(0, h, nm), rng.integers(0, w, nm)] = np.arange(1, nm + 1)
    # distinct marker values: the heap orders equal-valued markers arbitrarily
    img[markers > 0] += rng.random(int((markers > 0).sum())) * 1e-3
    mask = rng.random((h, w)) < 0.9
    return img, markers, mask


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), h=st.integers(1, 30), w=st.integers(1, 30),
       kind=st.sampled_from(["noise", "plateaus", "smooth"]))
def test_identical_to_skimage(seed, h, w, kind):
    img, markers, mask = _case(seed, h, w, kind)
    assert np.array_equal(watershed(img, markers, mask), sk_watershed(img, markers, mask=mask))
    assert np.array_equal(watershed(img, markers), sk_watershed(img, markers))


def test_touching_discs_split_on_the_distance_ridge():
    yy, xx = np.mgrid[:60, :90]
    mask = ((yy - 30) ** 2 + (xx - 25) ** 2 < 15**2) | ((yy - 30) ** 2 + (xx - 55) ** 2 < 14**2)
    dist = ndi.distance_transform_edt(mask)
    markers = np.zeros(mask.shape, np.int64)
    markers[30, 25], markers[30, 55] = 7, 9
    got = watershed(-dist, markers, mask)
    assert np.array_equal(got, sk_watershed(-dist, markers, mask=mask))
    assert set(np.unique(got)) == {0, 7, 9} and got.dtype == np.int64
    assert got[30, 12] == 7 and got[30, 65] == 9


def test_markers_outside_the_mask_are_dropped():
    img = np.zeros((3, 3))
    markers = np.zeros((3, 3), np.int32)
    markers[0, 0] = 1
    mask = np.ones((3, 3), bool)
    mask[0, 0] = False
    assert not watershed(img, markers, mask).any()


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(0, 300),
       kind=st.sampled_from(["uniform", "wide", "ties", "specials"]))
def test_radix_argsort_sorts_like_numpy(seed, n, kind):
    from qdmed.imaging._watershed import _kernel

    rng = np.random.default_rng(seed)
    if kind == "uniform":
        v = rng.random(n)
    elif kind == "wide":  # both signs, exponents from 1e-300 to 1e300
        v = rng.choice([-1.0, 1.0], n) * 10.0 ** rng.uniform(-300, 300, n)
    elif kind == "ties":
        v = rng.integers(-3, 4, n).astype(np.float64)
    else:
        neg_nan = np.array([0x7FF8000000000000 | (1 << 63)], dtype=np.uint64).view(np.float64)[0]
        v = rng.choice(np.array([0.0, -0.0, np.inf, -np.inf, np.nan, neg_nan, 1.5, -1.5,
                                 5e-324]), n)
    order, sv = _kernel()[1](v, np.arange(n, dtype=np.int32))
    assert np.array_equal(sv, np.sort(v), equal_nan=True)  # the sorted values come back too
    assert sorted(order.tolist()) == list(range(n))  # a permutation
    assert np.array_equal(v[order], np.sort(v), equal_nan=True)
    ref = np.argsort(v, kind="stable")
    same = v[order] == v[ref]  # equal keys keep their input order (ties, not -0.0 vs +0.0)
    if kind in ("uniform", "ties"):
        assert np.array_equal(order, ref)
    assert bool(np.all(same | np.isnan(v[ref]) | (v[ref] == 0)))


def test_distinct_value_flood_equals_the_bucket_flood():
    """Distinct values take the list-free flood; it must label exactly as the general
    bucket-queue flood (and as scikit-image) on a larger smooth landscape with many
    markers and a ragged mask."""
    from qdmed.imaging._watershed import _kernel

    rng = np.random.default_rng(3)
    img = ndi.gaussian_filter(rng.random((180, 240)), 3.0)
    mask = img > np.percentile(img, 30)
    markers, _ = ndi.label((img == ndi.minimum_filter(img, 9)) & mask)
    markers = markers.astype(np.int32)
    flood, argsort, _ = _kernel()
    idx = np.flatnonzero(mask)
    vals = img.ravel()[idx]
    assert np.unique(vals).size == vals.size
    pix, sv = argsort(vals, idx.astype(np.int32))
    general = flood(idx, pix, sv, np.where(mask, markers, 0),
                    np.zeros(img.shape, np.int32), np.full(img.size, -1, np.int32),
                    np.empty(img.size, np.int32))
    got = watershed(img, markers, mask)
    assert np.array_equal(got, general)
    assert np.array_equal(got, sk_watershed(img, markers, mask=mask))
    assert len(np.unique(got)) > 20
