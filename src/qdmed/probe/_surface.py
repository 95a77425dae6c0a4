"""Surface layers of a probe: coatings, PEG and targeting molecules (data in surface.yaml),
and the PEG layer model."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib.resources import files

import numpy as np
import yaml

from qdmed.errors import InputError, UnknownNameError
from qdmed.references import DEGENNES1980, FLORY1953, Reference

#: Size of one ethylene-oxide unit used in the Flory radius, nm (reference document §4.3).
PEG_MONOMER_NM = 0.35
#: Molar mass of one ethylene-oxide repeat unit, g/mol.
PEG_MONOMER_G_MOL = 44.05


@dataclass(frozen=True)
class SurfaceEntry:
    key: str
    name: str
    kind: str
    size_nm: float  # coating: shell thickness; ligand: hydrodynamic diameter
    size_range_nm: tuple[float, float] | None
    tag: str
    reference: Reference
    zwitterionic: bool = False
    mass_kDa: float | None = None
    note: str | None = None
    default_peg_mw: float | None = None

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "reference"}
        d["reference"] = self.reference.to_dict()
        return d


@cache
def _surface():
    doc = yaml.safe_load((files("qdmed") / "data" / "surface.yaml").read_text("utf-8"))
    src = {k: Reference(k, v["citation"], v.get("doi")) for k, v in doc["sources"].items()}

    def entry(key, e, size_field):
        s = e[size_field]
        return SurfaceEntry(
            key=key, name=e["name"], kind=e["kind"], size_nm=float(s["value"]),
            size_range_nm=tuple(s["range"]) if s.get("range") else None, tag=s.get("tag", "M"),
            reference=src[s["source"]], zwitterionic=bool(e.get("zwitterionic", False)),
            mass_kDa=e.get("mass_kDa"), note=s.get("note") or e.get("note"),
            default_peg_mw=e.get("default_peg_mw"),
        )

    coatings = {k: entry(k, e, "thickness_nm") for k, e in doc["coatings"].items()}
    ligands = {k: entry(k, e, "hydrodynamic_diameter_nm") for k, e in doc["ligands"].items()}
    return coatings, ligands


def coatings() -> dict[str, SurfaceEntry]:
    """Registry of surface coatings (thickness per side, nm)."""
    return dict(_surface()[0])


def ligands() -> dict[str, SurfaceEntry]:
    """Registry of targeting molecules (hydrodynamic diameter, nm)."""
    return dict(_surface()[1])


def _lookup(reg, name, what):
    key = str(name).strip().lower().replace("_", "-").replace(" ", "-")
    aliases = {"folate": "folic-acid", "vhh": "nanobody", "sdab": "nanobody", "antibody": "igg",
               "crgd": "rgd", "sa": "streptavidin", "zw": "zwitterionic"}
    key = aliases.get(key, key)
    if key not in reg:
        raise UnknownNameError(f"unknown {what} {name!r}; accepted: {', '.join(reg)}")
    return reg[key]


def get_coating(name) -> SurfaceEntry:
    return _lookup(_surface()[0], name, "coating")


def get_ligand(name) -> SurfaceEntry:
    return _lookup(_surface()[1], name, "targeting ligand")


@dataclass(frozen=True)
class PegLayer:
    """Thickness of a grafted PEG layer (per side), with its regime."""

    molecular_weight: float
    grafting_density_per_nm2: float
    flory_radius_nm: float
    grafting_distance_nm: float
    regime: str  # "mushroom" or "brush"
    thickness_nm: float

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def flory_radius_nm(molecular_weight):
    """Flory radius of a free PEG coil in good solvent, R_F = a N^(3/5), nm.

    a = 0.35 nm per ethylene-oxide unit, N = M / 44.05 (Flory 1953; de Gennes scaling).
    Reference document §4.3 values: PEG 2000 -> 3.45 nm, PEG 5000 -> 5.99 nm.
    """
    mw = np.asarray(molecular_weight, float)
    if np.any(mw <= 0):
        raise InputError(f"PEG molecular weight must be > 0 g/mol, got {molecular_weight!r}")
    out = PEG_MONOMER_NM * (mw / PEG_MONOMER_G_MOL) ** 0.6
    return out if np.ndim(out) else float(out)


def peg_layer(molecular_weight, grafting_density_per_nm2=0.3) -> PegLayer:
    """PEG layer thickness from chain length and grafting density (Alexander-de Gennes).

    The grafting distance is D = sigma^-1/2. If D > R_F the chains do not overlap
    ("mushroom") and the layer is ~R_F thick; otherwise they stretch into a brush of height
    L = N a (sigma a^2)^(1/3) (de Gennes, Macromolecules 1980, doi:10.1021/ma60077a009).
    The planar brush law overestimates the height on highly curved surfaces (a QD of a few nm;
    Daoud-Cotton star regime), so measured DLS sizes are preferred when available. The default
    grafting density 0.3 chains/nm^2 is an assumption [M].
    """
    mw = float(molecular_weight)
    sigma = float(grafting_density_per_nm2)
    if not sigma > 0:
        raise InputError(f"grafting_density_per_nm2 must be > 0, got {grafting_density_per_nm2!r}")
    rf = flory_radius_nm(mw)
    dist = sigma**-0.5
    n = mw / PEG_MONOMER_G_MOL
    if dist > rf:
        regime, thick = "mushroom", rf
    else:
        regime = "brush"
        thick = max(n * PEG_MONOMER_NM * (sigma * PEG_MONOMER_NM**2) ** (1 / 3), rf)
    return PegLayer(mw, sigma, rf, dist, regime, float(thick))


PEG_REFERENCES = (FLORY1953, DEGENNES1980)
