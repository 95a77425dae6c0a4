"""Brightfield haematoxylin-DAB colour deconvolution and per-cell DAB scoring.

Used to compare QD fluorescence scoring with conventional chromogenic IHC. Optical density
(Beer-Lambert, base 10) of each RGB channel is a non-negative combination of stain OD
vectors; colour deconvolution inverts that 3 x 3 mixing (Ruifrok & Johnston 2001), with the
stain vectors either the published H-DAB ones or estimated from the image (Macenko 2009).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from qdmed.errors import InputError, UnknownNameError

__all__ = [
    "RUIFROK_H_DAB",
    "DabScore",
    "StainSeparation",
    "deconvolve_dab",
    "estimate_background",
    "estimate_stain_vectors",
    "score_dab",
    "stain_matrix_from_vectors",
]

_REF_RUIFROK = (
    "Ruifrok AC, Johnston DA. Quantification of histochemical staining by color "
    "deconvolution. Anal Quant Cytol Histol 2001;23(4):291-299 (PMID 11531144)"
)
_REF_MACENKO = (
    "Macenko M, Niethammer M, Marron JS, et al. A method for normalizing histology slides "
    "for quantitative analysis. Proc IEEE ISBI 2009:1107-1110. doi:10.1109/ISBI.2009.5193250"
)


def stain_matrix_from_vectors(hematoxylin, dab) -> np.ndarray:
    """Stain matrix (rows: haematoxylin, DAB, residual) from two RGB OD vectors.

    Parameters
    ----------
    hematoxylin, dab : array_like of 3 float
        OD of each stain in the R, G, B channels (any positive scale).

    Returns
    -------
    (3, 3) ndarray
        Unit-norm rows; the residual row is the normalised cross product ``h x d``, orthogonal
        to both stains (as scikit-image's ``rgb_from_hdx``), so the haematoxylin and DAB
        concentrations are the least-squares fit of each pixel's OD in the stain plane.
        (Ruifrok & Johnston instead fill the third row with ``sqrt(1 - h_c^2 - d_c^2)``;
        that row is not orthogonal and leaks part of the off-plane OD into the stains.)

    Raises
    ------
    InputError
        Vectors not three finite non-negative numbers, zero, or parallel.
    """
    rows = []
    for name, v in (("hematoxylin", hematoxylin), ("dab", dab)):
        a = np.asarray(v, dtype=np.float64)
        if a.shape != (3,) or not np.all(np.isfinite(a)) or np.any(a < 0) or not a.any():
            raise InputError(f"{name} stain vector must be 3 finite non-negative OD values, not all 0; got {v!r}.")
        rows.append(a / np.linalg.norm(a))
    res = np.cross(rows[0], rows[1])
    nr = np.linalg.norm(res)
    if nr < 1e-6:
        raise InputError("hematoxylin and dab stain vectors are parallel; they cannot be separated.")
    res = res / nr
    return np.vstack([rows[0], rows[1], res])


#: Ruifrok & Johnston (2001) H-DAB stain OD vectors (R, G, B): haematoxylin
#: (0.650, 0.704, 0.286), DAB (0.268, 0.570, 0.776); third row = normalised cross product
#: (orthogonal residual, see :func:`stain_matrix_from_vectors`).
RUIFROK_H_DAB = stain_matrix_from_vectors((0.650, 0.704, 0.286), (0.268, 0.570, 0.776))
RUIFROK_H_DAB.setflags(write=False)


def _floor(dtype) -> float:
    """The lowest transmittance a pixel is taken to read (0 has no optical density): one
    level of its type, 1/255 for 8-bit and 1/65535 for 16-bit RGB, as QuPath's
    ``ColorDeconvolutionHelper.makeOD`` floors a value at 1 of its white value (Bankhead et
    al., Sci Rep 2017;7:16878, doi:10.1038/s41598-017-17204-5). A float image may come from
    16-bit data (:func:`~qdmed.imaging.flat_field_correct` of a 16-bit image): 1/65535 too
    (one from 8-bit data holds nothing between 0 and 1/255: only its zeros read darker, as
    the 16-bit ones do; flat_field_correct floors an 8-bit image's result at 1/255). Every
    16-bit level below 257 was floored at 1/255, capping the darkest stain at OD 2.4 where
    the scanner's range reaches 4.8."""
    return 1.0 / 255.0 if np.dtype(dtype) == np.uint8 else 1.0 / 65535.0


def _rgb(rgb) -> np.ndarray:
    """RGB as transmittance in (0, 1]: uint8 / 255, uint16 / 65535, or float already in
    [0, 1], floored at :func:`_floor`; an RGBA image's alpha is dropped when it is opaque
    everywhere."""
    a = np.asarray(rgb)
    if a.ndim == 3 and a.shape[2] == 4:
        full = np.iinfo(a.dtype).max if np.issubdtype(a.dtype, np.integer) else 1.0
        if not np.all(a[..., 3] == full):
            raise InputError("rgb has a transparent alpha channel (RGBA); give an opaque "
                             "RGB image")
        a = a[..., :3]
    if a.ndim != 3 or a.shape[2] != 3:
        raise InputError(f"rgb must be a (Y, X, 3) array; got shape {a.shape}.")
    if a.dtype == np.uint8:
        t = a.astype(np.float64) / 255.0
    elif a.dtype == np.uint16:
        t = a.astype(np.float64) / 65535.0
    elif np.issubdtype(a.dtype, np.integer):
        raise InputError(f"integer rgb must be 8- or 16-bit (uint8, uint16); got dtype "
                         f"{a.dtype}.")
    elif np.issubdtype(a.dtype, np.floating):
        t = a.astype(np.float64)
        if not np.all(np.isfinite(t)) or t.min() < 0 or t.max() > 1:
            raise InputError(
                f"float rgb must be finite and within [0, 1]; got min {np.nanmin(t)} and max {np.nanmax(t)}."
            )
    else:
        raise InputError(f"rgb must be uint8, uint16 or float; got dtype {a.dtype}.")
    return np.maximum(t, _floor(a.dtype))


def _optical_density(rgb, background) -> np.ndarray:
    """Per-channel OD ``-log10(min(I / I0, 1))`` of an RGB image (intensities floored at
    one level of the type, :func:`_floor`). An 8-bit RGB image is looked up in a table of
    its 256 values per channel, computed by the same operations: the same numbers, 3-6x
    faster on a 2048^2
    field (0.38 -> 0.065 s and 0.25 -> 0.078 s, measured on two days), which matters on
    a whole slide. Any other white level (a per-pixel one) takes the formula."""
    a = np.asarray(rgb)
    if a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3 and \
            np.ndim(background) <= 1 and np.size(background) in (1, 3):
        v = np.maximum(np.arange(256, dtype=np.float64) / 255.0, 1.0 / 255.0)
        table = -np.log10(np.minimum(v[:, None] / np.broadcast_to(background, (3,)), 1.0))
        return table[a, np.arange(3)]
    return -np.log10(np.minimum(_rgb(a) / background, 1.0))


#: Glass is taken from the brightest pixels (this percentile of the summed transmittance,
#: smoothed over GLASS_BOX_PX, and above) when at least GLASS_MIN_PIXELS of them read above
#: GLASS_FLOOR in every channel.
GLASS_PERCENTILE = 99.0
#: Side (px) of the box mean the glass is chosen by and read from. Chosen pixel by pixel,
#: the brightest 1 % are the glass's upper noise tail and bright specks: on scikit-image's
#: IHC image they read 241/241/241 where its only flat glass reads 236/236/234, and glass
#: of 241.3/239.5/243.0 with a noise SD of 2 levels read 244/242/246. Smoothed before the
#: choice, as QuPath smooths an image before taking its modal RGB as the background
#: (EstimateStainVectors.smoothImage, two 3x3 means; Bankhead et al., Sci Rep 2017;7:16878,
#: doi 10.1038/s41598-017-17204-5), and read as the box means' median: 236.0/236.0/234.0
#: and 241.7/239.9/243.4. 7 px rather than QuPath's 3x3 twice (242.0/240.2/243.7 on
#: that glass) or 15 px, whose boxes do not fit a 10 px strip of glass beside tissue
#: (236.4 there against 241.1 with 7 px). Measured once per choice on these images; the
#: test test_white_level_is_the_glass_not_its_brightest_pixels holds the 7 px one.
GLASS_BOX_PX = 7
GLASS_MIN_PIXELS = 100
GLASS_FLOOR = 0.8
#: ... and when they are flat: each channel's robust spread (1.4826 x the median absolute
#: deviation, over the median) of their box means below this. Box means average the
#: pixels' noise away and keep what varies over more than a box: pale tissue's texture and
#: uneven light; the median's spread ignores the few boxes at glass's edge. Measured: the
#: IHC image's glass 0.01 %, glass with a noise SD of 15 levels 0.58 % (its single pixels'
#: SD 4.6 %, which a limit on them refused), a glass strip 10 px wide beside tissue 0.3 %
#: (SD 1.5 %), a 128^2 crop of the IHC image without glass 1.4 %, the IHC image framed in
#: glass and vignetted to 56 % at the corners 1.4 %.
GLASS_MAX_SPREAD = 0.01
#: The white level is warned when the glass reads below this share of it in a channel (OD
#: 0.022): a yellowish or unbalanced glass then reads as stain; or above its inverse: the
#: white level is below the glass, which is clipped, and every OD reads low.
GLASS_WARN = 0.95
#: The lowest white level (transmittance) taken: glass is never this dark, and a level
#: 0-255 given twice divided (0.926 / 255) made every OD's range zero.
MIN_WHITE = 0.1
#: A pixel is glass when every channel's OD, smoothed over NUCLEAR_SMOOTHING_UM, is below
#: this (transmittance above GLASS_WARN of the white level): left out of the Otsu split of
#: the haematoxylin, which glass would pull down (the same tissue found 27 % fewer cells on
#: a field of 94 % glass than alone).
GLASS_OD = -math.log10(GLASS_WARN)
#: Nuclei are taken to stand out of a brightfield image's haematoxylin when Otsu's classes
#: lie MIN_OTSU_SEPARATION (3.6) lower-class SDs apart, as any foreground, or at least
#: NUCLEAR_MIN_SEPARATION SDs and NUCLEAR_MIN_CONTRAST_OD apart: JPEG noise and small crops
#: widen the lower class, and scikit-image's real IHC image saved as a quality-30 JPEG, or
#: cropped to 256 px at quality 70-95, measured 3.27-3.6 SDs (no cell scored) with its classes
#: 0.11-0.14 OD apart (now 268 cells of 283, and 57-83 per crop). The OD is QuPath's default
#: nucleus threshold, a nucleus's mean haematoxylin OD above its local background (Bankhead P
#: et al., Sci Rep 7, 16878 (2017), doi:10.1038/s41598-017-17204-5; WatershedCellDetection
#: "threshold" 0.1), taken here between the classes. A fainter counterstain separated by
#: fewer than 3.6 SDs, and textures without nuclei separated by more (transmittance varying
#: 8-20 % in nucleus-sized blobs), are not told from nuclei by these numbers alone: give the
#: split (score_dab(nuclear_threshold=OD); qdmed image dab --nuclear-threshold).
NUCLEAR_MIN_CONTRAST_OD = 0.1
#: See NUCLEAR_MIN_CONTRAST_OD: above pure noise's 2.65 SDs.
NUCLEAR_MIN_SEPARATION = 3.0


def check_nuclear_threshold(value, what: str) -> float:
    """A nuclear threshold given by hand (qdmed image dab --nuclear-threshold), a
    haematoxylin OD from 0 to 10, or InputError saying ``what``."""
    from qdmed.errors import check_number

    return check_number(value, what, lo=0.0, hi=10.0, unit="OD")


def nuclei_stand_out(mean_lo: float, sd_lo: float, mean_hi: float) -> bool:
    """Whether Otsu's upper class of a brightfield image's haematoxylin (OD) is nuclei: see
    :data:`NUCLEAR_MIN_CONTRAST_OD`."""
    from qdmed.imaging._cells import _stands_out

    return _stands_out(mean_lo, sd_lo, mean_hi) or (
        mean_hi - mean_lo >= NUCLEAR_MIN_CONTRAST_OD
        and _stands_out(mean_lo, sd_lo, mean_hi, NUCLEAR_MIN_SEPARATION))


#: segment_nuclei's default smoothing (um), used by score_dab: the Otsu split is taken on
#: the haematoxylin smoothed alike.
NUCLEAR_SMOOTHING_UM = 0.5


def tissue_hematoxylin(rgb, sep: StainSeparation, pixel_size_um: float, glass=None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """An image's haematoxylin OD smoothed over :data:`NUCLEAR_SMOOTHING_UM`, and its
    tissue: the pixels where some channel, smoothed alike, absorbs :data:`GLASS_OD` or more
    against ``glass`` (the glass's transmittance per channel; default the white level of
    ``sep``). The nuclear threshold is Otsu's split of the tissue's values
    (:func:`score_dab`; a slide's regions histogram them crop by crop)."""
    from scipy import ndimage as ndi

    sigma = NUCLEAR_SMOOTHING_UM / pixel_size_um
    od = _optical_density(rgb, np.asarray(sep.background if glass is None else glass))
    tissue = np.zeros(od.shape[:2], dtype=bool)
    for c in range(3):
        tissue |= ndi.gaussian_filter(od[..., c], sigma) >= GLASS_OD
    return ndi.gaussian_filter(sep.hematoxylin, sigma), tissue


#: Bins of the haematoxylin histograms nuclear thresholds are taken from, over [0, the
#: largest OD an 8-bit pixel can give]: one image at once and a slide's regions crop by
#: crop get the same split.
HIST_BINS = 4096


def hematoxylin_top(stain_matrix, background) -> float:
    """The largest haematoxylin OD an 8-bit pixel can give (transmittance floored at
    1/255) under these stain vectors and white level: the top of the threshold histogram.
    A 16-bit image's darker pixels fall in its last bin, their values kept in its sums
    (:func:`hematoxylin_histogram`): the split is the one its 8-bit copy would get, bar
    those pixels' values, far above any split between nuclei and the rest."""
    od_max = np.maximum(-np.log10(1.0 / 255.0 / _background(background)), 0.0)
    return float(np.abs(np.linalg.inv(_matrix(stain_matrix))[:, 0]) @ od_max)


def hematoxylin_histogram(values, top: float) -> np.ndarray:
    """(3, HIST_BINS): per bin of [0, top], the count, sum and sum of squares of `values`
    (summed over pieces of an image, the histogram of the whole)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    k = np.minimum((v * (HIST_BINS / top)).astype(np.int64), HIST_BINS - 1)
    return np.stack([np.bincount(k, minlength=HIST_BINS).astype(np.float64),
                     np.bincount(k, weights=v, minlength=HIST_BINS),
                     np.bincount(k, weights=v * v, minlength=HIST_BINS)])


def tissue_histogram(rgb, sep: StainSeparation, pixel_size_um: float, glass, top: float,
                     where=None) -> np.ndarray:
    """The :func:`hematoxylin_histogram` of an image's tissue (:func:`tissue_hematoxylin`),
    only where ``where`` (a boolean image) is True when given: what the nuclear threshold
    is Otsu's split of, for one image at once or summed over a region's crops."""
    smooth, tissue = tissue_hematoxylin(rgb, sep, pixel_size_um, glass)
    if where is not None:
        tissue &= where
    return hematoxylin_histogram(smooth[tissue], top)


def histogram_threshold(histogram, top: float) -> float:
    """The nuclear threshold of a :func:`hematoxylin_histogram`: Otsu's split, with the
    test that nuclei stand out (+inf otherwise; :func:`qdmed.imaging._cells.histogram_otsu_threshold`,
    :func:`nuclei_stand_out`)."""
    from qdmed.imaging._cells import histogram_otsu_threshold

    counts, sums, squares = histogram
    return histogram_otsu_threshold(counts, sums, squares,
                                    (np.arange(HIST_BINS) + 0.5) * (top / HIST_BINS),
                                    stands_out=nuclei_stand_out)


def is_default_white(background) -> bool:
    """Whether `background` is the default white level 1, however it is written (1, 1.0,
    (1, 1, 1), a numpy scalar or array of ones); 'auto' and any other level are not."""
    if isinstance(background, str):
        return False
    try:
        return bool(np.all(np.asarray(background, dtype=np.float64) == 1.0))
    except (TypeError, ValueError):
        return False


def glass_level(rgb, background, white) -> np.ndarray:
    """The glass's transmittance per channel, to tell glass from tissue: the white level
    when one was given (``background`` not the default 1), else the image's own glass
    (:func:`estimate_background`; a glass reading 0.945 under the default white is glass
    all the same), else, with no glass in view, the white level ``white``."""
    if not is_default_white(background):
        return np.asarray(white, dtype=np.float64)
    try:
        return np.asarray(estimate_background(rgb))
    except InputError:
        return np.asarray(white, dtype=np.float64)


def estimate_background(rgb) -> tuple[float, float, float]:
    """The white level (transmittance of unstained glass) of each RGB channel, as colour
    deconvolution divides each channel by its own glass intensity (Ruifrok & Johnston 2001;
    QuPath keeps one background value per channel): each channel is smoothed by a
    :data:`GLASS_BOX_PX` box mean, the glass is where the smoothed sum is at or above its
    99th percentile, and its level is the median of the smoothed values there (see
    :data:`GLASS_BOX_PX` for why smoothed: the brightest single pixels read the glass high).

    Raises
    ------
    InputError
        No glass: fewer than 100 of the chosen pixels read above 0.8 in every channel, or
        their box means are not flat (pale tissue, or glass shaded by uneven
        illumination): give the background measured on glass instead, or correct the
        image with a blank field first.
    """
    from scipy import ndimage as ndi

    t = _rgb(rgb)
    smooth = np.stack([ndi.uniform_filter(t[..., c], GLASS_BOX_PX, mode="nearest")
                       for c in range(3)], axis=-1).reshape(-1, 3)
    np.minimum(smooth, 1.0, out=smooth)  # a box of 1.0s sums to 1 + 1e-15
    t = t.reshape(-1, 3)
    tot = smooth.sum(1)
    chosen = tot >= np.percentile(tot, GLASS_PERCENTILE) if t.size else np.zeros(0, bool)
    chosen &= np.all(t > GLASS_FLOOR, axis=1)
    glass = smooth[chosen]
    level = np.median(glass, axis=0) if glass.shape[0] else np.ones(3)
    spread = (1.4826 * np.median(np.abs(glass - level), axis=0) / level).max() \
        if glass.shape[0] else np.inf
    if glass.shape[0] < GLASS_MIN_PIXELS or not spread < GLASS_MAX_SPREAD:
        raise InputError("no glass to take the white level from (the brightest 1 % of the "
                         f"pixels need {GLASS_MIN_PIXELS} or more above {GLASS_FLOOR} in every "
                         f"channel, their {GLASS_BOX_PX} px means flat within "
                         f"{100 * GLASS_MAX_SPREAD:g} %): give the "
                         "background measured on glass (three transmittances, or R,G,B "
                         "levels / 255); if the illumination is uneven (darker corners), "
                         "no glass is flat: correct the image with a blank field first "
                         "(flat_field_correct; qdmed image dab --flat-field)")
    return tuple(float(v) for v in level)


def _background(background, rgb=None) -> np.ndarray:
    """The white level as (3,) transmittances in (0, 1]: one number for all channels, three
    (R, G, B), or 'auto' (:func:`estimate_background` of `rgb`)."""
    if isinstance(background, str):
        if background != "auto" or rgb is None:
            raise InputError(f"background must be 'auto', one transmittance or three (R, G, "
                             f"B) in (0, 1]; got {background!r}.")
        return np.asarray(estimate_background(rgb))
    try:
        bg = np.broadcast_to(np.asarray(background, dtype=np.float64), (3,)).copy()
    except (TypeError, ValueError):
        bg = np.array([np.nan])
    if bg.shape != (3,) or not np.all((bg > 0) & (bg <= 1)):
        raise InputError(f"background must be 'auto', one transmittance or three (R, G, B) "
                         f"in (0, 1]; got {background!r}"
                         + (" (levels 0-255, as QuPath's 'Background', are divided by 255)"
                            if bg.shape == (3,) and np.all(bg > 1) else "") + ".")
    if np.any(bg < MIN_WHITE):
        raise InputError(f"background {background!r} is below {MIN_WHITE:g} in a channel: no "
                         "glass transmits so little light (a level of 0-255 given as a "
                         "transmittance twice divided?); give the glass's transmittance, "
                         "or 'auto'")
    return bg


def _matrix(stain_matrix) -> np.ndarray:
    m = RUIFROK_H_DAB if stain_matrix is None else np.asarray(stain_matrix, dtype=np.float64)
    if m.shape != (3, 3) or not np.all(np.isfinite(m)):
        raise InputError(f"stain_matrix must be a finite (3, 3) array (rows H, DAB, residual); got shape {m.shape}.")
    norms = np.linalg.norm(m, axis=1)
    if not np.all(norms > 0) or abs(np.linalg.det(m / norms[:, None])) < 1e-9:
        raise InputError("stain_matrix is singular; its three rows must be linearly independent.")
    # each row a stain's OD direction, of unit length (Ruifrok & Johnston 2001; QuPath
    # normalises the vectors it is given): rows given as raw ODs (twice the unit vector)
    # scaled every stain's OD and moved the H-score from 179 to 136, unsaid (a review)
    return m / norms[:, None]


@dataclass(frozen=True, eq=False)
class StainSeparation:
    """Stain concentrations (OD units) of a brightfield H-DAB image.

    Attributes
    ----------
    hematoxylin, dab, residual : (Y, X) ndarray of float
        Concentrations such that ``OD = H h + D d + R r`` (h, d, r the unit stain rows).
    stain_matrix : (3, 3) ndarray
    background : (float, float, float)
        Transmittance of each RGB channel taken as unstained glass (1 = pure white).
    clipped : bool
        Whether negative concentrations were set to 0.
    """

    hematoxylin: np.ndarray
    dab: np.ndarray
    residual: np.ndarray
    stain_matrix: np.ndarray
    background: tuple
    clipped: bool

    def to_rgb(self) -> np.ndarray:
        """Reconstruct the RGB image (float in [0, 1]) from the concentrations."""
        conc = np.stack([self.hematoxylin, self.dab, self.residual], axis=-1)
        od = conc @ self.stain_matrix
        return np.clip(np.asarray(self.background) * 10.0 ** (-od), 0.0, 1.0)


def stain_matrix_named(stain_matrix, rgb, background) -> np.ndarray:
    """The stain matrix of ``stain_matrix``: ``'ruifrok'`` (Ruifrok and Johnston's H-DAB
    vectors), ``'macenko'`` (estimated from ``rgb`` against ``background``,
    :func:`estimate_stain_vectors`) or a (3, 3) array (rows made unit length)."""
    if isinstance(stain_matrix, str):
        if stain_matrix == "ruifrok":
            return RUIFROK_H_DAB
        if stain_matrix == "macenko":
            return estimate_stain_vectors(rgb, background=background)
        raise UnknownNameError(f"Unknown stain_matrix {stain_matrix!r}; accepted: 'ruifrok', "
                               "'macenko' or a (3, 3) array.")
    return _matrix(stain_matrix)  # recorded as used: rows of unit length


def deconvolve_dab(rgb, *, stain_matrix=None, background=1.0, clip: bool = True) -> StainSeparation:
    """Separate haematoxylin and DAB by colour deconvolution.

    Parameters
    ----------
    rgb : (Y, X, 3) uint8, uint16 or float in [0, 1]
        Brightfield image.
    stain_matrix : (3, 3) array_like, optional
        Rows = OD vectors of haematoxylin, DAB, residual (each scaled to unit length, as
        QuPath scales the vectors it is given; raw ODs of a stain may be given), or a name:
        ``'ruifrok'`` or ``'macenko'`` (:func:`stain_matrix_named`). Default
        :data:`RUIFROK_H_DAB`; :func:`estimate_stain_vectors` gives an image-specific one.
    background : float, (R, G, B) floats in (0, 1], or 'auto'
        Transmittance of unstained glass (white level) of each channel; 1 for a
        white-balanced image, 'auto' for :func:`estimate_background`. Pixels brighter than
        it read as OD 0.
    clip : bool
        Set negative haematoxylin and DAB concentrations (noise, colours outside the stain
        cone) to 0; the residual (signed, orthogonal to both stains) is never clipped.

    Returns
    -------
    StainSeparation

    Raises
    ------
    InputError
        Bad image, stain matrix or background.

    Notes
    -----
    ``OD_c = -log10(I_c / I0)`` per channel (intensities floored at one level of the
    type: 1/255 for 8-bit images, 1/65535 for 16-bit and float ones), then
    ``C = OD M^-1`` (Ruifrok & Johnston 2001). Unlike :func:`skimage.color.rgb2hed`, the
    output is in base-10 OD units (rgb2hed divides natural-log OD by ``-log(1e-6)``).

    References
    ----------
    .. [1] Ruifrok AC, Johnston DA, "Quantification of histochemical staining by color
       deconvolution", Anal Quant Cytol Histol 23, 291-299 (2001). PMID 11531144.

    Examples
    --------
    >>> import numpy as np
    >>> white = np.ones((2, 2, 3))
    >>> float(deconvolve_dab(white).dab.max())
    0.0
    """
    bg = _background(background, rgb)
    # by name as score_dab takes it (a review's 'ruifrok' met a float conversion error)
    m = _matrix(None if stain_matrix is None else stain_matrix_named(stain_matrix, rgb, bg))
    od = _optical_density(rgb, bg)
    conc = od @ np.linalg.inv(m)
    if clip:
        conc[..., :2] = np.maximum(conc[..., :2], 0.0)
    return StainSeparation(
        hematoxylin=conc[..., 0],
        dab=conc[..., 1],
        residual=conc[..., 2],
        stain_matrix=m.copy(),
        background=tuple(float(v) for v in bg),
        clipped=bool(clip),
    )


#: Macenko estimates checked: the two stains at least this far apart, each within
#: MAX_FROM_REFERENCE_DEG of its published (Ruifrok) vector. One-stain images (DAB-negative
#: tissue) otherwise give a made-up second stain (measured on a haematoxylin-only image:
#: 5 deg apart, the "DAB" 37 deg from DAB's vector).
MIN_STAIN_ANGLE_DEG = 15.0
MAX_FROM_REFERENCE_DEG = 25.0


def _angle_deg(u, v) -> float:
    c = float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))
    return math.degrees(math.acos(min(1.0, max(-1.0, c))))


def estimate_stain_vectors(rgb, *, beta: float = 0.15, alpha: float = 1.0, background=1.0) -> np.ndarray:
    """Estimate H and DAB stain vectors from the image (Macenko et al. 2009).

    Parameters
    ----------
    rgb : (Y, X, 3) uint8, uint16 or float in [0, 1]
    beta : float, OD
        Pixels with OD below ``beta`` in any channel (near-transparent) are ignored.
    alpha : float, percent
        Robust extreme angles are the ``alpha`` and ``100 - alpha`` percentiles.
    background : float, (R, G, B) floats in (0, 1], or 'auto'
        Transmittance of unstained glass (see :func:`deconvolve_dab`).

    Returns
    -------
    (3, 3) ndarray
        Stain matrix (rows H, DAB, residual) for :func:`deconvolve_dab`.

    Raises
    ------
    InputError
        Fewer than 100 stained pixels, bad parameters, or single-stain data: the two
        estimates closer than 15 degrees, or one more than 25 degrees from its published
        vector (the image lacks that stain: use the published vectors).

    Notes
    -----
    The OD vectors of stained pixels lie close to the plane of the two stains: take the
    plane of the two largest eigenvectors of their OD covariance, project, and take the
    directions at the ``alpha`` / ``100 - alpha`` percentiles of the angle as the stain
    vectors. The one with the larger red OD component is haematoxylin (blue-purple absorbs
    red), the other DAB (brown absorbs blue).

    References
    ----------
    .. [1] Macenko M et al., "A method for normalizing histology slides for quantitative
       analysis", Proc. IEEE ISBI 2009, 1107-1110. doi:10.1109/ISBI.2009.5193250
    """
    b = float(beta)
    a = float(alpha)
    if not (b >= 0 and math.isfinite(b)):
        raise InputError(f"beta must be a finite OD >= 0; got {beta!r}.")
    if not 0 <= a < 50:
        raise InputError(f"alpha must be a percentile in [0, 50); got {alpha!r}.")
    bg = _background(background, rgb)
    od = _optical_density(rgb, bg).reshape(-1, 3)
    od = od[np.all(od > b, axis=1)]
    if od.shape[0] < 100:
        raise InputError(f"only {od.shape[0]} pixels have OD > beta={b} in every channel; need >= 100 to estimate stain vectors.")
    _, vecs = np.linalg.eigh(np.cov(od, rowvar=False))
    plane = vecs[:, [2, 1]]  # largest two
    plane *= np.where(plane[0] < 0, -1.0, 1.0)  # point into the positive-OD octant
    proj = od @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, [a, 100.0 - a])
    v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
    v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
    v1, v2 = np.maximum(v1, 0.0), np.maximum(v2, 0.0)  # stain OD vectors are non-negative
    h, d = (v1, v2) if v1[0] / np.linalg.norm(v1) >= v2[0] / np.linalg.norm(v2) else (v2, v1)
    if not (h.any() and d.any()):
        raise InputError("the estimated stain vectors vanish: the image holds one stain; use "
                         "the published vectors (stain_matrix='ruifrok')")
    apart = _angle_deg(h, d)
    off = {name: _angle_deg(v, RUIFROK_H_DAB[i]) for i, (name, v) in
           enumerate((("haematoxylin", h), ("DAB", d)))}
    worst = max(off, key=off.get)
    if apart < MIN_STAIN_ANGLE_DEG or off[worst] > MAX_FROM_REFERENCE_DEG:
        raise InputError(
            f"the stain vectors estimated from this image are {apart:.1f} deg apart, the "
            f"{worst} one {off[worst]:.1f} deg from its published vector (accepted: >= "
            f"{MIN_STAIN_ANGLE_DEG:g} deg apart, each within {MAX_FROM_REFERENCE_DEG:g} deg): "
            "the image probably holds one stain (e.g. DAB-negative tissue); use the published "
            "vectors (stain_matrix='ruifrok') or vectors estimated on stained control tissue")
    return stain_matrix_from_vectors(h, d)


@dataclass(frozen=True)
class DabScore:
    """Per-cell DAB scoring of a brightfield image.

    Attributes
    ----------
    n_cells : int
    percent_0, percent_1plus, percent_2plus, percent_3plus : float
        Percent of the measured cells per DAB class of their ``compartment`` mean OD.
    h_score : float
        ``1 * %1+ + 2 * %2+ + 3 * %3+``.
    od_cutoffs : tuple of 3 float, OD
    compartment : str
    stain_matrix : tuple of tuples
    cells : pandas.DataFrame
        :func:`measure_cells` table (markers ``hematoxylin``, ``DAB``) plus ``dab_class``.
    labels : (Y, X) ndarray of int32
        Cell labels.
    her2 : Her2Score or None
        ASCO/CAP 2018-style HER2 category of the image by :func:`score_her2` (the rule used
        for QD signal) with the OD cut-offs as faint / weak-moderate / intense classes and
        membrane completeness at ``t1``; None unless ``compartment='membrane'``, or no measured
        cells.
    n_unmeasured : int
        Cells without a pixel in ``compartment`` (NaN mean): ``dab_class`` 'unmeasured', left
        out of the percentages and the H-score, as :func:`score_her2` leaves them out.
    nuclear_threshold_od : float
        The smoothed haematoxylin OD nuclei were segmented above (+inf, None in
        :meth:`to_dict`: no nuclei stood out).
    background : (float, float, float)
        The white level (glass transmittance) of each RGB channel used.
    pixel_size_um : float
        The pixel size used (sets the nucleus size limits and the expansion).
    tissue_area_um2 : float or None
        Area of the tissue the nuclear threshold was split from (:func:`tissue_hematoxylin`:
        pixels where some channel absorbs at least :data:`GLASS_OD` against the glass, in
        ``otsu_where`` when given); None when the threshold was given.
    warnings : tuple of str
        E.g. glass that is not white under the default white level.
    qdmed_version : str
    marker : str
        The antigen the DAB stains.
    percent_positive : float, %
        Measured cells at or above ``t1`` (any staining; the Ki-67 index for Ki-67).
    receptor_status : dict or None
        For ER and PR, the ASCO/CAP 2020 status (:func:`qdmed.imaging.receptor_status` with
        the gate at ``t1``, of unknown noise floor: not corrected); None otherwise.
    """

    n_cells: int
    percent_0: float
    percent_1plus: float
    percent_2plus: float
    percent_3plus: float
    h_score: float
    od_cutoffs: tuple[float, float, float]
    compartment: str
    stain_matrix: tuple
    cells: Any = field(repr=False, compare=False)
    labels: Any = field(repr=False, compare=False)
    references: tuple[str, ...] = (_REF_RUIFROK,)
    her2: Any = field(default=None, repr=False, compare=False)
    n_unmeasured: int = 0
    background: tuple = (1.0, 1.0, 1.0)  # white level used, per RGB channel
    pixel_size_um: float | None = None
    warnings: tuple[str, ...] = ()
    qdmed_version: str = ""
    nuclear_threshold_od: float = math.nan  # +inf: no nuclei stood out
    tissue_area_um2: float | None = None  # None: the threshold was given, not split
    marker: str = "HER2"
    #: percent of the measured cells at or above t1 (the Ki-67 index for Ki-67)
    percent_positive: float = math.nan
    #: ER / PR: ASCO/CAP 2020 status (ReceptorStatus.to_dict()), None for other markers
    receptor_status: Any = field(default=None, compare=False)
    #: the nucleus labels the cells grew from (ids as ``labels``)
    nuclei: Any = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of the summary fields (no per-cell table or labels)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)
             if f.name not in ("cells", "labels", "her2", "nuclei")}
        d["her2"] = None if self.her2 is None else self.her2.to_dict()
        d["od_cutoffs"] = list(d["od_cutoffs"])
        d["stain_matrix"] = [list(r) for r in d["stain_matrix"]]
        d["references"] = list(d["references"])
        d["background"] = list(d["background"])
        # as --background and QuPath's 'Background' take it
        d["background_levels_255"] = [round(255.0 * v, 2) for v in d["background"]]
        d["warnings"] = list(d["warnings"])
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}

    def plot(self, rgb=None):
        """The image (``rgb``, the one scored; None: cells only) with each cell's centroid
        coloured by its DAB class, beside the histogram of its DAB OD against the cut-offs."""
        from qdmed.imaging._dab_report import dab_figure

        return dab_figure(None if rgb is None else _rgb(rgb), self.cells, self.od_cutoffs,
                          self.compartment, pixel_size_um=self.pixel_size_um)


#: Example DAB OD cut-offs (the CLI's default), not a calibration: a result scored with
#: them says so (:func:`uncalibrated_warnings`).
EXAMPLE_OD_CUTOFFS = (0.05, 0.15, 0.3)


def uncalibrated_warnings(od_cutoffs) -> list[str]:
    """The warning of a result scored with :data:`EXAMPLE_OD_CUTOFFS`, else none."""
    if tuple(float(v) for v in od_cutoffs) != EXAMPLE_OD_CUTOFFS:
        return []
    return ["the DAB OD cut-offs 0.05, 0.15, 0.3 are the uncalibrated example (the default, "
            "or given equal to it): chromogen OD depends on the protocol and the scanner; "
            "calibrate cut-offs on control tissue and give those (od_cutoffs, --od-cutoffs)"]


def unreachable_cutoff_warnings(od_cutoffs, dtype) -> list[str]:
    """The warning where DAB OD cut-offs lie above the highest OD an image of ``dtype`` can
    hold (``log10`` of its levels: 2.41 for 8 bits; :func:`_floor`): no cell reaches them
    (a review's 5, 15, 30, hundredths typed as ODs, scored a 3+ example 0, unsaid)."""
    top = -math.log10(_floor(dtype))
    over = [f"{v:g}" for v in od_cutoffs if float(v) > top]
    if not over:
        return []
    return [f"DAB OD cut-off(s) {', '.join(over)} lie above the highest OD a "
            f"{np.dtype(dtype)} image holds ({top:.2f}): no cell can reach "
            f"{'them' if len(over) > 1 else 'it'}; chromogen ODs are a few tenths (the "
            "example's 0.05, 0.15, 0.3): were hundredths or percents given?"]


def check_od_cutoffs(od_cutoffs) -> tuple[float, float, float]:
    """DAB OD cut-offs checked: three strictly increasing finite ODs (t1, t2, t3)."""
    try:
        t = tuple(float(x) for x in np.asarray(od_cutoffs, dtype=np.float64).ravel())
    except (TypeError, ValueError):
        t = ()
    if len(t) != 3 or not all(math.isfinite(x) for x in t) or not (0 < t[0] < t[1] < t[2]):
        raise InputError(f"od_cutoffs must be three strictly increasing finite ODs above 0 "
                         f"(t1, t2, t3; at t1 <= 0 no cell could be 0); got {od_cutoffs!r}.")
    return t


def score_dab(
    rgb,
    *,
    od_cutoffs,
    pixel_size_um: float = 0.5,
    stain_matrix="ruifrok",
    compartment: str | None = None,
    marker: str = "HER2",
    expansion_um: float = 5.0,
    membrane_width_um: float = 1.0,
    min_area_um2: float = 10.0,
    max_area_um2: float = 400.0,
    background=1.0,
    check_glass: bool = True,
    nuclear_threshold: str | float = "otsu",
    origin_px: tuple[int, int] = (0, 0),
    glass=None,
    otsu_where=None,
) -> DabScore:
    """Segment cells on haematoxylin and score their DAB OD into 0 / 1+ / 2+ / 3+.

    Parameters
    ----------
    rgb : (Y, X, 3) uint8, uint16 or float in [0, 1]
        Brightfield H-DAB image.
    od_cutoffs : (t1, t2, t3), strictly increasing, OD
        Cell class 1+ for ``t1 <= OD < t2``, 2+ for ``t2 <= OD < t3``, 3+ for ``OD >= t3``.
        Required: chromogen OD depends on protocol and scanner, so no default is shipped;
        calibrate on control tissue.
    pixel_size_um : float, um per pixel
    stain_matrix : 'ruifrok', 'macenko' or (3, 3) array_like
        Published vectors, vectors estimated from this image, or your own.
    compartment : {'membrane', 'cell', 'cytoplasm', 'nucleus'}, optional
        Compartment whose mean DAB OD is scored; default the marker's (membrane for HER2,
        nucleus for ER, PR, AR and Ki67).
    marker : str
        The antigen the DAB stains (:func:`qdmed.imaging.list_markers`). ER and PR get their
        ASCO/CAP 2020 status from the cells at or above ``t1``; any marker its percent
        positive (a single field of ER or Ki-67 was refused from the command line; a review).
    expansion_um, membrane_width_um, min_area_um2, max_area_um2 : float
        Passed to :func:`expand_cells`, :func:`compartments`, :func:`segment_nuclei`.
    background : float, (R, G, B) floats in (0, 1], or 'auto'
        White level (transmittance of glass) of each channel; 'auto' takes it from the
        image's glass (:func:`estimate_background`). A white level given (the default 1
        included) is checked against the image's glass, when it has some: glass reading
        below 0.95 of it in a channel is warned (it then reads as stain), and above 1/0.95
        (the glass clipped, every OD low) too (:func:`glass_warnings`), unless
        ``check_glass`` is False (a slide's regions: checked once on the slide).
    check_glass : bool
        Check a given white level against the glass (see ``background``).
    nuclear_threshold : 'otsu' or float, OD
        Haematoxylin OD (smoothed over 0.5 um) above which a pixel is nucleus: Otsu's
        split of this image's tissue (:func:`tissue_hematoxylin`: glass left out; from a
        :func:`hematoxylin_histogram`, as a slide's regions take it crop by crop; +inf
        when no nuclei stand out), or a value fixed for a whole region so that its tiles
        are segmented alike (:func:`segment_nuclei`'s ``threshold``; +inf finds none).
    glass : float or (R, G, B), optional
        The glass's transmittance, telling glass from tissue for the Otsu split (default
        :func:`glass_level`: the white level when given, else the image's own glass).
    otsu_where : (Y, X) bool array, optional
        With ``nuclear_threshold='otsu'``: the split is taken over the tissue of these
        pixels only (a region's polygon inside its crop); default the whole image.
    origin_px : (y, x), px
        Where this image's first pixel lies on its slide (a tile's corner): touching nuclei
        are split with a tie-breaker of slide coordinates, so that a tile splits them as
        the whole slide would (:func:`segment_nuclei`); centroids stay in this image's
        coordinates.

    Returns
    -------
    DabScore

    Raises
    ------
    InputError
        Bad image or cut-offs.
    UnknownNameError
        Unknown ``stain_matrix`` name or compartment.

    Notes
    -----
    Nuclei: :func:`segment_nuclei` (Otsu + watershed) on the haematoxylin OD; cells: nuclei
    expanded by ``expansion_um``; per-cell means by :func:`measure_cells` with markers
    ``hematoxylin`` and ``DAB`` and membrane completeness thresholded at ``t1``. The H-score
    uses the same three cut-offs (McCarty et al. 1985). DAB is not stoichiometric
    (enzymatic amplification, and dark brown departs from Beer-Lambert), so OD classes are
    semi-quantitative; that is why QD signal is preferred for quantification.
    """
    from qdmed.imaging._cells import COMPARTMENTS, expand_cells, measure_cells, segment_nuclei

    t = check_od_cutoffs(od_cutoffs)
    from qdmed.imaging._slideio import _check_pixel_size

    pixel_size_um = _check_pixel_size(pixel_size_um)
    if pixel_size_um is None:
        raise InputError("pixel_size_um must be a positive number (um per pixel), got None")
    if not (nuclear_threshold == "otsu" or (
            isinstance(nuclear_threshold, int | float | np.floating)
            and not isinstance(nuclear_threshold, bool) and nuclear_threshold >= 0)):
        raise InputError(f"nuclear_threshold must be 'otsu' or a haematoxylin OD >= 0; got "
                         f"{nuclear_threshold!r}.")
    own = dab_antigen_compartment(marker)
    if compartment is None:
        compartment = own
    if compartment not in COMPARTMENTS:
        raise UnknownNameError(f"Unknown compartment {compartment!r}; accepted: {COMPARTMENTS}.")
    range_warnings = dynamic_range_warnings(rgb)
    if range_warnings and isinstance(background, str):  # 'auto' finds no glass: say why
        raise InputError(f"background='auto' reads the white level from the glass, but "
                         f"{range_warnings[0][0].lower()}{range_warnings[0][1:]}")
    bg = _background(background, rgb)  # once: 'auto' reads the glass
    m = stain_matrix_named(stain_matrix, rgb, bg)
    warnings = uncalibrated_warnings(t) + unreachable_cutoff_warnings(
        t, np.asarray(rgb).dtype) + range_warnings
    if check_glass and not isinstance(background, str):
        warnings += glass_warnings(rgb, m, bg)
    sep = deconvolve_dab(rgb, stain_matrix=m, background=bg)
    tissue_um2 = None
    if nuclear_threshold == "otsu":  # on the tissue: glass would pull the split down
        g = glass_level(rgb, background, bg) if glass is None else _background(glass)
        top = hematoxylin_top(m, bg)
        hist = tissue_histogram(rgb, sep, pixel_size_um, g, top, otsu_where)
        nuclear_threshold = histogram_threshold(hist, top)
        tissue_um2 = float(hist[0].sum()) * pixel_size_um ** 2
        if not math.isfinite(nuclear_threshold) and hist[0].sum() >= NO_NUCLEI_WARN_PIXELS:
            warnings.append(no_nuclei_warning(int(hist[0].sum())))
    nuclei = segment_nuclei(
        sep.hematoxylin, pixel_size_um=pixel_size_um, min_area_um2=min_area_um2,
        max_area_um2=max_area_um2, threshold=nuclear_threshold, origin_px=tuple(origin_px))
    cells = expand_cells(nuclei, expansion_um=expansion_um, pixel_size_um=pixel_size_um)
    ab = np.stack([sep.hematoxylin, sep.dab], axis=-1)
    df = measure_cells(
        ab,
        nuclei,
        cells,
        marker_names=["hematoxylin", "DAB"],
        pixel_size_um=pixel_size_um,
        membrane_width_um=membrane_width_um,
        completeness_threshold=t[0],
    )
    vals = np.asarray(df[f"DAB_{compartment}_mean"], dtype=np.float64)
    measured = np.isfinite(vals)  # NaN: the cell has no pixel in this compartment
    klass = np.searchsorted(np.asarray(t), np.where(measured, vals, 0.0), side="right")
    names = np.asarray(("0", "1+", "2+", "3+"), dtype=object)[klass]
    names[~measured] = "unmeasured"
    df["dab_class"] = names
    n = len(df)
    n_measured = int(measured.sum())
    # percentages of the measured cells, as score_her2(nan_policy="omit") counts them
    pct = (100.0 * np.bincount(klass[measured], minlength=4) / n_measured if n_measured
           else np.full(4, np.nan))
    refs = (_REF_RUIFROK, _REF_MACENKO) if isinstance(stain_matrix, str) and stain_matrix == "macenko" else (_REF_RUIFROK,)
    her2 = None
    if compartment == "membrane" and n_measured and marker == "HER2":
        # the same ASCO/CAP rule as for QD signal, with the OD cut-offs as intensity classes
        from qdmed.imaging._her2_calibration import Her2Calibration
        from qdmed.imaging._her2_score import score_her2

        cal = Her2Calibration(faint=t[0], weak_moderate=t[1], intense=t[2], marker="DAB",
                              compartment="membrane", rule="explicit DAB OD cut-offs")
        her2 = score_her2(df, cal, nan_policy="omit")
    return DabScore(
        n_cells=int(n),
        percent_0=float(pct[0]),
        percent_1plus=float(pct[1]),
        percent_2plus=float(pct[2]),
        percent_3plus=float(pct[3]),
        h_score=float(pct[1] + 2 * pct[2] + 3 * pct[3]),
        od_cutoffs=t,
        compartment=compartment,
        stain_matrix=tuple(tuple(float(x) for x in r) for r in sep.stain_matrix),
        cells=df,
        labels=cells,
        references=refs,
        her2=her2,
        n_unmeasured=n - n_measured,
        nuclear_threshold_od=float(nuclear_threshold),
        background=sep.background,
        pixel_size_um=float(pixel_size_um),
        tissue_area_um2=tissue_um2,
        warnings=tuple(warnings),
        qdmed_version=_version(),
        marker=marker,
        percent_positive=float(100.0 - pct[0]) if n_measured else math.nan,
        receptor_status=_receptor_status(df, marker, compartment, t[0]),
        nuclei=nuclei,
    )


def dab_antigen_compartment(marker: str) -> str:
    """The compartment a DAB antigen is scored in (:func:`qdmed.imaging.list_markers`:
    membrane for HER2, nucleus for ER, PR, AR and Ki67...); InputError naming the antigens
    known for one that is not (the counterstain DAPI included)."""
    from qdmed.imaging._synthetic import list_markers

    known = list_markers()
    if marker not in known or marker == "DAPI":
        raise InputError(f"marker {marker!r} is not a DAB antigen qdmed knows; accepted: "
                         f"{', '.join(m for m in known if m != 'DAPI')}")
    return known[marker].compartment


def _receptor_status(cells, marker: str, compartment: str, t1: float):
    """ER / PR status (ASCO/CAP 2020) of DAB-scored cells, positive at or above ``t1``; None
    for other markers or no measured cell."""
    if marker not in ("ER", "PR"):
        return None
    from qdmed.imaging._receptors import receptor_status
    from qdmed.imaging._scoring import MarkerGate

    named = cells.rename(columns={f"DAB_{compartment}_mean": f"{marker}_{compartment}_mean"})
    st = receptor_status(named, {marker: MarkerGate(compartment, t1)}, markers=(marker,))
    return st[marker].to_dict() if marker in st else None


#: Tissue pixels (after glass is left out) from which an image with no nuclei standing out
#: is warned rather than taken as empty.
NO_NUCLEI_WARN_PIXELS = 1000


def no_nuclei_warning(n_tissue: int) -> str:
    """Why an image with tissue gave no cells, and the usual cause."""
    from qdmed.imaging._cells import MIN_OTSU_SEPARATION

    return (f"no nuclei stand out of the haematoxylin of {n_tissue} tissue pixels (Otsu's "
            f"split: its classes must lie {MIN_OTSU_SEPARATION:g} SD apart, or "
            f"{NUCLEAR_MIN_SEPARATION:g} SD and {NUCLEAR_MIN_CONTRAST_OD:g} OD), so no cells "
            "were scored: if the "
            "illumination is uneven (darker corners), the glass there reads as tissue: "
            "correct the image with a blank field (flat_field_correct; qdmed image dab "
            "--flat-field); if the counterstain is faint, give the nuclei's haematoxylin OD "
            "(nuclear_threshold; --nuclear-threshold)")


def dynamic_range_warnings(rgb) -> list[str]:
    """A warning when an image's brightest pixel reads at most a quarter of its type's full
    scale (glass should read near the top): 12- or 14-bit data stored in 16 bits is divided
    by 65535 as if it were 16-bit, and reads as dark stain (a review's gave no cells and a
    warning about uneven light; a second review's 14-bit data, at 16383, were not warned by
    a first version's eighth)."""
    a = np.asarray(rgb)
    if a.size == 0 or a.dtype.kind not in "uif":
        return []
    full = float(np.iinfo(a.dtype).max) if a.dtype.kind in "ui" else 1.0
    top = float(a[..., :3].max())
    if top > full / 4:
        return []
    return [f"the brightest pixel reads {top:g} of the {a.dtype}'s {full:g}: glass should "
            "read near the top, so every pixel reads as dark stain. Data of fewer bits stored "
            "in this type (12-bit in 16: multiply by 16; 14-bit: by 4), or a dark exposure? "
            "Scale it first"]


def glass_warnings(rgb, stain_matrix=None, background=1.0) -> list[str]:
    """A warning when the image's glass (:func:`estimate_background`) reads below
    :data:`GLASS_WARN` of the white level `background` in a channel (it reads as stain), or
    above its inverse (a white level given below the glass: the glass is clipped and every
    OD reads low); none without glass, nor for 'auto' (the glass itself). A review found
    a QuPath background from another scanner (250 for this glass's 236) moved the H-score
    from 179 to 190 unsaid, where the default white was warned."""
    if isinstance(background, str):
        return []
    try:
        glass = np.asarray(estimate_background(rgb))
    except InputError:
        return []  # no glass in view: nothing to check
    white = _background(background)
    ratio = glass / white
    levels = ", ".join(f"{255 * v:.1f}" for v in glass)
    given = ", ".join(f"{255 * v:.1f}" for v in white)
    if ratio.min() < GLASS_WARN:
        od = float(deconvolve_dab(np.array([[ratio]]),
                                  stain_matrix=_matrix(stain_matrix)).dab[0, 0])
        return [f"the glass reads ({levels}) in R, G, B levels 0-255, below the white level "
                f"({given}), so it reads as stain (DAB OD {od:.3f} on glass): give the "
                "glass's level (background='auto', --background auto)"]
    if ratio.max() > 1.0 / GLASS_WARN:
        return [f"the white level ({given}, R, G, B levels 0-255) is below the glass "
                f"({levels}): the glass is clipped and every OD reads low by up to "
                f"{np.log10(ratio.max()):.3f}: give the glass's level (--background auto)"]
    return []


def _version() -> str:
    from qdmed import __version__

    return __version__
