"""Detector quality: saturation (which pixels reached the detector's ceiling, which cells
hold them, clipping below the ceiling the file declares) and the detector's offset.

Why it matters: unmixing assumes that every channel's counts are linear in the labels'
abundances. A pixel whose channel reached the ceiling (ADC full scale or full well) breaks
it: the saturated channel reads low, so NNLS gives that label too little and may explain the
missing counts with its spectral neighbours; the unmixed image does not show it (only the
residual map does). Quantitative fluorescence microscopy therefore requires images without
saturated pixels [1]_. qdmed cannot undo saturation; it finds it and says where:

* the ceiling: the largest value of an integer image's type, or ``2**SignificantBits - 1``
  when an OME-TIFF declares fewer significant bits (a 12-bit camera stored as uint16), or a
  value given by the user. Float images have no known ceiling: checked only when given;
* per cell: ``saturated_fraction``, the share of the cell's pixels with at least one channel
  at or above the ceiling;
* per channel: the saturated pixels of the slide, and a pile-up at the channel's maximum
  below the ceiling (many pixels at exactly the largest value, far fewer one count below:
  clipping by a detector whose range the file does not declare).

The offset (bias, dark level) is the count a detector reads without light (a few to several
hundred counts on scientific cameras). Intensities must be corrected for it [1]_: unmixing
counts it as a flat spectrum in every pixel and gives it to the labels and to the
autofluorescence (measured on a synthetic luminal-A field with a 100-count offset: median
membrane EGFR 2.6 -> 95, cytoplasmic mTOR 66 -> 268). ``offset_adu`` is subtracted before
unmixing (raw counts are kept for the saturation test). A floor in every channel at once (the
lowest count of each channel, taken as the 10th percentile of the tiles' minima so that a
dead pixel does not decide it, 10 or more and within a factor 2 of each other after the
given offset) is what an uncorrected offset looks like, and is warned: dark-corrected images
read about 0 on glass and in stroma gaps (measured: 0 in every channel of synthetic fields
without offset, 90-96 with 100). The opposite mistake, an offset given for an image that was
dark-corrected already, takes the offset from every dim signal and clips it at 0 (measured
on the same dark-corrected luminal-A field with 100 counts subtracted: 118 cells found
instead of 187, median membrane EGFR and HER2 and cytoplasmic mTOR 0, nuclear ER 229 ->
105). A detector with an offset reads a few read-noise SDs below it at the least, never 0:
raw zeros in 0.1 % or more of the pixels of every channel the offset is taken from (0.1-25 %
in that field's channels; none with the 100-count offset) are warned as over-subtraction.

References
----------
.. [1] J. C. Waters (2009). Accuracy and precision in quantitative fluorescence microscopy.
   J. Cell Biol. 185(7):1135-1148. doi:10.1083/jcb.200903097
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from qdmed.errors import InputError
from qdmed.imaging._jit import lazy_kernel, njit_cached, numba_available

__all__ = ["cell_saturated_fraction", "channel_stats", "check_level", "check_offset",
           "merge_channel_stats", "offset_summary", "saturation_level", "saturation_summary"]

REF_WATERS_2009 = ("Waters JC (2009) Accuracy and precision in quantitative fluorescence "
                   "microscopy. J Cell Biol 185:1135-1148. doi:10.1083/jcb.200903097")
#: Percent of scored cells with saturated pixels above which the summary warns.
WARN_PERCENT_CELLS = 1.0
#: Without cells (quality control alone): percent of a channel's pixels at the ceiling above
#: which the summary warns (a few hot pixels stay below it).
WARN_PERCENT_PIXELS = 0.01
#: A channel's maximum value counts as a pile-up (clipping) when at least this many pixels
#: hold it and at least PILEUP_RATIO times as many as hold the value one count below.
PILEUP_MIN_PIXELS = 10
PILEUP_RATIO = 4.0
#: Every channel's lowest count at least this (after the given offset), and within a factor
#: OFFSET_FLOOR_SPREAD of each other: an uncorrected offset is suspected.
OFFSET_FLOOR_COUNTS = 10.0
OFFSET_FLOOR_SPREAD = 2.0
#: An offset is given, yet at least this fraction of the raw pixels reads 0 or less in
#: every channel it is taken from: the image was dark-corrected already (over-subtraction).
OFFSET_ZERO_FRACTION = 1e-3
#: With Poisson unmixing's read noise known, a floor (after the offset) this many read-noise
#: SDs below zero, and a count more, is warned: the lowest of ~4 million Gaussian values
#: lies ~5.3 SDs below their mean.
READ_NOISE_FLOOR_SDS = 8.0


def check_offset(offset: Any, n_channels: int) -> np.ndarray | None:
    """A detector offset as ``(n_channels,)`` float counts (None for none, or all zero), or
    InputError naming the value and what is accepted."""
    if offset is None:
        return None
    try:
        off = np.asarray(offset, dtype=np.float64)
    except (TypeError, ValueError):
        off = np.array([np.nan])
    if off.shape not in ((), (n_channels,)) or not np.all(np.isfinite(off)) or np.any(off < 0):
        raise InputError(f"offset must be one number or {n_channels} numbers (one per "
                         f"channel), counts >= 0 (the detector's dark level, subtracted); got "
                         f"{offset!r}")
    off = np.broadcast_to(off, (n_channels,)).astype(np.float64)
    return None if not off.any() else off


def check_level(level: Any) -> float | None:
    """A user's detector ceiling as a float (None stays None: not given), or InputError
    naming the value."""
    if level is None:
        return None
    if isinstance(level, bool) or not isinstance(level, int | float | np.integer | np.floating) \
            or not math.isfinite(float(level)) or float(level) <= 0:
        raise InputError(f"saturation_level must be a positive number of counts (the "
                         f"detector's ceiling), got {level!r}")
    return float(level)


def saturation_level(dtype: Any, *, significant_bits: int | None = None,
                     level: float | None = None) -> tuple[float | None, str]:
    """The detector ceiling of an image, and where it came from.

    Parameters
    ----------
    dtype : numpy dtype of the image
    significant_bits : int, optional
        Bits the detector fills (OME ``Pixels/@SignificantBits``); ignored for float images
        and when it is not below the type's own bits.
    level : float, optional, counts
        A ceiling given by the user: it wins.

    Returns
    -------
    (level, source) : (float or None, str)
        None (with the reason) for a float image without a given level.

    Examples
    --------
    >>> saturation_level(np.uint16)
    (65535.0, 'uint16 maximum')
    >>> saturation_level(np.uint16, significant_bits=12)
    (4095.0, 'OME SignificantBits 12')
    """
    if level is not None:
        return check_level(level), "given"
    dt = np.dtype(dtype)
    if dt.kind in "ui":
        bits = dt.itemsize * 8 - (dt.kind == "i")
        if significant_bits is not None and 0 < int(significant_bits) < bits:
            return float(2 ** int(significant_bits) - 1), \
                f"OME SignificantBits {int(significant_bits)}"
        return float(np.iinfo(dt).max), f"{dt.name} maximum"
    return None, (f"not checked: a {dt.name} image has no known detector ceiling "
                  "(give saturation_level, --saturation-level)")


def channel_stats(image_yxc: np.ndarray, level: float | None) -> dict:
    """Per channel of a (Y, X, C) region: pixels at or above `level`, the lowest value, the
    pixels at or below 0 where another channel is above 0 (``nonpositive``, for the
    over-subtracted offset test; a pixel 0 in every channel is padding, not signal), the
    largest value, the pixels holding it and those one count below it (integer images; for the
    pile-up test). JSON-safe; merged over tiles by :func:`merge_channel_stats`.

    One compiled pass over the pixels when numba is installed (a 2048^2 x 8 uint16 tile core
    took 0.8 s with the numpy reductions below, which stay as the reference)."""
    img = np.asarray(image_yxc)
    nc = img.shape[-1]
    n = int(img.size // nc) if nc else 0
    out: dict[str, Any] = {"n_px": n, "integer": bool(img.dtype.kind in "ui")}
    if n == 0:
        out["saturated"] = [0] * nc
        return out
    if out["integer"] and img.ndim == 3 and numba_available():
        sat, mn, mx, at, below, nonpos = (np.zeros(nc, np.int64) for _ in range(6))
        _stats_kernel()(img, -1.0 if level is None else float(level), sat, mn, mx, at, below,
                        nonpos)
        out.update(saturated=sat.tolist(), min=mn.tolist(), max=mx.tolist(), at_max=at.tolist(),
                   below_max=below.tolist(), nonpositive=nonpos.tolist())
        return out
    flat = img.reshape(-1, nc)
    mins = flat.min(axis=0)
    out["min"] = (mins.astype(np.int64) if out["integer"] else mins.astype(np.float64)).tolist()
    lit = (flat > 0).any(axis=1)
    out["nonpositive"] = [int(np.count_nonzero((flat[:, c] <= 0) & lit)) for c in range(nc)]
    out["saturated"] = ([0] * nc if level is None else
                        [int(np.count_nonzero(flat[:, c] >= level)) for c in range(nc)])
    mx = flat.max(axis=0)
    out["at_max"] = [int(np.count_nonzero(flat[:, c] == mx[c])) for c in range(nc)]
    if out["integer"]:
        out["max"] = mx.astype(np.int64).tolist()
        with np.errstate(over="ignore"):  # a maximum of 0 wraps round: nothing is below it
            below = mx - np.ones_like(mx)
        out["below_max"] = [int(np.count_nonzero(flat[:, c] == below[c])) for c in range(nc)]
    else:  # float counts: within one count below the maximum (a clip shows as a tie at it)
        out["max"] = mx.astype(np.float64).tolist()
        out["below_max"] = [int(np.count_nonzero((flat[:, c] >= mx[c] - 1) & (flat[:, c] < mx[c])))
                            for c in range(nc)]
    return out


@lazy_kernel
def _stats_kernel():  # pragma: no cover - body runs compiled
    @njit_cached(nogil=True)
    def stats(img, level, sat, mn, mx, at, below, nonpos):
        """One pass: per channel, values >= level (level < 0: none counted), the minimum,
        values <= 0 in pixels with some channel > 0, the maximum, its count and the count
        one below it (updated as the maximum rises)."""
        h, w, nc = img.shape
        for k in range(nc):
            mx[k] = np.int64(img[0, 0, k])
            mn[k] = mx[k]
        for y in range(h):
            for x in range(w):
                lit = False
                for k in range(nc):
                    if img[y, x, k] > 0:
                        lit = True
                        break
                for k in range(nc):
                    v = np.int64(img[y, x, k])
                    if level >= 0 and v >= level:
                        sat[k] += 1
                    if v < mn[k]:
                        mn[k] = v
                    if v <= 0 and lit:
                        nonpos[k] += 1
                    m = mx[k]
                    if v > m:
                        below[k] = at[k] if v == m + 1 else 0
                        mx[k] = v
                        at[k] = 1
                    elif v == m:
                        at[k] += 1
                    elif v == m - 1:
                        below[k] += 1

    return stats


def merge_channel_stats(parts: list[dict]) -> dict:
    """Slide-level :func:`channel_stats` from the tiles' (exact: counts at the slide's
    maximum and one below it are summed over the tiles that reach them)."""
    parts = [p for p in parts if p and p.get("n_px")]
    if not parts:
        return {"n_px": 0, "integer": False, "saturated": []}
    nc = len(parts[0]["saturated"])
    out: dict[str, Any] = {"n_px": sum(p["n_px"] for p in parts),
                           "integer": all(p["integer"] for p in parts),
                           "saturated": [sum(p["saturated"][c] for p in parts)
                                         for c in range(nc)],
                           "min": [min(p["min"][c] for p in parts) for c in range(nc)]}
    if all("nonpositive" in p for p in parts):
        out["nonpositive"] = [sum(p["nonpositive"][c] for p in parts) for c in range(nc)]
    if all("max" in p for p in parts):  # (floats too, from this version on)
        mx = [max(p["max"][c] for p in parts) for c in range(nc)]
        at = [0] * nc
        below = [0] * nc
        for p in parts:
            for c in range(nc):
                if p["max"][c] == mx[c]:
                    at[c] += p["at_max"][c]
                    below[c] += p["below_max"][c]
                elif p["max"][c] == mx[c] - 1:
                    below[c] += p["at_max"][c]
        out.update(max=mx, at_max=at, below_max=below)
    return out


def cell_saturated_fraction(image_yxc: np.ndarray, cells: np.ndarray,
                            level: float | None) -> np.ndarray | None:
    """``frac[label]``: share of each cell label's pixels with at least one channel at or
    above `level` (index 0 = background); None when `level` is None."""
    if level is None:
        return None
    lab = np.asarray(cells).ravel()
    n = int(lab.max()) + 1 if lab.size else 1
    sat = (np.asarray(image_yxc) >= level).any(axis=-1).ravel()
    area = np.bincount(lab, minlength=n)
    hit = np.bincount(lab[sat], minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(area > 0, hit / np.maximum(area, 1), 0.0)


def _pileups(stats: dict, level: float | None, channel_names) -> dict:
    out = {}
    if "max" not in stats or "at_max" not in stats:
        return out
    for c, name in enumerate(channel_names):
        m, at, below = stats["max"][c], stats["at_max"][c], stats["below_max"][c]
        if (level is None or m < level) and m > 0 and at >= PILEUP_MIN_PIXELS \
                and at >= PILEUP_RATIO * max(below, 1):
            out[name] = {"value": int(m) if float(m).is_integer() else float(m),
                         "pixels": int(at), "pixels_one_below": int(below)}
    return out


def _bits_note(value) -> str:
    if not float(value).is_integer():
        return ""
    value = int(value)
    b = (value + 1).bit_length() - 1
    return f" = 2^{b} - 1" if 2 ** b - 1 == value else ""


def saturation_summary(level: float | None, source: str, stats: dict, channel_names,
                       cells, scored, *, left_out: bool = False) -> dict:
    """The ``saturation`` block of a slide summary: ceiling, saturated pixels per channel,
    cells holding saturated pixels (all and scored), suspected clipping, warnings.

    `cells` and `scored` are the per-cell tables (with ``saturated_fraction`` when the
    ceiling is known); `scored` before any cells are left out by their flags, and
    `left_out` says whether the saturated ones are (the warning then says what that
    costs)."""
    names = list(channel_names)
    n_px = int(stats.get("n_px", 0))
    sat = stats.get("saturated") or [0] * len(names)
    d: dict[str, Any] = {"level_adu": level, "source": source, "checked": level is not None,
                         "reference": REF_WATERS_2009, "n_pixels": n_px,
                         "saturated_pixels": dict(zip(names, (int(v) for v in sat),
                                                      strict=True)) if len(sat) == len(names)
                         else {},
                         "warnings": []}
    d["percent_saturated_pixels"] = {k: (100.0 * v / n_px if n_px else 0.0)
                                     for k, v in d["saturated_pixels"].items()}
    if level is not None and "saturated_fraction" in getattr(cells, "columns", ()):
        hit = np.asarray(cells["saturated_fraction"], dtype=np.float64) > 0
        shit = np.asarray(scored["saturated_fraction"], dtype=np.float64) > 0
        d["n_cells_saturated"] = int(hit.sum())
        d["percent_cells_saturated"] = 100.0 * hit.mean() if hit.size else 0.0
        d["percent_scored_cells_saturated"] = 100.0 * shit.mean() if shit.size else 0.0
        if d["percent_scored_cells_saturated"] >= WARN_PERCENT_CELLS:
            worst = max(d["saturated_pixels"], key=d["saturated_pixels"].get, default=None)
            head = (f"{d['percent_scored_cells_saturated']:.1f} % of the cells to score hold "
                    f"pixels at the detector ceiling ({level:g} counts"
                    + (f"; most in channel {worst}" if worst else "") + ")")
            d["warnings"].append(head + (
                ": they are left out of the scores (exclude_flagged), and as they are the "
                "brightest cells, the scores may read low. Re-acquire with a shorter exposure"
                if left_out else
                ": their unmixed levels are unreliable (the saturated label reads low and "
                "unmixing may give its excess to spectral neighbours). Re-acquire with a "
                "shorter exposure, or leave them out (cells.parquet: saturated_fraction > 0)"))
    elif level is not None and cells is None and d["percent_saturated_pixels"]:
        worst = max(d["percent_saturated_pixels"], key=d["percent_saturated_pixels"].get)
        if d["percent_saturated_pixels"][worst] >= WARN_PERCENT_PIXELS:
            d["warnings"].append(
                f"{d['percent_saturated_pixels'][worst]:.3g} % of the pixels of channel "
                f"{worst} are at the detector ceiling ({level:g} counts): the cells there "
                "will read low in its label and unmixing may give the excess to spectral "
                "neighbours; re-acquire with a shorter exposure")
    over = [(n, m) for n, m in zip(names, stats.get("max") or [], strict=False)
            if level is not None and source.startswith("OME") and m > level]
    if over:
        d["warnings"].append(
            f"channel {over[0][0]} holds {over[0][1]} counts, above the ceiling the file "
            f"declares ({level:g}, {source}): the declaration does not fit the data (rescaled "
            "or processed counts?), so pixels at or above it are not all saturated; give the "
            "real ceiling (--saturation-level)")
    d["clipping_suspected"] = _pileups(stats, level, names)
    for ch, p in d["clipping_suspected"].items():
        d["warnings"].append(
            f"channel {ch}: {p['pixels']} pixels sit at its largest value {p['value']}"
            f"{_bits_note(p['value'])} and {p['pixels_one_below']} one count below: the "
            "detector probably clipped there, below the ceiling checked ("
            + (f"{level:g}" if level is not None else "none")
            + f"); give saturation_level={p['value']} (--saturation-level {p['value']})")
    return d


def dead_channels(stats: dict, channel_names) -> list[str]:
    """The channels of :func:`channel_stats` (merged) that hold one value in every pixel:
    whose maximum is its minimum (integer or float); for stats without a maximum (a float
    tile of an earlier version), a channel at or below 0 in at least 99.9 % of the pixels.
    A microscopist's all-zero channel had read HER2 at 0 of its truth, the fit 0.0 %,
    unsaid: an empty channel is fitted as well as a real one (the labels' signal goes
    elsewhere)."""
    names = list(channel_names)
    n = int(stats.get("n_px") or 0)
    mins, maxs, nonpos = stats.get("min"), stats.get("max"), stats.get("nonpositive")
    if not n or not mins or len(mins) != len(names):
        return []
    out = []
    for c, name in enumerate(names):
        if maxs and len(maxs) == len(names):
            if maxs[c] == mins[c] and len(names) > 1:
                out.append(name)
        elif nonpos and len(nonpos) == len(names) and nonpos[c] >= 0.999 * n:
            out.append(name)
    return out


def wrapped_warnings(dtype, mins) -> list[str]:
    """The warning that a signed integer image holds values far below 0 (under a quarter of
    its type's most negative): unsigned counts written as signed, so that those above the
    signed maximum wrapped round to negatives (a microscopist's uint16 data saved as int16
    read HER2 at 0.36 of its truth, warned only as clipping at 32760)."""
    if dtype is None or np.dtype(dtype).kind != "i" or not mins:
        return []
    floor = np.iinfo(np.dtype(dtype)).min / 4
    low = min(float(v) for v in mins)
    if low >= floor:
        return []
    bits = 8 * np.dtype(dtype).itemsize
    half = 2 ** (bits - 1)
    return [f"the {np.dtype(dtype).name} image holds values down to {low:g}: unsigned counts "
            f"stored as signed integers? Either those above {half - 1} wrapped round to "
            f"negatives (re-save with numpy: image.view(np.uint{bits})), or every count was "
            f"shifted by -{half} (re-save: (image.astype(np.int64) + {half})"
            f".astype(np.uint{bits})). Unmixing reads them as they are, and every measure is "
            "wrong"]


def offset_summary(stats: dict, offset: np.ndarray | None, channel_names,
                   tiles: list[dict] | None = None, read_noise: float | None = None,
                   dtype=None) -> dict:
    """The ``offset`` block of a slide summary: the offset subtracted, each channel's lowest
    raw count, the floor left after the offset, the percent of raw pixels at or below 0,
    and ``issue``: "uncorrected" when every channel keeps a floor (see the module notes),
    "over-subtracted" when an offset is given to an image that reads 0 in at least
    :data:`OFFSET_ZERO_FRACTION` of the pixels of every channel it is taken from (a
    detector with an offset reads some read-noise SDs below it at the least, never 0); each
    with a warning.

    With the tiles' own stats (`tiles`), the floor is the 10th percentile of the tiles'
    minima (the lowest of them below ten tiles), so that one dead or padded pixel does not
    hide an offset on a large slide; else the slide's minimum.

    With `read_noise` (counts RMS, that of Poisson unmixing), a floor more than
    :data:`READ_NOISE_FLOOR_SDS` read-noise SDs (and a count) below zero is "below the read
    noise": an offset larger than the dark level, or a read noise larger than given; Poisson
    unmixing takes counts below ``-read_noise^2`` as it (a review: an offset 10 counts too
    large, floor -22 at read noise 1, unsaid: no raw zero is read)."""
    names = list(channel_names)
    off = np.zeros(len(names)) if offset is None else np.asarray(offset, dtype=np.float64)
    mins = stats.get("min")
    d: dict[str, Any] = {"offset_adu": dict(zip(names, off.tolist(), strict=True)),
                         "reference": REF_WATERS_2009, "channel_min": None,
                         "floor_after_offset": None, "percent_pixels_at_or_below_zero": None,
                         "suspected": False, "issue": None, "warnings": []}
    if not mins or len(mins) != len(names):
        return d
    low = np.asarray(mins, dtype=np.float64)
    tile_mins = [t["min"] for t in tiles or () if t and t.get("n_px") and t.get("min")]
    if len(tile_mins) >= 2:
        low = np.percentile(np.asarray(tile_mins, dtype=np.float64), 10, axis=0,
                            method="lower")
    # judged on the tiles' minima as the floor is (one outlier pixel of a signed image is
    # not a wrapped image, a review)
    wrapped = wrapped_warnings(dtype, low.tolist())
    if wrapped:
        d["suspected"], d["issue"] = True, "signed"
        d["warnings"] += wrapped
    dead = dead_channels(stats, names)
    if dead:
        d["dead_channels"] = dead
        d["warnings"].append(
            f"channel(s) {', '.join(dead)} read one value in every pixel (0, or a constant): "
            "no signal was recorded there (a detector, filter or export fault?). The labels "
            "that emit there are fitted from the other channels alone and read wrong, while "
            "the fit looks good: re-acquire or re-export the channel, or use a panel without "
            "it")
    if wrapped:  # a wrapped image is no offset question
        return d
    floor = low - off
    d["channel_min"] = dict(zip(names, (float(v) for v in mins), strict=True))
    d["floor_after_offset"] = dict(zip(names, floor.tolist(), strict=True))
    nonpos = stats.get("nonpositive")
    if nonpos and len(nonpos) == len(names) and stats.get("n_px"):
        frac = np.asarray(nonpos, dtype=np.float64) / stats["n_px"]
        d["percent_pixels_at_or_below_zero"] = dict(zip(names, (100 * frac).tolist(),
                                                        strict=True))
        given = off > 0
        if given.any() and (frac[given] >= OFFSET_ZERO_FRACTION).all():
            d["suspected"], d["issue"] = True, "over-subtracted"
            d["warnings"].append(
                f"an offset is given, yet {100 * frac[given].min():.2g}-"
                f"{100 * frac[given].max():.2g} % of the raw pixels read 0 or less in every "
                "channel it is taken from (pixels 0 in all channels, padding, not counted): a "
                "detector with an offset never reads 0, so the image was dark-corrected "
                "already (or the offset is within the read noise of 0), and subtracting the "
                "offset again takes it from the dim signals and clips them at 0. Leave "
                "--offset out for dark-corrected images")
            return d  # zeros leave no floor: the uncorrected test cannot hold
    lo, hi = float(floor.min()), float(floor.max())
    if read_noise is not None and lo < -READ_NOISE_FLOOR_SDS * read_noise - 1.0:
        d["suspected"], d["issue"] = True, "below the read noise"
        d["warnings"].append(
            f"the darkest tiles read down to {lo:g} counts ({names[int(np.argmin(floor))]})"
            + (" after the offset given" if offset is not None else "")
            + f", more than {READ_NOISE_FLOOR_SDS:g} read-noise SDs ({read_noise:g} counts) "
            "below zero: the offset is larger than the detector's dark level, or the read "
            "noise is larger than given (--read-noise). Poisson unmixing takes counts below "
            "-read_noise^2 as it, which raises dim abundances")
        return d
    if lo >= OFFSET_FLOOR_COUNTS and hi <= OFFSET_FLOOR_SPREAD * lo:
        d["suspected"], d["issue"] = True, "uncorrected"
        d["warnings"].append(
            f"every channel keeps a floor of {lo:g}-{hi:g} counts (the lowest counts of its "
            "darkest tiles)"
            + (" after the offset given" if offset is not None else "")
            + ": a floor in all channels at once is what an uncorrected detector offset "
            "looks like, and unmixing gives it to the labels. Unless the image has no dark "
            "pixel at all (no glass, bright autofluorescence everywhere), give the camera's "
            "offset (offset_adu; --offset): the mean of a dark frame, a little above the "
            "lowest counts")
    return d
