"""End-to-end analysis: unmix -> segment -> cells -> measurements, for one field in memory or
a whole slide tile by tile on a Dask cluster (local by default), resumable and atomic.

Tiling and stitching
--------------------
The slide is cut into core tiles; each job reads its tile plus a margin (``margin_um``,
larger than a cell's diameter), segments the padded region and keeps only the cells whose
*nucleus centroid* lies in its core. Every cell therefore belongs to exactly one tile and is
measured whole, from pixels on both sides of the border. Thresholds that would otherwise vary
from tile to tile (the nuclear threshold, membrane-completeness thresholds) are estimated
once, on a reference region, and passed to every tile, so the result does not depend on the
tile size. Cell ids are ``tile_index * 1_000_000 + local id``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from qdmed.errors import InputError, UnknownNameError
from qdmed.imaging._cells import LABEL_NAMES
from qdmed.imaging._external_seg import (
    EXTERNAL_METHODS,
    MODEL_PIXEL_SIZE_UM,
    check_segmentation_model,
    model_ident,
    nuclear_range,
    package_version,
)
from qdmed.imaging._geojson import cell_features, metadata_from, write_feature_collection
from qdmed.imaging._given_labels import open_given_labels
from qdmed.imaging._panel import Panel
from qdmed.imaging._region_scores import (
    assign_regions,
    cell_results,
    check_count,
    check_min_cells,
    her2_categories,
    load_tma_map,
    overlap_warnings,
    score_cells,
    score_slide_regions,
    subtype_of,
)
from qdmed.imaging._scheduler import is_local_client
from qdmed.imaging._slideio import DEFAULT_PIXEL_SIZE_UM, file_ident
from qdmed.imaging._unmixed_out import (
    STAGE_NAME,
    mark_path,
    open_stage,
    stage_tile,
    unmixed_block,
    write_staged_unmixed,
)

CELL_ID_STRIDE = 1_000_000
#: Tile margin of :func:`analyze_slide` (um) when none is given and the settings need no
#: more: twice the largest cell radius of the default settings (19.3 um) and a little.
DEFAULT_MARGIN_UM = 40.0
#: Version of the per-tile files (parquet columns, GeoJSON features) in the run fingerprint:
#: bump it when they change, or when what they hold does (the segmentation, the measures),
#: so a resumed run never mixes tiles written by another version.
TILE_FORMAT = 7  # 4: fit samples in the quality-control file; 5: nucleus area in GeoJSON;
# 6: cells end at a stained membrane facing stroma, the completeness threshold's noise fit;
# 7: membranes shared with a brighter neighbour left to it (the ceded_fraction column)


@dataclass(frozen=True)
class AnalysisSettings:
    """Parameters of the per-cell analysis (all recorded in the outputs).

    ``pixel_size_um`` None (the default): the slide's own (:func:`analyze_slide`), else
    :data:`DEFAULT_PIXEL_SIZE_UM` (an array given to :func:`analyze_field`)."""

    pixel_size_um: float | None = None
    nuclear_marker: str = "DAPI"
    expansion_um: float = 5.0
    membrane_markers: tuple = ("HER2", "EGFR", "CA125", "claudin-4")
    max_expansion_um: float = 8.0
    membrane_width_um: float = 1.0
    #: 'brighter' (a junction with a cell whose membrane is >= 1.5x brighter is left to it
    #: in completeness and stained mean) or 'both' (counted for both cells); see
    #: qdmed.imaging._cells, "Shared membranes"
    shared_membranes: str = "brighter"
    min_nucleus_area_um2: float = 10.0
    max_nucleus_area_um2: float = 400.0
    nuclear_threshold: float | None = None
    completeness_threshold: dict | None = None
    membrane_scales: dict | None = None
    unmix_method: str = "auto"
    #: None (ordinary NNLS) or "poisson" (Poisson maximum likelihood, read noise included;
    #: see qdmed.imaging._poisson)
    unmix_weights: str | None = None
    #: detector read noise, counts RMS, of "poisson" unmixing; None: 1 count
    read_noise_adu: float | None = None
    #: detector ceiling, counts; None: the image type's maximum (or the OME SignificantBits
    #: ceiling of a slide file); float images are then not checked (see _detector)
    saturation_level: float | None = None
    #: detector offset (bias), counts: one number or one per channel, subtracted before
    #: unmixing; None: the image is dark-corrected (see _detector)
    offset_adu: float | tuple | None = None
    #: how nuclei are found: 'watershed' (scikit-image pipeline), 'cellpose' or 'stardist'
    #: (optional packages), or 'labels' (a label image segmented elsewhere, given to
    #: analyze_field as ``nuclei`` or to analyze_slide as ``nuclei_labels``)
    segmentation: str = "watershed"
    #: cellpose or StarDist weights on disk (a cellpose model file, a StarDist model
    #: folder) instead of the pretrained nuclear model; None: the pretrained one
    segmentation_model: str | None = None
    #: pixel size (um) cellpose or StarDist see the image at (see _external_seg)
    segmentation_pixel_size_um: float = MODEL_PIXEL_SIZE_UM
    #: nuclear intensities (low, high) cellpose or StarDist get as 0 and 1; None: each
    #: image's own percentiles (a slide fixes them on its reference region)
    segmentation_range: tuple | None = None

    def coarse_membrane(self) -> tuple[AnalysisSettings, list[str]]:
        """These settings (their pixel size known) with the default membrane width widened
        to one pixel where a pixel is wider (a 10x scan at 1.3 um/px had been refused: the
        1 um ring is narrower than a pixel), and the warning that says so; a width set by
        hand is left to :func:`~qdmed.imaging._cells.compartments` to check."""
        ps = self.pixel_size_um
        default = type(self).__dataclass_fields__["membrane_width_um"].default
        if ps is None or ps <= self.membrane_width_um or self.membrane_width_um != default:
            return self, []
        return replace(self, membrane_width_um=float(ps)), [
            f"at {ps:g} um/px the membrane ring is one pixel, {ps:g} um wide (the default "
            f"{default:g} um is narrower than a pixel): membrane means and completeness are "
            "coarse, and HER2 cut-offs calibrated at a finer pixel size do not carry over; "
            "image at 0.5 um/px or finer for membrane scoring"]

    def with_pixel_size(self, recorded: float | None = None) -> AnalysisSettings:
        """These settings with ``pixel_size_um`` given: as set, else ``recorded`` (a
        slide's own), else :data:`DEFAULT_PIXEL_SIZE_UM`."""
        if self.pixel_size_um is not None:
            return self
        return replace(self, pixel_size_um=float(recorded or DEFAULT_PIXEL_SIZE_UM))

    def __post_init__(self):
        mm = self.membrane_markers
        if isinstance(mm, str) or not isinstance(mm, tuple | list) or \
                not all(isinstance(m, str) for m in mm):
            raise InputError(f"membrane_markers must be a tuple of marker names, e.g. "
                             f"('HER2',); got {mm!r}")
        object.__setattr__(self, "membrane_markers", tuple(mm))  # a list from a file
        if self.shared_membranes not in ("brighter", "both"):
            raise UnknownNameError(f"Unknown shared_membranes {self.shared_membranes!r}; "
                                   "accepted: ('brighter', 'both').")
        if self.unmix_weights not in (None, "poisson"):
            raise InputError(f"unmix_weights must be None (plain NNLS) or 'poisson'; got "
                             f"{self.unmix_weights!r}")
        self.read_noise_used()  # checked when made
        thr = self.nuclear_threshold  # a positive abundance; inf: Otsu found no foreground
        if thr is not None and not (not isinstance(thr, bool | str) and thr == np.inf):
            from qdmed.errors import check_number

            check_number(thr, "nuclear_threshold (--nuclear-threshold)", lo=0.0, lo_open=True,
                         unit="nuclear abundance units")

    def read_noise_used(self) -> float | None:
        """The read noise Poisson unmixing uses (the default when none is set), else None."""
        from qdmed.imaging._poisson import read_noise_for

        return read_noise_for(self.unmix_weights == "poisson", self.read_noise_adu,
                              "read_noise_adu", "unmix_weights='poisson'")

    def unmix_options(self) -> dict:
        """The keyword arguments of :func:`~qdmed.imaging.unmix_nnls` these settings fix."""
        return {"method": self.unmix_method, "weights": self.unmix_weights,
                "read_noise": self.read_noise_used()}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["read_noise_adu"] = self.read_noise_used()  # the one used is recorded, the default too
        d["membrane_markers"] = list(self.membrane_markers)
        if isinstance(self.offset_adu, tuple | list):
            d["offset_adu"] = [float(v) for v in self.offset_adu]
        if self.segmentation_range is not None:
            d["segmentation_range"] = [float(v) for v in self.segmentation_range]
        return d


@dataclass(frozen=True, eq=False)
class FieldAnalysis:
    """Result of :func:`analyze_field`: arrays plus the per-cell table."""

    abundances: np.ndarray  # (Y, X, K) unmixed
    residual: np.ndarray | None  # (Y, X) relative residual (goodness of fit)
    nuclei: np.ndarray
    cells: np.ndarray
    table: object  # pandas.DataFrame, one row per cell
    settings: AnalysisSettings
    components: tuple[str, ...]
    #: detector ceiling (``level_adu``, ``source``) and per-channel saturated pixels
    #: (:func:`qdmed.imaging._detector.channel_stats`) of the field
    saturation: dict | None = None
    #: what the analysis assumed (a pixel size the settings did not give)
    warnings: tuple = ()

    def to_dict(self) -> dict:
        return {"n_cells": int(len(self.table)), "components": list(self.components),
                "settings": self.settings.to_dict(),
                "median_relative_residual": None if self.residual is None
                else float(np.median(self.residual)),
                "saturation": self.saturation, "warnings": list(self.warnings)}


def unmix_image(image_yxc, panel: Panel, *, method="auto", return_residual=False,
                weights=None, offset_adu=None, read_noise=None):
    """Exact NNLS unmixing of a (Y, X, C) image with the panel's endmembers -> (Y, X, K).

    ``weights="poisson"`` gives the Poisson maximum-likelihood abundances with a read noise
    of ``read_noise`` counts RMS (default 1; :func:`~qdmed.imaging.unmix_nnls`), exactly but
    on a slower path: unbiased at low counts, where weights 1/max(y, 1) are not.
    ``offset_adu`` (one number or one per channel, counts) is the detector's offset,
    subtracted first (:mod:`qdmed.imaging._detector`). ``return_residual=True`` returns a
    pair, the abundances and the (Y, X) relative residual ``||y - E a|| / ||y||`` (the
    goodness-of-fit map; :class:`~qdmed.imaging._nnls.UnmixResult` for flat pixels)."""
    from qdmed.imaging._nnls import unmix_nnls

    check_panel(panel)
    img = np.asarray(image_yxc)
    if panel.unmixed and not panel.channels:
        raise InputError("an already-unmixed panel must first be bound to the image's channel "
                         "names: bind_unmixed(panel, channel_names)")
    if img.ndim != 3 or img.shape[-1] != len(panel.channels):
        raise InputError(
            f"image has shape {img.shape} but the panel has {len(panel.channels)} detection "
            f"channels ({', '.join(panel.channel_names)}): the channel axis must match"
        )
    check_unmix_weights(panel, weights)
    off = panel_offset(panel, offset_adu)
    if off is not None:  # float32 holds every count exactly; float64 input stays float64
        ft = np.result_type(img.dtype, np.float32)
        img = img.astype(ft) - off.astype(ft)
    y, x, c = img.shape
    res = unmix_nnls(img.reshape(-1, c), panel.endmembers, method=method,
                     return_residual=return_residual, weights=weights, read_noise=read_noise)
    if return_residual:
        return (res.abundances.reshape(y, x, -1).astype(np.float32),
                res.relative_residual.reshape(y, x).astype(np.float32))
    return res.reshape(y, x, -1).astype(np.float32)


def analyze_field(image_yxc, panel: Panel, settings: AnalysisSettings | None = None, *,
                  origin_px=(0, 0), residual: bool = True,
                  detector_stats: bool = True, nuclei=None, cells=None,
                  label_names: tuple[str, str] = LABEL_NAMES, abundances=None
                  ) -> FieldAnalysis:
    """Analyse one field held in memory: unmix, segment nuclei on the nuclear marker, grow
    cells, measure every marker in every compartment. ``residual=False`` skips the
    goodness-of-fit map (``FieldAnalysis.residual`` is then None).

    ``nuclei`` (a (Y, X) label image aligned with the field, e.g. cellpose or StarDist masks
    made elsewhere; :func:`qdmed.imaging._cells.nuclei_from_labels`) replaces the nuclear
    segmentation: cells grow from these nuclei as from qdmed's own, the table gets
    ``nucleus_label`` (each cell's id in the given labels) and the settings record
    ``segmentation='labels'``. The size filter of the settings is not applied to them.
    ``cells`` (whole-cell labels from the same place, with ``nuclei``) replaces the
    expansion too (:func:`qdmed.imaging._cells.cells_from_labels`: each cell's nucleus is
    the nuclear pixels inside it; a cell without any is left out, counted in
    ``table.attrs['cells_without_nucleus']``); the table also gets ``cell_label``.
    ``label_names`` name the two in errors (e.g. with their files). ``abundances`` (the
    field's (Y, X, K) :func:`unmix_image` with these settings, with ``residual=False``)
    skips unmixing it again. ``origin_px`` (y, x) is
    the field's top-left pixel in a larger image (a slide's tile): the table's centroids and
    the segmentation's tie-breaks are in that image's pixels. Settings without a pixel size
    take 0.5 um/px, said in ``FieldAnalysis.warnings``: an array records none, and areas,
    expansion and membrane width scale with it (a review's 0.25 um field read cells 2.8x
    too large).

    The table gets ``saturated_fraction`` (share of each cell's pixels with a channel at the
    detector ceiling, ``settings.saturation_level`` or the integer type's maximum; absent for
    a float image without a given ceiling), and ``FieldAnalysis.saturation`` the ceiling and
    the saturated pixels per channel (:mod:`qdmed.imaging._detector`; not counted with
    ``detector_stats=False``, as a slide tile counts its core only)."""
    from qdmed.imaging._cells import (
        cells_from_labels,
        expand_cells,
        measure_cells,
        nuclei_from_labels,
        segment_nuclei,
    )
    from qdmed.imaging._detector import (
        cell_saturated_fraction,
        channel_stats,
        saturation_level,
    )

    check_panel(panel)
    check_settings(settings)
    s = settings or AnalysisSettings()
    warnings = () if s.pixel_size_um is not None else (
        f"the settings give no pixel size: {DEFAULT_PIXEL_SIZE_UM} um/px assumed (areas, "
        "expansion and membrane width scale with it; AnalysisSettings(pixel_size_um=...))",)
    s, coarse = s.with_pixel_size().coarse_membrane()
    warnings = (*warnings, *coarse)
    origin = tuple(int(v) for v in origin_px)
    if cells is not None and nuclei is None:
        raise InputError("cell labels need nuclei labels too (analyze_field(nuclei=...)): the "
                         "nucleus compartment comes from them")
    if nuclei is not None:
        s = replace(s, segmentation="labels")
    elif s.segmentation == "labels":
        raise InputError("settings.segmentation='labels' needs the nuclei labels "
                         "(analyze_field(nuclei=...), or nuclei_labels for a slide)")
    comps = panel.components
    if s.nuclear_marker not in comps:
        raise InputError(f"nuclear marker {s.nuclear_marker!r} is not in the panel components "
                         f"{list(comps)}; add a nuclear counterstain (e.g. DAPI) to the panel")
    warnings = (*warnings, *membrane_marker_warnings(s, comps))
    if abundances is not None and residual:
        raise InputError("analyze_field takes abundances (unmixed already) with "
                         "residual=False only: the residual map needs the unmixing itself")
    if abundances is not None:  # unmixed already, with these settings
        ab, resid = np.asarray(abundances), None
        if ab.shape != (*np.shape(image_yxc)[:2], len(comps)):
            raise InputError(f"abundances must be the field's unmixed image, shape "
                             f"{(*np.shape(image_yxc)[:2], len(comps))}; got {ab.shape}")
    elif residual:
        ab, resid = unmix_image(image_yxc, panel, return_residual=True,
                                offset_adu=s.offset_adu, **s.unmix_options())
    else:
        ab, resid = unmix_image(image_yxc, panel, offset_adu=s.offset_adu,
                                **s.unmix_options()), None
    source_ids = cell_ids = None
    lost = 0
    if cells is not None:
        nuclei, cells, cell_ids, source_ids, lost = cells_from_labels(
            cells, nuclei, ab.shape[:2], names=label_names)
    elif nuclei is not None:
        nuclei, source_ids = nuclei_from_labels(nuclei, ab.shape[:2], what=label_names[0])
    else:
        nuclei = segment_nuclei(ab[..., comps.index(s.nuclear_marker)],
                                pixel_size_um=s.pixel_size_um,
                                min_area_um2=s.min_nucleus_area_um2,
                                max_area_um2=s.max_nucleus_area_um2, method=s.segmentation,
                                model=s.segmentation_model,
                                model_pixel_size_um=s.segmentation_pixel_size_um,
                                model_range=s.segmentation_range,
                                threshold=s.nuclear_threshold if s.nuclear_threshold is not None
                                else "otsu", origin_px=origin)
    if cells is None:
        scales = s.membrane_scales or membrane_scales(ab, comps, s.membrane_markers)
        memb = membrane_signal(ab, comps, scales)
        cells = expand_cells(nuclei, expansion_um=s.expansion_um,
                             pixel_size_um=s.pixel_size_um, membrane_image=memb,
                             max_expansion_um=s.max_expansion_um,
                             membrane_scale=1.0 if s.membrane_scales else None,
                             origin_px=origin)  # every nucleus stays whole in its cell
    table = measure_cells(ab, nuclei, cells, marker_names=list(comps),
                          pixel_size_um=s.pixel_size_um, membrane_width_um=s.membrane_width_um,
                          origin_px=origin, completeness_threshold=s.completeness_threshold,
                          shared_membranes=s.shared_membranes)
    if source_ids is not None:
        table["nucleus_label"] = source_ids[table["cell_id"].to_numpy()]
    if cell_ids is not None:
        table["cell_label"] = cell_ids[table["cell_id"].to_numpy()]
        table.attrs["cells_without_nucleus"] = lost
    image = np.asarray(image_yxc)
    level, source = saturation_level(image.dtype, level=s.saturation_level)
    frac = cell_saturated_fraction(image, cells, level)
    if frac is not None:  # cell_id is int64, even in an empty table
        table["saturated_fraction"] = frac[table["cell_id"].to_numpy()].astype(np.float32)
    sat = {"level_adu": level, "source": source,
           **(channel_stats(image, level) if detector_stats else {})}
    if not len(table) and nuclei is not None and not np.any(nuclei):
        # said as a slide says it (a review: an empty field read 0 cells, warnings=())
        warnings = (*warnings, "no cells: the nuclei labels given are empty"
                    if s.segmentation == "labels" else
                    f"no cells: no nucleus was found in the nuclear channel "
                    f"({s.nuclear_marker}); a field without tissue, or a nuclear threshold "
                    "above its nuclei?")
    return FieldAnalysis(ab, resid, nuclei, cells, table, s, comps, sat, warnings)


def membrane_marker_warnings(settings: AnalysisSettings, components) -> list[str]:
    """Membrane markers the settings name that the panel lacks, where the settings' list is
    not the default (whose CA125 and claudin-4 most panels lack): none of them in the panel
    is refused (cells would grow by distance alone, unsaid: a review's ``("HER-2",)``
    moved HER2 membrane means by up to 822), some of them warned."""
    given = tuple(settings.membrane_markers)
    if given == AnalysisSettings.membrane_markers or not given:
        return []
    absent = [m for m in given if m not in components]
    if len(absent) == len(given):
        raise InputError(f"none of the settings' membrane_markers {list(given)} is a panel "
                         f"component {list(components)}: name the panel's membrane markers "
                         "(cells grow to the membranes they stain), or give () to grow cells "
                         "by distance alone")
    return [f"membrane marker(s) {', '.join(map(repr, absent))} of the settings are not "
            f"panel components ({', '.join(components)}): cells grow to the others'"] \
        if absent else []


def membrane_scales(abundances, components, membrane_markers) -> dict:
    """99th percentile of each membrane marker present in the panel (its normaliser)."""
    out = {}
    for m in membrane_markers:
        if m in components:
            p = float(np.percentile(abundances[..., components.index(m)], 99))
            if p > 0:
                out[m] = p
    return out


def membrane_signal(abundances, components, scales: dict):
    """Sum of the unmixed membrane markers, each divided by its scale (None when the panel
    has no stained membrane marker: cells then grow by a fixed distance)."""
    if not scales:
        return None
    out = np.zeros(abundances.shape[:2], np.float32)
    for m, p in scales.items():
        out += abundances[..., components.index(m)] / p
    return out


def nuclear_otsu(nuclear: np.ndarray, pixel_size_um: float) -> float:
    """Otsu threshold of the nuclear abundance smoothed over 0.5 um (the slide-wide nuclear
    threshold, taken on a reference region)."""
    from scipy import ndimage as ndi

    from qdmed.imaging._cells import otsu_foreground_threshold

    sm = ndi.gaussian_filter(np.asarray(nuclear, dtype=np.float64), 0.5 / pixel_size_um)
    return otsu_foreground_threshold(sm)


def fix_global_thresholds(image_yxc, panel: Panel, settings: AnalysisSettings, *,
                          nuclei=None, cells=None,
                          label_names: tuple[str, str] = LABEL_NAMES
                          ) -> AnalysisSettings:
    """Estimate the nuclear threshold (Otsu) and the membrane-completeness thresholds on a
    reference region and return settings that fix them, so every tile uses the same values
    (``nuclei``, ``cells``: the region's labels when they were segmented elsewhere, named
    in errors by ``label_names``)."""
    settings = settings.with_pixel_size()
    ab = unmix_image(image_yxc, panel, offset_adu=settings.offset_adu,
                     **settings.unmix_options())
    comps = panel.components
    if settings.nuclear_marker not in comps:
        raise InputError(f"nuclear marker {settings.nuclear_marker!r} is not in the panel "
                         f"components {list(comps)}")
    thr = settings.nuclear_threshold
    if thr is None:
        thr = nuclear_otsu(ab[..., comps.index(settings.nuclear_marker)], settings.pixel_size_um)
    if settings.segmentation in EXTERNAL_METHODS and settings.segmentation_range is None:
        # one normalisation for every tile (a tile normalised alone stretches its noise)
        settings = replace(settings, segmentation_range=nuclear_range(
            ab[..., comps.index(settings.nuclear_marker)], settings.segmentation))
    scales = settings.membrane_scales
    if scales is None:
        scales = membrane_scales(ab, comps, settings.membrane_markers)
        if scales:
            # the smoothed membrane landscape's 99th percentile, as expand_cells would use
            from scipy import ndimage as ndi

            sm = ndi.gaussian_filter(membrane_signal(ab, comps, scales).astype(float), 1.0)
            q = float(np.percentile(sm, 99))
            if q > 0:
                scales = {m: v * q for m, v in scales.items()}
    comp = settings.completeness_threshold
    if comp is None:
        fa = analyze_field(image_yxc, panel, replace(settings, nuclear_threshold=thr,
                                                     membrane_scales=scales or None),
                           residual=False, detector_stats=False, nuclei=nuclei,
                           cells=cells, label_names=label_names, abundances=ab)
        comp = dict(fa.table.attrs.get("completeness_threshold", {})) or None
    return replace(settings, nuclear_threshold=thr, completeness_threshold=comp,
                   membrane_scales=scales or None)


# ---------------------------------------------------------------------------- slides
def read_factor(shape_yx, tile: int, margin_px: int) -> float:
    """Pixels the tiles read (each core with its margins, clipped to the slide) over the
    slide's pixels."""
    h, w = shape_yx
    if h * w == 0:
        return 1.0
    total = sum((min(h, y1 + margin_px) - max(0, y0 - margin_px))
                * (min(w, x1 + margin_px) - max(0, x0 - margin_px))
                for y0, y1, x0, x1 in tile_grid(shape_yx, tile))
    return total / (h * w)


def tiling_summary(shape_yx, tile: int, margin_px: int) -> dict:
    """The ``tiling`` block of a slide summary: how much more than the slide the tiles read
    (``read_factor``), warned above :data:`MAX_READ_FACTOR`."""
    f = read_factor(shape_yx, tile, margin_px)
    d = {"tile_px": tile, "margin_px": margin_px, "read_factor": round(f, 3), "warnings": []}
    if f > MAX_READ_FACTOR:
        g = read_factor(shape_yx, max(tile, 2048), margin_px)
        d["warnings"].append(
            f"tiles of {tile} px with a {margin_px} px margin read {f:.1f}x the slide's "
            f"pixels (each tile reads its margins): most of the time goes to margins; "
            f"--tile 2048 reads {g:.1f}x, the same cells")
    return d


def check_tile_px(tile) -> int:
    """InputError unless ``tile`` is an integer of at least 64 px (a cohort checks it before
    any slide: a walk-through's --tile 10 failed every slide one by one)."""
    if isinstance(tile, bool) or not isinstance(tile, int | np.integer) or tile < 64:
        raise InputError(f"tile must be an integer >= 64 px (--tile), got {tile!r}")
    return int(tile)


def tile_grid(shape_yx, tile: int) -> list[tuple[int, int, int, int]]:
    """Core tiles (y0, y1, x0, x1) covering the slide, row-major."""
    h, w = shape_yx
    tile = check_tile_px(tile)
    return [(y, min(y + tile, h), x, min(x + tile, w))
            for y in range(0, h, tile) for x in range(0, w, tile)]


def run_tile(path: str, panel_doc: dict, settings_doc: dict, box, margin_px: int,
             index: int, outlines: bool = False, labels=None, stage: str | None = None):
    """One tile job (runs on a Dask worker): returns (cell table, GeoJSON features, the
    tile core's quality-control numbers: per-channel saturation counts and ``blur``).
    ``labels``: the slide's :class:`~qdmed.imaging._given_labels.GivenLabels` (nuclei, and
    maybe cells, segmented elsewhere), read over the same window instead of segmenting;
    the quality-control numbers then count ``cells_without_nucleus``. ``stage``: the
    staging array of the unmixed image (:mod:`qdmed.imaging._unmixed_out`), where the
    core's abundances and residual are written."""
    from qdmed.imaging._detector import channel_stats
    from qdmed.imaging._focus import tile_blur
    from qdmed.imaging._slideio import read_slide

    slide = read_slide(path, check_chunks=False)  # checked when the run opened it
    panel = Panel.from_dict(panel_doc)
    s = AnalysisSettings(**settings_doc)
    h, w, _ = slide.shape
    y0, y1, x0, x1 = box
    py0, py1 = max(0, y0 - margin_px), min(h, y1 + margin_px)
    px0, px1 = max(0, x0 - margin_px), min(w, x1 + margin_px)
    region = slide.read_region(py0, py1, px0, px1)
    nuclei, given_cells = (None, None) if labels is None else labels.read(py0, py1, px0, px1)
    core = (slice(y0 - py0, y1 - py0), slice(x0 - px0, x1 - px0))
    ab = None
    if stage is not None:  # the unmixed image's pixels from this unmixing, not a second one
        block = unmixed_block(region, panel, s)
        stage_tile(stage, box, block[core])
        ab = np.ascontiguousarray(block[..., :-1])
    fa = analyze_field(region, panel, s, origin_px=(py0, px0), residual=False,
                       detector_stats=False, nuclei=nuclei, cells=given_cells,
                       label_names=_label_names(labels), abundances=ab)
    stats = channel_stats(region[core], s.saturation_level)
    nuclear = fa.abundances[core][..., fa.components.index(s.nuclear_marker)]
    stats["blur"] = tile_blur(nuclear, fa.nuclei[core])
    if labels is None and s.segmentation == "watershed" and s.nuclear_threshold is not None:
        from qdmed.imaging._cells import missed_nuclei

        stats["missed_nuclei"] = missed_nuclei(
            nuclear, s.nuclear_threshold, s.pixel_size_um,
            min_area_um2=s.min_nucleus_area_um2, max_area_um2=s.max_nucleus_area_um2)
    if not panel.unmixed:  # does the panel explain this tile's cells? (qdmed.imaging._fit)
        from qdmed.imaging._fit import residual_sample

        stats["fit"] = residual_sample(region[core], fa.abundances[core], fa.cells[core],
                                       panel.endmembers, panel_offset(panel, s.offset_adu),
                                       s.saturation_level)
    if given_cells is not None:
        stats["cells_without_nucleus"] = _cells_left_out(given_cells, fa.cells, (py0, px0),
                                                         box)
    df = fa.table
    if len(df):
        cy, cx = df["centroid_y"].to_numpy(), df["centroid_x"].to_numpy()
        # ownership by nucleus centroid (global pixel coordinates)
        ncy, ncx = _nucleus_centroids(fa.nuclei, df["cell_id"].to_numpy(), py0, px0)
        keep = (ncy >= y0) & (ncy < y1) & (ncx >= x0) & (ncx < x1)
        del cy, cx
        local_ids = df["cell_id"].to_numpy()[keep]
        if labels is not None:
            # fa.cells hold every given nucleus whole (analyze_field), so cells suffice
            _check_not_cut(fa.cells, df.loc[keep], (py0 > 0, py1 < h, px0 > 0, px1 < w),
                           labels, margin_px * s.pixel_size_um)
        if local_ids.size and int(local_ids.max()) >= CELL_ID_STRIDE:
            raise InputError(
                f"tile {index} holds a cell id {int(local_ids.max())} >= {CELL_ID_STRIDE} (the "
                "per-tile id range of the slide-wide cell_id); use a smaller tile.")
        df = df.loc[keep].copy()
        df["cell_id"] = np.int64(index) * CELL_ID_STRIDE + df["cell_id"].astype(np.int64)
        df["tile"] = np.int32(index)
        feats = (cell_features(fa.cells, fa.nuclei, df, local_ids, df["cell_id"].to_numpy(),
                               py0, px0, Path(path).name) if outlines else [])
    else:
        df = df.copy()
        df["tile"] = np.array([], dtype=np.int32)
        feats = []
    return df.reset_index(drop=True), feats, stats


def check_calibration(panel, her2_calibration, gates, calibration_scale=None) -> None:
    """Refuse, before any tile is analysed, scoring rules for markers the panel lacks: every
    gate's marker and the HER2 calibration's marker must be panel components; and, where
    the calibration recorded its controls' labels (``calibration_scale``, from
    :func:`~qdmed.imaging.load_calibration`), a scored marker labelled with another QD here
    than in the controls (its cut-offs are abundances of the other QD: a review's HER2
    1+ slide, analysed with the built-in panel against controls of a custom one, read 0
    with only a warning). Other differences of scale are warned
    (:func:`~qdmed.imaging._calibration_file.scale_warnings`)."""
    from collections.abc import Mapping

    from qdmed.imaging._her2_calibration import Her2Calibration

    if her2_calibration is not None and not isinstance(her2_calibration, Her2Calibration):
        whole = hasattr(her2_calibration, "her2") and hasattr(her2_calibration, "gates")
        raise InputError(
            f"her2_calibration must be a Her2Calibration; got {type(her2_calibration).__name__}"
            + (": give calibration.her2, with gates=calibration.gates and "
               "calibration_scale=calibration.intensity_scale" if whole else ""))
    if gates is not None and not isinstance(gates, Mapping):
        raise InputError(f"gates must be a mapping marker -> MarkerGate; got "
                         f"{type(gates).__name__}")
    comps = list(panel.components)
    ours = None if panel.unmixed else dict(zip(panel.markers, panel.labels, strict=True))
    theirs = (calibration_scale or {}).get("labels")
    if ours and theirs:
        from qdmed.imaging._panel import label_key

        scored = [m for m in [*([her2_calibration.marker] if her2_calibration else []),
                              *(gates or {})]
                  if m in ours and m in theirs and label_key(ours[m]) != label_key(theirs[m])]
        if scored:
            said = ", ".join(f"{m}: {ours[m]} here, {theirs[m]} in the controls"
                             for m in dict.fromkeys(scored))
            raise InputError(
                f"the calibration's controls were labelled otherwise ({said}): its cut-offs "
                "are abundances of another QD and do not carry over. Give the panel the "
                "controls were analysed with (--panel), or calibrate on controls analysed "
                "with this one")
    for m in gates or {}:
        if m not in comps:
            raise InputError(f"a positivity gate is given for {m!r}, which is not a component "
                             f"of the panel {comps}: the calibration was made with another "
                             "panel, and its intensities (unmixed with other spectra) do not "
                             "carry over; calibrate on controls analysed with this panel")
    if her2_calibration is not None and her2_calibration.marker not in comps:
        raise InputError(f"the HER2 calibration scores {her2_calibration.marker!r}, which is "
                         f"not a component of the panel {comps}")


def _remove_stale_temporaries(*folders: Path) -> None:
    """Remove what a killed run left half-written in `folders`: the temporary files and
    folders of atomic writes (``.<name>.*.tmp``, ``.<name>.tmp-*``; a half-written unmixed
    image can be several GB). Two runs into one folder at once are not supported."""
    for d in folders:
        for f in list(d.glob(".*.tmp")) + list(d.glob(".*.tmp-*")):
            if f.is_dir() and not f.is_symlink():
                shutil.rmtree(f, ignore_errors=True)
            else:
                f.unlink(missing_ok=True)


def _objects_outside_warnings(image, objects_file: str) -> list[str]:
    """The warning that some objects of a GeoJSON file lie wholly outside the slide (its
    label image records how many; most of them outside is refused when it is drawn)."""
    from qdmed.imaging._rasterize import outside_warnings
    from qdmed.imaging._slideio import qdmed_record

    objs = qdmed_record(image).get("objects")
    if not isinstance(objs, dict):  # a label image without the record: nothing to say
        return []

    return outside_warnings(int(objs.get("n_outside") or 0), int(objs.get("n_nuclei") or 0),
                            objects_file)


def _remove_stale_object_labels(out: Path, objects_file, nuclei_labels, cell_labels) -> None:
    """Remove the label image an earlier run drew from GeoJSON objects
    (``given_labels.ome.zarr``) when this run takes no objects file, unless this run reads
    that very image as its labels."""
    from qdmed.imaging._rasterize import GIVEN_LABELS_NAME

    stale = out / GIVEN_LABELS_NAME
    if objects_file is not None or not stale.is_dir() or stale.is_symlink():
        return
    used = {Path(p).resolve() for p in (nuclei_labels, cell_labels) if p is not None}
    if stale.resolve() not in used:
        shutil.rmtree(stale)


def _label_names(labels) -> tuple[str, str]:
    """How a slide's given labels are named in errors (the defaults when there are none)."""
    return LABEL_NAMES if labels is None else labels.names()


def _cells_left_out(given_cells, cells, origin, box) -> int:
    """Given cells of the window left out for want of a nuclear pixel, counted by the tile
    that holds their centroid (so each is counted once on the slide)."""
    from qdmed.imaging._cells import nuclei_from_labels

    gone, _ = nuclei_from_labels(np.where(cells == 0, given_cells, 0), what="cell labels")
    if not gone.any():
        return 0
    ids = np.arange(1, int(gone.max()) + 1)
    cy, cx = _nucleus_centroids(gone, ids, *origin)
    y0, y1, x0, x1 = box
    return int(np.sum((cy >= y0) & (cy < y1) & (cx >= x0) & (cx < x1)))


def _check_not_cut(cells, owned, inner_edges, labels, margin_um) -> None:
    """Refuse a tile whose own cells (grown from a label image's nuclei) reach an edge of the
    window read around it that is not the slide's edge: their nucleus is larger than the
    margin allows (qdmed's own segmentation drops such objects by size), so the cell was
    cut and would be measured in part."""
    top, bottom, left, right = inner_edges
    edges = [e for e, inner in ((cells[0], top), (cells[-1], bottom), (cells[:, 0], left),
                                (cells[:, -1], right)) if inner]
    if not edges or not len(owned):
        return
    on_edge = np.intersect1d(np.concatenate(edges), owned["cell_id"].to_numpy())
    if on_edge.size:
        row = owned[owned["cell_id"] == on_edge[0]].iloc[0]
        what = (f"nucleus {int(row['nucleus_label'])} of the labels "
                f"{Path(labels.nuclei.path).name}" if labels.cells is None else
                f"cell {int(row['cell_label'])} of the labels {Path(labels.cells.path).name}")
        raise InputError(
            f"{what} (near x={row['centroid_x']:.0f}, y={row['centroid_y']:.0f} px) reaches "
            f"beyond the {margin_um:g} um margin read around its tile: it is larger than a "
            f"{'nucleus' if labels.cells is None else 'cell'} (is this the right label "
            "image, at the slide's resolution?); raise margin_um if they really are this large")


def _nucleus_centroids(nuclei, ids, oy, ox):
    """Mean row and column of each nucleus ``ids`` (positive labels: the tile's cell ids;
    memory grows with the largest label), plus the tile offset.

    Sums over the labelled pixels only, in raster order: the same additions, in the same
    order, as ``scipy.ndimage.mean(np.indices(...)[k], nuclei, ids)`` (a bincount over the
    whole image), so the ownership test sees identical values, without two full-image
    index arrays (~0.15 s per 2208^2 tile, measured)."""
    ids = np.asarray(ids, dtype=np.int64)
    w = nuclei.shape[1]
    flat = nuclei.ravel()
    sel = np.flatnonzero(flat)
    lab = flat[sel]
    n = int(max(lab.max(initial=0), np.max(ids, initial=0))) + 1
    count = np.bincount(lab, minlength=n)[ids]
    rows = sel // w
    with np.errstate(invalid="ignore", divide="ignore"):  # an id without pixels: NaN
        cy = np.bincount(lab, weights=rows.astype(np.float64), minlength=n)[ids] / count
        cx = np.bincount(lab, weights=(sel - rows * w).astype(np.float64), minlength=n)[ids] / count
    return cy + oy, cx + ox


def _classifier(her2):
    """cell_id -> (QuPath class name, RGB) from the per-cell HER2 categories, or None."""
    cat = her2_categories(her2)
    if cat is None:
        return None
    from qdmed.imaging._geojson import HER2_COLOURS

    def classify(ids):
        return {i: (f"HER2 {cat[i]}", HER2_COLOURS[cat[i]]) for i in ids if i in cat}

    return classify


@dataclass(frozen=True)
class SlideResult:
    """Summary of an analysed slide; the per-cell table lives in ``cells.parquet``."""

    summary: dict
    out_dir: Path
    her2: object | None = field(default=None, compare=False)
    her2_heterogeneity: object | None = field(default=None, compare=False)

    @property
    def cells_path(self) -> Path:
        return self.out_dir / "cells.parquet"

    def cells(self):
        import pandas as pd

        return pd.read_parquet(self.cells_path)

    @property
    def warnings(self) -> list[str]:
        """Every warning of the analysis, as the command line prints them (``"<block>:
        <warning>"``, the panel's first, then the receptor-status warnings in full): they
        live in the summary's blocks, where a Python user had to look for them one by one
        (a review)."""
        from qdmed.imaging._region_scores import receptor_notes

        # the panel's own (separability, excitation) first: the CLI's panel command said
        # them, but a slide analysed with the panel did not
        return summary_warnings(self.summary, ("panel", *WARNING_BLOCKS)) + receptor_notes(
            self.summary.get("markers_scored"), brief=False)

    def to_dict(self) -> dict:
        return self.summary

    def plot(self, what: str = "overview"):
        """A figure of the slide's report.

        Parameters
        ----------
        what : {'overview', 'histograms', 'her2'}
            ``'overview'``: the unmixed markers' composite beside the cells, coloured by
            their HER2 category when HER2 was scored (centroids otherwise; needs
            ``unmixed.ome.zarr``: not with ``write_unmixed=False``); ``'histograms'``: each
            marker's per-cell mean abundance by compartment; ``'her2'``: each scored cell's
            membrane intensity against its completeness, with the cut-offs
            (:meth:`Her2Score.plot`; needs a HER2 score).

        Raises
        ------
        InputError
            An unknown ``what``, or a figure whose data the analysis did not produce (the
            figures it can draw named).
        """
        from qdmed.imaging import _report

        have = {"overview": (self.out_dir / "unmixed.ome.zarr").exists(), "histograms": True,
                "her2": self.her2 is not None}
        key = str(what).strip().lower()
        if key not in have:
            raise InputError(f"plot {what!r} is not known; accepted: {', '.join(have)}.")
        if not have[key]:
            why = (f"no unmixed image in {self.out_dir} (analysed with write_unmixed=False)"
                   if key == "overview" else "this analysis has no HER2 score (no "
                   "calibration given, or no HER2 in the panel)")
            raise InputError(f"{why}; plot {' or '.join(repr(k) for k, v in have.items() if v)} "
                             "instead.")
        if key == "overview":
            return _report.overlay_figure(self)
        if key == "histograms":
            return _report.histogram_figure(self.cells(),
                                            self.summary["panel"]["components"])
        return self.her2.plot()


#: What an analysis writes or removes in its output folder (an input there would be lost;
#: given_labels.ome.zarr is kept when it is the run's own labels).
OUTPUT_NAMES = ("cells.parquet", "cells.geojson", "summary.json", "report.html", "regions.csv",
                "cases.csv", "her2_regions.geojson", "qc_regions.geojson", "unmixed.ome.zarr",
                "tiles")
#: Files only an analysis writes: a folder holding some of OUTPUT_NAMES without them is
#: someone else's (check_output_folder). summary.json stays when a user removes tiles/.
OUTPUT_MARKS = ("tiles/run.json", "summary.json")
#: Summary blocks whose warnings the CLI, cohort and QC tables repeat (prefixed by the name).
WARNING_BLOCKS = ("slide", "calibration", "labels", "segmentation", "autofluorescence",
                  "saturation", "offset", "focus", "fit", "tiling", "scored_cells",
                  "cases_scored", "her2")
#: Tiles whose reads (core plus margins) add up to more than this many times the slide's
#: area are warned: most of the time then goes to margins (a user's --tile 100 took 184 s
#: where 2048 took 25 s, the same cells).
MAX_READ_FACTOR = 4.0


#: Median nucleus areas outside this range (um^2) are warned as a pixel size that is wrong:
#: carcinoma nuclei are some 6-14 um across (30-150 um^2), lymphocytes' 5-6 um (~25 um^2).
PLAUSIBLE_NUCLEUS_AREA_UM2 = (15.0, 250.0)


def segmentation_summary(n_cells: int, nuclear_marker: str, given_labels: bool,
                         method: str = "watershed", model: str | None = None,
                         nucleus_area_um2=None, pixel_size_um: float | None = None,
                         missed: int | None = None, threshold: float | None = None,
                         threshold_given: bool = False) -> dict:
    """How the cells were found (with cellpose or StarDist, the package's version), and a
    warning when none were: a control imaged without its counterstain (a single-stain or
    fluorescence-minus-one section with no DAPI) looks like a slide without tissue, and its
    empty table would otherwise pass unremarked. With the cells' ``nucleus_area_um2``, their
    median, warned outside :data:`PLAUSIBLE_NUCLEUS_AREA_UM2` (20 cells or more): a
    microscopist's slide recorded at 0.25 um/px for 0.5 had nuclei of 13.6 um^2 and lost 49
    of 203 cells to the smallest nucleus area, unsaid. ``missed``: nucleus-like objects the
    nuclear ``threshold`` left out over the tiles (:func:`~qdmed.imaging._cells.missed_nuclei`),
    warned above 10 and a fifth of the cells found (``threshold_given``: the user's
    threshold, said as such)."""
    warnings = []
    found = ("no nuclei stand out on" if method in ("watershed", "labels") else
             f"{method} found no nuclei on")
    if n_cells == 0:
        warnings.append(
            "no cells: the given label images hold none" if given_labels else
            f"no cells: {found} the nuclear channel ({nuclear_marker}). A "
            "control without the counterstain has none to segment (a fluorescence-minus-one "
            f"control keeps {nuclear_marker}: qdmed image simulate --only {nuclear_marker},"
            "...); or the slide has no tissue")
    out = {"nuclear_marker": nuclear_marker, "given_labels": given_labels,
           "warnings": warnings}
    if missed is not None:
        out["missed_nuclei"] = int(missed)
        if missed > max(10, 0.2 * n_cells) and threshold_given:
            warnings.append(
                f"{missed} nucleus-like objects lie below the nuclear threshold given "
                f"({threshold:.4g}) and were left out ({n_cells} cells found): is it too high "
                "for this slide? Leave it out for Otsu's, or give a lower one")
        elif missed > max(10, 0.2 * n_cells):
            warnings.append(
                f"{missed} nucleus-like objects lie below the nuclear threshold "
                f"({threshold:.4g}) and were left out ({n_cells} cells found): the nuclear "
                "stain is uneven (a bright region, a fold or uneven illumination set the "
                "threshold on the brightest window?); give a threshold that takes both "
                "(nuclear_threshold, --nuclear-threshold: nuclear abundance units), or "
                "correct the uneven illumination first")
    areas = np.asarray([] if nucleus_area_um2 is None else nucleus_area_um2, dtype=float)
    areas = areas[np.isfinite(areas) & (areas > 0)]
    if areas.size >= 20:
        med = float(np.median(areas))
        out["median_nucleus_area_um2"] = med
        lo, hi = PLAUSIBLE_NUCLEUS_AREA_UM2
        if not lo <= med <= hi:
            at = f" at {pixel_size_um:g} um/px" if pixel_size_um else ""
            warnings.append(
                f"the nuclei's median area is {med:.3g} um^2{at}, {'below' if med < lo else 'above'} "
                f"the {lo:g}-{hi:g} um^2 of tissue nuclei: is the pixel size right? Areas "
                "scale with its square, and nuclei outside the area limits "
                "(min/max_nucleus_area_um2) are dropped (--pixel-size-um gives it)")
    if method in EXTERNAL_METHODS:
        out["package"] = package_version(method)
        if method == "cellpose" and model is None and \
                str(out["package"]).startswith("cellpose 4"):
            warnings.append("cellpose 4 has no 'nuclei' model: it ran its cpsam model (install "
                            "cellpose 3, qdmed[seg], for the nuclear model)")
    return out


def summary_warnings(summary: dict, blocks=WARNING_BLOCKS) -> list[str]:
    """``"<block>: <warning>"`` for every warning of the summary's `blocks`."""
    return [f"{b}: {w}" for b in blocks for w in (summary.get(b) or {}).get("warnings", [])]


def _fingerprint(path: Path, panel: Panel, settings: AnalysisSettings, tile, margin_px,
                 labels=None) -> str:
    """Identity of a run: input file (:func:`~qdmed.imaging._slideio.file_ident`), panel,
    settings, tiling and the label images read (:meth:`GivenLabels.ident`). Not whether
    outlines are written: they only add a file per tile, and a tile without one is
    analysed again when they are asked for (turning them off re-ran every tile)."""
    doc = {"tile_format": TILE_FORMAT, "path": str(path.resolve()), "ident": file_ident(path),
           "panel": panel.to_yaml_dict(),
           "settings": settings.to_dict(), "tile": tile, "margin_px": margin_px}
    if doc["settings"]["read_noise_adu"] is None:  # plain NNLS: runs begun before it resume
        del doc["settings"]["read_noise_adu"]
    if labels is not None:
        doc["labels"] = labels.ident()
    if settings.segmentation in EXTERNAL_METHODS:  # another package version, other weights
        doc["segmentation_package"] = package_version(settings.segmentation)
        doc["segmentation_model"] = model_ident(settings.segmentation, settings.segmentation_model)
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def slide_overview(slide, max_px: int = 1024, score_fn=None, min_px: int = 64
                   ) -> tuple[np.ndarray, float]:
    """A low-resolution (Y, X) score image of the whole slide and its downsampling factor
    (full-resolution px per overview px): the coarsest pyramid level at least ``min_px``
    across (else the full resolution), reduced lazily by block means to at most ``max_px``
    (memory stays bounded on slides stored without a pyramid). ``score_fn`` maps a
    (Y, X, C) float array to a (Y, X) score (default: the sum over channels)."""
    h = slide.shape[0]
    levels = slide.levels or (slide.data,)
    low = next((lev for lev in reversed(levels) if max(lev.shape[:2]) >= min_px), levels[0])
    f = h / low.shape[0]
    k = max(1, int(np.ceil(max(low.shape[:2]) / max_px)))
    if k > 1:
        import dask.array as da

        if min(low.shape[:2]) < k:  # a strip thinner than one block: its edge repeated
            low = da.pad(da.asarray(low), ((0, max(0, k - low.shape[0])),
                                           (0, max(0, k - low.shape[1])), (0, 0)), mode="edge")
        ly, lx = (low.shape[0] // k) * k, (low.shape[1] // k) * k
        low = da.coarsen(np.mean, low[:ly, :lx].astype(np.float32), {0: k, 1: k},
                         trim_excess=True)
        f = f * k
    if score_fn is None:
        return np.asarray(low.sum(axis=-1, dtype=np.float64).compute()), f
    return np.asarray(score_fn(np.asarray(low.compute(), dtype=np.float64))), f


def reference_origin(slide, size: int, score_fn=None) -> tuple[int, int]:
    """Top-left corner of the ``size`` x ``size`` window with the most signal, found on the
    coarsest pyramid level (so that thresholds are not estimated on empty glass).
    ``score_fn`` maps a (Y, X, C) float array to a (Y, X) per-pixel score (default: the sum
    over channels)."""
    from scipy import ndimage as ndi

    h, w, _ = slide.shape
    if h <= size and w <= size:
        return 0, 0
    tot, f = slide_overview(slide, 1024, score_fn)
    win = max(1, int(round(size / f)))
    score = ndi.uniform_filter(tot, size=win, mode="constant")
    cy, cx = np.unravel_index(int(np.argmax(score)), score.shape)
    y0 = int(np.clip(cy * f - size / 2, 0, max(0, h - size)))
    x0 = int(np.clip(cx * f - size / 2, 0, max(0, w - size)))
    return y0, x0


def _first(names, n: int = 12) -> str:
    """The first `n` of `names`, joined, and how many more (an error listed 512 names in
    3187 characters)."""
    names = list(names)
    return ", ".join(map(str, names[:n])) + (f", ... ({len(names) - n} more)"
                                             if len(names) > n else "")


def _band(name: str):
    """(low, high) nm from a channel name like ``440-478nm``, else None; also without the
    unit (``590-630``, as ``--filters`` takes bands: a microscopist's channels so named were
    read by position, in the wrong order) when both lie within 200-2000 nm, low below
    high."""
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*-\s*(\d+(?:\.\d+)?)\s*(nm)?\s*", str(name))
    if not m:
        return None
    lo, hi = float(m.group(1)), float(m.group(2))
    if m.group(3) is None and not 200 <= lo < hi <= 2000:
        return None
    return lo, hi


def _band_order(bands, channels) -> list[int] | None:
    """For each of a slide's bands, the panel channel it is (within 1 nm at both edges),
    when every band is one panel channel and each panel channel is taken once; else None."""
    order = []
    for lo, hi in bands:
        hit = [j for j, (plo, phi) in enumerate(channels)
               if abs(lo - plo) <= 1 and abs(hi - phi) <= 1]
        if len(hit) != 1:
            return None
        order.append(hit[0])
    return order if sorted(order) == list(range(len(channels))) else None


def check_channels(slide, panel: Panel, *, reorder: bool = True) -> Panel:
    """The panel to analyse `slide` with, or InputError when their channels differ.

    A spectral panel is returned as it is after checking the channels: by count, and, when
    the slide names its channels by wavelength band (``440-478nm``) or gives their OME
    emission wavelengths, by band. A slide whose channels are named as the panel's bands but
    stored in another order gets the panel in its order (:meth:`Panel.in_channel_order`;
    measured endmembers reordered alike) when `reorder`, else is refused naming the order.
    An already-unmixed panel is returned bound to the slide's channel names (every
    component's channel found, :func:`qdmed.imaging.bind_unmixed`)."""
    from qdmed.imaging._panel import bind_unmixed

    if panel.unmixed:
        return bind_unmixed(panel, slide.channel_names, where=str(slide.path))
    c = slide.shape[-1]
    # an image already unmixed (qdmed's unmixed.ome.zarr, an inForm component export) with
    # as many channels as the panel has bands ran as if they were bands (a review found it
    # scored with a fit warning only): float channels named as components or labels are
    # refused, at least two and half of them. Not detector counts (integers), nor channels
    # with emission wavelengths: a spectral slide may name its bands after their dyes.
    names = {n.casefold() for n in (*panel.components, *map(str, panel.labels), "residual")}
    as_components = [n for n in slide.channel_names if n.casefold() in names]
    if len(as_components) >= max(2, c / 2) and slide.emission_nm is None \
            and np.dtype(slide.dtype).kind == "f":
        raise InputError(
            f"{slide.path}: its channels are named as unmixed components or labels "
            f"({', '.join(as_components)}), not detection bands: an image unmixed already "
            "is analysed with a components panel (qdmed image panel --components "
            "'DAPI=DAPI,HER2=...' --slide IMAGE; unmixed_panel), not unmixed again")
    if c == len(panel.channels):
        bands = [_band(n) for n in slide.channel_names]
        if all(b is not None for b in bands):
            off = [(n, pb) for n, b, pb in zip(slide.channel_names, bands, panel.channels,
                                               strict=True)
                   if abs(b[0] - pb[0]) > 1 or abs(b[1] - pb[1]) > 1]
            order = _band_order(bands, panel.channels) if off else None
            if order is not None and not reorder:
                raise InputError(
                    f"{slide.path}: its channels are the panel's bands in another order "
                    f"({', '.join(slide.channel_names)}; the panel's: "
                    f"{', '.join(panel.channel_names)}); give them in the panel's order")
            if order is not None:
                panel, off = panel.in_channel_order(order), []
            if off:
                n, pb = off[0]
                raise InputError(
                    f"{slide.path}: channel {n} does not match the panel's band "
                    f"{pb[0]:.0f}-{pb[1]:.0f}nm; give the panel the slide was acquired with"
                )
    if c != len(panel.channels):
        rgb = c == 3 and np.dtype(slide.dtype) == np.uint8
        raise InputError(
            f"{slide.path}: the image has {c} channels ({_first(slide.channel_names)}) but "
            f"the panel has {len(panel.channels)} detection channels "
            f"({_first(panel.channel_names)}); give the panel the slide was acquired with"
            + ("; an 8-bit RGB image looks like brightfield: DAB IHC is scored by `qdmed "
               "image dab` (score_dab)" if rgb else ""))
    em = slide.emission_nm
    if em is not None:
        # an emission wavelength may be given as a band's centre or either edge (or a dye's
        # peak near a filter's band): a quarter band of slack on either side allows these,
        # and refuses a panel off by one band or more
        for i, (e, (lo, hi)) in enumerate(zip(em, panel.channels, strict=True)):
            slack = 0.25 * (hi - lo)
            if not lo - slack <= e <= hi + slack:
                raise InputError(
                    f"{slide.path}: channel {i} ({slide.channel_names[i]}) has emission "
                    f"wavelength {e:g} nm (OME metadata), outside the panel's band "
                    f"{lo:.0f}-{hi:.0f}nm; give the panel the slide was acquired with")
    return panel


#: Given nuclei whose mean nuclear stain is below this many times the mean outside them
#: are warned: nuclei on their stain read several times brighter (see
#: labels_on_stain_warnings), labels transposed or from another image about as bright.
MIN_NUCLEAR_CONTRAST = 2.0


def labels_on_stain_warnings(image_yxc, panel: Panel, settings: AnalysisSettings,
                             nuclei) -> list[str]:
    """A warning when given nuclei do not lie on the nuclear stain of a reference region:
    its mean inside them below :data:`MIN_NUCLEAR_CONTRAST` times its mean outside. A
    review's cellpose masks, transposed on a square slide, were used unsaid (the cells'
    nuclear DAPI fell from ~900 to 21). Measured on the synthetic her2-heterogeneous slide
    (1024^2 px, nuclei on 15 %): the true nuclei x31, transposed x1.01. A ratio of means,
    not of shares: a share cannot exceed 1 / the nuclei's area, so dense tissue (nuclei on
    64 % of a review's region) was warned whatever its masks."""
    lab = np.asarray(nuclei) > 0
    if lab.all() or not lab.any():
        return []
    ab = unmix_image(image_yxc, panel, offset_adu=settings.offset_adu,
                     **settings.unmix_options())
    stain = ab[..., panel.components.index(settings.nuclear_marker)].astype(np.float64)
    inside, outside = float(stain[lab].mean()), float(stain[~lab].mean())
    if not inside > 0 or inside >= MIN_NUCLEAR_CONTRAST * outside:
        return []
    return [f"the given nuclei do not lie on the nuclear stain ({settings.nuclear_marker}): "
            f"it reads {inside:.3g} inside them against {outside:.3g} outside (x"
            f"{inside / outside if outside > 0 else float('inf'):.2f}; nuclei on their stain "
            "read several times brighter): transposed, flipped, or from another image?"]


def positional_warnings(panel: Panel, channel_names) -> list[str]:
    """Warnings for an already-unmixed panel, never bound to an image's names, that takes a
    component from a named channel by its index: on a slide whose channels come in another
    order it reads another marker's channel (a review read PR as ER, unsaid). Channels named
    only by their place (C0, Channel 1, 2) are not warned."""
    import re

    if not panel.unmixed or panel.channels:
        return []
    names = [str(n) for n in channel_names]
    out = []
    for comp, src in zip(panel.components, panel.sources, strict=True):
        if isinstance(src, int) and 0 <= src < len(names) and not re.fullmatch(
                r"\s*(c|ch|chan|channel)?[\s:_-]*\d+([\s:_-]+\d+)*\s*", names[src],
                flags=re.I):
            out.append(f"component {comp} is channel {src} ({names[src]!r}) by its place, as "
                       "the panel gives it: name the channel instead (or bind the panel to "
                       "an image, image_channels / qdmed image panel --slide), so that a "
                       "slide whose channels come in another order is refused, not misread")
    return out


def check_panel(panel) -> None:
    """InputError unless ``panel`` is a :class:`Panel` (a review's endmember matrix given
    as the panel met an AttributeError)."""
    if not isinstance(panel, Panel):
        raise InputError(
            f"panel must be a qdmed Panel (breast_panel_5plex(), design_panel(...), "
            f"Panel.from_file(...)); got {type(panel).__name__}"
            + (": for an endmember matrix alone, unmix_nnls(pixels, endmembers)"
               if isinstance(panel, np.ndarray) else ""))


def check_settings(settings) -> None:
    """InputError unless ``settings`` is None or :class:`AnalysisSettings`."""
    if settings is not None and not isinstance(settings, AnalysisSettings):
        raise InputError(f"settings must be AnalysisSettings; got {type(settings).__name__}"
                         + (": AnalysisSettings(**settings)" if isinstance(settings, dict)
                            else ""))


def check_unmixable(panel: Panel) -> None:
    """Refuse, naming the markers, a spectral panel whose spectra the unmixing would refuse
    (nearly collinear: two markers on one QD colour); an already-unmixed panel passes. Not
    part of :func:`check_channels`: a spectral library is measured for such a panel too
    (measured spectra may separate what the model's do not)."""
    if not panel.unmixed:
        from qdmed.imaging._nnls import check_unmixable as check

        check(panel.endmembers, panel.components)


def check_unmix_weights(panel: Panel, weights) -> None:
    """Refuse Poisson unmixing for an already-unmixed panel: its image holds components,
    not the detector counts whose Poisson noise the weights model."""
    if panel.unmixed and isinstance(weights, str) and weights == "poisson":
        raise InputError("Poisson unmixing models raw detector counts; this panel's image is "
                         "already unmixed (its channels are components), so leave out "
                         "--poisson (unmix_weights='poisson')")


def panel_offset(panel: Panel, offset_adu):
    """A detector offset checked against the panel's channels (None for none): an
    already-unmixed panel's image is not detector counts, so an offset is refused there."""
    from qdmed.imaging._detector import check_offset

    if panel.unmixed:
        if offset_adu is not None:
            raise InputError(f"a detector offset ({offset_adu!r}) applies to raw detector "
                             "counts; this panel's image is already unmixed (its channels are "
                             "components), so give no offset")
        return None
    return check_offset(offset_adu, len(panel.channels))


def analyze_slide(path, panel: Panel, out_dir, *, settings: AnalysisSettings | None = None,
                  tile: int = 2048, margin_um: float | None = None, scheduler: str | None = None,
                  n_workers: int | None = None, her2_calibration=None, outlines: bool = True,
                  write_unmixed: bool = True, unmixed_keep_bits: int | None = None,
                  progress: bool = True, resume: bool = True,
                  reference_region_px: int = 1024, client=None, gates=None,
                  regions=None, region_class: str | None = None,
                  autofluorescence: str = "panel", her2_region_um: float = 500.0,
                  her2_region_min_cells: int = 100,
                  saturation_level: float | None = None, offset_adu=None,
                  exclude_flagged: tuple = (), per_region: bool | None = None,
                  region_min_cells: int = 100, tma_map=None,
                  case_rule: str = "pooled", tumour_regions=None, nuclei_labels=None,
                  labels_channel=None, cell_labels=None,
                  cell_labels_channel=None, labels_downsample: float = 1,
                  calibration_scale: dict | None = None) -> SlideResult:
    """Analyse a whole slide tile by tile.

    Parameters
    ----------
    path : str or path-like
        OME-TIFF/TIFF or OME-Zarr slide, (Y, X, C) with C = the panel's channels.
    panel : Panel
    out_dir : path
        Gets ``cells.parquet``, ``summary.json``, ``qc_regions.geojson`` (out-of-focus
        tiles, :mod:`qdmed.imaging._focus`), ``cells.geojson`` (if ``outlines``),
        ``unmixed.ome.zarr`` (if ``write_unmixed``) and ``tiles/`` (finished tiles, for resume).
        A ``cells.geojson`` or ``unmixed.ome.zarr`` an earlier run left there is removed when
        this run does not write it, so the folder never mixes two runs' outputs.
    unmixed_keep_bits : int, optional
        Round the unmixed image's float32 values to this many mantissa bits (1-23; relative
        error at most ``2**-(bits + 1)``, 10 bits: 4.9e-4, far below the counts' shot noise)
        so that it compresses better: lossy, for viewing; the cell table is computed from
        the exact abundances either way. Default: exact float32.
    settings : AnalysisSettings, optional
        Its ``pixel_size_um`` (None by default) is the slide's own; a slide that records
        none is read at :data:`DEFAULT_PIXEL_SIZE_UM`, warned in the summary's ``slide``
        block (areas and densities scale with the square of the pixel size).
    tile : int, px
        Core tile size.
    margin_um : float, um, optional
        Overlap read around each tile: at least the largest cell radius the settings
        allow (``r_max``, nucleus radius + expansion: 19.3 um by default) + 2 um, and with
        ``settings.shared_membranes='brighter'`` at least ``2 r_max`` (a core cell is
        measured against its neighbours; a neighbour cut by the window can still differ
        where cells reach ``r_max``, which needs ``3 r_max``: none did at 30-40 um on the
        synthetic slides). None: :data:`DEFAULT_MARGIN_UM`, or what the settings need
        where that is more (a cohort run, which takes no margin, with larger cells).
    scheduler : str, optional
        Address of an existing Dask distributed scheduler (``tcp://host:8786``), or
        ``"synchronous"`` to run the tiles one after another in this process. Without it a
        local cluster is started when there is more than one tile.
    n_workers : int, optional
        Workers of the local cluster (default: min(cores, tiles)).
    her2_calibration : Her2Calibration, optional
        Enables the slide-level HER2 category.
    calibration_scale : dict, optional
        The intensity scale the calibration's controls were analysed on
        (:func:`~qdmed.imaging.load_calibration`'s ``intensity_scale``): a slide on another
        (another panel or labels, an already-unmixed export, another pixel type or
        exposure) is warned in the summary's ``calibration`` block.
    resume : bool
        Reuse finished tiles of an interrupted run with the same inputs and settings.
    client : distributed.Client, optional
        An existing client to run on (left open); used by cohort runs.
    gates : mapping marker -> MarkerGate, optional
        Positivity gates (:func:`gates_from_negative_controls`): the summary then holds the
        percent positive per marker and the breast phenotype counts.
    regions : path, optional
        GeoJSON annotations (e.g. the invasive tumour drawn in QuPath and exported with
        File > Export objects as GeoJSON). HER2 and marker scores then use only the cells whose
        centroid lies inside them, as ASCO/CAP percentages are of invasive tumour cells;
        cells.parquet gets an ``in_region`` column. Without regions every segmented cell is
        scored, and the summary says so.
    region_class : str, optional
        Use only the annotations with this QuPath classification (e.g. ``"Tumor"``); TMA
        cores are kept whatever their class.
    tumour_regions : path, optional
        Annotations of the tumour (GeoJSON, filtered by ``region_class`` too) to narrow the
        ``regions`` down to: the scores use the cells inside both, e.g. the tumour a
        pathologist drew inside each TMA core, scored core by core. A regions file that
        holds TMA cores and annotations together (one QuPath export of both) is split the
        same way without this: the cores are the regions, the annotations the tumour.
        cells.parquet then gets ``in_tumour``.
    autofluorescence : {'panel', 'blind'}
        ``'panel'``: the panel's autofluorescence column (modelled, or measured with
        :func:`spectral_library`). ``'blind'``: estimated from this slide itself
        (:func:`qdmed.imaging.autofluorescence_blind`, on the 2048^2 px window with the most
        signal, at full resolution), for slides whose autofluorescence differs; its
        diagnostics and warnings go to the summary under ``autofluorescence``.
    her2_region_um, her2_region_min_cells : float (um), int
        With a HER2 score: the side of the square regions scored one by one to map HER2
        heterogeneity (:func:`qdmed.imaging.her2_heterogeneity`), and the scored cells a
        region needs; the summary gets ``her2_heterogeneity`` and ``her2_regions.geojson``
        the scored regions as QuPath annotations. Not on a TMA (regions that are TMA
        cores): squares there would mix the cores of different patients; each core is
        scored on its own instead.
    saturation_level : float, counts, optional
        The detector's ceiling (overrides ``settings.saturation_level``). Default: ``2**b - 1``
        when the OME-TIFF declares ``b`` SignificantBits, else the integer type's maximum; a
        float slide without one is not checked. Cells get ``saturated_fraction``; the summary's
        ``saturation`` block counts saturated pixels per channel and cells holding them,
        flags a pile-up at a channel's maximum below the ceiling (clipping by a detector the
        file does not declare), and warns (:mod:`qdmed.imaging._detector`).
    offset_adu : float or sequence of floats, counts, optional
        The detector's offset (bias), one number or one per channel, subtracted before
        unmixing (overrides ``settings.offset_adu``); for images that are not dark-corrected.
        The summary's ``offset`` block gives each channel's lowest count and warns when every
        channel keeps a floor (an uncorrected offset).
    exclude_flagged : tuple of {'saturated', 'out_of_focus'}
        Leave the cells with these quality flags out of the scores (HER2, positivity,
        receptor status, heterogeneity); ``cells.parquet`` keeps them, and the summary's
        ``scored_cells`` counts them under ``excluded``. By default nothing is left out.
    per_region : bool, optional
        Also score every region of ``regions`` on its own (each TMA core, or each named
        annotation; :mod:`qdmed.imaging._region_scores`): cells.parquet gets a ``region``
        column, the summary ``regions_scored`` and the folder ``regions.csv``. Default: on
        when the regions are TMA cores (QuPath's TMA grid, or :func:`find_tma_cores`).
    region_min_cells : int
        Scored cells a region needs to be scored (default 100).
    tma_map : path or mapping, optional
        Which case (patient) each core belongs to (:func:`read_tma_map`: a CSV with columns
        ``core``, ``case`` and optionally ``slide``; or its ``{(slide stem or None, core):
        case}``). Cells get ``case``, regions.csv a ``case`` column, and ``cases.csv`` one
        row per case, scored from its cores by ``case_rule`` (summary ``cases_scored``);
        needs regions scored one by one. A mapped core the regions file lacks leaves its
        case a row ("no cells", the core named) and a warning.
    case_rule : str
        How a case's cores make its scores (:func:`score_cases`): "pooled" (their cells
        scored as one slide) or "highest" (the highest-scoring core's result, per marker
        the most positive core's).
    nuclei_labels : path, optional
        Nuclei segmented elsewhere (cellpose, StarDist, Mesmer, QuPath's labelled-image
        export...): a label image (TIFF, OME-TIFF or OME-Zarr, e.g. an NGFF
        ``slide.ome.zarr/labels/nuclei``) pixel-aligned with the slide, 0 = background and
        one id per nucleus. It replaces the nuclear segmentation (settings record
        ``segmentation='labels'``); cells grow from these nuclei as from qdmed's own,
        tile by tile, each nucleus owned by the tile holding its centroid, and
        cells.parquet gets ``nucleus_label``, each cell's id in this file. No size filter
        is applied; a nucleus larger than the tile margin is refused.
    labels_channel : str or int, optional
        The channel of `nuclei_labels` holding the nuclei when it has several (a name or a
        0-based index; e.g. Mesmer's whole-cell and nuclear masks in one file).
    cell_labels, cell_labels_channel : path, str or int, optional
        Whole cells segmented elsewhere too (with `nuclei_labels`; may be the same file,
        another channel): they replace the expansion. Each cell's nucleus compartment is
        the nuclear pixels inside it, a cell without any is left out (counted in the
        summary, ``labels.cells_without_nucleus``), and cells.parquet gets ``cell_label``.
        Either may instead be a GeoJSON file of QuPath cells or detections (File > Export
        objects as GeoJSON; :mod:`qdmed.imaging._rasterize`): drawn once into
        ``given_labels.ome.zarr`` in `out_dir` (nuclei from detections or from cells'
        nucleus outlines; cells, when `cell_labels` names the same file, from the cell
        outlines) and read from there.
    labels_downsample : float
        Slide pixels per label pixel along each axis (>= 1), when the label images were
        made at a downsample of the slide (QuPath's labelled-image export at
        ``downsample(4)`` or at ``requestedPixelSize / pixelSize``, cellpose run on a
        reduced image): each slide pixel takes the label pixel holding its centre
        (``floor((i + 0.5) / d)``; a whole-number factor repeats each label pixel over its
        block from the top-left corner). A label image whose size (or recorded pixel size)
        points to another factor is refused, naming it.

    Returns
    -------
    SlideResult
    """
    import pandas as pd

    from qdmed import __version__
    from qdmed.imaging._detector import (
        check_level,
        merge_channel_stats,
        offset_summary,
        saturation_summary,
    )
    from qdmed.imaging._detector import saturation_level as ceiling
    from qdmed.imaging._fit import fit_summary
    from qdmed.imaging._focus import focus_summary, qc_geojson
    from qdmed.imaging._rasterize import GIVEN_LABELS_NAME
    from qdmed.imaging._slideio import (
        _check_pixel_size,
        check_output_folder,
        check_same_slide,
        pixel_size_or_default,
        read_slide,
    )
    from qdmed.report import (
        atomic_write_bytes,
        atomic_write_parquet,
        atomic_write_text,
        environment,
        to_jsonable,
    )

    t0 = time.perf_counter()
    if not isinstance(path, str | os.PathLike):
        raise InputError(f"path must be a slide file's path; got {type(path).__name__}: an "
                         "image in memory is analysed by analyze_field, or written first "
                         "(write_ome_zarr)")
    check_panel(panel)
    check_settings(settings)
    path = Path(path)
    if regions is None and region_class is not None:
        raise InputError(f"region_class={region_class!r} needs a regions file (GeoJSON "
                         "annotations, --regions); none was given.")
    from qdmed.imaging._regions import check_regions_meet, regions_and_tumour

    # fail before any tile is analysed
    reg, tumour = regions_and_tumour(regions, tumour_regions, region_class)
    if per_region and reg is None:
        raise InputError("per_region needs a regions file (GeoJSON annotations or TMA cores, "
                         "--regions); none was given.")
    grid_named = reg is not None and per_region is None and reg.named_like_tma
    per_region = reg is not None and ((reg.is_tma or grid_named) if per_region is None
                                      else bool(per_region))
    region_min_cells = check_min_cells(region_min_cells)
    if tma_map is not None and not per_region:
        raise InputError("tma_map needs regions scored one by one (TMA cores in --regions, "
                         "or per_region=True)")
    tma_map, _ = load_tma_map(tma_map, case_rule)
    check_autofluorescence_option(autofluorescence, panel)
    check_region_options(her2_region_um, her2_region_min_cells)
    check_level(saturation_level)
    panel_offset(panel, offset_adu)
    check_unmix_weights(panel, None if settings is None else settings.unmix_weights)
    exclude_flagged = check_exclude_flagged(exclude_flagged)
    check_n_workers(n_workers)
    scheduler = check_scheduler(scheduler, n_workers)
    check_keep_bits(unmixed_keep_bits, write_unmixed)
    check_output_folder(out_dir, [path, regions, tumour_regions, nuclei_labels, cell_labels],
                        owned=OUTPUT_NAMES, marks=OUTPUT_MARKS, written=(GIVEN_LABELS_NAME,))
    check_same_slide(out_dir, path.name, "tile_*.parquet")
    slide = read_slide(path)
    h, w, c = slide.shape
    boxes = tile_grid((h, w), tile)  # checks the tile size before anything is written
    from qdmed.imaging._regions import region_warnings

    ps_warnings = [*slide.warnings, *positional_warnings(panel, slide.channel_names),
                   *region_warnings(reg, tumour, region_class)]
    panel = check_channels(slide, panel)
    check_unmixable(panel)
    ps_warnings += membrane_marker_warnings(settings or AnalysisSettings(), panel.components)
    check_calibration(panel, her2_calibration, gates, calibration_scale)
    check_regions_meet(reg, slide.shape[:2], path.name)
    from qdmed.imaging._calibration_file import intensity_scale, scale_warnings

    # the calibration's own warnings (no 0 control) reach every slide scored with it
    calibration = {"intensity_scale": calibration_scale, "warnings": list(
        getattr(her2_calibration, "warnings", ())) + scale_warnings(
        calibration_scale, intensity_scale(panel.to_dict(), slide.to_dict(),
                                           (settings or AnalysisSettings()).to_dict()))} \
        if her2_calibration is not None or gates else None
    # the slide's own pixel size unless the settings give one (they did not reach it when
    # settings were given: a 0.25 um slide was segmented at 0.5 um)
    s = settings or AnalysisSettings()
    if _check_pixel_size(s.pixel_size_um) is None:
        # an assumed pixel size is said: areas and densities scale with its square
        ps, assumed = pixel_size_or_default(
            slide.pixel_size_um, hint="--pixel-size-um, or AnalysisSettings(pixel_size_um=...)",
            note=slide.pixel_size_note)
        s = replace(s, pixel_size_um=float(ps))
        ps_warnings = assumed + ps_warnings
    elif slide.pixel_size_um and abs(s.pixel_size_um / slide.pixel_size_um - 1) > 0.01:
        # given and recorded differ: the given one is used, and said (a review: 0.25
        # against a recorded 0.5 turned 435 cells into 307, unsaid)
        ps_warnings = [f"the pixel size given, {s.pixel_size_um:g} um/px, is used instead of "
                       f"the {slide.pixel_size_um:g} um/px {path.name} records: areas, "
                       "expansion and membrane width follow the one given"] + ps_warnings
    s, coarse = s.coarse_membrane()
    ps_warnings += coarse
    from qdmed.imaging._rasterize import is_objects_file, objects_as_labels

    objects_file = str(nuclei_labels) if is_objects_file(nuclei_labels) else None
    nuclei_labels, labels_channel, cell_labels, cell_labels_channel = objects_as_labels(
        nuclei_labels, labels_channel, cell_labels, cell_labels_channel, labels_downsample,
        (h, w), out_dir, slide.pixel_size_um)
    labels = open_given_labels(nuclei_labels, labels_channel, cell_labels, cell_labels_channel,
                               (h, w), s.segmentation, labels_downsample, slide.pixel_size_um)
    if labels is not None:
        s = replace(s, segmentation="labels")
    # before any tile; the model's path made absolute for every worker (and the summary)
    s = replace(s, segmentation_model=check_segmentation_model(
        s.segmentation, s.segmentation_model, s.segmentation_pixel_size_um))
    labels_warnings = [] if objects_file is None else _objects_outside_warnings(nuclei_labels,
                                                                                objects_file)
    sat_level, sat_source = ceiling(
        slide.dtype, significant_bits=slide.significant_bits,
        level=s.saturation_level if saturation_level is None else saturation_level)
    s = replace(s, saturation_level=sat_level)
    if "saturated" in exclude_flagged and sat_level is None:
        raise InputError(f"exclude_flagged='saturated' needs a detector ceiling, and "
                         f"{path.name} has none ({sat_source}): give saturation_level "
                         "(--saturation-level)")
    off = panel_offset(panel, s.offset_adu if offset_adu is None else offset_adu)
    if off is not None and sat_level is not None and float(np.max(off)) >= sat_level:
        # every count would read 0 or less: the run found no nuclei and said only that
        raise InputError(f"offset (--offset) {float(np.max(off)):g} is at or above "
                         f"{path.name}'s detector ceiling {sat_level:g}: every count would "
                         "read 0 or less (the camera's dark level is a few hundred counts)")
    s = replace(s, offset_adu=None if off is None else tuple(off.tolist()))
    panel, af_info = _slide_autofluorescence(slide, panel, autofluorescence, s.pixel_size_um,
                                             off, s.saturation_level)
    r_max = float(np.sqrt(s.max_nucleus_area_um2 / np.pi)) + max(s.max_expansion_um,
                                                                   s.expansion_um)
    if margin_um is None:  # the default, or what the settings need
        margin_um = max(DEFAULT_MARGIN_UM, float(np.ceil(
            2 * r_max if s.shared_membranes == "brighter" else r_max + 2.0)))
    if margin_um < r_max + 2.0:
        raise InputError(
            f"margin_um={margin_um:g} is smaller than the largest cell radius the settings allow "
            f"({r_max:.1f} um = nucleus radius + expansion) plus 2 um; cells at tile borders "
            f"would be cut. Use margin_um >= {np.ceil(r_max + 2.0):.0f}"
        )
    if s.shared_membranes == "brighter" and margin_um < 2 * r_max:
        # a core cell's membrane is measured against its neighbours' levels: their centres,
        # a cell's width beyond its own, must lie in the window (a review: at 22-26 um 4-10
        # cells of ~790 differed from the untiled run, none from 30 um)
        raise InputError(
            f"margin_um={margin_um:g} is smaller than twice the largest cell radius the "
            f"settings allow ({r_max:.1f} um): with shared_membranes='brighter' a cell at a "
            "tile border is measured against its neighbours, which must lie in the margin "
            f"too. Use margin_um >= {np.ceil(2 * r_max):.0f}, or shared_membranes='both'"
        )
    margin_px = int(np.ceil(margin_um / s.pixel_size_um))
    tiling = tiling_summary((h, w), tile, margin_px)
    if tiling["warnings"]:  # said now as well as in the summary: the run may be long
        import warnings

        from qdmed.errors import QdmedWarning

        for text in tiling["warnings"]:
            warnings.warn(text, QdmedWarning, stacklevel=2)
    # global thresholds from a reference region: the brightest (most tissue) window
    ry0, rx0 = reference_origin(slide, reference_region_px)
    ref = slide.read_region(ry0, min(h, ry0 + reference_region_px), rx0,
                            min(w, rx0 + reference_region_px))
    ref_nuclei, ref_cells = (None, None) if labels is None else labels.read(
        ry0, ry0 + ref.shape[0], rx0, rx0 + ref.shape[1])
    threshold_given = s.nuclear_threshold is not None  # the user's, not Otsu's
    s = fix_global_thresholds(ref, panel, s, nuclei=ref_nuclei, cells=ref_cells,
                              label_names=_label_names(labels))
    if ref_nuclei is not None:
        labels_warnings += labels_on_stain_warnings(ref, panel, s, ref_nuclei)
    out = Path(out_dir)
    tiles_dir = out / "tiles"
    created = not out.exists()  # removed again if the run fails before its first tile
    tiles_dir.mkdir(parents=True, exist_ok=True)
    fp = _fingerprint(path, panel, s, tile, margin_px, labels)
    (out / "summary.json").unlink(missing_ok=True)  # written last: marks a complete output set
    _remove_stale_temporaries(out, tiles_dir)
    # the folder holds this run's outputs only: optional ones an earlier run left are removed
    (out / "report.html").unlink(missing_ok=True)  # written after the run, from its summary
    if not outlines:
        (out / "cells.geojson").unlink(missing_ok=True)
    (out / "her2_regions.geojson").unlink(missing_ok=True)  # rewritten when HER2 is scored
    (out / "regions.csv").unlink(missing_ok=True)  # rewritten when regions are scored
    (out / "cases.csv").unlink(missing_ok=True)
    if not write_unmixed and (out / "unmixed.ome.zarr").is_dir():
        shutil.rmtree(out / "unmixed.ome.zarr")
    _remove_stale_object_labels(out, objects_file, nuclei_labels, cell_labels)
    manifest = tiles_dir / "run.json"
    old = json.loads(manifest.read_text()) if manifest.exists() else {}
    if not resume or old.get("fingerprint") != fp:  # no manifest: tiles of unknown origin
        for f in tiles_dir.glob("tile_*"):
            f.unlink()
        shutil.rmtree(tiles_dir / STAGE_NAME, ignore_errors=True)
    # the slide's name: another slide's run into this folder is refused (check_same_slide)
    atomic_write_text(manifest, json.dumps({"fingerprint": fp, "slide": path.name}))

    def mark(i):  # the tile's core is in the unmixed image's staging array
        return mark_path(tiles_dir, i)

    made = True
    if write_unmixed:
        _, made = open_stage(tiles_dir, (h, w), len(panel.components) + 1, tile)
    else:  # an earlier run's stage (a review: left behind, as big as the image)
        shutil.rmtree(tiles_dir / STAGE_NAME, ignore_errors=True)
    if made:  # marks of another array's tiles, or of none
        for i in range(len(boxes)):
            mark(i).unlink(missing_ok=True)

    def done(i):  # the parquet file is written last
        ok = (tiles_dir / f"tile_{i:06d}.parquet").exists()
        return ok and (tiles_dir / f"tile_{i:06d}.qc.json").exists() and (
            not outlines or (tiles_dir / f"tile_{i:06d}.geojson.json").exists())

    todo = [i for i in range(len(boxes)) if not done(i)]
    panel_doc, settings_doc = panel.to_yaml_dict(), s.to_dict()

    def save(i, df, feats, stats):
        if stage is not None:  # the job wrote its core there
            atomic_write_text(mark(i), "")
        atomic_write_text(tiles_dir / f"tile_{i:06d}.qc.json", json.dumps(stats))
        if outlines:
            atomic_write_bytes(tiles_dir / f"tile_{i:06d}.geojson.json", json.dumps(feats).encode())
        atomic_write_parquet(tiles_dir / f"tile_{i:06d}.parquet", df)

    own_client = cluster = run_client = None
    n_used = 1
    mode = "in-process"
    # the cluster before the progress bar: a scheduler that cannot be used is said alone
    if todo and scheduler != "synchronous" and (client is not None or scheduler
                                                 or len(todo) > 1):
        run_client = client
        if run_client is None:
            own_client, cluster = start_client(
                scheduler, n_workers or min(os.cpu_count() or 1, len(todo)),
                made=out if created else None)
            run_client = own_client
        mode = scheduler or ("local" if cluster is not None else "client")
    # the tile jobs stage the unmixed image's pixels where they surely see this machine's
    # folders: in this process or a local cluster's; others' tiles are unmixed here after
    stage = str((tiles_dir / STAGE_NAME).resolve()) if write_unmixed and (
        run_client is None or cluster is not None or is_local_client(run_client)) else None
    try:
        if run_client is not None:
            n_used = len(run_client.scheduler_info().get("workers", {})) or 1
        with _progress(progress, len(boxes), len(boxes) - len(todo),
                       f"{path.name}: tiles") as advance:
            # absolute paths: a worker of a remote cluster has its own working folder
            src = str(path.resolve()) if run_client is not None else str(path)
            run_jobs(run_tile, [(src, panel_doc, settings_doc, boxes[i], margin_px, i,
                                 outlines, labels, stage) for i in todo],
                     run_client, advance, lambda j, result: save(todo[j], *result))
    except BaseException:
        remove_unstarted(out, created, tiles_dir.glob("tile_*.parquet"))
        raise
    finally:
        close_client(own_client, cluster)
    parts = [pd.read_parquet(tiles_dir / f"tile_{i:06d}.parquet") for i in range(len(boxes))]
    parts = [p for p in parts if len(p)] or parts[:1]
    qc = [json.loads((tiles_dir / f"tile_{i:06d}.qc.json").read_text())
          for i in range(len(boxes))]
    cells = pd.concat(parts, ignore_index=True).sort_values("cell_id").reset_index(drop=True)
    overlapping = overlap_warnings(reg, cells)
    if reg is not None:
        assign_regions(cells, reg, path.name, tumour=tumour, per_region=per_region,
                       tma_map=tma_map)
    focus = focus_summary([q["blur"] for q in qc], boxes, cells, scored_cells_of(cells),
                          s.pixel_size_um, left_out="out_of_focus" in exclude_flagged)
    cells["out_of_focus"] = np.isin(cells["tile"].to_numpy(), focus["out_of_focus_tiles"])
    scored_cells = scored_cells_of(cells)  # with the flag
    atomic_write_text(out / "qc_regions.geojson", json.dumps(qc_geojson(focus)))
    detector_stats = merge_channel_stats(qc)
    saturation = saturation_summary(sat_level, sat_source, detector_stats, slide.channel_names,
                                    cells, scored_cells,
                                    left_out="saturated" in exclude_flagged)
    selection = {"cells": "all segmented cells (no tumour region given)" if reg is None else
                 "cells whose centroid lies in the regions"
                 + ("" if tumour is None else " and in the tumour annotations"),
                 "regions": None if reg is None else reg.to_dict(),
                 "tumour": None if tumour is None else tumour.to_dict(),
                 "warnings": list(overlapping)}
    outside = () if reg is None else reg.outside((h, w))
    if outside:  # no cells there: said, as the DAB regions say it (a review: "no cells" only)
        selection["warnings"].append(
            f"{len(outside)} of the {len(reg.names)} regions lie wholly outside the slide's "
            f"{w} x {h} px ({', '.join(outside[:5])}{' ...' if len(outside) > 5 else ''}): "
            "nothing of them is scored; do the annotations belong to this slide?")
    if reg is not None and len(cells) and not len(scored_cells) and \
            len(outside) < len(reg.names):  # all outside: said above
        selection["warnings"].append(f"none of the {len(cells)} cells lies in the regions: "
                                     "nothing was scored (do the annotations belong to this "
                                     "slide?)")
    if exclude_flagged:
        before = len(scored_cells)
        scored_cells, selection["excluded"] = _drop_flagged(scored_cells, exclude_flagged)
        selection["cells"] += ", less " + " and ".join(
            f"{k.replace('_', ' ')} cells" for k in exclude_flagged)
        if before and not len(scored_cells):
            selection["warnings"].append(f"every one of the {before} cells to score carries "
                                         "a flag left out (exclude_flagged): nothing was "
                                         "scored")
    selection["n_scored"] = int(len(scored_cells))
    tma = reg is not None and (reg.is_tma or grid_named)
    if grid_named:
        selection["warnings"].append(
            f"the regions are annotations named as TMA cores ({', '.join(reg.names[:4])}"
            f"{' ...' if len(reg.names) > 4 else ''}): each is scored on its own, as a core "
            "(regions.csv), and the slide's scores pool them; QuPath drops qdmed's isMissing "
            "from cores it writes back as annotations, so a lost core reads as present: "
            "give the TMA grid (the .qptma, or qdmed's own cores.geojson), or per_region "
            "(--per-region / --no-per-region) to choose")
    if per_region and tma:
        selection["note"] = ("a tissue microarray: the slide-level scores pool every core (every "
                             "patient); each core's are in regions.csv")
    if calibration is not None:  # the slide's nuclei against the controls'
        from qdmed.imaging._calibration_file import nuclear_level_warnings

        calibration["warnings"] += nuclear_level_warnings(calibration_scale, cells)
    her2, scored = score_cells(scored_cells, her2_calibration, gates)
    if her2_calibration is not None and her2 is None and len(scored_cells) \
            and not selection["warnings"]:
        selection["warnings"].append(f"none of the {len(scored_cells)} scored cells has a "
                                     "gradable HER2 membrane value: HER2 was not scored")
    # each cell's own results beside its measures (written once they are known)
    atomic_write_parquet(out / "cells.parquet", cells.assign(
        **cell_results(cells, scored_cells, her2, gates)))
    het = None
    (out / "her2_regions.geojson").unlink(missing_ok=True)
    if her2 is not None and not tma:  # squares across a TMA would mix patients' cores
        from qdmed.imaging._heterogeneity import her2_heterogeneity

        het = her2_heterogeneity(her2, region_um=her2_region_um,
                                 min_cells=her2_region_min_cells)
        atomic_write_text(out / "her2_regions.geojson",
                          json.dumps(het.to_geojson(s.pixel_size_um, shape_yx=(h, w))))
    by_region = by_case = None
    if per_region:
        by_region, by_case = score_slide_regions(
            cells, scored_cells, reg, path.name, out, tumour=tumour, tma_map=tma_map,
            case_rule=case_rule, her2_calibration=her2_calibration, gates=gates,
            pixel_size_um=s.pixel_size_um, min_cells=region_min_cells, shape_yx=(h, w))
    if outlines:  # streamed tile by tile: memory bounded whatever the number of cells
        write_feature_collection(
            out / "cells.geojson",
            (tiles_dir / f"tile_{i:06d}.geojson.json" for i in range(len(boxes))),
            _classifier(her2), transform=metadata_from(cells))
    if write_unmixed:
        # the panel as the tiles read it (through its file form, whose rounding moves
        # abundances by ~1e-5 relative): the image is the cells' unmixing, wherever made
        write_staged_unmixed(slide, Panel.from_dict(panel_doc), s, out, boxes,
                             unmixed_keep_bits, progress)
    her2_d = None if her2 is None else her2.to_dict()
    summary = {
        "qdmed_version": __version__,
        "environment": environment(),
        "slide": {**slide.to_dict(), "warnings": ps_warnings},
        "calibration": calibration,
        "panel": panel.to_dict(),
        "panel_file": panel.to_yaml_dict(),
        "settings": s.to_dict(),
        "labels": None if labels is None else {
            **labels.to_dict(), "objects": objects_file, "warnings": labels_warnings,
            "cells_without_nucleus": None if labels.cells is None
            else sum(int(q.get("cells_without_nucleus", 0)) for q in qc)},
        "autofluorescence": af_info,
        "tile_px": tile, "margin_px": margin_px, "n_tiles": len(boxes),
        "tiling": tiling,
        "n_tiles_resumed": len(boxes) - len(todo),
        "n_workers": n_used, "scheduler": "synchronous" if scheduler == "synchronous" else mode,
        "n_cells": int(len(cells)),
        "segmentation": segmentation_summary(
            len(cells), s.nuclear_marker, labels is not None, s.segmentation,
            s.segmentation_model, cells.get("nucleus_area_um2"), s.pixel_size_um,
            missed=None if not any("missed_nuclei" in q for q in qc)
            else sum(int(q.get("missed_nuclei", 0)) for q in qc),
            threshold=s.nuclear_threshold, threshold_given=threshold_given),
        "marker_summary": marker_summary(cells, panel.components),
        "her2": her2_d,
        "her2_heterogeneity": None if het is None else het.to_dict(),
        "markers_scored": scored,
        "subtype": subtype_of(her2_d, scored),
        "scored_cells": selection,
        "regions_scored": by_region,
        "cases_scored": by_case,
        "saturation": saturation,
        "offset": offset_summary(detector_stats, off, slide.channel_names, qc,
                                 read_noise=s.read_noise_used(), dtype=slide.dtype),
        "focus": focus,
        "fit": None if panel.unmixed else fit_summary([q.get("fit") for q in qc],
                                                      panel.channel_names),
        "elapsed_s": time.perf_counter() - t0,
        "outputs": {"cells": "cells.parquet",
                    "geojson": "cells.geojson" if outlines else None,
                    "her2_regions": "her2_regions.geojson" if het is not None else None,
                    "qc_regions": "qc_regions.geojson",
                    "regions": "regions.csv" if by_region is not None else None,
                    "cases": "cases.csv" if by_case is not None else None,
                    "unmixed": "unmixed.ome.zarr" if write_unmixed else None},
        "unmixed_keep_bits": unmixed_keep_bits if write_unmixed else None,
    }
    atomic_write_text(out / "summary.json", json.dumps(to_jsonable(summary), indent=2,
                                                      sort_keys=True))
    return SlideResult(summary, out, her2, het)


QC_FLAGS = ("saturated", "out_of_focus")


def check_exclude_flagged(flags) -> tuple[str, ...]:
    """The quality flags whose cells are left out of the scores, checked (a tuple in
    :data:`QC_FLAGS` order, without repeats)."""
    if isinstance(flags, str):
        flags = (flags,)
    got = tuple(flags or ())
    bad = [f for f in got if f not in QC_FLAGS]
    if bad:
        raise InputError(f"exclude_flagged (--exclude-flagged) takes {', '.join(QC_FLAGS)}; "
                         f"got {bad[0]!r}")
    return tuple(f for f in QC_FLAGS if f in got)


def scored_cells_of(cells, flags: tuple[str, ...] = ()):
    """The cells a slide's scores use: those in its regions (column ``in_region``; every
    cell without regions), less those carrying any of the quality ``flags``."""
    sel = cells[cells["in_region"].to_numpy()] if "in_region" in cells else cells
    return _drop_flagged(sel, flags)[0] if flags else sel


def _drop_flagged(scored, flags: tuple[str, ...]):
    """`scored` without the cells carrying any of `flags`, and how many each flag took."""
    drop = np.zeros(len(scored), bool)
    counts = {}
    for f in flags:
        if f == "saturated":
            hit = (np.asarray(scored["saturated_fraction"], dtype=np.float64) > 0
                   if "saturated_fraction" in scored else np.zeros(len(scored), bool))
        else:
            hit = np.asarray(scored["out_of_focus"], dtype=bool)
        counts[f] = int(hit.sum())
        drop |= hit
    counts["total"] = int(drop.sum())
    return scored[~drop], counts


def check_region_options(region_um, min_cells) -> None:
    """Refuse bad HER2 heterogeneity region options before any slide is read."""
    from qdmed.imaging._heterogeneity import check_region_args

    check_region_args(region_um, min_cells, prefix="her2_")


def check_autofluorescence_option(how: str, panel: Panel) -> None:
    """Refuse an `autofluorescence` option other than 'panel' or 'blind', and 'blind' for a
    panel without an autofluorescence component (before any slide is read)."""
    if how not in ("panel", "blind"):
        raise InputError(f"autofluorescence must be 'panel' or 'blind'; got {how!r}")
    if how == "blind" and panel.unmixed:
        raise InputError("autofluorescence='blind' estimates a spectrum, and an already-unmixed "
                         "panel has none: its image's autofluorescence was unmixed already "
                         "(map it as the component 'autofluorescence')")
    if how == "blind" and "autofluorescence" not in panel.components:
        raise InputError("autofluorescence='blind' needs a panel with an autofluorescence "
                         "component; add one to the panel")


def _slide_autofluorescence(slide, panel: Panel, how: str, pixel_size_um: float,
                            offset=None, saturation_level=None) -> tuple[Panel, dict | None]:
    """The panel to analyse `slide` with, and how its autofluorescence column was had
    (`how` checked by :func:`check_autofluorescence_option`)."""
    has_af = "autofluorescence" in panel.components
    measured = has_af and "autofluorescence" in dict(panel.measured)
    if how == "panel":
        if not has_af:
            return panel, None
        if panel.unmixed:
            return panel, {"source": "image component (already unmixed)"}
        return panel, {"source": "panel (measured)" if measured else "panel (model)"}
    from qdmed.imaging._library import _blind, blind_image, stained_saturation

    img, _, saturated = blind_image(slide, panel, saturation_level)
    clipped, valid = stained_saturation(saturated, str(slide.path))
    if offset is not None:
        img = img - offset
    prof, info = _blind(img, panel, panel.endmembers, f"blind: {slide.path}", pixel_size_um,
                        valid)
    info["warnings"] = [*info["warnings"], *clipped]
    if measured:
        info["replaced"] = "panel (measured)"
        info["warnings"] = [*info["warnings"], "this replaces the autofluorescence the panel "
                            "had measured (from an unstained control)"]
    # rounded, so that a last-bit difference (another BLAS, another machine) does not change
    # the run's fingerprint and throw finished tiles away on resume
    prof = np.round(prof, 9)
    return panel.with_measured({"autofluorescence": prof}), info


def check_n_workers(n_workers) -> None:
    """n_workers: None (as many as the cores) or an integer >= 1."""
    if n_workers is not None:
        check_count(n_workers, "n_workers (--workers)", ", or omitted for one per core")


def run_jobs(fn, calls, client, advance, save=None) -> list | None:
    """``fn(*args)`` for each args of `calls`: in this process (``client`` None), or on the
    Dask `client`'s workers; ``save(j, result)`` and `advance` as each finishes. The results
    in order, or None when `save` takes them (nothing kept: a slide's tiles)."""
    out = [None] * len(calls) if save is None else None

    def done(j, result):
        if save is None:
            out[j] = result
        else:
            save(j, result)
        advance()

    if client is None:
        for j, args in enumerate(calls):
            done(j, fn(*args))
        return out
    from distributed import as_completed

    from qdmed.imaging._scheduler import (
        cluster_mismatch,
        numpy_notices_hidden,
        run_hiding_numpy_notices,
        watch_for_workers,
    )

    hide = numpy_notices_hidden()  # the command line's filters do not reach the workers
    futs = {(client.submit(run_hiding_numpy_notices, fn, *args, pure=False) if hide
             else client.submit(fn, *args, pure=False)): j for j, args in enumerate(calls)}
    watch = watch_for_workers(client)
    try:
        for fut in as_completed(futs, loop=client.loop):  # qdmed's clients: not the default
            done(futs[fut], fut.result())
    except RuntimeError as exc:
        if "deserialization of the task graph" not in str(exc):
            raise
        raise InputError(cluster_mismatch(client)) from None
    finally:
        watch.cancel()
    return out


def check_scheduler(scheduler, n_workers=None) -> str | None:
    """A Dask scheduler's address (``tcp://host:8786``, any ``scheme://``; ``host:8786``
    is taken as tcp, as Dask's Client takes it), 'synchronous' or None, checked before a
    run writes anything, and returned with its scheme; local workers (``n_workers`` above
    1) only without one (a cluster has its own workers, 'synchronous' runs in this
    process)."""
    import re

    if scheduler is None:
        return None
    if isinstance(scheduler, str) and re.fullmatch(r"(\[[^\]]+\]|[^\s/:\[\]]+):\d+",
                                                   scheduler.strip()):
        scheduler = "tcp://" + scheduler.strip()
    if scheduler != "synchronous" and (not isinstance(scheduler, str) or "://" not in scheduler):
        raise InputError(f"scheduler (--scheduler) must be a Dask scheduler's address such as "
                         f"tcp://host:8786, or 'synchronous'; got {scheduler!r}")
    scheme = scheduler.partition("://")[0].lower()
    if scheme in ("http", "https"):  # the dashboard's page, which a browser shows
        raise InputError(f"{scheduler} is a web address (the Dask dashboard's, port 8787 by "
                         "default); the scheduler's address is tcp://HOST:8786")
    if isinstance(n_workers, int) and n_workers > 1:
        raise InputError(f"n_workers (--workers) {n_workers} starts local worker processes; "
                         + ("scheduler 'synchronous' runs in this process"
                            if scheduler == "synchronous" else
                            f"the cluster at {scheduler} has its own workers")
                         + ": give one of them")
    return scheduler


def close_client(client, cluster) -> None:
    """Close what :func:`start_client` opened (either may be None)."""
    if client is not None:
        client.close()
    if cluster is not None:
        cluster.close()


def remove_unstarted(out: Path, created: bool, finished) -> None:
    """After a run failed (or was stopped): the output folder the run created is removed
    when none of the `finished` files exists (nothing to resume from), so that a run that
    fails on its first tile, such as one on a corrupted slide, leaves no folder behind."""
    if created and not any(Path(f).exists() for f in finished):
        shutil.rmtree(out, ignore_errors=True)


def start_client(scheduler: str | None, n_workers: int, made: Path | None = None):
    """A Dask client on ``scheduler`` or on a new local cluster of ``n_workers`` processes
    (one thread each). Returns (client, cluster-or-None). When no scheduler answers, the
    output folder ``made`` (one the run created, nothing finished in it yet) is removed, so
    that a refused run leaves nothing behind."""
    from distributed import Client, LocalCluster

    from qdmed.imaging._scheduler import connect

    if scheduler:
        try:
            return connect(scheduler), None
        except InputError:
            if made is not None:
                shutil.rmtree(made, ignore_errors=True)
            raise
    import signal
    import threading

    # the worker processes are started with Ctrl-C (SIGINT) ignored, which they inherit
    # (Python keeps an ignored SIGINT ignored): a Ctrl-C at the terminal reaches the whole
    # process group, and each worker would print its own KeyboardInterrupt traceback; this
    # process stops the run and closes them instead. (POSIX only: Windows does not pass an
    # ignored SIGINT on; nor does a worker the nanny restarts later. A Ctrl-C during the
    # ~1 s start is lost.)
    main = threading.current_thread() is threading.main_thread()
    old = signal.getsignal(signal.SIGINT) if main else None
    ignore = old is not None  # None: a handler installed from C (an embedding host): kept
    # a SIGTERM while the cluster starts is held until it has started, then delivered to
    # this process's own handler with the cluster closed (a review: stopped inside Dask's
    # start, the cluster's atexit and __del__ printed 19-50 lines of traceback)
    old_term = signal.getsignal(signal.SIGTERM) if main else None
    if old_term is signal.SIG_IGN:  # the process ignores it: nothing to hold
        old_term = None
    held: list[int] = []
    if ignore:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if old_term is not None:
        signal.signal(signal.SIGTERM, lambda signum, frame: held.append(signum))
    try:
        try:
            # a failed task's error reaches the caller through its future, which says it in
            # one line; the workers' own ERROR logs of it (a traceback each, then the
            # connection errors of the cluster closed under them) would print ~15 lines
            # before that line
            cluster = LocalCluster(n_workers=max(1, int(n_workers)), threads_per_worker=1,
                                   processes=True, dashboard_address=":0",
                                   silence_logs=logging.CRITICAL)
        except RuntimeError as exc:  # workers are spawned: each imports the caller's script
            raise RuntimeError(
                "Dask could not start its worker processes. Called from a script, the "
                "analysis must run under `if __name__ == \"__main__\":` (each worker process "
                "imports the script, which would start the analysis again); or pass "
                "scheduler='synchronous' to run in this process.") from exc
        try:
            client = Client(cluster, set_as_default=False)
        except BaseException:  # a failed client: the workers are not left behind
            cluster.close()
            raise
    finally:
        if ignore:
            signal.signal(signal.SIGINT, old)
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    if held:
        client.close()
        cluster.close()
        signal.raise_signal(signal.SIGTERM)  # to the handler this process had
        raise KeyboardInterrupt  # that handler let the run go on: it is stopped all the same
    return client, cluster


def check_keep_bits(keep_bits, write_unmixed: bool = True) -> None:
    """unmixed_keep_bits: None, or an integer 1-23 (float32 mantissa bits) for an unmixed
    image that is written."""
    if keep_bits is None:
        return
    if isinstance(keep_bits, bool) or not isinstance(keep_bits, int | np.integer) or \
            not 1 <= keep_bits <= 23:
        raise InputError(f"unmixed_keep_bits (--unmixed-bits) must be an integer from 1 to 23 "
                         f"(the float32 mantissa bits kept), or omitted for exact values; got "
                         f"{keep_bits!r}")
    if not write_unmixed:
        raise InputError("unmixed_keep_bits (--unmixed-bits) rounds the unmixed image, which "
                         "is not written (write_unmixed=False, --no-unmixed)")


def marker_summary(cells, components) -> dict:
    """Per marker: median cell mean in its compartments (nucleus, cytoplasm, membrane)."""
    out = {}
    for m in components:
        row = {}
        for comp in ("nucleus", "cytoplasm", "membrane"):
            col = f"{m}_{comp}_mean"
            if col in cells:
                row[f"{comp}_median"] = float(cells[col].median()) if len(cells) else None
        out[m] = row
    return out


class _progress:
    """A rich progress bar on stderr (silent when disabled). Entering gives ``advance``,
    which counts one more done and, given a text, shows it as what is now running. A bar
    entered while another is shown is a line of that one's display, removed when done (a
    cohort's slides, then the tiles of the slide running: a walk-through's cohort of large
    slides showed 0/3 slides for minutes, as if stuck)."""

    _shown: list = []  # the bars entered and not yet left, outermost first

    def __init__(self, enabled, total, done, what: str = "tiles"):
        self.enabled, self.total, self.done, self.what = enabled, total, done, what
        self.nested = False

    def __enter__(self):
        if not self.enabled:
            return lambda what=None: None
        if _progress._shown:  # a line of the bar already shown
            self.p, self.nested = _progress._shown[-1].p, True
        else:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TimeRemainingColumn,
            )

            self.p = Progress("[progress.description]{task.description}", BarColumn(),
                              MofNCompleteColumn(), TimeRemainingColumn(),
                              console=Console(stderr=True), transient=False)
            self.p.__enter__()
        self.task = self.p.add_task(("  " if self.nested else "") + self.what,
                                    total=self.total, completed=self.done)
        _progress._shown.append(self)
        return lambda what=None: self.p.update(self.task, advance=1,
                                               **({} if what is None else {"description": what}))

    def __exit__(self, *exc):
        if self.enabled:
            _progress._shown.remove(self)
            if self.nested:
                self.p.remove_task(self.task)
            else:
                self.p.__exit__(*exc)
        return False
