"""Catalog of commercial bio-imaging QDs (Thermo Fisher Qdot line), from
``qdmed/data/qdot_catalog.yaml``; each value carries its source and provenance tag."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib.resources import files

import yaml

from qdmed.errors import UnknownNameError
from qdmed.optics._spectrum import Spectrum
from qdmed.references import Reference


@dataclass(frozen=True)
class QdotProduct:
    """A commercial QD product: emission peak and FWHM (nm), usual excitation (nm)."""

    name: str
    vendor: str
    emission_peak_nm: float
    emission_fwhm_nm: float
    excitation_nm: float
    core: str | None
    shell: str | None
    quantum_yield_range: tuple[float, float] | None
    lifetime_ns: float | None
    fields: dict  # raw entries with sources and tags
    references: tuple[Reference, ...]

    def emission_spectrum(self, wavelength_nm=None) -> Spectrum:
        from qdmed.optics._emission import emission_spectrum

        return emission_spectrum(self.emission_peak_nm, self.emission_fwhm_nm,
                                 wavelength_nm=wavelength_nm, label=self.name)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "vendor": self.vendor,
            "emission_peak_nm": self.emission_peak_nm,
            "emission_fwhm_nm": self.emission_fwhm_nm,
            "excitation_nm": self.excitation_nm,
            "core": self.core,
            "shell": self.shell,
            "quantum_yield_range": list(self.quantum_yield_range) if self.quantum_yield_range else None,
            "lifetime_ns": self.lifetime_ns,
            "provenance": self.fields,
            "references": [r.to_dict() for r in self.references],
        }


@cache
def _catalog() -> dict[str, QdotProduct]:
    doc = yaml.safe_load((files("qdmed") / "data" / "qdot_catalog.yaml").read_text("utf-8"))
    sources = {k: Reference(k, v["citation"], v.get("doi")) for k, v in doc["sources"].items()}
    out = {}
    for name, e in doc["products"].items():
        refs = {e[f]["source"] for f in e if isinstance(e[f], dict) and "source" in e[f]}
        comp = e.get("composition") or {}
        qy = e.get("quantum_yield") or {}
        out[name] = QdotProduct(
            name=name,
            vendor=e.get("vendor", ""),
            emission_peak_nm=float(e["emission_peak_nm"]["value"]),
            emission_fwhm_nm=float(e["emission_fwhm_nm"]["value"]),
            excitation_nm=float(e["excitation_nm"]["value"]),
            core=comp.get("core"),
            shell=comp.get("shell"),
            quantum_yield_range=tuple(qy["range"]) if "range" in qy else None,
            lifetime_ns=float(e["lifetime_ns"]["value"]) if "lifetime_ns" in e else None,
            fields={k: v for k, v in e.items() if isinstance(v, dict)},
            references=tuple(sources[r] for r in sorted(refs)),
        )
    return out


def qdot_catalog() -> dict[str, QdotProduct]:
    """All catalog products by name (``"Qdot 525"`` ... ``"Qdot 800"``)."""
    return dict(_catalog())


def get_qdot(name) -> QdotProduct:
    """A catalog product by name; ``"Qdot 655"``, ``"qdot655"``, ``"655"`` all work.

    >>> get_qdot("Qdot 655").emission_peak_nm
    655.0
    """
    cat = _catalog()
    key = str(name).lower().replace(" ", "").replace("qdot", "")
    for n, p in cat.items():
        if n.lower().replace(" ", "").replace("qdot", "") == key:
            return p
    raise UnknownNameError(f"unknown Qdot product {name!r}; accepted: {', '.join(cat)}")
