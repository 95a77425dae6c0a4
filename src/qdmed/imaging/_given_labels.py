"""Label images segmented elsewhere (cellpose, StarDist, Mesmer, QuPath, inForm...) used as a
slide's nuclei, and optionally its whole cells, in place of qdmed's segmentation.

A label image is any slide file qdmed reads (TIFF, OME-TIFF, OME-Zarr, an NGFF
``labels/<name>`` folder) pixel-aligned with the slide at full resolution, 0 = background and
one id per object; a file with several channels (Mesmer writes its whole-cell and nuclear
masks together) names the one to read. Each tile reads its window of it, as of the slide.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qdmed.errors import InputError

#: settings.segmentation values: qdmed's own watershed, the optional packages, or labels
SEGMENTATIONS = ("watershed", "cellpose", "stardist", "labels")


@dataclass(frozen=True)
class LabelImage:
    """One channel of a label image file (picklable: it travels to Dask workers)."""

    path: str
    channel: int

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """The labels of the window ``[y0:y1, x0:x1]`` as a (Y, X) array."""
        from qdmed.imaging._slideio import read_slide

        return read_slide(self.path).read_region(y0, y1, x0, x1)[..., self.channel]

    def to_dict(self) -> dict:
        return {"file": self.path, "channel": self.channel}


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

        return [[li.path, li.channel, file_ident(Path(li.path))]
                for li in (self.nuclei, self.cells) if li is not None]

    def to_dict(self) -> dict:
        return {"nuclei": self.nuclei.to_dict(),
                "cells": None if self.cells is None else self.cells.to_dict()}


def open_label_image(path, channel, shape_yx, what: str, option: str) -> LabelImage:
    """The channel of the label image at `path` to read, checked against the slide's (Y, X)
    shape; `what` names it in errors ("nuclei labels") and `option` its channel option."""
    from qdmed.imaging._panel import channel_index
    from qdmed.imaging._slideio import read_slide

    name = Path(path).name
    if not Path(path).exists():
        raise InputError(f"{what} file {str(path)!r} does not exist")
    lab = read_slide(path)
    if tuple(lab.shape[:2]) != tuple(shape_yx):
        raise InputError(f"{what} {name} are {lab.shape[0]} x {lab.shape[1]} px (Y x X) but the "
                         f"slide is {shape_yx[0]} x {shape_yx[1]}: the labels must be "
                         "pixel-aligned with the slide at full resolution")
    if lab.dtype.kind not in "iuf":
        raise InputError(f"{what} {name} are of type {lab.dtype}; a label image holds integer "
                         "ids (0 = background)")
    if channel is None:
        if lab.shape[2] != 1:
            raise InputError(f"{what} {name} have {lab.shape[2]} channels "
                             f"({', '.join(map(repr, lab.channel_names))}): say which to read "
                             f"({option})")
        return LabelImage(str(Path(path)), 0)
    return LabelImage(str(Path(path)), channel_index(channel, lab.channel_names,
                                                     f"{what} {name}"))


def open_given_labels(nuclei_labels, labels_channel, cell_labels, cell_labels_channel,
                      shape_yx, segmentation: str) -> GivenLabels | None:
    """A slide's label images, checked (None when none is given), and the settings'
    segmentation method against them."""
    if segmentation not in SEGMENTATIONS:
        raise InputError(f"unknown segmentation {segmentation!r}; accepted: "
                         f"{', '.join(SEGMENTATIONS)}")
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
        return None
    if segmentation not in ("watershed", "labels"):
        raise InputError(f"nuclei_labels replace the nuclear segmentation; drop "
                         f"segmentation={segmentation!r} or the labels")
    if cell_labels is None and cell_labels_channel is not None:
        raise InputError("cell_labels_channel (--cell-labels-channel) needs cell_labels "
                         "(--cell-labels)")
    nuclei = open_label_image(nuclei_labels, labels_channel, shape_yx, "nuclei labels",
                              "labels_channel, --labels-channel")
    cells = None if cell_labels is None else open_label_image(
        cell_labels, cell_labels_channel, shape_yx, "cell labels",
        "cell_labels_channel, --cell-labels-channel")
    if cells is not None and cells == nuclei:
        raise InputError(f"the cell labels and the nuclei labels are the same image "
                         f"({Path(cells.path).name}, channel {cells.channel}); give each its "
                         "own channel (--labels-channel, --cell-labels-channel)")
    return GivenLabels(nuclei, cells)
