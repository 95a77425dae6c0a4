"""Neighbourhood enrichment: the cost of one label shuffle, qdmed's way against the way one
writes it with scipy.sparse (the class-by-class neighbour counts ``L^T A L`` of the one-hot
labels ``L`` and the adjacency ``A``, as a squidpy-like implementation does), on the same
neighbour pairs of a Poisson pattern of cells; and the whole ``spatial_analysis`` of the
pattern. Both counts are checked equal. Interleaved rounds, medians, ratio in this process.

Benchmarks are not tests: ``python benchmarks/bench_spatial.py [--cells 200000]
[--classes 5] [--rounds 20]``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def pattern(n: int, k: int, seed: int = 0):
    import pandas as pd

    rng = np.random.default_rng(seed)
    side = np.sqrt(n * 150.0)  # one cell per 150 um^2, as in epithelium
    return pd.DataFrame({"centroid_x_um": rng.uniform(0, side, n),
                         "centroid_y_um": rng.uniform(0, side, n),
                         "phenotype": rng.choice([f"c{i}" for i in range(k)], n)})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", type=int, default=200_000)
    ap.add_argument("--classes", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=20)
    a = ap.parse_args()

    import scipy.sparse as sp

    from qdmed.imaging import spatial_analysis
    from qdmed.imaging._spatial import _classify, _ordered_counts, _pairs, _permuted

    cells = pattern(a.cells, a.classes)
    c = _classify(cells, ("phenotype",), None, ("centroid_x_um", "centroid_y_um"))
    pairs = _pairs(c, 20.0)
    n, k = len(c.label), len(c.classes)
    adj = sp.coo_matrix((np.ones(pairs.shape[1]), (pairs[0], pairs[1])), shape=(n, n)).tocsr()
    adj = adj + adj.T
    rng = np.random.default_rng(1)
    times = {"qdmed": [], "sparse": []}
    for r in range(a.rounds):
        lab = _permuted(c.label, c.bounds, rng)
        order = ("qdmed", "sparse") if r % 2 == 0 else ("sparse", "qdmed")
        got = {}
        for name in order:
            t = time.perf_counter()
            if name == "qdmed":
                got[name] = _ordered_counts(lab, pairs, k)
            else:
                one_hot = sp.csr_matrix((np.ones(n), (np.arange(n), lab)), shape=(n, k))
                got[name] = (one_hot.T @ (adj @ one_hot)).toarray()
            times[name].append(time.perf_counter() - t)
        assert np.array_equal(got["qdmed"], got["sparse"])
    t = time.perf_counter()
    res = spatial_analysis(cells, n_permutations=199, seed=0)
    whole = time.perf_counter() - t
    med = {name: float(np.median(v)) for name, v in times.items()}
    print(json.dumps({
        "cells": n, "classes": k, "neighbour_pairs": int(pairs.shape[1]),
        "shuffle_count_s": med, "sparse_over_qdmed": med["sparse"] / med["qdmed"],
        "spatial_analysis_199_shuffles_s": whole, "rounds": a.rounds,
        "max_abs_z": float(np.nanmax(np.abs(np.array(res.z, dtype=float))))}, indent=2))


if __name__ == "__main__":
    main()
