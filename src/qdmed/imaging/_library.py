"""Spectral library from control slides: autofluorescence from an unstained section and each
label's endmember from a single-stain section, as inForm builds its library.

The panel's modelled spectra (QD emission from the optics module integrated over the
detection bands) are a good start, but the detected spectrum of a real conjugate also carries
the filter transmission, the detector's quantum efficiency and the label's batch; measured
endmembers replace the model columns (:meth:`Panel.with_measured`), keeping each column's
scale so that abundances stay comparable.

Estimators (documented assumptions; the result reports how well each measured spectrum agrees
with the model, so a wrong control shows up):

- unstained control: the autofluorescence profile is the mean channel profile of the tissue
  pixels (total intensity above the median) -- :func:`autofluorescence_from_control`;
- single-stain control: the mean profile of the brightest pixels (top 10 % of total intensity)
  minus the autofluorescence they carry. A QD emits in a narrow band, so the channels where
  the label's modelled spectrum is dark hold only autofluorescence: the autofluorescence
  profile is scaled by least squares to the bright pixels' own mean in those channels. Where
  the label's model covers every channel the autofluorescence shows in, the scale is taken
  from the dim tissue instead (25th-50th percentile of intensity among the pixels above the
  10th), which assumes autofluorescence uniform across the control, the label absent from
  most of it, and the field mostly tissue. A large ``background_fraction`` or
  ``clipped_fraction`` is warned.

Controls must be dark-corrected, or the detector offset given (``offset=``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from qdmed.errors import InputError
from qdmed.imaging._detector import check_offset
from qdmed.imaging._panel import Panel, autofluorescence_from_control

__all__ = ["LibraryResult", "control_image", "single_stain_endmember", "spectral_library"]

#: Largest control image (pixels) read at full detail; larger slides are read at the first
#: pyramid level at or below this size (levels are 2x2 means, which keep mean profiles).
MAX_CONTROL_PIXELS = 2048 * 2048


def control_image(control, panel: Panel | None = None, *, name: str = "control") -> np.ndarray:
    """A control as a (Y, X, C) float array: an array, or a slide path / :class:`SlideImage`
    read at the first pyramid level with at most ``MAX_CONTROL_PIXELS`` pixels. With a
    ``panel``, the channels are checked as for an analysed slide (count, and detection bands
    where the slide names them)."""
    return read_control(control, panel, name=name)[0]


def read_control(control, panel: Panel | None = None, *, name: str = "control",
                 saturation_level=None) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """:func:`control_image`, with the control's saturated pixels and its raw-count stats.

    Returns
    -------
    image : (Y, X, C) float64 ndarray
    saturated : (Y, X) bool ndarray or None
        Pixels with a channel at or above the detector's ceiling (an integer type's largest
        value, or ``2**SignificantBits - 1``; :func:`qdmed.imaging._detector.saturation_level`);
        None when the ceiling is unknown (float data). ``saturation_level`` (counts), when
        given, is the ceiling (a 12-bit camera stored as uint16 without metadata saying
        so). On a downsampled pyramid level (found by one pass over the full-resolution
        level: for a whole-slide control, a read of the whole slide), a
        pixel whose full-resolution block holds a saturated pixel (a 2x2 mean hides it).
    stats : dict
        ``min`` (each channel's lowest raw count), ``nonpositive`` (pixels <= 0 per channel)
        and ``n_px``, as :func:`qdmed.imaging._detector.offset_summary` takes them.
    """
    from qdmed.imaging._analyze import check_channels
    from qdmed.imaging._detector import check_level
    from qdmed.imaging._detector import saturation_level as ceiling_of
    from qdmed.imaging._slideio import SlideImage, read_slide, small_level

    given = check_level(saturation_level)
    src = control
    if isinstance(control, (str, bytes)) or hasattr(control, "__fspath__"):
        src = read_slide(control)
    if isinstance(src, SlideImage):
        if panel is not None:
            check_channels(src, panel, reorder=False)
        ceiling, _ = ceiling_of(src.dtype, significant_bits=src.significant_bits, level=given)
        k, step, pick = small_level(src, MAX_CONTROL_PIXELS)
        raw = np.asarray(pick.compute() if hasattr(pick, "compute") else pick)
        saturated = None
        if ceiling is not None:
            saturated = (raw >= ceiling).any(-1) if k == 0 else _block_saturation(
                (src.levels or (src.data,))[0], ceiling, raw.shape[:2], step)
        where = str(src.path)
    else:
        raw = np.asarray(src)
        where = name
        ceiling = ceiling_of(raw.dtype, level=given)[0] if raw.dtype.kind in "uif" else None
        saturated = None if ceiling is None or raw.ndim != 3 else (raw >= ceiling).any(-1)
    img = np.asarray(raw, dtype=np.float64)
    if img.ndim != 3:
        raise InputError(f"{where}: a control image must be (Y, X, C); got shape {img.shape}")
    if panel is not None and img.shape[2] != len(panel.channels):
        raise InputError(f"{where}: the control has {img.shape[2]} channels but the panel has "
                         f"{len(panel.channels)}; give controls acquired with the panel's "
                         f"channels")
    if not np.all(np.isfinite(img)):
        raise InputError(f"{where}: the control contains NaN or infinite values")
    flat = img.reshape(-1, img.shape[2])
    stats = {"min": flat.min(0).tolist() if flat.size else None,
             "nonpositive": (flat <= 0).sum(0).tolist(), "n_px": int(flat.shape[0])}
    return img, saturated, stats


def _block_saturation(level0, ceiling: float, shape_yx, step: int) -> np.ndarray:
    """Saturated pixels of a downsampled pyramid level of `shape_yx` (subsampled by `step`),
    from the full-resolution level: a level pixel is saturated when its block holds a
    saturated pixel (the block: the level-0 pixels it covers, by the size ratio)."""
    import dask.array as da

    sat = (da.asarray(level0) >= ceiling).any(axis=-1)
    fy = max(1, int(round(level0.shape[0] / (shape_yx[0] * step))))
    fx = max(1, int(round(level0.shape[1] / (shape_yx[1] * step))))
    ny, nx = -(-sat.shape[0] // fy) * fy, -(-sat.shape[1] // fx) * fx
    if (ny, nx) != sat.shape:
        sat = da.pad(sat, ((0, ny - sat.shape[0]), (0, nx - sat.shape[1])))
    # chunks whole multiples of the block, as coarsen needs (read once, block by block)
    sat = sat.rechunk((fy * max(1, 2048 // fy), fx * max(1, 2048 // fx)))
    blocks = np.asarray(da.coarsen(np.any, sat, {0: fy, 1: fx}).compute())
    blocks = blocks[::step, ::step]
    out = np.zeros(shape_yx, bool)
    h, w = min(shape_yx[0], blocks.shape[0]), min(shape_yx[1], blocks.shape[1])
    out[:h, :w] = blocks[:h, :w]
    return out


def blind_image(stained, panel: Panel, saturation_level=None
                ) -> tuple[np.ndarray, float | None, np.ndarray | None]:
    """The pixels blind autofluorescence is estimated from, their size in um (None if
    unknown) and which of them are saturated (a channel at the detector's ceiling:
    ``saturation_level`` when given, else the slide's SignificantBits or its type's; None
    when no ceiling is known). An array as given, or from a slide the window of at most
    ``MAX_CONTROL_PIXELS`` with the most signal outside the labels' span, at full
    resolution. Not a downsampled pyramid level, as for the controls: the estimate needs
    blocks smaller than the tissue's structure (measured on a 2048^2 synthetic field at
    0.5 um per pixel: blocks of 4-8 px gave cosine 0.9999 to the rendered spectrum, 16 px
    0.45 and 32 px 0.74; a level 8x down averages 8 px already)."""
    from qdmed.imaging._analyze import check_channels, reference_origin
    from qdmed.imaging._detector import check_level
    from qdmed.imaging._detector import saturation_level as ceiling_of
    from qdmed.imaging._slideio import SlideImage, read_slide

    src = stained
    if isinstance(stained, (str, bytes)) or hasattr(stained, "__fspath__"):
        src = read_slide(stained)
    if not isinstance(src, SlideImage):  # as a control array, saturation from its own dtype
        img, saturated, _ = read_control(src, panel, name="stained",
                                         saturation_level=saturation_level)
        return img, None, saturated
    check_channels(src, panel, reorder=False)
    h, w, _ = src.shape
    side = int(np.sqrt(MAX_CONTROL_PIXELS))
    # the window with the most signal outside the labels' span (autofluorescence), not the
    # most signal (which favours label-rich places, while the estimate needs places lacking
    # each label)
    labels, _ = _label_columns(panel, panel.endmembers)
    q, _ = np.linalg.qr(labels)
    perp = np.eye(labels.shape[0]) - q @ q.T
    y0, x0 = reference_origin(src, side, lambda a: np.linalg.norm(a @ perp, axis=-1))
    img = np.asarray(src.read_region(y0, min(h, y0 + side), x0, min(w, x0 + side)))
    if img.dtype.kind == "f" and not np.all(np.isfinite(img)):
        raise InputError(f"{src.path}: the stained slide contains NaN or infinite values")
    ceiling, _ = ceiling_of(src.dtype, significant_bits=src.significant_bits,
                            level=check_level(saturation_level))
    return img, src.pixel_size_um, None if ceiling is None else (img >= ceiling).any(-1)


#: Channels where the label's modelled spectrum is at most this share of its peak are taken
#: as holding no label (a QD's Gaussian emission falls to 0.3 % of its peak 1.45 FWHM from
#: it, so a label 10 nm off its model still leaves only a few percent there), and used when
#: they hold at least this share of the autofluorescence profile's peak channel.
_LABEL_FREE_SHARE = 0.003
_AF_CHANNEL_SHARE = 0.1
#: Label-free channels whose ratio m_c / a_c lies further than this from the ratios'
#: weighted median are left out of the fit (label where its model says none, or a channel's
#: offset error).
_RATIO_SPREAD = 0.25
#: Above this share of autofluorescence in a single stain's brightest pixels (label-free
#: channels' scale), an error of a few percent in the autofluorescence profile's shape is
#: several times larger in the label's spectrum: warned.
_MAX_BRIGHT_AF_SHARE = 0.8
#: Relative residual of the autofluorescence profile fitted to a single stain's label-free
#: channels above which it is warned as not fitting. Measured on synthetic controls (those
#: of :func:`single_stain_endmember`'s numbers): the rendered profile up to 0.021 (0.004 at
#: 200 photons); the panel's model profile on tissue whose autofluorescence peaks at 575
#: nm 0.59-0.72; a label 10 nm off its model up to 0.33, its tail left out of the fit.
_MAX_AF_MISFIT = 0.1


def _af_in_label_free(mb: np.ndarray, a: np.ndarray, free: np.ndarray
                      ) -> tuple[float, float, float | None, int]:
    """``(s, floor, misfit, n_used)``: the bright mean ``mb`` in the label-free channels
    ``free`` as ``s * a + floor``. With three or more channels a flat floor is fitted with
    ``s`` (an offset error common to all channels, or the read noise that choosing the
    brightest pixels by their total selects: without it, 20-photon controls lost most of
    their channels to the ratio test below and left up to 8 % autofluorescence). The
    channels' ratios ``(mb_c - floor) / a_c`` then all equal ``s`` where they hold
    autofluorescence alone; those further than :data:`_RATIO_SPREAD` from the ratios'
    median (weighted by ``a_c``) are left out (a label's tail where its model has none),
    and ``s`` (and the floor, with three or more left) is fitted to the rest by least
    squares. Light of the label in one of three such channels (its peak 10 nm off its
    model) is left out this way; in two of three (another emitter in the control) it is
    not, and the floor takes it (a review: L1 0.04-0.24 to the label's spectrum at 1-5 % of
    its peak there, warned at 5 % by its clipping). Bounding ``s`` by the smallest of the
    floor-corrected ratios mended that but gave a label 10 nm off its model up to 51 %, so
    it is not done.
    ``misfit`` is the residual's norm over all label-free channels relative to theirs; None
    where it cannot show one (one channel, or none above zero)."""
    af, mf = a[free], mb[free]
    floor = 0.0
    if af.size >= 3:
        floor = float(np.linalg.lstsq(np.c_[af, np.ones(af.size)], mf, rcond=None)[0][1])
    r = (mf - floor) / af
    order = np.argsort(r)
    w = np.cumsum(af[order])
    med = float(r[order][np.searchsorted(w, 0.5 * w[-1])])
    keep = np.abs(r - med) <= _RATIO_SPREAD * abs(med)
    keep[np.argmin(np.abs(r - med))] = True
    if keep.sum() >= 3:
        s, floor = np.linalg.lstsq(np.c_[af[keep], np.ones(int(keep.sum()))], mf[keep],
                                   rcond=None)[0]
    else:  # the first fit's floor kept
        s = float(af[keep] @ (mf[keep] - floor)) / float(af[keep] @ af[keep])
    s = max(0.0, float(s))
    misfit = float(np.linalg.norm(mf - s * af - floor) / np.linalg.norm(mf)) \
        if af.size > 1 and np.any(mf > 0) else None
    return s, float(floor), misfit, int(keep.sum())


def single_stain_endmember(image_yxc, autofluorescence_profile, *, bright_percentile=90.0,
                           valid=None, label_model=None):
    """Endmember of one label (per channel, unit sum) from its single-stain control.

    The label's profile is the mean profile ``m`` of the brightest pixels minus the
    autofluorescence they carry, ``s * a`` (and a flat floor, below). With `label_model`,
    ``s`` is measured in the bright pixels themselves, in the channels F where the label's
    model is dark (at most 0.3 % of its peak) and the autofluorescence is not (at least 10 %
    of its peak channel): a QD emits in a narrow band, so those hold autofluorescence alone,
    ``m_c = s * a_c`` (plus a flat floor, fitted with three or more of them: an offset error
    common to the channels, or the read noise that choosing the brightest pixels by their
    total selects; then subtracted from every channel). Channels whose ratio strays more
    than 25 % from the ratios' median are left out of the least-squares fit
    (:func:`_af_in_label_free`). Neither glass nor grainy autofluorescence nor a label
    expressed everywhere biases this, as they bias the dim tissue's level.

    Measured on synthetic controls (`tests/imaging/test_library.py`; 256^2 px, tissue
    autofluorescence 200 photons a pixel, label 300, 3-count read noise; five Qdot labels):
    the autofluorescence left in the label is within +-1.2 % of its spectrum on full
    tissue, 70 % glass, small cells on glass, pixel-grainy autofluorescence or a label
    everywhere (-1.2 to +2.2 % over ten seeds; the dim-tissue way: 54-78 % on the glass,
    small cells and grain), and so with a 2-count offset error either way or the label's
    model 10 nm off; at a tenth of the photons (20 autofluorescence, 30 label) -7.3 to
    +6.9 % over ten seeds (the dim-tissue way +9 to +78 %).

    Assumed and not checked: the autofluorescence profile's shape is the tissue's (the
    panel's model profile on other tissue leaves 6-133 % for the Qdots, warned through the
    misfit, 0.59-0.72; for DAPI only through its clipping), and the label emits nothing in
    F (see :func:`_af_in_label_free` for light of another emitter there). A label with a
    tail there loses it, unwarned: a DAPI-like spectrum with a red tail (8 % of its peak at
    600 nm) against the panel's narrower DAPI model reads -14.5 %, a Qdot 525 with a
    5 %-of-peak red tail -8 % (the label's spectrum then lacks that share in its tail's
    channels, which the unmixing gives to autofluorescence or a neighbouring label).

    Parameters
    ----------
    image_yxc : (Y, X, C) array
        The single-stain control (label + tissue autofluorescence).
    autofluorescence_profile : (C,) array
        Autofluorescence channel profile (from the unstained control, or the panel model).
    bright_percentile : float
        Pixels above this percentile of total intensity are the label's.
    valid : (Y, X) bool array, optional
        The pixels that may be used (all but the saturated ones: a clipped channel distorts
        the profile). The bright pixels are still chosen among all pixels and the invalid
        ones dropped from them: choosing among the valid pixels alone would take dimmer,
        autofluorescence-rich pixels when the label's brightest all clip (measured on a
        synthetic HER2 control with 11 % of its pixels clipped: cosine to the true spectrum
        0.81 that way, 0.986 keeping the clipped pixels). When more than half of the bright
        pixels are invalid the control cannot be used (InputError: re-acquire it).
    label_model : (C,) array, optional
        The label's modelled profile (the panel's column from the optics model, not a
        measured one), which says which channels are dark to it. Without it, or where it
        leaves no channel with autofluorescence, ``s`` is scaled by least squares to the dim
        tissue's mean profile (25th-50th percentile of the pixels above the field's 10th):
        the field must then be mostly tissue with the label absent from most of it. On a
        control mostly of glass (a pellet, small cores) that reference is glass, and the
        label keeps the tissue's autofluorescence (62 % of it at 70 % glass on a synthetic
        control).

    Returns
    -------
    profile : (C,) ndarray, unit sum
    info : dict
        ``n_pixels`` (bright pixels used), ``background_fraction`` (share of the bright
        pixels' signal attributed to autofluorescence and the floor, and subtracted; within
        0-1), ``clipped_fraction`` (share removed by clipping negative channels to 0),
        ``autofluorescence_scale_from`` (``"N label-free channel(s)"`` or ``"dim tissue"``),
        ``floor`` (counts, subtracted from every channel; 0 the dim-tissue way) and
        ``autofluorescence_misfit``
        (``|m_F - s a_F - floor| / |m_F|`` over the label-free channels: large where the
        autofluorescence profile's shape does not fit this tissue or the label emits where
        its model does not; None the dim-tissue way or with one such channel).

    Raises
    ------
    InputError
        Too few pixels, no contrast between bright and dim pixels, or nothing left after
        removing autofluorescence (the message says which).
    """
    img = np.asarray(image_yxc, dtype=np.float64)
    if img.ndim != 3:
        raise InputError(f"single-stain control must be (Y, X, C); got shape {img.shape}")
    a = np.asarray(autofluorescence_profile, dtype=np.float64)
    if a.shape != (img.shape[2],) or np.any(a < 0) or not a.sum() > 0:
        raise InputError(f"autofluorescence_profile must be {img.shape[2]} non-negative values, "
                         f"not all zero; got {autofluorescence_profile!r}")
    free = None
    if label_model is not None:
        lm = np.asarray(label_model, dtype=np.float64)
        if lm.shape != a.shape or not np.all(np.isfinite(lm)) or np.any(lm < 0) or \
                not lm.max() > 0:
            raise InputError(f"label_model must be {a.shape[0]} non-negative values, not all "
                             f"zero; got {label_model!r}")
        free = (lm <= _LABEL_FREE_SHARE * lm.max()) & (a >= _AF_CHANNEL_SHARE * a.max())
        if not free.any():
            free = None
    if not 50.0 <= bright_percentile < 100.0:
        raise InputError(f"bright_percentile must be in [50, 100); got {bright_percentile!r}")
    if not np.all(np.isfinite(img)):
        raise InputError("single-stain control contains NaN or infinite values")
    pix = img.reshape(-1, img.shape[2])
    ok = np.ones(img.shape[:2], bool) if valid is None else np.asarray(valid, dtype=bool)
    if ok.shape != img.shape[:2]:
        raise InputError(f"single-stain control: valid must be a (Y, X) mask of the image's "
                         f"shape {img.shape[:2]}; got {ok.shape}")
    ok = ok.ravel()
    tot = pix.sum(1)
    top = tot >= np.percentile(tot, bright_percentile)
    bright = top & ok
    if bright.sum() < 0.5 * top.sum():
        raise InputError(f"{100 * (1 - bright.sum() / top.sum()):.0f} % of the control's "
                         "brightest pixels (those that define the label's spectrum) are "
                         "saturated: re-acquire it with a shorter exposure")
    tissue = tot > np.percentile(tot, 10.0)
    lo, hi = np.percentile(tot[tissue], [25.0, 50.0]) if tissue.any() else (0.0, 0.0)
    dim = tissue & (tot >= lo) & (tot <= hi) & ok
    if bright.sum() < 10 or dim.sum() < 10:
        raise InputError("single-stain control has too few pixels (need >= 10 bright and 10 dim "
                         "tissue pixels)")
    mb, md = pix[bright].mean(0), pix[dim].mean(0)
    if not mb.sum() > 1.5 * md.sum():
        raise InputError(f"single-stain control shows no label: its brightest pixels are only "
                         f"{mb.sum() / max(md.sum(), 1e-12):.2f}x the dim tissue (need > 1.5x)")
    if free is not None:  # AF scaled to the bright pixels' own label-free channels
        alpha, floor, misfit, n = _af_in_label_free(mb, a, free)
        scale_from = f"{n} label-free channel{'s' if n > 1 else ''}"
    else:  # AF scaled to the dim tissue, least squares
        alpha, floor, misfit = max(0.0, float(a @ md) / float(a @ a)), 0.0, None
        scale_from = "dim tissue"
    raw = mb - alpha * a - floor
    prof = np.clip(raw, 0.0, None)
    if not prof.sum() > 0:
        raise InputError("single-stain control: nothing is left after removing "
                         "autofluorescence")
    # signal removed by clipping: AF over-subtracted where the label is widespread (the dim
    # pixels then hold label too) or the AF profile does not fit this tissue
    clipped = float(-raw[raw < 0].sum() / mb.sum()) + 0.0  # + 0.0: never -0.0
    return prof / prof.sum(), {"n_pixels": int(bright.sum()),
                               "n_bright_left_out": int(top.sum() - bright.sum()),
                               # the floor too is no label (kept within 0-1 for the share)
                               "background_fraction": float(np.clip(
                                   (alpha * a.sum() + floor * a.size) / mb.sum(), 0.0, 1.0)),
                               "clipped_fraction": clipped,
                               "autofluorescence_scale_from": scale_from,
                               "floor": floor,
                               "autofluorescence_misfit": misfit}


@dataclass(frozen=True)
class LibraryResult:
    """A panel with measured endmembers, and how each measured spectrum compares with the model.

    Attributes
    ----------
    panel : Panel
        The input panel with the measured columns (``panel.measured``).
    components : dict
        Per measured component: ``source``, ``n_pixels``, ``cosine_to_model`` (1 = same shape as
        the modelled column) and, for single stains, the ``info`` of
        :func:`single_stain_endmember` (``background_fraction``, ``clipped_fraction``,
        ``autofluorescence_scale_from``, ``floor``, ``autofluorescence_misfit``).
    model : ndarray (C, K)
        The endmembers before measurement, for comparison.
    warnings : tuple of str
    """

    panel: Panel
    components: dict
    model: np.ndarray = field(repr=False)
    warnings: tuple = ()

    def to_dict(self) -> dict:
        return {"components": self.components, "warnings": list(self.warnings),
                "panel": self.panel.to_dict()}

    def plot(self):
        """Model (dashed) and measured (solid) channel profiles of the measured components."""
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3.5))
        centres = [0.5 * (lo + hi) for lo, hi in self.panel.channels]
        new = self.panel.endmembers
        for i, name in enumerate(self.components):
            j = self.panel.components.index(name)
            ax.plot(centres, self.model[:, j] / self.model[:, j].sum(), "--", color=f"C{i}")
            ax.plot(centres, new[:, j] / new[:, j].sum(), "-o", color=f"C{i}", ms=3,
                    label=f"{name} (cos {self.components[name]['cosine_to_model']:.3f})")
        ax.set_xlabel("detection channel centre (nm)")
        ax.set_ylabel("fraction of signal")
        ax.set_title("Spectral library: measured (solid) vs model (dashed)")
        ax.legend(fontsize=7, frameon=False)
        fig.tight_layout()
        return fig


_BLIND_ROUNDS = 4  # alternations of blind autofluorescence and single stains, at most
_BLIND_SETTLED = 1e-4  # 1 - cosine between two rounds' autofluorescence: settled below this
_BLIND_BLOCK_UM = 2.0  # blind autofluorescence blocks: 2 um (4 px at 0.5 um per pixel)


def _label_columns(panel: Panel, endmembers: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """The columns of `endmembers` (laid out as the panel's components) that are labels,
    i.e. all but autofluorescence, and their names."""
    keep = [i for i, c in enumerate(panel.components) if c != "autofluorescence"]
    return endmembers[:, keep], [panel.components[i] for i in keep]


def _blind(img: np.ndarray, panel: Panel, endmembers: np.ndarray, source: str,
           pixel_size_um: float | None = None, valid: np.ndarray | None = None):
    """Blind autofluorescence of a stained image with the labels' columns of `endmembers`,
    in blocks of ~2 um where the pixel size is known (else 4 px); blocks holding a pixel
    outside `valid` (saturated ones) are left out."""
    from qdmed.imaging._blind_af import autofluorescence_blind

    labels, names = _label_columns(panel, endmembers)
    # pixel sizes outside 0.05-5 um are not a microscope's (e.g. a TIFF's default 72 dpi)
    known = pixel_size_um is not None and 0.05 <= pixel_size_um <= 5.0
    block = max(1, int(round(_BLIND_BLOCK_UM / pixel_size_um))) if known else 4
    try:
        prof, info = autofluorescence_blind(img, labels, label_names=names, block_px=block,
                                            valid=valid)
    except InputError as exc:
        raise InputError(f"stained slide ({source.removeprefix('blind: ')}): {exc}") from None
    return prof, {"source": source, "n_pixels": info["n_blocks"] * info["block_px"] ** 2,
                  **info}


def stained_saturation(saturated: np.ndarray | None,
                       source: str) -> tuple[list[str], np.ndarray | None]:
    """The pixels the blind estimate may use (those not `saturated`, as :func:`blind_image`
    found them; None when no ceiling is known), and a warning when more than
    :data:`WARN_PERCENT_SATURATED` % of them are saturated. The blind estimate leaves the
    blocks holding a saturated pixel out (a clipped channel bends a block's spectrum)."""
    if saturated is None:
        return [], None
    pct = float(100.0 * saturated.mean()) if saturated.size else 0.0
    if not pct > WARN_PERCENT_SATURATED:
        return [], ~saturated
    return [f"stained slide ({source}): {pct:.2g} % of the pixels the blind estimate reads "
            "reach the detector's ceiling; the blocks holding them are left out of the "
            "estimate (a clipped channel distorts their spectra), which leaves it fewer "
            "places: an unstained control, or a slide exposed without saturation, is "
            "better"], ~saturated


#: Percent of a control's pixels at the detector's ceiling above which the library warns
#: (they are left out either way).
WARN_PERCENT_SATURATED = 0.1


def _control(control, panel: Panel, name: str, src: str, off, warnings: list, level=None):
    """A control read for the library: (image minus the offset, saturated mask or None,
    checks), its saturation and offset problems appended to `warnings`. ``checks`` holds
    ``percent_saturated`` (pixels left out) and ``offset_issue`` (see
    :func:`qdmed.imaging._detector.offset_summary`)."""
    from qdmed.imaging._detector import offset_summary

    img, sat, stats = read_control(control, panel, name=name, saturation_level=level)
    pct = None if sat is None else float(100.0 * sat.mean()) if sat.size else 0.0
    if pct is not None and pct > WARN_PERCENT_SATURATED:
        warnings.append(f"{name} control ({src}): {pct:.2g} % of its pixels reach the "
                        "detector's ceiling and are left out; a control for the library "
                        "should be exposed without saturation (the brightest pixels, which "
                        "define a label's spectrum, are the likeliest to clip)")
    given = None if np.isscalar(off) else np.asarray(off)
    summ = offset_summary(stats, given, panel.channel_names)
    for w in summ["warnings"]:
        warnings.append(f"{name} control ({src}): {w}")
    return img - off, sat, {"percent_saturated": pct, "offset_issue": summ["issue"]}


#: An unstained control's tissue pixels share one spectrum: beyond its first principal
#: direction (uncentred) their variance is noise, which :func:`_unstained_excess` measures
#: against the detector's own noise (photon transfer from neighbouring pixels, so the gain
#: cancels). Measured on synthetic controls at 100 and 1000 photons per unit, gain 1 and 16:
#: unstained 0.51-0.55; stained slides given as unstained 3.7-123 (luminal-A and
#: HER2-enriched); single stains 1.2-12. Warned above this.
_MAX_UNSTAINED_EXCESS = 2.0
#: Median of a chi-square variable with one degree of freedom: the median of d^2 / (2 var)
#: for a Gaussian difference d of two pixels of variance var each.
_CHI2_1_MEDIAN = 0.45493642311957283


def _unstained_excess(img: np.ndarray, valid) -> float | None:
    """Variance of the tissue pixels (above the median total) beyond their first principal
    direction, over the noise variance the detector gives them: ``gain * sum(mean counts)``,
    the gain from horizontally neighbouring pixels (the median of ``d^2 / (a + b)`` over
    neighbours ``a``, ``b`` with ``d = a - b``, over the chi-square median: Poisson counts
    times the gain have variance gain x mean; tissue structure between neighbours makes it
    an overestimate, measured 1.5-2.2x, so the excess errs low)."""
    y = img.astype(np.float64)
    d = y[:, 1:] - y[:, :-1]
    tot = y[:, 1:] + y[:, :-1]
    ok = tot > 0
    if ok.sum() < 100:
        return None
    gain = float(np.median(d[ok] ** 2 / tot[ok]) / _CHI2_1_MEDIAN)
    pix = y.reshape(-1, y.shape[-1])
    if valid is not None:
        pix = pix[np.asarray(valid).ravel()]
    s = pix.sum(1)
    sel = pix[s > np.percentile(s, 50.0)] if pix.size else pix
    noise = gain * float(np.clip(sel.mean(0), 0, None).sum()) if sel.shape[0] >= 20 else 0.0
    if not noise > 0:
        return None
    w = np.linalg.eigvalsh(sel.T @ sel / sel.shape[0])
    return float((w.sum() - w[-1]) / noise)


def _resolved(path) -> str:
    try:
        return str(Path(path).resolve())
    except (OSError, RuntimeError, TypeError):
        return str(path)


def _cos(u, v) -> float:
    return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))


#: An unstained control's dim and bright tissue share one spectrum (autofluorescence varies
#: in amount, not in colour): :func:`_dim_bright` compares their mean spectra. Measured on
#: synthetic BT474 controls (256^2-1024^2): unstained 0.9986-0.99999 (with 70 % glass and
#: a subtracted offset, or 50 photons per unit); HER2-only 0.72-0.75, ER-only 0.58 (the HER2
#: control's excess over one spectrum, 1.0x, had missed it: its bright pixels are nearly
#: all label). Warned below this.
_MIN_UNSTAINED_COSINE = 0.98
#: The part of the bright tissue's spectrum that the dim tissue's lacks, against each label
#: spectrum: at or above this cosine the control is said to hold that label.
_STAIN_COSINE = 0.9


def _dim_bright(img: np.ndarray, valid) -> tuple[float, np.ndarray, np.ndarray] | None:
    """Cosine between the mean spectra of the dimmer half of the tissue and of its brightest
    tenth, the bright spectrum's part orthogonal to the dim one (unit norm; zero when they
    are parallel), and the dim spectrum (unit norm). Places are ranked, and told from glass,
    by their total smoothed over 7 x 7 px (a pixel's own total would let glass read noise
    pass for dim tissue): tissue above a fifth of the 99th percentile; `valid` pixels only.
    None with fewer than 1000 tissue pixels."""
    from scipy import ndimage as ndi

    tot = ndi.uniform_filter(img.sum(-1, dtype=np.float64), 7, mode="nearest")
    ok = np.ones(tot.shape, bool) if valid is None else np.asarray(valid)
    if int(ok.sum()) < 1000:
        return None
    tissue = ok & (tot > 0.2 * np.percentile(tot[ok], 99.0))
    if int(tissue.sum()) < 1000:
        return None
    tt = tot[tissue]
    lo, hi = np.percentile(tt, [50.0, 90.0])
    pix = img[tissue].astype(np.float64)
    dim, bright = pix[tt <= lo].mean(0), pix[tt >= hi].mean(0)
    nd, nb = np.linalg.norm(dim), np.linalg.norm(bright)
    if not (nd > 0 and nb > 0):
        return None
    extra = bright / nb - (bright @ dim / (nb * nd)) * dim / nd
    ne = np.linalg.norm(extra)
    return float(bright @ dim / (nb * nd)), (extra / ne if ne > 0 else extra), dim / nd


#: A single stain's brightest pixels holding more than this share of counterstain signal
#: have it removed first (:func:`remove_counterstain`).
COUNTERSTAIN_SHARE = 0.05
#: A single stain's measured spectrum at least this close (cosine) to another label's
#: model, and below :data:`OWN_LABEL_COSINE` to its own, is the wrong control: refused
#: (another QD's control measures 0.99-1.00; the noise left of an unstained section given
#: as a single stain measured 0.91 to a label by chance: warned as unlike its model).
WRONG_CONTROL_COSINE = 0.97
OWN_LABEL_COSINE = 0.5


def remove_counterstain(img: np.ndarray, label: np.ndarray, stain: np.ndarray,
                        autofluorescence: np.ndarray, bright_percentile: float = 90.0
                        ) -> tuple[np.ndarray, float | None]:
    """A single-stain control less its counterstain. The counterstain's abundance in each
    pixel is fitted (NNLS, with the autofluorescence) on the channels where the label's
    model is dark (at most 1 % of its peak): there the label, whatever its batch's exact
    spectrum, adds nothing, so only a counterstain that is there is found. Where it holds
    more than :data:`COUNTERSTAIN_SHARE` of the brightest pixels' signal (those above
    ``bright_percentile`` of the total, as :func:`single_stain_endmember` ranks them), its
    part (abundance times profile) is subtracted from every channel. Returns the image (the
    input itself when nothing is removed) and that share (None when it cannot be told: an
    image of no signal, or fewer than two label-dark channels, or the counterstain barely
    in them).

    Measured on synthetic BT474 single stains of the 5-plex panel, each label's batch 7 nm
    bluer to 7 nm redder than its model: counterstain-free 0.007-0.038, with DAPI
    0.109-0.906 (a fit on every channel had found 0.085 of DAPI in a counterstain-free
    Qdot 525 stain 7 nm bluer, a review: the label's shift taken for DAPI)."""
    from qdmed.imaging._nnls import unmix_nnls

    a = np.asarray(img, dtype=np.float64)
    pix = a.reshape(-1, a.shape[-1])
    lab, cs, af = (np.asarray(v, dtype=np.float64) for v in (label, stain, autofluorescence))
    dark = lab <= 0.01 * lab.max()
    if dark.sum() < 2 or not cs[dark].max(initial=0.0) >= 0.25 * cs.max():
        return img, None
    x = unmix_nnls(np.clip(pix[:, dark], 0.0, None), np.stack([cs[dark], af[dark]], axis=1))
    tot = pix.sum(1)
    bright = tot >= np.percentile(tot, bright_percentile)
    signal = float(np.clip(pix[bright], 0.0, None).sum())
    if not signal > 0:
        return img, None
    part = x[:, :1] * cs[None, :]
    share = float(part[bright].sum() / signal)
    if share <= COUNTERSTAIN_SHARE:
        return img, share
    return (pix - part).reshape(a.shape), share


def _refuse_wrong_controls(panel: Panel, model: np.ndarray, profs: dict, stains: dict,
                          infos: dict) -> None:
    """InputError for a single stain whose measured spectrum is another label's model (the
    wrong section given, or two markers swapped): a microscopist's ER control given as
    HER2's was written with a warning (cosine 0.024 to HER2's model), and the analysis with
    it read HER2 at 0.003 of its truth, its fit 0.0 %. A control whose brightest pixels are
    mostly autofluorescence (``background_fraction`` above 0.9: no label at all) is left to
    the warnings."""
    labels = [(n, j) for j, n in enumerate(panel.components) if n != "autofluorescence"]
    for name, prof in profs.items():
        own = _cos(model[:, panel.components.index(name)], prof)
        if own >= OWN_LABEL_COSINE or infos[name]["background_fraction"] > 0.9:
            continue
        other = max(((_cos(model[:, j], prof), n) for n, j in labels if n != name),
                    default=(0.0, None))
        if other[1] is not None and other[0] >= WRONG_CONTROL_COSINE:
            lab = dict(zip(panel.markers, panel.labels, strict=False))
            raise InputError(
                f"{name} single-stain control ({stains[name][0]}): its label's spectrum is "
                f"{other[1]}'s ({lab.get(other[1], other[1])}, cosine {other[0]:.2f}), not "
                f"{name}'s ({lab.get(name, name)}, cosine {own:.2f}): the wrong control, or "
                f"two markers swapped? Give {name}'s own single stain")


def spectral_library(panel: Panel, *, unstained=None, stained=None, single_stains=None,
                     bright_percentile: float = 90.0, min_cosine: float = 0.95,
                     offset=0.0, saturation_level=None, progress: bool = False,
                     counterstain: str | None = "DAPI") -> LibraryResult:
    """Measure endmembers from controls and return the panel with them.

    Parameters
    ----------
    panel : Panel
    unstained : array (Y, X, C), slide path or SlideImage, optional
        An unstained section of the same tissue type: the autofluorescence endmember.
    stained : array (Y, X, C), slide path or SlideImage, optional
        Without an unstained control: a stained slide from which the autofluorescence
        endmember is estimated blindly, given the label spectra
        (:func:`qdmed.imaging.autofluorescence_blind`: needs more channels than labels, and
        autofluorescent tissue lacking each label; a slide is read at full resolution, in
        the window of at most ``MAX_CONTROL_PIXELS`` with the most signal, see
        :func:`blind_image`; its diagnostics go to ``components`` and
        its warnings to ``warnings``). With single stains too, the autofluorescence is
        estimated with the model labels, the single stains measured with it, and the two
        alternated until the autofluorescence settles (at most four rounds; ``rounds`` and
        ``last_change`` in its component entry, a warning if it did not settle).
    single_stains : mapping component name -> array, path or SlideImage, optional
        One single-stain section per label (e.g. ``{"HER2": "her2_only.ome.zarr"}``).
    bright_percentile : float
        See :func:`single_stain_endmember`.
    min_cosine : float
        Measured label spectra whose cosine with the model column is below this get a
        warning (not autofluorescence, whose default model is only a rough guess). On the
        default 8-band detector a QD spectrum 6, 10 and 20 nm off its model gives 0.989,
        0.977 and 0.905 (a review): 0.95 lets lot-to-lot peak differences of ~10 nm pass
        and warns of a neighbouring QD mistaken for the label (0.9 let a Qdot 545 pass
        for a Qdot 525).
    offset : float or (C,) floats, counts
        Detector dark level subtracted from every control first (the estimators assume
        dark-corrected images: an uncorrected offset adds a flat spectrum to every profile).
        A floor left in every channel of a control is warned as an uncorrected offset.
    saturation_level : float, optional, counts
        The detector's ceiling when the files do not say it (a 12-bit camera stored as
        uint16); else an integer type's largest value or ``2**SignificantBits - 1``. Pixels
        with a channel at the ceiling are left out of every estimate (``percent_saturated``
        per control; warned above 0.1 %).
    progress : bool
        A progress bar on stderr, one step per control read (a 2048^2 control takes
        seconds).
    counterstain : str or None
        The panel's nuclear counterstain, which single-stain sections often carry too (a
        HER2 single stain counterstained with DAPI, to find the cells): where a control
        holds it (more than :data:`COUNTERSTAIN_SHARE` of its brightest pixels' signal),
        it is removed pixel by pixel with its model spectrum, its abundance fitted in the
        channels where the label is dark (:func:`remove_counterstain`), before the label is
        measured, and said (``counterstain_share`` per component). A
        microscopist's DAPI-counterstained ER control had measured ER at cosine 0.66 to
        its model and the analysis then found 63 cells of 203, unsaid. None: never
        removed. Ignored when the panel lacks it.

    Returns
    -------
    LibraryResult

    Raises
    ------
    InputError
        No control given, both an unstained and a stained slide, a name that is not a panel
        component, an unstained or stained slide for a panel without autofluorescence,
        channel-count mismatch, a control without signal, or a single stain whose measured
        spectrum is another label's (cosine to it at least :data:`WRONG_CONTROL_COSINE`,
        to its own label's below :data:`OWN_LABEL_COSINE`: the wrong control).

    Examples
    --------
    >>> import numpy as np
    >>> from qdmed.imaging import breast_panel_5plex
    >>> p = breast_panel_5plex()
    >>> af = p.endmembers[:, -1]
    >>> img = np.random.default_rng(0).poisson(50 * af / af.sum() * 8, (64, 64, 8))
    >>> r = spectral_library(p, unstained=img)
    >>> r.components["autofluorescence"]["cosine_to_model"] > 0.99
    True
    """
    from qdmed.imaging._analyze import _progress

    single_stains = _check_controls(panel, unstained, stained, single_stains)
    n = (unstained is not None) + (stained is not None) + len(single_stains)
    with _progress(progress, n, 0, "controls") as advance:  # after the checks: errors alone
        return _spectral_library(panel, unstained, stained, single_stains, bright_percentile,
                                 min_cosine, offset, saturation_level, advance, counterstain)


def _check_controls(panel: Panel, unstained, stained, single_stains) -> dict:
    """The single stains as a dict, after the checks that need no control read."""
    if panel.unmixed:
        raise InputError("an already-unmixed panel has no spectra to measure from controls: "
                         "its image channels are the components")
    single_stains = dict(single_stains or {})
    if unstained is None and stained is None and not single_stains:
        raise InputError("give an unstained control (or a stained slide for blind "
                         "autofluorescence), single-stain controls, or both")
    if unstained is not None and stained is not None:
        raise InputError("give either an unstained control or a stained slide for the "
                         "autofluorescence, not both (the unstained control is the direct "
                         "measurement)")
    if "autofluorescence" not in panel.components:
        if unstained is not None:
            raise InputError("the panel has no autofluorescence component to measure; add one "
                             "to the panel before giving an unstained control")
        if stained is not None:
            raise InputError("the panel has no autofluorescence component to estimate; add "
                             "one to the panel before giving a stained slide")
    seen: dict = {}  # one control for two labels: each label needs its own section
    for name, ctrl in single_stains.items():
        if name not in panel.components or name == "autofluorescence":
            raise InputError(f"single-stain control {name!r} is not a marker of the panel; "
                             f"markers: {[m for m in panel.components if m != 'autofluorescence']}")
        key = ("array", id(ctrl)) if hasattr(ctrl, "shape") else ("path", _resolved(ctrl))
        if key in seen:
            raise InputError(f"the single-stain control {ctrl if key[0] == 'path' else ''}"
                             f"{'' if key[0] == 'path' else '(one array)'} is given for "
                             f"both {seen[key]} and {name}: each label needs its own "
                             "single-stain section")
        seen[key] = name
    return single_stains


def _spectral_library(panel, unstained, stained, single_stains, bright_percentile,
                      min_cosine, offset, saturation_level, advance,
                      counterstain=None) -> LibraryResult:
    """:func:`spectral_library`'s work (its arguments checked by :func:`_check_controls`),
    calling ``advance()`` as each control is read."""
    c = len(panel.channels)
    off = check_offset(offset, c)
    if off is None:
        off = 0.0
    model = panel.endmembers
    comps: dict = {}
    measured: dict = {}
    warnings = []
    if "autofluorescence" in panel.components:
        af_prof = model[:, panel.components.index("autofluorescence")]
        af_prof = af_prof / af_prof.sum()
        af_source = "panel model"
    else:
        af_prof, af_source = None, None
    if unstained is not None:
        af_source = str(unstained) if not hasattr(unstained, "shape") else "array"
        img, sat, checks = _control(unstained, panel, "unstained", af_source, off, warnings,
                                    saturation_level)
        try:
            af_prof = autofluorescence_from_control(img, valid=None if sat is None else ~sat,
                                                    channel_names=panel.channel_names)
        except InputError as exc:
            raise InputError(f"unstained control ({af_source}): {exc}") from None
        tot = img.sum(-1) if sat is None else img[~sat].sum(-1)
        measured["autofluorescence"] = af_prof
        from qdmed.imaging._blind_af import angle_to_span

        q, _ = np.linalg.qr(_label_columns(panel, model)[0])
        angle = angle_to_span(af_prof, q)
        excess = _unstained_excess(img, None if sat is None else ~sat)
        db = _dim_bright(img, None if sat is None else ~sat)
        bright_cos = None if db is None else db[0]
        advance()
        comps["autofluorescence"] = {"source": af_source,
                                     "n_pixels": int((tot > np.percentile(tot, 50.0)).sum()),
                                     "angle_to_labels_deg": angle,
                                     "excess_over_one_spectrum": excess,
                                     "dim_bright_cosine": bright_cos, **checks}
        if excess is not None and excess > _MAX_UNSTAINED_EXCESS:
            warnings.append(
                f"unstained control ({af_source}): its pixels vary in spectrum {excess:.1f}x "
                "the detector's noise around one spectrum (unstained sections: ~0.5x): it "
                "looks stained (labels in places), and the autofluorescence measured from it "
                "holds labels")
        elif bright_cos is not None and bright_cos < _MIN_UNSTAINED_COSINE:
            labels, names = _label_columns(panel, model)
            # against each label's part orthogonal to the dim spectrum, as the extra part is
            perp = labels - np.outer(db[2], db[2] @ labels)
            cos = [float(db[1] @ c / np.linalg.norm(c)) if np.linalg.norm(c) > 0 else 0.0
                   for c in perp.T]
            best = int(np.argmax(cos)) if cos else -1
            differs = (f"unstained control ({af_source}): its brightest tissue differs in "
                       f"spectrum from its dimmer half (cosine {bright_cos:.3f} < "
                       f"{_MIN_UNSTAINED_COSINE}; unstained sections: ~1)")
            if best >= 0 and cos[best] >= _STAIN_COSINE:
                warnings.append(
                    f"{differs}, by a spectrum like {names[best]}'s (cosine "
                    f"{cos[best]:.2f}): it looks stained (a single-stain control?), and the "
                    "autofluorescence measured from it holds that label")
            else:
                warnings.append(
                    f"{differs}, by no label's spectrum: its autofluorescence is not one "
                    "spectrum (bright places of another colour, e.g. red cells or "
                    "lipofuscin), or a detector offset is left in it; the autofluorescence "
                    "measured is the tissue's mean")
    blind_img = None
    if stained is not None:
        af_source = "blind: " + (str(stained) if not hasattr(stained, "shape") else "array")
        blind_img, blind_px, blind_sat = blind_image(stained, panel, saturation_level)
        advance()
        clipped, blind_valid = stained_saturation(blind_sat, af_source.removeprefix("blind: "))
        warnings += clipped
        blind_img = blind_img - off
        try:
            af_prof, info = _blind(blind_img, panel, model, af_source, blind_px,
                                   blind_valid)
            measured["autofluorescence"] = af_prof
            comps["autofluorescence"] = info
        except InputError:
            if not single_stains:
                raise
            # the model's label spectra may be what fails: the single stains are measured
            # with the panel's model autofluorescence first, and the blind estimate is made
            # with the measured labels below (its error is raised if that fails too)
    stains = {}
    for name, ctrl in single_stains.items():
        src = str(ctrl) if not hasattr(ctrl, "shape") else "array"
        stains[name] = (src, *_control(ctrl, panel, name, src, off, warnings,
                                       saturation_level))
        advance()

    optics = replace(panel, measured=()).endmembers if panel.measured else model

    def measure_stains(af):
        """Each single stain's profile with `af` removed: (profiles, infos, warnings)."""
        profs, infos, warns = {}, {}, []
        # without any autofluorescence profile the dim-tissue baseline is taken as flat
        bg = af if af is not None else np.full(c, 1.0 / c)
        for name, (src, img, sat, checks) in stains.items():
            # the label's optics model tells its dark channels (not a column measured before,
            # whose residue would narrow them); a flat baseline is no AF profile
            lm = optics[:, panel.components.index(name)] if af is not None else None
            share = None
            if lm is not None and counterstain in panel.components and name != counterstain:
                img, share = remove_counterstain(
                    img, lm, optics[:, panel.components.index(counterstain)], bg,
                    bright_percentile)
                if share is not None and share > COUNTERSTAIN_SHARE:
                    warns.append(
                        f"{name}: its control ({src}) holds the counterstain {counterstain} "
                        f"too ({100 * share:.0f} % of its brightest pixels' signal): removed "
                        f"pixel by pixel with {counterstain}'s model spectrum before "
                        f"{name}'s was measured (a single stain without counterstain needs "
                        "no such model)")
            try:
                prof, info = single_stain_endmember(img, bg, bright_percentile=bright_percentile,
                                                    valid=None if sat is None else ~sat,
                                                    label_model=lm)
            except InputError as exc:
                raise InputError(f"{name} single-stain control ({src}): {exc}") from None
            profs[name] = prof
            infos[name] = {"source": src, **info, **checks, "counterstain_share": share,
                           "autofluorescence_from": af_source or "none (uniform baseline)"}
            bf, cf = info["background_fraction"], info["clipped_fraction"]
            if info["autofluorescence_scale_from"] != "dim tissue":
                # measured in the bright pixels' own label-free channels: neither glass nor a
                # widespread label biases it; the autofluorescence profile's shape can, which
                # the misfit there shows (where it can: two or more channels)
                mis = info["autofluorescence_misfit"]
                if mis is not None and mis > _MAX_AF_MISFIT:
                    fix = ("give an unstained control of this tissue" if af_source ==
                           "panel model" else "was the control of this tissue and block?")
                    warns.append(
                        f"{name}: the control's label-free channels do not fit the "
                        f"autofluorescence profile (from {af_source}; misfit {mis:.2f} > "
                        f"{_MAX_AF_MISFIT}): either the tissue's autofluorescence differs "
                        f"from it ({fix}), and the autofluorescence removed may be wrong, "
                        f"or the label emits where its model does not (its peak off the "
                        f"panel's?), and those channels were left out")
                elif bf > _MAX_BRIGHT_AF_SHARE or cf > 0.02:
                    warns.append(
                        f"{name}: autofluorescence removal is uncertain (AF share {bf:.2f}, "
                        f"clipped {cf:.2f} of the signal): the label is "
                        f"{100 * (1 - bf):.0f} % of its brightest pixels' signal, and the "
                        f"autofluorescence profile's shape (from {af_source}) "
                        + ("may not fit this tissue" if cf > 0.02 else
                           "sets its spectrum; give an unstained control of this tissue if "
                           "none was given"))
            elif bf > 0.5 or cf > 0.02:
                warns.append(
                    f"{name}: autofluorescence removal is uncertain (AF share "
                    f"{info['background_fraction']:.2f}, clipped {info['clipped_fraction']:.2f} "
                    f"of the signal): the label may be widespread in the control (dim pixels "
                    f"then hold label too) or the autofluorescence profile may not fit this "
                    f"tissue")
        return profs, infos, warns

    profs, infos, warns = measure_stains(af_prof)
    # blind autofluorescence with single stains: the label spectra and the autofluorescence
    # depend on each other; alternate until the autofluorescence settles (its cosine to the
    # previous round's above 1 - 1e-4; measured: 2 rounds on the library tests' fields, after
    # which the half-sample mode only jitters, 1 - cos ~ 1e-5)
    if blind_img is not None and stains:
        change, rounds = 1.0, 0
        while rounds < _BLIND_ROUNDS:
            rounds += 1
            labels = panel.with_measured({**measured, **profs}).endmembers
            new_af, info = _blind(blind_img, panel, labels, af_source, blind_px,
                                  blind_valid)
            change = 1.0 - _cos(new_af, af_prof)
            af_prof = new_af
            measured["autofluorescence"] = af_prof
            profs, infos, warns = measure_stains(af_prof)
            if change < _BLIND_SETTLED:
                break
        info["rounds"] = rounds
        info["last_change"] = change  # 1 - cosine between the last two estimates
        if change >= _BLIND_SETTLED:
            info["warnings"] = [*info["warnings"], (
                f"the blind autofluorescence and the single stains did not settle in "
                f"{rounds} rounds (last change 1 - cos = {change:.1e}); check the controls")]
        comps["autofluorescence"] = info
    measured.update(profs)
    comps.update(infos)
    warnings.extend(warns)
    if blind_img is not None:
        warnings = [f"autofluorescence: {w}" for w in comps["autofluorescence"]["warnings"]] + \
            warnings
    new = panel.with_measured(measured)
    _refuse_wrong_controls(panel, optics, profs, stains, infos)
    for name, info in comps.items():
        j = panel.components.index(name)
        info["cosine_to_model"] = _cos(model[:, j], new.endmembers[:, j])
        # the default autofluorescence model is a rough [M] guess: differing from it is normal
        if name != "autofluorescence" and info["cosine_to_model"] < min_cosine:
            warnings.append(f"{name}: measured spectrum differs from the model (cosine "
                            f"{info['cosine_to_model']:.3f} < {min_cosine}); check the control "
                            f"and the panel's channels")
    return LibraryResult(panel=new, components=comps, model=model, warnings=tuple(warnings))
