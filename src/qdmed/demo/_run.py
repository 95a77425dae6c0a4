"""The demo pipeline. Every number comes from the library; the report only renders."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def example_probes():
    """The two example probes of the demo (HER2-targeted CdSe/ZnS; InP/ZnS Cd-free)."""
    from qdmed.probe import Probe

    her2 = Probe.from_emission(
        "CdSe", 605.0, shell="ZnS", shell_thickness_nm=0.9, coating="dhla-peg", peg_mw=2000,
        ligands=(("igg", 2),), targets=("HER2",), quantum_yield=0.6,
        name="anti-HER2 CdSe/ZnS 605 (IgG, DHLA-PEG2000)",
    )
    inp = Probe.from_emission(
        "InP", 620.0, shell="ZnS", shell_thickness_nm=0.6, coating="dhla-peg", peg_mw=2000,
        ligands=(("igg", 2),), targets=("HER2",), quantum_yield=0.5,
        name="anti-HER2 InP/ZnS (Cd-free alternative)",
    )
    return her2, inp


def sizing_figure():
    import matplotlib.pyplot as plt

    from qdmed.optics import models

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (name, c) in enumerate(models().items()):
        lo, hi = c.peak_range_nm
        lam = np.linspace(lo, hi, 200)
        d = c.diameter_from_peak(lam)
        ax.plot(lam, d, color=f"C{i}", label=f"{name} ({lo:.0f}-{hi:.0f} nm)")
        ext = np.linspace(max(lo - 0.15 * (hi - lo), 1.0), lo, 30)
        ax.plot(ext, c._size(ext) * c.to_diameter_factor, color=f"C{i}", ls=":", alpha=0.6)
    ax.set_xscale("log")
    ax.set_xlabel("first-exciton absorption peak (nm)")
    ax.set_ylabel("diameter (nm)")
    ax.set_title("Sizing curves: solid = validity range, dotted = outside (refused by default)")
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


#: The demo's stages, as its progress bar counts them.
DEMO_STEPS = ("sizing curves", "probe design", "imaging: controls and HER2 calibration",
              "imaging: tumour field analysis", "imaging: blind autofluorescence",
              "imaging: tissue microarray", "DAB IHC")


def run_demo(out, *, quick: bool = False, progress: bool = False) -> dict:
    """Write ``out/report.html`` (+ probe YAML files and summary.json); return the summary.
    ``progress``: a progress bar over :data:`DEMO_STEPS` on stderr."""
    from qdmed.imaging._analyze import _progress

    with _progress(progress, len(DEMO_STEPS), 0, DEMO_STEPS[0]) as advance:
        return _run_demo(Path(out), quick, advance)


def _run_demo(out: Path, quick: bool, advance) -> dict:
    import json

    from qdmed.optics import models
    from qdmed.report import HtmlReport, atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    rep = HtmlReport("qdmed demo")
    rep.paragraph("Every number below is computed by qdmed from cited registries; values "
                  "tagged [M] are unverified defaults and are flagged where used.")
    rep.heading("1. Sizing curves")
    rep.figure(sizing_figure(), "sizing curves")
    rep.table([{"curve": k, "material": v.material,
                "peak range (nm)": f"{v.peak_range_nm[0]:.0f}-{v.peak_range_nm[1]:.0f}",
                "diameter range (nm)": "{:.2f}-{:.2f}".format(*v.diameter_range_nm),
                "reference": str(v.reference)} for k, v in models().items()])
    summary = {"probes": {}}
    advance(DEMO_STEPS[1])
    rep.heading("2. Probe design")
    for probe in example_probes():
        sheet = probe.sheet(dose_mg_per_kg=1.0)
        rep.parts.append(f"<h3>{probe.name}</h3>")
        rep.figure(sheet.plot(), probe.name)
        d = sheet.to_dict()
        rep.table({k: v for k, v in d["optics"].items() if not isinstance(v, dict)})
        rep.table({k: v for k, v in d["hydrodynamics"].items() if k != "layers"})
        rep.table(d["hydrodynamics"]["layers"])
        rep.table({"dose (mg/kg)": d["heavy_metals"]["dose_mg_per_kg"],
                   **{f"{el} (ug/kg)": v["ug_per_kg"] for el, v in
                      d["heavy_metals"]["elements"].items()}})
        rep.flags(d["flags"])
        fname = ("probe-" + probe.core + ".yaml")
        probe.to_file(out / fname)
        summary["probes"][probe.name] = {
            "file": fname,
            "core_diameter_nm": probe.core_diameter_nm,
            "emission_peak_nm": d["optics"]["emission_peak_nm"],
            "hydrodynamic_diameter_nm": d["hydrodynamics"]["hydrodynamic_diameter_nm"],
            "renal_clearable": d["hydrodynamics"]["renal_clearable"],
            "heavy_metals_ug_per_kg": {el: v["ug_per_kg"] for el, v in
                                       d["heavy_metals"]["elements"].items()},
        }
    try:
        from qdmed.demo._imaging import imaging_section
    except ImportError:  # imaging stage not installed in this build
        imaging_section = None
    advance(DEMO_STEPS[2])
    if imaging_section is not None:
        summary["imaging"] = imaging_section(rep, out, quick=quick,
                                             advance=lambda i: advance(DEMO_STEPS[i]))
    advance()  # the last stage done
    report = rep.write(out / "report.html")
    summary["report"] = str(report)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, sort_keys=True,
                                                      default=str))
    return summary
