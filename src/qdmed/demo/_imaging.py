"""Demo section 3: a 5-plex breast panel on a synthetic tumour field, HER2 scored against
controls, compared with the simulation's ground truth; conventional DAB IHC beside it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def imaging_section(rep, out: Path, *, quick: bool = False, advance=lambda i: None) -> dict:
    """The demo's imaging sections; ``advance(i)`` as each next stage (3-6 of
    :data:`qdmed.demo._run.DEMO_STEPS`) begins."""
    from qdmed.imaging import (
        analyze_field,
        analyze_slide,
        breast_panel_5plex,
        calibrate_her2,
        cohen_kappa,
        f1_at_iou,
        gates_from_negative_controls,
        plot_calibration,
        score_dab,
        simulate_field,
        write_ome_tiff,
    )
    from qdmed.imaging._report import (
        her2_figure,
        overlay_figure,
        receptor_paragraph,
        saturation_paragraph,
        write_slide_report,
    )

    size = 512 if quick else 1024
    panel = breast_panel_5plex()
    kw = dict(endmembers=panel.endmembers, marker_names=list(panel.markers),
              channel_names=list(panel.channel_names), photons_per_unit=300.0)
    rep.heading("3. Multiplexed QD imaging: 5-plex breast panel")
    rep.paragraph("HER2, ER, PR, EGFR and mTOR on Qdot 525/565/605/655/705 with a DAPI "
                  "counterstain, one 405 nm excitation and an 8-channel spectral detector "
                  "(440-740 nm). The tissue is synthetic (qdmed's simulator, ground truth "
                  "known): no public QD-stained tissue image exists.")
    rep.figure(panel.plot(), "panel")
    rep.table({"labels": panel.to_dict()["labels"],
               "condition number": panel.to_dict()["condition_number"],
               "warnings": panel.to_dict()["warnings"] or "none"})
    # controls -> HER2 calibration (no fixed clinical constants)
    controls = {}
    for name, seed in (("MDA-MB-468", 10), ("MCF-7", 11), ("BT474", 12)):
        f = simulate_field((size // 2 + 256,) * 2, preset=name, seed=seed, **kw)
        controls[name] = analyze_field(f.image, panel).table
    cal = calibrate_her2(controls, categories={"MDA-MB-468": "0", "MCF-7": "1+"})
    negatives = {"HER2": "MDA-MB-468", "ER": "MDA-MB-468", "PR": "MDA-MB-468",
                 "EGFR": "MCF-7"}
    gates = gates_from_negative_controls(controls, negatives)
    rep.paragraph("HER2 intensity cut-offs calibrated on control cell lines (MDA-MB-468 as 0, "
                  "MCF-7 as 1+, BT474 as 3+):")
    rep.table(cal.to_dict())
    rep.paragraph("Positivity gates: 99th percentile of a control negative for the marker "
                  "(MDA-MB-468 for HER2/ER/PR, MCF-7 for EGFR):")
    rep.table({m: {"compartment": g.compartment, "threshold": g.threshold}
               for m, g in gates.items()})
    rep.figure(plot_calibration(controls, her2=cal, gates=gates, negatives=negatives),
               "the controls under the HER2 cut-offs and the gates")
    advance(3)
    # the tumour field, written as OME-TIFF and analysed like any slide
    field = simulate_field((size, size), preset="her2-heterogeneous", seed=3, **kw)
    slide_path = out / "tumour.ome.tif"
    write_ome_tiff(slide_path, field.image, channel_names=list(panel.channel_names),
                   pixel_size_um=field.pixel_size_um)
    # HER2 heterogeneity in 128 um squares: the preset's clones are ~150 um patches
    res = analyze_slide(slide_path, panel, out / "tumour-analysis", tile=2048,
                        her2_calibration=cal, gates=gates, progress=False,
                        her2_region_um=128.0, her2_region_min_cells=30)
    write_slide_report(res)
    cells = res.cells()
    her2 = res.her2
    # agreement with the simulation's truth
    cy = np.clip(cells["centroid_y"].round().astype(int), 0, size - 1)
    cx = np.clip(cells["centroid_x"].round().astype(int), 0, size - 1)
    tid = field.cells[cy, cx]
    ok = tid > 0
    truth = field.truth.set_index("cell_id")
    pred = her2.cells.set_index("cell_id")["category"].reindex(cells["cell_id"][ok]).astype(str)
    kappa = cohen_kappa(truth.loc[tid[ok], "her2_category"].astype(str).to_numpy(),
                        pred.to_numpy(), weights="linear")
    # nucleus segmentation quality on the same field (in memory, same pipeline)
    f1 = f1_at_iou(analyze_field(field.image, panel).nuclei, field.nuclei).f1
    rep.figure(overlay_figure(res), "overlay")
    rep.figure(her2_figure(her2), "HER2")
    h = her2.to_dict()
    rep.table({"slide HER2 category": h["category"], "result": h["result"], "rule": h["rule"],
               "HER2-low": h["her2_low"], "HER2-ultralow": h["her2_ultralow"],
               "cells": h["n_cells"], "total HER2 load": h["total_her2_load"],
               "truth: per-cell HER2 mix": field.to_dict().get("her2_counts", ""),
               "per-cell agreement with truth (linear-weighted Cohen kappa)": kappa,
               "nucleus segmentation F1 at IoU 0.5": f1})
    het = res.her2_heterogeneity
    rep.paragraph(het.report())
    if het.n_regions:
        rep.figure(het.plot(), "HER2 by region")
    scored = res.summary["markers_scored"]
    rep.table({"percent positive": scored["percent_positive"],
               "phenotypes (cells)": scored.get("phenotypes", {})})
    for m, v in (scored.get("receptor_status") or {}).items():
        rep.paragraph(receptor_paragraph(m, v))
    if res.summary.get("subtype"):
        rep.paragraph(f"Subtype (HER2 IHC category with ER/PgR status; Howlader et al. 2014): "
                      f"{res.summary['subtype']['label']}.")
    spatial = _spatial_demo(rep, res.cells())
    sat, offs, foc = (res.summary[k] for k in ("saturation", "offset", "focus"))
    qc = {"percent_scored_cells_saturated": sat.get("percent_scored_cells_saturated"),
          "offset_suspected": offs["suspected"], "focus_median_blur": foc["median"],
          "out_of_focus_tiles": len(foc["out_of_focus_tiles"]),
          "warnings": [*sat["warnings"], *offs["warnings"], *foc["warnings"]]}
    rep.paragraph(f"Quality control (as in every analysis): {saturation_paragraph(sat)} "
                  f"Detector offset: {offs['issue'] or 'no problem seen'}. Focus: "
                  f"blur effect {foc['median']:.3f} (Crete 2007; sharp ~0.31 at 0.5 um/px), "
                  f"{qc['out_of_focus_tiles']} tile(s) out of focus.")
    rep.paragraph(f"Full slide report: {res.out_dir / 'report.html'}", cls="muted")
    advance(4)
    blind = _blind_af_demo(rep, panel, kw, 384 if quick else 512)
    advance(5)
    tma = _tma_demo(rep, out, panel, kw, cal, gates)
    advance(6)
    # conventional DAB IHC for comparison (scikit-image's bundled real IHC image)
    from skimage.data import immunohistochemistry

    dab = score_dab(immunohistochemistry(), od_cutoffs=(0.05, 0.15, 0.3))
    d = dab.to_dict()
    rep.heading("4. Conventional DAB IHC (colour deconvolution) for comparison")
    rep.paragraph("scikit-image's bundled brightfield IHC image, Ruifrok-Johnston H-DAB "
                  "deconvolution, per-cell membrane DAB optical density (cut-offs 0.05 / 0.15 "
                  "/ 0.3 OD are illustrative).")
    rep.table({k: v for k, v in d.items() if not isinstance(v, dict | list)})
    if dab.her2 is not None:
        rep.paragraph(f"The same ASCO/CAP rule as for the QD signal, with the OD cut-offs as "
                      f"intensity classes: {dab.her2.report()}. The image is scikit-image's "
                      "FHL2 stain of colonic glands, not a HER2 stain: this shows the rule "
                      "applied to DAB, not a HER2 result.")
    return {"slide": str(slide_path), "n_cells": int(len(cells)), "her2_category": h["category"],
            "her2_low": h["her2_low"], "kappa_vs_truth": kappa, "nucleus_f1": f1,
            "dab_h_score": d.get("h_score"),
            "dab_her2_category": None if dab.her2 is None else dab.her2.category,
            "percent_positive": scored["percent_positive"],
            "phenotypes": scored.get("phenotypes", {}), "blind_autofluorescence": blind,
            "receptor_status": {m: v["label"]
                                for m, v in (scored.get("receptor_status") or {}).items()},
            "subtype": (res.summary.get("subtype") or {}).get("label"),
            "her2_heterogeneity": het.to_dict(include_regions=False), "quality_control": qc,
            "spatial": spatial, "tma": tma}


def _spatial_demo(rep, cells) -> dict:
    """Where the phenotypes lie: each with its own kind within 20 um, against the same cells
    with their phenotypes shuffled (:func:`qdmed.imaging.spatial_analysis`)."""
    from qdmed.imaging import spatial_analysis

    sp = spatial_analysis(cells, by="phenotype", radius_um=20.0, seed=0)
    own = {c: sp.z[i][i] for i, c in enumerate(sp.classes)}
    rep.paragraph(
        "Where the phenotypes lie (qdmed image spatial): neighbours within 20 um against the "
        f"same cells with their phenotypes shuffled {sp.n_permutations} times (histoCAT's "
        "neighbourhood enrichment). z of each phenotype with its own kind: " + ", ".join(
            f"{c} {'-' if z is None else f'{z:+.1f}'}" for c, z in own.items())
        + ". The synthetic tumour's clones are patches, so each phenotype neighbours its own.")
    rep.figure(sp.plot(), "Phenotypes in space")
    return {"radius_um": sp.radius_um, "n_permutations": sp.n_permutations,
            "z_with_own_kind": own, "warnings": list(sp.warnings)}


#: The demo TMA: one row of three 300 um cores, each a tumour preset (a patient).
_TMA_PRESETS = ("HER2-enriched", "triple-negative", "her2-ultralow")


def _tma_demo(rep, out: Path, panel, kw: dict, cal, gates) -> dict:
    """A small tissue microarray, dearrayed and scored core by core."""
    from qdmed.imaging import analyze_slide, find_tma_cores, simulate_tma
    from qdmed.imaging._report import regions_map_figure
    from qdmed.report import atomic_write_text

    tma = simulate_tma(out / "tma.ome.zarr", rows=1, cols=3, presets=list(_TMA_PRESETS),
                       core_diameter_um=300.0, spacing_um=340.0, margin_um=40.0,
                       position_jitter_um=8.0, tile=1024, seed=9, **kw)
    cores, overview = find_tma_cores(tma.path)
    atomic_write_text(out / "tma-cores.geojson", json.dumps(cores.to_geojson()))
    res = analyze_slide(tma.path, panel, out / "tma-analysis", scheduler="synchronous",
                        her2_calibration=cal, gates=gates, progress=False,
                        regions=out / "tma-cores.geojson", write_unmixed=False)
    rows = res.summary["regions_scored"]["regions"]
    rep.heading("Tissue microarray, scored core by core")
    rep.paragraph(f"A synthetic TMA of three 300 um cores, one tumour each ({', '.join(_TMA_PRESETS)}"
                  f"), dearrayed ({cores.n_found} cores in a {cores.n_rows} x {cores.n_cols} "
                  "grid, named as QuPath names them) and analysed as one slide; each core is "
                  "scored as a slide of its own cells (regions.csv).")
    rep.figure(cores.plot(overview), "dearrayed cores")
    fig = regions_map_figure(rows)
    if fig is not None:
        rep.figure(fig, "HER2 by core")
    rep.table([{k: r.get(k) for k in ("region", "status", "n_scored", "her2_category",
                                      "her2_mean_membrane", "ER_status", "PR_status")}
               for r in rows])
    return {"cores": {r["region"]: r["her2_category"] for r in rows},
            "presets": dict(zip((c["name"] for c in cores.cores), _TMA_PRESETS, strict=True)),
            "analysis": str(res.out_dir)}


def _blind_af_demo(rep, panel, kw, size: int) -> dict:
    """A field whose autofluorescence is redder than the panel's model, its spectrum found
    from the stained field alone (no unstained control) and compared with the truth."""
    import matplotlib.pyplot as plt

    from qdmed.imaging import autofluorescence_blind, simulate_field
    from qdmed.imaging._panel import autofluorescence_spectrum, mixing_matrix

    e = panel.endmembers.copy()
    af = mixing_matrix([autofluorescence_spectrum(560.0, 180.0)], panel.channels)[:, 0]
    e[:, -1] = af / af.sum() * e[:, -1].sum()
    f = simulate_field((size, size), preset="BT474", seed=7, **{**kw, "endmembers": e})
    prof, info = autofluorescence_blind(f.image, e[:, :-1], label_names=list(panel.markers))

    def cos(u, v):
        return float(u @ v / np.linalg.norm(u) / np.linalg.norm(v))

    out = {"cosine_model_to_truth": cos(panel.endmembers[:, -1], e[:, -1]),
           "cosine_blind_to_truth": cos(prof, e[:, -1]),
           "angle_to_labels_deg": info["angle_to_labels_deg"], "warnings": info["warnings"]}
    rep.heading("Autofluorescence without an unstained control")
    rep.paragraph("A BT474 field whose autofluorescence (560 nm, 180 nm FWHM) is redder than "
                  "the panel's model (520/150 nm). Its spectrum is estimated from the stained "
                  "field alone (autofluorescence_blind: orthogonal subspace projection plus a "
                  "per-label half-sample mode) and compared with the rendered one.")
    centres = [0.5 * (lo + hi) for lo, hi in panel.channels]
    fig, ax = plt.subplots(figsize=(6, 3))
    for vec, style, label in ((e[:, -1], "k-", "truth"), (panel.endmembers[:, -1], "C0--",
                                                           "panel model"), (prof, "C3o", "blind")):
        ax.plot(centres, vec / vec.sum(), style, label=label, ms=5)
    ax.set_xlabel("detection channel centre (nm)")
    ax.set_ylabel("fraction of signal")
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    rep.figure(fig, "blind autofluorescence")
    rep.table({k.replace("_", " "): v for k, v in out.items()})
    return out
