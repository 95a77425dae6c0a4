"""qdmed: a toolkit for quantum-dot (QD) cancer nanomedicine.

Subpackages
-----------
materials   bulk semiconductor parameters with citations (registry)
optics      sizing curves, extinction, effective-mass models, emission spectra, Qdot catalog
probe       a QD probe (core, shell, coating, PEG, ligands): hydrodynamic size, clearance, metals
imaging     multiplexed QD imaging: panels, synthetic slides, NNLS unmixing, cells, HER2 scoring
report      HTML reports rendered from result objects
cli         the ``qdmed`` command line
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from qdmed.errors import InputError, OutOfRangeError, QdmedError

try:
    __version__ = version("qdmed")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = ["InputError", "OutOfRangeError", "QdmedError", "__version__"]
