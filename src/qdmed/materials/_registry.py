"""Bulk semiconductor parameters, loaded from ``qdmed/data/materials.yaml``.

Every value carries its source (a :class:`qdmed.references.Reference`), a provenance tag
(P primary text, C two or more independent codes, C1 one code, T third-party transcription,
E evaluated, M background knowledge not verified; see the reference document) and, where the
literature disagrees, the range around the chosen default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from importlib.resources import files
from types import MappingProxyType

import yaml

from qdmed.errors import FileFormatError, UnknownNameError
from qdmed.references import Reference

#: Standard atomic weights, g/mol (IUPAC CIAAW 2021 abridged values;
#: Prohaska et al., Pure Appl. Chem. 2022, 94, 573-600, doi:10.1515/pac-2019-0603).
ATOMIC_WEIGHT_G_PER_MOL = MappingProxyType(
    {
        "Cd": 112.41, "Se": 78.971, "Te": 127.60, "S": 32.06, "Zn": 65.38, "In": 114.82,
        "P": 30.974, "As": 74.922, "Pb": 207.2, "Cu": 63.546, "Si": 28.085, "Ga": 69.723,
        "Hg": 200.59, "O": 15.999, "Ag": 107.87,
    }
)

#: Elements whose content qdmed reports as heavy-metal / toxic-element dose.
TOXIC_ELEMENTS = ("Cd", "Pb", "Hg", "As", "In")

REQUIRED_PROPERTIES = (
    "band_gap_eV",
    "electron_mass_m0",
    "hole_mass_m0",
    "dielectric_static",
    "lattice_a_nm",
    "density_g_cm3",
    "electron_affinity_eV",
)


@dataclass(frozen=True)
class Property:
    """One material parameter with its provenance."""

    name: str
    value: float
    source: Reference
    tag: str
    range: tuple[float, float] | None = None
    note: str | None = None

    def to_dict(self) -> dict:
        return {
            "value": self.value,
            "range": list(self.range) if self.range else None,
            "tag": self.tag,
            "note": self.note,
            "source": self.source.to_dict(),
        }


@dataclass(frozen=True)
class Material:
    """A bulk semiconductor with cited parameters (values at 300 K)."""

    symbol: str
    name: str
    elements: MappingProxyType
    crystal_structure: str
    properties: MappingProxyType
    heavy_metals: tuple[str, ...] = ()
    other_structures: tuple[str, ...] = field(default=())

    def __getattr__(self, item):  # e.g. material.band_gap_eV -> value
        props = object.__getattribute__(self, "properties")
        if item in props:
            return props[item].value
        raise AttributeError(item)

    def get(self, name: str) -> Property:
        """The :class:`Property` ``name`` (with source), or UnknownNameError."""
        try:
            return self.properties[name]
        except KeyError:
            raise UnknownNameError(
                f"material {self.symbol} has no property {name!r}; "
                f"available: {', '.join(sorted(self.properties))}"
            ) from None

    @property
    def molar_mass_g_mol(self) -> float:
        """Molar mass of one formula unit, g/mol (from IUPAC standard atomic weights)."""
        return sum(ATOMIC_WEIGHT_G_PER_MOL[el] * n for el, n in self.elements.items())

    def mass_fraction(self, element: str) -> float:
        """Mass fraction of ``element`` in the formula unit (0 if absent)."""
        n = self.elements.get(element, 0)
        return ATOMIC_WEIGHT_G_PER_MOL.get(element, 0.0) * n / self.molar_mass_g_mol

    @property
    def conduction_band_eV(self) -> float:
        """Conduction-band edge relative to vacuum, eV (= -electron affinity; Anderson's rule)."""
        return -self.electron_affinity_eV

    @property
    def valence_band_eV(self) -> float:
        """Valence-band edge relative to vacuum, eV (= -(electron affinity + band gap))."""
        return -(self.electron_affinity_eV + self.band_gap_eV)

    @property
    def reduced_mass_m0(self) -> float:
        """Exciton reduced mass mu = me mh / (me + mh), in electron masses."""
        me, mh = self.electron_mass_m0, self.hole_mass_m0
        return me * mh / (me + mh)

    def references(self) -> list[Reference]:
        seen = {}
        for p in self.properties.values():
            seen.setdefault(p.source.key, p.source)
        return list(seen.values())

    def to_dict(self) -> dict:
        return {
            "symbol": self.symbol,
            "name": self.name,
            "elements": dict(self.elements),
            "crystal_structure": self.crystal_structure,
            "other_structures": list(self.other_structures),
            "molar_mass_g_mol": round(self.molar_mass_g_mol, 4),
            "heavy_metals": list(self.heavy_metals),
            "properties": {k: v.to_dict() for k, v in sorted(self.properties.items())},
        }


def _parse(doc: dict, path: str) -> dict[str, Material]:
    try:
        sources = {
            k: Reference(k, v["citation"], v.get("doi")) for k, v in doc["sources"].items()
        }
        out = {}
        for sym, entry in doc["materials"].items():
            props = {}
            for pname, p in entry["properties"].items():
                src = p["source"]
                if src not in sources:
                    raise FileFormatError(
                        f"{path}: materials.{sym}.properties.{pname}.source {src!r} "
                        "is not defined under 'sources'"
                    )
                rng = p.get("range")
                props[pname] = Property(
                    pname,
                    float(p["value"]),
                    sources[src],
                    str(p.get("tag", "M")),
                    (float(rng[0]), float(rng[1])) if rng else None,
                    p.get("note"),
                )
            missing = [r for r in REQUIRED_PROPERTIES if r not in props]
            if missing:
                raise FileFormatError(f"{path}: material {sym} lacks {', '.join(missing)}")
            out[sym] = Material(
                symbol=sym,
                name=entry["name"],
                elements=MappingProxyType(dict(entry["elements"])),
                crystal_structure=entry["crystal_structure"],
                properties=MappingProxyType(props),
                heavy_metals=tuple(entry.get("heavy_metals") or ()),
                other_structures=tuple(entry.get("other_structures") or ()),
            )
        return out
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, FileFormatError):
            raise
        raise FileFormatError(f"{path}: malformed materials data ({exc!r})") from exc


@cache
def _registry() -> dict[str, Material]:
    res = files("qdmed") / "data" / "materials.yaml"
    return _parse(yaml.safe_load(res.read_text(encoding="utf-8")), "qdmed/data/materials.yaml")


def list_materials() -> list[str]:
    """Symbols of the materials in the registry."""
    return list(_registry())


def get_material(symbol: str | Material) -> Material:
    """Look up a material by symbol (case-insensitive), e.g. ``get_material("CdSe")``.

    Raises
    ------
    UnknownNameError
        If the symbol is not in the registry (the message lists those that are).
    """
    if isinstance(symbol, Material):
        return symbol
    reg = _registry()
    if symbol in reg:
        return reg[symbol]
    low = {k.lower(): k for k in reg}
    key = str(symbol).strip().lower()
    if key in low:
        return reg[low[key]]
    raise UnknownNameError(
        f"unknown material {symbol!r}; accepted: {', '.join(reg)}"
    )
