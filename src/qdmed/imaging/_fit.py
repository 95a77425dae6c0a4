"""Does the panel explain the slide? The unmixing residual against shot noise.

A label on the slide that the panel lacks, or a spectrum that is wrong, leaves a residual
that grows with the signal; shot noise leaves one that grows with its square root. So the
residual of each pixel is taken per square root of its counts,
``z = ||y - A x|| / sqrt(sum(y))``: under Poisson noise z is about the same for dim and bright
pixels (whatever the detector's gain), under a misfit it grows with brightness. The check
compares the median z of the brightest 5 % of the sampled cell pixels with that of the
dimmer half. Measured on synthetic fields (512^2, 300 photons per unit): 0.41-0.65 with the
right panel (a missing autofluorescence component included, which the labels absorb), 8.0-12.4
with the PR or ER label left out of the panel on luminal-A and MCF-7 fields, and 0.60-0.62
when the left-out label is not expressed (HER2-enriched, PR-negative): only a misfit the
data show is flagged. inForm and QuPath show the residual image; this turns it into a
number per slide.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Cell pixels sampled per tile (every k-th, deterministically).
SAMPLES_PER_TILE = 512
#: Fewer samples than this over the slide: no verdict.
MIN_SAMPLES = 200
#: Brightest share of the samples compared with the dimmer half.
BRIGHT_FRACTION = 0.05
#: Warned above this ratio of the medians (right panels: at most 0.65 measured).
MAX_RATIO = 3.0


def residual_sample(region: np.ndarray, abundances: np.ndarray, cells: np.ndarray,
                    endmembers: np.ndarray, offset=None, ceiling: float | None = None,
                    n: int = SAMPLES_PER_TILE) -> dict[str, list[float]]:
    """Counts and residuals of up to `n` cell pixels of a tile, evenly spaced in raster
    order: ``{"counts": [...], "residual": [...]}`` (the detector offset removed; pixels
    at the detector's `ceiling` left out: saturation is a misfit of its own, warned as
    such)."""
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
    return {"counts": [float(f"{v:.6g}") for v in y.sum(1)],
            "residual": [float(f"{v:.6g}") for v in res]}


def fit_summary(samples: list[dict | None]) -> dict[str, Any]:
    """The ``fit`` block of a slide summary from the tiles' samples: ``ratio`` (median z of
    the brightest 5 % over that of the dimmer half; None with too few samples), the two
    medians, ``n_samples`` and ``warnings``."""
    counts = np.concatenate([np.asarray(s["counts"], float) for s in samples if s] or
                            [np.zeros(0)])
    res = np.concatenate([np.asarray(s["residual"], float) for s in samples if s] or
                         [np.zeros(0)])
    ok = counts > 0
    counts, res = counts[ok], res[ok]
    d: dict[str, Any] = {"n_samples": int(counts.size), "ratio": None,
                         "z_dim_median": None, "z_bright_median": None, "warnings": [],
                         "rule": f"median z of the brightest {100 * BRIGHT_FRACTION:g} % of "
                                 "sampled cell pixels over that of the dimmer half, z = "
                                 "||y - A x|| / sqrt(sum y); warned above "
                                 f"{MAX_RATIO:g} (shot noise alone: about 0.4-0.7)"}
    if counts.size < MIN_SAMPLES:
        return d
    z = res / np.sqrt(counts)
    order = np.argsort(counts, kind="stable")
    dim = z[order[: counts.size // 2]]
    bright = z[order[-max(1, int(BRIGHT_FRACTION * counts.size)):]]
    zd, zb = float(np.median(dim)), float(np.median(bright))
    d.update(z_dim_median=zd, z_bright_median=zb, ratio=zb / zd if zd > 0 else None)
    if d["ratio"] is not None and d["ratio"] > MAX_RATIO:
        d["warnings"].append(
            f"the panel does not explain the brightest cells: their unmixing residual, per "
            f"square root of their counts, is {d['ratio']:.1f}x the dim pixels' (shot noise "
            f"alone gives about 0.4-0.7). A label on the slide may be missing from the "
            "panel, or a spectrum is wrong (measure the library from controls: qdmed image "
            "library); look at the residual channel of unmixed.ome.zarr")
    return d
