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


def _write_svs(path, image_rgb, *, mpp="0.4990", tile=256, levels=2):
    """An Aperio SVS in the page order OpenSlide's and tifffile's readers expect: the
    full-resolution tiled JPEG page (its ImageDescription "Aperio Image Library ...|AppMag =
    20|MPP = ..."; no MPP field when `mpp` is None), the stripped thumbnail, the reduced
    levels (each 4x smaller), then the label (LZW, NewSubfileType 1) and the macro (JPEG,
    NewSubfileType 9)."""
    import tifffile

    img = np.asarray(image_rgb)
    h, w = img.shape[:2]
    mpp_field = "" if mpp is None else f"|MPP = {mpp}"
    head = "Aperio Image Library v12.0.15 \r\n"
    kw = dict(photometric="rgb", metadata=None)
    with tifffile.TiffWriter(path) as tw:
        tw.write(img, tile=(tile, tile), compression="jpeg", **kw, description=(
            f"{head}{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) JPEG/RGB Q=70|AppMag = 20"
            f"|StripeWidth = 2040|ScanScope ID = SS1234{mpp_field}|Left = 25.1|Top = 19.0"))
        thumb = np.ascontiguousarray(img[::8, ::8])
        tw.write(thumb, compression="jpeg", **kw, description=(
            f"{head}{w}x{h} -> {thumb.shape[1]}x{thumb.shape[0]} - |AppMag = 20{mpp_field}"))
        for lv in range(1, levels):
            red = np.ascontiguousarray(img[::4 ** lv, ::4 ** lv])
            tw.write(red, tile=(tile, tile), compression="jpeg", **kw, description=(
                f"{head}{w}x{h} -> {red.shape[1]}x{red.shape[0]} - |AppMag = 20{mpp_field}"))
        tw.write(np.full((200, 300, 3), 240, np.uint8), compression="lzw", subfiletype=1,
                 description=f"{head}label 300x200", **kw)
        tw.write(np.full((300, 600, 3), 200, np.uint8), compression="jpeg", subfiletype=9,
                 description=f"{head}macro 600x300", **kw)
    return path


@pytest.fixture
def write_svs():
    return _write_svs


def _jpeg_with_restarts(rgb, mcu_interval, subsampling):
    """A baseline JPEG of `rgb` with a restart marker every `mcu_interval` MCUs (Pillow's
    encoder), and the offsets of its restart intervals' entropy-coded data (NDPI
    McuStarts): after the SOS segment, then after each RSTn marker."""
    import io
    import struct

    from PIL import Image

    b = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(
        b, "JPEG", quality=95, subsampling=subsampling, restart_marker_blocks=mcu_interval)
    jpeg = b.getvalue()
    i = 2  # after SOI: marker segments up to and including SOS
    while True:
        marker, length = struct.unpack(">HH", jpeg[i:i + 4])
        i += 2 + length
        if marker == 0xFFDA:
            break
    starts = [i]
    while (i := jpeg.find(b"\xff", i)) >= 0:
        if 0xD0 <= jpeg[i + 1] <= 0xD7:  # RSTn (0xFF00 is a stuffed byte, 0xFFFF fill)
            starts.append(i + 2)
        i += 1 if jpeg[i + 1] == 0xFF else 2
    return jpeg, starts


def _write_ndpi(path, levels_rgb, *, pixel_size_um=0.4536, magnification=20.0,
                mcu_interval=None, subsampling=2):
    """A Hamamatsu NDPI laid out as NanoZoomer scanners write it and as OpenSlide and
    tifffile read it: a classic little-endian TIFF header and 12-byte IFD entries, but an
    8-byte offset to the first IFD and to each next one, each IFD followed by the high 32
    bits of its entries' values; Make/Model/Software, the resolution in pixels per cm, the
    Hamamatsu tags 65420 (file format) and 65421 (magnification; -1 marks the macro, added
    last); one JPEG strip per page.

    With `mcu_interval`, level 0 is written as the scanners write their large pages: one
    JPEG with a restart marker every `mcu_interval` MCUs (chroma `subsampling` as Pillow
    takes it: 2 is 4:2:0, 0 is 4:4:4), and the NDPI tag McuStarts (65426) giving the
    offset, from the strip's start, of each restart interval's entropy-coded data: the
    first just after the scan header, the others just after their RST marker, as OpenSlide
    checks them (Goode et al., J Pathol Inform 2013; openslide-vendor-hamamatsu.c). tifffile
    reads such a page as tiles of one interval each."""
    import struct

    import imagecodecs

    buf = bytearray(b"II" + struct.pack("<H", 42) + b"\0" * 8)
    w0 = levels_rgb[0].shape[1]
    pages = [(np.asarray(im), pixel_size_um * w0 / im.shape[1], magnification * im.shape[1] / w0)
             for im in levels_rgb]
    pages.append((np.full((200, 500, 3), 200, np.uint8), None, -1.0))

    def blob(b):
        off = len(buf)
        buf.extend(b + b"\0" * (len(b) % 2))
        return struct.pack("<I", off)

    next_at = 4  # where the offset to the next IFD goes
    for i, (im, ps, mag) in enumerate(pages):
        mcu_starts = None
        if mcu_interval is not None and i == 0:
            jpeg, mcu_starts = _jpeg_with_restarts(im, mcu_interval, subsampling)
        else:
            jpeg = imagecodecs.jpeg8_encode(np.ascontiguousarray(im), level=95)
        strip = len(buf)
        buf.extend(jpeg)
        h, w = im.shape[:2]
        u32 = lambda v: struct.pack("<I", v)  # noqa: E731
        u16 = lambda v: struct.pack("<HH", v, 0)  # noqa: E731
        tags = [(256, 4, 1, u32(w)), (257, 4, 1, u32(h)),
                (258, 3, 3, blob(struct.pack("<3H", 8, 8, 8))), (259, 3, 1, u16(7)),
                (262, 3, 1, u16(2)), (271, 2, 10, blob(b"Hamamatsu\0")),
                (272, 2, 7, blob(b"C13210\0")), (273, 4, 1, u32(strip)), (277, 3, 1, u16(3)),
                (278, 4, 1, u32(h)), (279, 4, 1, u32(len(jpeg))),
                (305, 2, 15, blob(b"NDP.scan 3.4.0\0")),
                (65420, 4, 1, u32(1)), (65421, 11, 1, struct.pack("<f", mag))]
        if mcu_starts is not None:
            tags.append((65426, 4, len(mcu_starts),
                         blob(struct.pack(f"<{len(mcu_starts)}I", *mcu_starts))))
        if ps is not None:
            res = blob(struct.pack("<II", round(1e7 / ps), 1000))  # pixels per cm
            tags += [(282, 5, 1, res), (283, 5, 1, res), (296, 3, 1, u16(3))]
        tags.sort()
        struct.pack_into("<Q", buf, next_at, len(buf))
        buf.extend(struct.pack("<H", len(tags)))
        for code, typ, count, val in tags:
            buf.extend(struct.pack("<HHI", code, typ, count) + val)
        next_at = len(buf)
        buf.extend(b"\0" * (8 + 4 * len(tags)))  # next IFD (0: last), high bits (0: < 4 GB)
    with open(path, "wb") as f:
        f.write(bytes(buf))
    return path


_write_ndpi.jpeg_with_restarts = _jpeg_with_restarts  # level 0's JPEG, for references


@pytest.fixture
def write_ndpi():
    return _write_ndpi


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
