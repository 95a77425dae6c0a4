"""``qdmed image ...``: panels, synthetic slides, unmixing, slide and cohort analysis."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated

import typer

from qdmed.cli._output import (
    flag,
    print_json,
    print_json_warned,
    print_kv,
    print_table,
    print_warning,
)

app = typer.Typer(rich_markup_mode=None, help="Multiplexed QD imaging (panel design, spectral library, unmixing, per-cell analysis, HER2 scoring, cohorts) and conventional DAB IHC beside it.",
                  no_args_is_help=True)

JSON = Annotated[bool, flag("--json", help="Machine-readable JSON on stdout.")]
PANEL = Annotated[Path | None, typer.Option("--panel", help="Panel YAML (default: the built-in 5-plex breast panel).")]
NOPROG = Annotated[bool, flag("--no-progress", help="No progress bar.")]
NO_OUTLINES = Annotated[bool, flag("--no-outlines", help="Skip cells.geojson (QuPath cell outlines).")]
NO_UNMIXED = Annotated[bool, flag("--no-unmixed", help="Skip unmixed.ome.zarr (the slide report then has no image overview).")]
POISSON = Annotated[bool, flag("--poisson", help="Poisson maximum-likelihood unmixing (read noise included, see --read-noise): unbiased at low counts where every label is present; where labels are absent the non-negativity bias is larger than plain NNLS's (README). 50-400x slower (~10 us a pixel on one core). Counts must be proportional to photons (offset subtracted).")]
READ_NOISE = Annotated[float | None, typer.Option("--read-noise", help="With --poisson: the detector's read noise, counts RMS, 0.1 to 1000 (default 1).")]
PIXEL_SIZE = Annotated[float | None, typer.Option("--pixel-size-um", help="um per pixel (default: the slide's own; one that records none is read at 0.5 um/px, warned: areas and densities scale with its square).")]
NUC_THRESHOLD = Annotated[float | None, typer.Option("--nuclear-threshold", help="Nuclear abundance that segments nuclei on every tile, instead of Otsu's split of the brightest window (warned when it leaves nucleus-like objects out: an uneven stain).")]
SEGMENTATION = Annotated[str, typer.Option("--segmentation", help="Nuclear segmentation: watershed (scikit-image, default), cellpose or stardist (optional packages, their pretrained nuclear models, or --segmentation-model).")]
SEG_MODEL = Annotated[Path | None, typer.Option("--segmentation-model", help="cellpose or StarDist weights on disk instead of the pretrained nuclear model (downloaded on first use, which needs internet): a cellpose model file, or a StarDist model folder (config.json, weights_best.h5). A lab's own model, or the pretrained one copied for offline use.")]
#: qdmed.imaging._external_seg.MODEL_PIXEL_SIZE_UM (not imported here: the command line
#: imports the imaging package only when a command runs)
_MODEL_PX = 0.5
SEG_PIXEL = Annotated[float, typer.Option("--segmentation-pixel-size", help="um per pixel at which cellpose or StarDist see the slide (resampled for them; labels come back in slide pixels): 0.5, where QuPath runs the pretrained StarDist model and cellpose's 17 px nuclei are 8.5 um; for a model of your own, the pixel size it was trained at.")]
UNMIXED_BITS = Annotated[int | None, typer.Option("--unmixed-bits", help="Round unmixed.ome.zarr's float32 values to this many mantissa bits (1-23; 10: relative error <= 4.9e-4) so it compresses better (2048^2 px x 8 channels: 135 -> 76 MB at 10): lossy, for viewing; cells.parquet is exact either way.")]
AUTOFLUOR = Annotated[str, typer.Option("--autofluorescence", help="'panel' (the panel's column) or 'blind' (estimated from each slide itself).")]
REGION_UM = Annotated[float | None, typer.Option("--her2-region-um", help="With --calibration: side (um) of the square regions scored one by one to map HER2 heterogeneity (default 500).")]
REGION_MIN = Annotated[int | None, typer.Option("--her2-region-min-cells", help="With --calibration: scored cells a heterogeneity region needs (default 100).")]
OFFSET = Annotated[str | None, typer.Option("--offset", help="Detector offset (dark level), counts, subtracted from every pixel first: one number or one per channel (comma-separated). For images that are not dark-corrected.")]
EXCLUDE = Annotated[str | None, typer.Option("--exclude-flagged", help="Leave cells with these quality flags out of the scores: saturated, out_of_focus (comma-separated). cells.parquet keeps them.")]
PER_REGION = Annotated[bool | None, flag("--per-region/--no-per-region", help="Score every region (TMA core or named annotation) on its own: regions.csv. Default: on for TMA cores.")]
TMA_MAP = Annotated[Path | None, typer.Option("--tma-map", help="CSV of core,case[,slide]: each core's case (patient); cases.csv scores every case from its cores (--case-rule).")]
CASE_RULE = Annotated[str, typer.Option("--case-rule", help="How a case's cores make its scores: pooled (their cells scored as one slide) or highest (its highest-scoring core; per marker, its most positive core).")]
REGION_CELLS = Annotated[int | None, typer.Option("--region-min-cells", help="With regions scored one by one: scored cells a region needs to be scored on its own (default 100).")]
LABELS_CHANNEL = Annotated[str | None, typer.Option("--labels-channel", help="The channel of the nuclei label images holding the nuclei, by name or 0-based index, when they have several.")]
LABELS_DOWNSAMPLE = Annotated[float, typer.Option("--labels-downsample", help="Slide pixels per label pixel when the label images were made at a downsample of the slide (e.g. a QuPath export at downsample 4, or 3.5714 = 0.9 um / 0.252 um); each slide pixel takes the label pixel holding its centre.")]
CELL_LABELS_CHANNEL = Annotated[str | None, typer.Option("--cell-labels-channel", help="The channel of the cell label images holding the cells, by name or 0-based index, when they have several.")]
PATTERN = Annotated[str | None, typer.Option("--pattern", help="Only the slides whose names match this shell pattern, case ignored (e.g. '*_component_data.tif' in an inForm export folder).")]
SATURATION = Annotated[float | None, typer.Option("--saturation-level", help="Detector ceiling, counts (e.g. 4095 for a 12-bit camera stored as uint16). Default: the OME SignificantBits ceiling, else the integer type's maximum.")]


#: The --od-cutoffs default: an example, not a calibration (every result says so:
#: qdmed.imaging._brightfield.EXAMPLE_OD_CUTOFFS).
DAB_EXAMPLE_CUTOFFS = "0.05,0.15,0.3"


def _unmix_options(poisson: bool, read_noise: float | None) -> dict:
    """The settings of --poisson and --read-noise (checked before any slide is read)."""
    from qdmed.imaging._poisson import read_noise_for

    noise = read_noise_for(poisson, read_noise, "--read-noise", "--poisson")
    return {"unmix_weights": "poisson", "read_noise_adu": noise} if poisson else {}


def _offset(text: str | None):
    """--offset: one number or comma-separated numbers (one per channel), or None."""
    from qdmed.errors import InputError

    if text is None:
        return None
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        raise InputError(f"--offset must be a number or comma-separated numbers (counts, one "
                         f"per channel); got {text!r}") from None
    return vals[0] if len(vals) == 1 else vals


def _flags(text: str | None) -> tuple[str, ...]:
    """--exclude-flagged: comma-separated flag names (out-of-focus = out_of_focus)."""
    return () if not text else tuple(t.strip().replace("-", "_") for t in text.split(","))


def _region_options(her2, calibration, regions, her2_region_um, her2_region_min_cells,
                    region_min_cells) -> dict:
    """The HER2-map and region options for analyze/cohort, refused where they would do
    nothing: the HER2 map needs HER2 cut-offs (--calibration), per-region scores need
    regions."""
    from qdmed.errors import InputError
    from qdmed.imaging._heterogeneity import check_region_args

    # the values first: a bad one is said as such, calibration or not (a walk-through's
    # --her2-region-um -1 was told it needs a calibration)
    check_region_args(500.0 if her2_region_um is None else her2_region_um,
                      100 if her2_region_min_cells is None else her2_region_min_cells,
                      prefix="her2_")
    if (her2_region_um is not None or her2_region_min_cells is not None) and her2 is None:
        raise InputError("--her2-region-um and --her2-region-min-cells map HER2 region by "
                         "region, which needs HER2 cut-offs: give --calibration with them"
                         + (f" ({calibration} has positivity gates only)" if calibration
                            else ""))
    if region_min_cells is not None and regions is None:
        raise InputError("--region-min-cells applies to regions scored one by one: give "
                         "--regions (--regions-dir for a cohort)")
    return {"her2_region_um": 500.0 if her2_region_um is None else her2_region_um,
            "her2_region_min_cells": 100 if her2_region_min_cells is None
            else her2_region_min_cells,
            "region_min_cells": 100 if region_min_cells is None else region_min_cells}


def _no_pattern(pattern, path) -> None:
    """--pattern picks slides in a folder; for one slide it would do nothing."""
    from qdmed.errors import InputError

    if pattern is not None:
        raise InputError(f"--pattern picks slides in a folder; {path} is one slide")


def _names(text: str | None) -> tuple[str, ...]:
    """Comma-separated names (core names, presets), as given."""
    return () if not text else tuple(t.strip() for t in text.split(",") if t.strip())


def _png_path(path: Path | None) -> Path | None:
    """--plot: a .png file name where a file can be written (checked as the command starts,
    before any work or output: a plot that cannot be written left the command's other
    outputs behind with exit code 2)."""
    if path is None:
        return path
    return _output_path("--plot", path, (".png",), "--plot writes a PNG image: give a file "
                        f"name ending in .png; got {str(path)!r}")


def _output_path(option: str, path: Path, suffixes: tuple[str, ...],
                 wrong_suffix: str | None = None) -> Path:
    """An output file name checked before any work: its suffix (``wrong_suffix``: the
    message when it is not one of ``suffixes``), not a folder, and in a folder that can
    be made."""
    from qdmed.cli import _file_in_path
    from qdmed.errors import InputError

    kinds = " or ".join(suffixes)
    if path.suffix.lower() not in suffixes:
        raise InputError(wrong_suffix or f"{option} {str(path)!r}: give a file name ending "
                         f"in {kinds}")
    if path.is_dir():
        raise InputError(f"{option} {path} is a folder; give a file name ending in {kinds}")
    blocking = _file_in_path(path.parent)
    if blocking is not None:
        raise InputError(f"{option} {path}: {blocking} is a file where a folder is needed")
    return path


def _panel(path):
    from qdmed.imaging import Panel, breast_panel_5plex

    return Panel.from_file(path) if path else breast_panel_5plex()


def _panel_beside(slide: Path) -> Path:
    """The panel file `simulate` writes beside a slide: ``<stem>-panel.yaml``."""
    return slide.parent / (_stem(slide) + "-panel.yaml")


def _panels_beside(panel_file, sides) -> list[str]:
    """Without --panel, the warning that a panel file lies beside a slide (`sides`:
    :func:`_panel_beside` of each) labelling markers otherwise than the built-in panel (a
    review: a custom panel's slide analysed without --panel read each marker from another
    QD's abundance, unsaid: the built-in panel holds every QD, so the fit was perfect)."""
    if panel_file is not None:
        return []
    from qdmed.imaging import Panel
    from qdmed.imaging._panel import label_key

    p = _panel(None)
    builtin = dict(zip(p.markers, p.labels, strict=True))
    found = []
    for side in sides:
        if not side.is_file():
            continue
        try:
            side_panel = Panel.from_file(side)
        except (ValueError, OSError):  # not a panel of ours: not this check's business
            continue
        labels = {} if side_panel.unmixed else dict(zip(side_panel.markers,
                                                        side_panel.labels, strict=True))
        if any(m not in builtin or label_key(builtin[m]) != label_key(q)
               for m, q in labels.items()):
            found.append(str(side))
    if not found:
        return []
    return [f"no --panel given: the built-in panel is used, but {found[0]}"
            + (f" (and {len(found) - 1} more)" if len(found) > 1 else "")
            + " beside the slide labels its markers otherwise; if it is the slide's panel, "
            f"give --panel {found[0]}"]


def _calibration_for(panel, path):
    """(Her2Calibration or None, gates or None, the controls' intensity scale or None,
    warnings) from a `qdmed image calibrate` JSON file, for a panel: a calibration whose
    HER2 cut-offs score a marker the panel lacks (an ER/PR panel) but which holds
    positivity gates gives its gates alone, said so (a review found the whole file refused
    there)."""
    if path is None:
        return None, None, None, []
    from qdmed.imaging import load_calibration

    c = load_calibration(path)
    if c.her2 is not None and c.gates and c.her2.marker not in panel.components:
        return None, c.gates, c.intensity_scale, [
            f"the calibration's HER2 cut-offs score {c.her2.marker}, which the panel lacks: "
            "only its positivity gates are used"]
    return c.her2, c.gates, c.intensity_scale, []


@app.command(short_help="Assign QDs to markers; mixing matrix, condition, spillover.")
def panel(
    markers: Annotated[str, typer.Option("--markers", help="Comma-separated biomarkers.")] = "HER2,ER,PR,EGFR,mTOR",
    labels: Annotated[str, typer.Option("--labels", help="Comma-separated candidate labels: catalog Qdots, or probe YAML files for custom QDs (qdmed design ... --out probe.yaml).")] = "Qdot 525,Qdot 565,Qdot 605,Qdot 655,Qdot 705,Qdot 800",
    excitation_nm: Annotated[float, typer.Option("--excitation-nm", help="Excitation line (nm): labels it barely excites are not candidates; warned when it falls in a detection band.")] = 405.0,
    brightness: Annotated[list[str] | None, typer.Option("--brightness", metavar="<label=x>", help="LABEL=RELATIVE_BRIGHTNESS (repeatable; default 1 each): brighter labels read with less noise and go to the least expressed markers when --expression is given.")] = None,
    expression: Annotated[list[str] | None, typer.Option("--expression", metavar="<marker=x>", help="MARKER=RELATIVE_ABUNDANCE (repeatable): the labels read with the least noise (brightness, and the unmixing's noise gain) go to the least abundant markers.")] = None,
    channels: Annotated[int | None, typer.Option("--channels", help="Spectral detector channels (default 8).")] = None,
    low_nm: Annotated[float | None, typer.Option("--low-nm", help="Spectral detector: the first channel's lower edge, nm (default 440).")] = None,
    high_nm: Annotated[float | None, typer.Option("--high-nm", help="Spectral detector: the last channel's upper edge, nm (default 740).")] = None,
    filters: Annotated[str | None, typer.Option("--filters", help="Filter bands instead, e.g. 440-480,505-545,590-630,660-720 (nm; at least one per component, the counterstain and autofluorescence included).")] = None,
    counterstain: Annotated[str | None, typer.Option("--counterstain", help="Nuclear counterstain label.")] = "DAPI",
    components: Annotated[str | None, typer.Option("--components", help="An already-unmixed image instead (inForm component_data.tif, an unmixed QPTIFF): COMPONENT=CHANNEL pairs, comma-separated, e.g. 'DAPI=DAPI,HER2=Qdot 605,autofluorescence=Autofluorescence' (a channel by its name or 0-based index).")] = None,
    slide: Annotated[Path | None, typer.Option("--slide", help="With --components: check the channels against this image and record its channel names.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Write the panel YAML here.")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", callback=_png_path, help="PNG of the labels' spectra over the detection bands, the mixing matrix and the spillover spreading.")] = None,
    json_: JSON = False,
):
    """Assign QDs to markers to minimise crosstalk; report mixing matrix and spillover.
    With --components, a panel for an image unmixed elsewhere (its channels are the markers)."""
    from qdmed.errors import InputError
    from qdmed.imaging import design_panel, spectral_channels

    if components is not None:
        if filters:
            raise InputError("--filters describes a spectral panel's detection; --components "
                             "an already-unmixed image's channels: give one of them")
        if brightness or expression:
            raise InputError("--brightness and --expression rank labels for a spectral "
                             "panel; with --components the image's channels are the markers")
        return _unmixed_panel_command(components, slide, out, plot, json_)
    if slide is not None:
        raise InputError("--slide goes with --components (an already-unmixed image)")
    detector = (channels, low_nm, high_nm)
    if filters and any(v is not None for v in detector):
        raise InputError("--filters gives the detection bands; --channels, --low-nm and "
                         "--high-nm describe a spectral detector instead: give one of them")
    if filters:
        try:
            bands = [tuple(float(v) for v in b.split("-")) for b in filters.split(",")]
        except ValueError:
            raise InputError(f"--filters must look like 440-480,505-545,590-630,660-720 (nm), got {filters!r}") from None
        if any(len(b) != 2 or b[1] <= b[0] for b in bands):
            raise InputError(f"--filters bands must be LOW-HIGH with HIGH > LOW, got {filters!r}")
    else:
        bands = spectral_channels(8 if channels is None else channels,
                                  440.0 if low_nm is None else low_nm,
                                  740.0 if high_nm is None else high_nm)
    mk = [m.strip() for m in markers.split(",") if m.strip()]
    if not mk:
        raise InputError(f"--markers names no marker (comma-separated, e.g. HER2,ER,PR); got "
                         f"{markers!r}")
    twice = sorted({m for m in mk if mk.count(m) > 1})
    if twice:  # said of the markers given (the panel adds the counterstain)
        raise InputError(f"--markers names {', '.join(twice)} more than once: {markers}")
    if counterstain and counterstain.strip().upper() != "DAPI":
        from qdmed.errors import UnknownNameError
        from qdmed.optics import get_qdot, qdot_catalog

        try:
            get_qdot(counterstain)
        except UnknownNameError:
            raise UnknownNameError(
                f"unknown counterstain {counterstain!r}; accepted: DAPI (Hoechst 33342 emits "
                f"close to it) or a catalog Qdot ({', '.join(qdot_catalog())})") from None
    fixed = {counterstain: counterstain} if counterstain else None
    p = design_panel(([counterstain] if counterstain else []) + mk,
                     [_candidate_label(x.strip()) for x in labels.split(",") if x.strip()],
                     bands, fixed=fixed, excitation_nm=excitation_nm,
                     brightness=_numbers("--brightness", brightness, "LABEL=NUMBER"),
                     expression=_numbers("--expression", expression, "MARKER=NUMBER"))
    if out:
        p.to_file(out)
        typer.echo(f"panel written to {out}", err=True)  # as the plot (stdout: --json's)
    if plot is not None:
        _save_plot(plot, p.plot())
    d = p.to_dict()
    if json_:
        return print_json_warned(d, d["warnings"])
    print_table("Panel", [{"marker": m, "label": d["labels"][m], "peak_nm": d["label_peaks_nm"][m],
                           "noise_gain": g} for m, g in zip(p.markers, d["noise_gain"], strict=False)])
    typer.echo(f"condition number {d['condition_number']:.1f}; channels {', '.join(p.channel_names)}")
    ssm, comps = d["spreading"], d["components"]
    pairs = sorted(((ssm[i][j], comps[j], comps[i]) for i in range(len(comps))
                    for j in range(len(comps)) if i != j and "autofluorescence" not in
                    (comps[i], comps[j])), reverse=True)[:3]
    typer.echo("largest spillover spreading (bright -> spread into, per sqrt abundance): "
               + ", ".join(f"{b} -> {t} {v:.2f}" for v, b, t in pairs))
    for w in d["warnings"]:
        print_warning(w)


def _candidate_label(item: str):
    """A --labels entry: a catalog name, or a probe YAML file (a custom QD)."""
    if item.lower().endswith((".yaml", ".yml")):
        from qdmed.errors import InputError
        from qdmed.probe import Probe

        path = Path(item)
        if not path.is_file():
            raise InputError(f"--labels: probe file {item!r} does not exist")
        probe = Probe.from_file(path)
        return probe if probe.name else probe.with_(name=path.stem)
    return item


def _numbers(option: str, items: list[str] | None, form: str) -> dict[str, float] | None:
    """Repeatable ``KEY=NUMBER`` options as a dict (None when not given)."""
    from qdmed.errors import InputError

    if not items:
        return None
    out: dict[str, float] = {}
    for item in items:
        key, value = _pair(option, item, form)
        try:
            out[_once(option, key, out)] = float(value)
        except ValueError:
            raise InputError(f"{option} {key}: {value!r} is not a number") from None
    return out


def _unmixed_panel_command(components: str, slide: Path | None, out: Path | None,
                           plot: Path | None, json_: bool):
    from qdmed.errors import InputError
    from qdmed.imaging import bind_unmixed, read_slide, unmixed_panel

    mapping = {}
    for pair in (t.strip() for t in components.split(",")):
        if not pair:
            continue
        name, sep, chan = pair.partition("=")
        if not sep or not name.strip() or not chan.strip():
            raise InputError(f"--components takes COMPONENT=CHANNEL pairs, comma-separated; got "
                             f"{pair!r} in {components!r}")
        if name.strip() in mapping:
            raise InputError(f"--components names {name.strip()!r} twice")
        chan = chan.strip()
        mapping[name.strip()] = _index_or_name(chan)
    names = None
    p = unmixed_panel(mapping)
    if slide is not None:
        names = read_slide(slide).channel_names
        p = bind_unmixed(p, names, where=str(slide))
    if out:
        p.to_file(out)
    if plot is not None:
        _save_plot(plot, p.plot())
    from qdmed.imaging import AnalysisSettings

    nuc = AnalysisSettings().nuclear_marker
    warns = [] if nuc in p.components else [
        f"no {nuc} component: the analyses segment nuclei on {nuc}; map the nuclear "
        f"counterstain's channel to it ({nuc}=CHANNEL)"]
    d = p.to_dict()
    if json_:
        return print_json_warned(d, [*d.get("warnings", []), *warns])
    idx = p.source_channels() if names else [None] * len(p.components)
    print_table("Already-unmixed panel", [
        {"component": c, "image channel": names[i] if names else str(src),
         **({"index": i} if names else {})}
        for c, src, i in zip(p.components, p.sources, idx, strict=True)])
    if names:
        unused = [n for i, n in enumerate(names) if i not in idx]
        typer.echo(f"{slide.name}: {len(names)} channels"
                   + (f"; not analysed: {', '.join(unused)}" if unused else ""))
    for w in [*d.get("warnings", []), *warns]:
        print_warning(w)


def _slide_folder(path: Path) -> bool:
    """True for a folder of slides; False for a slide file or an OME-Zarr store."""
    from qdmed.imaging._slideio import SLIDE_SUFFIXES

    zarr_store = any((path / m).exists() for m in (".zattrs", ".zgroup", "zarr.json"))
    return path.is_dir() and not path.name.lower().endswith(SLIDE_SUFFIXES) and not zarr_store


def _named(slide: str, message: str) -> str:
    """A slide's message prefixed by its name, unless it names the slide already (an error
    giving the file's path read "a.ome.zarr: slides/a.ome.zarr: ...")."""
    return message if slide in message else f"{slide}: {message}"


def _slide_info(s) -> dict:
    """What `qdmed image info` says of one slide (a SlideImage)."""
    return {"format": s.format, "shape_yxc": list(s.shape), "dtype": str(s.dtype),
            "channels": list(s.channel_names), "pixel_size_um": s.pixel_size_um,
            "levels": [list(lv.shape[:2]) for lv in (s.levels or (s.data,))],
            "significant_bits": s.significant_bits,
            "emission_nm": list(s.emission_nm) if s.emission_nm else None,
            "exposure_ms": list(s.exposure_ms) if s.exposure_ms else None,
            "pixel_size_note": s.pixel_size_note}


@app.command(short_help="What a slide file (or a folder of slides) holds.")
def info(slide: Annotated[Path, typer.Argument(help="A slide, or a folder of slides.")],
         pattern: PATTERN = None, json_: JSON = False):
    """What a slide file holds: format, size, type, channel names, pixel size, pyramid,
    emission wavelengths and exposure times; for a folder, one row per slide."""
    from qdmed.imaging import read_slide

    if _slide_folder(slide):
        import fnmatch

        from qdmed.imaging._cohort import find_slides
        from qdmed.imaging._slideio import CONVERT_SUFFIXES

        # and the whole-slide files qdmed does not read, each with the way to convert it
        others = [p for p in slide.iterdir() if p.suffix.lower() in CONVERT_SUFFIXES
                  and not p.name.startswith(".") and (pattern is None or fnmatch.fnmatch(
                      p.name.lower(), pattern.lower()))]
        rows = []
        for sp in sorted({*find_slides(slide, required=not others, pattern=pattern,
                                       distinct_stems=False, scans=True), *others}):
            try:
                s = read_slide(sp)
            except Exception as exc:  # noqa: BLE001 - one slide's fault, not the folder's
                from qdmed.imaging._cohort import failure_message

                rows.append({"slide": sp.name, "status": "unreadable",
                             "message": failure_message(exc)})
                continue
            # what reading found wrong (an OME-Zarr's lost chunks) in the row's message
            rows.append({"slide": sp.name, "status": "ok", **_slide_info(s),
                         **({"message": "; ".join(s.warnings)} if s.warnings else {})})
        if json_:
            return print_json(rows)
        print_table(f"Slides in {slide} (channel names: --json, or one slide)", [
            {**r, "shape_yxc": " x ".join(map(str, r.get("shape_yxc") or [])),
             "exposures_ms": ", ".join(f"{x:g}" for x in sorted(set(r.get("exposure_ms")
                                                                     or [])))}
            for r in rows], ["slide", "status", "format", "shape_yxc", "dtype",
                             "pixel_size_um", "exposures_ms", "message"])
        return None
    _no_pattern(pattern, slide)
    src = read_slide(slide)
    d = {"slide": str(slide), **_slide_info(src),
         **({"warnings": list(src.warnings)} if src.warnings else {})}
    if json_:
        return print_json(d)
    # levels as width x height, as scanners and QuPath give image sizes; the rows a
    # brightfield scan leaves empty (detector bits, emission, exposure) are left out
    print_kv("Slide", {("levels (width x height)" if k == "levels" else k): (
        ", ".join(v) if k == "channels" else
        ", ".join(f"{x:g}" for x in v) if k in ("emission_nm", "exposure_ms") else
        ", ".join(f"{b} x {a}" for a, b in v) if k == "levels" else
        " x ".join(map(str, v)) if k == "shape_yxc" else v)  # as a folder's table writes it
        for k, v in d.items() if v is not None or k == "pixel_size_um"})


@app.command(short_help="List the synthetic expression presets.")
def presets(json_: JSON = False):
    """List the synthetic expression presets (cell lines, tumour subtypes)."""
    from qdmed.imaging import list_presets

    d = {k: v.to_dict() for k, v in list_presets().items()}
    if json_:
        return print_json(d)
    print_table("Presets", [{"name": k, "kind": v["kind"], "HER2 mix": ", ".join(
                                 f"{c} {100 * f:.0f} %" for c, f in v["her2_mix"].items() if f),
                             "description": v["description"]} for k, v in d.items()])


#: Largest edge (px) of a slide simulated straight to OME-TIFF (rendered in memory).
MAX_TIFF_SIMULATE_PX = 8192


def _stem(out: Path) -> str:
    """A slide's name without its image suffix (a.v1.ome.zarr -> a.v1): the stem of the
    truth folder and panel file written beside it (the whole name if nothing is left)."""
    from qdmed.imaging._cohort import slide_stem

    return slide_stem(out.name) or out.name


@app.command(short_help="Simulate a multiplexed QD slide or TMA, truth beside it.")
def simulate(
    out: Annotated[Path, typer.Option("--out", help="Output slide: .ome.zarr or .ome.tif")] = Path("slide.ome.zarr"),
    preset: Annotated[str, typer.Option("--preset", help="Expression preset (cell line or tumour subtype; qdmed image presets lists them).")] = "her2-heterogeneous",
    size: Annotated[int, typer.Option("--size", help="Edge length, px.")] = 2048,
    panel_file: PANEL = None,
    photons: Annotated[float, typer.Option("--photons", help="Photoelectrons per unit abundance (Python's simulate_slide and simulate_field default to 1000: give the same value to both when their slides meet, e.g. controls and tissue for one calibration).")] = 300.0,
    seed: Annotated[int, typer.Option("--seed", help="Random seed: the same seed, the same slide.")] = 0,
    tissue_fraction: Annotated[float, typer.Option("--tissue-fraction", help="Share of the field covered by tissue, 0-1 (the rest is glass).")] = 1.0,
    junctions: Annotated[str, typer.Option("--junctions", help="How touching cells' membranes are drawn: 'resolved' (two rings side by side, each cell's stain on its side) or 'shared' (one line showing both cells' membranes, as a microscope sees a junction; which cell it belongs to is left to the analysis).")] = "resolved",
    bit_depth: Annotated[int, typer.Option("--bit-depth", help="Detector ADC bits (8-16): counts above 2^bits - 1 saturate there.")] = 16,
    offset_adu: Annotated[float, typer.Option("--offset", help="Detector offset (dark level) added to every count, as a camera that is not dark-corrected records it.")] = 0.0,
    tma: Annotated[str | None, typer.Option("--tma", help="A tissue microarray of ROWSxCOLS cores (e.g. 4x6) instead of one tissue; OME-Zarr only. --size is then ignored.")] = None,
    presets: Annotated[str | None, typer.Option("--presets", help="TMA: presets of the cores, comma-separated, repeated over the cores row by row (default: --preset).")] = None,
    core_diameter_um: Annotated[float | None, typer.Option("--core-diameter-um", help="TMA: core diameter, um (default 600).")] = None,
    missing: Annotated[str | None, typer.Option("--missing", help="TMA: cores lost from the section, e.g. B-2,C-5.")] = None,
    rotation_deg: Annotated[float, typer.Option("--rotation-deg", help="TMA: the grid turned by this angle (degrees, within +-45).")] = 0.0,
    only: Annotated[str | None, typer.Option("--only", help="Label only these (comma-separated; the counterstain is a label too), the others absent: a single-stain control (--only HER2) or a fluorescence-minus-one control (every label but one: --only DAPI,HER2,ER,EGFR,mTOR).")] = None,
    unstained: Annotated[bool, flag("--unstained", help="No label at all: an unstained control (autofluorescence only).")] = False,
    no_progress: NOPROG = False,
    json_: JSON = False,
):
    """Simulate a multiplexed QD slide (with ground truth beside it) from a panel; --tma for a
    tissue microarray (one preset per core; cores.geojson beside the truth)."""
    from qdmed.errors import InputError
    from qdmed.imaging import simulate_field, simulate_slide, write_ome_tiff, write_truth

    name = out.name.lower()
    if not name.endswith((".zarr", ".tif", ".tiff")):
        raise InputError(f"--out must be an OME-Zarr (.ome.zarr) or OME-TIFF (.ome.tif) path; "
                         f"got {out}")
    if tma is None and not name.endswith(".zarr") and size > MAX_TIFF_SIMULATE_PX:
        # the OME-TIFF route renders the whole field in memory (~110 bytes per pixel with
        # its truth: 1.8 GB at 4096^2); OME-Zarr is written tile by tile
        raise InputError(f"--size {size} to OME-TIFF would be rendered in memory (~"
                         f"{110 * size * size / 1e9:.0f} GB); up to {MAX_TIFF_SIMULATE_PX} px "
                         "is accepted: write larger slides as .ome.zarr (tile by tile)")
    stem = _stem(out)
    out.parent.mkdir(parents=True, exist_ok=True)  # as analyze makes its output folder
    import glob

    other = [q.name for q in out.parent.glob(f"{glob.escape(stem)}.*")
             if q.name != out.name and _stem(q) == stem] if out.parent.is_dir() else []
    if other and (out.parent / f"{stem}-truth").exists():
        raise InputError(f"{stem}-truth/ beside {out.name} holds the truth of {other[0]}: "
                         "give this slide another name (the truth and panel files are named "
                         "after the slide without its suffix)")
    if tma is None and (presets is not None or missing is not None or rotation_deg != 0.0
                        or core_diameter_um is not None):
        raise InputError("--presets, --missing, --rotation-deg and --core-diameter-um "
                         "describe a tissue microarray: they need --tma")
    p = _panel(panel_file)
    kw = dict(endmembers=p.endmembers, marker_names=list(p.markers),
              channel_names=list(p.channel_names), photons_per_unit=photons, seed=seed,
              tissue_fraction=tissue_fraction, bit_depth=bit_depth, offset_adu=offset_adu,
              junctions=junctions)
    if unstained and only is not None:
        raise InputError("--unstained has no label at all; --only keeps some: give one")
    if unstained or only is not None:
        keep = set() if unstained else set(_names(only))
        unknown = sorted(keep - set(p.markers))
        if unknown:
            folded = {m.lower(): m for m in p.markers}
            meant = [folded[u.lower()] for u in unknown if u.lower() in folded]
            raise InputError(f"--only {', '.join(unknown)}: not a marker of the panel; "
                             f"markers: {', '.join(p.markers)}" + (
                                 f" (names are case-sensitive: {', '.join(meant)}?)"
                                 if meant else ""))
        kw["qd_brightness"] = [1.0 if m in keep else 0.0 for m in p.markers]
    notes = []
    if only is not None and len(keep) > 1 and "DAPI" in p.markers and "DAPI" not in keep:
        notes.append("DAPI is not in --only: this section has no nuclear counterstain, so "
                     "no cells can be found on it (a fluorescence-minus-one control keeps "
                     "it: --only DAPI," + ",".join(sorted(keep)) + ")")
    if tma is not None:
        from qdmed.imaging._tma import cores_geojson, simulate_tma
        from qdmed.report import atomic_write_parquet, atomic_write_text

        grid = tma.lower().split("x")
        if len(grid) != 2 or not all(g.strip().isdigit() for g in grid):
            raise InputError(f"--tma must be ROWSxCOLS, e.g. 4x6; got {tma!r}")
        if not name.endswith(".zarr"):
            raise InputError(f"--tma writes OME-Zarr: --out must end in .ome.zarr; got {out}")
        s = simulate_tma(out, rows=int(grid[0]), cols=int(grid[1]),
                         presets=list(_names(presets or preset)),
                         core_diameter_um=600.0 if core_diameter_um is None
                         else core_diameter_um, missing=_names(missing),
                         rotation_deg=rotation_deg, progress=not no_progress, **kw)
        truth_dir = out.parent / (stem + "-truth")
        truth_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_parquet(truth_dir / "truth.parquet", s.truth)
        atomic_write_text(truth_dir / "cores.geojson",
                          json.dumps(cores_geojson(s.params["tma"]["cores"])))
        info = {"slide": str(out), "shape": list(s.shape), "n_cells": s.n_cells,
                "cores": f"{tma} ({len(_names(missing))} missing)",
                "truth": str(truth_dir / "truth.parquet"),
                "cores_truth": str(truth_dir / "cores.geojson")}
        n_present = int(grid[0]) * int(grid[1]) - len(_names(missing))
        per_core = s.n_cells / max(n_present, 1)
        if per_core < 100:  # a core is scored on its own from 100 cells by default
            least = max(10, int(0.6 * per_core) // 10 * 10)
            info["note"] = (f"about {per_core:.0f} cells a core, fewer than the 100 a core "
                            "needs by default to be scored on its own: give analyze and "
                            f"cohort --region-min-cells {least}")
    elif name.endswith((".zarr",)):
        kw["preset"] = preset
        s = simulate_slide(out, (size, size), progress=not no_progress, **kw)
        truth_dir = out.parent / (stem + "-truth")
        truth_dir.mkdir(parents=True, exist_ok=True)
        from qdmed.report import atomic_write_parquet

        atomic_write_parquet(truth_dir / "truth.parquet", s.truth)
        info = {"slide": str(out), "shape": list(s.shape), "n_cells": s.n_cells,
                "truth": str(truth_dir / "truth.parquet")}
    else:
        import uuid

        f = simulate_field((size, size), preset=preset, **kw)
        # the file's OME UUID from the simulation's parameters (seed included): the same
        # command writes the same bytes
        ident = uuid.uuid5(uuid.NAMESPACE_URL, "qdmed-synthetic:" + json.dumps(
            f.params, sort_keys=True, default=str))
        write_ome_tiff(out, f.image, channel_names=list(p.channel_names),
                       pixel_size_um=f.pixel_size_um,
                       significant_bits=bit_depth if bit_depth < 16 else None, uuid=str(ident))
        truth_dir = write_truth(out.parent / (stem + "-truth"), f)
        info = {"slide": str(out), "shape": list(f.image.shape), "n_cells": len(f.truth),
                "truth": str(truth_dir)}
    p.to_file(out.parent / (stem + "-panel.yaml"))
    info["panel"] = str(out.parent / (stem + "-panel.yaml"))
    if tma is None and size < 128:  # (a walk-through's --size 10 passed quietly)
        notes.append(f"a {size} x {size} px field holds {info['n_cells']} cell(s), cut by its "
                     "edges: a cell is some 20 um (40 px at 0.5 um/px) across; give --size "
                     "256 or more for cells to analyse")
    if tma is None:  # its registry name: BT-474 and bt474 are read as BT474 (a review)
        from qdmed.imaging._synthetic import _get_preset

        info = {"preset": _get_preset(preset).name, **info}
    if json_:
        return print_json_warned(info, notes)
    print_kv("Simulated slide", info)
    for w in notes:
        print_warning(w)


@app.command(short_help="Spectral library from unstained and single-stain controls.")
def library(
    panel_file: PANEL = None,
    unstained: Annotated[Path | None, typer.Option("--unstained", help="Unstained control slide: the autofluorescence endmember.")] = None,
    stained: Annotated[Path | None, typer.Option("--stained", help="Without an unstained control: estimate autofluorescence blindly from this stained slide.")] = None,
    single_stain: Annotated[list[str] | None, typer.Option("--single-stain", metavar="<marker=slide>", help="MARKER=slide (or the marker's label, e.g. 'Qdot 605=slide'): a single-stain control (repeatable).")] = None,
    out: Annotated[Path, typer.Option("--out", help="Write the panel with measured endmembers here.")] = Path("panel-measured.yaml"),
    plot: Annotated[Path | None, typer.Option("--plot", callback=_png_path, help="Save a PNG of measured vs model spectra.")] = None,
    offset: OFFSET = None,
    saturation_level: SATURATION = None,
    counterstain: Annotated[str, typer.Option("--counterstain", help="The nuclear counterstain single stains may carry too (removed with its model spectrum where a control holds it); 'none': never removed.")] = "DAPI",
    no_progress: NOPROG = False,
    json_: JSON = False,
):
    """Spectral library from control slides: autofluorescence from an unstained section
    (or blindly from a stained one), each label from its single-stain section (a
    counterstain they carry removed first); writes the panel with measured endmembers."""
    from qdmed.errors import InputError
    from qdmed.imaging import spectral_library

    pn = _panel(panel_file)
    by_label = dict(zip(pn.labels, pn.markers, strict=True))  # a label names its marker
    stains = {}
    for item in single_stain or []:
        name, path = _pair("--single-stain", item, "MARKER=slide")
        name = _once("--single-stain", by_label.get(name, name), stains)
        stains[name] = Path(path)
    from qdmed.imaging._slideio import check_output_folder

    # the panel written over its own file, or into a control slide, is refused up front
    check_output_folder(out, [panel_file, unstained, stained, *stains.values()])
    cs = None if counterstain.strip().lower() == "none" else counterstain.strip()
    cs = {m.lower(): m for m in pn.markers}.get(str(cs).lower(), cs)  # dapi: DAPI
    if cs is not None and cs not in pn.markers:
        if counterstain != "DAPI":  # the default is ignored by a panel without DAPI
            raise InputError(f"--counterstain {counterstain}: not a marker of the panel; "
                             f"markers: {', '.join(pn.markers)} (or 'none')")
        cs = None
    res = spectral_library(pn, unstained=unstained, stained=stained, single_stains=stains,
                           offset=_offset(offset), saturation_level=saturation_level,
                           progress=not no_progress, counterstain=cs)
    if plot:  # drawn first: it shows what is wrong with a library refused below
        _save_plot(plot, res.plot())
    from qdmed.imaging._analyze import check_unmixable

    try:  # a panel every analysis would refuse is not written (a review got one written)
        check_unmixable(res.panel)
    except InputError as exc:
        raise InputError(f"the measured library is not written: {exc}"
                         + (f" (from the controls: {'; '.join(res.warnings)})"
                            if res.warnings else "")) from None
    res.panel.to_file(out)
    info = {"out": str(out), "components": res.components}
    if json_:
        return print_json_warned(info, res.warnings)
    keys = {"n_pixels": "pixels", "percent_saturated": "% saturated",
            "cosine_to_model": "cos(model)", "counterstain_share": "counterstain share",
            "background_fraction": "AF share", "autofluorescence_misfit": "AF misfit",
            "angle_to_labels_deg": "angle to labels (deg)",
            "split_half_cosine": "split-half cos", "source": "control"}
    rows = [{"component": k, **{label: (round(d[kk], 4) if isinstance(d.get(kk), float)
                                        else d.get(kk, "-")) for kk, label in keys.items()}}
            for k, d in res.components.items()]
    print_table("Spectral library", rows)
    for w in res.warnings:
        print_warning(w)
    typer.echo(f"wrote {out}")


@app.command(short_help="Exact NNLS unmixing of a slide into OME-Zarr.")
def unmix(slide: Path, panel_file: PANEL = None,
          out: Annotated[Path, typer.Option("--out", help="Unmixed OME-Zarr.")] = Path("unmixed.ome.zarr"),
          offset: OFFSET = None, unmixed_bits: UNMIXED_BITS = None,
          poisson: POISSON = False, read_noise: READ_NOISE = None,
          plot: Annotated[Path | None, typer.Option("--plot", callback=_png_path, help="PNG of every unmixed channel and the residual, side by side.")] = None,
          no_progress: NOPROG = False, json_: JSON = False):
    """Exact NNLS unmixing of a slide into per-component abundances (OME-Zarr)."""
    from qdmed.imaging import AnalysisSettings, read_slide
    from qdmed.imaging._analyze import (
        check_channels,
        check_keep_bits,
        check_unmix_weights,
        check_unmixable,
        panel_offset,
    )
    from qdmed.imaging._slideio import check_zarr_output
    from qdmed.imaging._unmixed_out import write_unmixed

    check_keep_bits(unmixed_bits)
    check_zarr_output(out, [slide], replaces="unmixing")
    weights = _unmix_options(poisson, read_noise)
    p = _panel(panel_file)
    off = panel_offset(p, _offset(offset))
    s = read_slide(slide)
    p = check_channels(s, p)
    check_unmixable(p)
    settings = AnalysisSettings(offset_adu=None if off is None else tuple(off), **weights)
    check_unmix_weights(p, settings.unmix_weights)
    samples: list = []  # does the panel explain the pixels? (as analyze checks its cells)
    write_unmixed(s, p, settings, out, s.pixel_size_um, unmixed_bits,  # the slide's own
                  progress=not no_progress, fit_samples=samples)  # pixel size, or none
    from qdmed.imaging._fit import fit_summary

    fit = None if p.unmixed else fit_summary(samples, p.channel_names)
    if plot is not None:
        from qdmed.imaging._report import unmixed_figure

        _save_plot(plot, unmixed_figure(out))
    info = {"slide": str(slide), "out": str(out), "components": list(p.components),
            "unmixed_keep_bits": unmixed_bits, "unmix_weights": settings.unmix_weights,
            "read_noise_adu": settings.read_noise_used(),
            "misfit": None if fit is None else fit["misfit"],
            "misfit_by_channel": None if fit is None else fit["misfit_by_channel"],
            "worst_channel": None if fit is None else fit["worst_channel"]}
    warned = [*_panels_beside(panel_file, [_panel_beside(slide)]), *p.warnings,
              *([] if fit is None else fit["warnings"])]
    if json_:
        return print_json_warned(info, warned)
    from qdmed.imaging._poisson import describe_unmixing

    shown = {k: v for k, v in info.items() if k not in ("unmix_weights", "read_noise_adu",
                                                         "misfit_by_channel", "worst_channel")}
    if fit is not None and fit.get("worst_channel"):  # as analyze says it
        w = fit["worst_channel"]
        shown["misfit"] = (f"{fit['misfit']:.3g}; {fit['misfit_by_channel'][w]:.3g} in the "
                           f"pixels brightest in {w}")
    print_kv("Unmixed", {**shown, "unmixing": describe_unmixing(settings.to_dict()),
                         "unmixed_keep_bits": "exact (float32)" if unmixed_bits is None
                         else unmixed_bits})
    # the panel's (labels that cannot be separated, ill-conditioning) and its fit's
    for w in warned:
        print_warning(w)


@app.command(short_help="Draw QuPath cells or detections into a label image.")
def rasterize(
    objects: Path,
    slide: Annotated[Path, typer.Option("--slide", help="The slide the objects were drawn on: the label image gets its size and pixel size.")],
    out: Annotated[Path, typer.Option("--out", help="The label image to write (OME-Zarr): channels nuclei and, when the objects have cell outlines, cells.")] = Path("labels.ome.zarr"),
    no_progress: NOPROG = False,
    json_: JSON = False,
):
    """Draw cells or detections exported from QuPath as GeoJSON (or any polygons) into a label
    image pixel-aligned with the slide, for --nuclei-labels / --cell-labels (which also take
    the GeoJSON itself)."""
    from qdmed.imaging._rasterize import (
        n_outside,
        outside_warnings,
        read_label_objects,
        write_object_labels,
    )
    from qdmed.imaging._slideio import check_zarr_output, read_slide

    check_zarr_output(out, [slide, objects], replaces="objects")
    src = read_slide(slide)
    objs = read_label_objects(objects)
    path = write_object_labels(objs, src.shape[:2], out, pixel_size_um=src.pixel_size_um,
                               progress=not no_progress)
    d = {**objs.to_dict(), "n_outside": n_outside(objs.nuclei, src.shape[:2]),
         "labels": str(path), "shape_yx": list(src.shape[:2]),
         "channels": ["nuclei"] + ([] if objs.cells is None else ["cells"])}
    warns = outside_warnings(d["n_outside"], d["n_nuclei"], objects)
    if json_:
        return print_json_warned(d, warns)
    print_kv(f"Objects {objects.name}", {
        "objects": d["n_objects"], "nuclei": d["n_nuclei"], "cells": d["n_cells"],
        "outside the slide": d["n_outside"], "features skipped": d["n_skipped"],
        "label image": f"{path} ({', '.join(d['channels'])}; "
                       f"{d['shape_yx'][0]} x {d['shape_yx'][1]} px)"})
    for w in warns:
        print_warning(w)
    return None


@app.command(short_help="Dearray a tissue microarray: find and name its cores.")
def tma(
    slide: Path,
    out: Annotated[Path | None, typer.Option("--out", help="Cores as GeoJSON (QuPath annotations named A-1, A-2, ...; missing ones flagged isMissing). Default cores.geojson, unless --qptma alone is given.")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", callback=_png_path, help="PNG of the grid over the slide overview.")] = None,
    qptma: Annotated[Path | None, typer.Option("--qptma", help="Also write QuPath's TMA grid file (.qptma): dropped on the open image in QuPath, it sets a real TMA grid (TMA data viewer).")] = None,
    core_diameter_um: Annotated[float | None, typer.Option("--core-diameter-um", help="Nominal core diameter, um (default: the median of the cores found).")] = None,
    row_labels: Annotated[str | None, typer.Option("--row-labels", help="The array's row labels, top to bottom, as in QuPath: A-J, 1-10, or a list 'A B C E' (default A, B, C, ...). As many as the rows found: a lost first or last row is refused with the labels to give.")] = None,
    col_labels: Annotated[str | None, typer.Option("--col-labels", help="The array's column labels, left to right: 1-16, A-P, or a list (default 1, 2, 3, ...).")] = None,
    label_order: Annotated[str, typer.Option("--label-order", help="Core names row label first (row-first: A-1) or column label first (column-first: 1-A).")] = "row-first",
    brightfield: Annotated[bool | None, flag("--brightfield/--fluorescence", help="Tissue darker than the glass (brightfield, found by optical density) or brighter (fluorescence). Default: brightfield for 8-bit RGB slides.")] = None,
    json_: JSON = False,
):
    """Dearray a tissue microarray: find its cores and name them by row and column, for
    `qdmed image analyze SLIDE --regions cores.geojson` (one score per core)."""
    from qdmed.errors import InputError
    from qdmed.imaging._tma import find_tma_cores
    from qdmed.report import atomic_write_text

    if label_order not in ("row-first", "column-first"):
        raise InputError(f"--label-order must be row-first or column-first; got "
                         f"{label_order!r}")
    if qptma is not None and qptma.suffix.lower() != ".qptma":
        raise InputError(f"--qptma must end in .qptma (QuPath reads it by that suffix); got "
                         f"{qptma}")
    if out is None and qptma is None:
        out = Path("cores.geojson")
    from qdmed.imaging._slideio import check_output_folder

    for path in (out, qptma, plot):  # none of them over the slide (or inside a Zarr one)
        if path is not None:
            check_output_folder(path, [slide])
    cores, overview = find_tma_cores(slide, core_diameter_um=core_diameter_um,
                                     row_labels=row_labels, col_labels=col_labels,
                                     row_first=label_order == "row-first",
                                     brightfield=brightfield)
    if out is not None:  # --qptma alone writes no cores.geojson (it replaced one unsaid)
        atomic_write_text(out, json.dumps(cores.to_geojson()))
    if qptma is not None:
        atomic_write_text(qptma, cores.to_qptma(Path(slide).resolve()))
    if plot is not None:
        _save_plot(plot, cores.plot(overview))
    d = cores.to_dict()
    d["geojson"] = None if out is None else str(out)
    d["qptma"] = None if qptma is None else str(qptma)
    if json_:
        return print_json_warned(d, d["warnings"])
    print_kv(f"TMA {slide.name}", {
        "grid": f"{d['n_rows']} x {d['n_cols']}, turned {round(d['rotation_deg'], 1) + 0.0:.1f} deg"
                + (" (brightfield)" if d["brightfield"] else ""),
        "cores found": d["n_found"],
        "missing": ", ".join(c["name"] for c in d["cores"] if c["missing"]) or "none",
        "core diameter (um)": d["core_diameter_um"],
        **({"cores": str(out)} if out is not None else {}),
        **({"QuPath TMA grid": str(qptma)} if qptma is not None else {})})
    for w in d["warnings"]:
        print_warning(w)
    return None


@app.command(short_help="Analyse one slide: unmix, segment, measure, score.")
def analyze(
    slide: Path,
    panel_file: PANEL = None,
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("qdmed-analysis"),
    tile: Annotated[int, typer.Option("--tile", help="Tile edge, px.")] = 2048,
    scheduler: Annotated[str | None, typer.Option("--scheduler", help="Dask scheduler address, tcp://host:port.")] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="Local Dask worker processes (default: the CPU count, at most one per tile).")] = None,
    calibration: Annotated[Path | None, typer.Option("--calibration", help="HER2 calibration JSON (qdmed image calibrate).")] = None,
    no_report: Annotated[bool, flag("--no-report", help="Skip the HTML report.")] = False,
    poisson: POISSON = False,
    read_noise: READ_NOISE = None,
    regions: Annotated[Path | None, typer.Option("--regions", help="GeoJSON annotations (e.g. invasive tumour, exported from QuPath) or TMA cores (GeoJSON or QuPath .qptma): score only the cells inside them.")] = None,
    region_class: Annotated[str | None, typer.Option("--region-class", help="Use only annotations of this QuPath class (e.g. Tumor).")] = None,
    tumour_regions: Annotated[Path | None, typer.Option("--tumour-regions", help="Tumour annotations (GeoJSON) to narrow --regions down to: e.g. the tumour drawn inside TMA cores, scored core by core. A --regions file holding cores and annotations together is split so without this.")] = None,
    no_outlines: NO_OUTLINES = False,
    no_unmixed: NO_UNMIXED = False,
    unmixed_bits: UNMIXED_BITS = None,
    autofluorescence: AUTOFLUOR = "panel",
    her2_region_um: REGION_UM = None,
    her2_region_min_cells: REGION_MIN = None,
    saturation_level: SATURATION = None,
    offset: OFFSET = None,
    exclude_flagged: EXCLUDE = None,
    per_region: PER_REGION = None,
    region_min_cells: REGION_CELLS = None,
    tma_map: TMA_MAP = None,
    case_rule: CASE_RULE = "pooled",
    nuclei_labels: Annotated[Path | None, typer.Option("--nuclei-labels", help="Nuclei segmented elsewhere (cellpose, StarDist, Mesmer, QuPath...): a label image (TIFF, OME-TIFF, OME-Zarr or an NGFF labels folder) pixel-aligned with the slide, 0 = background. Replaces qdmed's nuclear segmentation; cells.parquet gets nucleus_label.")] = None,
    labels_channel: LABELS_CHANNEL = None,
    cell_labels: Annotated[Path | None, typer.Option("--cell-labels", help="Whole cells segmented elsewhere too (with --nuclei-labels; may be the same file, another channel): they replace qdmed's cell expansion. cells.parquet gets cell_label.")] = None,
    cell_labels_channel: CELL_LABELS_CHANNEL = None,
    labels_downsample: LABELS_DOWNSAMPLE = 1,
    segmentation: SEGMENTATION = "watershed",
    segmentation_model: SEG_MODEL = None,
    segmentation_pixel_size: SEG_PIXEL = _MODEL_PX,
    pixel_size_um: PIXEL_SIZE = None,
    nuclear_threshold: NUC_THRESHOLD = None,
    no_progress: NOPROG = False,
    json_: JSON = False,
):
    """Analyse one slide: unmix, segment, measure every cell; cells.parquet, summary.json,
    cells.geojson, unmixed.ome.zarr and report.html in --out."""
    from qdmed.imaging import AnalysisSettings, analyze_slide
    from qdmed.imaging._analyze import check_exclude_flagged, panel_offset
    from qdmed.imaging._detector import check_level
    from qdmed.imaging._report import write_slide_report
    from qdmed.imaging._slideio import _check_pixel_size

    weights = _unmix_options(poisson, read_noise)
    panel = _panel(panel_file)
    check_level(saturation_level)  # options are checked before the slide is opened
    panel_offset(panel, _offset(offset))
    check_exclude_flagged(_flags(exclude_flagged))
    her2, gates, scale, cal_warnings = _calibration_for(panel, calibration)
    cal_warnings = _panels_beside(panel_file, [_panel_beside(slide)]) + cal_warnings
    settings = AnalysisSettings(pixel_size_um=_check_pixel_size(pixel_size_um), **weights,
                                segmentation=segmentation,  # pixel size None: the slide's
                                nuclear_threshold=nuclear_threshold,
                                **_segmentation_model(segmentation_model,
                                                      segmentation_pixel_size))
    res = analyze_slide(slide, panel, out, tile=tile, scheduler=scheduler,
                        n_workers=workers, her2_calibration=her2, gates=gates,
                        calibration_scale=scale,
                        progress=not no_progress, settings=settings, regions=regions,
                        region_class=region_class, outlines=not no_outlines,
                        write_unmixed=not no_unmixed, unmixed_keep_bits=unmixed_bits,
                        autofluorescence=autofluorescence,
                        **_region_options(her2, calibration, regions, her2_region_um,
                                          her2_region_min_cells, region_min_cells),
                        saturation_level=saturation_level, offset_adu=_offset(offset),
                        exclude_flagged=_flags(exclude_flagged), per_region=per_region,
                        tma_map=tma_map,
                        case_rule=case_rule, tumour_regions=tumour_regions,
                        nuclei_labels=nuclei_labels, labels_channel=_index_or_name(labels_channel),
                        cell_labels=cell_labels,
                        cell_labels_channel=_index_or_name(cell_labels_channel),
                        labels_downsample=labels_downsample)
    if not no_report:
        write_slide_report(res)
    d = res.to_dict()
    warns = cal_warnings + res.warnings
    if json_:
        return print_json_warned(d, warns)
    info = {"cells": d["n_cells"], "scored cells": d["scored_cells"]["n_scored"],
            "tiles": d["n_tiles"], "resumed tiles": d["n_tiles_resumed"],
            "workers": d["n_workers"], "elapsed_s": d["elapsed_s"], "out": str(out)}
    given = d.get("labels")
    if given:
        drawn = given.get("objects")
        src = given["nuclei"]["file"] if not drawn else \
            f"{drawn} (drawn into {given['nuclei']['file']})"
        info["nuclei given"] = f"from {src}"
        if given["cells"]:
            info["cells given"] = (f"from {drawn or given['cells']['file']} "
                                   f"({given['cells_without_nucleus']} without a nucleus left "
                                   "out)")
    sat = d.get("saturation") or {}
    info["saturated cells"] = (f"{sat['percent_scored_cells_saturated']:.1f} % of scored "
                               f"(ceiling {sat['level_adu']:g}, {sat['source']})"
                               if sat.get("percent_scored_cells_saturated") is not None
                               else sat.get("source", "not checked"))
    fit = d.get("fit") or {}
    if fit.get("misfit") is not None:  # qdmed.imaging._fit: does the panel explain the cells?
        info["panel fit"] = (f"{100 * fit['misfit']:.1f} % of the brightest cells' signal "
                             "unexplained beyond noise" + (
                                 f"; {100 * fit['misfit_by_channel'][fit['worst_channel']]:.1f}"
                                 f" % in the pixels brightest in {fit['worst_channel']}"
                                 if fit.get("worst_channel") else ""))
    if d["her2"]:
        info["HER2 category"] = d["her2"]["category"]
        info["HER2-low"] = d["her2"]["her2_low"]
        info["HER2-ultralow"] = d["her2"]["her2_ultralow"]
    elif calibration is None:
        info["HER2 category"] = "not scored: no --calibration (qdmed image calibrate)"
    elif her2 is None:  # gates alone, or HER2 cut-offs of a marker the panel lacks (warned)
        info["HER2 category"] = "not scored: the calibration has no HER2 cut-offs for this panel"
    else:  # no cell to score (no cells, none in the regions, no membrane value): warned
        info["HER2 category"] = "not scored: no cell to score (see the warnings)"
    for m, st in ((d.get("markers_scored") or {}).get("receptor_status") or {}).items():
        corr = ("corrected for the gate's noise floor" if st["gate_false_positive_percent"]
                is not None else "not corrected: gate of unknown origin")
        info[f"{m} (ASCO/CAP 2020)"] = (
            st["label"]
            # two decimals: 0.96 % printed as 1.0 % read as the cut-off itself (a review)
            + (f", {st['percent_positive_corrected']:.2f} % positive ({corr})"
               if st["percent_positive_corrected"] is not None else ""))
    if d.get("subtype"):
        info["subtype (HER2 IHC with ER/PR)"] = d["subtype"]["label"]
    het = d.get("her2_heterogeneity")
    if het and het["n_regions"]:
        info["HER2 regions"] = ", ".join(
            f"{c} {p:.0f} %" for c, p in het["percent_regions"].items() if p > 0)
        info["HER2 heterogeneity (Shannon, tumour level; shuffled; p)"] = (
            f"{het['tumour_level_shannon']:.2f}; no spatial test (one region)"
            if het["n_regions"] < 2 else f"{het['tumour_level_shannon']:.2f}; not shuffled"
            if het["spatial_p_value"] is None else
            f"{het['tumour_level_shannon']:.2f}; {het['tumour_level_shannon_null']:.2f}; "
            f"{het['spatial_p_value']:.3g}")
    by_region = d.get("regions_scored")
    if d["scored_cells"].get("note"):
        info["note"] = d["scored_cells"]["note"]
    if by_region:
        info["regions"] = ", ".join(f"{n} {k}" for k, n in by_region["by_status"].items())
        if by_region["her2_categories"]:
            info["HER2 by region"] = ", ".join(
                f"{c}: {n}" for c, n in by_region["her2_categories"].items())
    print_kv(f"Slide {slide.name}", info)
    if by_region:
        print_table("Regions (regions.csv)", by_region["regions"],
                    ["region", "status", "n_scored", "her2_category"]
                    + (["case"] if d.get("cases_scored") else []))
    if d.get("cases_scored"):
        print_table("Cases (cases.csv)", d["cases_scored"]["cases"],
                    ["case", "status", "cores", "n_scored", "her2_category"])
    for w in warns:
        print_warning(w)


#: Exit code of a folder command (cohort, qc) that wrote its results but some slides failed.
EXIT_SOME_FAILED = 3


def _folder_exit(res: dict) -> None:
    """End a folder command: exit 2 when no slide could be read (nothing to show), 3 when
    some failed (the others' results are written; a pipeline must not take the run as
    complete), else 0."""
    if res["n_ok"] + res.get("n_no_cells", 0) == 0:
        typer.echo(f"error: none of the {res['n_failed']} slides could be analysed (each "
                   "slide's reason is in the table)", err=True)
        raise typer.Exit(2)
    if res["n_failed"]:
        typer.echo(f"error: {res['n_failed']} of {res['n_slides']} slides "
                   "failed (status 'failed' and the reason in the table); the others' "
                   f"results are written. Exit code {EXIT_SOME_FAILED}.", err=True)
        raise typer.Exit(EXIT_SOME_FAILED)


def _index_or_name(channel: str | None) -> str | int | None:
    """A channel given on the command line: a 0-based index when it is all (ASCII) digits,
    else a name."""
    if channel is None:
        return None
    c = channel.strip()
    return int(c) if c.isascii() and c.isdigit() else c


@app.command(short_help="Quality control before analysis (no segmentation).")
def qc(
    path: Annotated[Path, typer.Argument(help="A slide, or a folder of slides.")],
    panel_file: PANEL = None,
    out: Annotated[Path | None, typer.Option("--out", help="Output folder (qc.json, qc_regions.geojson; for a folder also qc.csv and slides/). Default: qdmed-qc for a folder; for one slide, results are printed and written only when given.")] = None,
    tile: Annotated[int, typer.Option("--tile", help="Tile edge, px (as the analysis's).")] = 2048,
    saturation_level: SATURATION = None,
    offset: OFFSET = None,
    pattern: PATTERN = None,
    plot: Annotated[Path | None, typer.Option("--plot", callback=_png_path, help="PNG: a slide's tiles by blur (out-of-focus tiles outlined); for a folder, each slide's blur, tiles out of focus and saturation.")] = None,
    pixel_size_um: PIXEL_SIZE = None,
    no_progress: NOPROG = False,
    json_: JSON = False,
):
    """Quality control before analysis: saturation, detector offset, out-of-focus tiles
    (no segmentation; a fraction of the analysis time).

    For a folder: exit code 3 when some slides could not be read (the others' results are
    written), 2 when none could."""
    from qdmed.imaging._qc import qc_folder, qc_slide

    p = _panel(panel_file)
    if not _slide_folder(path):
        _no_pattern(pattern, path)
    if _slide_folder(path):
        res = qc_folder(path, p, out or Path("qdmed-qc"), tile=tile,
                        saturation_level=saturation_level, offset_adu=_offset(offset),
                        progress=not no_progress, pattern=pattern,
                        pixel_size_um=pixel_size_um)
        if plot is not None:
            from qdmed.imaging._qc import qc_folder_figure

            _save_plot(plot, qc_folder_figure(res))
        if json_:
            print_json_warned(res, [_named(row["slide"], m) for row in res["slides"]
                                    for m in row["warnings"]])
            return _folder_exit(res)
        print_table(f"QC {path}", res["slides"], ["slide", "status", "focus_median_blur",
                                                  "n_tiles_out_of_focus", "slide_out_of_focus",
                                                  "percent_saturated_worst_channel",
                                                  "offset_suspected"])
        for row in res["slides"]:
            for m in row["warnings"]:
                print_warning(_named(row["slide"], m))
        typer.echo(f"per-slide table: {Path(res['out']) / 'qc.csv'}")
        return _folder_exit(res)
    d = qc_slide(path, p, out, tile=tile, saturation_level=saturation_level,
                 offset_adu=_offset(offset), progress=not no_progress,
                 pixel_size_um=pixel_size_um)
    if plot is not None:
        from qdmed.imaging._focus import focus_figure

        _save_plot(plot, focus_figure(d["focus"], tuple(d["slide"]["shape"][:2]),
                                      name=Path(path).name))
    if json_:
        return print_json_warned(d, d["warnings"])
    sat, foc = d["saturation"], d["focus"]
    worst = max(sat["percent_saturated_pixels"].items(), key=lambda kv: kv[1],
                default=("none", 0.0))
    print_kv(f"QC {path.name}", {
        "saturation ceiling": f"{sat['level_adu']} ({sat['source']})",
        "most saturated channel": f"{worst[0]}: {worst[1]:.3f} % of pixels" if sat["checked"]
        else "not checked",
        "offset problem": d["offset"]["issue"] or "none seen",
        "focus median blur": foc["median"],
        "tiles out of focus": f"{len(foc['out_of_focus_tiles'])} of {foc['n_tiles_measured']} measured",
        "elapsed_s": d["elapsed_s"]})
    for m in d["warnings"]:
        print_warning(m)


@app.command(short_help="HER2 cut-offs and marker gates from control cell lines.")
def calibrate(
    control: Annotated[list[str], typer.Option("--control", metavar="<name=path>", help="NAME=cells.parquet, or NAME=the control's analysis folder (repeatable).")],
    category: Annotated[list[str] | None, typer.Option("--category", metavar="<name=score>", help="NAME=0|1+|2+|3+ for controls not in the known table (HERmark Table 1: BT-474 3+, ZR-75-1 1+, MDA-MB-231, MDA-MB-468, MDA-MB-435 and A431 0).")] = None,
    negative: Annotated[list[str] | None, typer.Option("--negative", metavar="<marker=name>", help="MARKER=NAME: a control negative for MARKER (positivity gate at its 99th percentile).")] = None,
    out: Annotated[Path, typer.Option("--out", help="Write the calibration (HER2 cut-offs and gates) here, for --calibration.")] = Path("calibration.json"),
    compartment: Annotated[list[str] | None, typer.Option("--compartment", metavar="<marker=compartment>", help="MARKER=nucleus|cytoplasm|membrane|cell: where a --negative marker qdmed does not know is read (known: HER2, EGFR, CA125, claudin-4 membrane; ER, PR, AR nucleus; mTOR, PSA cytoplasm).")] = None,
    faint_quantile: Annotated[float, typer.Option("--faint-quantile", help="HER2: the faint cut-off is this quantile of the 0 control (or 1 minus it of a 1+ control); at least 0.9, below 1.")] = 0.95,
    faint_rule: Annotated[str, typer.Option("--faint-rule", help="HER2: 'quantile' takes --faint-quantile; 'gap' puts the faint cut-off in the middle of the gap between the 0 control's null cells and its stained ones where they stand apart (else the quantile): it does not move with their share, but where 1+ cells are dim against the noise it lies higher than the quantile and they may read 0.")] = "quantile",
    plot: Annotated[Path | None, typer.Option("--plot", callback=_png_path, help="PNG of the controls under the cut-offs (and how they were placed) and of each negative control under its gate.")] = None,
    json_: JSON = False,
):
    """Calibrate on control cell lines: HER2 intensity cut-offs (controls of known IHC score)
    and marker positivity gates (controls known negative for a marker)."""
    from qdmed.errors import InputError
    from qdmed.imaging import calibrate_controls

    paths: dict[str, str] = {}
    cats: dict[str, str] = {}
    negs: dict[str, str] = {}
    for c in control:  # every pair checked before any table is read
        name, path = _pair("--control", c, "NAME=FOLDER (the control's analysis) or "
                           "NAME=cells.parquet")
        paths[_once("--control", name, paths)] = path
    for c in category or ():
        name, cat = _pair("--category", c, "NAME=0|1+|2+|3+")
        cats[_once("--category", name, cats)] = cat
    for c in negative or ():
        marker, name = _pair("--negative", c, "MARKER=CONTROL_NAME")
        negs[_once("--negative", marker, negs)] = name
    from qdmed.imaging._slideio import check_output_folder

    # not over a control's own files (a folder's: those calibrate reads)
    check_output_folder(out, [f for src in map(Path, paths.values()) for f in (
        (src / "cells.parquet", src / "summary.json") if src.is_dir() else (src,))])
    from qdmed.imaging._cells import COMPARTMENTS

    comps: dict[str, str] = {}
    for c in compartment or ():
        marker, where = _pair("--compartment", c, "MARKER=" + "|".join(COMPARTMENTS))
        if where not in COMPARTMENTS:
            raise InputError(f"--compartment {c!r}: the compartment is "
                             f"{', '.join(COMPARTMENTS[:-1])} or {COMPARTMENTS[-1]}")
        comps[_once("--compartment", marker, comps)] = where
    unused = [m for m in comps if m not in negs]
    if unused:
        raise InputError(f"--compartment {', '.join(unused)}: no --negative gates "
                         f"{'it' if len(unused) == 1 else 'them'}, so it would not be used")
    try:
        cal = calibrate_controls(paths, categories=cats, negatives=negs,
                                 faint_quantile=faint_quantile, compartments=comps or None,
                                 faint_rule=faint_rule)
    except InputError as exc:
        raise type(exc)(_calibrate_message(str(exc))) from exc
    if plot is not None:  # the plot first: a plot that cannot be written leaves no calibration
        _save_plot(plot, cal.plot())
    cal = cal.save(out)
    doc = cal.document()
    if json_:
        return print_json_warned(doc, doc.get("warnings", ()))
    if "her2" in doc:
        h = doc["her2"]
        print_kv(f"HER2 calibration -> {out}", {"faint": h["faint"], "weak_moderate":
                                                 h["weak_moderate"], "intense": h["intense"],
                                                 "rule": h["rule"], "controls scored with it":
                                                 ", ".join(f"{n} {v['scored']}" for n, v in
                                                           doc["controls_scored"].items())})
    if "gates" in doc:
        print_table("Positivity gates", [{"marker": m, **g} for m, g in doc["gates"].items()])
    for w in doc.get("warnings", ()):
        print_warning(w)


#: calibrate_controls' words for its arguments, as the command line gives them.
_CALIBRATE_WORDS = (
    ("give its category, or name it as a marker's negative control",
     "give its --category, or name it in --negative MARKER=NAME"),
    ("give it a HER2 category (0, 1+, 2+, 3+) or name it as a marker's negative control",
     "give it a HER2 --category NAME=0|1+|2+|3+ or name it in --negative MARKER=NAME"),
    ("(give their categories, or cell lines", "(--category NAME=0|1+|2+|3+, or cell lines"),
    ("no compartment known for marker", "--negative: no compartment known for marker"),
)


def _calibrate_message(msg: str) -> str:
    """A calibrate_controls error as the command line says it: its arguments' hints named
    as the options that give them (``no control X`` as ``no --control X=...``; a leading
    ``control X:`` becomes ``--control X:`` in the error printer, ``_with_option``). Tested
    message by message (tests/cli), so that a library message edited out of these forms is
    seen."""
    msg = re.sub(r"no control (\S+) was given", r"no --control \1=... was given", msg)
    msg = re.sub(r"\(from Python, give its compartment: compartments=\{'(.+?)': 'nucleus'\}\)",
                 r"(give --compartment \1=nucleus, or cytoplasm, membrane, cell)", msg)
    for python, cli in _CALIBRATE_WORDS:
        msg = msg.replace(python, cli)
    if "categor" in msg and "--category" not in msg and not msg.startswith("category "):
        # calibrate_her2's own (a message on --category's value is named by the printer)
        msg += " (command line: --category NAME=0|1+|2+|3+)"
    if msg.startswith("negative control ") and "--negative" not in msg:  # the gates'
        msg += " (command line: --negative MARKER=NAME)"
    return msg


@app.command(short_help="Analyse every slide in a folder; one table for all.")
def cohort(
    folder: Path,
    panel_file: PANEL = None,
    out: Annotated[Path, typer.Option("--out", help="Output folder: cohort.csv, cells.parquet, report.html, slides/<name>/.")] = Path("qdmed-cohort"),
    tile: Annotated[int, typer.Option("--tile", help="Tile edge, px (each tile is read with a margin and analysed on its own).")] = 2048,
    scheduler: Annotated[str | None, typer.Option("--scheduler", help="Dask scheduler address (tcp://host:port), or 'synchronous' to run the slides one after another in this process.")] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="Dask worker processes of the local cluster (default: the CPU count).")] = None,
    calibration: Annotated[Path | None, typer.Option("--calibration", help="Calibration JSON from qdmed image calibrate: HER2 cut-offs and positivity gates.")] = None,
    regions_dir: Annotated[Path | None, typer.Option("--regions-dir", help="Folder of annotations or TMA cores, one file per slide (<slide stem>.geojson, .json or .qptma): score only the cells inside them.")] = None,
    tumour_regions_dir: Annotated[Path | None, typer.Option("--tumour-regions-dir", help="Folder of tumour annotations, one per slide, to narrow each slide's regions down to (as analyze --tumour-regions).")] = None,
    region_class: Annotated[str | None, typer.Option("--region-class", help="Use only annotations of this QuPath class (e.g. Tumor).")] = None,
    no_outlines: NO_OUTLINES = False,
    no_unmixed: NO_UNMIXED = False,
    unmixed_bits: UNMIXED_BITS = None,
    autofluorescence: AUTOFLUOR = "panel",
    her2_region_um: REGION_UM = None,
    her2_region_min_cells: REGION_MIN = None,
    saturation_level: SATURATION = None,
    offset: OFFSET = None,
    exclude_flagged: EXCLUDE = None,
    per_region: PER_REGION = None,
    region_min_cells: REGION_CELLS = None,
    tma_map: TMA_MAP = None,
    case_rule: CASE_RULE = "pooled",
    case_map: Annotated[Path | None, typer.Option("--case-map", help="CSV of slide,case: each slide's case (patient), for cases imaged as several fields or sections; cases.csv scores each case on the pooled cells of its slides.")] = None,
    case_from_name: Annotated[str | None, typer.Option("--case-from-name", help="Each slide's case from its file name instead: a regular expression whose first group is the case, e.g. '^(.+?)_\\[' for inForm's <case>_[x,y]_component_data.tif.")] = None,
    pattern: PATTERN = None,
    nuclei_labels_dir: Annotated[Path | None, typer.Option("--nuclei-labels-dir", help="Folder of each slide's nuclei segmented elsewhere: <stem>.tif (or .ome.tif, .ome.zarr) or one <stem>_*.tif such as cellpose's <stem>_cp_masks.tif; replaces qdmed's nuclear segmentation.")] = None,
    labels_channel: LABELS_CHANNEL = None,
    cell_labels_dir: Annotated[Path | None, typer.Option("--cell-labels-dir", help="Folder of each slide's whole cells segmented elsewhere too (found like the nuclei; may be the nuclei folder when each file holds both, as channels); replaces qdmed's cell expansion.")] = None,
    cell_labels_channel: CELL_LABELS_CHANNEL = None,
    labels_downsample: LABELS_DOWNSAMPLE = 1,
    poisson: POISSON = False,
    read_noise: READ_NOISE = None,
    segmentation: SEGMENTATION = "watershed",
    segmentation_model: SEG_MODEL = None,
    segmentation_pixel_size: SEG_PIXEL = _MODEL_PX,
    pixel_size_um: Annotated[float | None, typer.Option("--pixel-size-um", help="um per pixel of every slide (default: each slide's own; one that records none is read at 0.5 um/px, warned).")] = None,
    no_report: Annotated[bool, flag("--no-report", help="Skip the HTML reports (the cohort's and each slide's).")] = False,
    nuclear_threshold: NUC_THRESHOLD = None,
    no_progress: NOPROG = False,
    json_: JSON = False,
):
    """Analyse every slide in FOLDER; one table for all slides, per-slide status.

    Exit code 3 when some slides failed (the others' results are written), 2 when all did."""
    from qdmed.imaging import AnalysisSettings
    from qdmed.imaging._cohort import analyze_cohort

    weights = _unmix_options(poisson, read_noise)
    panel = _panel(panel_file)
    her2, gates, scale, cal_warnings = _calibration_for(panel, calibration)
    if folder.is_dir():
        cal_warnings = _panels_beside(panel_file, sorted(
            folder.glob("*-panel.yaml"))) + cal_warnings
    from qdmed.imaging._slideio import _check_pixel_size

    seg = _segmentation_model(segmentation_model, segmentation_pixel_size)
    settings = None if not weights and segmentation == "watershed" and pixel_size_um is None \
        and not seg and nuclear_threshold is None else AnalysisSettings(
            segmentation=segmentation, **weights, nuclear_threshold=nuclear_threshold,
            pixel_size_um=_check_pixel_size(pixel_size_um), **seg)
    res = analyze_cohort(folder, panel, out, tile=tile, scheduler=scheduler,
                         n_workers=workers, her2_calibration=her2, gates=gates,
                         calibration_scale=scale,
                         progress=not no_progress, regions_dir=regions_dir,
                         region_class=region_class, outlines=not no_outlines,
                         write_unmixed=not no_unmixed, unmixed_keep_bits=unmixed_bits,
                         autofluorescence=autofluorescence,
                         **_region_options(her2, calibration, regions_dir, her2_region_um,
                                           her2_region_min_cells, region_min_cells),
                         saturation_level=saturation_level, offset_adu=_offset(offset),
                         exclude_flagged=_flags(exclude_flagged), per_region=per_region,
                         tma_map=tma_map,
                         case_rule=case_rule, tumour_regions_dir=tumour_regions_dir, pattern=pattern,
                         case_map=case_map, case_from_name=case_from_name,
                         nuclei_labels_dir=nuclei_labels_dir,
                         labels_channel=_index_or_name(labels_channel),
                         cell_labels_dir=cell_labels_dir,
                         cell_labels_channel=_index_or_name(cell_labels_channel),
                         labels_downsample=labels_downsample, settings=settings,
                         report=not no_report)
    if json_:
        print_json_warned(res, cal_warnings + _cohort_warnings(res))
        return _folder_exit(res)
    print_table(f"Cohort {folder}", res["slides"], ["slide", "status", "n_cells", "n_scored",
                                                   "her2_category", "message"])
    typer.echo(f"slides: {res['slides_table']}; cells: "
               + (res["cells"] or "none (no slide was analysed)")
               + (f"; report: {res['report']}" if res["report"] else "")
               + (f"; regions: {res['regions']}" if res["regions"] else "")
               + (f"; cases: {res['cases']} ({res['n_cases']})" if res["cases"] else ""))
    if res.get("cases_scored"):
        cases = res["cases_scored"]["cases"]
        print_table("Cases (cases.csv)", cases,
                    [c for c in ("case", "status", "cores", "n_scored", "her2_category")
                     if any(c in r for r in cases)])
    for w in cal_warnings + _cohort_warnings(res):
        print_warning(w)
    return _folder_exit(res)


def _cohort_warnings(res: dict) -> list[str]:
    """The cohort's warnings, each failed slide's error first (a review found them in the
    table only, and with --json nowhere but the slides' rows)."""
    return [*(f"panel: {w}" for w in res.get("panel_warnings") or ()),
            *(f"calibration: {w}" for w in res.get("calibration_warnings") or ()),
            *(_named(r["slide"], f"failed: {r['message']}") for r in res.get("slides") or ()
              if r.get("status") == "failed"),  # once: an error names its file already
            *(res.get("acquisition_warnings") or []), *(res.get("case_warnings") or []),
            *(res.get("output_warnings") or []), *(res.get("input_warnings") or []),
            *_no_cells_said(res)]


def _no_cells_said(res: dict) -> list[str]:
    """A line for the slides of no cells (a walk-through's glass slide passed with exit 0,
    said in the table only)."""
    empty = [r["slide"] for r in res.get("slides") or () if r.get("status") == "no cells"]
    return [f"{len(empty)} of {res['n_slides']} slides have no cells ({', '.join(empty[:3])}"
            f"{' ...' if len(empty) > 3 else ''}): glass, or a section without the nuclear "
            "counterstain? (their rows say why)"] if empty else []


@app.command(short_help="Conventional DAB IHC by colour deconvolution.")
def dab(
    image: Annotated[Path | None, typer.Argument(help="RGB brightfield image (PNG, JPEG, TIFF), or a brightfield slide (TIFF, OME-TIFF, Aperio SVS, Hamamatsu NDPI, OME-Zarr), scored tile by tile with --out or region by region with --regions.")] = None,
    example: Annotated[bool, flag("--example", help="Use scikit-image's bundled IHC image.")] = False,
    example_tma: Annotated[Path | None, typer.Option("--example-tma", help="Write an example brightfield H-DAB TMA here (OME-TIFF: 2 x 3 cores cut from scikit-image's IHC image, B-2 lost, A-3 without DAB) to try the DAB commands on, and stop.")] = None,
    cutoffs: Annotated[str, typer.Option("--od-cutoffs", help="DAB OD cut-offs for 1+,2+,3+ (default 0.05,0.15,0.3: an uncalibrated example; calibrate on control tissue).")] = DAB_EXAMPLE_CUTOFFS,
    background: Annotated[str | None, typer.Option("--background", help="White level (glass) per channel: 'auto' (from the image's glass) or R,G,B levels 0-255 as QuPath's 'Background' (default 255,255,255: white).")] = None,
    stains: Annotated[str, typer.Option("--stains", help="Stain vectors: 'ruifrok' (published H-DAB), 'macenko' (estimated from the image; from the slide's overview with --out/--regions), or your own haematoxylin and DAB OD vectors 'R,G,B;R,G,B', as QuPath's 'Set stain vectors' shows them (each scaled to unit length).")] = "ruifrok",
    pixel_size_um: PIXEL_SIZE = None,
    regions: Annotated[Path | None, typer.Option("--regions", help="Score the slide region by region: TMA cores (GeoJSON or QuPath .qptma, e.g. from qdmed image tma) or named annotations; writes --out.")] = None,
    region_class: Annotated[str | None, typer.Option("--region-class", help="Use only annotations of this QuPath class.")] = None,
    tumour_regions: Annotated[Path | None, typer.Option("--tumour-regions", help="Tumour annotations to narrow --regions down to (as analyze --tumour-regions).")] = None,
    marker: Annotated[str, typer.Option("--marker", help="The antigen the DAB stains. HER2: membrane OD, the HER2 rule; ER, PR, AR, Ki67...: its compartment's OD, positive from the first cut-off, percent positive (the Ki-67 index) and ER/PgR status.")] = "HER2",
    tma_map: TMA_MAP = None,
    case_rule: CASE_RULE = "pooled",
    region_min_cells: REGION_CELLS = None,
    out: Annotated[Path | None, typer.Option("--out", help="Output folder (cells.parquet, regions.csv, summary.json): with --regions (default qdmed-dab), or alone to score a whole slide tile by tile as one region.")] = None,
    tile: Annotated[int | None, typer.Option("--tile", help="With --out: regions larger than this (px) are scored tile by tile (default 2048).")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", callback=_png_path, help="PNG of the image with its cells by DAB class and the OD histogram (with --out: report.html has it).")] = None,
    flat_field: Annotated[Path | None, typer.Option("--flat-field", help="A blank field (glass, no tissue) taken with the same camera, light and exposure: corrects uneven illumination (vignetting) of a camera image before scoring.")] = None,
    dark_field: Annotated[Path | None, typer.Option("--dark-field", help="With --flat-field: the camera's image with the light off (same exposure).")] = None,
    scheduler: Annotated[str | None, typer.Option("--scheduler", help="With --out: a Dask scheduler (tcp://host:port) whose workers score the tiles.")] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="With --out: local Dask worker processes (default 1: in this process).")] = None,
    nuclear_threshold: Annotated[float | None, typer.Option("--nuclear-threshold", help="Haematoxylin OD that segments nuclei, instead of Otsu's split of the tissue (which a faint or noisy counterstain may not give: no cells, and a warning).")] = None,
    no_outlines: NO_OUTLINES = False,
    no_progress: NOPROG = False,
    json_: JSON = False,
):
    """Conventional DAB IHC: colour deconvolution, per-cell DAB OD, 0/1+/2+/3+, H-score;
    with --regions, a brightfield TMA core by core and case by case; with --out alone, a
    whole slide tile by tile."""
    from qdmed.errors import InputError
    from qdmed.imaging import score_dab

    if example_tma is not None:
        if example or image is not None:
            raise InputError("--example-tma writes an example slide and stops: give it alone")
        from qdmed.imaging._tma import (
            EXAMPLE_BF_MISSING,
            EXAMPLE_BF_NO_DAB,
            EXAMPLE_BF_PIXEL_UM,
            example_brightfield_tma,
        )

        path, centres = example_brightfield_tma(example_tma)
        info = {"slide": str(path), "cores": ", ".join(centres),
                "missing": ", ".join(EXAMPLE_BF_MISSING),
                "without DAB": ", ".join(EXAMPLE_BF_NO_DAB),
                "pixel_size_um": EXAMPLE_BF_PIXEL_UM}
        if json_:
            return print_json(info)
        print_kv("Example brightfield TMA", info)
        typer.echo(f"next: qdmed image tma {path} --out dab_cores.geojson, then qdmed image "
                   f"dab {path} --regions dab_cores.geojson --region-min-cells 20 --out dab/ "
                   "(its small cores hold ~60 cells each, fewer than the 100 a region needs "
                   "by default)")
        return None
    if example == (image is not None):
        raise InputError("give an image path or --example, not both" if example else
                         "give an image path, or --example for scikit-image's IHC image")
    if plot is not None and (regions is not None or out is not None):
        raise InputError("--plot draws a single image's cells; with --regions or --out the "
                         "figures are in the output folder's report.html")
    if dark_field is not None and flat_field is None:
        raise InputError("--dark-field goes with --flat-field (the blank field it is "
                         "subtracted from)")
    if regions is not None or out is not None:
        if example:
            raise InputError("--regions and --out score a slide given by its path, not "
                             "--example")
        if flat_field is not None:
            raise InputError("--flat-field corrects a single camera image; slide scanners "
                             "correct their tiles' shading themselves (drop --flat-field, "
                             "or score the image without --regions/--out)")
        from qdmed.imaging._dab_regions import TILE_PX, analyze_dab_regions

        out = out or Path("qdmed-dab")
        d = analyze_dab_regions(image, regions, out, od_cutoffs=_od_cutoffs(cutoffs),
                                region_class=region_class, tumour_regions=tumour_regions,
                                tma_map=tma_map, case_rule=case_rule,
                                min_cells=100 if region_min_cells is None else region_min_cells,
                                pixel_size_um=pixel_size_um,
                                marker=marker, background=_white_level(background),
                                stain_matrix=_stains(stains), outlines=not no_outlines,
                                tile=TILE_PX if tile is None else tile,
                                n_workers=1 if workers is None else workers,
                                scheduler=scheduler, nuclear_threshold_od=nuclear_threshold,
                                progress=not no_progress)
        if json_:
            return print_json_warned(d, _dab_region_warnings(d))
        return _print_dab_regions(image, out, d)
    if tma_map is not None or region_class is not None or tumour_regions is not None:
        raise InputError("--tma-map, --region-class and --tumour-regions need --regions")
    if scheduler is not None or workers is not None or tile is not None or no_outlines:
        raise InputError("--scheduler, --workers, --tile and --no-outlines score a slide tile "
                         "by tile: they need --out (or --regions)")
    if case_rule != "pooled" or region_min_cells is not None:
        raise InputError("--case-rule and --region-min-cells score regions: they need "
                         "--regions")
    if example:
        from skimage.data import immunohistochemistry

        rgb = immunohistochemistry()
    else:
        rgb, recorded, note = _read_brightfield_image(image)
        if pixel_size_um is None:  # the slide's own, where its file records one
            pixel_size_um = recorded
    if flat_field is not None:
        from qdmed.imaging import flat_field_correct

        rgb = flat_field_correct(rgb, _read_brightfield_image(flat_field)[0],
                                 dark=None if dark_field is None
                                 else _read_brightfield_image(dark_field)[0])
    from qdmed.imaging._slideio import pixel_size_or_default

    # the example is scikit-image's IHC image, which records none (0.5 um/px, as documented)
    ps, ps_warnings = pixel_size_or_default(pixel_size_um, "image", hint="--pixel-size-um",
                                            note=None if example else note)
    if nuclear_threshold is not None:
        from qdmed.imaging._brightfield import check_nuclear_threshold

        nuclear_threshold = check_nuclear_threshold(nuclear_threshold, "--nuclear-threshold")
    sc = score_dab(rgb, od_cutoffs=_od_cutoffs(cutoffs), pixel_size_um=ps, marker=marker,
                   background=_white_level(background), stain_matrix=_stains(stains),
                   nuclear_threshold="otsu" if nuclear_threshold is None
                   else nuclear_threshold)
    if plot is not None:
        _save_plot(plot, sc.plot(rgb))
    d = sc.to_dict()
    if not example:  # as a slide scored tile by tile says it
        d["warnings"] += ps_warnings
    if json_:
        return print_json_warned(d, d["warnings"])
    her2 = d.get("her2") or {}
    info = {"HER2 category": her2.get("category"), "HER2 rule": her2.get("rule")} if her2 else {}
    bins = {"percent_0", "percent_1plus", "percent_2plus", "percent_3plus", "h_score"}
    if her2:  # the HER2 rule's own per-cell categories (stained mean and completeness)
        info.update({f"HER2 rule: cells {c} by intensity and completeness (%)":
                     her2.get(f"percent_cells_{k}")
                     for c, k in (("0", "0"), ("1+", "1plus"), ("2+", "2plus"),
                                  ("3+", "3plus"))})
    info.update({k: v for k, v in d.items() if not isinstance(v, dict | list) and k not in bins
                 and k not in ("her2", "receptor_status")})  # said above when there
    # the H-score's classes: each cell's mean membrane OD against the cut-offs (not the
    # HER2 rule's categories, which also weigh completeness)
    info.update({f"H-score class {c} (% of cells by mean OD)": d[k] for c, k in (
        ("0", "percent_0"), ("1+", "percent_1plus"), ("2+", "percent_2plus"),
        ("3+", "percent_3plus"))})
    info["H-score"] = d["h_score"]
    if d.get("receptor_status"):
        st = d["receptor_status"]
        info[f"{marker} (ASCO/CAP 2020)"] = (
            f"{st['label']}, {st['n_positive']} of {st['n_cells']} nuclei "
            f"({st['percent_positive_corrected']:.2f} %) at or above the first cut-off")
    info["od_cutoffs"] = ", ".join(f"{v:g}" for v in d["od_cutoffs"])
    # as --background takes it: levels 0-255 (QuPath's 'Background')
    info["background (R, G, B; 0-255)"] = ", ".join(f"{255 * v:.1f}" for v in d["background"])
    print_kv("DAB IHC", info)
    for w in d["warnings"]:
        print_warning(w)


#: Largest image `qdmed image dab IMAGE` scores in memory (~120 bytes per pixel: ~8 GB);
#: a larger one is scored tile by tile with --out.
MAX_DAB_IN_MEMORY_PIXELS = 8192 * 8192


def _read_brightfield_image(image: Path):
    """An RGB image read whole for `qdmed image dab`, the pixel size (um) its file records
    (None for none) and the slide's ``pixel_size_note`` (a recorded size that is no size),
    refused with the way out when it is too large to score in
    memory (its size read from the header first). A file qdmed reads as a slide (TIFF,
    OME-TIFF, Aperio SVS, Hamamatsu NDPI, OME-Zarr) is read by the slide reader, which
    names a truncated or corrupted file and a fluorescence slide; other images (PNG, JPEG)
    by scikit-image."""
    from PIL import Image

    from qdmed.errors import InputError

    size, slide = None, None
    try:  # a file qdmed reads as a slide can be scored tile by tile with --out
        from qdmed.imaging import read_slide
        from qdmed.imaging._slideio import is_slide_path

        slide = read_slide(image)
        height, width = slide.shape[:2]
    except (OSError, ValueError) as exc:
        if is_slide_path(image):
            raise  # a slide file that does not read: the slide reader says why
        if not Path(image).exists():
            raise InputError(f"no such image: {image}") from exc
        try:
            with Image.open(image) as im:
                width, height = im.size
        except Image.DecompressionBombError:  # PIL's own limit, above ours
            size = f"over {2 * Image.MAX_IMAGE_PIXELS // 10**6} Mpx"
        except (OSError, ValueError) as exc2:
            raise InputError(f"cannot read image {image}: not an image Pillow can read "
                             f"({type(exc2).__name__}; accepted: PNG, JPEG, BMP and other "
                             "formats Pillow reads, or a TIFF or OME-Zarr slide)") from exc2
    if size is None and width * height > MAX_DAB_IN_MEMORY_PIXELS:
        size = f"{width} x {height} px"
    if size is not None:
        way = ("give --out DIR to score it tile by tile as one region, or --regions to score "
               "its regions" if slide is not None else "tiles are read from slide files: "
               "save it as a tiled TIFF (e.g. vips tiffsave IMAGE out.tif --tile --pyramid) "
               "and give that with --out DIR")
        raise InputError(f"{image} is {size}, too large to score in memory (over "
                         f"{MAX_DAB_IN_MEMORY_PIXELS // 2**20} Mpx, ~120 bytes per pixel): "
                         + way)
    if slide is not None:
        import numpy as np

        if slide.shape[-1] == 3 and slide.dtype not in (np.uint8, np.uint16):
            raise InputError(f"{Path(image).name}: DAB IHC needs an 8- or 16-bit RGB "
                             f"brightfield image; got RGB of {slide.dtype}")
        if slide.shape[-1] != 3:
            what = ("RGBA or CMYK? save it as RGB; " if slide.shape[-1] == 4 and slide.dtype in (
                np.uint8, np.uint16) else "")
            raise InputError(f"{Path(image).name}: DAB IHC needs an RGB brightfield image; "
                             f"got {slide.shape[-1]} channels of {slide.dtype} ({what}a "
                             "fluorescence slide is analysed by qdmed image analyze)")
        return slide.read_region(0, height, 0, width), slide.pixel_size_um, \
            slide.pixel_size_note
    _check_image_mode(image)
    from skimage.io import imread

    try:
        rgb = imread(image)
    except Exception as exc:  # noqa: BLE001 - any decoder's error (zlib, JPEG...) is bad input
        why = (str(exc).strip().splitlines() or [""])[0]  # imageio lists its backends below
        raise InputError(f"cannot read image {image}: {type(exc).__name__}: {why} (accepted: "
                         "an image Pillow reads, such as PNG, JPEG or BMP, or a TIFF or "
                         "OME-Zarr slide)") from exc
    if rgb.ndim != 3 or rgb.shape[-1] not in (3, 4):  # said here with the file's name
        got = ("a grey-level image (one channel)" if rgb.ndim == 2 else
               f"{rgb.shape[-1]} channels" if rgb.ndim == 3 else f"an array of {rgb.shape}")
        raise InputError(f"{Path(image).name}: DAB IHC needs an RGB brightfield image; got "
                         f"{got} of {rgb.dtype}")
    if rgb.shape[-1] == 4:  # said here with the file's name (a review: unnamed)
        import numpy as np

        full = np.iinfo(rgb.dtype).max if np.issubdtype(rgb.dtype, np.integer) else 1.0
        if not np.all(rgb[..., 3] == full):
            raise InputError(_TRANSPARENT.format(Path(image).name))
    return rgb, None, None


_TRANSPARENT = ("{}: the image has transparent pixels (an alpha channel below full); give an "
                "opaque RGB image")


def _check_image_mode(image) -> None:
    """Refuse, naming the file, what its decoder would hand on as RGB(A) although it is not a
    colour brightfield image: a grey-level PNG with alpha (a 16-bit one was read as RGBA
    and scored), a CMYK image (converting it without its colour profile would shift the
    stains' optical densities), a palette image with a transparent colour (read as opaque
    RGB). A review found each scored or said without the file."""
    from PIL import Image

    from qdmed.errors import InputError

    name = Path(image).name
    try:
        with open(image, "rb") as f:
            head = f.read(26)
        if (len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
                and head[25] == 4):
            # the decoder hands a 16-bit grey PNG with alpha on as RGBA: its colour type says
            raise InputError(f"{name}: DAB IHC needs an RGB brightfield image; got a grey-level "
                             f"image with alpha ({head[24]}-bit PNG)")
        with Image.open(image) as im:
            mode = im.mode
            if mode == "CMYK":
                raise InputError(f"{name}: a CMYK image (print colours); DAB IHC needs the RGB "
                                 "the scanner or camera recorded: save it as RGB")
            if mode in ("P", "PA") and (mode == "PA" or "transparency" in im.info):
                import numpy as np

                if np.asarray(im.convert("RGBA"))[..., 3].min() < 255:
                    raise InputError(_TRANSPARENT.format(name))
    except InputError:
        raise
    except (OSError, ValueError):
        return  # not an image Pillow reads: the decoder that follows says why


def _pair(option: str, item: str, form: str) -> tuple[str, str]:
    """``KEY=VALUE`` of a repeatable option, both parts non-empty (stripped)."""
    from qdmed.errors import InputError

    key, sep, value = (part.strip() for part in item.partition("="))
    if not sep or not key or not value:
        raise InputError(f"{option} must be {form}, got {item!r}")
    return key, value


def _once(option: str, key: str, seen) -> str:
    """`key`, refused when an earlier use of the repeatable option gave it already."""
    from qdmed.errors import InputError

    if key in seen:
        raise InputError(f"{option} {key} is given twice; give it once")
    return key


def _stains(text: str):
    """--stains: 'ruifrok', 'macenko', or haematoxylin and DAB OD vectors 'R,G,B;R,G,B'
    (the residual the cross product, as QuPath completes them)."""
    from qdmed.errors import InputError
    from qdmed.imaging._brightfield import stain_matrix_from_vectors

    t = text.strip().lower()
    if t in ("ruifrok", "macenko"):
        return t
    from qdmed.errors import QdmedError
    try:
        vecs = [[float(v) for v in part.replace(" ", ",").split(",") if v]
                for part in text.split(";")]
    except ValueError:
        vecs = []
    if len(vecs) != 2 or any(len(v) != 3 for v in vecs):
        raise InputError(f"--stains must be 'ruifrok', 'macenko' or two OD vectors "
                         f"'R,G,B;R,G,B' (haematoxylin; DAB), e.g. "
                         f"'0.651,0.701,0.290;0.269,0.568,0.778'; got {text!r}")
    h, dab = vecs
    if h[0] < h[2] and dab[2] < dab[0]:  # blue-purple H absorbs red most, brown DAB blue
        raise InputError(f"--stains {text!r}: the first vector absorbs more blue than red "
                         "and the second more red than blue, as DAB and haematoxylin do: give "
                         "haematoxylin first (swapped, a field read 25 cells instead of 279; "
                         "a review)")
    try:
        return stain_matrix_from_vectors(h, dab)
    except QdmedError as exc:
        raise type(exc)(f"--stains {text!r}: {exc}") from None


def _white_level(text: str | None):
    """--background: None (white), 'auto', or R,G,B levels 0-255 as transmittances."""
    from qdmed.errors import InputError

    if text is None or text.strip().lower() == "auto":
        return 1.0 if text is None else "auto"
    try:
        levels = [float(v) for v in text.replace(" ", ",").split(",") if v]
    except ValueError:
        levels = []
    if len(levels) == 3 and all(0 < v <= 1 for v in levels):
        raise InputError(f"--background takes R,G,B levels 0-255 (QuPath's 'Background'), "
                         f"and {text!r} look like transmittances 0-1, as summary.json's "
                         f"'background' records them: give "
                         f"{','.join(f'{255 * v:.1f}' for v in levels)} (its "
                         "'background_levels_255'), or 'auto'")
    if len(levels) != 3 or not all(0 < v <= 255 for v in levels):
        raise InputError(f"--background must be 'auto' or R,G,B levels in (0, 255], e.g. "
                         f"240,240,242; got {text!r}")
    if min(levels) < 25.5:
        raise InputError(f"--background {text!r}: a level below 25.5 (a tenth of 255) is no "
                         "glass's; give the glass's R,G,B levels 0-255, or 'auto'")
    return tuple(v / 255.0 for v in levels)


def _od_cutoffs(text: str) -> tuple[float, ...]:
    from qdmed.errors import InputError

    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--od-cutoffs must be three numbers, got {text!r}") from None


def _segmentation_model(model: Path | None, pixel_size: float) -> dict:
    """The settings of --segmentation-model and --segmentation-pixel-size (those not at
    their defaults)."""
    out: dict = {} if model is None else {"segmentation_model": str(model)}
    if pixel_size != _MODEL_PX:  # checked with the settings, before any slide
        out["segmentation_pixel_size_um"] = float(pixel_size)
    return out


def _dab_region_warnings(d: dict) -> list[str]:
    return [*d["warnings"], *(d["cases_scored"] or {}).get("warnings", [])]


def _print_dab_regions(slide, out, d) -> None:
    """The tables of `qdmed image dab SLIDE --regions ...` (or `--out` alone)."""
    rows = d["regions_scored"]["regions"]
    m = d["parameters"]["marker"]
    score = (["her2_category"] if m == "HER2" else [f"{m}_percent_positive", f"{m}_status"]) \
        + ["h_score"]
    print_table(f"DAB IHC ({m}) by region: {Path(slide).name}", rows,
                [c for c in ("region", "case", "status", "n_cells", "n_scored", *score,
                             "message") if any(c in r for r in rows)])
    if d.get("all_regions"):
        pooled = d["all_regions"]
        print_table("All regions pooled (summary.json 'all_regions')", [pooled],
                    [c for c in ("region", "status", "n_cells", "n_scored", *score, "message")
                     if c in pooled])
    if d["cases_scored"]:
        cases = d["cases_scored"]["cases"]
        print_table("Cases (cases.csv)", cases,
                    [c for c in ("case", "status", "cores", "n_scored", *score)
                     if any(c in r for r in cases)])
    thr = d.get("thresholds") or []
    for t in thr if len(thr) <= 3 else [t for t in thr if t["n_tiles"]][:3]:
        v = t["hematoxylin_threshold_od"]
        typer.echo(f"{t['region']}: " + (f"{t['n_tiles']} tiles, " if t["n_tiles"] else "")
                   + (f"nuclei at haematoxylin OD > {v:.3f}" if v is not None else
                      "no nuclei stand out from the haematoxylin (no cells)"))
    if len(thr) > 3:
        vs = [t["hematoxylin_threshold_od"] for t in thr
              if t["hematoxylin_threshold_od"] is not None]
        if vs:
            typer.echo(f"nuclei at haematoxylin OD > {min(vs):.3f}-{max(vs):.3f} (one Otsu "
                       f"threshold per region: summary.json 'thresholds')")
    for w in _dab_region_warnings(d):
        print_warning(w)
    typer.echo(f"regions: {Path(out) / 'regions.csv'}; cells: {Path(out) / 'cells.parquet'}"
               + (f" and {d['cells_geojson']} (QuPath)" if d.get("cells_geojson") else "")
               + f"; report: {d['report']}")


def _save_plot(path: Path, fig) -> None:
    """PNG of ``fig`` written atomically; an unwritable path is bad input (exit 2)."""
    _write_output(path, "plot", fig)


@app.command(short_help="Agreement of two HER2 scorings: cross-table and kappa.")
def compare(
    table_a: Annotated[Path, typer.Argument(help="CSV with one row per case, e.g. cohort.csv of `qdmed image cohort`.")],
    table_b: Annotated[Path, typer.Argument(help="CSV of the other scoring (DAB IHC, a pathologist's reads).")],
    key: Annotated[str, typer.Option("--key", help="Case column of TABLE_A (and of TABLE_B unless --key-b).")] = "slide",
    key_b: Annotated[str | None, typer.Option("--key-b", help="Case column of TABLE_B (default: --key).")] = None,
    column_a: Annotated[str, typer.Option("--column-a", help="HER2 category column of TABLE_A (with --measure: its number column, needed).")] = "her2_category",
    column_b: Annotated[str, typer.Option("--column-b", help="HER2 category column of TABLE_B (with --measure: its number column; default --column-a).")] = "her2_category",
    name_a: Annotated[str | None, typer.Option("--name-a", help="Name of the first table's scoring (rows of the cross-table), e.g. QD-IHC. Default: TABLE_A's file name.")] = None,
    name_b: Annotated[str | None, typer.Option("--name-b", help="Name of the second table's scoring (columns), e.g. 'DAB IHC' or 'pathologist'. Default: TABLE_B's file name.")] = None,
    measure: Annotated[bool, flag("--measure", help="Compare the columns as numbers (ER or PR % positive, a Ki-67 index, an H-score): bias (A - B) and 95 % limits of agreement (Bland-Altman), Lin's concordance. Give --column-a (and --column-b).")] = False,
    status: Annotated[str | None, typer.Option("--status", help="With --measure: also compare the status the values give: ER or PR (ASCO/CAP 2020, percentages), Ki67 (IKWG 2021: <= 5 % low, >= 30 % high), or cut-offs such as 1,10 (a value on a cut-off takes the higher status).")] = None,
    unit: Annotated[str, typer.Option("--unit", help="With --measure: the values' unit, for the table and plot (e.g. %).")] = "",
    plot: Annotated[Path | None, typer.Option("--plot", callback=_png_path, help="Save a PNG of the cross-table (with --measure: the scatter and Bland-Altman plots).")] = None,
    json_: JSON = False,
):
    """Case-by-case agreement of two scorings of the same cases.

    HER2 categories (default): cross-table, % agreement, Cohen's kappa. With --measure, a
    number per case (e.g. ER % positive against a pathologist's %): bias, limits of
    agreement, Lin's concordance and, with --status, the statuses' agreement.

    Cases are matched on --key by slide stem (A.ome.tif and A are the same case)."""
    # a name not given is the table's file name (its path where the two names are alike;
    # two columns of one table, e.g. two readers in one sheet: the columns' names)
    stems = (Path(table_a).stem, Path(table_b).stem)
    if Path(table_a).resolve() == Path(table_b).resolve():
        stems = (column_a, column_b)
    elif stems[0] == stems[1]:
        stems = (str(table_a), str(table_b))
    name_a = stems[0] if name_a is None else name_a
    name_b = stems[1] if name_b is None else name_b
    if measure:
        return _compare_measure(table_a, table_b, key=key, key_b=key_b, column_a=column_a,
                                column_b=column_b, name_a=name_a, name_b=name_b,
                                status=status, unit=unit, plot=plot, json_=json_)
    if status is not None or unit:
        from qdmed.errors import InputError

        raise InputError("--status and --unit go with --measure (numbers per case); HER2 "
                         "categories are compared without them.")
    from qdmed.imaging import compare_her2_tables

    res = compare_her2_tables(table_a, table_b, key=key, key_b=key_b, column_a=column_a,
                              column_b=column_b, method_a=name_a, method_b=name_b)
    d = res.to_dict()
    if plot is not None:
        _save_plot(plot, res.plot())
    if json_:
        return print_json_warned(d, d["warnings"])
    def with_ci(k):
        lo, hi = d[k + "_ci95"]
        return (f"{d[k]:.3g}" if d[k] is not None else "undefined") + (
            f" (95 % CI {lo:.3g} to {hi:.3g})" if lo is not None and hi is not None else "")

    print_kv(f"HER2 agreement: {name_a} vs {name_b}",
             {"n_cases": d["n_cases"],
              **{k: with_ci(k) for k in ("percent_agreement", "kappa", "kappa_linear",
                                         "kappa_quadratic")},
              # labelled by what they count (the first is three-way: a review read
              # "negative_positive" as two)
              "percent agreement on negative (0, 1+) / equivocal (2+) / positive (3+)":
                  d["percent_agreement_negative_positive"],
              "percent agreement on 0 / any staining (1+ or more)":
                  d["percent_agreement_null_low"]})
    rows = [{name_a + " \\ " + name_b: c, **dict(zip(d["categories"], map(str, r), strict=True))}
            for c, r in zip(d["categories"], d["table"], strict=True)]
    print_table("cross-table", rows)
    for why, cases in d["excluded"].items():
        typer.echo(f"excluded ({why}): {', '.join(cases[:10])}" + (" ..." if len(cases) > 10 else ""))
    for w in d["warnings"]:
        print_warning(w)
    return None


def _status_option(status: str | None):
    """--status: a rule name (ER, PR) or comma-separated cut-offs."""
    from qdmed.errors import InputError

    if status is None or status.strip().upper().replace("-", "") in ("ER", "PR", "PGR",
                                                                     "KI67"):
        return status
    try:
        return [float(v) for v in status.split(",")]
    except ValueError:
        raise InputError(f"--status {status!r}: give ER, PR, Ki67 or cut-offs such as "
                         "1,10.") from None


def _compare_measure(table_a, table_b, *, key, key_b, column_a, column_b, name_a, name_b,
                     status, unit, plot, json_):
    from qdmed.errors import InputError
    from qdmed.imaging import compare_measure_tables

    if column_a == "her2_category":
        raise InputError("--measure compares numbers: name TABLE_A's column with --column-a "
                         "(and TABLE_B's with --column-b when it differs), e.g. --column-a "
                         "ER_percent_positive_corrected --column-b er_percent.")
    if column_b == "her2_category":
        column_b = column_a  # only --column-a given: the same column in both tables
    res = compare_measure_tables(table_a, table_b, key=key, key_b=key_b, column_a=column_a,
                                 column_b=column_b, method_a=name_a, method_b=name_b,
                                 unit=unit, status_rule=_status_option(status))
    d = res.to_dict()
    if plot is not None:
        _save_plot(plot, res.plot())
    if json_:
        return print_json_warned(d, d["warnings"])

    def ci(v, lo_hi):
        lo, hi = lo_hi
        return f"{v:.3g}" + (f" (95 % CI {lo:.3g} to {hi:.3g})" if lo is not None else "") \
            if v is not None else "undefined"

    u = f" {unit}" if unit else ""
    print_kv(f"{d['measure']}: {name_a} vs {name_b}", {
        "n_cases": d["n_cases"],
        f"mean {name_a}{u}": d["mean_a"], f"mean {name_b}{u}": d["mean_b"],
        f"bias ({name_a} - {name_b}){u}": ci(d["bias"], d["bias_ci95"]),
        f"SD of the differences{u}": d["sd_difference"],
        f"95 % limits of agreement{u}": "{:.3g} to {:.3g}".format(*d["limits_of_agreement"]),
        "  lower limit's 95 % CI": "{:.3g} to {:.3g}".format(*d["lower_limit_ci95"]),
        "  upper limit's 95 % CI": "{:.3g} to {:.3g}".format(*d["upper_limit_ci95"]),
        "trend of the differences with the level (per unit, p)":
            "undefined" if d["difference_slope"] is None else
            f"{d['difference_slope']:+.3g} (p = {d['difference_slope_p']:.3g})",
        "Pearson r": "undefined" if d["pearson_r"] is None else d["pearson_r"],
        "Lin's concordance (CCC)": ci(d["ccc"], d["ccc_ci95"]),
        "bias correction factor C_b": "undefined" if d["bias_correction_factor"] is None
        else d["bias_correction_factor"]})
    st = d["status"]
    if st is not None:
        print_kv(f"status: {st['rule']}", {
            "percent agreement": ci(st["percent_agreement"], st["percent_agreement_ci95"]),
            "kappa": "undefined" if st["kappa"] is None else ci(st["kappa"],
                                                                 st["kappa_ci95"]),
            **({"kappa (linear weights)": "undefined" if st["kappa_linear"] is None else
                ci(st["kappa_linear"], st["kappa_linear_ci95"])}
               if len(st["labels"]) > 2 else {})})
        print_table("status cross-table", [
            {name_a + " \\ " + name_b: c, **dict(zip(st["labels"], map(str, r), strict=True))}
            for c, r in zip(st["labels"], st["table"], strict=True)])
    if d["outside_limits"]:
        typer.echo("outside the limits of agreement: " + ", ".join(
            f"{o['case']} ({o['difference']:+.3g})" for o in d["outside_limits"][:10])
            + (" ..." if len(d["outside_limits"]) > 10 else ""))
    for why, cases in d["excluded"].items():
        typer.echo(f"excluded ({why}): {', '.join(cases[:10])}" + (" ..." if len(cases) > 10 else ""))
    for w in d["warnings"]:
        print_warning(w)
    return None


@app.command(short_help="Where the cell classes lie: distances, neighbours, enrichment.")
def spatial(
    cells: Annotated[Path, typer.Argument(help="An analysis folder (its cells.parquet), a cells.parquet, or a CSV / tab-separated cells table (give --xy).")],
    by: Annotated[str, typer.Option("--by", help="Class column(s), comma-separated: phenotype, her2_category, <marker>_positive (read <marker>+ / <marker>-), dab_class (a DAB analysis), a cluster id, or QuPath's Classification; several are combined (ER_positive,PR_positive gives ER+ PR- ...).")] = "phenotype",
    radius_um: Annotated[float, typer.Option("--radius-um", help="Neighbourhood radius, centroid to centroid (um).")] = 20.0,
    within: Annotated[str, typer.Option("--within", help="Column(s) of groups, comma-separated (slide, TMA core, case): neighbours found and classes shuffled within each. auto: the image (slide, QuPath's Image or inForm's Sample Name, when the table has one), and region (a TMA core, an annotation), else case (cells without one: their image alone); none: the whole table. QuPath TMA: Image,Parent.")] = "auto",
    permutations: Annotated[int, typer.Option("--permutations", help="Shuffles of the classes over the cells for the enrichment p-values (0: none; the z-scores are exact without them).")] = 999,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the shuffles.")] = 0,
    xy: Annotated[str, typer.Option("--xy", help="Centroid columns in um, X,Y (QuPath: 'Centroid X µm,Centroid Y µm').")] = "centroid_x_um,centroid_y_um",
    per_group: Annotated[bool, flag("--per-group", help="Also analyse every group (TMA core, case, slide; see --within) on its own: one row per group and (from, to) pair in --table (or under per_group with --json).")] = False,
    table: Annotated[Path | None, typer.Option("--table", help="Write the (from, to) table as CSV (with --per-group, a group column and one row per group and pair).")] = None,
    cells_out: Annotated[Path | None, typer.Option("--cells-out", help="Write each cell's nearest distance to, and neighbours of, every class (.parquet or .csv).")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", callback=_png_path, help="PNG of the cells by class, the enrichment z-scores and the median nearest distances.")] = None,
    no_progress: NOPROG = False,
    json_: JSON = False,
):
    """Nearest distances, neighbours within a radius and neighbourhood enrichment (against
    the classes shuffled over the cells) between the cell classes of an analysis.

    z > 0: the "to" class lies within the radius of the "from" class more often than
    chance placement gives; z < 0, less. Research measures: no guideline sets a cut-off."""
    from qdmed.errors import InputError
    from qdmed.imaging import spatial_analysis, spatial_by_group, spatial_cells
    from qdmed.imaging._cells_table import read_cells_table

    by_cols = _names(by)
    xy_cols = tuple(t.strip() for t in xy.split(","))
    if len(xy_cols) != 2 or not all(xy_cols):
        raise InputError(f"--xy {xy!r}: give the two centroid columns (um) as X,Y")
    _spatial_outputs(cells, table, cells_out)
    grp = {"none": None, "auto": "auto"}.get(within.strip().lower(), _names(within))
    if per_group and table is None and not json_:
        raise InputError("--per-group writes one row per group and pair: give --table "
                         "FILE.csv (or --json)")
    if per_group and grp is None:
        raise InputError("--per-group needs groups: give --within COLUMNS (or auto), not none")
    frame, _ = read_cells_table(cells)
    from qdmed.imaging._spatial import _as_named

    xy_cols = _as_named(frame, xy_cols)  # as the table spells them (its micro sign), so
    by_cols = _as_named(frame, tuple(by_cols))  # that the per-cell table keeps them
    show = not no_progress and not json_
    groups = None
    if per_group:  # first: a table without groups fails before the pooled run
        groups = spatial_by_group(frame, by_cols, within=grp, radius_um=radius_um,
                                  n_permutations=permutations, seed=seed, xy_columns=xy_cols,
                                  progress=show)
    res = spatial_analysis(frame, by_cols, radius_um=radius_um, within=grp,
                           n_permutations=permutations, seed=seed, xy_columns=xy_cols,
                           progress=show)
    # everything computed before anything is written
    outputs = []
    if plot is not None:
        outputs.append((plot, "plot", res.plot()))
    import pandas as pd

    if table is not None:
        pairs = res.table() if groups is None else pd.concat(
            {g: r.table() for g, r in groups.items()}, names=["group", "row"]
        ).reset_index(level="row", drop=True).reset_index()
        outputs.append((table, "table", pairs.to_csv(index=False)))
    if cells_out is not None:
        per_cell = spatial_cells(frame, by_cols, radius_um=radius_um, within=grp,
                                 xy_columns=xy_cols)
        # what joins it back: ids, the images and groups, the centroids
        keep = [c for c in ("cell_id", "Object ID", "Cell ID", "slide", "Image",
                            "Sample Name", *(res.within or ()), *xy_cols)
                if c in frame.columns]
        per_cell = pd.concat([frame[list(dict.fromkeys(keep))].reset_index(drop=True),
                              per_cell.reset_index(drop=True)], axis=1)  # row by row
        outputs.append((cells_out, "per-cell table", per_cell))
    for path, what, data in outputs:
        _write_output(path, what, data)
    d = res.to_dict()
    group_warnings = [] if groups is None else [
        f"{' / '.join(res.within)} {g}: {w}" for g, r in groups.items() for w in r.warnings]
    if groups is not None:
        d["per_group"] = {g: r.to_dict() for g, r in groups.items()}
    if json_:
        return print_json_warned(d, d["warnings"] + group_warnings)
    print_kv(f"spatial: {cells}", {
        "classes (cells)": ", ".join(f"{c} ({n})" for c, n in zip(d["classes"], d["n_cells"],
                                                                   strict=True)),
        "cells without a class (left out)": d["n_unclassified"],
        **({"cells without a group (left out)": d["n_ungrouped"]} if d["n_ungrouped"]
           else {}),
        "radius (um)": d["radius_um"],
        "groups (shuffled within)": f"{d['n_groups']} ({' / '.join(d['within'])})"
        if d["within"]
        else "1 (the whole table)",
        "neighbour pairs within the radius": d["n_pairs"],
        "permutations (seed)": f"{d['n_permutations']} ({d['seed']})"})

    def num(v, fmt):
        return "-" if v is None else fmt.format(v)

    rows = [{"from": r["from"], "to": r["to"],
             "median nearest (um)": num(r["nearest_median_um"], "{:.1f}") + (
                 f" ({r['nearest_n']} of {r['n_from']})"
                 if r["nearest_median_um"] is not None and r["nearest_n"] < r["n_from"]
                 else ""),
             "% with one within": num(None if r["fraction_within"] is None
                                      else 100 * r["fraction_within"], "{:.3g}"),
             "neighbours (expected)": f"{num(r['mean_neighbours'], '{:.2f}')} "
                                      f"({num(r['expected_neighbours'], '{:.2f}')})",
             "z": num(r["z"], "{:+.1f}"),
             "p enriched / depleted": f"{num(r['p_enrichment'], '{:.2g}')} / "
                                      f"{num(r['p_depletion'], '{:.2g}')}"}
            for r in res.table().astype(object).where(res.table().notna(), None)
            .to_dict("records")]
    print_table(f"from -> to within {d['radius_um']:g} um" + (
        f", all {d['n_groups']} groups (shuffled within each)" if groups else ""), rows)
    typer.echo("median nearest: from a 'from' cell to the nearest other 'to' cell (over the "
               "'from' cells with one in their group: n of all when fewer); % with one "
               "within: 'from' cells with a 'to' cell within the radius; neighbours: mean "
               "'to' cells within the radius of a 'from' cell (expected: with the classes "
               "shuffled); z > 0: more neighbours than chance gives, z < 0: fewer")
    for w in d["warnings"]:
        print_warning(w)
    for w in group_warnings[:10]:
        print_warning(w)
    if len(group_warnings) > 10:
        print_warning(f"... and {len(group_warnings) - 10} more warnings of single groups "
                      "(--json lists them)")
    return None


def _spatial_outputs(source: Path, table: Path | None, cells_out: Path | None) -> None:
    """--table and --cells-out checked before any work: their suffixes, writable places,
    and neither the input nor each other."""
    from qdmed.errors import InputError

    given = [(o, p, k) for o, p, k in (("--table", table, (".csv",)),
                                       ("--cells-out", cells_out, (".parquet", ".csv")))
             if p is not None]
    from qdmed.imaging._cells_table import cells_table_path

    src = cells_table_path(source)
    for opt, path, kinds in given:
        _output_path(opt, path, kinds)
        if path.resolve() == src.resolve():
            raise InputError(f"{opt} {path} is the cells table read: it would be replaced; "
                             "give another file name")
    if len(given) == 2 and given[0][1].resolve() == given[1][1].resolve():
        raise InputError(f"--table and --cells-out name the same file ({table}); give two")


def _write_output(path: Path, what: str, data) -> None:
    """One output written atomically (a figure as PNG, text, or a table as Parquet or
    CSV by its suffix); an unwritable path is bad input naming the path."""
    from qdmed.errors import InputError
    from qdmed.report import atomic_write_bytes, atomic_write_parquet, figure_png

    try:
        if isinstance(data, str):
            atomic_write_bytes(path, data.encode("utf-8"))
        elif hasattr(data, "to_parquet"):
            if path.suffix.lower() == ".csv":
                atomic_write_bytes(path, data.to_csv(index=False).encode("utf-8"))
            else:
                atomic_write_parquet(path, data)
        else:
            atomic_write_bytes(path, figure_png(data))
    except OSError as exc:
        raise InputError(f"cannot write the {what} to {path}: {exc.strerror or exc}") from None
    typer.echo(f"{what} written to {path}", err=True)  # stderr: stdout may be --json's
