"""Slide file IO: tiled pyramidal OME-TIFF and OME-Zarr writers, a lazy reader, truth files.

Layout conventions
------------------
* In memory, images are ``(Y, X, C)`` (channels last), as everywhere in ``qdmed.imaging``.
* On disk, channels are separate planes: OME-TIFF ``CYX`` pages (one tiled page per channel,
  reduced resolutions in SubIFDs) and OME-Zarr arrays with axes ``c, y, x``.
* OME-Zarr is written as **NGFF 0.4 on the Zarr v2 format** (``zarr_format=2``), the version
  read by the widest set of tools (Bio-Formats, QuPath, napari-ome-zarr, vizarr) at the time
  of writing. NGFF 0.5 (Zarr v3) is not written.

Every writer is atomic: it writes to a temporary file or folder in the destination folder
and renames it into place, so a crash never leaves a half-written file under the final name.

References
----------
.. [1] Goldberg IG et al. (2005) The Open Microscopy Environment (OME) Data Model and XML
   file. Genome Biology 6:R47. doi:10.1186/gb-2005-6-5-r47
.. [2] Moore J et al. (2021) OME-NGFF: a next-generation file format for expanding
   bioimaging data-access strategies. Nature Methods 18:1496-1498.
   doi:10.1038/s41592-021-01326-w
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
import struct
import threading
import uuid
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from qdmed.errors import FileFormatError, InputError

__all__ = [
    "SlideImage",
    "read_slide",
    "read_truth",
    "write_ome_tiff",
    "write_ome_zarr",
    "write_truth",
]

NGFF_VERSION = "0.4"
#: brightfield whole-slide scans read_slide reads (Aperio, Hamamatsu): for the DAB commands
#: and listings, not among the fluorescence slides a cohort folder is searched for
SCAN_SUFFIXES = (".svs", ".ndpi")
_TIFF_SUFFIXES = (".ome.tif", ".ome.tiff", ".tif", ".tiff", ".btf", ".qptiff", *SCAN_SUFFIXES)
#: whole-slide formats qdmed does not read (some are not TIFF at all): each is refused with
#: a way to convert it to OME-TIFF
CONVERT_SUFFIXES = {".scn": "Leica SCN", ".bif": "Ventana BIF", ".mrxs": "3DHISTECH MIRAX",
                    ".vsi": "Olympus VSI", ".czi": "Zeiss CZI", ".dcm": "DICOM WSI"}
_ZARR_SUFFIXES = (".ome.zarr", ".zarr")
#: every suffix read_slide opens (compound suffixes first, as slide names are cut by them)
SLIDE_SUFFIXES = _TIFF_SUFFIXES + _ZARR_SUFFIXES
#: lengths in um: pixel sizes (OME, NGFF, ImageJ's unit) and wavelengths (OME; x 1e3 for nm)
_UNIT_TO_UM = {"µm": 1.0, "\u03bcm": 1.0, "um": 1.0, "micrometer": 1.0, "micron": 1.0,
               "microns": 1.0, "nm": 1e-3, "nanometer": 1e-3, "Å": 1e-4, "angstrom": 1e-4,
               "pm": 1e-6, "picometer": 1e-6, "mm": 1e3, "millimeter": 1e3, "cm": 1e4,
               "centimeter": 1e4, "dm": 1e5, "decimeter": 1e5, "m": 1e6, "meter": 1e6}
_COLORS = ("0000FF", "00FF00", "FF0000", "FF00FF", "00FFFF", "FFFF00", "FF8000", "FFFFFF")


# --------------------------------------------------------------------------- helpers
def _default_channel_names(n: int) -> tuple[str, ...]:
    return tuple(f"C{i}" for i in range(n))


def _check_channel_names(channel_names: Sequence[str] | None, n: int) -> tuple[str, ...]:
    if channel_names is None:
        return _default_channel_names(n)
    if isinstance(channel_names, str):
        raise InputError(f"channel_names must be a sequence of {n} strings, got the string "
                         f"{channel_names!r}")
    names = tuple(str(c) for c in channel_names)
    if len(names) != n:
        raise InputError(f"channel_names must name all {n} channels of the image, got "
                         f"{len(names)}: {list(names)}")
    if len(set(names)) != n:
        raise InputError(f"channel_names must be unique, got {list(names)}")
    return names


#: Largest pixel size (um) a file's metadata or a caller is believed: a slide overview camera's is
#: tens of um; more is a unit error (nm read as um) or a broken field.
MAX_PIXEL_SIZE_UM = 1000.0
#: Smallest: a tenth of what light microscopy resolves (~0.2 um) over a little
#: oversampling; less is a unit error (metres or mm read as um: a review's 5e-7 ran an
#: analysis for ever, 1e-9 asked for 30 GiB).
MIN_PIXEL_SIZE_UM = 0.01


def _check_pixel_size(pixel_size_um: float | None) -> float | None:
    """A pixel size (um) checked: a finite number from :data:`MIN_PIXEL_SIZE_UM` to
    :data:`MAX_PIXEL_SIZE_UM` (None stays None: unknown)."""
    if pixel_size_um is None:
        return None
    try:
        ps = float("nan") if isinstance(pixel_size_um, bool) else float(pixel_size_um)
    except (TypeError, ValueError):
        ps = float("nan")
    if not np.isfinite(ps) or ps <= 0 or ps > MAX_PIXEL_SIZE_UM:
        raise InputError(f"pixel_size_um must be a positive number (um per pixel) up to "
                         f"{MAX_PIXEL_SIZE_UM:g}, got {pixel_size_um!r}")
    if ps < MIN_PIXEL_SIZE_UM:
        raise InputError(f"pixel_size_um {pixel_size_um!r} is below {MIN_PIXEL_SIZE_UM:g} "
                         "um, finer than light microscopy resolves: is it in another unit "
                         "(metres, mm)? Give it in um per pixel")
    return ps


def _is_dask(a: Any) -> bool:
    return type(a).__module__.startswith("dask.")


#: An image of more channels than this, at most this many rows and over 4 channels a row
#: is taken for a channels-first array, and refused (spectral detectors give tens of
#: channels; a hyperspectral strip of 48 rows and 96 bands passes).
_MAX_CHANNELS_FIRST_GUESS = 64


def _check_image(image_yxc: Any) -> Any:
    if not _is_dask(image_yxc):
        image_yxc = np.asarray(image_yxc)
    if image_yxc.ndim == 2:
        image_yxc = image_yxc[:, :, None]
    if image_yxc.ndim != 3:
        raise InputError(f"image must be (Y, X, C) or (Y, X), got shape {image_yxc.shape}")
    if min(image_yxc.shape) < 1:
        raise InputError(f"image must not be empty, got shape {image_yxc.shape}")
    ny, _, nc = image_yxc.shape
    if nc > _MAX_CHANNELS_FIRST_GUESS and ny <= _MAX_CHANNELS_FIRST_GUESS and nc > 4 * ny:
        # (8, 768, 768) was written as 768 channels of an 8-row image (a review)
        raise InputError(f"image must be (Y, X, C); got shape {image_yxc.shape}, {nc} channels "
                         f"of {ny} rows: channels first? Give np.moveaxis(image, 0, -1)")
    dt = np.dtype(image_yxc.dtype)
    if dt.kind not in "uif" or dt.itemsize > 8:
        raise InputError(f"image dtype must be an integer or float type, got {dt}")
    return image_yxc


def _auto_levels(shape_yx: tuple[int, int], tile: int, pyramid_levels: int | str) -> int:
    if pyramid_levels == "auto" or pyramid_levels is None:
        n, size = 1, max(shape_yx)
        while size > tile:
            size = (size + 1) // 2
            n += 1
        return n
    if isinstance(pyramid_levels, bool) or not isinstance(pyramid_levels, int | np.integer):
        raise InputError(f"pyramid_levels must be 'auto' or an integer >= 1, got "
                         f"{pyramid_levels!r}")
    if pyramid_levels < 1 or min(shape_yx) // 2 ** (pyramid_levels - 1) < 1:
        raise InputError(f"pyramid_levels must be >= 1 and leave every level at least one "
                         f"pixel wide for an image of shape {shape_yx}, got {pyramid_levels}")
    return int(pyramid_levels)


def _downsample2(a: np.ndarray) -> np.ndarray:
    """2x2 mean of a (Y, X, ...) array; a trailing odd row/column is averaged on its own.

    Integer results are rounded half to even; sums of <= 16-bit integers are exact in float32.
    """
    y, x = a.shape[:2]
    if y % 2:
        a = np.concatenate([a, a[-1:]], axis=0)
    if x % 2:
        a = np.concatenate([a, a[:, -1:]], axis=1)
    small = a.dtype.kind in "ui" and a.dtype.itemsize <= 2 or a.dtype == np.float32
    f = a.astype(np.float32 if small else np.float64, copy=False)
    out = f.reshape(a.shape[0] // 2, 2, a.shape[1] // 2, 2, *a.shape[2:]).sum(axis=(1, 3))
    out *= 0.25
    if a.dtype.kind in "ui":
        info = np.iinfo(a.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(a.dtype)


def _level_arrays(image: Any, n_levels: int) -> list[Any]:
    levels = [image]
    for _ in range(1, n_levels):
        prev = levels[-1]
        if _is_dask(prev):
            import dask.array as da

            y, x = prev.shape[:2]
            padded = prev
            if y % 2:
                padded = da.concatenate([padded, padded[-1:]], axis=0)
            if x % 2:
                padded = da.concatenate([padded, padded[:, -1:]], axis=1)
            # chunks must be even for coarsen: rechunk to even sizes
            ch = tuple(max(2, c - c % 2) for c in (padded.chunksize[0], padded.chunksize[1]))
            padded = padded.rechunk((ch[0], ch[1], -1))
            levels.append(padded.map_blocks(_downsample2, chunks=tuple(
                tuple((c + 1) // 2 for c in cs) for cs in padded.chunks[:2]) + (padded.chunks[2],),
                dtype=prev.dtype))
        else:
            levels.append(_downsample2(prev))
    return levels


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:12]}")


def _fresh_tmp_sibling(path: Path) -> Path:
    """A temporary sibling to write ``path`` into, the ones a killed write of the same path
    left removed first (a review: ``unmix`` killed left a hidden copy of its image that no
    rerun removed). Two writes of one path at once are not supported."""
    import glob

    for old in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    return _tmp_sibling(path)


def _replace_dir(tmp: Path, path: Path) -> None:
    """Move folder ``tmp`` to ``path``, replacing what is there (old copy removed last)."""
    old = None
    if path.exists() or path.is_symlink():
        old = _tmp_sibling(path)
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()


def _check_dest(path: str | os.PathLike, overwrite: bool) -> Path:
    p = Path(path)
    if not p.parent.exists():
        raise InputError(f"the folder of {str(p)!r} does not exist")
    if p.exists() and not overwrite:
        raise InputError(f"{str(p)!r} exists; pass overwrite=True to replace it")
    return p


# --------------------------------------------------------------------------- OME-TIFF
def write_ome_tiff(
    path: str | os.PathLike,
    image_yxc: Any,
    *,
    channel_names: Sequence[str] | None = None,
    pixel_size_um: float | None = None,
    tile: int = 512,
    pyramid_levels: int | str = "auto",
    compression: str | None = "zlib",
    overwrite: bool = True,
    significant_bits: int | None = None,
    uuid: str | None = None,
    rgb: bool = False,
) -> Path:
    """Write a tiled, pyramidal OME-TIFF (one tiled page per channel, levels in SubIFDs).

    Parameters
    ----------
    path : str or path-like
        Destination, conventionally ``*.ome.tif``.
    image_yxc : ndarray or dask array, shape (Y, X, C) or (Y, X)
        Image; integer or float dtype. A dask array is written tile by tile (memory bounded
        by one tile row of one channel per level).
    channel_names : sequence of str, optional
        One name per channel; default ``C0 .. C{n-1}``.
    pixel_size_um : float, um per pixel, optional
        Written as OME ``PhysicalSizeX/Y`` (µm) and the TIFF resolution tags.
    tile : int, px
        Square tile edge, a multiple of 16.
    pyramid_levels : int or 'auto'
        Number of resolution levels including full resolution, each half the previous (2x2
        mean). ``'auto'`` halves until the largest side fits in one tile.
    compression : str or None
        A tifffile compression name (``'zlib'``, ``'zstd'``, ...) or None.
    overwrite : bool
        Replace an existing file (atomically).
    significant_bits : int, optional
        Bits the detector filled, written as OME ``SignificantBits`` (e.g. 12 for a 12-bit
        camera stored as uint16): readers then know the saturation ceiling. Integer images
        only, at most the type's bits.
    uuid : str, optional
        The OME UUID of the file; default a fresh one (time and host). Give one derived
        from the inputs (:func:`uuid.uuid5`) for byte-identical files from identical inputs.
    rgb : bool
        Write an 8-bit three-channel image as one interleaved RGB plane (photometric RGB,
        one OME Channel of three samples), as brightfield scans are: QuPath and Bio-Formats
        then open it as an RGB brightfield image (colour deconvolution, stain estimation),
        not as three grey channels. `channel_names` are not written (red, green, blue).

    Returns
    -------
    pathlib.Path
        The written file.

    Raises
    ------
    InputError
        Bad image shape/dtype, channel names, pixel size, tile or level count, or an existing
        file with ``overwrite=False``.
    """
    import tifffile

    p = _check_dest(path, overwrite)
    image = _check_image(image_yxc)
    if np.dtype(image.dtype).itemsize > 4 and np.dtype(image.dtype).kind in "iu":
        # tifffile's own error was no ValueError (OmeXmlError: a review)
        raise InputError(f"OME-TIFF holds integers of at most 32 bits; got {image.dtype}: "
                         "cast the image (e.g. to uint16 or float32), or write OME-Zarr")
    ny, nx, nc = (int(s) for s in image.shape)
    names = _check_channel_names(channel_names, nc)
    if rgb and (nc != 3 or image.dtype != np.uint8):
        raise InputError(f"rgb=True writes an 8-bit RGB image: 3 channels of uint8; got {nc} "
                         f"of {image.dtype}")
    ps = _check_pixel_size(pixel_size_um)
    if isinstance(tile, bool) or not isinstance(tile, int | np.integer) or tile < 16 or tile % 16:
        raise InputError(f"tile must be a positive multiple of 16 px, got {tile!r}")
    n_levels = _auto_levels((ny, nx), int(tile), pyramid_levels)
    levels = _level_arrays(image, n_levels)

    metadata: dict[str, Any] = {"axes": "YXS"} if rgb else {
        "axes": "CYX", "Channel": {"Name": list(names)}}
    if uuid is not None:  # else tifffile makes one from the time and host (uuid1)
        import uuid as _uuid

        try:
            metadata["UUID"] = f"urn:uuid:{_uuid.UUID(str(uuid).split(':')[-1])}"
        except ValueError:
            raise InputError(f"uuid must be a UUID, got {uuid!r}") from None
    if significant_bits is not None:
        metadata["SignificantBits"] = _check_significant_bits(significant_bits, image.dtype)
    kw: dict[str, Any] = {}
    if ps is not None:
        metadata.update(PhysicalSizeX=ps, PhysicalSizeXUnit="µm", PhysicalSizeY=ps,
                        PhysicalSizeYUnit="µm")
        kw = {"resolution": (1e4 / ps, 1e4 / ps), "resolutionunit": "CENTIMETER"}
    tmp = _fresh_tmp_sibling(p)
    try:
        with tifffile.TiffWriter(tmp, bigtiff=True, ome=True) as tif:
            for i, lev in enumerate(levels):
                ly, lx = int(lev.shape[0]), int(lev.shape[1])
                data = _tile_iter(lev, int(tile), rgb) if _is_dask(lev) else \
                    lev if rgb else np.moveaxis(lev, 2, 0)
                common = {"tile": (int(tile), int(tile)),
                          "photometric": "rgb" if rgb else "minisblack",
                          "compression": compression}
                if _is_dask(lev):
                    common.update(shape=(ly, lx, nc) if rgb else (nc, ly, lx), dtype=lev.dtype)
                if i == 0:
                    tif.write(data, subifds=n_levels - 1, metadata=metadata, **common, **kw)
                else:
                    lkw = {}
                    if ps is not None:
                        f = 2**i
                        lkw = {"resolution": (1e4 / (ps * f), 1e4 / (ps * f)),
                               "resolutionunit": "CENTIMETER"}
                    tif.write(data, subfiletype=1, metadata=None, **common, **lkw)
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()
    return p


def _tile_iter(level: Any, tile: int, rgb: bool = False) -> Iterator[np.ndarray]:
    """Tiles of a (Y, X, C) dask array in TIFF order: channel, tile row, tile column (or,
    `rgb`, tile row and column of the interleaved samples)."""
    ny, nx, nc = level.shape
    if rgb:
        for y0 in range(0, ny, tile):
            strip = np.asarray(level[y0:y0 + tile].compute())
            for x0 in range(0, nx, tile):
                yield strip[:, x0:x0 + tile]
        return
    for c in range(nc):
        for y0 in range(0, ny, tile):
            strip = np.asarray(level[y0:y0 + tile, :, c].compute())
            for x0 in range(0, nx, tile):
                yield strip[:, x0:x0 + tile]


# --------------------------------------------------------------------------- OME-Zarr
class _ZarrImageWriter:
    """Create an NGFF 0.4 image in a temporary folder, fill level 0, then finish it."""

    #: Full-resolution pixels per channel sampled (a regular grid) for the display windows.
    WINDOW_SAMPLE_PX = 1 << 20

    def __init__(self, path: Path, shape_yxc: tuple[int, int, int], dtype: Any, *,
                 channel_names: tuple[str, ...], pixel_size_um: float | None,
                 chunks: tuple[int, int], pyramid_levels: int, name: str,
                 significant_bits: int | None = None) -> None:
        import zarr

        self.path = path
        self.bits = significant_bits
        self.tmp = _fresh_tmp_sibling(path)
        self.shape = shape_yxc
        self.dtype = np.dtype(dtype)
        self.chunks = chunks
        self.names = channel_names
        self.ps = pixel_size_um
        self.n_levels = pyramid_levels
        self.name = name
        self.root = zarr.open_group(str(self.tmp), mode="w", zarr_format=2)
        ny, nx, nc = shape_yxc
        self.levels = []
        for lev in range(pyramid_levels):
            # chunks halve with the level (down to 256 px) so that blocks halved from level 0
            # fill whole chunks: no read-modify-write of compressed chunks
            lch = tuple(max(min(c, 256), c >> lev) for c in chunks)
            self.levels.append(self._create(self.root, str(lev), (nc, ny, nx), self.dtype,
                                            (1, *lch)))
            ny, nx = (ny + 1) // 2, (nx + 1) // 2
        # level l is filled while level 0 is written as long as every block can be halved
        # exactly (even origin, even size or touching the far edge); else rebuilt in finish()
        self.incremental = [True] * pyramid_levels
        # each channel's smallest and largest finite value written at full resolution, and
        # a sample of its pixels on a global grid of at most WINDOW_SAMPLE_PX (the display
        # windows, _windows); blocks may come from several threads
        ny0, nx0, _ = shape_yxc
        self._range = np.array([[np.inf] * nc, [-np.inf] * nc])
        self._sample_step = max(1, int(np.ceil(np.sqrt(ny0 * nx0 / self.WINDOW_SAMPLE_PX))))
        self._samples: list[np.ndarray] = []
        self._range_lock = threading.Lock()
        self._label_groups: list[Any] = []  # add_label's, given their levels in finish()

    def _create(self, group: Any, name: str, shape: tuple[int, ...], dtype: Any,
                chunks: tuple[int, ...]) -> Any:
        import numcodecs

        chunks = tuple(max(1, min(c, s)) for c, s in zip(chunks, shape, strict=True))
        comp = numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.BITSHUFFLE)
        # every chunk stored, zeros too (zarr skips chunks of the fill value by default): a
        # reader then tells a chunk lost in a copy from a dark one (_missing_chunks_warning)
        return group.create_array(name, shape=shape, chunks=chunks, dtype=dtype,
                                  compressors=comp, fill_value=0,
                                  chunk_key_encoding={"name": "v2", "separator": "/"},
                                  config={"write_empty_chunks": True})

    def write(self, y0: int, x0: int, block_yxc: np.ndarray, level: int = 0) -> None:
        """Write a (Y, X, C) block at (y0, x0) of ``level`` and its reduced versions."""
        by, bx = block_yxc.shape[:2]
        arr = self.levels[level]
        arr[:, y0:y0 + by, x0:x0 + bx] = np.moveaxis(block_yxc, 2, 0)
        if level == 0 and block_yxc.size:
            flat = block_yxc.reshape(-1, block_yxc.shape[2])
            if flat.dtype.kind == "f":  # NaN and infinities left out of the range
                flat = np.where(np.isfinite(flat), flat, np.nan)
            lo, hi = np.fmin.reduce(flat, axis=0), np.fmax.reduce(flat, axis=0)
            st = self._sample_step
            sample = block_yxc[(-y0) % st::st, (-x0) % st::st].reshape(-1, block_yxc.shape[2])
            with self._range_lock:
                np.fmin(self._range[0], lo, out=self._range[0])
                np.fmax(self._range[1], hi, out=self._range[1])
                self._samples.append(sample.copy())
        nxt = level + 1
        if nxt >= self.n_levels or not self.incremental[nxt]:
            return
        _, ly, lx = arr.shape
        if (y0 % 2 or x0 % 2 or (by % 2 and y0 + by != ly) or (bx % 2 and x0 + bx != lx)):
            self.incremental[nxt:] = [False] * (self.n_levels - nxt)
            return
        self.write(y0 // 2, x0 // 2, _downsample2(block_yxc), nxt)

    def _build_pyramid(self) -> None:
        for lev in range(1, self.n_levels):
            if self.incremental[lev]:
                continue
            prev, cur = self.levels[lev - 1], self.levels[lev]
            nc, ny, nx = cur.shape
            cy, cx = cur.chunks[1:]
            for c in range(nc):  # one channel plane of one chunk at a time: bounded memory
                for y0 in range(0, ny, cy):
                    for x0 in range(0, nx, cx):
                        src = prev[c, 2 * y0:2 * (y0 + cy), 2 * x0:2 * (x0 + cx)]
                        cur[c, y0:y0 + cy, x0:x0 + cx] = _downsample2(src)

    def _axes(self, channel: bool) -> list[dict[str, str]]:
        sp = [{"name": a, "type": "space", "unit": "micrometer"} for a in ("y", "x")]
        if self.ps is None:
            for a in sp:
                del a["unit"]
        return ([{"name": "c", "type": "channel"}] if channel else []) + sp

    def _multiscales(self, n_levels: int, channel: bool, name: str) -> list[dict[str, Any]]:
        ps = 1.0 if self.ps is None else self.ps
        datasets = []
        for lev in range(n_levels):
            s = [ps * 2**lev, ps * 2**lev]
            datasets.append({"path": str(lev), "coordinateTransformations": [
                {"type": "scale", "scale": ([1.0] if channel else []) + s}]})
        return [{"version": NGFF_VERSION, "name": name, "axes": self._axes(channel),
                 "datasets": datasets, "type": "mean" if channel else "nearest"}]

    def add_label(self, name: str) -> Any:
        """Create an int32 label image ``labels/<name>``; return its full-resolution array,
        to fill before :meth:`finish`, which adds its coarser levels (NGFF: a label image
        has as many levels as its image; a review's validator found one against three)."""
        labels = self.root.require_group("labels")
        names = list(labels.attrs.get("labels", []))
        g = labels.create_group(name)
        ny, nx, _ = self.shape
        arr = self._create(g, "0", (ny, nx), np.int32, self.chunks)
        g.attrs.update({"multiscales": self._multiscales(self.n_levels, False, name),
                        "image-label": {"version": NGFF_VERSION,
                                        "source": {"image": "../../"}}})
        labels.attrs["labels"] = [*names, name]
        self._label_groups.append(g)
        return arr

    def _build_label_pyramids(self) -> None:
        """Each label image's coarser levels, every other pixel of the level above (labels
        are ids, never averaged), chunk by chunk (bounded memory)."""
        for g in self._label_groups:
            prev = g["0"]
            for lev in range(1, self.n_levels):
                ny, nx = (prev.shape[0] + 1) // 2, (prev.shape[1] + 1) // 2
                lch = tuple(max(min(c, 256), c >> lev) for c in self.chunks)
                cur = self._create(g, str(lev), (ny, nx), np.int32, lch)
                cy, cx = cur.chunks
                for y0 in range(0, ny, cy):
                    for x0 in range(0, nx, cx):
                        cur[y0:y0 + cy, x0:x0 + cx] = prev[2 * y0:2 * (y0 + cy):2,
                                                           2 * x0:2 * (x0 + cx):2]
                prev = cur

    def finish(self, extra_attrs: dict[str, Any] | None = None) -> Path:
        self._build_pyramid()
        self._build_label_pyramids()
        channels = [{"label": n, "color": _COLORS[i % len(_COLORS)], "active": True,
                     "window": w} for i, (n, w) in enumerate(zip(self.names, self._windows(),
                                                                strict=True))]
        attrs: dict[str, Any] = {
            "multiscales": self._multiscales(self.n_levels, True, self.name),
            "omero": {"version": NGFF_VERSION, "name": self.name, "channels": channels,
                      "rdefs": {"model": "color"}},
        }
        own = dict(extra_attrs or {})
        if self.bits is not None and self.dtype.kind in "ui" and \
                self.bits < self.dtype.itemsize * 8:
            own["significant_bits"] = int(self.bits)
        if own:
            attrs["qdmed"] = own
        self.root.attrs.update(attrs)
        _replace_dir(self.tmp, self.path)
        return self.path

    def _windows(self) -> list[dict[str, float]]:
        """Each channel's omero display window. ``start``/``end``, what a viewer shows from
        black to full colour: the data's 0.1th percentile (0 if that is positive) to its
        99.9th, from a sample of the full-resolution pixels on a regular grid (at most
        WINDOW_SAMPLE_PX; a coarse pyramid level's averages would put ``end`` far below the
        bright cells). ``min``/``max``, the values possible: an integer type's range (up to
        its significant bits), for floats the finite values written. A window spanning the
        whole type (0-65535 for counts in the hundreds, 0-1 for unmixed abundances in the
        hundreds) showed channels black or saturated."""
        nc = self.shape[2]
        sample = (np.concatenate(self._samples).astype(np.float64) if self._samples
                  else np.zeros((0, nc)))
        out = []
        for c in range(nc):
            v = sample[:, c]
            v = v[np.isfinite(v)]
            dlo, dhi = (float(x) for x in np.percentile(v, [0.1, 99.9])) if v.size \
                else (0.0, 0.0)
            dmin, dmax = (float(x) for x in self._range[:, c])
            if self.dtype.kind in "ui":
                info = np.iinfo(self.dtype)
                lo, hi = int(info.min), int(info.max)
                if self.bits is not None and self.bits < self.dtype.itemsize * 8:
                    hi = 2 ** self.bits - 1
            elif np.isfinite(dmin) and np.isfinite(dmax):  # the values written
                lo, hi = min(0.0, dmin), max(dmax, 0.0)
            else:  # nothing finite written
                lo, hi = 0.0, 1.0
            start = max(min(0.0, dlo), lo)
            end = dhi if dhi > start else (hi if hi > start else start + 1)
            out.append({"min": lo, "max": max(hi, end), "start": start, "end": end})
        return out

    def abort(self) -> None:
        if self.tmp.exists():
            shutil.rmtree(self.tmp)


def write_ome_zarr(
    path: str | os.PathLike,
    image_yxc: Any,
    *,
    channel_names: Sequence[str] | None = None,
    pixel_size_um: float | None = None,
    chunks: tuple[int, int] = (1024, 1024),
    pyramid_levels: int | str = "auto",
    overwrite: bool = True,
    significant_bits: int | None = None,
    attrs: dict | None = None,
    advance: Any = None,
) -> Path:
    """Write an OME-Zarr image (NGFF 0.4 on Zarr format v2), chunk by chunk.

    Parameters
    ----------
    path : str or path-like
        Destination folder, conventionally ``*.ome.zarr``.
    image_yxc : ndarray or dask array, shape (Y, X, C) or (Y, X)
        Image. A dask array is computed one chunk at a time, so memory stays bounded.
    channel_names : sequence of str, optional
        Written as ``omero.channels[].label``; default ``C0 .. C{n-1}``.
    pixel_size_um : float, um per pixel, optional
        Written as the ``scale`` coordinate transformation of each level (µm).
    chunks : (int, int), px
        Chunk shape in (y, x); each chunk holds one channel.
    pyramid_levels : int or 'auto'
        Levels including full resolution (2x2 mean per level); 'auto' halves until the
        largest side fits in one chunk.
    overwrite : bool
        Replace an existing store (atomically: the new store is renamed into place).
    significant_bits : int, optional
        Bits the detector fills in an integer image (a 12-bit camera stored as uint16). NGFF
        has no field for it: written as ``qdmed.significant_bits`` (read back by qdmed, which
        then takes ``2**bits - 1`` as the saturation ceiling) and as the omero display
        window's maximum.
    attrs : dict, optional
        More JSON-safe entries of the root's ``qdmed`` attribute (e.g. how an unmixed image
        was made).
    advance : callable, optional
        Called with no argument after each (Y, X) chunk is written, all channels (a
        progress bar's step: ``ceil(Y / chunks[0]) * ceil(X / chunks[1])`` calls).

    Returns
    -------
    pathlib.Path

    Raises
    ------
    InputError
        Bad image, channel names, pixel size, chunks or significant bits, or an existing
        store with ``overwrite=False``.
    """
    p = _check_dest(path, overwrite)
    check_zarr_output(p)  # never replaces a file or a folder that is not a Zarr image
    image = _check_image(image_yxc)
    ny, nx, nc = (int(s) for s in image.shape)
    names = _check_channel_names(channel_names, nc)
    ps = _check_pixel_size(pixel_size_um)
    chunks = _check_chunks(chunks)
    n_levels = _auto_levels((ny, nx), max(chunks), pyramid_levels)
    bits = None if significant_bits is None else _check_significant_bits(significant_bits,
                                                                          image.dtype)
    w = _ZarrImageWriter(p, (ny, nx, nc), image.dtype, channel_names=names, pixel_size_um=ps,
                         chunks=chunks, pyramid_levels=n_levels, name=p.name,
                         significant_bits=bits)
    try:
        cy, cx = chunks
        for y0 in range(0, ny, cy):
            for x0 in range(0, nx, cx):
                block = image[y0:y0 + cy, x0:x0 + cx, :]
                if _is_dask(block):
                    # computed here, not on a default distributed client's workers, which may
                    # not see the files it reads (an analysis's staged unmixed image read as
                    # zeros there, unsaid: a review)
                    block = block.compute(scheduler="threads")
                w.write(y0, x0, np.asarray(block))
                if advance is not None:
                    advance()
        return w.finish(attrs)
    except BaseException:
        w.abort()
        raise


def _check_significant_bits(bits: Any, dtype: Any) -> int:
    """The detector bits an integer image fills, checked against its type."""
    dt = np.dtype(dtype)
    if dt.kind not in "ui" or isinstance(bits, bool) or not isinstance(
            bits, int | np.integer) or not 1 <= bits <= dt.itemsize * 8:
        raise InputError(f"significant_bits must be an integer from 1 to the image type's "
                         f"bits ({dt.name}: {dt.itemsize * 8 if dt.kind in 'ui' else 'none, a float type'}), "
                         f"got {bits!r}")
    return int(bits)


def _check_chunks(chunks: Any) -> tuple[int, int]:
    try:
        cy, cx = (int(c) for c in chunks)
    except (TypeError, ValueError):
        raise InputError(f"chunks must be a pair of positive integers (y, x), got "
                         f"{chunks!r}") from None
    if cy < 1 or cx < 1:
        raise InputError(f"chunks must be a pair of positive integers (y, x), got {chunks!r}")
    return cy, cx


# --------------------------------------------------------------------------- reading
@dataclass(frozen=True, eq=False)
class SlideImage:
    """A slide opened lazily by :func:`read_slide`.

    Attributes
    ----------
    data : dask.array.Array, shape (Y, X, C)
        Full-resolution image; nothing is read until computed.
    channel_names : tuple of str
        From the file; else ``R, G, B`` for an 8-bit RGB TIFF (a brightfield scan), else
        ``C0 .. C{n-1}``.
    pixel_size_um : float or None
        um per pixel, from OME/NGFF metadata or TIFF resolution tags; None if absent.
    path : pathlib.Path
    format : str
        ``'ome-tiff'``, ``'qptiff'`` (Akoya/PerkinElmer: Vectra, Polaris/PhenoImager scans and
        inForm ``component_data.tif`` exports), ``'svs'`` (Aperio/Leica brightfield scans:
        pixel size from the ImageDescription's ``MPP``), ``'ndpi'`` (Hamamatsu NanoZoomer:
        pixel size from the resolution tags), ``'imagej-tiff'`` (saved by ImageJ/Fiji:
        channel names from its slice labels, pixel size from its unit), ``'tiff'`` or
        ``'ome-zarr'``.
    levels : tuple of dask arrays
        All resolution levels, each (Y_l, X_l, C), level 0 first.
    significant_bits : int or None
        Bits the detector filled (OME ``Pixels/@SignificantBits``) when the file declares
        fewer than its integer type holds (a 12-bit camera stored as uint16); else None. Sets
        the saturation ceiling of an analysis (:mod:`qdmed.imaging._detector`).
    emission_nm : tuple of float or None
        Each channel's emission wavelength, nm (OME ``Channel/@EmissionWavelength``, as
        Bio-Formats writes it for converted files) when every channel has one; else None.
        The analyses check it against the panel's detection bands.
    exposure_ms : tuple of float or None
        Each channel's exposure time, ms (OME ``Plane/@ExposureTime``; a QPTIFF page's
        ``ExposureTime``, in microseconds as Bio-Formats reads it) when every channel has
        one; else None. A cohort warns when its slides' exposures differ.
    """

    data: Any
    channel_names: tuple[str, ...]
    pixel_size_um: float | None
    path: Path
    format: str
    levels: tuple[Any, ...] = field(default=(), repr=False)
    significant_bits: int | None = None
    emission_nm: tuple[float, ...] | None = None
    exposure_ms: tuple[float, ...] | None = None
    #: what was wrong with the pixel size the file records, when it records one that is no
    #: size (0, NaN, negative: ``pixel_size_um`` is then None), for the error that asks for
    #: one (:func:`pixel_size_or_default`)
    pixel_size_note: str | None = None
    #: what reading the file found wrong without refusing it (an OME-Zarr's absent chunks,
    #: read as the fill value); also warned (QdmedWarning) when read
    warnings: tuple[str, ...] = ()
    _direct: Any = field(default=None, repr=False, compare=False)

    def read_region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Full-resolution pixels ``[y0:y1, x0:x1, :]`` as a numpy (Y, X, C) array.

        OME-Zarr regions are read straight from the store (half the time of building and
        running a dask graph over the same chunks, measured on 2208^2 x 8 tiles); other
        formats through :attr:`data`. Both give the same pixels, in the machine's byte order
        (a big-endian store, as some converters write, is swapped: the compiled kernels read
        native numbers only)."""
        if self._direct is not None:
            a = self._direct(int(y0), int(y1), int(x0), int(x1))
        else:
            a = np.asarray(self.data[y0:y1, x0:x1, :].compute())
        return a if a.dtype.isnative else a.astype(a.dtype.newbyteorder("="))

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape)  # type: ignore[return-value]

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (no pixel data)."""
        return {"path": str(self.path), "format": self.format, "shape": list(self.shape),
                "dtype": str(self.dtype), "channel_names": list(self.channel_names),
                "pixel_size_um": self.pixel_size_um, "n_levels": len(self.levels),
                "significant_bits": self.significant_bits,
                "emission_nm": None if self.emission_nm is None else list(self.emission_nm),
                "exposure_ms": None if self.exposure_ms is None else list(self.exposure_ms)}


#: um per pixel assumed for an image that records no pixel size (a 20x scan's), said so
DEFAULT_PIXEL_SIZE_UM = 0.5


def pixel_size_or_default(pixel_size_um: float | None, what: str = "slide",
                          hint: str | None = None, note: str | None = None
                          ) -> tuple[float, list[str]]:
    """``(pixel size, warnings)``: the given pixel size, or :data:`DEFAULT_PIXEL_SIZE_UM`
    with the warning that it was assumed (`what`: the slide or the image; `hint`: how to
    give it, where the caller takes one). ``note``: the slide's
    :attr:`SlideImage.pixel_size_note`: a file that records a pixel size that is no size is
    refused (nothing is assumed for it) unless one is given."""
    if pixel_size_um is not None:  # a bad one is the caller's to refuse (0: no default)
        return pixel_size_um, []
    if note:
        raise InputError(note + (f"; give the {what}'s pixel size ({hint})" if hint else
                                 "; correct the file's metadata"))
    return DEFAULT_PIXEL_SIZE_UM, [f"the {what} declares no pixel size: "
                                   f"{DEFAULT_PIXEL_SIZE_UM:g} um/px assumed"
                                   + (f" (give {hint})" if hint else "")]


def small_level(slide: SlideImage, max_pixels: int) -> tuple[int, int, Any]:
    """``(level, step, array)``: the slide's first pyramid level with at most `max_pixels`
    pixels (Y x X), or, when none is that small, its smallest level subsampled every
    `step` pixels; `array` is that level (lazy), subsampled."""
    levels = slide.levels or (slide.data,)
    k = next((i for i, lv in enumerate(levels) if lv.shape[0] * lv.shape[1] <= max_pixels),
             len(levels) - 1)
    pick, n = levels[k], levels[k].shape[0] * levels[k].shape[1]
    step = 1 if n <= max_pixels else int(np.ceil(np.sqrt(n / max_pixels)))
    return k, step, pick[::step, ::step] if step > 1 else pick


#: Where each format records its pixel size, for the messages.
_PIXEL_SIZE_FIELD = {"ome-tiff": "OME PhysicalSizeX", "qptiff": "the TIFF resolution tags",
                     "svs": "the ImageDescription's MPP", "ndpi": "the TIFF resolution tags",
                     "imagej-tiff": "ImageJ's spacing and unit",
                     "tiff": "the TIFF resolution tags",
                     "ome-zarr": "the NGFF coordinateTransformations scale"}


def _checked_pixel_size(slide: SlideImage) -> SlideImage:
    """The slide with a pixel size that is no size (0, NaN, negative, above
    :data:`MAX_PIXEL_SIZE_UM` or below :data:`MIN_PIXEL_SIZE_UM`) taken as not recorded,
    and said in ``pixel_size_note``."""
    ps = slide.pixel_size_um
    if ps is None or (math.isfinite(ps) and MIN_PIXEL_SIZE_UM <= ps <= MAX_PIXEL_SIZE_UM):
        return slide
    where = _PIXEL_SIZE_FIELD.get(slide.format, "its metadata")
    return replace(slide, pixel_size_um=None, pixel_size_note=(
        f"{str(slide.path)!r}: the pixel size in {where} reads {ps:g} um, which is no pixel "
        f"size (one from {MIN_PIXEL_SIZE_UM:g} to {MAX_PIXEL_SIZE_UM:g} um; another unit?)"))


def read_slide(path: str | os.PathLike, *, check_chunks: bool = True) -> SlideImage:
    """Open an OME-TIFF/TIFF (``.ome.tif``, ``.tif``, ``.tiff``, ``.btf``, ``.qptiff``), an
    Aperio ``.svs`` or Hamamatsu ``.ndpi`` whole-slide image (their pyramid, without the
    label, macro and thumbnail images), or an OME-Zarr (``.zarr``, ``.ome.zarr``, or any
    folder holding a Zarr group, such as an NGFF label image) lazily. Other whole-slide
    formats (Leica SCN, Ventana BIF, MIRAX, VSI, CZI, DICOM) are refused with the way to
    convert them to OME-TIFF.

    Parameters
    ----------
    path : str or path-like
    check_chunks : bool
        Count an OME-Zarr's stored chunks, and warn of absent ones
        (:attr:`SlideImage.warnings`). False for a label image (0 = background: writers
        skip empty chunks, and a label image is mostly empty), or a slide checked already
        when it was first opened (each tile job reopens it): what reading finds is then
        recorded in :attr:`SlideImage.warnings` but not warned again (QdmedWarning).

    Returns
    -------
    SlideImage
        A dask array (Y, X, C) plus channel names and pixel size. No file handle is kept
        open: each chunk opens, reads and closes the file.

    Raises
    ------
    InputError
        The path does not exist or has an unsupported suffix (or is a whole-slide format
        to convert first).
    FileFormatError
        The file is not a readable TIFF/OME-Zarr, is truncated, or has inconsistent metadata
        (the message names the file and what is wrong).
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"slide file {str(p)!r} does not exist")
    name = p.name.lower()
    # a reopening (check_chunks False) records what reading finds without warning it again:
    # a flag passed down, not a warnings filter (catch_warnings is not thread-safe: a
    # review's threads left QdmedWarning ignored for good)
    if name.endswith(_TIFF_SUFFIXES):
        return _checked_pixel_size(_read_tiff(p, warn=check_chunks))
    if name.endswith(_ZARR_SUFFIXES) or _is_zarr_group(p):
        return _checked_pixel_size(_read_zarr(p, check_chunks=check_chunks))
    if p.suffix.lower() in CONVERT_SUFFIXES:
        # Bio-Formats reads SCN, BIF, VSI, CZI and DICOM; MIRAX is read by OpenSlide (in
        # QuPath, or libvips)
        how = ("QuPath's File > Export images > OME TIFF, or vips tiffsave SLIDE slide.tif "
               "--tile --pyramid" if p.suffix.lower() == ".mrxs" else
               "bfconvert -pyramid-resolutions 4 -tilex 512 -tiley 512 SLIDE slide.ome.tif, "
               "or QuPath's File > Export images > OME TIFF")
        raise InputError(f"slide file {str(p)!r} is a {CONVERT_SUFFIXES[p.suffix.lower()]} "
                         f"slide, which qdmed does not read: convert it to OME-TIFF first "
                         f"(e.g. {how})")
    raise InputError(f"slide file {str(p)!r} has an unsupported suffix; accepted: "
                     f"{', '.join(SLIDE_SUFFIXES)}, or a Zarr image group (e.g. an NGFF "
                     "label image, slide.ome.zarr/labels/nuclei)")


def check_zarr_output(out, inputs=(), replaces: str | None = None) -> Path:
    """An OME-Zarr output path that is safe to replace: ending in ``.zarr``, not an existing
    file or non-Zarr folder, and neither one of `inputs` nor inside one (a slide unmixed onto
    itself would be gone; :func:`check_output_folder`). With `replaces`, an existing Zarr
    image is replaced only when its root's ``qdmed`` attribute holds that record (what the
    command writes: ``unmixing``, ``objects``): a review's ``unmix --out`` onto another raw
    slide replaced it, label images and all. InputError otherwise."""
    out = Path(out)
    if not out.name.lower().endswith(".zarr"):
        raise InputError(f"the output is written as OME-Zarr: its path must end in .zarr "
                         f"(e.g. unmixed.ome.zarr); got {out}")
    if out.exists() and not _is_zarr_group(out):
        raise InputError(f"{out} exists and is not a Zarr image: it is not overwritten")
    if not out.parent.exists():  # before any work (a progress bar had come first)
        raise InputError(f"the folder of {str(out)!r} does not exist")
    check_output_folder(out, inputs)
    if replaces is not None and out.exists() and replaces not in qdmed_record(out):
        raise InputError(f"{out} is a Zarr image this command did not write (it has no "
                         f"qdmed {replaces!r} record): it is not overwritten; write the output "
                         "elsewhere, or remove it first")
    return out


def qdmed_record(path) -> dict:
    """The root ``qdmed`` attribute of a Zarr image qdmed wrote (how it was made: an
    unmixed image's ``unmixing``, a label image's ``objects``...); empty when it has none
    or cannot be read."""
    import zarr

    try:
        rec = zarr.open_group(str(path), mode="r").attrs.get("qdmed", {})
    except Exception:  # noqa: BLE001 - not a readable Zarr group: no record
        return {}
    return rec if isinstance(rec, dict) else {}


def check_output_folder(out, inputs=(), owned=(), marks=(), written=()) -> Path:
    """An output folder that is none of `inputs` and not inside one (a Zarr slide is a
    folder: a review's ``analyze s.ome.zarr --out s.ome.zarr`` wrote the analysis, unmixed
    image included, into the slide's own group), and where no input lies at (or inside) a
    name the run writes or removes, `owned` (the same review analysed
    ``analysis/unmixed.ome.zarr`` with ``--out analysis``: the slide was removed before it
    was read). With `marks` (glob patterns of files only such a run writes, e.g.
    ``tiles/run.json``), an existing folder that holds one of `owned` but none of `marks`
    is refused too: those files are not an earlier run's, and the run would replace or
    remove them (``analyze --out .`` removed the user's own report.html, and a ``tiles``
    folder's ``tile_*`` files). With `marks`, a folder holding slides or label images
    (other than `owned` and `written`: more images the run writes there, such as the label
    image it draws from a GeoJSON objects file) is refused too. InputError otherwise."""
    out = Path(out).resolve()
    for src in inputs:
        if src is None:
            continue
        src = Path(src).resolve()
        if out == src or (src.is_dir() and src in out.parents):
            raise InputError(f"{out} is {'' if out == src else 'inside '}an input of this "
                             f"command ({src}): write the output elsewhere")
        for name in owned:
            target = out / name
            if src == target or target in src.parents:
                raise InputError(f"the input {src} is where this run writes {name} in {out}: "
                                 "move it, or write the output elsewhere")
    if marks and out.is_dir():
        # a run's outputs among slides: a later cohort or qc of that folder read its
        # unmixed.ome.zarr as a slide (a review's analyze --out slides/)
        slides = sorted(p.name for p in out.iterdir() if p.name not in (*owned, *written)
                        and not p.name.startswith(".") and is_slide_path(p))
        before = recorded_slide(out)[0] if slides else None
        if before is not None:  # a slide's analysis, whose unmixed image read as a slide
            raise InputError(f"{out} holds the analysis of a slide ({before}), not this "
                             "command's output: write the output elsewhere, or remove that "
                             "folder first")
        if slides:
            raise InputError(f"{out} holds slides ({', '.join(slides[:3])}"
                             f"{' ...' if len(slides) > 3 else ''}): write the output to a "
                             "folder of its own (a later cohort or qc of this folder would "
                             "read its outputs as slides)")
        found = [name for name in owned if (out / name).exists()]
        if found and not any(next(out.glob(m), None) is not None for m in marks):
            raise InputError(
                f"{out} holds {', '.join(found)}, which this run replaces or removes, and "
                f"is not an earlier run's output folder (it has no {' or '.join(marks[:2])}): "
                "they are left alone; write the output elsewhere, or move them")
    return Path(out)


def recorded_slide(out) -> tuple[str | None, bool, bool]:
    """``(slide name, finished, by analyze)`` of the analysis an output folder holds: from
    its ``summary.json`` (finished; its "slide" the slide's dict with its path, as analyze
    writes it, or the path, as DAB does), else from a killed run's ``tiles/run.json`` (by
    analyze when its tiles are analyze's, ``tile_*``, not DAB's ``job_*`` crops);
    ``(None, False, False)`` for none (or a manifest of a release that recorded no
    slide)."""
    out = Path(out)
    try:
        before = json.loads((out / "summary.json").read_text())["slide"]
        return (Path(str(before["path"] if isinstance(before, dict) else before)).name, True,
                isinstance(before, dict))
    except (OSError, ValueError, TypeError, KeyError):  # none, or not an analysis's
        pass
    tiles = out / "tiles"
    try:
        before = json.loads((tiles / "run.json").read_text()).get("slide")
    except (OSError, ValueError, AttributeError):
        return None, False, False
    by_analyze = next(tiles.glob("job_*"), None) is None and \
        next(tiles.glob("tile_*"), None) is not None
    return (before if isinstance(before, str) else None), False, by_analyze


def check_same_slide(out, slide_name: str, done: str, what: str = "tile") -> None:
    """Refuse an output folder holding the analysis of another slide (by file name: a slide
    moved keeps its analysis), finished (its ``summary.json``) or unfinished (a killed run's
    ``tiles/run.json`` and its files matching the glob `done` in ``tiles/``, each a finished
    `what`): the run would replace it, or throw the finished tiles away, unsaid (a review's
    slip wrote a slide's analysis over a HER2 control's). The same slide's folder is
    resumed, as before. (A cohort owns its slides' folders and clears another slide's
    there itself.)"""
    before, finished, _ = recorded_slide(out)
    if before is None or before == slide_name:
        return
    if finished:
        raise InputError(f"{out} holds the analysis of another slide ({before}); this run of "
                         f"{slide_name} would replace it: write the output elsewhere, or "
                         "remove that folder first")
    n = sum(1 for _ in (Path(out) / "tiles").glob(done))
    if n:
        raise InputError(f"{out} holds an unfinished analysis of another slide ({before}, "
                         f"{n} {what}(s) done: running it again resumes them); this run of "
                         f"{slide_name} would throw them away: write the output elsewhere, or "
                         "remove that folder first")


def is_slide_path(path: str | os.PathLike) -> bool:
    """Whether :func:`read_slide` claims `path` by its name: a suffix it reads, or a
    whole-slide format it refuses with the way to convert it (so its error is the one to
    show, not another reader's)."""
    p = Path(path)
    return (p.name.lower().endswith(SLIDE_SUFFIXES) or p.suffix.lower() in CONVERT_SUFFIXES
            or _is_zarr_group(p))


def _is_zarr_group(p: Path) -> bool:
    """A folder holding Zarr metadata (v2 or v3), whatever its name: e.g. the label images
    inside an OME-Zarr, ``labels/<name>``."""
    return p.is_dir() and any((p / f).is_file() for f in (".zattrs", ".zgroup", "zarr.json"))


_TIFF_PARSE_ERRORS = (ValueError, OSError, EOFError, IndexError, KeyError, TypeError,
                      struct.error)  # what tifffile raises on malformed structures


def _tiff_open(p: Path) -> Any:
    import tifffile

    try:
        return tifffile.TiffFile(p)
    except (tifffile.TiffFileError, *_TIFF_PARSE_ERRORS) as e:
        raise FileFormatError(f"{str(p)!r} is not a readable TIFF file: "
                              f"{type(e).__name__}: {e}") from e


class _LogCapture(logging.Handler):
    """Collect tifffile's log records: it logs (instead of raising) many corruptions."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> _LogCapture:
        logging.getLogger("tifffile").addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("tifffile").removeHandler(self)


def _ome_emission_nm(channels: list) -> list[float] | None:
    """Each channel's OME ``EmissionWavelength`` in nm (None unless every channel has one in
    a unit of ``_UNIT_TO_UM``)."""
    out = []
    for ch in channels:
        v = ch.get("EmissionWavelength")
        if v is None:
            return None
        unit = ch.get("EmissionWavelengthUnit", "nm")
        try:
            out.append(float(v) * _UNIT_TO_UM[unit] * 1e3)
        except (KeyError, ValueError):
            # the wavelengths only serve a consistency check: an unusual unit or value
            # leaves them out instead of making the image unreadable
            return None
    return out or None


_TIME_TO_MS = {"s": 1e3, "ms": 1.0, "µs": 1e-3, "\u03bcs": 1e-3, "us": 1e-3, "ns": 1e-6,
               "min": 6e4, "h": 3.6e6}


def _ome_exposure_ms(pixels: Any, n_channels: int) -> list[float] | None:
    """Each channel's exposure time, ms, from the OME ``Plane`` elements (``ExposureTime``,
    unit ``ExposureTimeUnit``, seconds by default in the OME schema): the first plane of
    each channel that gives a usable one (a positive, finite number in a unit of
    ``_TIME_TO_MS``); None unless every channel has one."""
    out: dict[int, float] = {}
    for pl in pixels:
        if not pl.tag.endswith("Plane") or pl.get("ExposureTime") is None:
            continue
        try:
            c = int(pl.get("TheC", 0))
            t = float(pl.get("ExposureTime")) * _TIME_TO_MS[pl.get("ExposureTimeUnit", "s")]
        except (KeyError, ValueError):
            continue  # an unusual unit or value: that plane says nothing
        if np.isfinite(t) and t > 0:
            out.setdefault(c, t)
    return [out[c] for c in range(n_channels)] if n_channels and set(out) >= set(
        range(n_channels)) else None


def _ome_info(xml: str | None, p: Path, image: int = 0) -> dict[str, Any]:
    """From OME-XML, of its `image`-th Image: channel ``names``, ``pixel_size_um``,
    significant ``bits``, ``emission_nm`` and ``exposure_ms`` per channel (each None where
    absent)."""
    none = {"names": None, "pixel_size_um": None, "bits": None, "emission_nm": None,
            "exposure_ms": None}
    if not xml:
        return none
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise FileFormatError(f"{str(p)!r}: the OME-XML in ImageDescription is malformed: "
                              f"{e}") from e
    images = [el for el in root if el.tag.endswith("}Image") or el.tag == "Image"]
    within = images[image] if image < len(images) else root
    pixels = next((el for el in within.iter() if el.tag.endswith("}Pixels")
                   or el.tag == "Pixels"), None)
    if pixels is None:
        return none
    channels = [ch for ch in pixels if ch.tag.endswith("Channel")]
    names = [ch.get("Name") for ch in channels]
    ps = None
    # OME's non-physical length units (UnitsLength "pixel", "reference frame"): no physical
    # size recorded, as when the field is absent (a review's file was refused whole)
    if pixels.get("PhysicalSizeX") is not None and \
            pixels.get("PhysicalSizeXUnit") not in ("pixel", "reference frame"):
        unit = pixels.get("PhysicalSizeXUnit", "µm")
        if unit not in _UNIT_TO_UM:
            raise FileFormatError(f"{str(p)!r}: OME PhysicalSizeXUnit {unit!r} is not one of "
                                  f"{sorted(_UNIT_TO_UM)}")
        try:
            ps = float(pixels.get("PhysicalSizeX")) * _UNIT_TO_UM[unit]
        except ValueError as e:
            raise FileFormatError(f"{str(p)!r}: OME PhysicalSizeX "
                                  f"{pixels.get('PhysicalSizeX')!r} is not a number") from e
        try:
            ps_y = float(pixels.get("PhysicalSizeY")) * _UNIT_TO_UM.get(
                pixels.get("PhysicalSizeYUnit", "µm"), np.nan)
        except (TypeError, ValueError):
            ps_y = None  # absent or unreadable: X's is taken, as before
        _check_square(ps, ps_y, p, "OME PhysicalSizeX", "PhysicalSizeY")
    if names and any(n is None for n in names):
        names = None
    bits = pixels.get("SignificantBits")
    if bits is not None:
        try:
            bits = int(bits)
        except ValueError as e:
            raise FileFormatError(f"{str(p)!r}: OME SignificantBits {bits!r} is not an "
                                  f"integer") from e
        if bits < 1:
            raise FileFormatError(f"{str(p)!r}: OME SignificantBits {bits} must be >= 1")
    return {"names": names or None, "pixel_size_um": ps, "bits": bits,
            "emission_nm": _ome_emission_nm(channels),
            "exposure_ms": _ome_exposure_ms(pixels, len(channels))}


_QPI_ROOT = "PerkinElmer-QPI-ImageDescription"


def _qpi_xml(page: Any) -> str | None:
    """The page's Akoya/PerkinElmer QPI description (XML rooted at
    ``<PerkinElmer-QPI-ImageDescription>``), or None for any other page."""
    desc = getattr(page, "description", "") or ""
    head = desc.lstrip()[:400]
    return desc if head.startswith("<") and _QPI_ROOT in head else None


def _qpi_channels(pages: Sequence[Any], p: Path) -> dict[str, Any]:
    """Channel ``names`` and ``exposure_ms`` of an Akoya/PerkinElmer QPTIFF or inForm
    component export, from each full-resolution page's XML description.

    The name is the page's ``<Name>``, the element that Bio-Formats' VectraReader
    (ome/bioformats, components/formats-gpl/.../VectraReader.java) and Akoya's own phenoptr
    ``read_components`` take as the channel (component) name; the exposure its
    ``<ExposureTime>``, which VectraReader reads in microseconds. The pages are one per
    channel, followed by an RGB thumbnail, reduced resolutions, macro and label images,
    which tifffile's series already leaves out (its ``qpi`` series, or a generic one that
    stops where the page shape changes). Names are None when a page has no Name, exposures
    when a page has no usable one (a positive, finite number)."""
    names: list[str] | None = []
    exposure: list[float] | None = []
    for i, page in enumerate(pages):
        xml = _qpi_xml(page)
        if xml is None:
            return {"names": None, "exposure_ms": None}
        try:
            # the declaration says utf-16 but the text is utf-8 (Bio-Formats' note); parsing
            # the decoded str sidesteps the declared encoding
            root = ET.fromstring(xml.strip())
        except ET.ParseError as e:
            raise FileFormatError(f"{str(p)!r}: the QPTIFF XML description of page {i} is "
                                  f"malformed: {e}") from e
        el = root.find("Name")
        if names is not None and el is not None and (el.text or "").strip():
            names.append(el.text.strip())
        else:
            names = None
        try:
            t = float(root.find("ExposureTime").text) * 1e-3
        except (AttributeError, TypeError, ValueError):
            t = np.nan
        if exposure is not None and np.isfinite(t) and t > 0:
            exposure.append(t)
        else:
            exposure = None
    return {"names": names, "exposure_ms": exposure or None}


def _imagej_info(md: dict, page: Any, p: Path) -> dict[str, Any]:
    """Channel ``names`` and ``pixel_size_um`` of an ImageJ/Fiji TIFF: the slice labels
    (``Labels``, one per channel of a channel stack) and the resolution tags, which ImageJ
    writes as pixels per ``unit`` (its ImageDescription) with the TIFF ResolutionUnit
    "none" (1); absent where these are not there or not usable."""
    labels = md.get("Labels")
    names = ([str(x) for x in labels] if isinstance(labels, list | tuple) and labels
             and all(isinstance(x, str) and x.strip() for x in labels) else None)
    ps = None
    unit = str(md.get("unit", "")).strip()
    try:
        rel = int(page.tags["ResolutionUnit"].value) == 1
    except KeyError:
        rel = False
    xres, yres = (_resolution_per_unit(page, t) for t in ("XResolution", "YResolution"))
    if rel and xres and unit in _UNIT_TO_UM:
        ps = _UNIT_TO_UM[unit] / xres
        _check_square(ps, _UNIT_TO_UM[unit] / yres if yres else None, p,
                      "the ImageJ XResolution", "YResolution")
    return {"names": names, "pixel_size_um": ps}


def _check_square(ps_x: float | None, ps_y: float | None, p: Path, x_field: str,
                  y_field: str) -> None:
    """Refuse pixels whose recorded height differs from their width by over 1 %: areas
    and distances are measured on square pixels (0.5 x 2 um ones were taken as 0.5 x 0.5
    um, areas 4x off, unsaid: a review, for OME-TIFF, then Zarr and plain and ImageJ TIFF).
    Either size absent, or no size (0, NaN: said elsewhere), is not checked."""
    if ps_x is None or ps_y is None or not (0 < ps_x <= MAX_PIXEL_SIZE_UM) or \
            not (0 < ps_y <= MAX_PIXEL_SIZE_UM) or abs(ps_y / ps_x - 1) <= 0.01:
        return
    raise FileFormatError(f"{str(p)!r}: its pixels are {ps_x:g} um wide ({x_field}) but "
                          f"{ps_y:g} um high ({y_field}): qdmed measures on square pixels; "
                          "resample the image to square ones first")


def _resolution_per_unit(page: Any, tag: str) -> float | None:
    """A TIFF page's X/YResolution tag as a number (pixels per resolution unit), None when
    absent or no number."""
    try:
        v = page.tags[tag].value
    except KeyError:
        return None
    num, den = v if isinstance(v, tuple) else (v, 1)
    return num / den if num and den else None


#: Coarsest pixel size taken from a TIFF's X/YResolution tags, um (coarser: a print or
#: screen resolution, taken as unknown).
_MAX_TIFF_RESOLUTION_UM = 20.0


def _tiff_resolution_um(page: Any, p: Path) -> float | None:
    try:
        unit = int(page.tags["ResolutionUnit"].value)
    except KeyError:
        return None
    um = 1e4 if unit == 3 else 25400.0 if unit == 2 else None  # per centimetre, per inch
    xres, yres = (_resolution_per_unit(page, t) for t in ("XResolution", "YResolution"))
    if um is None or not xres:
        return None
    ps = um / xres
    # 72, 96, 300 dpi (353, 265, 85 um) are what image editors and screenshots write, not a
    # microscope's sampling, which is finer than 20 um per pixel even for an overview scan
    if ps > _MAX_TIFF_RESOLUTION_UM:
        return None
    _check_square(ps, um / yres if yres else None, p, "the TIFF XResolution", "YResolution")
    return ps


def _svs_mpp(page: Any, p: Path) -> tuple[float | None, str | None]:
    """``(pixel size in um, note)`` of an Aperio SVS slide: the ``MPP`` field of the first
    page's ImageDescription (``Aperio Image Library ... |AppMag = 20|MPP = 0.4990``), as
    OpenSlide reads it (its ``aperio.MPP`` property, Goode et al. 2013, J Pathol Inform 4:27,
    doi:10.4103/2153-3539.119005). ``(None, None)`` when absent; ``(None, note)`` when it is
    not a positive number of at most 20 um: the note (naming the file and the field) is the
    slide's :attr:`SlideImage.pixel_size_note`, so that, as for every format, a recorded
    size that is no size is refused unless one is given, never replaced by a default."""
    # the description is "header|key = value|key = value..."; parsed here because tifffile's
    # parser of it is not part of its public API
    fields = dict(f.split("=", 1) for f in page.description.split("|")[1:] if "=" in f)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    if "MPP" not in fields:
        return None, None
    try:
        mpp = float(fields["MPP"])
    except ValueError:
        mpp = None
    if mpp is None or not 0 < mpp <= _MAX_TIFF_RESOLUTION_UM:
        return None, (f"{str(p)!r}: the Aperio ImageDescription field MPP = {fields['MPP']!r} "
                      f"is not a pixel size in um (a number in (0, "
                      f"{_MAX_TIFF_RESOLUTION_UM:g}])")
    return mpp, None


def _said(text: str, warned: list[str], warn: bool, stacklevel: int = 5) -> None:
    """Record what reading a slide found (:attr:`SlideImage.warnings`), and warn it
    (QdmedWarning) unless the slide is being reopened (``warn`` False); `stacklevel` points
    the warning at read_slide's caller (5 from a reader's helper, 4 from the reader)."""
    warned.append(text)
    if warn:
        import warnings

        from qdmed.errors import QdmedWarning

        warnings.warn(text, QdmedWarning, stacklevel=stacklevel)


def _read_tiff(p: Path, warn: bool = True) -> SlideImage:
    size = p.stat().st_size
    note = None  # SlideImage.pixel_size_note
    warned: list[str] = []  # SlideImage.warnings
    with _LogCapture() as log, _tiff_open(p) as tf:
        try:
            si = _ome_image_read(tf, p, warned, warn)
            series = tf.series[si]
            axes = series.axes
            level_shapes = [tuple(lv.shape) for lv in series.levels]
            for lv_i, lv in enumerate(series.levels):
                for pg_i, pg in enumerate(lv.pages):
                    if pg is None:
                        raise FileFormatError(f"{str(p)!r}: page {pg_i} of level {lv_i} is "
                                              f"missing (file truncated or corrupted)")
                    offs, counts = pg.dataoffsets, pg.databytecounts
                    if len(offs) == 0:
                        raise FileFormatError(f"{str(p)!r}: page {pg_i} of level {lv_i} has "
                                              f"no image data offsets")
                    end = max(int(o) + int(c) for o, c in zip(offs, counts, strict=True))
                    if end > size:
                        raise FileFormatError(
                            f"{str(p)!r} is truncated: page {pg_i} of level {lv_i} needs data "
                            f"up to byte {end} but the file has {size} bytes")
            dtype = np.dtype(series.dtype)
            is_ome = bool(tf.is_ome)
            if not is_ome:  # OME-XML cut short: tifffile then reads a plain TIFF, unsaid
                head = (getattr(series.pages[0], "description", "") or "").lstrip()[:2000]
                if head.startswith("<OME") or (head.startswith("<?xml") and "<OME" in head):
                    _ome_info(series.pages[0].description, p)  # says what is malformed
            info = _ome_info(tf.ome_metadata if is_ome else None, p, si)
            svs, ndpi = bool(tf.is_svs), bool(tf.is_ndpi)
            qpi = not (is_ome or svs or ndpi) and _qpi_xml(series.pages[0]) is not None
            imagej = not (is_ome or qpi or svs or ndpi) and bool(tf.is_imagej)
            md = (tf.imagej_metadata or {}) if imagej else {}
            if imagej and not md.get("hyperstack") and not md.get("spacing") and \
                    not md.get("finterval"):
                # Fiji saves a plain stack (Images to Stack of a spectral series, say) as
                # slices, which tifffile reads as Z: read as channels, as before the Z
                # refusal, and said (a review's spectral stack was refused as a Z-stack).
                # A stack with a Z spacing or a frame interval is a focal or time series,
                # refused as such; so is one with another axis beside (channels and slices)
                depth = [(a, n) for a, n in zip(axes, level_shapes[0], strict=True)
                         if a not in "YX" and n > 1]
                if len(depth) == 1 and depth[0][0] in "ZT":
                    axes = axes.replace(depth[0][0], "I")
                    _said(f"{str(p)!r}: an ImageJ stack of {depth[0][1]} slices without "
                          "hyperstack dimensions is read as channels (if they are focal "
                          "planes or time points, project them first; Fiji's Image > "
                          "Hyperstacks > Stack to Hyperstack records which they are)",
                          warned, warn, stacklevel=4)
            if svs:
                info["pixel_size_um"], note = _svs_mpp(series.pages[0], p)
            elif qpi:
                info.update(_qpi_channels(series.pages, p))
            elif imagej:
                info.update(_imagej_info(tf.imagej_metadata or {}, series.pages[0], p))
            names, ps, bits = info["names"], info["pixel_size_um"], info["bits"]
            if ps is None and note is None:  # (a bad MPP is not replaced by other tags)
                ps = _tiff_resolution_um(series.pages[0], p)
            # an 8-bit RGB (or YCbCr-coded) brightfield image: its samples are red, green,
            # blue (tifffile writes any (Y, X, 3) array as RGB: a 16-bit three-channel
            # fluorescence stack keeps C0-C2)
            rgb_plane = int(series.pages[0].photometric) in (2, 6) and \
                int(series.pages[0].samplesperpixel) == 3  # 16-bit RGB too
            rgb = rgb_plane and dtype == np.uint8
        except FileFormatError:
            raise  # names the file and the field already
        except _TIFF_PARSE_ERRORS as e:
            raise FileFormatError(f"{str(p)!r}: cannot parse the TIFF structure (a "
                                  f"truncated or corrupted file? it has {size} bytes): "
                                  f"{type(e).__name__}: {e}") from e
        bad = [r for r in log.records if r.levelno >= logging.ERROR
               or "corrupt" in r.getMessage().lower()]
        if bad:
            raise FileFormatError(f"{str(p)!r} is corrupted or truncated: tifffile reported "
                                  f"{bad[0].getMessage()}")
    perm, squeeze = _axes_to_yxc(axes, level_shapes[0], p)
    levels = []
    for lv_i, shp in enumerate(level_shapes):
        arr = _tiff_level_dask(p, lv_i, shp, dtype, axes, si)
        arr = arr.reshape(tuple(s for i, s in enumerate(shp) if i not in squeeze))
        arr = arr.transpose(perm) if arr.ndim == 3 else arr[:, :, None]
        levels.append(arr)
    nc = int(levels[0].shape[2])
    if (qpi or imagej) and names is not None and len(names) != nc:
        # a brightfield QPTIFF: one RGB page, one <Name> for its three samples; an ImageJ
        # stack whose labels are per plane of a Z or T series
        names = None
    if rgb_plane and nc == 3 and names is not None and len(names) == 1:
        # OME puts an interleaved RGB plane in one Channel (SamplesPerPixel 3), which may
        # have a name ("Brightfield"): its samples are red, green, blue (a review's was
        # refused as "names 1 channels but the image has 3")
        names = None
    if names is not None and len(names) != nc:
        raise FileFormatError(f"{str(p)!r}: OME-XML names {len(names)} channels but the image "
                              f"has {nc}")
    # per-channel values of channel elements that do not describe the image's channels
    emission, exposure = (v if v is not None and len(v) == nc else None
                          for v in (info["emission_nm"], info["exposure_ms"]))
    if bits is not None and not (dtype.kind in "ui" and bits < dtype.itemsize * 8):
        bits = None  # the whole type is used (or a float image): no narrower ceiling
    if names is None and rgb and nc == 3:
        names = ("R", "G", "B")
    return SlideImage(data=levels[0], channel_names=tuple(names) if names else
                      _default_channel_names(nc), pixel_size_um=ps, path=p,
                      format="ome-tiff" if is_ome else "qptiff" if qpi else "svs" if svs
                      else "ndpi" if ndpi else "imagej-tiff" if imagej else "tiff",
                      levels=tuple(levels), significant_bits=bits,
                      emission_nm=tuple(emission) if emission else None,
                      exposure_ms=tuple(exposure) if exposure else None,
                      pixel_size_note=note, warnings=tuple(warned))


def _ome_image_read(tf: Any, p: Path, warned: list[str], warn: bool = True) -> int:
    """Which image (tifffile series) of a TIFF is read: the first, or, in an OME-TIFF of
    several images (bfconvert writes a slide's scenes, label and overview each as one,
    and one of those is often the first), the largest in Y x X, said in a warning (also
    issued, QdmedWarning) naming them all. A review read a multi-image file's 100 x 200
    macro image as the slide, unsaid."""
    series = tf.series
    first = tuple(series[0].shape) if series else ()
    alike = sum(se.axes == "YX" and tuple(se.shape) == first for se in series)
    if not tf.is_ome and series and series[0].axes == "YX" and alike >= 2:
        # pages written one at a time: each its own series, the first read as a
        # one-channel image (a microscopist's 8-band file: "the image has 1 channels"; a
        # review: with a thumbnail after them, too)
        h, w = first
        others = len(series) - alike
        raise FileFormatError(
            f"{str(p)!r} holds {alike} images of one {w} x {h} px plane each (pages "
            "written one by one)" + (f" and {others} other image(s)" if others else "")
            + ", where qdmed reads one image of channels: if they are the channels, save "
            "them as one image (numpy and tifffile: imwrite(path, np.stack(planes), "
            "photometric='minisblack'); Fiji: Images to Stack, then Save As Tiff)")
    if not tf.is_ome or len(series) < 2:
        return 0

    def yx(se) -> tuple[int, int]:
        dims = dict(zip(se.axes, se.shape, strict=True))
        return int(dims.get("Y", 1)), int(dims.get("X", 1))

    try:
        images = sum(1 for el in ET.fromstring(tf.ome_metadata) if el.tag.endswith("Image"))
    except ET.ParseError:
        images = 0
    largest, listed = _largest_image(
        [f"{i}: {se.name or 'unnamed'}" for i, se in enumerate(series)],
        [yx(se) for se in series])
    # the OME Image of a series is known by its place only when each Image is one series
    si = largest if images == len(series) else 0
    text = (f"{str(p)!r} holds {len(series)} images ({listed}): image {si}, the "
            + ("largest" if images == len(series) else "first") + ", is read; to analyse "
            "another, write it to a file of its own (e.g. bfconvert -series N)")
    _said(text, warned, warn)
    return si


def _largest_image(labels: list[str], sizes: list[tuple[int, int] | None]) -> tuple[int, str]:
    """Of a file's images (`labels`, their (Y, X) `sizes`, None for one that cannot be
    read), the index of the largest, and the first 8 listed as "label (W x H px)" for the
    warning that names them (a multi-image OME-TIFF, a bioformats2raw OME-Zarr)."""
    largest = max((i for i, s in enumerate(sizes) if s is not None),
                  key=lambda i: sizes[i][0] * sizes[i][1])
    listed = "; ".join(f"{lab} ({s[1]} x {s[0]} px)" if s else
                       f"{lab} (not an image qdmed reads)"
                       for lab, s in zip(labels[:8], sizes[:8], strict=True))
    return largest, listed + ("; ..." if len(labels) > 8 else "")


#: Axis letters (tifffile's; NGFF axes mapped to them, :func:`_ngff_axis_letter`) taken as
#: the channel axis: channel, sample, a generic sequence, unknown, and wavelength (a lambda
#: stack: spectral channels).
_CHANNEL_AXES = "CSIQE"
#: Other axes named in the refusal.
_OTHER_AXES = {"Z": "a Z (depth) axis", "T": "a time axis", "A": "an angle axis",
               "P": "a phase axis", "R": "a tile axis", "M": "a mosaic axis",
               "H": "a lifetime axis", "L": "an exposure axis", "V": "an event axis"}


def _ngff_axis_letter(axis: Any, i: int, p: Path) -> str:
    """The tifffile-style letter of NGFF axis `axis` (a dict with ``name`` and optional
    ``type``, or a bare name as NGFF 0.3 wrote them): X, Y, C (channel), T (time), Z
    (another space axis), Q (unknown)."""
    name = axis.get("name") if isinstance(axis, dict) else axis
    if not isinstance(name, str) or not name:
        raise FileFormatError(f"{str(p)!r}: NGFF axis {i} ({axis!r}) has no 'name'")
    kind = axis.get("type") if isinstance(axis, dict) else None
    n = name.lower()
    if n in ("x", "y"):
        return n.upper()
    if n in ("c", "channel") or kind == "channel":
        return "C"
    if n in ("t", "time") or kind == "time":
        return "T"
    return "Z" if n == "z" or kind == "space" else "Q"


def _axes_to_yxc(axes: str, shape: tuple[int, ...], p: Path) -> tuple[tuple[int, ...], set]:
    """Axis permutation to (Y, X, C) after squeezing singleton non-spatial axes."""
    squeeze = {i for i, a in enumerate(axes) if a not in "YX" and shape[i] == 1}
    kept = [a for i, a in enumerate(axes) if i not in squeeze]
    if "Y" not in kept or "X" not in kept:
        raise FileFormatError(f"{str(p)!r}: image axes {axes!r} lack Y and X")
    others = [a for a in kept if a not in "YX"]
    if len(others) > 1:
        raise FileFormatError(f"{str(p)!r}: image axes {axes!r} with shape {shape} have more "
                              f"than one non-singleton non-spatial axis; expected one channel "
                              f"axis (C, S, I, Q or E)")
    if others and others[0] not in _CHANNEL_AXES:
        # a Z-stack or a time series read as spectral channels was analysed unsaid (a
        # review: 204 cells from 8 focal planes)
        what = _OTHER_AXES.get(others[0], f"an axis {others[0]!r}")
        n = shape[axes.index(others[0])]
        raise FileFormatError(f"{str(p)!r}: image axes {axes!r} with shape {shape} have "
                              f"{what} of {n} planes, not channels: qdmed reads one plane of "
                              "channels (C); project the stack or take one plane first (e.g. "
                              "Fiji's Z Project, or bfconvert -z / -timepoint). A spectral "
                              "(lambda) stack saved so is its channels: relabel the axis as C "
                              "(Fiji: Image > Hyperstacks > Re-order Hyperstack; tifffile: "
                              "imwrite(..., imagej=True, metadata={'axes': 'CYX'}))")
    if not others:
        return (kept.index("Y"), kept.index("X")), squeeze
    n_c, n_x = shape[axes.index(others[0])], shape[axes.index("X")]
    n_y = shape[axes.index("Y")]
    if others[0] in "QI" and n_c > 64 and n_x <= 64 and n_y >= 4 * n_x and \
            kept.index(others[0]) == 0:  # (a real 70-band stack 100 x 48 px passes)
        # a (Y, X, C) array written without its axes: tifffile takes it as Q, Y, X (a
        # microscopist's 8-channel control read as 512 channels of 512 x 8 px)
        raise FileFormatError(
            f"{str(p)!r}: image axes {axes!r} with shape {shape} would be {n_c} channels of "
            f"{n_x} px wide images: a (Y, X, C) array of {n_x} channels saved without its "
            "axes? Save it with them (tifffile: imwrite(path, a, photometric='minisblack', "
            "planarconfig='contig'), or metadata={'axes': 'YXC'}), or as (C, Y, X)")
    return (kept.index("Y"), kept.index("X"), kept.index(others[0])), squeeze


def _tiff_level_dask(p: Path, level: int, shape: tuple[int, ...], dtype: np.dtype,
                     axes: str, series: int = 0) -> Any:
    """Lazy dask array of one TIFF level, read through tifffile's zarr store per chunk."""
    import dask.array as da

    yi, xi = axes.index("Y"), axes.index("X")
    chunks = [min(s, 2048) if i in (yi, xi) else s for i, s in enumerate(shape)]
    return da.map_blocks(_read_tiff_block, dtype=dtype, chunks=da.core.normalize_chunks(
        tuple(chunks), shape), meta=np.empty((0,) * len(shape), dtype),
        path=str(p), level=level, axes=axes, series=series)


@functools.cache
def _tiff_store_class() -> type:
    """tifffile's Zarr store of a TIFF series, whose chunks that fail to decode are recorded
    (read as missing) instead of raised inside zarr's event loop. Raised there, the error
    left the region's other chunk reads pending, and a command that then exited on the
    error printed "Task was destroyed but it is pending!" for each of them; recorded, every
    read finishes and the caller raises the first error."""
    from tifffile.zarr import ZarrTiffStore

    class _RecordingTiffStore(ZarrTiffStore):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.errors: list[BaseException] = []

        async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
            try:
                return await super().get(key, prototype, byte_range)
            except Exception as e:  # noqa: BLE001 - any decoder's error, raised by the caller
                self.errors.append(e)
                return None

    return _RecordingTiffStore


def _ndpi_jpeg_colours_as_openslide(page: Any) -> None:
    """Let an NDPI page read by its restart intervals decode its colours as its JPEG stream
    says, as OpenSlide (libjpeg's default) and tifffile's whole-page read do.

    A NanoZoomer writes a large level as one JPEG with restart markers, and the offsets of
    its intervals in the tag McuStarts; tifffile then reads the page as tiles of one
    interval each, with the stream's header. To choose the tiles' colour space it asks
    whether the JPEG is JFIF by reading the bytes at the first tile's offset, which for
    such a page is entropy-coded data, never the JFIF marker; with the page's Photometric
    tag RGB, it then decodes YCbCr samples as RGB (a grey tissue read green-violet: found
    with ``_write_ndpi(mcu_interval=...)`` in the tests, tifffile 2026.3.3). Marked YCbCr,
    the decoder is told nothing and reads the header's markers (JFIF or Adobe), as for
    the page's other readers."""
    import tifffile

    if (getattr(page, "is_ndpi", False) and getattr(page, "jpegheader", None) is not None
            and page.photometric == tifffile.PHOTOMETRIC.RGB):
        page.photometric = tifffile.PHOTOMETRIC.YCBCR


def _read_tiff_block(*, path: str, level: int, axes: str = "", series: int = 0,
                     block_info: Any = None) -> np.ndarray:
    import tifffile
    import zarr

    loc = block_info[None]["array-location"]
    sel = tuple(slice(a, b) for a, b in loc)
    try:
        with tifffile.TiffFile(path) as tf:
            se = tf.series[series]
            lev = se.levels[level]
            if lev.dataoffset is not None:
                # uncompressed and contiguous (ImageJ stacks, cellpose masks, tifffile's
                # default): one strip, or none, so the zarr store's chunk would be the whole
                # image; a memory map reads the block's bytes only (a 512^2 window of an
                # 8192^2 uint32 mask: 1.6 s -> ms, measured)
                mm = np.memmap(path, dtype=lev.dtype.newbyteorder(tf.byteorder), mode="r",
                               offset=lev.dataoffset, shape=lev.shape)
                return np.array(mm[sel], dtype=lev.dtype)  # native byte order
            _ndpi_jpeg_colours_as_openslide(lev.keyframe)
            store = _tiff_store_class()(se, level=level)
            z = zarr.open_array(store, mode="r")
            out = np.asarray(z[sel])
            if store.errors:
                raise store.errors[0]
            return out
    except (tifffile.TiffFileError, zlib.error, RuntimeError, ImportError,
            *_TIFF_PARSE_ERRORS) as e:
        # zlib.error / imagecodecs errors (RuntimeError subclasses): corrupted tile data;
        # ImportError or a message naming imagecodecs: a codec that is not installed
        if isinstance(e, ImportError) or "imagecodecs" in str(e):
            raise FileFormatError(f"{path!r}: its tiles are compressed with a codec this "
                                  "installation lacks (pip install imagecodecs): "
                                  f"{type(e).__name__}: {e}") from e
        where = ", ".join(f"{a.lower()} {lo}-{hi}" for a, (lo, hi) in zip(axes, loc,
                                                                         strict=False)
                          if a in "YX") or str(loc)
        raise FileFormatError(f"{path!r}: cannot decode level {level} within {where} px "
                              f"(corrupted image data?): {type(e).__name__}: {e}") from e


def _read_zarr(p: Path, check_chunks: bool = True) -> SlideImage:
    import zarr

    try:
        root = zarr.open_group(str(p), mode="r")
    except Exception as e:
        raise FileFormatError(f"{str(p)!r} is not a readable Zarr group: "
                              f"{type(e).__name__}: {e}") from e
    attrs = dict(root.attrs)
    bits = attrs.get("qdmed", {}).get("significant_bits") if isinstance(
        attrs.get("qdmed"), dict) else None  # qdmed's own record (NGFF has no field for it)
    attrs = _ngff_attrs(attrs)
    ms = attrs.get("multiscales")
    if not ms and "bioformats2raw.layout" in attrs:
        return _read_bioformats2raw(p, root, check_chunks)
    if not ms or not isinstance(ms, list) or "datasets" not in ms[0]:
        raise FileFormatError(f"{str(p)!r}: missing NGFF field 'multiscales' (with "
                              f"'datasets') in the group attributes")
    m = ms[0]
    if not isinstance(m["datasets"], list) or not m["datasets"]:
        raise FileFormatError(f"{str(p)!r}: NGFF multiscales 'datasets' lists no array")
    given = m.get("axes", [])
    if not isinstance(given, list):
        raise FileFormatError(f"{str(p)!r}: NGFF multiscales 'axes' is not a list: {given!r}")
    up = "".join(_ngff_axis_letter(a, i, p) for i, a in enumerate(given))
    axes = [a["name"] if isinstance(a, dict) else a for a in given]
    levels, ps = [], None
    for i, ds in enumerate(m["datasets"]):
        if not isinstance(ds, dict) or not isinstance(ds.get("path"), str):
            raise FileFormatError(f"{str(p)!r}: multiscales dataset {i} has no 'path'")
        try:
            arr = root[ds["path"]]
        except (KeyError, ValueError) as e:  # ValueError: a path out of the group ("../..")
            raise FileFormatError(f"{str(p)!r}: multiscales dataset path {ds['path']!r} does "
                                  f"not exist in the image") from e
        if not hasattr(arr, "shape") or not hasattr(arr, "chunks"):
            raise FileFormatError(f"{str(p)!r}: multiscales dataset path {ds['path']!r} is "
                                  "a group, not an array")
        # an empty axis or a chunk of no size (a review: ZeroDivisionError, or a reshape
        # error, deep in the reading)
        if any(int(v) < 1 for v in arr.shape) or any(int(v) < 1 for v in arr.chunks):
            raise FileFormatError(f"{str(p)!r}: array '{ds['path']}' has shape "
                                  f"{list(arr.shape)} and chunks {list(arr.chunks)}: every "
                                  "axis needs a size and a chunk size of at least 1")
        if not axes:
            axes = ["c", "y", "x"][-arr.ndim:] if arr.ndim <= 3 else []
            up = "".join(axes).upper()
        if len(axes) != arr.ndim:
            raise FileFormatError(f"{str(p)!r}: NGFF axes {axes} do not match array "
                                  f"'{ds['path']}' with {arr.ndim} dimensions")
        d = _dask_from_zarr(arr)
        if i == 0:
            ps = _ngff_pixel_size(ds, m, axes, p) if "x" in axes else None
        perm, squeeze = _axes_to_yxc(up, tuple(arr.shape), p)
        d = d.reshape(tuple(s for j, s in enumerate(arr.shape) if j not in squeeze))
        d = d.transpose(perm) if d.ndim == 3 else d[:, :, None]
        levels.append(d)
        if i == 0:
            direct = _zarr_region_reader(arr, up, perm, squeeze)
            arr0, up0 = arr, up
    nc = int(levels[0].shape[2])
    names, warned = _omero_names(attrs.get("omero"), nc, p, check_chunks)
    names = tuple(names) if names else _default_channel_names(nc)
    missing = _missing_chunks_warning(arr0, p, m["datasets"][0]["path"], up0, names,
                                      levels) if check_chunks else None
    dt = levels[0].dtype
    if not (isinstance(bits, int) and not isinstance(bits, bool) and dt.kind in "ui"
            and 1 <= bits < dt.itemsize * 8):
        bits = None
    return SlideImage(data=levels[0], channel_names=names, pixel_size_um=ps, path=p,
                      format="ome-zarr",
                      levels=tuple(levels), significant_bits=bits, _direct=direct,
                      warnings=tuple(warned) + (() if missing is None else (missing,)))


def _read_bioformats2raw(p: Path, root: Any, check_chunks: bool) -> SlideImage:
    """An OME-Zarr in bioformats2raw's layout (NGFF "bioformats2raw.layout" 3): its images
    are the groups the ``OME`` group's ``series`` attribute lists, else ``0``, ``1``, ...
    The one read is the largest in Y x X (as of a multi-image OME-TIFF,
    :func:`_ome_image_read`; sizes from each image's metadata, so that an image qdmed could
    not read, a Z-stack overview, say, does not keep the slide from being read), said in a
    warning where there are several; the slide keeps the folder's path (a review was told
    "missing NGFF field 'multiscales'")."""
    try:
        listed = root["OME"].attrs.get("series")
    except Exception:  # noqa: BLE001 - no OME group: the numbered groups
        listed = None
    if not (isinstance(listed, list) and listed and all(isinstance(x, str) for x in listed)):
        listed = []
        while (p / str(len(listed))).is_dir():
            listed.append(str(len(listed)))
    sizes = [_ngff_yx(p / name) for name in listed]
    if all(s is None for s in sizes):
        raise FileFormatError(f"{str(p)!r}: a bioformats2raw layout without a readable image "
                              f"(series {', '.join(listed[:5]) or 'none'}: none is an NGFF "
                              "image with y and x axes)")
    largest, shown = _largest_image(listed, sizes)
    best = listed[largest]
    slide = _read_zarr(p / best, check_chunks=check_chunks)
    warned: list[str] = []
    if len(listed) > 1:
        _said(f"{str(p)!r} holds {len(listed)} images in bioformats2raw's layout ({shown}): "
              f"image {best}, the largest, is read; to analyse another, give its folder "
              f"({p / listed[0]}, ...)", warned, check_chunks)
    return replace(slide, path=p, warnings=(*warned, *slide.warnings))


def _ngff_attrs(attrs: dict) -> dict:
    """A group's NGFF attributes: NGFF 0.5 nests them under "ome"."""
    return dict(attrs["ome"]) if isinstance(attrs.get("ome"), dict) else attrs


def _ngff_yx(p: Path) -> tuple[int, int] | None:
    """(height, width) of the full-resolution array of the NGFF image at `p`, from its
    metadata (axes named y and x, or the last two); None where it is no such image."""
    import zarr

    try:
        g = zarr.open_group(str(p), mode="r")
        m = _ngff_attrs(dict(g.attrs))["multiscales"][0]
        shape = g[m["datasets"][0]["path"]].shape
        names = [a.get("name") if isinstance(a, dict) else a for a in m.get("axes") or []]
        if len(names) == len(shape) and "y" in names and "x" in names:
            return int(shape[names.index("y")]), int(shape[names.index("x")])
        return (int(shape[-2]), int(shape[-1])) if len(shape) >= 2 else None
    except Exception:  # noqa: BLE001 - anything unreadable: not a candidate
        return None


def _omero_names(omero: Any, nc: int, p: Path, warn: bool = True
                 ) -> tuple[list[str] | None, list[str]]:
    """``(names, warnings)``: the channel names of NGFF's ``omero`` block (each channel's
    ``label``; numbers as text), or None, said in a warning (also issued, QdmedWarning)
    where the block is there but gives no usable name per channel (a malformed block was an
    internal error: a review). No block, or channels without labels: None, unsaid."""
    if omero is None:
        return None, []
    ch = omero.get("channels") if isinstance(omero, dict) else None
    labels = ([c.get("label") if isinstance(c, dict) else None for c in ch]
              if isinstance(ch, list) else None)
    if labels is not None and all(x is None for x in labels):
        return None, []
    if labels is not None and len(labels) == nc and all(
            isinstance(x, str | int | float) and not isinstance(x, bool) and str(x).strip()
            for x in labels):
        return [str(x) for x in labels], []
    why = ("is not an object with a 'channels' list" if labels is None else
           f"names {len(labels)} channels but the image has {nc}" if len(labels) != nc else
           "has a channel without a usable 'label'")
    text = (f"{str(p)!r}: the NGFF 'omero' block {why}: channels named "
            f"{', '.join(_default_channel_names(nc)[:3])}{', ...' if nc > 3 else ''}")
    warned: list[str] = []
    _said(text, warned, warn)
    return None, warned


#: Absent or empty chunks named (their regions) in the warning; the rest are counted.
_MISSING_CHUNKS_NAMED = 3
#: A coarser level read whole to judge absent chunks holds at most this many values.
_COARSE_MAX_VALUES = 1 << 26
#: Metadata files of a Zarr array folder (not chunks).
_ZARR_META = frozenset({".zarray", ".zattrs", ".zgroup", ".zmetadata", "zarr.json"})


def _stored_chunk_files(folder: Path) -> tuple[set[str], set[str]]:
    """``(stored, empty)``: the chunk files under an array's folder, as keys relative to
    it ("0/3/5", "c/0/3/5"), and those of zero bytes. One walk of the folder: zarr's own
    count (``nchunks_initialized``, zarr 3.1) looked every key up in a list, 17 s for a
    16384^2 x 8 slide of 256 px chunks (a review), 0.5 s so."""
    stored: set[str] = set()
    empty: set[str] = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = Path(root).relative_to(folder).as_posix()
        for f in files:
            if f in _ZARR_META or f.startswith("."):
                continue
            key = f if rel == "." else f"{rel}/{f}"
            stored.add(key)
            try:
                if os.stat(os.path.join(root, f)).st_size == 0:
                    empty.add(key)
            except OSError:
                empty.add(key)
    return stored, empty


def _coarse_signal(levels: Sequence[Any], chunk_yx: tuple[int, int], fill: Any):
    """A function (y0, y1, x0, x1, c0, c1) -> whether the coarsest level fine enough to
    place a full-resolution chunk (at least two of its pixels per chunk side) holds
    anything but the fill value over that region; None without such a level small enough
    to read whole (:data:`_COARSE_MAX_VALUES`), or when it cannot be read."""
    h0, w0 = (int(v) for v in levels[0].shape[:2])
    best = None
    for lev in levels[1:]:
        # whole factors: a level of floor-halved sizes (250 -> 125 -> 62) is 4x, not 4.03x,
        # whose fractional steps looked one coarse pixel into the neighbouring chunk
        fy = max(1, round(h0 / int(lev.shape[0])))
        fx = max(1, round(w0 / int(lev.shape[1])))
        if 2 * fy <= chunk_yx[0] and 2 * fx <= chunk_yx[1] and int(np.prod(lev.shape)) \
                <= _COARSE_MAX_VALUES:
            best = (lev, fy, fx)
    if best is None:
        return None
    lev, fy, fx = best
    try:
        data = np.asarray(lev.compute(scheduler="threads"))  # here, not on a cluster
    except Exception:  # noqa: BLE001 - a coarse level that does not read: no judgement
        return None
    has = data != fill
    if data.dtype.kind == "f" and isinstance(fill, float) and math.isnan(fill):
        has = ~np.isnan(data)

    def signal(y0, y1, x0, x1, c0, c1) -> bool:
        # the coarse pixels made from this region only (wholly inside it)
        ya, yb = -(-y0 // fy), y1 // fy
        xa, xb = -(-x0 // fx), x1 // fx
        return bool(has[ya:max(ya + 1, yb), xa:max(xa + 1, xb), c0:c1].any())

    return signal


#: Largest chunk grid whose absent chunks are looked up one by one.
_MAX_CHUNKS_CHECKED = 1_000_000


def _missing_chunks_warning(arr: Any, p: Path, ds_path: str, axes: str,
                            channel_names: Sequence[str], levels: Sequence[Any]
                            ) -> str | None:
    """A warning, also issued (QdmedWarning), when chunks of an OME-Zarr's full-resolution
    array look lost; None when none do.

    Zarr reads an absent chunk as the array's fill value, by design: a writer may skip
    chunks holding only that value (zarr-python's default, ``write_empty_chunks=False``:
    the glass around a fluorescence section), but a deleted file or a copy that lost one
    reads the same way, as dark tissue without an error. An absent chunk is taken as lost
    when the coarsest pyramid level that still resolves it holds signal over its area (the
    levels are made from full resolution, so a chunk of fill values gives fill values
    there); skipped otherwise, unsaid. An image of one level cannot tell them apart: its
    absent chunks are warned as either. Chunk files of zero bytes (a copy cut short) are
    warned too: reading them fails. The regions of the first :data:`_MISSING_CHUNKS_NAMED`
    are named (for a sharded array, its shards'). The local folder is listed once
    (:func:`_stored_chunk_files`)."""
    import itertools
    import warnings

    from qdmed.errors import QdmedWarning

    folder = p / ds_path
    if not folder.is_dir():
        return None
    block = tuple(getattr(arr, "shards", None) or arr.chunks)
    grid = [range(-(-s // c)) for s, c in zip(arr.shape, block, strict=True)]
    n_total = int(np.prod([len(g) for g in grid]))
    stored, empty = _stored_chunk_files(folder)
    if len(stored) >= n_total and not empty:  # the common case: nothing to look up
        return None
    what = "shards" if getattr(arr, "shards", None) else "chunks"
    if n_total > _MAX_CHUNKS_CHECKED:  # not walked one by one (a review: 10^12 chunk keys)
        text = (f"{str(p)!r}: {n_total - len(stored)} of {n_total} {what} of the "
                f"full-resolution array '{ds_path}' are not stored (too many to check one by "
                f"one against the coarser levels): Zarr reads them as "
                f"{np.asarray(arr.fill_value).item()!r}; is the array's shape "
                f"{list(arr.shape)} right?")
        warnings.warn(text, QdmedWarning, stacklevel=4)
        return text
    fill = np.asarray(arr.fill_value).item()
    yi, xi = axes.index("Y"), axes.index("X")
    ci = axes.find("C")
    signal = None
    lost, bad = [], []
    for coords in itertools.product(*grid):
        key = arr.metadata.encode_chunk_key(coords)
        if key in stored:
            if key in empty:
                bad.append(coords)
            continue
        if signal is None:
            signal = _coarse_signal(levels, (block[yi], block[xi]), fill) or False
        lo = [k * c for k, c in zip(coords, block, strict=True)]
        hi = [min((k + 1) * c, s) for k, c, s in zip(coords, block, arr.shape, strict=True)]
        c0, c1 = (lo[ci], hi[ci]) if ci >= 0 else (0, 1)
        if signal is False or signal(lo[yi], hi[yi], lo[xi], hi[xi], c0, c1):
            lost.append(coords)
    if not lost and not bad:
        return None

    def region(coords) -> str:
        return ", ".join(
            f"{a.lower()} {k * c}-{min((k + 1) * c, s)}" if a in "YX" else
            "channel " + "/".join(channel_names[k * c:(k + 1) * c]) if a == "C"
            else f"{a.lower()} {k * c}" + (f"-{min((k + 1) * c, s) - 1}" if c > 1 else "")
            for a, k, c, s in zip(axes, coords, block, arr.shape, strict=True)
            if a in "YXC" or s > 1)

    def named(items) -> str:
        shown = "; ".join(region(c) for c in items[:_MISSING_CHUNKS_NAMED])
        return shown + ("; ..." if len(items) > _MISSING_CHUNKS_NAMED else "")

    parts = []
    if lost:
        parts.append(
            f"{len(lost)} of {n_total} {what} of the full-resolution array '{ds_path}' are "
            f"not stored ({named(lost)}) " + (
                "where the coarser levels show signal: lost (a deleted file, a copy that "
                "missed them)" if signal is not False else
                "(with no coarser level to tell a chunk skipped as empty by its writer from "
                "one lost)") + f"; Zarr reads them as {fill!r}, dark tissue with no cells")
    if bad:
        parts.append(f"{len(bad)} {what} are empty files ({named(bad)}), as a copy cut short "
                     "leaves them: reading them fails")
    text = f"{str(p)!r}: " + "; and ".join(parts) + ": copy the image again"
    warnings.warn(text, QdmedWarning, stacklevel=4)
    return text


def _ngff_scale(transforms: Any, n: int, p: Path, where: str) -> list[float] | None:
    """The ``scale`` of an NGFF ``coordinateTransformations`` list (one number per axis),
    or None when it has none."""
    for t in transforms if isinstance(transforms, list) else []:
        if not (isinstance(t, dict) and t.get("type") == "scale"):
            continue
        try:
            vals = [float(v) for v in t["scale"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise FileFormatError(f"{str(p)!r}: NGFF scale {t.get('scale')!r} ({where}) is "
                                  "not a list of numbers") from exc
        if len(vals) != n:
            raise FileFormatError(f"{str(p)!r}: NGFF scale {t['scale']!r} ({where}) does not "
                                  f"give one number per axis ({n})")
        return vals
    return None


def _ngff_pixel_size(ds: dict, m: dict, axes: list, p: Path) -> float | None:
    """um per pixel along x: the dataset's scale transform times the multiscales' own
    (NGFF 0.4: transforms there apply to every level after the dataset's; a review read
    a 0.25 um slide as 1 um where the writer kept its scale there), in the x axis's unit;
    None when either the dataset's scale or the unit is absent. Pixels whose y size
    differs are refused (:func:`_check_square`)."""
    own = _ngff_scale(ds.get("coordinateTransformations"), len(axes), p,
                      f"dataset {ds.get('path')!r}")
    if own is None:
        return None
    top = _ngff_scale(m.get("coordinateTransformations"), len(axes), p, "multiscales") or \
        [1.0] * len(axes)
    units = {a.get("name"): a.get("unit") for a in m.get("axes", []) if isinstance(a, dict)}
    unit = units.get("x")
    if unit is None:
        return None
    if unit not in _UNIT_TO_UM:
        raise FileFormatError(f"{str(p)!r}: NGFF x axis unit {unit!r} is not a length "
                              f"unit qdmed knows ({', '.join(sorted(_UNIT_TO_UM))})")
    xi = axes.index("x")
    ps = own[xi] * top[xi] * _UNIT_TO_UM[unit]
    if "y" in axes and units.get("y") in _UNIT_TO_UM:
        yi = axes.index("y")
        _check_square(ps, own[yi] * top[yi] * _UNIT_TO_UM[units["y"]], p, "NGFF x scale",
                      "y scale")
    return ps


#: Bytes of a Blosc (1.x) chunk's header; its bytes 12-15 hold the chunk's whole size
#: (``cbytes``, uint32 little-endian; c-blosc's README_CHUNK_FORMAT).
_BLOSC_HEADER = 16


def _blosc_chunk_check(arr: Any):
    """For a Zarr array on a local disk whose chunks are Blosc frames (Zarr v2 compressor
    ``blosc`` without filters, or Zarr v3 codecs ending in Blosc, unsharded): a function
    ``check(idx)`` refusing (FileFormatError, naming the chunk) any chunk under the
    selection ``idx`` (a tuple of slices and integers, one per axis) shorter than its Blosc header says; None otherwise.

    Why our own check: the Blosc decoder reads past a truncated chunk's end (numcodecs
    issue #228, open), and a review's chunk cut to 1000 bytes crashed the process
    (segmentation fault, no message) in 2 of 21 reads; the other reads raised an error.
    Reading 16 bytes of each chunk before the decoder does costs little beside decoding
    it. Chunks absent or empty are left to Zarr (the fill value, warned when the slide is
    opened; an empty chunk fails cleanly)."""
    import itertools

    try:
        root, apath = Path(arr.store_path.store.root), arr.store_path.path
        md = arr.metadata
        chunks = tuple(int(c) for c in arr.chunks)
    except (AttributeError, TypeError):  # not a local store, or an irregular grid
        return None
    if md.zarr_format == 2:
        if getattr(getattr(md, "compressor", None), "codec_id", None) != "blosc" \
                or md.filters:
            return None
    else:
        names = [type(c).__name__ for c in getattr(md, "codecs", ())]
        if not names or names[-1] != "BloscCodec" or "ShardingCodec" in names:
            return None

    shape = tuple(int(n) for n in arr.shape)

    def check(idx: tuple) -> None:
        idx = tuple(slice(*s.indices(n)[:2]) if isinstance(s, slice) else int(s)
                    for s, n in zip(idx, shape, strict=True))  # bounds made explicit
        ranges = [range(s.start // c, (s.stop - 1) // c + 1) if isinstance(s, slice)
                  else (s // c,) for s, c in zip(idx, chunks, strict=True)]
        for coords in itertools.product(*ranges):
            key = md.encode_chunk_key(coords)
            f = root / apath / key
            try:
                with open(f, "rb") as fh:
                    head = fh.read(_BLOSC_HEADER)
                    n = os.fstat(fh.fileno()).st_size
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                continue  # absent: Zarr's fill value, as before
            except OSError as exc:
                raise FileFormatError(f"{root}: cannot read chunk {apath}/{key}: "
                                      f"{exc.strerror or exc}") from None
            if n == 0:
                continue
            said = None if n < _BLOSC_HEADER else struct.unpack_from("<I", head, 12)[0]
            # shorter than said only: bytes beyond the frame are not read (they decoded)
            if said is None or n < said:
                raise FileFormatError(
                    f"{root}: chunk {apath}/{key} is {n} bytes, "
                    + ("less than a Blosc header" if said is None else
                       f"its Blosc header says {said}")
                    + " (truncated or corrupted): restore it from a copy, or re-export "
                    "the slide")

    return check


class _BloscChecked:
    """A Zarr array whose every read checks its Blosc chunks first
    (:func:`_blosc_chunk_check`), for dask (``da.from_array``): pyramid levels read for
    overviews and thumbnails go through it as the full-resolution regions do. Pickled as
    the Zarr array (distributed workers rebuild the check)."""

    def __init__(self, arr: Any, check=None):
        self.arr = arr
        self.check = check if check is not None else _blosc_chunk_check(arr)
        self.shape, self.dtype, self.ndim = arr.shape, arr.dtype, arr.ndim

    def __reduce__(self):
        return (_BloscChecked, (self.arr,))

    def __getitem__(self, idx):
        idx = idx if isinstance(idx, tuple) else (idx,)
        idx = idx + (slice(None),) * (self.ndim - len(idx))
        if self.check is not None:
            self.check(idx)
        return self.arr[idx]


def _dask_from_zarr(arr: Any):
    """``dask.array.from_zarr(arr)``, through :class:`_BloscChecked` where its chunks are
    Blosc frames on a local disk."""
    import dask.array as da

    check = _blosc_chunk_check(arr)
    if check is None:
        return da.from_zarr(arr)
    return da.from_array(_BloscChecked(arr, check), chunks=arr.chunks, asarray=True,
                         fancy=False)


def _zarr_region_reader(arr: Any, axes: str, perm: tuple[int, ...], squeeze: set):
    """A function (y0, y1, x0, x1) -> (Y, X, C) numpy array reading ``arr`` (stored axes
    ``axes``) directly, with the same squeeze and permutation as the dask view; Blosc
    chunks are checked first (:func:`_blosc_chunk_check`)."""
    check = _blosc_chunk_check(arr)

    def read(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        idx = tuple(slice(y0, y1) if a == "Y" else slice(x0, x1) if a == "X" else
                    0 if j in squeeze else slice(None) for j, a in enumerate(axes))
        if check is not None:
            check(idx)
        try:
            a = np.asarray(arr[idx])
        except (RuntimeError, ValueError, OSError, ImportError) as e:
            # a chunk that does not decode (blosc/zstd errors are RuntimeErrors)
            raise FileFormatError(f"{arr.store}: cannot decode the region y {y0}-{y1}, x "
                                  f"{x0}-{x1} (corrupted chunk?): {type(e).__name__}: "
                                  f"{e}") from e
        return np.transpose(a, perm) if a.ndim == 3 else a[:, :, None]

    return read


# --------------------------------------------------------------------------- truth
def write_truth(directory: str | os.PathLike, field: Any, *, abundances: bool = False) -> Path:
    """Write the ground truth of a synthetic field beside its image.

    Files written into ``directory`` (created if needed), each atomically:
    ``truth.parquet`` (the per-cell table), ``cells.tif`` and ``nuclei.tif`` (int32 labels,
    zlib), ``truth.json`` (``field.to_dict()``: parameters, seed, provenance) and, with
    ``abundances=True``, ``abundances.tif`` ((K+1, Y, X) float32, markers then
    autofluorescence).

    Parameters
    ----------
    directory : str or path-like
    field : SyntheticField
        From :func:`qdmed.imaging.simulate_field`.
    abundances : bool
        Also write the abundance maps.

    Returns
    -------
    pathlib.Path
        The directory.

    Raises
    ------
    InputError
        ``field`` lacks the truth attributes, or ``directory`` is a file.
    """
    import tifffile

    d = Path(directory)
    for attr in ("truth", "cells", "nuclei", "to_dict"):
        if not hasattr(field, attr):
            raise InputError(f"field must be a SyntheticField (missing attribute {attr!r}), "
                             f"got {type(field).__name__}")
    if d.exists() and not d.is_dir():
        raise InputError(f"truth directory {str(d)!r} exists and is not a folder")
    d.mkdir(parents=True, exist_ok=True)

    def atomic(name: str, writer: Any) -> None:
        dest = d / name
        tmp = _fresh_tmp_sibling(dest)
        try:
            writer(tmp)
            os.replace(tmp, dest)
        finally:
            if tmp.exists():
                tmp.unlink()

    atomic("truth.parquet", lambda t: field.truth.to_parquet(t, index=False))
    atomic("cells.tif", lambda t: tifffile.imwrite(t, np.asarray(field.cells, np.int32),
                                                   compression="zlib"))
    atomic("nuclei.tif", lambda t: tifffile.imwrite(t, np.asarray(field.nuclei, np.int32),
                                                    compression="zlib"))
    if abundances:
        atomic("abundances.tif", lambda t: tifffile.imwrite(
            t, np.moveaxis(np.asarray(field.abundances, np.float32), 2, 0),
            compression="zlib", photometric="minisblack", metadata={"axes": "CYX"}))
    atomic("truth.json", lambda t: t.write_text(json.dumps(field.to_dict(), sort_keys=True,
                                                           indent=1)))
    return d


def read_truth(directory: str | os.PathLike) -> dict[str, Any]:
    """Read what :func:`write_truth` wrote.

    Returns
    -------
    dict
        ``truth`` (DataFrame), ``cells`` and ``nuclei`` (int32 arrays), ``summary`` (dict),
        and ``abundances`` ((Y, X, K+1) float32) when present.

    Raises
    ------
    FileFormatError
        A file is missing or unreadable (the message names it).
    """
    import pandas as pd
    import tifffile

    d = Path(directory)
    out: dict[str, Any] = {}
    try:
        out["truth"] = pd.read_parquet(d / "truth.parquet")
        out["cells"] = tifffile.imread(d / "cells.tif")
        out["nuclei"] = tifffile.imread(d / "nuclei.tif")
        out["summary"] = json.loads((d / "truth.json").read_text())
        if (d / "abundances.tif").exists():
            out["abundances"] = np.moveaxis(tifffile.imread(d / "abundances.tif"), 0, 2)
    except (OSError, ValueError, tifffile.TiffFileError) as e:
        raise FileFormatError(f"truth folder {str(d)!r}: {type(e).__name__}: {e}") from e
    return out


def file_ident(path: Path) -> list:
    """A slide file's identity for resuming runs: its size and mtime; for an OME-Zarr folder
    every file's size and the newest mtime."""
    if path.is_file():
        st = path.stat()
        return [st.st_size, st.st_mtime]
    sizes, newest = 0, 0.0
    for f in path.rglob("*"):
        if f.is_file():
            st = f.stat()
            sizes += st.st_size
            newest = max(newest, st.st_mtime)
    return [sizes, newest]
