"""The software a result was made with: Python and the packages that compute it."""

from __future__ import annotations

import platform
from functools import cache
from importlib import metadata

#: Packages whose versions can change a result (numerics, image reading, segmentation).
PACKAGES = ("numpy", "scipy", "pandas", "scikit-image", "numba", "dask", "distributed",
            "zarr", "numcodecs", "tifffile", "pyarrow", "cellpose", "stardist")


@cache
def environment() -> dict[str, str]:
    """``{"python": "3.11.7", "platform": ..., "numpy": "2.1.3", ...}``: the versions of
    :data:`PACKAGES` installed (those absent left out), for the provenance of summaries and
    reports (a statistician's walk-through: only qdmed's own version was recorded)."""
    out = {"python": platform.python_version(), "platform": platform.platform(terse=True)}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out
