"""Conversion of results to JSON-safe values (shared by every ``to_dict()`` and ``--json``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import PurePath

import numpy as np


def to_jsonable(o):
    """Recursively turn numpy scalars/arrays, tuples, paths and mappings into JSON types;
    NaN and infinities become None (JSON has no representation for them)."""
    if isinstance(o, Mapping):
        return {str(k): to_jsonable(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [to_jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return to_jsonable(o.tolist())
    if isinstance(o, np.generic):
        return to_jsonable(o.item())
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, PurePath):
        return str(o)
    return o
