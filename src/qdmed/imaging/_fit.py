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


def misfit(counts, norms, residuals) -> dict[str, Any]:
    """The misfit of a model over pixels (see the module notes): ``misfit`` (median share
    of the brightest pixels' signal unexplained beyond the noise), ``z_dim`` and
    ``z_bright`` (median residual per square root of the counts, dim half and brightest
    5 %) and ``n``; None values with fewer than :data:`MIN_SAMPLES` pixels."""
    counts, norms, res = (np.asarray(v, dtype=np.float64) for v in (counts, norms, residuals))
    ok = (counts > 0) & (norms > 0)
    counts, norms, res = counts[ok], norms[ok], res[ok]
    d: dict[str, Any] = {"n": int(counts.size), "misfit": None, "z_dim": None,
                         "z_bright": None}
    if counts.size < MIN_SAMPLES:
        return d
    z = res / np.sqrt(counts)
    order = np.argsort(counts, kind="stable")
    zd = float(np.median(z[order[: counts.size // 2]]))
    b = order[-max(1, int(BRIGHT_FRACTION * counts.size)):]
    excess = np.sqrt(np.maximum(0.0, res[b] ** 2 - zd ** 2 * counts[b])) / norms[b]
    d.update(misfit=float(np.median(excess)), z_dim=zd, z_bright=float(np.median(z[b])))
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
    res = np.linalg.norm(y - x @ np.asarray(endmembers, dtype=np.float64).T, axis=1)

    def short(v):
        return [float(f"{t:.6g}") for t in v]

    return {"counts": short(y.sum(1)), "norm": short(np.linalg.norm(y, axis=1)),
            "residual": short(res)}


def fit_summary(samples: list[dict | None]) -> dict[str, Any]:
    """The ``fit`` block of a slide summary from the tiles' samples: :func:`misfit`'s
    numbers, ``n_samples``, ``rule`` and ``warnings`` (tiles analysed by an earlier
    version carry no samples: said so)."""
    got = [s for s in samples if s and "norm" in s]
    cat = {k: np.concatenate([np.asarray(s[k], float) for s in got] or [np.zeros(0)])
           for k in ("counts", "norm", "residual")}
    m = misfit(cat["counts"], cat["norm"], cat["residual"])
    d: dict[str, Any] = {"n_samples": m["n"], "misfit": m["misfit"], "z_dim": m["z_dim"],
                         "z_bright": m["z_bright"], "warnings": [],
                         "rule": f"median share of the brightest {100 * BRIGHT_FRACTION:g} % "
                                 "of the sampled cell pixels' signal left unexplained beyond "
                                 f"the noise of the dim half; warned above {MAX_MISFIT:g} "
                                 "(right panels on synthetic fields: 0.000)"}
    if len(got) < len(samples):
        d["note"] = (f"{len(samples) - len(got)} of {len(samples)} tiles were analysed by an "
                     "earlier qdmed without fit samples")
    if m["misfit"] is not None and m["misfit"] > MAX_MISFIT:
        d["warnings"].append(
            f"the panel does not explain the brightest cells: {100 * m['misfit']:.0f} % of "
            f"their signal is left unexplained beyond the noise (right panels: ~0 %). A "
            "label on the slide may be missing from the panel, or a spectrum is wrong "
            "(measure the library from controls: qdmed image library); look at the residual "
            "channel of unmixed.ome.zarr")
    return d
