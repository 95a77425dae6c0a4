"""Bulk semiconductor materials registry (band gaps, masses, dielectric constants...).

>>> from qdmed.materials import get_material
>>> get_material("CdSe").band_gap_eV
1.74
"""

from qdmed.materials._registry import (
    ATOMIC_WEIGHT_G_PER_MOL,
    TOXIC_ELEMENTS,
    Material,
    Property,
    get_material,
    list_materials,
)

__all__ = [
    "ATOMIC_WEIGHT_G_PER_MOL",
    "TOXIC_ELEMENTS",
    "Material",
    "Property",
    "get_material",
    "list_materials",
]
