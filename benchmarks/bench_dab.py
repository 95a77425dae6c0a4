"""DAB IHC of a whole section, tile by tile: a slide of off-white glass with a block of
scikit-image's real H-DAB image in it (8192^2 px by default, one sixteenth tissue), scored
by ``analyze_dab_regions`` in this process (no Dask workers) as it runs now, and with the
shortcuts for glass turned off (every tile deconvolved and segmented, and read twice), in
interleaved rounds (each first in turn). Prints the times, their ratio and whether both
found the same cells. The ratio depends on the layout: glass alone is what is saved (a
slide whose every tile touches tissue gains nothing).

Benchmarks are not tests: ``python benchmarks/bench_dab.py [--size 8192] [--rounds 2]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np


@contextmanager
def glass_shortcuts_off():
    """Every tile scored as if it held tissue: the glass test of the threshold pass and
    the nucleus bound of the scoring pass answer 'no'."""
    import qdmed.imaging._dab_regions as dr

    saved = dr._largest_od, dr._no_nucleus_above
    dr._largest_od = lambda darkest, level: np.full(3, np.inf)
    dr._no_nucleus_above = lambda *a, **k: False
    try:
        yield
    finally:
        dr._largest_od, dr._no_nucleus_above = saved


def make_section(path: Path, size: int) -> Path:
    from skimage.data import immunohistochemistry

    from qdmed.imaging import write_ome_tiff

    ihc = immunohistochemistry()
    img = np.full((size, size, 3), 242, np.uint8)
    k = size // 4
    block = np.tile(ihc, (k // 512 + 1, k // 512 + 1, 1))[:k, :k]
    img[size // 2 - k // 2:size // 2 + k - k // 2, size // 2 - k // 2:size // 2 + k - k // 2] = block
    return write_ome_tiff(path, img, pixel_size_um=0.5)


def run(path: Path, out: Path) -> tuple:
    import pandas as pd

    from qdmed.imaging._dab_regions import analyze_dab_regions

    t = time.perf_counter()
    d = analyze_dab_regions(path, None, out, od_cutoffs=(0.05, 0.15, 0.3), n_workers=1,
                            resume=False, progress=False)
    dt = time.perf_counter() - t
    cells = pd.read_parquet(out / "cells.parquet")
    return dt, d["n_cells"], cells


def main(size: int, rounds: int, workdir: Path) -> dict:
    path = make_section(workdir / "section.ome.tif", size)
    now, off, same = [], [], True
    for r in range(rounds):  # each first in turn: neither takes all the warm-up
        for first in ("now", "off") if r % 2 == 0 else ("off", "now"):
            if first == "now":
                t_now, n_now, c_now = run(path, workdir / f"now{r}")
            else:
                with glass_shortcuts_off():
                    t_off, n_off, c_off = run(path, workdir / f"off{r}")
        now.append(t_now)
        off.append(t_off)
        same &= n_now == n_off and c_now.equals(c_off)
    return {"size_px": size, "tissue_fraction": (size // 4) ** 2 / size ** 2,
            "n_cells": n_now, "same_cells": bool(same),
            "time_s": float(np.median(now)), "time_without_glass_shortcuts_s":
            float(np.median(off)), "speedup": float(np.median(off) / np.median(now))}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        res = main(a.size, a.rounds, Path(d))
    print(json.dumps(res, indent=1) if a.json else "\n".join(f"{k}: {v}" for k, v in
                                                             res.items()))
