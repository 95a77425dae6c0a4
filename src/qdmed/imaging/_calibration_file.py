"""The calibration file of ``qdmed image calibrate`` (:func:`load_calibration`), and the
intensity scale its controls were made on against the slides it is applied to.

HER2 cut-offs and positivity gates are abundances: numbers whose scale is set by how the
controls were imaged and unmixed (the QD each marker carries, the detection bands or an
export already unmixed, the pixel type and the exposures). Applied to a slide on
another scale, they score it wrong and say nothing: a review scored one field HER2 3+,
ER+ and PR+ unmixed from its spectra and HER2 0, ER- and PR- from an inForm-style
component export of the same field with a calibration made on the spectral controls.
``qdmed image calibrate`` records the controls' scale from their analysis summaries, and
:func:`scale_warnings` compares a slide's with it before the slide is analysed.

Warned rather than refused: a lab may rescale deliberately (a normalised export).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from qdmed.errors import FileFormatError, InputError, check_fields

#: Fields of the scale compared, named as a difference is said.
_FIELDS = {
    "unmixed": "what was analysed",
    "labels": "labels (marker: QD)",
    "component_channels": "components' channels",
    "channels_nm": "detection bands",
    "excitation_nm": "excitation (nm)",
    "dtype": "pixel type",
    "exposure_ms": "exposure times (ms)",
    "unmixing": "unmixing",
}


def intensity_scale(panel_dict: dict, slide_dict: dict, settings_dict: dict | None = None
                    ) -> dict:
    """What sets the scale of a slide's abundances, from an analysis summary's ``panel``,
    ``slide`` and ``settings`` blocks (or ``Panel.to_dict()``, ``SlideImage.to_dict()``
    and ``AnalysisSettings.to_dict()``). Exposures are kept by channel name, and only for
    integer images: a float image (unmixed, or normalised to counts per time) no longer
    scales with its exposure, as the cohort's own comparison of exposures takes it. The
    unmixing (plain NNLS or Poisson maximum likelihood) moves dim abundances, hence the
    cut-offs (a review: an ER gate 4.11 plain, 5.55 Poisson); None where the settings are
    not known (a calibration made before it was recorded). The panel's excitation
    wavelength sets each QD's brightness (its absorption there) and the autofluorescence;
    None where the panel records none (a calibration made before it was recorded)."""
    import numpy as np

    from qdmed.imaging._poisson import describe_unmixing

    unmixed = bool(panel_dict.get("unmixed"))
    dtype = slide_dict.get("dtype")
    exposure = slide_dict.get("exposure_ms")
    names = slide_dict.get("channel_names") or []
    integer = dtype is not None and np.dtype(dtype).kind in "ui"
    return {"unmixed": "an already-unmixed export" if unmixed else "the detector's spectra",
            "labels": None if unmixed else panel_dict.get("labels"),
            "component_channels": panel_dict.get("labels") if unmixed else None,
            "channels_nm": None if unmixed else panel_dict.get("channels_nm"),
            # the labels' brightness (absorption) and the autofluorescence's change with it
            "excitation_nm": None if unmixed or panel_dict.get("excitation_nm") is None
            else float(panel_dict["excitation_nm"]),
            "dtype": dtype,
            "exposure_ms": dict(zip(map(str, names), map(float, exposure), strict=False))
            if integer and exposure and len(exposure) == len(names) else None,
            "unmixing": None if settings_dict is None or unmixed
            else describe_unmixing(settings_dict)}


def _differs(field: str, a: Any, b: Any) -> bool:
    if a is None or b is None:  # unknown on one side (exposures): unsaid
        return field in ("unmixed", "dtype") and a != b
    if field == "exposure_ms":  # the channels both name
        return any(abs(a[k] - b[k]) > 0.01 * max(abs(a[k]), abs(b[k])) for k in a if k in b)
    if field == "labels":  # one QD however spelled (qdot 525, Qdot525) is one label
        from qdmed.imaging._panel import label_key

        return {k: label_key(v) for k, v in a.items()} != \
            {k: label_key(v) for k, v in b.items()}
    if field == "channels_nm":  # the same bands stored in another order are one scale
        return sorted(map(tuple, (map(float, c) for c in a))) != \
            sorted(map(tuple, (map(float, c) for c in b)))
    return a != b


def _show(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {x:g}" if isinstance(x, float) else f"{k}: {x}"
                         for k, x in v.items())
    if isinstance(v, list) and v and isinstance(v[0], list):
        return ", ".join(f"{c[0]:g}-{c[1]:g}" for c in v)
    return str(v)


def differences(a: dict, b: dict) -> list[tuple[str, Any, Any]]:
    """``(field, a's value, b's value)`` for every field of two scales that differs."""
    return [(f, a.get(f), b.get(f)) for f in _FIELDS if _differs(f, a.get(f), b.get(f))]


def controls_scale(summaries: dict[str, dict | None]) -> tuple[dict | None, list[str]]:
    """The controls' common scale from their analysis summaries (name -> summary, None
    where a control's table came without one), and warnings where controls differ among
    themselves. None when no control's summary is known."""
    known = {n: intensity_scale(s["panel"], s["slide"], s.get("settings"))
             for n, s in summaries.items() if s is not None and "panel" in s and "slide" in s}
    if not known:
        return None, []
    warnings = []
    first, ref = next(iter(known.items()))
    for name, sc in known.items():
        for what, x, y in differences(ref, sc):
            warnings.append(f"controls {first} and {name} differ in {_FIELDS[what]}: "
                            f"{_show(x)} against {_show(y)}; their intensities are not on "
                            "one scale")
    missing = [n for n, s in summaries.items() if n not in known]
    if missing:
        warnings.append(f"control(s) {', '.join(missing)} came without their analysis "
                        "summary.json: the scale recorded is the other controls'")
    return ref, warnings


#: The nuclear stain's median level of a slide's nuclei against the controls': beyond this
#: factor either way the slide is warned as imaged or stained on another scale.
NUCLEAR_LEVEL_FACTOR = 2.0


def nuclear_level(tables: dict, marker: str) -> dict | None:
    """The controls' level of the nuclear stain (`marker`, e.g. DAPI): the median of each
    control's median nucleus mean, with each control's; None where no control has it.
    Recorded in the calibration's intensity scale: the one measure every slide shares with
    the controls whatever it expresses, so that a slide imaged or stained brighter or
    dimmer is seen in its data where its metadata are silent (a review: a slide simulated
    at 1000 photons per unit against controls at 300, no exposure recorded, read HER2 2+,
    ER and PR 100 % positive, truth 1+ and 0 %, unsaid)."""
    import numpy as np

    col = f"{marker}_nucleus_mean"
    by = {str(n): float(np.nanmedian(t[col])) for n, t in tables.items()
          if col in t.columns and np.isfinite(t[col]).any()}
    if not by:
        return None
    return {"marker": marker, "column": col, "median": float(np.median(list(by.values()))),
            "by_control": by}


def nuclear_level_spread_warnings(level: dict | None) -> list[str]:
    """The warning where the controls' own nuclear levels (:func:`nuclear_level`'s
    ``by_control``) lie more than :data:`NUCLEAR_LEVEL_FACTOR` apart: one control imaged or
    stained on another scale (a review: a BT-474 control simulated at 1000 photons per unit
    among controls at 300 read DAPI 3.3x theirs, moved the intense cut-off from 158 to 385,
    and a 3+ slide scored 2+, unsaid). The slides' check compares them with the controls'
    median and cannot see it."""
    by = (level or {}).get("by_control") or {}
    by = {n: v for n, v in by.items() if v > 0}
    if len(by) < 2:
        return []
    hi, lo = max(by, key=by.get), min(by, key=by.get)
    r = by[hi] / by[lo]
    if r <= NUCLEAR_LEVEL_FACTOR:
        return []
    return [f"control {hi}'s nuclei read {level['marker']} {r:.2g}x control {lo}'s (median "
            f"nucleus mean {by[hi]:.4g} against {by[lo]:.4g}): imaged or stained on another "
            "scale? The cut-offs come from the controls' intensities together: image and "
            "stain them alike"]


def nuclear_level_warnings(calibrated: dict | None, cells) -> list[str]:
    """The warning where the slide's nuclei (`cells`, its cells table) read the nuclear
    stain more than :data:`NUCLEAR_LEVEL_FACTOR` times above or below the controls' level
    (:func:`nuclear_level`, in the calibration's scale); none where either is unknown.
    Cell lines and tissue differ somewhat in it (ploidy, compaction, section), hence the
    wide factor: what it catches is a slide on another scale."""
    import numpy as np

    ref = (calibrated or {}).get("nuclear_level")
    if not ref or ref.get("column") not in getattr(cells, "columns", ()) or not len(cells):
        return []
    v = np.asarray(cells[ref["column"]], dtype=np.float64)
    v = v[np.isfinite(v)]
    if not v.size or not ref["median"] > 0:
        return []
    here = float(np.median(v))
    r = here / ref["median"]
    if 1 / NUCLEAR_LEVEL_FACTOR <= r <= NUCLEAR_LEVEL_FACTOR:
        return []
    return [f"this slide's nuclei read {ref['marker']} {r:.2g}x the calibration's controls' "
            f"(median nucleus mean {here:.4g} against {ref['median']:.4g}): imaged or "
            f"stained {'brighter' if r > 1 else 'dimmer'} than the controls? Its cut-offs "
            "and gates are abundances on the controls' scale: scores here may be shifted "
            "(calibrate on controls imaged and stained as this slide)"]


def scale_warnings(calibrated: dict | None, here: dict) -> list[str]:
    """Warnings where a slide's scale (:func:`intensity_scale`) differs from the one the
    calibration's controls were analysed on (none when that is unknown)."""
    if not calibrated:
        return []
    diffs = differences(calibrated, here)
    if not diffs:
        return []
    said = "; ".join(f"{_FIELDS[f]}: {_show(y)} here, {_show(x)} in the controls"
                     for f, x, y in diffs)
    return [f"the calibration's controls were imaged or analysed otherwise ({said}): its "
            "cut-offs and gates are abundances on the controls' scale and do not carry over; "
            "calibrate on controls imaged and analysed as this slide"]


def control_summary(table_path: str | Path) -> dict | None:
    """The analysis summary.json beside a control's cells.parquet (None if absent or not
    an analysis summary)."""
    p = Path(table_path)
    f = (p if p.is_dir() else p.parent) / "summary.json"
    try:
        doc = json.loads(f.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and "panel" in doc and "slide" in doc else None


@dataclass(frozen=True)
class Calibration:
    """A calibration: HER2 cut-offs (:class:`~qdmed.imaging.Her2Calibration`, or None),
    positivity gates (marker -> :class:`~qdmed.imaging.MarkerGate`, or None) and the
    intensity scale of the controls they were made on (:func:`intensity_scale`; None when
    the controls' tables came without their analysis summaries).

    Made by :func:`~qdmed.imaging.calibrate_controls` (``qdmed image calibrate``) or read
    by :func:`load_calibration`. ``controls_scored`` gives each HER2 control scored with
    the cut-offs, ``warnings`` what the calibration found wrong; ``path`` is the file it
    was read from or saved to ("" for neither)."""

    her2: Any
    gates: dict | None
    intensity_scale: dict | None
    path: str
    controls_scored: dict | None = None
    warnings: tuple = ()
    #: the controls' cell tables and marker -> negative control (made here, not read from
    #: a file), for :meth:`plot`
    controls: dict | None = field(default=None, compare=False, repr=False)
    negatives: dict | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict:
        return {"path": self.path,
                "her2": None if self.her2 is None else self.her2.to_dict(),
                "gates": None if self.gates is None else {
                    m: g.to_dict() for m, g in self.gates.items()},
                "intensity_scale": self.intensity_scale,
                "controls_scored": self.controls_scored,
                "warnings": list(self.warnings)}

    def document(self) -> dict:
        """The calibration file's JSON object (what :meth:`save` writes and
        :func:`load_calibration` reads)."""
        from qdmed import __version__

        doc: dict = {"qdmed_version": __version__,
                     "controls_intensity_scale": self.intensity_scale,
                     "warnings": list(self.warnings)}
        if self.her2 is not None:
            doc["her2"] = self.her2.to_dict()
            doc["controls_scored"] = self.controls_scored
        if self.gates:
            doc["gates"] = {m: g.to_dict() for m, g in self.gates.items()}
        return doc

    def save(self, path: str | Path) -> Calibration:
        """Write the calibration file atomically; returns the calibration with its path."""
        from qdmed.report import atomic_write_text

        try:
            atomic_write_text(path, json.dumps(self.document(), indent=2, sort_keys=True))
        except OSError as exc:
            raise InputError(f"cannot write the calibration to {path}: "
                             f"{exc.strerror or exc}") from None
        return replace(self, path=str(path))

    def plot(self):
        """The controls under the HER2 cut-offs and each negative control under its gate
        (:func:`~qdmed.imaging.plot_calibration`); needs the controls' cells, which a
        calibration read from a file does not hold."""
        if self.controls is None:
            raise InputError("this calibration holds no control cells (read from a file): "
                             "plot_calibration(control_cells, her2=c.her2, gates=c.gates, "
                             "negatives=...) draws it with the controls' tables")
        from qdmed.imaging._calibration_plot import plot_calibration

        return plot_calibration(self.controls, her2=self.her2, gates=self.gates,
                                negatives=self.negatives)


#: The fields of a calibration file (:meth:`Calibration.document`) and of its gates.
CALIBRATION_FIELDS = frozenset({"qdmed_version", "controls_intensity_scale", "warnings",
                                "her2", "controls_scored", "gates"})
GATE_FIELDS = frozenset({"compartment", "threshold", "false_positive_percent",
                         "control_cells", "floor_rule"})


def load_calibration(path: str | Path) -> Calibration:
    """Read a calibration JSON written by ``qdmed image calibrate``: its HER2 cut-offs, its
    positivity gates and its controls' intensity scale, to pass to
    :func:`~qdmed.imaging.analyze_slide` (``her2_calibration=c.her2, gates=c.gates,
    calibration_scale=c.intensity_scale``)."""
    from qdmed._documents import unique_json_pairs
    from qdmed.imaging._her2_calibration import HER2_CALIBRATION_FIELDS, Her2Calibration
    from qdmed.imaging._scoring import MarkerGate, gate_noise_floor_percent

    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"),
                         object_pairs_hook=unique_json_pairs)
    except OSError as exc:
        raise InputError(f"cannot read calibration file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise FileFormatError(f"{path}: not a UTF-8 text (JSON) file ({exc.reason} at byte "
                              f"{exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise FileFormatError(f"{path}: line {exc.lineno}: malformed JSON ({exc.msg})") from exc
    except ValueError as exc:  # a repeated key
        raise FileFormatError(f"{path}: {exc}") from exc
    if not isinstance(doc, dict) or not (doc.get("her2") or doc.get("gates")):
        found = (f"keys: {', '.join(sorted(doc)[:8]) or 'none'}" if isinstance(doc, dict)
                 else f"a JSON {type(doc).__name__}")
        raise FileFormatError(f"{path}: not a calibration (from qdmed image calibrate): "
                              f"expected a JSON object with 'her2' and/or 'gates', got {found}")
    if {"intensity_scale", "path"} <= set(doc) and "controls_intensity_scale" not in doc:
        # json.dump(c.to_dict()) (a review): the summary, not the file
        raise FileFormatError(f"{path}: this is Calibration.to_dict()'s summary, not a "
                              "calibration file: write one with Calibration.save(path) (or "
                              "json.dump(c.document()))")
    # a misspelt field would be ignored: a "gate" beside "gates", a cut-off's "feint"
    check_fields(doc, CALIBRATION_FIELDS, str(path))
    if isinstance(doc.get("her2"), dict):
        check_fields(doc["her2"], HER2_CALIBRATION_FIELDS, str(path), "her2")
    try:
        her2 = Her2Calibration.from_dict(doc["her2"]) if doc.get("her2") else None
    except (InputError, TypeError, ValueError) as exc:
        raise FileFormatError(f"{path}: 'her2': {exc}") from None
    raw = doc.get("gates") or {}
    if not isinstance(raw, dict):
        raise FileFormatError(f"{path}: 'gates' must map marker names to gate objects; got "
                              f"{type(raw).__name__}")
    gates, floor_notes = {}, []
    for m, g in raw.items():
        if isinstance(g, dict):
            check_fields(g, GATE_FIELDS, str(path), f"gates.{m}")
        try:
            fp, nc = g.get("false_positive_percent"), g.get("control_cells")
            if fp is not None and nc is not None and "floor_rule" not in g:
                # written before the floor took the control's size: it recorded 100 (1 - q)
                new = gate_noise_floor_percent(nc, 1.0 - float(fp) / 100.0)
                floor_notes.append(f"gate {m}: its noise floor, recorded as {fp:.3g} % (100 "
                                   f"(1 - quantile)), is {new:.3g} % from its {nc} control "
                                   "cells (order statistics; recomputed: recalibrate to record "
                                   "it)")
                fp = new
            # the threshold as written: the gate refuses text and true (float made them 5, 1)
            gates[m] = MarkerGate(g["compartment"], g["threshold"],
                                  false_positive_percent=fp, control_cells=nc)
        except (KeyError, TypeError, AttributeError) as exc:
            raise FileFormatError(f"{path}: gate {m!r} needs 'compartment' and a numeric "
                                  f"'threshold' ({type(exc).__name__}: {exc})") from None
        except ValueError as exc:  # InputError included: the field it names is in the message
            raise FileFormatError(f"{path}: gate {m!r}: {exc}") from None
    scale = doc.get("controls_intensity_scale")
    scored, warns = doc.get("controls_scored"), doc.get("warnings")
    return Calibration(her2, gates or None, scale if isinstance(scale, dict) else None,
                       str(path), controls_scored=scored if isinstance(scored, dict) else None,
                       warnings=(*(map(str, warns) if isinstance(warns, list) else ()),
                                 *floor_notes))
