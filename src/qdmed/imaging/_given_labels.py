"""Label images segmented elsewhere (cellpose, StarDist, Mesmer, QuPath, inForm...) used as a
slide's nuclei, and optionally its whole cells, in place of qdmed's segmentation.

A label image is any slide file qdmed reads (TIFF, OME-TIFF, OME-Zarr, an NGFF
``labels/<name>`` folder) pixel-aligned with the slide, 0 = background and one id per
object; a file with several channels (Mesmer writes its whole-cell and nuclear masks
together) names the one to read. Each tile reads its window of it, as of the slide.

It is at the slide's full resolution, or at a downsample of it (QuPath's labelled-image
export scripts set ``downsample(4)``, or ``requestedPixelSize / pixelSize`` such as 3.57;
cellpose is often run on a reduced image). A slide pixel then takes the label of the label
pixel holding its centre: slide pixel ``i`` reads label pixel ``floor((i + 0.5) / d)``, the
pixel-centre rule of QuPath's export (its label pixel ``j`` is drawn over slide coordinates
``[j d, (j + 1) d)``) and of scikit-image's ``rescale``. For a whole-number ``d`` each label
pixel covers its ``d x d`` block from the slide's top-left corner. Outlines become blocky and
areas whole numbers of blocks. The factor is given, never guessed; a mismatched size
suggests it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qdmed.errors import InputError
from qdmed.imaging._external_seg import EXTERNAL_METHODS

#: settings.segmentation values: qdmed's own watershed, the optional packages, or labels
SEGMENTATIONS = ("watershed", *EXTERNAL_METHODS, "labels")


@dataclass(frozen=True)
class LabelImage:
    """One channel of a label image file (picklable: it travels to Dask workers)."""

    path: str
    channel: int
    downsample: float = 1  # slide pixels per label pixel, along each axis (>= 1)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """The labels of the slide window ``[y0:y1, x0:x1]`` as a (Y, X) array (slide
        pixels; beyond a downsampled file's last pixel, background)."""
        from qdmed.imaging._slideio import read_slide

        src = read_slide(self.path, check_chunks=False)
        if self.downsample == 1:
            return src.read_region(y0, y1, x0, x1)[..., self.channel]
        h, w = src.shape[:2]
        iy, ix = label_index(y0, y1, self.downsample), label_index(x0, x1, self.downsample)
        iy, ix = iy[iy < h], ix[ix < w]  # beyond the file's last pixel: background
        out = np.zeros((y1 - y0, x1 - x0), dtype=src.dtype)
        if iy.size and ix.size:
            block = src.read_region(int(iy[0]), int(iy[-1]) + 1, int(ix[0]),
                                    int(ix[-1]) + 1)[..., self.channel]
            out[: iy.size, : ix.size] = block[np.ix_(iy - iy[0], ix - ix[0])]
        return out

    def to_dict(self) -> dict:
        return {"file": self.path, "channel": self.channel, "downsample": self.downsample}


@dataclass(frozen=True)
class GivenLabels:
    """A slide's nuclei, and optionally whole cells, segmented elsewhere."""

    nuclei: LabelImage
    cells: LabelImage | None = None

    def read(self, y0: int, y1: int, x0: int, x1: int):
        """(nuclei, cells or None) of the window ``[y0:y1, x0:x1]``."""
        return (self.nuclei.read(y0, y1, x0, x1),
                None if self.cells is None else self.cells.read(y0, y1, x0, x1))

    def names(self) -> tuple[str, str | None]:
        """How the nuclei and the cell labels are named in errors: with their files."""
        return (f"nuclei labels {Path(self.nuclei.path).name}",
                None if self.cells is None else f"cell labels {Path(self.cells.path).name}")

    def ident(self) -> list:
        """What identifies the labels read (for a run's fingerprint): files, their sizes
        and times, and channels."""
        from qdmed.imaging._slideio import file_ident

        return [[li.path, li.channel, li.downsample, file_ident(Path(li.path))]
                for li in (self.nuclei, self.cells) if li is not None]

    def to_dict(self) -> dict:
        return {"nuclei": self.nuclei.to_dict(),
                "cells": None if self.cells is None else self.cells.to_dict()}


def label_index(c0: int, c1: int, downsample: float) -> np.ndarray:
    """The label pixel holding the centre of each slide pixel ``c0..c1-1`` along one axis:
    ``floor((c + 0.5) / downsample)`` (for a whole-number factor, exactly ``c // d``: the
    quotient is at least ``0.5 / d`` from the next integer, far above rounding)."""
    return np.floor((np.arange(c0, c1) + 0.5) / downsample).astype(np.int64)


def check_downsample(downsample) -> float:
    """The label images' downsample factor: a finite number >= 1 (an int when whole, so that
    whole factors read and print as before)."""
    if isinstance(downsample, bool) or not isinstance(downsample, int | float | np.integer
                                                      | np.floating):
        raise InputError("labels_downsample must be a number >= 1 (slide pixels per label "
                         f"pixel); got {downsample!r}")
    f = float(downsample)
    if not (np.isfinite(f) and 1 <= f <= 1e4):
        raise InputError("labels_downsample must be a number from 1 to 10000 (slide pixels "
                         f"per label pixel); got {downsample!r}")
    return int(f) if f.is_integer() else f


def _fits(n_label: int, n_slide: int, f: float) -> bool:
    """A downsample by `f` of `n_slide` pixels has floor, rounded (QuPath's export, scikit-
    image's rescale) or ceil(n_slide / f) pixels."""
    return math.floor(n_slide / f) <= n_label <= math.ceil(n_slide / f)


def _likely_downsample(lab_shape, shape_yx, lab_ps, slide_ps) -> float | None:
    """The downsample a label image's size points to: the ratio of the recorded pixel sizes
    when it fits the size, else the number with the fewest decimals (a whole number first)
    that fits it: the factors fitting ``n`` label pixels for ``m`` slide pixels lie strictly
    between ``m / (n + 1)`` and ``m / (n - 1)`` on each axis."""
    pairs = list(zip(lab_shape, shape_yx, strict=True))

    def fit(f):
        return f >= 1 and all(_fits(n, m, f) for n, m in pairs)

    if lab_ps and slide_ps and fit(r := float(f"{lab_ps / slide_ps:.10g}")):
        return int(r) if r.is_integer() else r
    if any(n < 1 for n, _ in pairs):
        return None
    lo = max(m / (n + 1) for n, m in pairs)
    hi = min(m / (n - 1) if n > 1 else math.inf for n, m in pairs)
    for decimals in range(7):
        f = round((math.floor(lo * 10 ** decimals) + 1) / 10 ** decimals, decimals)
        if f < hi and fit(f):
            return int(f) if decimals == 0 else f
    return None


def open_label_image(path, channel, shape_yx, what: str, option: str, downsample: float = 1,
                     slide_pixel_size_um: float | None = None) -> LabelImage:
    """The channel of the label image at `path` to read, checked against the slide's (Y, X)
    shape at `downsample` (a mismatch names the factor the size points to, preferring the
    one the recorded pixel sizes give); `what` names it in errors ("nuclei labels") and
    `option` its channel option. A recorded pixel size never overrides the given factor:
    exports often copy the slide's metadata."""
    from qdmed.imaging._panel import channel_index
    from qdmed.imaging._slideio import read_slide

    name = Path(path).name
    if not Path(path).exists():
        raise InputError(f"{what} file {str(path)!r} does not exist")
    lab = read_slide(path, check_chunks=False)
    f = downsample
    if not all(_fits(n, m, f) for n, m in zip(lab.shape[:2], shape_yx, strict=True)):
        at = "full resolution" if f == 1 else f"a downsample of {f}"
        hint = _likely_downsample(lab.shape[:2], shape_yx, lab.pixel_size_um,
                                  slide_pixel_size_um)
        raise InputError(
            f"{what} {name} are {lab.shape[0]} x {lab.shape[1]} px (Y x X) but the slide is "
            f"{shape_yx[0]} x {shape_yx[1]}: the labels must be pixel-aligned with the slide "
            f"at {at}" + ("" if hint is None or hint == f else
                          f"; their size points to a downsample of {hint}: give "
                          f"labels_downsample={hint} (--labels-downsample {hint})" +
                          ("" if isinstance(hint, int) else
                           ", or the exact factor they were made at")))
    if lab.dtype.kind not in "iuf":
        raise InputError(f"{what} {name} are of type {lab.dtype}; a label image holds integer "
                         "ids (0 = background)")
    if channel is None:
        if lab.shape[2] != 1:
            raise InputError(f"{what} {name} have {lab.shape[2]} channels "
                             f"({', '.join(map(repr, lab.channel_names))}): say which to read "
                             f"({option})")
        return LabelImage(str(Path(path).resolve()), 0, f)  # absolute: read by workers
    return LabelImage(str(Path(path).resolve()), channel_index(channel, lab.channel_names,
                                                               f"{what} {name}"), f)


def check_segmentation(segmentation) -> None:
    """Refuse a settings.segmentation (--segmentation) that is none of SEGMENTATIONS."""
    if segmentation not in SEGMENTATIONS:
        raise InputError(f"unknown segmentation {segmentation!r}; accepted: "
                         f"{', '.join(SEGMENTATIONS[:-1])} (and 'labels', which giving "
                         "nuclei label images sets: --nuclei-labels, nuclei_labels)")


def open_given_labels(nuclei_labels, labels_channel, cell_labels, cell_labels_channel,
                      shape_yx, segmentation: str, downsample=1,
                      slide_pixel_size_um: float | None = None) -> GivenLabels | None:
    """A slide's label images, checked (None when none is given), and the settings'
    segmentation method against them; both label images are at `downsample` (slide pixels
    per label pixel)."""
    downsample = check_downsample(downsample)
    check_segmentation(segmentation)
    if nuclei_labels is None:
        for value, name in ((labels_channel, "labels_channel (--labels-channel)"),
                            (cell_labels, "cell_labels (--cell-labels)"),
                            (cell_labels_channel, "cell_labels_channel (--cell-labels-channel)")):
            if value is not None:
                raise InputError(f"{name} needs nuclei_labels (--nuclei-labels): the nucleus "
                                 "compartment and each cell's owner tile come from the nuclei")
        if segmentation == "labels":
            raise InputError("segmentation 'labels' needs the nuclei label image "
                             "(nuclei_labels, --nuclei-labels)")
        if downsample != 1:
            raise InputError("labels_downsample (--labels-downsample) needs nuclei_labels "
                             "(--nuclei-labels)")
        return None
    if segmentation not in ("watershed", "labels"):
        raise InputError(f"nuclei_labels replace the nuclear segmentation; drop "
                         f"segmentation={segmentation!r} or the labels")
    if cell_labels is None and cell_labels_channel is not None:
        raise InputError("cell_labels_channel (--cell-labels-channel) needs cell_labels "
                         "(--cell-labels)")
    nuclei = open_label_image(nuclei_labels, labels_channel, shape_yx, "nuclei labels",
                              "labels_channel, --labels-channel", downsample,
                              slide_pixel_size_um)
    cells = None if cell_labels is None else open_label_image(
        cell_labels, cell_labels_channel, shape_yx, "cell labels",
        "cell_labels_channel, --cell-labels-channel", downsample, slide_pixel_size_um)
    if cells is not None and cells == nuclei:
        raise InputError(f"the cell labels and the nuclei labels are the same image "
                         f"({Path(cells.path).name}, channel {cells.channel}); give each its "
                         "own channel (--labels-channel, --cell-labels-channel)")
    return GivenLabels(nuclei, cells)
