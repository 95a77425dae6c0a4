"""Does a model explain the pixels? The residual against the noise, in the brightest pixels.

A label on the slide that the panel lacks, or a spectrum that is wrong, leaves a residual
that grows with the signal; noise leaves one that grows with its square root (shot noise)
or stays constant (read noise). The noise level is taken from the dim half of the sampled
pixels as ``z_dim``, the median of ``||y - A x|| / sqrt(sum(y))`` (counts per square root of
counts: gain and photon count cancel); in each of the brightest 5 % of the pixels, the
residual beyond that noise, ``sqrt(max(0, ||r||^2 - z_dim^2 sum(y))) / ||y||``, is the share
of the pixel's signal the model leaves unexplained. Its median is the **misfit**. Measured on
synthetic MCF-7 fields (cell pixels): 0.000 with the right panel at 30-1000 photons per unit
and gain 1 or 4; 0.39-0.47 with the PR label left out of the panel (0.39 at 30 photons, where
the bright/dim ratio of z fell to 2.5 and a ratio test missed it). Warned above 0.1.

The brightest pixels overall are nuclei (the counterstain): a membrane label left out was
missed (HER2 on a 3+ slide: misfit 0.000, a microscopist's walk-through). So the same median
is also taken per channel, over the 5 % of the pixels whose **fitted** counts in that channel
are highest (fitted, not measured: ranking by a channel's measured counts selects its upward
noise), the **channel misfits**. Their noise floor is higher than the overall one (a
channel's brightest pixels have another spectral make-up than the dim half that sets the
noise level, and there are fewer of them), so they are warned above 0.3. Measured on 512^2 px
synthetic fields (tissue 60 %) of eight presets at 30-1000 photons per unit, two seeds, the
5-plex panel, 512 or 2048 samples of cell pixels: largest channel misfit with the right
panel 0.145 (0.066 at 100 photons or more); without the HER2 label on the four
HER2-expressing presets at least 0.637 (the overall misfit 0.000 in all of them). Sampling all
pixels, glass too (``qdmed image unmix``): right panels up to 0.19; without HER2, 0.59-0.70
with 2048 samples, but as low as 0 with 512 on a sparse tissue.

inForm and QuPath show the residual image; this turns it into a number per slide.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Cell pixels sampled per tile (evenly spaced, deterministically).
SAMPLES_PER_TILE = 512
#: Fewer samples than this over the slide: no verdict.
MIN_SAMPLES = 200
#: Brightest share of the samples whose misfit is measured.
BRIGHT_FRACTION = 0.05
#: Warned above this median share of the brightest pixels' signal left unexplained.
MAX_MISFIT = 0.1
#: Warned above this channel misfit (the same share among a channel's brightest fitted
#: pixels; module notes).
MAX_CHANNEL_MISFIT = 0.3


def misfit(counts, norms, residuals, fitted=None) -> dict[str, Any]:
    """The misfit of a model over pixels (see the module notes): ``misfit`` (median share
    of the brightest pixels' signal unexplained beyond the noise), ``misfit_by_channel``
    (with ``fitted``, the (n, C) fitted counts per channel: the same median over each
    channel's brightest fitted pixels, a list; else None), ``z_dim`` and ``z_bright``
    (median residual per square root of the counts, dim half and brightest 5 %) and ``n``;
    None values with fewer than :data:`MIN_SAMPLES` pixels."""
    counts, norms, res = (np.asarray(v, dtype=np.float64) for v in (counts, norms, residuals))
    ok = (counts > 0) & (norms > 0)
    counts, norms, res = counts[ok], norms[ok], res[ok]
    fit = None if fitted is None or not ok.size else np.asarray(
        fitted, dtype=np.float64).reshape(ok.size, -1)[ok]
    d: dict[str, Any] = {"n": int(counts.size), "misfit": None, "misfit_by_channel": None,
                         "z_dim": None, "z_bright": None}
    if counts.size < MIN_SAMPLES:
        return d
    z = res / np.sqrt(counts)
    order = np.argsort(counts, kind="stable")
    zd = float(np.median(z[order[: counts.size // 2]]))
    n_bright = max(1, int(BRIGHT_FRACTION * counts.size))

    def unexplained(b) -> float:
        return float(np.median(np.sqrt(np.maximum(0.0, res[b] ** 2 - zd ** 2 * counts[b]))
                               / norms[b]))

    b = order[-n_bright:]
    d.update(misfit=unexplained(b), z_dim=zd, z_bright=float(np.median(z[b])))
    if fit is not None and fit.shape[1]:
        d["misfit_by_channel"] = [unexplained(np.argsort(fit[:, c], kind="stable")[-n_bright:])
                                  for c in range(fit.shape[1])]
    return d


def residual_sample(region: np.ndarray, abundances: np.ndarray, cells: np.ndarray,
                    endmembers: np.ndarray, offset=None, ceiling: float | None = None,
                    n: int = SAMPLES_PER_TILE) -> dict[str, list[float]]:
    """Counts, norms and residuals of up to `n` cell pixels of a tile, evenly spaced in
    raster order: ``{"counts", "norm", "residual"}`` lists (the detector offset removed;
    pixels at the detector's `ceiling` left out: saturation is a misfit of its own, warned
    as such)."""
    use = np.asarray(cells).ravel() > 0
    if ceiling is not None:
        use &= ~(region.reshape(-1, region.shape[-1]) >= ceiling).any(axis=1)
    idx = np.flatnonzero(use)
    if idx.size > n:
        idx = idx[np.linspace(0, idx.size - 1, n).astype(np.int64)]
    c = region.shape[-1]
    y = region.reshape(-1, c)[idx].astype(np.float64)
    if offset is not None:
        y = y - np.asarray(offset, dtype=np.float64)
    x = abundances.reshape(-1, abundances.shape[-1])[idx].astype(np.float64)
    fit = x @ np.asarray(endmembers, dtype=np.float64).T
    res = np.linalg.norm(y - fit, axis=1)

    def short(v):
        return [float(f"{t:.6g}") for t in v]

    # fitted counts per channel, a pixel's row after another's (the per-channel misfit)
    return {"counts": short(y.sum(1)), "norm": short(np.linalg.norm(y, axis=1)),
            "residual": short(res), "fitted": [float(f"{t:.4g}") for t in fit.ravel()],
            "n_channels": int(c), "n_components": int(x.shape[1])}


def fit_summary(samples: list[dict | None], channel_names=None) -> dict[str, Any]:
    """The ``fit`` block of a slide summary from the tiles' samples: :func:`misfit`'s
    numbers (per channel where every tile's samples carry their fitted counts, named by
    ``channel_names``), ``n_samples``, ``rule`` and ``warnings`` (tiles analysed by an
    earlier version carry no samples: said so). A panel with as many components as
    channels fits any pixel exactly: no misfit, and said so."""
    got = [s for s in samples if s and "norm" in s]
    cat = {k: np.concatenate([np.asarray(s[k], float) for s in got] or [np.zeros(0)])
           for k in ("counts", "norm", "residual")}
    nc = {s.get("n_channels") for s in got}
    fitted = None
    if got and all("fitted" in s for s in got) and len(nc) == 1:
        fitted = np.concatenate([np.asarray(s["fitted"], float) for s in got]).reshape(
            -1, nc.pop())
    m = misfit(cat["counts"], cat["norm"], cat["residual"], fitted)
    d: dict[str, Any] = {"n_samples": m["n"], "misfit": m["misfit"], "misfit_by_channel": None,
                         "worst_channel": None, "z_dim": m["z_dim"], "z_bright": m["z_bright"],
                         "warnings": [],
                         "rule": f"median share of the brightest {100 * BRIGHT_FRACTION:g} % "
                                 "of the sampled cell pixels' signal left unexplained beyond "
                                 f"the noise of the dim half, warned above {MAX_MISFIT:g} "
                                 "(right panels on synthetic fields: 0.000); per channel, among "
                                 "its brightest fitted pixels, warned above "
                                 f"{MAX_CHANNEL_MISFIT:g} (right panels: at most 0.15 on "
                                 "cells, 0.19 on all pixels)"}
    by = m["misfit_by_channel"]
    names = list(channel_names) if channel_names is not None and by is not None and \
        len(channel_names) == len(by) else [f"C{i}" for i in range(len(by or ()))]
    if by is not None:
        d["misfit_by_channel"] = dict(zip(names, by, strict=True))
        d["worst_channel"] = names[int(np.argmax(by))]
    if len(got) < len(samples):
        d["note"] = (f"{len(samples) - len(got)} of {len(samples)} tiles were analysed by an "
                     "earlier qdmed without fit samples")
    exact = [s for s in got if s.get("n_components", 0) >= s.get("n_channels", np.inf)]
    if got and len(exact) == len(got):
        d.update(misfit=None, misfit_by_channel=None, worst_channel=None)
        d["note"] = (f"not checked: the panel has as many components as channels "
                     f"({got[0]['n_channels']}), so it fits any pixel exactly; a label "
                     "missing or a channel out of order cannot be seen in the fit (a "
                     "detector with more channels than labels can)")
        d["warnings"].append("the fit cannot be checked: " + d["note"].split(": ", 1)[1])
        return d
    what = ("A label on the slide may be missing from the panel, or a spectrum is wrong "
            "(measure the library from controls: qdmed image library); look at the residual "
            "channel of unmixed.ome.zarr")
    if m["misfit"] is not None and m["misfit"] > MAX_MISFIT:
        d["warnings"].append(
            f"the panel does not explain the brightest cells: {100 * m['misfit']:.0f} % of "
            f"their signal is left unexplained beyond the noise (right panels: ~0 %). {what}")
    elif by is not None and max(by) > MAX_CHANNEL_MISFIT:
        w = d["worst_channel"]
        d["warnings"].append(
            f"the panel does not explain the pixels brightest in {w}: "
            f"{100 * d['misfit_by_channel'][w]:.0f} % of their signal is left unexplained "
            f"beyond the noise (right panels: under {100 * MAX_CHANNEL_MISFIT:.0f} %; the "
            f"brightest cells overall, nuclei most often, {100 * m['misfit']:.0f} %). {what}")
    return d
