"""``qdmed demo``: run the main jobs on built-in example data and write an HTML report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from qdmed.cli._output import flag


def demo(
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("qdmed-demo"),
    json_: Annotated[bool, flag("--json", help="Print the summary as JSON.")] = False,
    quick: Annotated[bool, flag("--quick", help="Smaller imaging field (for tests).")] = False,
    no_progress: Annotated[bool, flag("--no-progress", help="No progress bar.")] = False,
):
    """Run the built-in demo and write qdmed-demo/report.html."""
    from qdmed.cli._output import print_json, print_kv, print_table
    from qdmed.demo import run_demo

    summary = run_demo(out, quick=quick, progress=not no_progress)
    if json_:
        return print_json(summary)
    rows = [{"probe": name, "emission_nm": p.get("emission_peak_nm"),
             "hydrodynamic_nm": p.get("hydrodynamic_diameter_nm"),
             "renal_clearable": p.get("renal_clearable")}
            for name, p in summary.get("probes", {}).items()]
    if rows:
        print_table("Probes", rows)
    im = summary.get("imaging") or {}
    if im:
        print_kv("5-plex breast panel on a synthetic tumour field", {
            "cells": im.get("n_cells"), "nucleus F1 (IoU 0.5)": im.get("nucleus_f1"),
            "HER2 (QD-IHC)": im.get("her2_category"), "HER2-low": im.get("her2_low"),
            "per-cell kappa vs truth": im.get("kappa_vs_truth"),
            "ER / PR (ASCO/CAP 2020)": " / ".join((im.get("receptor_status") or {}).values())
            or None,
            "subtype (HER2 with ER/PR)": im.get("subtype"),
            "HER2 by 128 um region": ", ".join(
                f"{c} {p:.0f} %" for c, p in
                (im.get("her2_heterogeneity") or {}).get("percent_regions", {}).items() if p > 0)
            or None,
            "phenotypes with their own kind within 20 um (z)": ", ".join(
                f"{c} {z:+.1f}" for c, z in
                (im.get("spatial") or {}).get("z_with_own_kind", {}).items()
                if z is not None) or None,
            "blind autofluorescence, cosine to truth (model's)": (
                f"{im['blind_autofluorescence']['cosine_blind_to_truth']:.4f} "
                f"({im['blind_autofluorescence']['cosine_model_to_truth']:.3f})"
                if im.get("blind_autofluorescence") else None),
            "quality control (saturated cells; offset; blur)": (
                f"{im['quality_control']['percent_scored_cells_saturated'] or 0:.1f} %; "
                f"{'suspected' if im['quality_control']['offset_suspected'] else 'none'}; "
                f"{im['quality_control']['focus_median_blur']:.3f}"
                if im.get("quality_control") else None),
            "TMA, HER2 per dearrayed core (core tumour)": ", ".join(
                f"{c} {cat} ({im['tma']['presets'].get(c, '?')})"
                for c, cat in im["tma"]["cores"].items()) if im.get("tma") else None,
            "DAB example (FHL2 stain, HER2 rule)": im.get("dab_her2_category")})
    typer.echo(f"report written to {summary['report']}")
