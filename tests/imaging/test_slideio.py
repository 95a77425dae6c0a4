"""Tests for qdmed.imaging._slideio: OME-TIFF / OME-Zarr writers, reader, truth files."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pandas as pd
import pytest
import tifffile

from qdmed.errors import FileFormatError, InputError
from qdmed.imaging._slideio import (
    _downsample2,
    read_slide,
    read_truth,
    write_ome_tiff,
    write_ome_zarr,
    write_truth,
)
from qdmed.imaging._synthetic import simulate_field

NAMES = ("QD525", "QD605", "AF")


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return rng.integers(0, 4000, (600, 700, 3), dtype=np.uint16)


def test_ome_tiff_round_trip(tmp_path, image):
    p = write_ome_tiff(tmp_path / "a.ome.tif", image, channel_names=NAMES, pixel_size_um=0.5,
                       tile=256)
    s = read_slide(p)
    assert s.format == "ome-tiff" and s.path == p
    assert s.shape == image.shape and s.dtype == np.uint16
    assert s.channel_names == NAMES
    assert s.pixel_size_um == pytest.approx(0.5)
    np.testing.assert_array_equal(s.data.compute(), image)
    np.testing.assert_array_equal(s.data[100:300, 250:600, 1].compute(),
                                  image[100:300, 250:600, 1])
    # pyramid: 700 -> 350 -> 175 px ('auto' halves until one 256 px tile holds the image)
    assert [lv.shape for lv in s.levels] == [(600, 700, 3), (300, 350, 3), (150, 175, 3)]
    np.testing.assert_array_equal(s.levels[1].compute(), _downsample2(image))
    with tifffile.TiffFile(p) as tf:
        page = tf.series[0].pages[0]
        assert page.is_tiled and page.tilewidth == 256
        assert len(page.subifds or ()) == 2
        assert 'PhysicalSizeX="0.5"' in tf.ome_metadata
    json.dumps(s.to_dict())
    assert not list(tmp_path.glob(".*tmp*"))


def test_ome_tiff_float_dask_and_explicit_levels(tmp_path, image):
    import dask.array as da

    f = image.astype(np.float32) / 7
    p1 = write_ome_tiff(tmp_path / "np.ome.tif", f, pixel_size_um=0.25, tile=128,
                        pyramid_levels=2, compression=None)
    p2 = write_ome_tiff(tmp_path / "dk.ome.tif", da.from_array(f, chunks=(200, 300, 3)),
                        pixel_size_um=0.25, tile=128, pyramid_levels=2)
    a, b = read_slide(p1), read_slide(p2)
    assert a.channel_names == ("C0", "C1", "C2")  # no names given: defaults
    for la, lb in zip(a.levels, b.levels, strict=True):
        np.testing.assert_array_equal(la.compute(), lb.compute())
    assert len(a.levels) == 2 and a.dtype == np.float32
    np.testing.assert_array_equal(a.data.compute(), f)


def test_plain_tiff_defaults(tmp_path, image):
    p = tmp_path / "plain.tif"
    tifffile.imwrite(p, image, photometric="minisblack", planarconfig="contig")
    s = read_slide(p)
    assert s.format == "tiff" and s.shape == image.shape
    assert s.channel_names == ("C0", "C1", "C2") and s.pixel_size_um is None
    np.testing.assert_array_equal(s.data.compute(), image)
    p2 = tmp_path / "gray.tiff"
    tifffile.imwrite(p2, image[..., 0], resolution=(1e4 / 0.65, 1e4 / 0.65),
                     resolutionunit="CENTIMETER")
    s2 = read_slide(p2)
    assert s2.shape == (600, 700, 1) and s2.pixel_size_um == pytest.approx(0.65)


@pytest.mark.parametrize("keep", [0.6, 0.97, 64, 7])
def test_truncated_tiff_raises(tmp_path, image, keep):
    p = write_ome_tiff(tmp_path / "t.ome.tif", image, channel_names=NAMES, pixel_size_um=0.5,
                       tile=256)
    data = p.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep
    p.write_bytes(data[:n])
    with pytest.raises(FileFormatError, match="t.ome.tif"):
        read_slide(p).data.compute()


def test_not_a_tiff_and_bad_paths(tmp_path):
    p = tmp_path / "junk.tif"
    p.write_bytes(b"this is not a tiff file at all" * 10)
    with pytest.raises(FileFormatError, match="junk.tif"):
        read_slide(p)
    with pytest.raises(InputError, match="does not exist"):
        read_slide(tmp_path / "missing.ome.tif")
    q = tmp_path / "x.png"
    q.write_bytes(b"")
    with pytest.raises(InputError, match="unsupported suffix"):
        read_slide(q)
    with pytest.raises(InputError, match="channel_names"):
        write_ome_tiff(tmp_path / "a.tif", np.zeros((8, 8, 2), np.uint8), channel_names=["a"])
    with pytest.raises(InputError, match="tile"):
        write_ome_tiff(tmp_path / "a.tif", np.zeros((8, 8, 2), np.uint8), tile=100)
    with pytest.raises(InputError, match="pixel_size_um"):
        write_ome_zarr(tmp_path / "a.zarr", np.zeros((8, 8, 2), np.uint8), pixel_size_um=0)


def test_overwrite_policy(tmp_path):
    img = np.ones((32, 32, 2), np.uint16)
    p = write_ome_tiff(tmp_path / "o.ome.tif", img)
    with pytest.raises(InputError, match="exists"):
        write_ome_tiff(p, img, overwrite=False)
    z = write_ome_zarr(tmp_path / "o.ome.zarr", img)
    write_ome_zarr(z, img * 3)  # replaced atomically
    np.testing.assert_array_equal(read_slide(z).data.compute(), img * 3)
    with pytest.raises(InputError, match="exists"):
        write_ome_zarr(z, img, overwrite=False)
    assert sorted(q.name for q in tmp_path.iterdir()) == ["o.ome.tif", "o.ome.zarr"]


def test_ome_zarr_round_trip(tmp_path, image):
    import dask.array as da
    import zarr

    p = write_ome_zarr(tmp_path / "a.ome.zarr", image, channel_names=NAMES, pixel_size_um=0.5,
                       chunks=(256, 256))
    s = read_slide(p)
    assert s.format == "ome-zarr" and s.channel_names == NAMES
    assert s.pixel_size_um == pytest.approx(0.5)
    np.testing.assert_array_equal(s.data.compute(), image)
    assert [lv.shape for lv in s.levels] == [(600, 700, 3), (300, 350, 3), (150, 175, 3)]
    np.testing.assert_array_equal(s.levels[1].compute(), _downsample2(image))
    np.testing.assert_array_equal(s.levels[2].compute(), _downsample2(_downsample2(image)))
    root = zarr.open_group(str(p), mode="r")
    assert root.metadata.zarr_format == 2
    ms = root.attrs["multiscales"][0]
    assert ms["version"] == "0.4"
    assert [a["name"] for a in ms["axes"]] == ["c", "y", "x"]
    assert ms["datasets"][1]["coordinateTransformations"][0]["scale"] == [1.0, 1.0, 1.0]
    assert [c["label"] for c in root.attrs["omero"]["channels"]] == list(NAMES)
    assert root["0"].chunks == (1, 256, 256)
    # a dask array is written chunk by chunk and gives the same store content
    q = write_ome_zarr(tmp_path / "b.zarr", da.from_array(image, chunks=(100, 128, 3)),
                       channel_names=NAMES, pixel_size_um=0.5, chunks=(256, 256))
    for la, lb in zip(s.levels, read_slide(q).levels, strict=True):
        np.testing.assert_array_equal(la.compute(), lb.compute())


def test_ome_zarr_display_windows_follow_the_data(tmp_path):
    """omero windows (what napari and other NGFF viewers show from black to full colour):
    start 0, end the full-resolution data's 99.9th percentile (from every pixel here: fewer
    than the sample's 2^20); min/max the type's range for integers, the finite values
    written for floats. They spanned the whole type before: unmixed abundances in the
    hundreds under a 0-1 window showed saturated, counts of hundreds under 0-65535 black.
    A single infinite or negative pixel neither voids the range nor sets the black level."""
    import zarr

    rng = np.random.default_rng(4)
    counts = rng.gamma(2.0, [50.0, 5.0], (600, 700, 2))
    odd = counts.copy()
    odd[0, 0, 1], odd[1, 1, 1] = np.inf, -3.0
    p = write_ome_zarr(tmp_path / "f.ome.zarr", odd, chunks=(256, 256))
    for c, w in enumerate(w["window"] for w in zarr.open_group(str(p), mode="r")
                          .attrs["omero"]["channels"]):
        assert w["start"] == 0.0 and w["min"] == (0.0 if c == 0 else -3.0)
        assert w["end"] == pytest.approx(np.percentile(odd[..., c][np.isfinite(odd[..., c])],
                                                       99.9))
        assert w["max"] == pytest.approx(np.nanmax(np.where(np.isfinite(odd[..., c]),
                                                            odd[..., c], np.nan)))
    p = write_ome_zarr(tmp_path / "u.ome.zarr", counts.astype(np.uint16), chunks=(256, 256),
                       significant_bits=12)
    w = zarr.open_group(str(p), mode="r").attrs["omero"]["channels"][0]["window"]
    assert (w["min"], w["max"], w["start"]) == (0, 4095, 0) and 100 < w["end"] < 4095


def test_zarr_without_ngff_metadata(tmp_path):
    import zarr

    g = zarr.open_group(str(tmp_path / "bare.zarr"), mode="w", zarr_format=2)
    g.create_array("0", shape=(2, 8, 8), dtype="uint8")
    with pytest.raises(FileFormatError, match="multiscales"):
        read_slide(tmp_path / "bare.zarr")
    p = write_ome_zarr(tmp_path / "noname.zarr", np.zeros((16, 16, 2), np.uint8))
    s = read_slide(p)
    assert s.channel_names == ("C0", "C1") and s.pixel_size_um is None


def test_absent_ome_zarr_chunks_are_warned_not_read_silently_as_dark(tmp_path):
    """Zarr reads an absent chunk as the fill value: a slide missing one read as dark
    tissue without a word. A chunk whose area the coarser level shows signal in is lost,
    and warned by channel and region; one whose area is empty there too was skipped by its
    writer (zarr's default for chunks of the fill value: glass around a section) and is
    not warned; without a coarser level the two cannot be told apart and absent chunks are
    warned as either. Chunk files of zero bytes (a copy cut short) are warned too. qdmed's
    writer stores every chunk, zeros too."""
    import warnings

    import zarr

    from qdmed.errors import QdmedWarning

    img = np.random.default_rng(0).integers(1, 4000, (512, 512, 3)).astype(np.uint16)
    img[:, 384:] = 0  # glass: whole chunks of zeros, stored all the same
    p = write_ome_zarr(tmp_path / "s.ome.zarr", img, channel_names=NAMES, chunks=(256, 256))
    assert read_slide(p).warnings == ()
    (p / "0" / "1" / "1" / "0").unlink()  # channel QD605, y 256-512, x 0-256
    with pytest.warns(QdmedWarning, match=r"1 of 12 chunks .* not stored \(channel QD605, "
                      r"y 256-512, x 0-256\) where the coarser levels show signal: lost") \
            as rec:
        s = read_slide(p)
    assert s.warnings == (str(rec[0].message),)
    got = s.read_region(0, 512, 0, 512)
    assert (got[256:, :256, 1] == 0).all()  # zeros, as zarr reads them
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_slide(p, check_chunks=False).warnings == ()
    (p / "0" / "0" / "0" / "0").write_bytes(b"")  # a copy cut short
    with pytest.warns(QdmedWarning, match=r"1 chunks are empty files \(channel QD525, "
                      r"y 0-256, x 0-256\)"):
        read_slide(p)

    # written by zarr's defaults: chunks of zeros skipped. With a coarser level showing
    # nothing there, they are not warned; with no coarser level, they are, as either
    def by_zarr(name, levels):
        g = zarr.open_group(str(tmp_path / name), mode="w", zarr_format=2)
        a = np.zeros((1, 64, 64), np.uint8)
        a[:, :32, :32] = 9
        for lev in range(levels):
            z = g.create_array(str(lev), shape=a.shape, chunks=(1, 32 >> lev, 32 >> lev),
                               dtype="uint8")
            z[:] = a
            a = a[:, ::2, ::2]
        g.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": n} for n in "cyx"],
                                   "datasets": [{"path": str(v)} for v in range(levels)]}]
        return tmp_path / name

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_slide(by_zarr("pyr.zarr", 2)).warnings == ()
    with pytest.warns(QdmedWarning, match=r"3 of 4 chunks .*\(channel C0, y 0-32, x 32-64; "
                      r"channel C0, y 32-64, x 0-32; channel C0, y 32-64, x 32-64\) \(with "
                      r"no coarser level"):
        read_slide(by_zarr("flat.zarr", 1))
    # levels of floor-halved sizes (250 -> 125 -> 62: 4x, not 4.03x) and glass from x 192
    # on, skipped: not warned (a review: the fractional factor looked one coarse pixel into
    # the tissue beside it, "8 chunks lost")
    g = zarr.open_group(str(tmp_path / "uneven.zarr"), mode="w", zarr_format=2)
    a = np.zeros((1, 250, 250), np.uint8)
    a[:, :, :192] = 9
    for lev, n in enumerate((250, 125, 62)):
        f = 250 // n if lev else 1
        z = g.create_array(str(lev), shape=(1, n, n), chunks=(1, 64, 64), dtype="uint8")
        z[:] = a[:, :n * f:f, :n * f:f][:, :n, :n]
    g.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": n} for n in "cyx"],
                               "datasets": [{"path": str(v)} for v in range(3)]}]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_slide(tmp_path / "uneven.zarr").warnings == ()


def test_write_truth_round_trip(tmp_path):
    e = np.array([[1.0, 0.1, 0.2], [0.1, 1.0, 0.3]])
    f = simulate_field((128, 160), preset="BT474", endmembers=e, marker_names=["HER2", "ER"],
                       seed=4)
    d = write_truth(tmp_path / "truth", f, abundances=True)
    r = read_truth(d)
    pd.testing.assert_frame_equal(r["truth"], f.truth)
    np.testing.assert_array_equal(r["cells"], f.cells)
    np.testing.assert_array_equal(r["nuclei"], f.nuclei)
    np.testing.assert_array_equal(r["abundances"], f.abundances)
    assert r["summary"]["params"]["seed"] == 4
    write_ome_tiff(d / "image.ome.tif", f.image, channel_names=f.channel_names,
                   pixel_size_um=f.pixel_size_um)
    assert read_slide(d / "image.ome.tif").channel_names == ("C0", "C1")
    with pytest.raises(InputError, match="SyntheticField"):
        write_truth(tmp_path / "t2", object())
    with pytest.raises(FileFormatError, match="truth folder"):
        read_truth(tmp_path / "nothing")


def test_corrupted_tile_data_raises(tmp_path, image):
    p = write_ome_tiff(tmp_path / "c.ome.tif", image, channel_names=NAMES, tile=256)
    with tifffile.TiffFile(p) as tf:
        off = int(tf.series[0].pages[0].dataoffsets[1])
    data = bytearray(p.read_bytes())
    data[off + 10:off + 2000] = np.random.default_rng(1).integers(0, 256, 1990, np.uint8).tobytes()
    p.write_bytes(bytes(data))
    s = read_slide(p)  # the structure is intact: it opens; decoding the pixels fails
    with pytest.raises(FileFormatError, match="c.ome.tif.*corrupted"):
        s.data.compute()
    # the failed chunk is recorded and every other chunk of the read still finishes (a
    # decoding error raised inside zarr's event loop left them pending, and a command that
    # exited on it printed "Task was destroyed but it is pending!" for each)
    import zarr

    from qdmed.imaging._slideio import _tiff_store_class

    with tifffile.TiffFile(p) as tf:
        store = _tiff_store_class()(tf.series[0], level=0)
        got = np.asarray(zarr.open_array(store, mode="r")[:])
    assert len(store.errors) == 1  # page 0 (channel 0), tile 1: y 0-256, x 256-512
    good = np.ones(got.shape, bool)
    good[0, :256, 256:512] = False
    np.testing.assert_array_equal(got[good], np.moveaxis(image, 2, 0)[good])


def test_direct_zarr_region_equals_the_dask_view(tmp_path):
    from qdmed.imaging import read_slide, write_ome_zarr

    rng = np.random.default_rng(2)
    img = rng.integers(0, 4000, (300, 260, 3)).astype(np.uint16)
    p = write_ome_zarr(tmp_path / "s.ome.zarr", img, chunks=(128, 128))
    s = read_slide(p)
    for box in ((0, 300, 0, 260), (100, 229, 37, 200), (250, 400, 250, 400)):
        got = s.read_region(*box)
        assert np.array_equal(got, np.asarray(s.data[box[0]:box[1], box[2]:box[3], :]))
    assert np.array_equal(s.read_region(5, 9, 7, 8), img[5:9, 7:8])


@pytest.mark.parametrize("software", ["PerkinElmer-QPI", None])
def test_qptiff_channel_names_levels_and_pixel_size(tmp_path, write_qptiff, software):
    """Akoya/PerkinElmer QPTIFF in the page layout Bio-Formats' VectraReader documents (one
    page per channel with an XML description, RGB thumbnail, reduced resolutions); without
    the Software tag, as an inForm component_data.tif may come, the names are still read
    (Akoya's phenoptr read_components takes them from each page's <Name>)."""
    rng = np.random.default_rng(0)
    img = rng.random((96, 128, 3)).astype(np.float32)
    names = ["DAPI", "Qdot 605", "Autofluorescence"]
    p = write_qptiff(tmp_path / "scan.qptiff", img, names, pixel_size_um=0.4972,
                     tile=32 if software else None, levels=2, software=software)
    s = read_slide(p)
    assert s.format == "qptiff"
    assert s.channel_names == tuple(names)
    assert s.pixel_size_um == pytest.approx(0.4972, rel=1e-6)
    assert s.exposure_ms == (1.0, 1.0, 1.0)  # ExposureTime 1000, in microseconds
    assert s.shape == (96, 128, 3) and s.dtype == np.float32
    np.testing.assert_array_equal(s.read_region(0, 96, 0, 128), img)  # thumbnail left out
    if software:
        assert [lv.shape for lv in s.levels] == [(96, 128, 3), (48, 64, 3)]
        np.testing.assert_array_equal(s.levels[1].compute(), img[::2, ::2])


def _ihc_2x2():
    from skimage.data import immunohistochemistry

    return np.ascontiguousarray(np.tile(immunohistochemistry(), (2, 2, 1)))  # 1024^2 RGB


def test_aperio_svs_pyramid_and_mpp(tmp_path, write_svs):
    """An Aperio SVS (the page order OpenSlide documents: full resolution, thumbnail, reduced
    levels, label, macro) is read as its pyramid alone, with the pixel size of its
    ImageDescription's MPP field (OpenSlide's aperio.MPP), whatever its suffix."""
    img = _ihc_2x2()
    p = write_svs(tmp_path / "case 7.svs", img, mpp="0.4990")
    s = read_slide(p)
    assert (s.format, s.shape, s.dtype, s.pixel_size_um) == ("svs", (1024, 1024, 3),
                                                             np.uint8, 0.499)
    assert [lv.shape for lv in s.levels] == [(1024, 1024, 3), (256, 256, 3)]
    with tifffile.TiffFile(p) as tf:  # the JPEG tiles as tifffile decodes the page itself
        ref, ref1 = tf.pages[0].asarray(), tf.pages[2].asarray()
    np.testing.assert_array_equal(s.read_region(100, 700, 250, 1024), ref[100:700, 250:])
    np.testing.assert_array_equal(s.levels[1].compute(), ref1)
    assert np.abs(ref.astype(int) - img).mean() < 3  # JPEG: close to the image
    # an Aperio file saved as .tif is still an SVS
    assert read_slide(write_svs(tmp_path / "aperio.tif", img[:512, :512])).format == "svs"
    # no MPP field: no pixel size (never a guess); an MPP that is no length: unknown, and
    # said in the slide's note (the scan is read all the same): as for every format, no
    # default is assumed for it, the size must be given
    s = read_slide(write_svs(tmp_path / "nompp.svs", img[:256, :256], mpp=None, levels=1))
    assert s.pixel_size_um is None and s.pixel_size_note is None
    from qdmed.imaging._slideio import pixel_size_or_default

    assert pixel_size_or_default(None, note=s.pixel_size_note)[0] == 0.5  # assumed, warned
    for bad in ("abc", "0", "-0.25", "250"):
        s = read_slide(write_svs(tmp_path / "bad.svs", img[:256, :256], mpp=bad, levels=1))
        assert s.pixel_size_um is None and s.shape == (256, 256, 3)
        assert re.search(rf"bad.svs.*MPP = '{bad}' is not a pixel", s.pixel_size_note)
        with pytest.raises(InputError, match=r"MPP = .*give the slide's pixel size"):
            pixel_size_or_default(None, hint="--pixel-size-um", note=s.pixel_size_note)


def test_aperio_jpeg2000_tiles(tmp_path):
    """Aperio's own JPEG 2000 tiles (TIFF compression 33005, RGB; older scans and archives):
    an SVS whose tiles are JPEG 2000 codestreams, its Compression tag set to 33005 as Aperio
    writes it, decodes to the pixels (lossless here)."""
    import struct

    img = _ihc_2x2()
    p = tmp_path / "j2k.svs"
    tifffile.imwrite(p, img, tile=(256, 256), photometric="rgb", compression="jpeg2000",
                     metadata=None, description="Aperio Image Library v10.0.51\r\n1024x1024 "
                     "[0,0 1024x1024] (256x256) J2K/KDU Q=30|AppMag = 40|MPP = 0.2520")
    with tifffile.TiffFile(p) as tf:
        off = tf.pages[0].tags["Compression"].valueoffset
    data = bytearray(p.read_bytes())
    struct.pack_into("<H", data, off, 33005)
    p.write_bytes(bytes(data))
    s = read_slide(p)
    assert (s.format, s.pixel_size_um) == ("svs", 0.252)
    np.testing.assert_array_equal(s.read_region(0, 1024, 0, 1024), img)


def test_hamamatsu_ndpi_pyramid_and_pixel_size(tmp_path, write_ndpi):
    """A Hamamatsu NDPI (64-bit IFD offsets): its pyramid without the macro image, and the
    pixel size of its resolution tags in pixels per cm (as OpenSlide reads NDPI)."""
    import imagecodecs

    img = _ihc_2x2()
    small = np.ascontiguousarray(img[::4, ::4])
    p = write_ndpi(tmp_path / "case.ndpi", [img, small], pixel_size_um=0.4536)
    s = read_slide(p)
    assert (s.format, s.shape, s.pixel_size_um) == ("ndpi", (1024, 1024, 3),
                                                    pytest.approx(0.4536, rel=1e-6))
    assert [lv.shape for lv in s.levels] == [(1024, 1024, 3), (256, 256, 3)]
    # the strips decoded by imagecodecs alone, outside any TIFF reader
    ref = imagecodecs.jpeg8_decode(imagecodecs.jpeg8_encode(img, level=95))
    np.testing.assert_array_equal(s.read_region(10, 1000, 300, 777), ref[10:1000, 300:777])
    np.testing.assert_array_equal(s.levels[1].compute(), imagecodecs.jpeg8_decode(
        imagecodecs.jpeg8_encode(small, level=95)))


@pytest.mark.parametrize("subsampling", [0, 2])
def test_ndpi_level_read_by_its_restart_intervals(tmp_path, write_ndpi, subsampling):
    """A NanoZoomer's large level: one JPEG with restart markers, read by the intervals its
    McuStarts tag locates (tiles one MCU row tall). The colours are the stream's (YCbCr
    decoded to RGB, as OpenSlide and a decode of the whole JPEG give them); tifffile alone
    read these tiles' YCbCr samples as RGB. With 4:4:4 chroma the pixels equal the whole
    JPEG's decode; with 4:2:0, chroma upsampling cannot look across an interval's edge, so
    pixels within 2 px of one (or of the image's bottom edge, which cuts an interval) may
    differ, as in any reader that decodes by intervals, and all others are equal."""
    import imagecodecs

    img = _ihc_2x2()[:1000]  # the last MCU row partly outside the image
    p = write_ndpi(tmp_path / "big.ndpi", [img, np.ascontiguousarray(img[::4, ::4])],
                   mcu_interval=4, subsampling=subsampling)
    with tifffile.TiffFile(p) as tf:
        page = tf.pages[0]
        th, tw = page.tilelength, page.tilewidth
    assert (th, tw) == ((8, 32) if subsampling == 0 else (16, 64))
    s = read_slide(p)
    assert (s.format, s.shape) == ("ndpi", (1000, 1024, 3))
    got = s.read_region(0, 1000, 0, 1024)
    ref = imagecodecs.jpeg8_decode(write_ndpi.jpeg_with_restarts(img, 4, subsampling)[0])
    assert np.abs(got.astype(int) - img).mean() < 2.0  # a JPEG of the image at q95
    yy, xx = np.mgrid[:1000, :1024]
    inner = ((yy % th >= 2) & (yy % th < th - 2) & (xx % tw >= 2) & (xx % tw < tw - 2)
             & (yy < 1000 - 2))  # nor the image's last rows, mid-interval (1000 = 62.5 x 16)
    if subsampling == 0:
        np.testing.assert_array_equal(got, ref)
    else:
        np.testing.assert_array_equal(got[inner], ref[inner])
        assert np.abs(got.astype(int) - ref).mean() < 0.5


@pytest.mark.parametrize("suffix,vendor,tool", [
    (".scn", "Leica SCN", "bfconvert"), (".bif", "Ventana BIF", "bfconvert"),
    (".mrxs", "MIRAX", "QuPath")])  # Bio-Formats does not read MIRAX; OpenSlide does
def test_other_whole_slide_formats_are_refused_with_the_way_to_convert(tmp_path, suffix,
                                                                       vendor, tool):
    p = tmp_path / f"slide{suffix}"
    p.write_bytes(b"II*\0")
    with pytest.raises(InputError, match=rf"{vendor}.*convert it to OME-TIFF.*{tool}"):
        read_slide(p)


def test_qptiff_with_malformed_or_nameless_xml(tmp_path, write_qptiff):
    img = np.zeros((32, 32, 2), np.float32)
    p = write_qptiff(tmp_path / "a_component_data.tif", img, ["DAPI", "X"])
    good = write_qptiff.description("X", "FullResolution")
    with tifffile.TiffWriter(tmp_path / "bad.qptiff") as tw:
        tw.write(img[..., 0], description=good, software="PerkinElmer-QPI", metadata=None)
        tw.write(img[..., 1], description=good.replace("</Name>", "</Nam>"),
                 software="PerkinElmer-QPI", metadata=None)
    with pytest.raises(FileFormatError, match="QPTIFF XML description of page 1 is malformed"):
        read_slide(tmp_path / "bad.qptiff")
    with tifffile.TiffWriter(tmp_path / "noname.qptiff") as tw:
        for c in range(2):
            tw.write(img[..., c], description=good.replace("<Name>X</Name>", ""),
                     software="PerkinElmer-QPI", metadata=None)
    assert read_slide(tmp_path / "noname.qptiff").channel_names == ("C0", "C1")
    assert read_slide(p).channel_names == ("DAPI", "X")


def test_ome_emission_wavelengths_are_read_and_checked_against_the_panel(tmp_path):
    """OME Channel/@EmissionWavelength (as Bio-Formats writes converted spectral data): read
    in nm, and a panel whose bands do not hold them is refused."""
    from qdmed.imaging import breast_panel_5plex, spectral_channels
    from qdmed.imaging._analyze import check_channels
    from qdmed.imaging._panel import build_panel_from_spectra

    panel = breast_panel_5plex()
    centres = [0.5 * (lo + hi) for lo, hi in panel.channels]
    img = np.zeros((8, 32, 32), np.uint16)
    p = tmp_path / "lambda.ome.tif"
    tifffile.imwrite(p, img, ome=True, metadata={
        "axes": "CYX", "Channel": {"Name": [f"ChS{i + 1}" for i in range(8)],
                                   "EmissionWavelength": [c / 1000 for c in centres],
                                   "EmissionWavelengthUnit": ["µm"] * 8}})
    s = read_slide(p)
    assert s.emission_nm == pytest.approx(centres)
    assert check_channels(s, panel) is panel
    # given as the bands' edges: accepted; as the centres of the next bands: refused
    for shift, ok in ((-18.75, True), (18.75, True), (37.5, False)):
        moved = dataclasses.replace(s, emission_nm=tuple(c + shift for c in centres))
        if ok:
            assert check_channels(moved, panel) is panel
        else:
            with pytest.raises(InputError, match="outside the panel's band"):
                check_channels(moved, panel)
    shifted = build_panel_from_spectra(list(panel.markers), list(panel.labels),
                                       list(panel.spectra), spectral_channels(8, 500, 800),
                                       autofluorescence=panel.autofluorescence)
    with pytest.raises(InputError, match=r"channel 0 \(ChS1\) has emission wavelength "
                                         r"458\.75 nm \(OME metadata\), outside the panel's "
                                         r"band 500-538nm"):
        check_channels(s, shifted)
    tifffile.imwrite(tmp_path / "bad.ome.tif", img, ome=True, metadata={
        "axes": "CYX", "Channel": {"EmissionWavelength": [500] * 8,
                                   "EmissionWavelengthUnit": ["furlong"] * 8}})
    # an unusual unit leaves the wavelengths out (they only serve this check)
    assert read_slide(tmp_path / "bad.ome.tif").emission_nm is None


def test_brightfield_qptiff_is_read_as_rgb(tmp_path, write_qptiff):
    """A brightfield QPTIFF is one RGB page (Bio-Formats' VectraReader notes): its one
    <Name> does not name three channels, which are named as the RGB samples they are."""
    rgb = np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    with tifffile.TiffWriter(tmp_path / "bf.qptiff") as tw:
        tw.write(rgb, photometric="rgb", software="PerkinElmer-QPI", metadata=None,
                 description=write_qptiff.description("Brightfield", "FullResolution"))
    s = read_slide(tmp_path / "bf.qptiff")
    assert s.format == "qptiff" and s.shape == (48, 64, 3) and s.channel_names == ("R", "G",
                                                                                  "B")
    np.testing.assert_array_equal(s.read_region(0, 48, 0, 64), rgb)


def test_ome_exposure_times_and_the_cohort_flag(tmp_path):
    """OME Plane/@ExposureTime (seconds unless ExposureTimeUnit says otherwise) per channel,
    and the cohort's flag on slides acquired at other exposures than most."""
    from qdmed.imaging._cohort import _flag_exposure_differences

    tifffile.imwrite(tmp_path / "e.ome.tif", np.zeros((2, 16, 16), np.uint16), ome=True,
                     metadata={"axes": "CYX", "Plane": {"ExposureTime": [0.1, 250],
                                                        "ExposureTimeUnit": ["s", "ms"]}})
    assert read_slide(tmp_path / "e.ome.tif").exposure_ms == (100.0, 250.0)
    assert read_slide(tmp_path / "e.ome.tif").to_dict()["exposure_ms"] == [100.0, 250.0]
    names = ["DAPI", "Qdot 605"]
    rows = [{"slide": s, "message": ""} for s in ("a", "b", "c", "d")]
    warn = _flag_exposure_differences(rows, {"a": (names, [100, 250]), "b": (names, [100, 250]),
                                             "c": (names, [100.5, 250]),  # within 1 %
                                             "d": (names, [100, 500])})
    assert [r.get("exposure_differs", False) for r in rows] == [False, False, False, True]
    assert rows[3]["message"] == ("exposure differs from the cohort's: Qdot 605 500 ms (most "
                                  "slides 250)")
    assert warn and warn[0].startswith("1 of the 4 slides whose files record exposure times "
                                       "were acquired with other exposures")
    assert _flag_exposure_differences(rows[:2], {"a": (names, [1, 2])}) == []
    rows = [{"slide": s, "message": ""} for s in ("a", "b")]  # a tie: the first slide's
    _flag_exposure_differences(rows, {"a": (names, [1, 2]), "b": (names, [1, 4])})
    assert rows[1]["message"].endswith("Qdot 605 4 ms (the most common 2)")
    # exposures within 1 % of each other are one exposure: the majority is not flagged
    ms = [100, 100.3, 100, 100.3, 250, 250, 250]
    rows = [{"slide": f"s{i}", "message": ""} for i in range(7)]
    _flag_exposure_differences(rows, {f"s{i}": (["DAPI"], [t]) for i, t in enumerate(ms)})
    assert [r["exposure_differs"] for r in rows] == [False] * 4 + [True] * 3
    assert rows[4]["message"].endswith("DAPI 250 ms (most slides 100.15)")
    # no usable exposure in the file: none recorded
    tifffile.imwrite(tmp_path / "n.ome.tif", np.zeros((2, 16, 16), np.uint16), ome=True,
                     metadata={"axes": "CYX", "Plane": {"ExposureTime": [0.1, "NaN"]}})
    assert read_slide(tmp_path / "n.ome.tif").exposure_ms is None


def test_imagej_tiff_channel_names_and_pixel_size(tmp_path):
    """A channel stack saved by ImageJ/Fiji (tifffile writes the same hyperstack layout):
    names from its slice labels, pixel size from the resolution tags in its unit (ImageJ
    sets the TIFF ResolutionUnit to none and writes unit=micron in its description)."""
    img = np.arange(3 * 32 * 40, dtype=np.uint16).reshape(3, 32, 40)
    tifffile.imwrite(tmp_path / "fiji.tif", img, imagej=True, resolution=(1 / 0.325, 1 / 0.325),
                     metadata={"axes": "CYX", "Labels": ["DAPI", "Qdot 605", "AF"],
                               "unit": "micron"})
    s = read_slide(tmp_path / "fiji.tif")
    assert s.format == "imagej-tiff" and s.channel_names == ("DAPI", "Qdot 605", "AF")
    assert s.pixel_size_um == pytest.approx(0.325, rel=1e-4)  # rational tags: 1e-4
    np.testing.assert_array_equal(s.read_region(0, 32, 0, 40), np.moveaxis(img, 0, -1))
    tifffile.imwrite(tmp_path / "px.tif", img, imagej=True, resolution=(2.0, 2.0),
                     metadata={"axes": "CYX", "unit": "pixel"})
    s = read_slide(tmp_path / "px.tif")  # no length unit: no pixel size, default names
    assert s.pixel_size_um is None and s.channel_names == ("C0", "C1", "C2")


@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_contiguous_tiff_regions_read_through_a_memory_map(tmp_path, byteorder):
    """An uncompressed contiguous TIFF (one strip: ImageJ stacks, cellpose masks) is read
    block by block from a memory map, in either byte order, with the same pixels."""
    a = (np.arange(3 * 300 * 200, dtype=np.uint32).reshape(3, 300, 200) * 7919) % 65521
    path = tmp_path / "c.tif"
    tifffile.imwrite(path, a, byteorder=byteorder, photometric="minisblack")
    with tifffile.TiffFile(path) as tf:
        assert tf.series[0].dataoffset is not None and tf.byteorder == byteorder
    s = read_slide(path)
    r = s.read_region(10, 250, 20, 180)
    assert r.dtype == np.uint32 and r.dtype.isnative
    np.testing.assert_array_equal(r, np.moveaxis(a, 0, -1)[10:250, 20:180])


def test_review_findings_zarr_metadata_units_outputs_and_tiff_quirks(tmp_path):
    """NGFF lengths in any unit the spec names (unknown ones refused), malformed datasets and
    undecodable chunks named, never a raw error; the writer never replaces what is not a
    Zarr image; a 72-dpi editor resolution is no pixel size; LZW tiles decode."""
    import zarr

    img = np.arange(64 * 48 * 2, dtype=np.uint16).reshape(64, 48, 2)
    z = write_ome_zarr(tmp_path / "u.ome.zarr", img, pixel_size_um=0.5)

    def set_unit(unit, path="0"):
        g = zarr.open_group(str(z), mode="r+")
        ms = g.attrs["multiscales"]
        for a in ms[0]["axes"]:
            if a["name"] in ("x", "y"):
                a["unit"] = unit
        ms[0]["datasets"][0]["coordinateTransformations"] = [
            {"type": "scale", "scale": [1.0, 5e-7, 5e-7] if unit == "meter" else
             [1.0, 0.5, 0.5]}]
        ms[0]["datasets"][0]["path"] = path
        g.attrs["multiscales"] = ms

    set_unit("meter")
    assert read_slide(z).pixel_size_um == pytest.approx(0.5)
    set_unit("parsec")
    with pytest.raises(FileFormatError, match="unit 'parsec' is not a length unit"):
        read_slide(z)
    set_unit("micrometer", path="nowhere")
    with pytest.raises(FileFormatError, match="'nowhere' does not exist"):
        read_slide(z)
    # a chunk that does not decode: named by its size against its Blosc header, before the
    # decoder reads past its end (a review's truncated chunk crashed 2 reads of 21), on the
    # full-resolution reads and on dask's (pyramid levels, overviews)
    good = write_ome_zarr(tmp_path / "c.ome.zarr", img)
    chunk = next(f for f in (good / "0").rglob("*") if f.is_file() and not f.name.startswith("."))
    key = chunk.relative_to(good).as_posix()
    whole = chunk.read_bytes()
    for bad, said in ((whole[:len(whole) // 2], f"its Blosc header says {len(whole)}"),
                      (whole[:7], "less than a Blosc header")):
        chunk.write_bytes(bad)
        with pytest.raises(FileFormatError, match=rf"chunk {key} is {len(bad)} bytes, {said} "
                                                  r"\(truncated or corrupted\)"):
            read_slide(good).read_region(0, 64, 0, 48)
        with pytest.raises(FileFormatError, match=rf"chunk {key} is {len(bad)} bytes"):
            read_slide(good).data.compute()
    chunk.write_bytes(whole)
    np.testing.assert_array_equal(read_slide(good).read_region(0, 64, 0, 48),
                                  read_slide(good).data[:64, :48].compute())
    # bytes after the frame are not read: such a chunk decodes, as before the check
    before = read_slide(good).read_region(0, 64, 0, 48)
    chunk.write_bytes(whole + bytes(10))
    np.testing.assert_array_equal(read_slide(good).read_region(0, 64, 0, 48), before)
    # its size as its header says, its compressed data scrambled: the decoder's own error
    mid = len(whole) // 2
    chunk.write_bytes(whole[:mid] + bytes(255 - b for b in whole[mid:mid + 64]) +
                      whole[mid + 64:])
    with pytest.raises(FileFormatError, match="cannot decode the region"):
        read_slide(good).read_region(0, 64, 0, 48)
    # the writer refuses to replace a plain folder or a file
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "precious.csv").write_text("1")
    for dest in (tmp_path / "keep", tmp_path / "x.ome.tif"):
        if dest.suffix == ".tif":
            dest.write_bytes(b"tiff")
        with pytest.raises(InputError, match="must end in .zarr|not a Zarr image"):
            write_ome_zarr(dest, img)
    assert (tmp_path / "keep" / "precious.csv").read_text() == "1"
    # an image editor's 72 dpi is not a pixel size; LZW tiles decode (imagecodecs)
    tifffile.imwrite(tmp_path / "dpi.tif", img[..., 0], resolution=(72, 72),
                     resolutionunit="INCH", compression="lzw")
    s = read_slide(tmp_path / "dpi.tif")
    assert s.pixel_size_um is None
    np.testing.assert_array_equal(s.read_region(0, 64, 0, 48)[..., 0], img[..., 0])


@pytest.mark.parametrize("bad", ["0.0", "nan", "-.5", "1e9"])
def test_a_pixel_size_that_is_no_size_is_refused_unless_one_is_given(tmp_path, bad):
    # PhysicalSizeX 0 divided by zero, NaN failed as an integer, -0.5 was named as an
    # internal setting (a review): the file and its field are named, and a given pixel size
    # is used instead
    from qdmed.imaging import analyze_slide, breast_panel_5plex
    from qdmed.imaging._slideio import pixel_size_or_default

    good = tmp_path / "good.ome.tif"
    panel = breast_panel_5plex()
    write_ome_tiff(good, np.zeros((64, 64, 8), np.uint16), pixel_size_um=0.5,
                   channel_names=list(panel.channel_names))
    path = tmp_path / "bad.ome.tif"
    path.write_bytes(good.read_bytes().replace(b'PhysicalSizeX="0.5"',
                                               f'PhysicalSizeX="{bad}"'.encode()))
    s = read_slide(path)
    assert s.pixel_size_um is None and "OME PhysicalSizeX reads" in s.pixel_size_note
    with pytest.raises(InputError, match=r"bad.ome.tif'?: the pixel size in OME PhysicalSizeX "
                                         r"reads .* um, which is no pixel size.*give the "
                                         r"slide's pixel size \(--pixel-size-um\)"):
        pixel_size_or_default(s.pixel_size_um, hint="--pixel-size-um",
                              note=s.pixel_size_note)
    with pytest.raises(InputError, match="which is no pixel size"):
        analyze_slide(path, panel, tmp_path / "out", progress=False)
    assert read_slide(good).pixel_size_note is None
    if bad == "0.0":  # DAB IHC of one image said "declares no pixel size" (a review)
        import subprocess
        import sys

        rgb = tmp_path / "rgb.ome.tif"
        write_ome_tiff(rgb, np.full((64, 64, 3), 200, np.uint8), pixel_size_um=0.5)
        rgb.write_bytes(rgb.read_bytes().replace(b'PhysicalSizeX="0.5"',
                                                 b'PhysicalSizeX="0.0"'))
        r = subprocess.run([sys.executable, "-m", "qdmed", "image", "dab", str(rgb),
                            "--od-cutoffs", "0.05,0.15,0.3"], capture_output=True, text=True)
        assert r.returncode == 2 and "which is no pixel size" in r.stderr, r.stderr


def test_a_strip_thinner_than_an_overview_block(tmp_path):
    # 3 x 5000 px: block means of 5 px left no rows (dask: "Empty tuples are not allowed")
    from qdmed.imaging._analyze import reference_origin, slide_overview

    for shape in ((3, 5000, 2), (5000, 3, 2)):
        path = tmp_path / f"strip{shape[0]}.ome.tif"
        write_ome_tiff(path, np.ones(shape, np.uint16), pixel_size_um=0.5,
                       pyramid_levels=1)
        s = read_slide(path)
        ov, f = slide_overview(s, 1024)
        assert ov.shape == ((1, 1000) if shape[0] == 3 else (1000, 1)) and f == 5
        assert ov.min() == ov.max() == 2  # the strip's own values, repeated: no zeros
        y0, x0 = reference_origin(s, 256)
        assert 0 <= y0 <= max(0, shape[0] - 256) and 0 <= x0 <= max(0, shape[1] - 256)


def test_pixels_that_are_not_square_are_refused(tmp_path):
    # PhysicalSizeY 2.0 with X 0.5 was read as 0.5 x 0.5 um: areas 4x off, unsaid
    good = tmp_path / "good.ome.tif"
    write_ome_tiff(good, np.zeros((64, 64, 2), np.uint16), pixel_size_um=0.5)
    path = tmp_path / "tall.ome.tif"
    path.write_bytes(good.read_bytes().replace(b'PhysicalSizeY="0.5"', b'PhysicalSizeY="2.0"'))
    with pytest.raises(FileFormatError, match=r"0.5 um wide \(OME PhysicalSizeX\) but 2 um "
                                              r"high .*resample"):
        read_slide(path)
    with pytest.raises(InputError, match="up to 1000"):
        write_ome_tiff(tmp_path / "x.ome.tif", np.zeros((8, 8, 1), np.uint16),
                       pixel_size_um=1e9)
    # metres read as um (a review's 5e-7 ran an analysis for ever; 1e-9 asked for 30 GiB):
    # refused when given, and not believed from a file
    with pytest.raises(InputError, match=r"below 0.01 um.*another unit \(metres, mm\)"):
        write_ome_tiff(tmp_path / "x.ome.tif", np.zeros((8, 8, 1), np.uint16),
                       pixel_size_um=5e-7)
    fine = write_ome_tiff(tmp_path / "fine.ome.tif", np.zeros((64, 64, 2), np.uint16),
                          pixel_size_um=0.125)
    metres = tmp_path / "metres.ome.tif"  # the same length: the OME-XML stays whole
    metres.write_bytes(fine.read_bytes().replace(b'PhysicalSizeY="0.125"',
                                                 b'PhysicalSizeY="5e-07"')
                       .replace(b'PhysicalSizeX="0.125"', b'PhysicalSizeX="5e-07"'))
    s = read_slide(metres)
    assert s.pixel_size_um is None and "reads 5e-07 um, which is no pixel size (one from " \
        "0.01 to 1000 um; another unit?)" in s.pixel_size_note


def test_ome_xml_cut_short_is_said(tmp_path):
    # an ImageDescription holding the first 500 characters of its OME-XML was read as a
    # plain TIFF (channels C0..C7, no pixel size) without a word (a review)
    good = tmp_path / "good.ome.tif"
    write_ome_tiff(good, np.zeros((32, 32, 2), np.uint16), pixel_size_um=0.5)
    with tifffile.TiffFile(good) as tf:
        xml = tf.ome_metadata
    cut = tmp_path / "cut.ome.tif"
    tifffile.imwrite(cut, np.zeros((2, 32, 32), np.uint16), description=xml[:500],
                     metadata=None)
    with pytest.raises(FileFormatError, match="the OME-XML in ImageDescription is malformed"):
        read_slide(cut)


def test_non_square_pixels_are_refused_in_every_format(tmp_path):
    # a review: only OME-TIFF refused them; Zarr, plain and ImageJ TIFF read X's size
    import zarr

    img = np.zeros((64, 48, 2), np.uint16)
    z = write_ome_zarr(tmp_path / "z.ome.zarr", img, pixel_size_um=0.5)
    g = zarr.open_group(str(z), mode="r+")
    ms = g.attrs["multiscales"]
    ms[0]["datasets"][0]["coordinateTransformations"] = [{"type": "scale",
                                                          "scale": [1.0, 1.0, 0.5]}]
    g.attrs["multiscales"] = ms
    with pytest.raises(FileFormatError, match=r"0.5 um wide \(NGFF x scale\) but 1 um high"):
        read_slide(z)
    tifffile.imwrite(tmp_path / "t.tif", img[..., 0], resolution=(1e4 / 0.5, 1e4 / 1.0),
                     resolutionunit="CENTIMETER")
    with pytest.raises(FileFormatError, match=r"0.5 um wide \(the TIFF XResolution\) but 1 "):
        read_slide(tmp_path / "t.tif")
    tifffile.imwrite(tmp_path / "ij.tif", img.transpose(2, 0, 1)[None, None], imagej=True,
                     resolution=(2.0, 1.0), metadata={"axes": "TZCYX", "unit": "um"})
    with pytest.raises(FileFormatError, match=r"0.5 um wide \(the ImageJ XResolution\) but 1"):
        read_slide(tmp_path / "ij.tif")
    tifffile.imwrite(tmp_path / "sq.tif", img[..., 0], resolution=(2e4, 2e4),
                     resolutionunit="CENTIMETER")  # square: read as before
    assert read_slide(tmp_path / "sq.tif").pixel_size_um == pytest.approx(0.5)


def test_ngff_scale_of_the_multiscales_applies_to_every_level(tmp_path):
    # NGFF 0.4: transforms of the multiscales apply after each dataset's own (a review: a
    # 0.25 um slide whose writer kept its scale there read as 1 um, areas 16x off)
    import zarr

    z = write_ome_zarr(tmp_path / "z.ome.zarr", np.zeros((64, 48, 2), np.uint16),
                       pixel_size_um=0.5)
    g = zarr.open_group(str(z), mode="r+")
    ms = g.attrs["multiscales"]
    for ds in ms[0]["datasets"]:
        ds["coordinateTransformations"] = [{"type": "scale", "scale": [1.0, 1.0, 1.0]}]
    ms[0]["coordinateTransformations"] = [{"type": "scale", "scale": [1.0, 0.25, 0.25]}]
    g.attrs["multiscales"] = ms
    assert read_slide(z).pixel_size_um == pytest.approx(0.25)


def test_a_depth_or_time_axis_is_not_read_as_channels(tmp_path):
    # a review analysed 8 focal planes (ZYX) as 8 spectral channels: 204 cells, unsaid
    import zarr

    stack = np.zeros((8, 32, 32), np.uint16)
    for axes, word in (("ZYX", "Z"), ("TYX", "time")):
        tifffile.imwrite(tmp_path / f"{axes}.ome.tif", stack, metadata={"axes": axes})
        with pytest.raises(FileFormatError, match=rf"a {word}.* axis of 8 planes, not "
                                                  r"channels: .*project the stack"):
            read_slide(tmp_path / f"{axes}.ome.tif")
    z = write_ome_zarr(tmp_path / "z.ome.zarr", stack.transpose(1, 2, 0))
    g = zarr.open_group(str(z), mode="r+")
    ms = g.attrs["multiscales"]
    ms[0]["axes"][0] = {"name": "z", "type": "space", "unit": "micrometer"}
    g.attrs["multiscales"] = ms
    with pytest.raises(FileFormatError, match=r"a Z \(depth\) axis of 8 planes"):
        read_slide(z)
    ms[0]["axes"][0] = {"name": "lambda", "type": "channel"}  # named otherwise: by its type
    g.attrs["multiscales"] = ms
    assert read_slide(z).shape == (32, 32, 8)


def test_malformed_ngff_metadata_is_one_clear_error_or_default_names(tmp_path):
    # a review: "omero": [] and friends were internal errors (AttributeError, KeyError)
    import zarr

    from qdmed.errors import QdmedWarning

    z = write_ome_zarr(tmp_path / "z.ome.zarr", np.zeros((32, 32, 2), np.uint16),
                       channel_names=["DAPI", "HER2"])
    g = zarr.open_group(str(z), mode="r+")
    good = dict(g.attrs)
    for omero, why in (([], "is not an object"), ({"channels": "abc"}, "is not an object"),
                       ({"channels": [{"label": "DAPI"}]}, "names 1 channels but the image "
                                                           "has 2"),
                       ({"channels": [{"label": "DAPI"}, {"label": ""}]},
                        "has a channel without a usable 'label'")):
        g.attrs["omero"] = omero
        with pytest.warns(QdmedWarning, match=f"NGFF 'omero' block {why}"):
            s = read_slide(z)
        assert s.channel_names == ("C0", "C1") and any("omero" in w for w in s.warnings)
    g.attrs["omero"] = {"channels": [{"label": 5}, {"label": 6.5}]}  # numbers: as text
    assert read_slide(z).channel_names == ("5", "6.5")
    g.attrs.update(good)
    ms = g.attrs["multiscales"]
    ms[0]["axes"][1] = {"type": "space"}
    g.attrs["multiscales"] = ms
    with pytest.raises(FileFormatError, match=r"NGFF axis 1 \(\{'type': 'space'\}\) has no "
                                              r"'name'"):
        read_slide(z)


def test_several_images_in_one_ome_tiff_or_bioformats2raw_zarr(tmp_path):
    # bfconvert writes a slide's label and overview as images of their own, often first:
    # a review's file was read as its 100 x 200 macro image, unsaid. The largest is read,
    # and the others named
    import zarr

    from qdmed.errors import QdmedWarning

    scan = (np.arange(8 * 64 * 80) % 997).astype(np.uint16).reshape(8, 64, 80)
    with tifffile.TiffWriter(tmp_path / "multi.ome.tif", ome=True) as tw:
        tw.write(np.zeros((20, 40, 3), np.uint8), photometric="rgb",
                 metadata={"Name": "macro image"})
        tw.write(scan, metadata={"axes": "CYX", "Name": "scan", "PhysicalSizeX": 0.5,
                                 "PhysicalSizeY": 0.5,
                                 "Channel": {"Name": [f"ch{i}" for i in range(8)]}})
    with pytest.warns(QdmedWarning, match=r"holds 2 images \(0: macro image \(40 x 20 px\); "
                                          r"1: scan \(80 x 64 px\)\): image 1, the largest"):
        s = read_slide(tmp_path / "multi.ome.tif")
    assert s.shape == (64, 80, 8) and s.pixel_size_um == 0.5 and s.channel_names[0] == "ch0"
    np.testing.assert_array_equal(s.read_region(0, 64, 0, 80), scan.transpose(1, 2, 0))
    assert "holds 2 images" in s.warnings[0]
    # bioformats2raw's layout: the images are groups 0, 1, ... beside an OME group
    b2r = tmp_path / "b2r.ome.zarr"
    root = zarr.open_group(str(b2r), mode="w", zarr_format=2)
    root.attrs["bioformats2raw.layout"] = 3
    root.create_group("OME").attrs["series"] = ["0", "1"]
    for name, im, ps in (("0", np.zeros((16, 16, 3), np.uint8), None),
                         ("1", scan.transpose(1, 2, 0), 0.5)):
        write_ome_zarr(tmp_path / "i.ome.zarr", im, pixel_size_um=ps).rename(b2r / name)
    with pytest.warns(QdmedWarning, match=r"holds 2 images in bioformats2raw's layout .*"
                                          r"image 1, the largest, is read"):
        s = read_slide(b2r)
    assert s.shape == (64, 80, 8) and s.path == b2r and s.pixel_size_um == 0.5
    np.testing.assert_array_equal(s.read_region(0, 64, 0, 80), scan.transpose(1, 2, 0))


def test_an_rgb_ome_tiff_whose_one_channel_has_a_name(tmp_path):
    # OME: an interleaved RGB plane is one Channel (SamplesPerPixel 3), a name is legal
    rgb = np.random.default_rng(0).integers(0, 255, (32, 40, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgbn.ome.tif", rgb, photometric="rgb",
                     metadata={"axes": "YXS", "Channel": {"Name": ["Brightfield"]}})
    s = read_slide(tmp_path / "rgbn.ome.tif")
    assert s.channel_names == ("R", "G", "B")
    np.testing.assert_array_equal(s.read_region(0, 32, 0, 40), rgb)


@pytest.mark.parametrize("lazy", [False, True])
def test_rgb_ome_tiff_written_as_one_interleaved_plane(tmp_path, lazy):
    # the example brightfield TMA was written as 3 grey channels: QuPath and Bio-Formats
    # opened it as fluorescence, without colour deconvolution (a review)
    import dask.array as da

    rgb = np.random.default_rng(1).integers(0, 255, (100, 140, 3), dtype=np.uint8)
    src = da.from_array(rgb, chunks=(32, 32, 3)) if lazy else rgb
    p = write_ome_tiff(tmp_path / "bf.ome.tif", src, pixel_size_um=0.5, tile=32, rgb=True)
    with tifffile.TiffFile(p) as tf:
        page = tf.pages[0]
        assert page.photometric == tifffile.PHOTOMETRIC.RGB and page.samplesperpixel == 3
        assert 'SamplesPerPixel="3"' in tf.ome_metadata
    s = read_slide(p)
    grey = read_slide(write_ome_tiff(tmp_path / "grey.ome.tif", rgb, tile=32))
    assert s.channel_names == ("R", "G", "B") and len(s.levels) == len(grey.levels) == 4
    np.testing.assert_array_equal(s.read_region(0, 100, 0, 140), rgb)
    for a, b in zip(s.levels, grey.levels, strict=True):  # the same pyramid
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(InputError, match="3 channels of uint8; got 3 of uint16"):
        write_ome_tiff(tmp_path / "x.ome.tif", rgb.astype(np.uint16), rgb=True)


def test_ome_pixel_unit_pixel_is_no_physical_size(tmp_path):
    # OME UnitsLength "pixel": no physical size recorded (was refused as an unknown unit)
    path = tmp_path / "px.ome.tif"
    tifffile.imwrite(path, np.zeros((2, 32, 32), np.uint16), metadata={
        "axes": "CYX", "PhysicalSizeX": 1.0, "PhysicalSizeXUnit": "pixel",
        "PhysicalSizeY": 1.0, "PhysicalSizeYUnit": "pixel"})
    assert b'PhysicalSizeXUnit="pixel"' in path.read_bytes()
    s = read_slide(path)
    assert s.pixel_size_um is None and s.pixel_size_note is None


def _fiji_plain_stack(path, stack, extra=""):
    """A TIFF as Fiji saves a plain (non-hyper) stack: a page per slice, its description
    "ImageJ=...\nimages=N\nslices=N" without hyperstack=true (`extra`: more lines)."""
    with tifffile.TiffWriter(path) as tw:
        for i, page in enumerate(stack):
            tw.write(page, photometric="minisblack", contiguous=True, metadata=None,
                     description=f"ImageJ=1.54f\nimages={len(stack)}\nslices={len(stack)}\n"
                                 f"unit=micron\n{extra}" if i == 0 else None)
    return path


def test_fiji_plain_stack_is_read_as_channels_and_said(tmp_path):
    # Fiji saves "Images to Stack" (a spectral series, say) as slices, which tifffile reads
    # as Z: read as channels, said; a hyperstack's Z is refused (a review: refused both)
    from qdmed.errors import QdmedWarning

    stack = (np.arange(3 * 16 * 16) % 251).astype(np.uint16).reshape(3, 16, 16)
    p = _fiji_plain_stack(tmp_path / "fiji.tif", stack)
    with pytest.warns(QdmedWarning, match=r"an ImageJ stack of 3 slices without hyperstack "
                                          r"dimensions is read as channels"):
        s = read_slide(p)
    assert s.shape == (16, 16, 3) and len(s.warnings) == 1
    np.testing.assert_array_equal(s.read_region(0, 16, 0, 16), stack.transpose(1, 2, 0))
    tifffile.imwrite(tmp_path / "hyper.tif", stack, imagej=True, metadata={"axes": "ZYX"})
    with pytest.raises(FileFormatError, match=r"a Z \(depth\) axis of 3 planes"):
        read_slide(tmp_path / "hyper.tif")
    # a plain stack with a Z spacing is a focal series (Fiji writes no hyperstack flag for
    # one channel): refused as a Z-stack, not read as channels (a review)
    p = _fiji_plain_stack(tmp_path / "focal.tif", stack, extra="spacing=0.5\n")
    with pytest.raises(FileFormatError, match=r"a Z \(depth\) axis of 3 planes"):
        read_slide(p)


def test_reopening_a_slide_records_but_does_not_warn(tmp_path):
    # read_slide(check_chunks=False) (tile jobs) passes a flag down: a warnings filter set
    # there was not thread-safe and left QdmedWarning ignored for good (a review)
    import warnings

    p = _fiji_plain_stack(tmp_path / "fiji.tif", np.zeros((3, 16, 16), np.uint16))
    before = list(warnings.filters)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = read_slide(p, check_chunks=False)  # no warning raised
    assert s.warnings and warnings.filters == before


def test_a_16bit_rgb_ome_tiff_with_one_named_channel(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 4000, (16, 20, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "rgb16.ome.tif", rgb, photometric="rgb",
                     metadata={"axes": "YXS", "Channel": {"Name": ["Brightfield"]}})
    s = read_slide(tmp_path / "rgb16.ome.tif")  # was "names 1 channels but the image has 3"
    assert s.shape == (16, 20, 3)
    np.testing.assert_array_equal(s.read_region(0, 16, 0, 20), rgb)


def test_bioformats2raw_with_an_unreadable_series(tmp_path):
    # sizes come from metadata: another series qdmed cannot read (a Z-stack overview, a
    # listed path that is no image) does not keep the slide from being read (a review)
    import zarr

    from qdmed.errors import QdmedWarning

    b2r = tmp_path / "b2r.ome.zarr"
    root = zarr.open_group(str(b2r), mode="w", zarr_format=2)
    root.attrs["bioformats2raw.layout"] = 3
    root.create_group("OME").attrs["series"] = ["0", "1", "2"]
    scan = np.ones((48, 64, 2), np.uint16)
    write_ome_zarr(tmp_path / "i.ome.zarr", scan, pixel_size_um=0.5).rename(b2r / "0")
    z = write_ome_zarr(tmp_path / "z.ome.zarr", np.zeros((16, 16, 5), np.uint16))
    g = zarr.open_group(str(z), mode="r+")
    ms = g.attrs["multiscales"]
    ms[0]["axes"][0] = {"name": "z", "type": "space"}
    g.attrs["multiscales"] = ms
    z.rename(b2r / "1")
    (b2r / "2").write_text("not an image")
    with pytest.warns(QdmedWarning, match=r"holds 3 images .*0 \(64 x 48 px\); 1 \(16 x 16 "
                                          r"px\); 2 \(not an image qdmed reads\)\): image 0"):
        s = read_slide(b2r)
    assert s.shape == (48, 64, 2) and s.pixel_size_um == 0.5


def test_svs_with_a_bad_mpp_takes_no_size_from_other_tags(tmp_path, write_svs):
    # a bad MPP is the scanner's word on the size: the TIFF resolution tags do not replace
    # it (a review got 0.25 um from them beside the note saying the size is invalid)
    from skimage.data import immunohistochemistry

    img = immunohistochemistry()[:256, :256]
    with tifffile.TiffFile(write_svs(tmp_path / "bad.svs", img, mpp="0", levels=1)) as tf:
        desc = tf.pages[0].description  # "Aperio Image Library ...|MPP = 0"
    tifffile.imwrite(tmp_path / "tags.svs", img, description=desc, resolution=(4e4, 4e4),
                     resolutionunit="CENTIMETER", tile=(256, 256), metadata=None,
                     photometric="rgb")  # resolution tags of 0.25 um
    s = read_slide(tmp_path / "tags.svs")
    assert s.format == "svs" and s.pixel_size_um is None and "MPP = '0'" in s.pixel_size_note


def test_a_killed_write_leaves_no_copy_behind_its_next_write(tmp_path):
    """A review: unmix killed left a hidden `.u.ome.zarr.tmp-<hex>` beside its output, which
    no rerun removed (a half-written image can be GBs). The next write of that path removes
    it; other files' temporaries are left alone."""
    stale = tmp_path / ".u.ome.zarr.tmp-0123456789ab"
    stale.mkdir()
    (stale / "0").write_text("half")
    other = tmp_path / ".v.ome.zarr.tmp-0123456789ab"
    other.mkdir()
    write_ome_zarr(tmp_path / "u.ome.zarr", np.zeros((16, 16, 2), np.uint16))
    assert not stale.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name, "u.ome.zarr"]


def test_tiffs_saved_without_their_channel_axis_are_explained(tmp_path):
    """A microscopist's walk-through: pages written one by one (8 series) read as one
    channel ("the image has 1 channels"); a (Y, X, C) array saved without axes read as 512
    channels of 8 px wide images, its error listing 512 names; a lambda stack saved as ZYX
    told to be Z-projected. Each now says what the file is and how to save it."""
    import tifffile

    from qdmed.errors import FileFormatError

    planes = np.random.default_rng(0).integers(0, 100, (8, 96, 96)).astype(np.uint16)
    with tifffile.TiffWriter(tmp_path / "pages.tif") as tw:
        for pl in planes:
            tw.write(pl, photometric="minisblack")
    with pytest.raises(FileFormatError, match=r"holds 8 images of one 96 x 96 px plane each "
                                              r"\(pages written one by one\)"):
        read_slide(tmp_path / "pages.tif")
    with tifffile.TiffWriter(tmp_path / "thumb.tif") as tw:  # and a thumbnail after them
        for pl in planes:
            tw.write(pl, photometric="minisblack")
        tw.write(planes[0][::4, ::4], photometric="minisblack")
    with pytest.raises(FileFormatError, match=r"holds 8 images of one 96 x 96 px plane each "
                                              r"\(pages written one by one\) and 1 other"):
        read_slide(tmp_path / "thumb.tif")
    tifffile.imwrite(tmp_path / "stack.tif", planes, photometric="minisblack")  # one series
    assert read_slide(tmp_path / "stack.tif").shape == (96, 96, 8)
    yxc = np.moveaxis(np.concatenate([planes, planes], axis=1), 0, -1)  # (192, 96, 8)
    tifffile.imwrite(tmp_path / "yxc.tif", yxc)  # no axes: tifffile's QYX
    with pytest.raises(FileFormatError, match=r"would be 192 channels of 8 px wide images: a "
                                              r"\(Y, X, C\) array of 8 channels saved without"):
        read_slide(tmp_path / "yxc.tif")
    tifffile.imwrite(tmp_path / "zyx.tif", planes, imagej=True, metadata={"axes": "ZYX"})
    with pytest.raises(FileFormatError, match="spectral .lambda. stack saved so is its "
                                              "channels: relabel the axis as C"):
        read_slide(tmp_path / "zyx.tif")
