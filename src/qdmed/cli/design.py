"""``qdmed design``: solve a probe for a target emission and print its sheet."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from qdmed.cli._output import flag, print_json_warned, print_table, print_warning


def design(
    material: Annotated[str | None, typer.Option("--material", help="Core material, e.g. CdSe.")] = None,
    emission_nm: Annotated[float | None, typer.Option("--emission", help="Target emission peak, nm.")] = None,
    diameter_nm: Annotated[float | None, typer.Option("--diameter", help="Core diameter, nm (instead of --emission).")] = None,
    shell: Annotated[str | None, typer.Option("--shell", help="SHELL:THICKNESS_NM, e.g. ZnS:0.9 (or ZnS:3ML).")] = None,
    coating: Annotated[str | None, typer.Option("--coating", help="COATING[:PEG_MW], e.g. dhla-peg:2000.")] = None,
    ligand: Annotated[list[str] | None, typer.Option("--ligand", metavar="<ligand[:count]>", help="LIGAND[:COUNT], repeatable, e.g. igg:2.")] = None,
    target: Annotated[list[str] | None, typer.Option("--target", metavar="<marker>", help="Biomarker recognised, e.g. HER2.")] = None,
    quantum_yield: Annotated[float | None, typer.Option("--qy", help="Quantum yield, 0-1 (default 0.5).")] = None,
    dose_mg_per_kg: Annotated[float, typer.Option("--dose-mg-per-kg", help="Dose of inorganic QD mass.")] = 1.0,
    stokes_shift_meV: Annotated[float | None, typer.Option("--stokes-mev", help="Measured Stokes shift, meV.")] = None,
    probe_name: Annotated[str | None, typer.Option("--name", help="The probe's name (default: core/shell, emission peak and targets, e.g. 'CdSe/ZnS 605nm anti-HER2'); a panel's labels need distinct names.")] = None,
    file: Annotated[Path | None, typer.Option("--file", help="Probe YAML/JSON file.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Write the probe file (YAML/JSON) here.")] = None,
    extrapolate: Annotated[bool, flag("--extrapolate", help="Allow sizes outside the sizing curve's range.")] = False,
    json_: Annotated[bool, flag("--json", help="Machine-readable JSON on stdout.")] = False,
):
    """Design a QD probe and print its sheet (optics, hydrodynamic size, clearance, metals)."""
    from qdmed.errors import InputError, check_number
    from qdmed.probe import PROBE_BOUNDS, Probe, monolayer_thickness_nm, parse_layer_spec

    if file is not None:
        given = [opt for opt, v in (
            ("--material", material), ("--emission", emission_nm), ("--diameter", diameter_nm),
            ("--shell", shell), ("--coating", coating), ("--ligand", ligand),
            ("--target", target), ("--qy", quantum_yield), ("--stokes-mev", stokes_shift_meV),
            ("--extrapolate", extrapolate or None)) if v]
        if given:
            raise InputError(f"--file holds the whole probe; {', '.join(given)} would not be "
                             "used: edit the file, or design from the options without --file")
        probe = Probe.from_file(file)
        if probe_name is not None:
            probe = dataclasses.replace(probe, name=probe_name)
    else:
        if not material:
            raise InputError("give --material (and --emission or --diameter) or --file")
        kw: dict = {"quantum_yield": 0.5 if quantum_yield is None else quantum_yield,
                    "stokes_shift_meV": stokes_shift_meV,
                    "extrapolate": extrapolate, "targets": tuple(target or ())}
        if shell:
            name, val = parse_layer_spec(shell, "--shell")
            if val is None:
                raise InputError(f"--shell needs a thickness, e.g. {name}:0.9 (nm) or {name}:3ML")
            kw["shell"] = name
            try:
                ml = val.upper().endswith("ML")
                given = float(val[:-2] if ml else val)
            except ValueError:
                raise InputError(f"--shell thickness {val!r} is not a number (nm) or NML") from None
            given = check_number(given, f"--shell {'monolayers' if ml else 'thickness'}",
                                 **PROBE_BOUNDS["monolayers" if ml else "shell_thickness_nm"])
            kw["shell_thickness_nm"] = given * monolayer_thickness_nm(name) if ml else given
        if coating:
            name, val = parse_layer_spec(coating, "--coating")
            kw["coating"] = name
            if val is not None:
                try:
                    given = float(val)
                except ValueError:
                    raise InputError(f"--coating PEG molecular weight {val!r} is not a number") from None
                kw["peg_mw"] = check_number(given, "--coating PEG molecular weight",
                                            **PROBE_BOUNDS["peg_mw"])
        ligs = []
        for spec in ligand or ():
            name, val = parse_layer_spec(spec, "--ligand")
            try:
                ligs.append((name, int(val) if val is not None else 1))
            except ValueError:
                raise InputError(f"--ligand count {val!r} is not an integer") from None
        kw["ligands"] = tuple(ligs)
        if (emission_nm is None) == (diameter_nm is None):
            raise InputError("give exactly one of --emission and --diameter")
        probe = (Probe.from_emission(material, emission_nm, **kw) if emission_nm is not None
                 else Probe(material, diameter_nm, **kw))
        # the emission peak in the default name: two probes of one material told apart (a
        # review's two custom labels were both "CdSe/ZnS", which a panel refuses)
        peak = probe.emission().emission_peak_nm
        probe = dataclasses.replace(probe, name=probe_name if probe_name is not None else (
            f"{material}{'/' + kw['shell'] if 'shell' in kw else ''} {peak:.0f}nm"
            + (f" anti-{'/'.join(target)}" if target else "")))
    sheet = probe.sheet(dose_mg_per_kg=dose_mg_per_kg)
    if out is not None:
        probe.to_file(out)
    d = sheet.to_dict()
    if json_:
        return print_json_warned(d, d["flags"])
    o, h = d["optics"], d["hydrodynamics"]
    print_table(f"Probe sheet: {probe.name or probe.core}", [
        {"quantity": "core diameter (nm)", "value": probe.core_diameter_nm},
        {"quantity": "inorganic diameter (nm)", "value": h["inorganic_diameter_nm"]},
        {"quantity": "first exciton (nm)", "value": o["absorption_peak_nm"]},
        {"quantity": "emission peak (nm)", "value": o["emission_peak_nm"]},
        {"quantity": "emission FWHM (nm)", "value": o["emission_fwhm_nm"]},
        {"quantity": "extinction 1S (M^-1 cm^-1)", "value": o["extinction_first_exciton_M_cm"]},
        {"quantity": "brightness 1S x QY (M^-1 cm^-1)", "value": o["brightness_first_exciton_M_cm"]},
        {"quantity": "hydrodynamic diameter, buffer (nm)", "value": h["hydrodynamic_diameter_nm"]},
        {"quantity": "hydrodynamic diameter, serum (nm)", "value": h["serum_hydrodynamic_diameter_nm"]},
        {"quantity": "renal clearable (< 5.5 nm)", "value": h["renal_clearable"]},
        {"quantity": "diffusion 37 degC (um^2/s)", "value": h["diffusion_coefficient_um2_s"]},
        *[{"quantity": f"{el} (ug/kg at {dose_mg_per_kg:g} mg/kg)", "value": v["ug_per_kg"]}
          for el, v in d["heavy_metals"]["elements"].items()],
    ])
    print_table("Layers", h["layers"], ["name", "thickness_nm", "outer_diameter_nm", "model"])
    for f in d["flags"]:
        print_warning(f)
    typer.echo(f"Stokes shift: {o['stokes_shift_source']}")
