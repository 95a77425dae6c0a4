"""End-to-end whole-slide analysis: a synthetic 8-channel slide (5 QDs + DAPI +
autofluorescence, 16k x 16k px by default) analysed tile by tile with 1 and then 2 local Dask
workers, in the same run. Prints time per run, the 2-vs-1 worker speed-up, cells found and
the peak resident memory of the whole process tree (client + workers).

Benchmarks are not tests: ``python benchmarks/bench_slide.py [--size 16384] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path


class PeakRSS:
    """Samples the summed RSS of this process and its children (psutil) every 0.2 s."""

    def __init__(self):
        import psutil

        self.proc = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import psutil

        while not self._stop.is_set():
            total = 0
            for p in [self.proc, *self.proc.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.2)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *a):
        self._stop.set()
        self._t.join()


def main(size: int, tile: int, workdir: Path) -> dict:
    from qdmed.imaging import analyze_slide, breast_panel_5plex, simulate_slide

    panel = breast_panel_5plex()
    slide_path = workdir / "slide.ome.zarr"
    t0 = time.perf_counter()
    s = simulate_slide(slide_path, (size, size), preset="her2-heterogeneous", seed=1,
                       endmembers=panel.endmembers, marker_names=list(panel.markers),
                       channel_names=list(panel.channel_names), photons_per_unit=300.0,
                       tile=2048, write_labels=False)
    t_sim = time.perf_counter() - t0
    out = {"size_px": size, "channels": len(panel.channels), "tile_px": tile,
           "slide_gb_uint16": size * size * len(panel.channels) * 2 / 1e9,
           "simulate_s": t_sim, "truth_cells": int(s.n_cells)}
    for n in (1, 2):
        dest = workdir / f"out{n}"
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            r = analyze_slide(slide_path, panel, dest, tile=tile, n_workers=n, progress=True,
                              write_unmixed=False, outlines=False)
            dt = time.perf_counter() - t0
        out[f"analyze_{n}_workers_s"] = dt
        out[f"cells_{n}_workers"] = r.summary["n_cells"]
        out[f"peak_rss_gb_{n}_workers"] = mem.peak / 1e9
        out[f"megapixels_per_s_{n}_workers"] = size * size / dt / 1e6
        shutil.rmtree(dest)
    out["speedup_2_vs_1_workers"] = out["analyze_1_workers_s"] / out["analyze_2_workers_s"]
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=16384)
    ap.add_argument("--tile", type=int, default=2048)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--workdir", type=Path, default=None)
    a = ap.parse_args()
    wd = a.workdir or Path(tempfile.mkdtemp(prefix="qdmed-bench-"))
    try:
        res = main(a.size, a.tile, wd)
    finally:
        if a.workdir is None:
            shutil.rmtree(wd, ignore_errors=True)
    if a.json:
        print(json.dumps(res, indent=2, sort_keys=True))
    else:
        for k, v in res.items():
            print(f"{k:32s} {v:.4g}" if isinstance(v, float) else f"{k:32s} {v}")
