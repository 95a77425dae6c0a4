"""Fixtures shared by the test folders."""

import numpy as np
import pytest


def _make_brightfield_tma(path, missing=("B-2",), no_dab=("A-3",)):
    """A 2 x 3 brightfield TMA: discs of scikit-image's IHC image (real H-DAB tissue) on
    white glass, 240 px across, 300 px apart; ``no_dab`` cores keep their haematoxylin only
    (the DAB channel of the colour deconvolution set to 0)."""
    from skimage.color import hed2rgb, rgb2hed
    from skimage.data import immunohistochemistry

    from qdmed.imaging import core_name, write_ome_tiff

    ihc = immunohistochemistry()
    hed = rgb2hed(ihc)
    hed[..., 2] = 0
    plain = (np.clip(hed2rgb(hed), 0, 1) * 255).astype(np.uint8)
    img = np.full((2 * 300 + 60, 3 * 300 + 60, 3), 255, np.uint8)
    yy, xx = np.mgrid[:240, :240]
    disc = (yy - 119.5) ** 2 + (xx - 119.5) ** 2 <= 120 ** 2
    truth = {}
    for r in range(2):
        for c in range(3):
            name = core_name(r, c)
            cy, cx = 180 + 300 * r, 180 + 300 * c
            truth[name] = (cy - 0.5, cx - 0.5)
            if name in missing:
                continue
            src = (plain if name in no_dab else ihc)[100 + 60 * c:340 + 60 * c,
                                                     80 + 90 * r:320 + 90 * r]
            tile = img[cy - 120:cy + 120, cx - 120:cx + 120]
            tile[disc] = src[disc]
    return write_ome_tiff(path, img, pixel_size_um=0.5), truth



@pytest.fixture
def brightfield_tma():
    """Builds a synthetic brightfield H-DAB TMA (:func:`_make_brightfield_tma`):
    ``brightfield_tma(path) -> (path, {core: (centre y, centre x)})``."""
    return _make_brightfield_tma
