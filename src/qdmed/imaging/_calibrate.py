"""A whole calibration from control analyses, as ``qdmed image calibrate`` makes it: HER2
cut-offs from controls of known IHC score, positivity gates from controls negative for a
marker, and the controls' intensity scale, against which every slide scored with it is
checked (:mod:`qdmed.imaging._calibration_file`).

:func:`~qdmed.imaging.calibrate_her2` and
:func:`~qdmed.imaging.gates_from_negative_controls` take bare cell tables, which carry no
scale: a calibration made with them is applied to a slide imaged otherwise unwarned. Given
the controls' analyses (:class:`~qdmed.imaging.SlideResult` objects or their folders),
:func:`calibrate_controls` records the scale too.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from qdmed.errors import InputError
from qdmed.imaging._cells_table import read_cells_table

__all__ = ["calibrate_controls"]


def _control_table(name: str, value: Any):
    """(cells table, analysis summary or None) of one control: a SlideResult, an analysis
    folder, a cells.parquet path, or a table."""
    import pandas as pd

    from qdmed.imaging._analyze import SlideResult
    from qdmed.imaging._calibration_file import control_summary

    if isinstance(value, SlideResult):
        return value.cells(), value.summary
    if isinstance(value, pd.DataFrame):
        return value, None
    if not isinstance(value, str | Path):
        raise InputError(f"control {name}: a SlideResult, an analysis folder, a cells.parquet "
                         f"path or a pandas table is needed; got {type(value).__name__}")
    cells, path = read_cells_table(value, prefix=f"control {name}: ", whose="a control's",
                                   text=False)
    return cells, control_summary(path)


#: A gate this many times another control's level of the marker (at the gate's quantile)
#: is warned: its negative control is likely positive for the marker.
NEGATIVE_GATE_RATIO = 5.0


def _positive_negative_warnings(tables, negs, gates, quantile: float) -> list[str]:
    """A warning per gate whose negative control reads far above another control for that
    marker: the gate is more than :data:`NEGATIVE_GATE_RATIO` times that control's same
    quantile. A positive line named negative (a review: BT-474, ER-positive, as ER's
    negative control) gives a gate above most positive nuclei, and ER-rich tissue reads ER
    negative; a true negative control's level is the floor of the others' (a stained
    negative line sits at most a few times above a fluorescence-minus-one section)."""
    from qdmed.imaging._scoring import _column, _values

    out = []
    for marker, ctrl in negs.items():
        g = gates[marker]
        for name, t in tables.items():
            if name == ctrl:
                continue
            try:
                v = _values(t, _column(t, marker, g.compartment, "mean"), "omit")
            except (InputError, KeyError):  # that control lacks the marker's column
                continue
            if v.size < 10:
                continue
            level = float(np.quantile(v, quantile))
            if level > 0 and g.threshold > NEGATIVE_GATE_RATIO * level:
                out.append(f"the {marker} gate ({g.threshold:.4g}, the {100 * quantile:g}th "
                           f"percentile of {ctrl}) is {g.threshold / level:.0f}x that of "
                           f"{name} ({level:.4g}): is {ctrl} negative for {marker}? A gate "
                           f"from a positive control calls {marker}-rich tissue negative")
                break
    return out


def calibrate_controls(controls: Mapping[str, Any], *,
                       categories: Mapping[str, Any] | None = None,
                       negatives: Mapping[str, str] | None = None,
                       faint_quantile: float = 0.95, quantile: float = 0.99,
                       compartments: Mapping[str, str] | None = None,
                       faint_rule: str = "quantile"):
    """Calibrate on control cell lines: HER2 cut-offs, positivity gates, and the intensity
    scale the controls were imaged and analysed on.

    Parameters
    ----------
    controls : mapping name -> SlideResult, analysis folder, cells.parquet path or table
        The controls' analyses. A bare table (pandas) carries no scale: the calibration
        then records the other controls' (warned), or none.
    categories : mapping name -> '0' | '1+' | '2+' | '3+', optional
        HER2 score of controls not in the known table
        (:data:`~qdmed.imaging._scoring.KNOWN_HER2_CONTROLS`, HERmark Table 1).
    negatives : mapping marker -> control name, optional
        A control negative for the marker: its positivity gate is that control's
        ``quantile`` (99th percentile by default;
        :func:`~qdmed.imaging.gates_from_negative_controls`).
    faint_quantile, faint_rule
        See :func:`~qdmed.imaging.calibrate_her2`.
    quantile : float in (0.5, 1)
        The gates' quantile of their negative control.
    compartments : mapping marker -> compartment, optional
        The compartment gated for markers qdmed does not know (see
        :func:`~qdmed.imaging.gates_from_negative_controls`).

    Returns
    -------
    Calibration
        ``her2``, ``gates``, ``intensity_scale``, ``controls_scored`` (each HER2 control
        scored with the cut-offs), ``warnings``; pass it to
        :func:`~qdmed.imaging.analyze_slide` as ``her2_calibration=c.her2, gates=c.gates,
        calibration_scale=c.intensity_scale``, and :meth:`Calibration.save` writes the
        file ``qdmed image analyze --calibration`` reads.

    Raises
    ------
    InputError
        A control that cannot be read, a category or negative naming no given control, an
        unknown category, fewer than two HER2 controls of known category where HER2 cut-offs
        are asked for (categories given, or nothing else), or a control used by nothing.
    """
    from qdmed.imaging._analyze import AnalysisSettings
    from qdmed.imaging._calibration_file import (
        Calibration,
        controls_scale,
        nuclear_level,
        nuclear_level_spread_warnings,
    )
    from qdmed.imaging._her2_calibration import calibrate_her2, check_faint_rule
    from qdmed.imaging._her2_score import her2_controls_scored
    from qdmed.imaging._scoring import (
        KNOWN_HER2_CONTROLS,
        _category,
        _norm_name,
        gates_from_negative_controls,
    )

    check_faint_rule(faint_rule)  # before any control is read
    names = [str(n) for n in controls]
    cats, negs = {}, dict(negatives or {})
    for name, cat in (categories or {}).items():
        if name not in controls:
            raise InputError(f"category {name}={cat}: no control {name} was given "
                             f"(controls: {', '.join(names)})")
        try:  # a category that is none is said as such, before the controls are counted
            cats[name] = _category(cat)
        except ValueError as exc:
            raise InputError(f"category {name}={cat}: {exc}") from None
    for marker, name in negs.items():
        if name not in controls:
            raise InputError(f"negative {marker}={name}: no control {name} was given "
                             f"(controls: {', '.join(names)})")
    tables, summaries = {}, {}
    for name, value in controls.items():
        tables[name], summaries[name] = _control_table(name, value)
    scale, warnings = controls_scale(summaries)
    level = nuclear_level(tables, AnalysisSettings().nuclear_marker)
    warnings = [*warnings, *nuclear_level_spread_warnings(level)]
    if scale is not None and level is not None:  # checked on each slide's nuclei
        scale = {**scale, "nuclear_level": level}
    if scale is None:
        warnings = [*warnings, "no control came with its analysis (summary.json): the "
                    "calibration records no intensity scale, so a slide imaged or analysed "
                    "otherwise will not be warned; give the controls' analyses (their "
                    "folders), not bare cell tables"]
    known = {_norm_name(k): v for k, v in KNOWN_HER2_CONTROLS.items()}
    her2_ctrls = {n: t for n, t in tables.items() if n in cats or _norm_name(n) in known}
    if len(her2_ctrls) < 2 and (cats or not negs):  # HER2 asked for, or nothing else
        got = [f"{n} ({cats.get(n) or known[_norm_name(n)]})" for n in her2_ctrls]
        other = [n for n in tables if n not in her2_ctrls]
        raise InputError(
            "HER2 cut-offs need two or more controls of known HER2 category, a 0 or 1+ and a "
            "3+ (give their categories, or cell lines of the known table, HERmark Table 1: "
            f"{', '.join(f'{k} {v}' for k, v in KNOWN_HER2_CONTROLS.items())}); known here: "
            f"{', '.join(got) or 'none'}"
            + (f"; not in the table: {', '.join(other)} (give its category, or name it as "
               "a marker's negative control)" if other else ""))
    used = set(negs.values()) | (set(her2_ctrls) if len(her2_ctrls) >= 2 else set())
    unused = [n for n in tables if n not in used]
    if unused and (used or cats):
        raise InputError(f"control {', '.join(unused)}: used by nothing; give it a HER2 "
                         "category (0, 1+, 2+, 3+) or name it as a marker's negative control")
    her2 = gates = scored = None
    if len(her2_ctrls) >= 2:
        her2 = calibrate_her2(her2_ctrls, categories=cats or None,
                              faint_quantile=faint_quantile, faint_rule=faint_rule)
        scored = her2_controls_scored(her2, her2_ctrls)
        warnings = warnings + list(her2.warnings) + [
            f"control {n} ({v['category']}) scores {v['scored']} with these "
            "cut-offs: check its cells (membrane completeness, segmentation) or its known score"
            for n, v in scored.items() if v["scored"] != v["category"]]
    if negs:
        gates = gates_from_negative_controls(tables, negs, quantile=quantile,
                                             compartments=compartments)
        warnings = warnings + _positive_negative_warnings(tables, negs, gates, quantile)
    return Calibration(her2, gates, scale, "", controls_scored=scored,
                       warnings=tuple(warnings), controls=tables, negatives=negs)
