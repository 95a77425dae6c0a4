"""1,000,000 vectorized size inversions (CdSe, Yu 2003): time per million, and the ratio
against a plain numpy polyval of the same polynomial measured in the same run.

Benchmarks are not tests: run ``python benchmarks/bench_sizing.py [--json]``.
"""

from __future__ import annotations

import json
import sys
import timeit

import numpy as np

from qdmed.optics import get_curve, peak_from_size, size_from_peak


def main() -> dict:
    rng = np.random.default_rng(0)
    peaks = rng.uniform(450.0, 650.0, 1_000_000)
    diam = size_from_peak("CdSe", peaks)
    coeffs = [1.6122e-9, -2.6575e-6, 1.6242e-3, -0.4277, 41.57]
    n = 5
    t_qdmed = min(timeit.repeat(lambda: size_from_peak("CdSe", peaks), number=1, repeat=n))
    t_inverse = min(timeit.repeat(lambda: peak_from_size("CdSe", diam), number=1, repeat=n))
    t_polyval = min(timeit.repeat(lambda: np.polyval(coeffs, peaks), number=1, repeat=n))
    curve = get_curve("CdSe")
    err = float(np.max(np.abs(curve.peak_from_diameter(diam) - peaks)))
    out = {
        "n": peaks.size,
        "size_from_peak_s_per_million": t_qdmed,
        "peak_from_size_s_per_million": t_inverse,
        "bare_polyval_s_per_million": t_polyval,
        "ratio_size_from_peak_vs_polyval": t_qdmed / t_polyval,
        "ratio_peak_from_size_vs_polyval": t_inverse / t_polyval,
        "roundtrip_max_error_nm": err,
    }
    return out


if __name__ == "__main__":
    res = main()
    if "--json" in sys.argv:
        print(json.dumps(res, indent=2, sort_keys=True))
    else:
        for k, v in res.items():
            print(f"{k:36s} {v:.4g}" if isinstance(v, float) else f"{k:36s} {v}")
