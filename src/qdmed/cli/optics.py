"""``qdmed optics ...``: single optical computations and the registries."""

from __future__ import annotations

from typing import Annotated

import typer

from qdmed.cli._output import flag, print_json, print_kv, print_table

app = typer.Typer(rich_markup_mode=None, help="QD optics: sizing curves, extinction, concentration, EMA, catalog.",
                  no_args_is_help=True)

JSON = Annotated[bool, flag("--json", help="Machine-readable JSON on stdout.")]
MODEL = Annotated[str | None, typer.Option("--model", help="Sizing curve (see `optics models`).")]
SIZING = Annotated[str | None, typer.Option("--sizing-model", help="Sizing curve that gives the diameter from the peak or back (see `optics models`).")]
EXTINCTION = Annotated[str | None, typer.Option("--model", help="Extinction relation, e.g. yu2003-power (default for Cd chalcogenides), yu2003-energy, jasieniak2009 (see `optics models`).")]
HWHM = Annotated[float | None, typer.Option("--hwhm-ev", help="Low-energy half width of the sample's first-exciton band, eV (the jasieniak2009 relation only).")]
EXTRAP = Annotated[bool, flag("--extrapolate", help="Evaluate outside the validity range (warns).")]


@app.command()
def materials(json_: JSON = False):
    """List the materials registry with every value's source."""
    from qdmed.materials import get_material, list_materials

    data = {m: get_material(m).to_dict() for m in list_materials()}
    if json_:
        return print_json(data)
    rows = [{"material": k, "structure": v["crystal_structure"],
             **{p: v["properties"][p]["value"] for p in
                ("band_gap_eV", "electron_mass_m0", "hole_mass_m0", "dielectric_static",
                 "lattice_a_nm", "density_g_cm3", "electron_affinity_eV")}}
            for k, v in data.items()]
    print_table("Materials (values at 300 K; `--json` for sources and ranges)", rows)


@app.command(short_help="Sizing curves and extinction relations, with sources.")
def models(json_: JSON = False):
    """List the sizing curves and extinction relations with references and ranges."""
    from qdmed.optics import extinction_models
    from qdmed.optics import models as sizing_models

    data = {"sizing": {k: v.to_dict() for k, v in sizing_models().items()},
            "extinction": {k: v.to_dict() for k, v in extinction_models().items()}}
    if json_:
        return print_json(data)
    print_table("Sizing curves", [
        {"name": k, "material": v["material"], "peak range (nm)": v["peak_range_nm"],
         "diameter range (nm)": v["diameter_range_nm"],
         "reference": v["reference"]["citation"].split(". ")[0] + f" doi:{v['reference']['doi']}"}
        for k, v in data["sizing"].items()])
    print_table("Extinction relations", [
        {"name": k, "where": v["where"], "formula": v["formula"], "tag": v["tag"]}
        for k, v in data["extinction"].items()])


@app.command()
def size(material: str, peak_nm: Annotated[list[float], typer.Argument(help="First-exciton peak(s), nm.")],
         model: MODEL = None, extrapolate: EXTRAP = False, json_: JSON = False):
    """Diameter (nm) from the first-exciton absorption peak (nm)."""
    from qdmed.optics import get_curve

    curve = get_curve(material, model)
    d = [float(curve.diameter_from_peak(p, extrapolate=extrapolate)) for p in peak_nm]
    rows = [{"peak_nm": p, "diameter_nm": x} for p, x in zip(peak_nm, d, strict=True)]
    if json_:
        return print_json({"material": curve.material, "model": curve.name, "results": rows,
                           "reference": curve.reference.to_dict()})
    print_table(f"{curve.material} size from peak ({curve.name})", rows)


@app.command()
def peak(material: str, diameter_nm: Annotated[list[float], typer.Argument(help="Diameter(s), nm.")],
         model: MODEL = None, extrapolate: EXTRAP = False, json_: JSON = False):
    """First-exciton absorption peak (nm) from the diameter (nm)."""
    from qdmed.optics import get_curve

    curve = get_curve(material, model)
    rows = [{"diameter_nm": d, "peak_nm": float(curve.peak_from_diameter(d, extrapolate=extrapolate))}
            for d in diameter_nm]
    if json_:
        return print_json({"material": curve.material, "model": curve.name, "results": rows,
                           "reference": curve.reference.to_dict()})
    print_table(f"{curve.material} peak from size ({curve.name})", rows)


@app.command(short_help="Molar extinction coefficient at the first exciton.")
def extinction(material: str,
               peak_nm: Annotated[float | None, typer.Option("--peak", help="First-exciton peak, nm.")] = None,
               diameter_nm: Annotated[float | None, typer.Option("--diameter", help="Diameter, nm.")] = None,
               model: EXTINCTION = None,
               sizing_model: SIZING = None,
               hwhm_ev: HWHM = None,
               extrapolate: EXTRAP = False, json_: JSON = False):
    """Molar extinction coefficient at the first exciton, M^-1 cm^-1."""
    from qdmed.optics import extinction_first_exciton

    eps = extinction_first_exciton(material, diameter_nm=diameter_nm, peak_nm=peak_nm,
                                   model=model, hwhm_ev=hwhm_ev, sizing_model=sizing_model,
                                   extrapolate=extrapolate)
    out = {"material": material, "peak_nm": peak_nm, "diameter_nm": diameter_nm,
           **_models_used(material, model, sizing_model, peak_nm, diameter_nm, extrapolate),
           "hwhm_ev": hwhm_ev, "extinction_M_cm": eps}
    return print_json(out) if json_ else print_kv("Extinction", out)


def _models_used(material, model, sizing_model, peak_nm, diameter_nm, extrapolate) -> dict:
    """The extinction relation used and, where the diameter came from the peak, the sizing
    curve and that diameter (so that a result says what it rests on)."""
    from qdmed.optics import extinction_model, get_curve

    m = extinction_model(material, model)
    out = {"model": m.name}
    if diameter_nm is None and peak_nm is not None:
        curve = get_curve(material, sizing_model)
        out["sizing_model"] = curve.name
        out["diameter_nm"] = float(curve.diameter_from_peak(peak_nm, extrapolate=extrapolate))
    elif m.needs_peak:  # the curve gives the peak (or checks the size) the relation takes
        out["sizing_model"] = get_curve(material, sizing_model).name
    return out


@app.command(short_help="Nanocrystal concentration from first-exciton absorbance.")
def concentration(material: str,
                  absorbance: Annotated[float, typer.Option("--absorbance", help="Absorbance at the first exciton.")],
                  peak_nm: Annotated[float | None, typer.Option("--peak", help="First-exciton peak, nm.")] = None,
                  diameter_nm: Annotated[float | None, typer.Option("--diameter", help="Diameter, nm.")] = None,
                  path_length_cm: Annotated[float, typer.Option("--path-length-cm")] = 1.0,
                  model: EXTINCTION = None,
                  sizing_model: SIZING = None,
                  hwhm_ev: HWHM = None,
                  json_: JSON = False):
    """Nanocrystal concentration from first-exciton absorbance (Beer-Lambert)."""
    from qdmed.materials import get_material
    from qdmed.optics import (
        concentration_from_absorbance,
        extinction_first_exciton,
        mass_concentration_mg_per_ml,
        particles_per_ml,
    )

    eps = extinction_first_exciton(material, diameter_nm=diameter_nm, peak_nm=peak_nm,
                                   model=model, hwhm_ev=hwhm_ev, sizing_model=sizing_model)
    used = _models_used(material, model, sizing_model, peak_nm, diameter_nm, False)
    diameter_nm = used.pop("diameter_nm", diameter_nm)
    c = concentration_from_absorbance(absorbance, eps, path_length_cm=path_length_cm)
    out = {"material": material, **used, "hwhm_ev": hwhm_ev, "extinction_M_cm": eps,
           "diameter_nm": diameter_nm,
           "concentration_uM": c * 1e6, "particles_per_ml": particles_per_ml(c),
           "inorganic_mg_per_ml": mass_concentration_mg_per_ml(
               c, diameter_nm, get_material(material).density_g_cm3)}
    return print_json(out) if json_ else print_kv("Concentration", out)


@app.command(short_help="Brus-equation gap (educational).")
def brus(material: str, diameter_nm: float, json_: JSON = False):
    """Brus-equation gap (educational; see the docs for where it fails)."""
    from qdmed.optics import bohr_radius_nm, brus_gap_ev

    out = {**brus_gap_ev(material, diameter_nm).to_dict(),
           "bohr_radius_nm": bohr_radius_nm(material)}
    return print_json(out) if json_ else print_kv(f"Brus {material}", out)


@app.command(short_help="Core/shell gap and band alignment (type I / II).")
def coreshell(core: str, core_diameter_nm: float, shell: str, shell_thickness_nm: float,
              json_: JSON = False):
    """Core/shell effective-mass gap and band alignment (type I / quasi-type II / type II)."""
    from qdmed.optics import core_shell_gap

    out = core_shell_gap(core, core_diameter_nm, shell, shell_thickness_nm).to_dict()
    return print_json(out) if json_ else print_kv(f"{core}/{shell}", out)


@app.command()
def qdots(json_: JSON = False):
    """The commercial Qdot catalog."""
    from qdmed.optics import qdot_catalog

    data = {k: v.to_dict() for k, v in qdot_catalog().items()}
    if json_:
        return print_json(data)
    print_table("Qdot catalog", [
        {"product": k, "emission_nm": v["emission_peak_nm"], "fwhm_nm": v["emission_fwhm_nm"],
         "excitation_nm": v["excitation_nm"], "core/shell": f"{v['core']}/{v['shell']}"}
        for k, v in data.items()])
