"""The :class:`Probe`: one QD probe design that travels through every qdmed stage."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from qdmed.errors import FileFormatError, InputError, check_fields, check_number
from qdmed.materials import TOXIC_ELEMENTS, get_material
from qdmed.probe._surface import get_coating, get_ligand, peg_layer
from qdmed.references import CHOI2007, CHOI2010

#: Final hydrodynamic diameter below which QDs were rapidly and efficiently excreted in urine
#: (Choi et al., Nat. Biotechnol. 2007, 25, 1165, doi:10.1038/nbt1340; mice).
RENAL_THRESHOLD_NM = 5.5
#: Lower bound of the hydrodynamic-diameter increase from serum-protein adsorption on
#: non-zwitterionic, non-PEG surfaces ("> 15 nm", Choi 2007).
CORONA_INCREASE_NM = 15.0
#: Upper limit of high-affinity small-molecule ligands per QD compatible with renal clearance
#: (Choi et al., Nat. Nanotechnol. 2010, 5, 42, doi:10.1038/nnano.2009.314: "5-10 ligands").
CHOI2010_LIGAND_LIMIT = (5, 10)

#: What a probe's numbers may be (``check_number`` keywords). Beyond them no QD model here
#: applies: QD cores are 2-10 nm (sizing curves end near 12 nm), giant shells ~7 nm, PEGs on
#: QDs 0.35-40 kDa, a dense brush ~1 chain/nm^2, Stokes shifts tens of meV. A review's
#: 1e308 nm shell overflowed the hydrodynamic diameter to inf, and YAML's ``yes`` was read
#: as a 1 nm core.
PROBE_BOUNDS = {
    "core_diameter_nm": {"lo": 0.0, "lo_open": True, "hi": 100.0, "unit": "nm"},
    "emission_nm": {"lo": 300.0, "hi": 3000.0, "unit": "nm"},
    "shell_thickness_nm": {"lo": 0.0, "hi": 50.0, "unit": "nm"},
    "monolayers": {"lo": 0.0, "hi": 150.0},
    "peg_mw": {"lo": 0.0, "lo_open": True, "hi": 1e5, "unit": "g/mol"},
    "peg_grafting_density_per_nm2": {"lo": 0.0, "lo_open": True, "hi": 10.0,
                                     "unit": "chains/nm^2"},
    "ligand_count": {"lo": 0, "hi": 10_000, "integer": True},
    "quantum_yield": {"lo": 0.0, "hi": 1.0},
    "size_dispersion": {"lo": 0.0, "hi": 0.5},
    "stokes_shift_meV": {"lo": 0.0, "hi": 1000.0, "unit": "meV"},
}


@dataclass(frozen=True)
class Layer:
    name: str
    thickness_nm: float  # added to the radius
    outer_diameter_nm: float
    model: str

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class Probe:
    """A QD probe: core, optional shell, coating, PEG and targeting ligands.

    Parameters
    ----------
    core : str
        Core material symbol.
    core_diameter_nm : float, nm
        Core diameter (for InP: equivalent-volume sphere diameter).
    shell : str, optional
    shell_thickness_nm : float, nm
    coating : str, optional
        Key of the coating registry (``qdmed.probe.coatings()``).
    peg_mw : float, g/mol, optional
        PEG molecular weight (for ``dhla-peg`` or an added PEG layer).
    peg_grafting_density_per_nm2 : float
    ligands : tuple of (name, count)
        Targeting molecules, e.g. ``(("igg", 2),)``.
    quantum_yield : float
    size_dispersion : float
        Relative s.d. of the core diameter.
    stokes_shift_meV : float, optional
        Measured Stokes shift; otherwise the material's [M] model.
    sizing_model : str, optional
    name : str
    targets : tuple of str
        Biomarkers the ligands recognise (e.g. ``("HER2",)``).
    """

    core: str
    core_diameter_nm: float
    shell: str | None = None
    shell_thickness_nm: float = 0.0
    coating: str | None = None
    peg_mw: float | None = None
    peg_grafting_density_per_nm2: float = 0.3
    ligands: tuple = ()
    quantum_yield: float = 0.5
    size_dispersion: float = 0.08
    stokes_shift_meV: float | None = None
    sizing_model: str | None = None
    name: str = ""
    targets: tuple = ()
    extrapolate: bool = field(default=False, compare=False)

    def __post_init__(self):
        mat = get_material(self.core)
        object.__setattr__(self, "core", mat.symbol)
        for key in ("core_diameter_nm", "shell_thickness_nm", "peg_mw",
                    "peg_grafting_density_per_nm2", "quantum_yield", "size_dispersion",
                    "stokes_shift_meV"):
            if getattr(self, key) is not None or key not in ("peg_mw", "stokes_shift_meV"):
                object.__setattr__(self, key, check_number(getattr(self, key), key,
                                                           **PROBE_BOUNDS[key]))
        if self.shell:
            object.__setattr__(self, "shell", get_material(self.shell).symbol)
        if self.shell_thickness_nm > 0 and not self.shell:
            raise InputError("shell_thickness_nm > 0 needs a shell material")
        if self.coating:
            object.__setattr__(self, "coating", get_coating(self.coating).key)
        norm = []
        for item in self.ligands:
            try:
                lig, n = item
            except (TypeError, ValueError):
                raise InputError(f"ligands must be (name, count) pairs, got {item!r}") from None
            n = check_number(n, f"ligand count of {lig!r}", **PROBE_BOUNDS["ligand_count"])
            norm.append((get_ligand(lig).key, n))
        object.__setattr__(self, "ligands", tuple(norm))
        object.__setattr__(self, "targets", tuple(self.targets))
        # marker names: a --target "" was written to a file that could not be read back
        if any(not (isinstance(t, str) and t.strip()) for t in self.targets):
            raise InputError(f"targets must be marker names (non-empty text); got "
                             f"{list(self.targets)!r}")

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_emission(cls, core, emission_nm, **kwargs) -> Probe:
        """Solve the core size for a target emission peak (nm) and build the probe."""
        from qdmed.optics import core_for_emission

        # checked before the size is solved for them (a NaN Stokes shift ended in the
        # solver's "function value is NaN", an infinite one in a 0.0-0.0 nm range)
        check_number(emission_nm, "emission_nm", **PROBE_BOUNDS["emission_nm"])
        for key in ("stokes_shift_meV", "size_dispersion", "shell_thickness_nm"):
            if kwargs.get(key) is not None:
                check_number(kwargs[key], key, **PROBE_BOUNDS[key])
        pred = core_for_emission(
            core, emission_nm, shell=kwargs.get("shell"),
            shell_thickness_nm=kwargs.get("shell_thickness_nm", 0.0),
            stokes_shift_meV=kwargs.get("stokes_shift_meV"),
            sizing_model=kwargs.get("sizing_model"),
            extrapolate=kwargs.get("extrapolate", False),
            size_dispersion=kwargs.get("size_dispersion", 0.08),
        )
        return cls(core=core, core_diameter_nm=float(pred.core_diameter_nm), **kwargs)

    @classmethod
    def from_dict(cls, doc: dict, *, source: str = "<dict>") -> Probe:
        """Build from the YAML/JSON layout written by :meth:`to_dict` (see README)."""
        if not isinstance(doc, dict):
            raise FileFormatError(f"{source}: a probe file must hold a mapping, got {type(doc).__name__}")
        known = {"name", "core", "shell", "coating", "ligands", "quantum_yield",
                 "size_dispersion", "stokes_shift_meV", "sizing_model", "targets", "extrapolate"}
        check_fields(doc, known, source)
        core = doc.get("core")
        if not isinstance(core, dict) or "material" not in core:
            raise FileFormatError(f"{source}: field 'core' must be a mapping with 'material' and "
                                  "'diameter_nm' or 'emission_nm'")
        _check_keys(core, "core", {"material", "diameter_nm", "emission_nm"}, source,
                    one_of=("diameter_nm", "emission_nm"))
        for key, kind in (("name", str), ("extrapolate", bool), ("sizing_model", str)):
            if doc.get(key) is not None and not isinstance(doc[key], kind):
                raise FileFormatError(f"{source}: {key} must be "
                                      f"{'text' if kind is str else 'true or false'}; got "
                                      f"{doc[key]!r}")
        kw = {"name": doc.get("name") or "", "extrapolate": bool(doc.get("extrapolate", False))}
        shell = doc.get("shell")
        if shell:
            if not isinstance(shell, dict) or "material" not in shell:
                raise FileFormatError(f"{source}: field 'shell' must be a mapping with 'material' "
                                      "and 'thickness_nm' (or 'monolayers')")
            _check_keys(shell, "shell", {"material", "thickness_nm", "monolayers"}, source,
                        one_of=("thickness_nm", "monolayers"))
            kw["shell"] = shell["material"]
            kw["shell_thickness_nm"] = _shell_thickness(shell, source)
        coat = doc.get("coating")
        if coat:
            if isinstance(coat, str):
                coat = {"name": coat}
            if not isinstance(coat, dict):
                raise FileFormatError(f"{source}: field 'coating' must be a name or a mapping "
                                      "with 'name'")
            _check_keys(coat, "coating", {"name", "peg_mw", "grafting_density_per_nm2"}, source)
            kw["coating"] = coat.get("name")
            if "peg_mw" in coat:
                kw["peg_mw"] = _file_number(coat["peg_mw"], source, "coating.peg_mw",
                                            "peg_mw")
            if "grafting_density_per_nm2" in coat:
                kw["peg_grafting_density_per_nm2"] = _file_number(
                    coat["grafting_density_per_nm2"], source, "coating.grafting_density_per_nm2",
                    "peg_grafting_density_per_nm2")
        ligs, targets = [], _text_list(doc.get("targets") or [], "targets", source)
        ligands = doc.get("ligands") or []
        if not isinstance(ligands, list):
            raise FileFormatError(f"{source}: ligands must be a list of mappings with 'name' "
                                  f"and 'count'; got {ligands!r}")
        for i, lig in enumerate(ligands):
            if not isinstance(lig, dict) or "name" not in lig:
                raise FileFormatError(f"{source}: ligands[{i}] must be a mapping with 'name' and "
                                      "'count'")
            _check_keys(lig, f"ligands[{i}]", {"name", "count", "target"}, source)
            ligs.append((lig["name"], _file_number(lig.get("count", 1), source,
                                                   f"ligands[{i}].count", "ligand_count")))
            target = lig.get("target")
            if target is not None and not (isinstance(target, str) and target.strip()):
                raise FileFormatError(f"{source}: ligands[{i}].target must be a marker name "
                                      f"(text); got {target!r}")
            if target and target not in targets:
                targets.append(target)
        kw["ligands"] = tuple(ligs)
        kw["targets"] = tuple(targets)
        for k in ("quantum_yield", "size_dispersion", "stokes_shift_meV"):
            if doc.get(k) is not None:
                kw[k] = _file_number(doc[k], source, k, k)
        if doc.get("sizing_model") is not None:
            kw["sizing_model"] = doc["sizing_model"]
        try:
            if "diameter_nm" in core:
                return cls(core=core["material"], core_diameter_nm=_file_number(
                    core["diameter_nm"], source, "core.diameter_nm", "core_diameter_nm"), **kw)
            if "emission_nm" in core:
                return cls.from_emission(core["material"], _file_number(
                    core["emission_nm"], source, "core.emission_nm", "emission_nm"), **kw)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, FileFormatError):
                raise  # names the file already
            if isinstance(exc, InputError):
                raise InputError(f"{source}: {exc}") from exc
            raise FileFormatError(f"{source}: {exc}") from exc
        raise FileFormatError(f"{source}: core needs 'diameter_nm' or 'emission_nm'")

    @classmethod
    def from_file(cls, path) -> Probe:
        """Read a probe from a YAML or JSON file."""
        import yaml

        from qdmed._documents import safe_load_unique, unique_json_pairs

        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise InputError(f"cannot read probe file {p}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise FileFormatError(f"{p}: not a UTF-8 text (YAML or JSON) file ({exc.reason} "
                                  f"at byte {exc.start})") from exc
        try:
            doc = (json.loads(text, object_pairs_hook=unique_json_pairs)
                   if p.suffix.lower() == ".json" else safe_load_unique(text))
        except (yaml.YAMLError, ValueError) as exc:  # JSONDecodeError, a repeated name
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else (
                f" line {exc.lineno}" if hasattr(exc, "lineno") else "")
            raise FileFormatError(f"{p}:{where} malformed {'JSON' if p.suffix == '.json' else 'YAML'}: "
                                  f"{getattr(exc, 'problem', None) or exc}") from exc
        return cls.from_dict(doc, source=str(p))

    def to_dict(self) -> dict:
        """The file layout (round-trips through :meth:`from_dict`)."""
        # plain floats: numpy scalars (a shell given in monolayers) are not YAML
        d: dict = {"name": self.name,
                   "core": {"material": self.core,
                            "diameter_nm": round(float(self.core_diameter_nm), 6)}}
        if self.shell:
            d["shell"] = {"material": self.shell,
                          "thickness_nm": round(float(self.shell_thickness_nm), 6)}
        if self.coating:
            c = {"name": self.coating}
            if self.peg_mw:
                c["peg_mw"] = float(self.peg_mw)
            # the coating's default PEG is grafted at this density too (it was dropped)
            c["grafting_density_per_nm2"] = float(self.peg_grafting_density_per_nm2)
            d["coating"] = c
        d["ligands"] = [{"name": n, "count": c} for n, c in self.ligands]
        d["targets"] = list(self.targets)
        d["quantum_yield"] = float(self.quantum_yield)
        d["size_dispersion"] = float(self.size_dispersion)
        if self.stokes_shift_meV is not None:
            d["stokes_shift_meV"] = float(self.stokes_shift_meV)
        if self.sizing_model:
            d["sizing_model"] = self.sizing_model
        if self.extrapolate:  # a size outside the sizing curve's range reads back as written
            d["extrapolate"] = True
        return d

    def to_file(self, path) -> Path:
        """Write YAML (or JSON by extension) atomically."""
        import yaml

        from qdmed.report import atomic_write_text

        p = Path(path)
        text = (json.dumps(self.to_dict(), indent=2) if p.suffix.lower() == ".json"
                else yaml.safe_dump(self.to_dict(), sort_keys=False))
        atomic_write_text(p, text)
        return p

    def with_(self, **changes) -> Probe:
        return replace(self, **changes)

    # -- geometry ------------------------------------------------------------------------
    @property
    def inorganic_diameter_nm(self) -> float:
        return self.core_diameter_nm + 2 * self.shell_thickness_nm

    def layers(self) -> list[Layer]:
        """Hydrodynamic layer model from the inside out (in buffer, no corona).

        inorganic core/shell -> coating shell (registry thickness) -> PEG layer
        (Flory mushroom / Alexander-de Gennes brush) -> targeting molecules. Proteins
        (IgG, Fab, scFv, nanobody, streptavidin) protrude: one adds its hydrodynamic diameter
        on one side, two or more on both sides (d + 2 d_lig). Small molecules (peptides,
        folate, aptamers) add hydrodynamic volume: d_H^3 -> d_H^3 + n d_lig^3. Both are
        first-order rules [M]; a measured DLS diameter supersedes them.
        """
        out = [Layer("core", self.core_diameter_nm / 2, self.core_diameter_nm, "TEM/sizing")]
        d = self.core_diameter_nm
        if self.shell:
            d += 2 * self.shell_thickness_nm
            out.append(Layer(f"{self.shell} shell", self.shell_thickness_nm, d, "given"))
        if self.coating:
            c = get_coating(self.coating)
            d += 2 * c.size_nm
            out.append(Layer(c.name, c.size_nm, d, f"registry [{c.tag}]"))
        peg_mw = self.peg_mw
        if self.coating and peg_mw is None:
            peg_mw = get_coating(self.coating).default_peg_mw
        if peg_mw:
            peg = peg_layer(peg_mw, self.peg_grafting_density_per_nm2)
            d += 2 * peg.thickness_nm
            out.append(Layer(f"PEG {peg_mw:g}", peg.thickness_nm, d, f"{peg.regime} (de Gennes)"))
        proteins = [(n, c) for n, c in self.ligands if get_ligand(n).kind == "protein" and c > 0]
        smalls = [(n, c) for n, c in self.ligands if get_ligand(n).kind != "protein" and c > 0]
        if smalls:
            vol = d**3 + sum(c * get_ligand(n).size_nm**3 for n, c in smalls)
            new = vol ** (1 / 3)
            out.append(Layer(" + ".join(f"{c}x {n}" for n, c in smalls), (new - d) / 2, new,
                             "volume additivity [M]"))
            d = new
        if proteins:
            big = max(get_ligand(n).size_nm for n, _ in proteins)
            total = sum(c for _, c in proteins)
            add = big * (2 if total >= 2 else 1)
            out.append(Layer(" + ".join(f"{c}x {n}" for n, c in proteins), add / 2, d + add,
                             "protrusion [M]"))
            d += add
        return out

    @property
    def hydrodynamic_diameter_nm(self) -> float:
        """Hydrodynamic diameter in buffer (no protein corona), nm."""
        return self.layers()[-1].outer_diameter_nm

    @property
    def resists_protein_adsorption(self) -> bool:
        """Zwitterionic or PEG-terminated surfaces resist serum-protein adsorption (Choi 2007)."""
        if self.peg_mw:
            return True
        if not self.coating:
            return False
        c = get_coating(self.coating)
        return c.zwitterionic or bool(c.default_peg_mw)

    @property
    def serum_hydrodynamic_diameter_nm(self) -> float:
        """Hydrodynamic diameter in serum: + >= 15 nm corona unless the surface resists
        protein adsorption (Choi 2007; the increase is a lower bound)."""
        hd = self.hydrodynamic_diameter_nm
        return hd if self.resists_protein_adsorption else hd + CORONA_INCREASE_NM

    @property
    def renal_clearable(self) -> bool:
        """True when the final (in-serum) HD is below 5.5 nm (Choi 2007)."""
        return self.serum_hydrodynamic_diameter_nm < RENAL_THRESHOLD_NM

    def ligand_budget(self, ligand: str) -> dict:
        """How many copies of ``ligand`` keep the HD below the renal threshold.

        Returns the count allowed by the layer model and the published empirical limit of
        5-10 high-affinity small-molecule ligands per QD (Choi 2010).
        """
        base = self.with_(ligands=tuple((n, c) for n, c in self.ligands if n != get_ligand(ligand).key))
        n_max = 0
        if base.serum_hydrodynamic_diameter_nm < RENAL_THRESHOLD_NM:
            while n_max < 1000:
                trial = base.with_(ligands=base.ligands + ((ligand, n_max + 1),))
                if trial.serum_hydrodynamic_diameter_nm >= RENAL_THRESHOLD_NM:
                    break
                n_max += 1
        return {
            "ligand": get_ligand(ligand).key,
            "base_hydrodynamic_diameter_nm": base.hydrodynamic_diameter_nm,
            "model_max_count": n_max,
            "choi2010_limit": list(CHOI2010_LIGAND_LIMIT),
            "threshold_nm": RENAL_THRESHOLD_NM,
            "reference": CHOI2010.to_dict(),
        }

    # -- composition ---------------------------------------------------------------------
    def inorganic_masses_g(self) -> dict[str, float]:
        """Mass of each element in one particle, g (bulk densities, sharp interfaces)."""
        masses: dict[str, float] = {}
        core = get_material(self.core)
        v_core = np.pi / 6 * (self.core_diameter_nm * 1e-7) ** 3
        parts = [(core, v_core)]
        if self.shell:
            v_tot = np.pi / 6 * (self.inorganic_diameter_nm * 1e-7) ** 3
            parts.append((get_material(self.shell), v_tot - v_core))
        for mat, vol in parts:
            m = vol * mat.density_g_cm3
            for el in mat.elements:
                masses[el] = masses.get(el, 0.0) + m * mat.mass_fraction(el)
        return masses

    def heavy_metals(self, dose_mg_per_kg: float | None = None) -> dict:
        """Toxic-element content per particle and, for a dose of inorganic QD mass, per kg.

        Returns a dict with ``per_particle_fg`` (femtograms), ``mass_fraction`` and, if a
        dose is given, ``ug_per_kg`` for each of Cd, Pb, Hg, As, In present.
        """
        masses = self.inorganic_masses_g()
        total = sum(masses.values())
        out = {"particle_mass_fg": total * 1e15, "elements": {}}
        for el in TOXIC_ELEMENTS:
            if el in masses:
                row = {"per_particle_fg": masses[el] * 1e15, "mass_fraction": masses[el] / total}
                if dose_mg_per_kg is not None:
                    if not dose_mg_per_kg >= 0:
                        raise InputError(f"dose_mg_per_kg must be >= 0, got {dose_mg_per_kg!r}")
                    row["ug_per_kg"] = dose_mg_per_kg * 1000.0 * masses[el] / total
                out["elements"][el] = row
        return out

    def flags(self) -> list[str]:
        """Toxicity, clearance and model-reliability warnings."""
        f = list(self.emission().warnings)
        core = get_material(self.core)
        if core.heavy_metals and not (self.shell and self.shell_thickness_nm > 0):
            f.append(f"heavy-metal core ({', '.join(core.heavy_metals)}) without a passivating "
                     "shell: ion release and oxidative toxicity expected")
        if self.shell and get_material(self.shell).heavy_metals:
            f.append(f"shell contains {', '.join(get_material(self.shell).heavy_metals)}")
        if not self.renal_clearable:
            f.append(
                f"final hydrodynamic diameter {self.serum_hydrodynamic_diameter_nm:.1f} nm >= "
                f"{RENAL_THRESHOLD_NM} nm: not renally cleared; long-term retention in liver and "
                "spleen expected (Choi 2007)"
            )
        if not self.resists_protein_adsorption:
            f.append("surface is neither zwitterionic nor PEGylated: serum-protein corona "
                     "expected (+>15 nm, Choi 2007)")
        n_small = sum(c for n, c in self.ligands if get_ligand(n).kind != "protein")
        if n_small > CHOI2010_LIGAND_LIMIT[1]:
            f.append(f"{n_small} small-molecule ligands per QD exceeds the 5-10 compatible with "
                     "renal clearance (Choi 2010)")
        if self.targets and not self.ligands:
            f.append(f"targets {', '.join(self.targets)} but carries no ligand: nothing on the "
                     "surface binds them (give its antibody or fragment, e.g. --ligand igg:2)")
        return f

    # -- optics --------------------------------------------------------------------------
    def emission(self):
        """:class:`qdmed.optics.EmissionPrediction` of this probe."""
        from qdmed.optics import predict_emission

        return predict_emission(
            self.core, self.core_diameter_nm, shell=self.shell,
            shell_thickness_nm=self.shell_thickness_nm, size_dispersion=self.size_dispersion,
            stokes_shift_meV=self.stokes_shift_meV, sizing_model=self.sizing_model,
            extrapolate=self.extrapolate,
        )

    def emission_spectrum(self, wavelength_nm=None):
        s = self.emission().spectrum(wavelength_nm)
        from qdmed.optics import Spectrum

        return Spectrum(s.wavelength_nm, s.values, "emission", self.name or s.label)

    def sheet(self, *, dose_mg_per_kg: float = 1.0, temperature_C: float = 37.0):
        """The full probe sheet (a :class:`ProbeSheet`)."""
        from qdmed.probe._sheet import probe_sheet

        return probe_sheet(self, dose_mg_per_kg=dose_mg_per_kg, temperature_C=temperature_C)


def _check_keys(entry: dict, where: str, accepted: set, source: str, one_of=()) -> None:
    """A probe file's mapping holds only `accepted` keys, and at most one of `one_of`
    (FileFormatError naming the file and the field: a misspelt or conflicting key would be
    ignored)."""
    check_fields(entry, accepted, source, where)
    both = [k for k in one_of if k in entry]
    if len(both) > 1:
        raise FileFormatError(f"{source}: {where}: give {' or '.join(one_of)}, not both "
                              f"(the second would be ignored)")


def _text_list(items, where: str, source: str) -> list[str]:
    """A probe file's list of names (targets): text only (YAML's ``yes`` is True)."""
    if not isinstance(items, list) or not all(isinstance(t, str) and t.strip()
                                               for t in items):
        raise FileFormatError(f"{source}: {where} must be a list of marker names (text); "
                              f"got {items!r}")
    return list(items)


def _file_number(value, source: str, field: str, key: str) -> float | int:
    """A probe file's number `field` within ``PROBE_BOUNDS[key]`` (FileFormatError naming
    the file and the field)."""
    return check_number(value, f"{source}: {field}", **PROBE_BOUNDS[key],
                        error=FileFormatError)


def _shell_thickness(shell: dict, source: str) -> float:
    if "thickness_nm" in shell:
        return _file_number(shell["thickness_nm"], source, "shell.thickness_nm",
                            "shell_thickness_nm")
    if "monolayers" in shell:
        return _file_number(shell["monolayers"], source, "shell.monolayers", "monolayers") \
            * monolayer_thickness_nm(shell["material"])
    raise FileFormatError(f"{source}: shell needs 'thickness_nm' or 'monolayers'")


def monolayer_thickness_nm(material) -> float:
    """Thickness of one monolayer: a/sqrt(3) along [111] for cubic lattices, c/2 for wurtzite."""
    m = get_material(material)
    if "lattice_c_nm" in m.properties and "wurtzite" in m.crystal_structure:
        return m.lattice_c_nm / 2
    return m.lattice_a_nm / np.sqrt(3)


def parse_layer_spec(spec: str, what: str) -> tuple[str, str | None]:
    """Split ``"ZnS:0.9"`` or ``"igg:2"`` into (name, value-or-None)."""
    if not isinstance(spec, str) or not spec.strip():
        raise InputError(f"{what} must look like NAME or NAME:VALUE, got {spec!r}")
    name, _, val = spec.partition(":")
    return name.strip(), (val.strip() or None)


REFERENCES = (CHOI2007, CHOI2010)
