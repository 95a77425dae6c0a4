"""Fixtures shared by the test folders."""

import numpy as np
import pytest


def _make_brightfield_tma(path, missing=("B-2",), no_dab=("A-3",)):
    """The library's example brightfield TMA (:func:`qdmed.imaging.example_brightfield_tma`:
    2 x 3 discs of scikit-image's IHC image on white glass, 240 px across, 300 px apart)."""
    from qdmed.imaging import example_brightfield_tma

    return example_brightfield_tma(path, missing=missing, no_dab=no_dab)


@pytest.fixture
def brightfield_tma():
    """Builds a synthetic brightfield H-DAB TMA (:func:`_make_brightfield_tma`):
    ``brightfield_tma(path) -> (path, {core: (centre y, centre x)})``."""
    return _make_brightfield_tma


def _qpi_description(name, image_type, exposure_us=1000):
    """One page's XML as Akoya/PerkinElmer QPTIFF writers lay it out (the elements that
    Bio-Formats' VectraReader reads: Name, Color, ExposureTime, Objective; the declaration
    says utf-16 although the text is utf-8, as Bio-Formats notes of real files)."""
    return ('<?xml version="1.0" encoding="utf-16"?>\r\n<PerkinElmer-QPI-ImageDescription>'
            '<DescriptionVersion>2</DescriptionVersion>'
            '<AcquisitionSoftware>VectraPolaris</AcquisitionSoftware>'
            f'<ImageType>{image_type}</ImageType><Identifier>qdmed-test</Identifier>'
            f'<Name>{name}</Name><Color>255,0,0</Color>'
            f'<ExposureTime>{exposure_us}</ExposureTime>'
            '<Objective>20x</Objective></PerkinElmer-QPI-ImageDescription>')


def _write_qptiff(path, image_yxc, names, *, pixel_size_um=0.5, tile=None, levels=1,
                  software="PerkinElmer-QPI", exposure_us=None):
    """A QPTIFF (or inForm component_data.tif) in the page layout of Bio-Formats'
    VectraReader: one grayscale page per channel (XML description each), an RGB thumbnail,
    then for tiled files the reduced resolutions (NewSubfileType 1), each halving."""
    import tifffile

    img = np.asarray(image_yxc)
    res = dict(resolution=(1e4 / pixel_size_um, 1e4 / pixel_size_um),
               resolutionunit="CENTIMETER")
    kw = dict(software=software, metadata=None, **res, **({"tile": (tile, tile)} if tile else {}))
    with tifffile.TiffWriter(path) as tw:
        exp = exposure_us or [1000] * len(names)
        for c, name in enumerate(names):
            tw.write(img[..., c], description=_qpi_description(name, "FullResolution",
                                                               exp[c]), **kw)
        thumb = np.zeros((max(1, img.shape[0] // 16), max(1, img.shape[1] // 16), 3), np.uint8)
        tw.write(thumb, description=_qpi_description("Thumbnail", "Thumbnail"),
                 software=software, metadata=None)
        for lv in range(1, levels if tile else 1):
            f = 2 ** lv
            for c, name in enumerate(names):
                tw.write(np.ascontiguousarray(img[::f, ::f, c]), subfiletype=1,
                         description=_qpi_description(name, "ReducedResolution"), **kw)
    return path


_write_qptiff.description = _qpi_description  # one page's XML, for files made by hand


@pytest.fixture
def write_qptiff():
    return _write_qptiff


def _control_calibration(panel, *, size=640, **simulate_kw):
    """HER2 cut-offs calibrated on synthetic control cell lines of known IHC score
    (MDA-MB-468 0, MCF-7 1+, BT474 3+), simulated with `simulate_kw` and analysed with
    `panel`."""
    from qdmed.imaging import analyze_field, calibrate_her2, simulate_field

    ctrls = {}
    for name, seed in (("MDA-MB-468", 10), ("MCF-7", 11), ("BT474", 12)):
        f = simulate_field((size, size), preset=name, seed=seed, **simulate_kw)
        ctrls[name] = analyze_field(f.image, panel).table
    return calibrate_her2(ctrls, categories={"MDA-MB-468": "0", "MCF-7": "1+"})


@pytest.fixture(scope="session")
def control_calibration():
    return _control_calibration


@pytest.fixture(scope="session")
def vignetted_ihc():
    """scikit-image's IHC image framed in glass (242/255), the image and a blank field
    (250/255 at the centre) recorded through an illumination falling to 56 % at the corners."""
    import skimage.data

    n = 768
    img = np.full((n, n, 3), 242, np.uint8)
    img[128:640, 128:640] = skimage.data.immunohistochemistry()
    yy, xx = np.mgrid[:n, :n]
    shade = 1 - 0.22 * ((yy - n / 2) ** 2 + (xx - n / 2) ** 2) / (n / 2) ** 2
    blank = np.rint(250 * shade[..., None] * np.ones(3)).astype(np.uint8)
    seen = np.rint(img * (blank / 250.0)).astype(np.uint8)
    return img, seen, blank
