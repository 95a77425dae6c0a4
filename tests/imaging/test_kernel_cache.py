"""The compiled kernels must load from numba's disk cache in a later process (README:
"a first analysis in a new process then starts in under a second"). A kernel that numba
cannot cache (e.g. one calling another dispatcher through a closure) recompiles silently in
every CLI run and every Dask worker; this test catches that."""

import importlib.util
import os
import subprocess
import sys

import pytest

SCRIPT = """
import numpy as np
from qdmed.imaging._nnls import unmix_nnls
from qdmed.imaging._watershed import watershed
watershed(np.array([[0., 1., 1., 1., 0.]]), np.array([[1, 0, 0, 0, 2]]))  # ties: bucket flood
watershed(np.array([[0., 1., 5., 1., 0.]]), np.array([[1, 0, 0, 0, 2]]))  # distinct values
rng = np.random.default_rng(0)
unmix_nnls(rng.random((50, 8)), rng.random((8, 6)) + 0.1, method="numba")  # SIMD kernel
unmix_nnls(rng.random((50, 12)), rng.random((12, 9)) + 0.1, method="numba")  # scalar kernel
from qdmed.imaging import analyze_field, breast_panel_5plex, simulate_field
panel = breast_panel_5plex()  # every kernel of a field analysis (EDT, cells, sums, ...)
f = simulate_field((256, 256), preset="BT474", seed=1, endmembers=panel.endmembers,
                   marker_names=list(panel.markers), photons_per_unit=300.0)
fa = analyze_field(f.image, panel)
assert len(fa.table) > 0
from qdmed.imaging._outlines import label_outlines
assert label_outlines(fa.cells, fa.table["cell_id"])  # QuPath outlines
import gc
from numba.core.dispatcher import Dispatcher
# every qdmed kernel this process compiled for itself instead of loading it from the cache,
# including any built without cache=True (which the "data saved" log lines never show)
for d in gc.get_objects():
    if (isinstance(d, Dispatcher) and d.signatures
            and (getattr(d.py_func, "__module__", "") or "").startswith("qdmed")
            and sum(d._cache_hits.values()) < len(d.signatures)):
        print("NOT FROM CACHE:", d.py_func.__module__, d.py_func.__qualname__)
"""


@pytest.mark.skipif(importlib.util.find_spec("numba") is None, reason="numba not installed")
def test_kernels_load_from_the_disk_cache_in_a_second_process(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"),
               QDMED_CACHE_DIR=str(tmp_path / "qdmed"), NUMBA_DEBUG_CACHE="1")

    def run():
        out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout + out.stderr

    first = run()
    n_saved = first.count("data saved")
    assert n_saved > 5  # compiled and written
    second = run()
    saved = [line for line in second.splitlines() if "data saved" in line]
    assert not saved, f"kernels recompiled in a second process: {saved}"
    fresh = [line for line in second.splitlines() if line.startswith("NOT FROM CACHE")]
    assert not fresh, f"kernels compiled again in a second process: {fresh}"
    assert second.count("data loaded") == n_saved  # every kernel written is read back
