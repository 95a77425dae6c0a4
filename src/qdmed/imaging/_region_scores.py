"""Scores region by region: every core of a tissue microarray (one patient each) or every
named annotation of a slide, scored on its own by the slide's rules, in one table.

QD-IHC cohorts are mostly read on tissue microarrays: one section holds cores of hundreds of
patients, and each core gets its own HER2 category, marker percentages and receptor status
(e.g. the 240-patient TMAs of Yang XQ et al., Int J Nanomedicine 6, 2265 (2011), and Chen C
et al., Int J Nanomedicine 9, 1039-1048 (2014), doi:10.2147/IJN.S58270). A core is scored as a
slide is (:func:`qdmed.imaging.score_her2`, :func:`qdmed.imaging.score_markers`),
on the cells whose centroid lies in it; a core with fewer than ``min_cells`` scored cells
gets no scores (status ``"too few cells"``): a category from a handful of cells is noise (100 by
default, a qdmed choice: the guidelines set no number), and its HER2 category needs as many
cells with a measurable membrane.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from qdmed.errors import InputError
from qdmed.imaging._detector import WARN_PERCENT_CELLS

#: Scored cells a region needs to be scored (a qdmed choice, as an ER/PR status needs 100
#: nuclei in :mod:`qdmed.imaging._receptors`).
REGION_MIN_CELLS = 100

#: Columns of a region row before the per-marker ones.
REGION_COLUMNS = ("region", "status", "n_cells", "n_scored", "her2_category", "message")


def natural_key(name) -> tuple:
    """Sort key reading the digits in a name as numbers ("P2" before "P10"). The runs of
    decimal digits are every other part of the split (``str.isdigit`` is also true of
    "²", which ``int`` refuses)."""
    import re

    return tuple((0, int(t), "") if i % 2 else (1, 0, t)
                 for i, t in enumerate(re.split(r"(\d+)", str(name))) if t)


def check_count(value, name: str, why: str = "", least: int = 1,
                most: int | None = None) -> int:
    """``value`` checked as an integer >= ``least`` (and <= ``most`` if given; not a bool,
    a float or a string); ``name`` and ``why`` (e.g. what the count means) go into the
    error."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < least \
            or (most is not None and value > most):
        span = f">= {least}" if most is None else f"from {least} to {most}"
        raise InputError(f"{name} must be a whole number {span}{why}; got {value!r}")
    return int(value)


def check_min_cells(min_cells) -> int:
    """``min_cells`` checked: an integer >= 1."""
    return check_count(min_cells, "region_min_cells")


def receptor_fields(marker: str) -> tuple[str, ...]:
    """The table columns of a receptor status beside ``{marker}_percent_positive``."""
    return tuple(f"{marker}_{k}" for k in ("percent_positive_corrected",
                                           "percent_positive_ci95_low",
                                           "percent_positive_ci95_high", "status"))


def score_fields(her2: dict | None, markers: dict | None) -> dict[str, Any]:
    """The flat table fields of a HER2 score dict (:meth:`Her2Score.to_dict`) and a marker
    score dict (:func:`score_markers`): one row of cohort.csv or regions.csv."""
    row: dict[str, Any] = {}
    if her2:
        row["her2_category"] = her2["category"]
        row["her2_low"] = her2["her2_low"]
        row["her2_ultralow"] = her2["her2_ultralow"]
        row["total_her2_load"] = her2["total_her2_load"]
        row["her2_mean_membrane"] = her2["mean_membrane_intensity"]
    if markers:
        for m, v in markers["percent_positive"].items():
            row[f"{m}_percent_positive"] = v
        for m, st in (markers.get("receptor_status") or {}).items():
            # the status is decided on the corrected percentage (the gate's noise floor
            # removed), which the table must show beside the observed one, with its interval
            low, high = st.get("ci95_percent") or (None, None)
            row.update(zip(receptor_fields(m), (st.get("percent_positive_corrected"), low,
                                                high, st["label"]), strict=True))
    return row | subtype_field(her2, markers)


def subtype_of(her2: dict | None, markers: dict | None) -> dict | None:
    """The breast subtype (:func:`qdmed.imaging.breast_subtype`, as a dict) of a HER2 score
    dict and a marker score dict, when HER2 is scored and ER or PR has a status."""
    status = (markers or {}).get("receptor_status") or {}
    if not her2 or not status:
        return None
    from qdmed.imaging._subtype import breast_subtype

    return breast_subtype(her2["category"], status).to_dict()


def subtype_field(her2: dict | None, markers: dict | None) -> dict[str, Any]:
    """``{"subtype": label}`` for a table row (cohort.csv, regions.csv, cases.csv), or {}."""
    sub = subtype_of(her2, markers)
    return {} if sub is None else {"subtype": sub["label"]}


def receptor_notes(markers: dict | None, brief: bool = True) -> list[str]:
    """The receptor-status warnings of a marker score dict, each prefixed by its marker: in
    their short form (``notes``, for a table's message column; the full ``warnings`` of a
    dict without it), or in full (``brief=False``)."""
    status = (markers or {}).get("receptor_status") or {}
    return [f"{m}: {w}" for m, st in status.items()
            for w in (st.get("notes", st.get("warnings", [])) if brief
                      else st.get("warnings", []))]


def her2_measurable(cells, her2_calibration) -> int:
    """Cells with a HER2 value the calibration can grade (cells without a membrane have
    none)."""
    c = her2_calibration
    col = f"{c.marker}_{c.compartment}_{c.statistic}"
    if cells is None or col not in cells.columns:
        return 0
    return int(np.count_nonzero(np.isfinite(np.asarray(cells[col], dtype=np.float64))))


def score_cells(cells, her2_calibration=None, gates=None):
    """(HER2 score or None, marker score dict or None) of a cell table, as a slide is scored;
    no HER2 score when no cell has a gradable HER2 value."""
    her2 = markers = None
    if her2_calibration is not None and her2_measurable(cells, her2_calibration):
        from qdmed.imaging._her2_score import score_her2

        her2 = score_her2(cells, her2_calibration, nan_policy="omit")
    if gates:
        from qdmed.imaging._scoring import score_markers

        # the phenotypes' HER2 from the cells' categories when HER2 is scored
        markers = score_markers(cells, gates, her2_category=None if her2 is None else
                                her2.cells["category"].reindex(cells.index))
    return her2, markers


def her2_categories(her2) -> dict[int, str] | None:
    """cell_id -> HER2 category ('0'...'3+') of a slide's HER2 score's cells (None when
    there is no score or its cells carry no id)."""
    if her2 is None or "cell_id" not in her2.cells.columns:
        return None
    return dict(zip(her2.cells["cell_id"].astype(np.int64).tolist(),
                    her2.cells["category"].astype(str).tolist(), strict=True))


def cell_results(cells, scored_cells, her2=None, gates=None) -> dict[str, Any]:
    """Each cell's own results, as columns for ``cells`` (aligned on its index): the HER2
    category of the scored cells (``her2_category``: '0'...'3+'; missing for cells not
    scored or without a gradable membrane), each gated marker's positivity
    (``<marker>_positive``, nullable boolean: missing where not scored or not measured),
    and with ER and PR gated and HER2 gated or scored the breast phenotype (``phenotype``;
    HER2 from the cell's category when HER2 is scored, :func:`qdmed.imaging.phenotype`).
    QuPath gives each cell its class the same way; a review found the HER2 class in
    cells.geojson only, and the positivity nowhere per cell."""
    import pandas as pd

    out: dict[str, Any] = {}
    cat = her2_categories(her2)
    if cat is not None:
        out["her2_category"] = pd.Series(
            [cat.get(int(i)) for i in cells["cell_id"]], index=cells.index, dtype="string")
    if gates:
        from qdmed.imaging._scoring import (
            _column,
            _gate,
            phenotype,
            phenotype_markers_given,
            score_positivity,
        )

        for m, g in gates.items():
            g = _gate(m, g)
            col = pd.Series(pd.NA, index=cells.index, dtype="boolean")
            if len(scored_cells):
                pos = np.asarray(score_positivity(scored_cells, marker=m,
                                                  compartment=g.compartment,
                                                  threshold=g.threshold,
                                                  statistic=g.statistic), dtype=bool)
                measured = np.isfinite(np.asarray(
                    scored_cells[_column(scored_cells, m, g.compartment, g.statistic)],
                    dtype=np.float64))
                col.loc[scored_cells.index[measured]] = pos[measured]
            out[f"{m}_positive"] = col
        if phenotype_markers_given(gates, cat):
            ph = pd.Series(pd.NA, index=cells.index, dtype="string")
            if len(scored_cells):
                her2_cat = None if cat is None else [cat.get(int(i))
                                                     for i in scored_cells["cell_id"]]
                ph.loc[scored_cells.index] = phenotype(
                    scored_cells, "breast", gates=gates,
                    her2_category=her2_cat).astype(str).to_numpy()
            out["phenotype"] = ph
    return out


def _scored_row(row: dict[str, Any], cells, what: str, min_cells: int, her2_calibration,
                gates) -> dict[str, Any]:
    """``row`` completed with the scores of ``cells`` (None: no cells), or with the status
    saying why there are none (fewer than ``min_cells``)."""
    n = 0 if cells is None else len(cells)
    if n < min_cells:
        row["status"] = "no cells" if n == 0 else "too few cells"
        row["message"] = ("no scored cells" if n == 0 else
                          f"{n} scored cells, fewer than the {min_cells} a {what} needs "
                          "(region_min_cells, --region-min-cells): not scored")
        return row
    notes = []
    if her2_calibration is not None:
        k = her2_measurable(cells, her2_calibration)
        if k < min_cells:  # HER2 left out: too few cells with a membrane to grade
            notes.append(f"HER2 not scored: {k} of {n} cells have a gradable membrane, fewer "
                         f"than the {min_cells} a {what} needs")
            her2_calibration = None
    her2, markers = score_cells(cells, her2_calibration, gates)
    row.update(score_fields(None if her2 is None else her2.to_dict(), markers))
    row.update(dab_class_fields(cells))
    row["message"] = "; ".join(notes + receptor_notes(markers))
    return row


#: DAB classes of brightfield cells (``dab_class``) and their table fields.
DAB_CLASS_FIELDS = {"0": "dab_percent_0", "1+": "dab_percent_1plus", "2+": "dab_percent_2plus",
                    "3+": "dab_percent_3plus"}


def dab_class_fields(cells) -> dict[str, Any]:
    """The H-score and the percent of cells per DAB class (0, 1+, 2+, 3+ by the mean OD of
    the scored compartment, cells without one left out) of brightfield cells carrying
    ``dab_class``, as :func:`qdmed.imaging.score_dab` gives them for one image: H-score =
    1 x %1+ + 2 x %2+ + 3 x %3+ (0-300; McCarty et al., Arch Pathol Lab Med 1985). A
    review found regions and cases without them, as QuPath's TMA workflow gives them per
    core. {} for cells without ``dab_class`` (QD slides) or none measured."""
    if cells is None or "dab_class" not in cells.columns:
        return {}
    c = cells["dab_class"].astype(str)
    c = c[c != "unmeasured"]
    if not len(c):
        return {}
    pct = {k: 100.0 * float((c == k).mean()) for k in DAB_CLASS_FIELDS}
    return {"h_score": pct["1+"] + 2 * pct["2+"] + 3 * pct["3+"],
            **{f: pct[k] for k, f in DAB_CLASS_FIELDS.items()}}


def score_regions(cells, scored_cells, names, missing=(), *, order=(), centers=(),
                  areas=None, pixel_size_um: float | None = None, her2_calibration=None,
                  gates=None, min_cells: int = REGION_MIN_CELLS) -> list[dict[str, Any]]:
    """One row per region: its cells, scored cells and scores.

    Parameters
    ----------
    cells : DataFrame
        Every cell of the slide, with a ``region`` column ("" outside every region).
    scored_cells : DataFrame
        The cells the slide's scores use (in a region, less any excluded by quality flags).
    names : sequence of str
        The regions, in table order (:attr:`Regions.names`).
    missing : sequence of str
        Regions marked missing (TMA cores lost from the section): rows with status
        ``"missing"`` and no counts (unless the name is also among ``names``).
    order : sequence of str
        The rows' order (:attr:`Regions.order`: file order, a TMA's grid order); default
        ``names`` then ``missing``.
    centers, areas, pixel_size_um
        :attr:`Regions.centers`, :attr:`Regions.areas` and the pixel size: each row gets
        ``center_x_um``, ``center_y_um`` (the region's centre, as the cells'
        ``centroid_x_um``), ``area_mm2`` (the annotation's, not only its tissue) and
        ``cells_per_mm2`` (a core half lost or torn shows as a low density).
    her2_calibration, gates
        As for the slide (:func:`qdmed.imaging.analyze_slide`).
    min_cells : int
        Scored cells a region needs for scores (:data:`REGION_MIN_CELLS`).

    Rows of present regions also get, from their cells (all of them, flagged or not),
    ``percent_cells_out_of_focus`` and ``percent_cells_saturated`` where the cells carry
    those flags: a core out of focus or at the detector ceiling is told apart from the rest
    of the slide.
    """
    min_cells = check_min_cells(min_cells)
    n_all = cells["region"].value_counts() if len(cells) else {}
    groups = dict(tuple(scored_cells.groupby("region", sort=False))) if len(scored_cells) \
        else {}
    rows = []
    flags = {}
    if len(cells) and "out_of_focus" in cells:
        flags["percent_cells_out_of_focus"] = 100.0 * cells["out_of_focus"].astype(
            bool).groupby(cells["region"]).mean()
    if len(cells) and "saturated_fraction" in cells:
        flags["percent_cells_saturated"] = 100.0 * (cells["saturated_fraction"] > 0).groupby(
            cells["region"]).mean()
    mm2 = (pixel_size_um or 0.0) ** 2 / 1e6
    for name in names:
        sub = groups.get(name)
        n_scored = 0 if sub is None else len(sub)
        row: dict[str, Any] = {"region": name, "status": "ok",
                               "n_cells": int(n_all.get(name, 0)), "n_scored": n_scored,
                               "her2_category": None, "message": ""}
        row = _scored_row(row, sub, "region", min_cells, her2_calibration, gates)
        if areas and mm2 and areas.get(name):
            row["area_mm2"] = areas[name] * mm2
            row["cells_per_mm2"] = row["n_cells"] / row["area_mm2"]
        for key, per in flags.items():  # NaN for a region without cells
            row[key] = float(per.get(name, np.nan))
        notes = [row["message"]]
        if row.get("percent_cells_out_of_focus", 0.0) >= 50.0:
            notes.append(f"{row['percent_cells_out_of_focus']:.0f} % of its cells in "
                         "out-of-focus tiles")
        if row.get("percent_cells_saturated", 0.0) >= WARN_PERCENT_CELLS:
            notes.append(f"{row['percent_cells_saturated']:.1f} % of its cells hold pixels at "
                         "the detector ceiling")
        row["message"] = "; ".join(n for n in notes if n)
        rows.append(row)
    for name in dict.fromkeys(missing):
        if name not in set(names):
            rows.append({"region": name, "status": "missing", "n_cells": 0, "n_scored": 0,
                         "her2_category": None,
                         "message": "marked missing in the regions file (isMissing; "
                                    "Present false in a .qptma)"})
    if pixel_size_um:
        where = {name: (x, y) for name, x, y in centers}
        for r in rows:  # QuPath coordinates are pixel-index + 0.5
            x, y = where.get(r["region"], (np.nan, np.nan))
            r["center_x_um"] = (x - 0.5) * pixel_size_um
            r["center_y_um"] = (y - 0.5) * pixel_size_um
    place = {name: i for i, name in enumerate(order)}
    return sorted(rows, key=lambda r: place.get(r["region"], len(place)))


def region_table(rows: list[dict[str, Any]], her2: bool = True, scored: dict | None = None):
    """The rows as a DataFrame, :data:`REGION_COLUMNS` first; without ``her2_category``
    where no HER2 is scored (``her2`` False: an ER, PR or Ki-67 run, whose empty HER2
    column misled); ``scored`` as :func:`_ordered_table`'s."""
    return _ordered_table(rows, REGION_COLUMNS, her2, scored)


def _tally(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Rows counted per status, and the scored ones per HER2 category."""
    status: dict[str, int] = {}
    cats: dict[str, int] = {}
    for r in rows:
        status[r["status"]] = status.get(r["status"], 0) + 1
        if r["status"] == "ok" and r.get("her2_category") is not None:
            cats[r["her2_category"]] = cats.get(r["her2_category"], 0) + 1
    return {"by_status": status, "her2_categories": dict(sorted(cats.items()))}


def _ordered_table(rows: list[dict[str, Any]], first: tuple[str, ...], her2: bool = True,
                   scored: dict | None = None):
    """The rows as a DataFrame, the ``first`` columns first, then those of the row with the
    most fields in its order (a review found the order following the first row: a missing
    core first gave another order than a scored one); ``her2`` False leaves out the
    ``her2_category`` column. ``scored``: a scored row's fields, whose columns the table
    holds (empty) when no row was scored, so that its columns do not depend on the data
    (a statistician's scripts failed on a run whose every core had too few cells)."""
    import pandas as pd

    table = pd.DataFrame(rows)
    if not her2:
        first = tuple(c for c in first if c != "her2_category")
        table = table.drop(columns="her2_category", errors="ignore")
    if scored and rows:
        table = table.reindex(columns=list(dict.fromkeys([*table.columns, *scored])))
        if not her2:
            table = table.drop(columns="her2_category", errors="ignore")
    template = [c for c in (max([*rows, *([scored] if scored and rows else [])], key=len)
                            if rows else []) if c in table.columns]
    rest = [c for c in template if c not in first]
    rest += [c for c in table.columns if c not in first and c not in rest]
    return table.reindex(columns=list(first) + rest)


def regions_summary(rows: list[dict[str, Any]], min_cells: int) -> dict[str, Any]:
    """The summary's ``regions_scored`` block: the rows, counts per status and per HER2
    category of the scored regions."""
    return {"n_regions": len(rows), "min_cells": min_cells, **_tally(rows),
            "table": "regions.csv", "regions": rows}


#: Columns of a case row before the per-marker ones.
CASE_COLUMNS = ("case", "status", "n_cores", "cores", "n_scored", "her2_category", "message")


def map_slide(name: str) -> str:
    """A slide as the TMA map names it: its file name's stem, whatever folder or trailing
    slash is given ("tmas/block1.ome.zarr/" -> "block1")."""
    from qdmed.imaging._cohort import slide_stem

    return slide_stem(Path(name.strip().rstrip("/\\")).name)


def _map_table(path, what: str, key: str, columns: str, layout: str):
    """The rows of a map (a TMA map, a case map) as strings: columns `key` and ``case``
    required, a header without rows refused."""
    from qdmed.imaging._csvtable import read_csv_strings

    df = read_csv_strings(path, f"{what} {columns}", (key, "case"))
    if not len(df):
        raise InputError(f"{what} {path} has a header but no rows (one row per {key}: "
                         f"{layout})")
    return df


def read_tma_map(path) -> dict[tuple[str | None, str], str]:
    """A TMA map: which case (patient) each core belongs to.

    A CSV table with columns ``core`` (the core's name, e.g. "A-1") and ``case``, and
    optionally ``slide`` (the TMA block's slide, by name, stem or path, for a cohort of
    several blocks; rows without it apply to every slide). Returns ``{(slide stem or None,
    core): case}``.

    Raises
    ------
    InputError
        Unreadable file, a missing column (the columns present named), no rows, an empty
        core or case, or a core given two cases (the line named).
    FileFormatError
        Not a CSV table (:func:`qdmed.imaging._csvtable.read_csv_strings`).
    """
    df = _map_table(path, "TMA map", "core", "(columns core, case, optionally slide)",
                    "core,case[,slide]")
    out: dict[tuple[str | None, str], str] = {}
    slides = df["slide"] if "slide" in df.columns else [""] * len(df)
    for line, core, case, slide in zip(df.attrs["lines"], df["core"], df["case"], slides,
                                       strict=True):
        core, case, slide = core.strip(), case.strip(), slide.strip()
        key = (map_slide(slide) if slide else None, core)
        if not core or not case:
            raise InputError(f"TMA map {path}, line {line}: empty core or case")
        if key in out and out[key] != case:
            raise InputError(f"TMA map {path}, line {line}: core {core!r}"
                             + (f" of slide {slide!r}" if slide else "")
                             + f" is given two cases, {out[key]!r} and {case!r}")
        out[key] = case
    return out


def read_case_map(path) -> dict[str, str]:
    """A case map: which case (patient) each slide or field image of a cohort belongs to,
    for cases imaged as several fields or sections (e.g. the fields of view of a Vectra or
    Polaris acquisition, one component image each).

    A CSV table with columns ``slide`` (the image, by name, stem or path) and ``case``.
    Returns ``{slide stem: case}``.

    Raises
    ------
    InputError
        Unreadable file, a missing column (the columns present named), no rows, an empty
        slide or case, or a slide given two cases (the line named).
    FileFormatError
        Not a CSV table.
    """
    df = _map_table(path, "case map", "slide", "(columns slide, case)", "slide,case")
    return case_map_pairs(zip(df["slide"], df["case"], strict=True), f"case map {path}",
                          lines=df.attrs["lines"])


def case_map_pairs(pairs, source: str, lines=None) -> dict[str, str]:
    """``{slide stem: case}`` from (slide, case) pairs, each a non-empty string, no slide
    given two cases (InputError naming the pair's line in ``lines``, or the entry)."""
    out: dict[str, str] = {}
    for i, (slide, case) in enumerate(pairs):
        where = f"line {lines[i]}" if lines is not None else f"entry {slide!r}"
        if not isinstance(slide, str) or not isinstance(case, str) or not slide.strip() \
                or not case.strip():
            raise InputError(f"{source}, {where}: slide and case must be non-empty text; got "
                             f"{slide!r}, {case!r}")
        slide, case = slide.strip(), case.strip()
        key = map_slide(slide)
        if key in out and out[key] != case:
            raise InputError(f"{source}, {where}: slide {slide!r} is given two cases, "
                             f"{out[key]!r} and {case!r}")
        out[key] = case
    return out


def case_column(regions, slide_name: str, tma_map: dict) -> list:
    """The case of each region name (None where the map has none): the slide's own rows of
    the map first, then those without a slide."""
    stem = map_slide(slide_name)
    return [tma_map.get((stem, r), tma_map.get((None, r))) for r in regions]


def expected_cores(region_rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    """``{case: [core, ...]}`` of region rows carrying a ``case`` (present or missing
    cores); cores named ``slide:core`` when the rows carry a slide (a cohort's)."""
    out: dict[str, list[str]] = {}
    for r in region_rows:
        if r.get("case") is None:
            continue
        out.setdefault(r["case"], []).append(_core_key(r))
    return out


def cores_not_in_regions(tma_map: dict, present: dict[str, set[str]],
                         names: dict[str, str] | None = None, failed: tuple = ()
                         ) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Cores of the map that no regions file holds (e.g. a row lost from the section and
    left out of the grid's labels), so that their cases still get a row.

    ``present`` maps each analysed slide's stem to its region names (present or missing).
    A map row naming a slide counts against that slide (slides not analysed are left to
    the caller); a row without one, against every slide whose own rows do not map that
    core. Returns ``({case: [core, ...]}, {case: [note]})``, cores named ``slide:core``
    when ``names`` maps stems to slide names (a cohort's, as :func:`expected_cores` names
    them); a slide-less row's core, held by no slide, keeps its bare name, and its note
    names the ``failed`` slides it may be on."""
    cores: dict[str, list[str]] = {}
    for (stem, core), case in tma_map.items():
        if stem is None:  # held by a slide whose own rows do not map that core elsewhere
            if any(core in held and (s, core) not in tma_map for s, held in present.items()):
                continue
            key = core
        else:
            if stem not in present or core in present[stem]:
                continue
            key = f"{names[stem]}:{core}" if names else core
        cores.setdefault(case, []).append(key)
    notes: dict[str, list[str]] = {}
    for case, ks in cores.items():
        bare = [k for k in ks if (None, k) in tma_map]
        placed = [k for k in ks if k not in bare]
        if placed or not failed:
            notes[case] = [f"core {', '.join(placed or ks)} not in the regions file"]
        if bare and failed:
            notes.setdefault(case, []).append(
                f"core {', '.join(bare)} in no regions file of the slides analysed (it may "
                f"be on failed slide {', '.join(failed)})")
    return cores, notes


#: How a case's cores make its scores (:func:`score_cases`).
CASE_RULES = ("pooled", "highest")

#: Region-row fields that are HER2 results, taken together from one core by the "highest"
#: rule (:func:`score_fields`).
_HER2_FIELDS = ("her2_category", "her2_low", "her2_ultralow", "total_her2_load",
                "her2_mean_membrane")


def check_case_rule(rule, tma_map=True) -> str:
    """``rule`` checked: one of :data:`CASE_RULES`, and other than the default only with a
    TMA map (``tma_map``) to make cases."""
    if rule not in CASE_RULES:
        raise InputError(f"case_rule (--case-rule) must be one of {', '.join(CASE_RULES)}; got "
                         f"{rule!r}")
    if rule != "pooled" and tma_map is None:
        raise InputError(f"case_rule {rule!r} needs a TMA map (--tma-map) to make cases")
    return rule


def load_tma_map(tma_map, case_rule: str = "pooled") -> tuple[dict | None, str | None]:
    """A TMA map as the analyses take it (None, a CSV path for :func:`read_tma_map`, or its
    mapping), checked not empty and with ``case_rule`` (:func:`check_case_rule`); returns
    the mapping and its source path (None for a mapping given as one)."""
    source = None if tma_map is None or isinstance(tma_map, dict) else str(tma_map)
    if source is not None:
        tma_map = read_tma_map(tma_map)
    if tma_map is not None and not tma_map:
        raise InputError("tma_map is empty: it needs one row per core (core,case[,slide])")
    check_case_rule(case_rule, tma_map)
    return tma_map, source


def _core_key(r: dict[str, Any]) -> str:
    """A region row's core as cases name it: ``slide:core`` in a cohort."""
    return f"{r['slide']}:{r['region']}" if r.get("slide") else r["region"]


def _number(v) -> float:
    """``v`` as a float for ranking; -inf when absent or not finite."""
    try:
        v = float(v)
    except (TypeError, ValueError):
        return -np.inf
    return v if np.isfinite(v) else -np.inf


def _highest_core_fields(ok: list[dict[str, Any]]) -> dict[str, Any]:
    """A case's fields from its scored cores (region rows with status "ok"): HER2 from the
    core of the highest category (ties: HER2-ultralow over null within 0, then the higher
    mean membrane signal), named in ``her2_core``; each marker's percent positive and
    status from the core with the most positive cells among those with a status (a core
    with too few cells for one, "insufficient cells", only when no core has one)."""
    from qdmed.imaging._scoring import HER2_CATEGORIES

    row: dict[str, Any] = {}
    her2 = [r for r in ok if r.get("her2_category") is not None]
    if her2:
        best = max(her2, key=lambda r: (HER2_CATEGORIES.index(r["her2_category"]),
                                        r.get("her2_ultralow") is True,
                                        _number(r.get("her2_mean_membrane"))))
        row.update({k: best[k] for k in _HER2_FIELDS if k in best})
        row["her2_core"] = _core_key(best)
    markers = dict.fromkeys(k[:-len("_percent_positive")] for r in ok for k in r
                            if k.endswith("_percent_positive"))
    for m in markers:
        have = [r for r in ok if _number(r.get(f"{m}_percent_positive")) > -np.inf]
        if not have:
            continue
        best = max(have, key=lambda r: (
            not str(r.get(f"{m}_status", "")).startswith("insufficient"),
            _number(r[f"{m}_percent_positive"])))
        # the status with the percentage it was read from and its interval (a review found
        # the corrected one left out, and the case's subtype flagged by ER's 10 % cut-off)
        row.update({k: best[k] for k in (f"{m}_percent_positive", *receptor_fields(m))
                    if k in best})
        row[f"{m}_core"] = _core_key(best)  # as her2_core: the case's n_scored is all its
        # cores' cells, its scores each one core's (a walk-through read them as pooled)
    dab = [r for r in ok if _number(r.get("h_score")) > -np.inf]
    if dab:  # brightfield: the H-score and its classes from the core of the highest
        best = max(dab, key=lambda r: _number(r["h_score"]))
        row.update({k: best[k] for k in ("h_score", *DAB_CLASS_FIELDS.values()) if k in best})
        row["h_score_core"] = _core_key(best)
    # the case's subtype from its own HER2 and receptor statuses (cores may differ)
    status = {m: {"status": str(row[f"{m}_status"]).removesuffix(" (borderline)"),
                  "borderline": str(row[f"{m}_status"]).endswith(" (borderline)"),
                  "ci95_percent": (row.get(f"{m}_percent_positive_ci95_low"),
                                   row.get(f"{m}_percent_positive_ci95_high"))}
              for m in ("ER", "PR") if row.get(f"{m}_status") is not None}
    return row | subtype_field({"category": row["her2_category"]}
                               if row.get("her2_category") is not None else None,
                               {"receptor_status": status})


def score_cases(scored_cells, expected: dict[str, list[str]] | None = None, *,
                her2_calibration=None, gates=None, min_cells: int = REGION_MIN_CELLS,
                notes: dict[str, list[str]] | None = None, rule: str = "pooled",
                region_rows: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One row per case (patient) of a TMA, from its replicate cores.

    Two rules collapse cores to a case, the two that Allott EH et al., Cancer Epidemiol
    Biomarkers Prev 25, 470-478 (2016), doi:10.1158/1055-9965.EPI-15-0874, compared on
    1,920 TMA cases (1-6 cores each) against the clinical record:

    - ``"pooled"``: the scored cells of all its cores (column ``case``; on one slide or
      several, column ``slide``) pooled and scored as one slide, so each core weighs by its
      tumour cells (their "weighted" method; HER2 kappa 0.76, ER 0.83, PR 0.76);
    - ``"highest"``: each core scored on its own (``region_rows``, :func:`score_regions`,
      cores with fewer than ``min_cells`` scored cells left out), the case taking the
      HER2 result of its highest-category core (named in ``her2_core``) and, per marker,
      the percent positive and status of its most positive core: their "any positive"
      method (a case is positive if any core is; HER2 kappa 0.73, ER 0.86, PR 0.74),
      generalised to the four HER2 categories. ``n_cores_scored`` counts the cores that
      had enough cells.

    With ``region_rows``, each case also gets ``her2_core_categories`` (its scored cores'
    own categories, "A-1:3+;B-1:0") and ``her2_cores_discordant`` (they differ: a
    heterogeneous tumour, or a core that missed it; empty for a case of one scored core),
    whatever the rule.

    ``expected`` (:func:`expected_cores`) lists every case's mapped cores, so that a case
    with nothing to score (its cores lost, or every cell excluded) still gets a row, with
    status "no cells"; without it, cases come from the cells. ``notes`` adds messages per
    case (e.g. a slide holding some of its cores failed). Cells without a case are left
    out."""
    min_cells = check_min_cells(min_cells)
    check_case_rule(rule)
    if rule == "highest" and region_rows is None:
        raise InputError("case rule 'highest' needs the cores' own scores (region_rows)")
    cells = scored_cells[scored_cells["case"].notna()] if len(scored_cells) else scored_cells
    groups = dict(tuple(cells.groupby("case", sort=True))) if len(cells) else {}
    by_case: dict[str, list[dict[str, Any]]] = {}
    for r in region_rows or ():
        if r.get("case") is not None:
            by_case.setdefault(r["case"], []).append(r)
    expected = dict(expected or {})
    rows = []
    for case in sorted(set(expected) | set(groups), key=natural_key):
        sub = groups.get(case)
        if case in expected:
            cores = sorted(set(expected[case]))
        else:
            names = sub["region"].astype(str)
            if "slide" in sub:
                names = sub["slide"].astype(str) + ":" + names
            cores = sorted(set(names))
        row: dict[str, Any] = {"case": case, "status": "ok", "n_cores": len(cores),
                               "cores": ";".join(cores),
                               "n_scored": 0 if sub is None else int(len(sub)),
                               "her2_category": None, "message": ""}
        if rule == "pooled":
            row = _scored_row(row, sub, "case", min_cells, her2_calibration, gates)
        else:
            ok = [r for r in by_case.get(case, []) if r["status"] == "ok"]
            row["n_cores_scored"] = len(ok)
            if ok:
                row.update(_highest_core_fields(ok))
                row["message"] = "; ".join(f"{_core_key(r)}: {r['message']}" for r in ok
                                           if r.get("message"))
            else:
                row["status"] = "no cells" if row["n_scored"] == 0 else "too few cells"
                row["message"] = ("no scored cells" if row["n_scored"] == 0 else
                                  f"no core has the {min_cells} scored cells a core needs "
                                  "(region_min_cells, --region-min-cells): not scored")
        scored = [r for r in by_case.get(case, []) if r["status"] == "ok"
                  and r.get("her2_category") is not None]
        if scored:  # the cores' own categories, and whether they disagree
            row["her2_core_categories"] = ";".join(f"{_core_key(r)}:{r['her2_category']}"
                                                   for r in scored)
            row["her2_cores_discordant"] = (len({r["her2_category"] for r in scored}) > 1
                                            if len(scored) > 1 else None)
        lost = [_core_key(r) for r in by_case.get(case, []) if r["status"] == "missing"]
        n_missing = len(lost)
        if region_rows is not None:
            # lost from the section, and mapped cores no regions file holds (the notes say
            # which and why: not in the regions file, or on a failed slide)
            held = {_core_key(r) for r in by_case.get(case, [])}
            n_missing += sum(c not in held for c in cores)
            row["n_cores_missing"] = n_missing
        extra = (notes or {}).get(case, [])
        if n_missing:  # a case with cores missing is scored on the rest
            extra = [f"{n_missing} of {len(cores)} cores missing" + (
                f" ({', '.join(lost)} lost from the section)" if lost else ""), *extra]
        row["message"] = "; ".join(m for m in (row["message"], *extra) if m)
        rows.append(row)
    return rows


def case_table(rows: list[dict[str, Any]], her2: bool = True, scored: dict | None = None):
    """The case rows as a DataFrame, :data:`CASE_COLUMNS` first (``n_cores_missing``, for
    TMA cases, beside ``n_cores``); ``her2`` and ``scored`` as :func:`region_table`'s."""
    first = CASE_COLUMNS
    if any("n_cores_missing" in r for r in rows):
        first = (*CASE_COLUMNS[:3], "n_cores_missing", *CASE_COLUMNS[3:])
    return _ordered_table(rows, first, her2, scored)


def cases_summary(rows: list[dict[str, Any]], warnings=(), rule: str = "pooled"
                  ) -> dict[str, Any]:
    """The summary's ``cases_scored`` block: the case rows, their counts per status and
    per HER2 category, the rule that collapsed cores to cases (:func:`score_cases`), and
    ``warnings`` (e.g. no core of the slide in the map)."""
    return {"n_cases": len(rows), "rule": rule, **_tally(rows), "table": "cases.csv",
            "warnings": list(warnings), "cases": rows}


def overlap_warnings(reg, cells) -> list[str]:
    """The warning where regions of different names overlap (:meth:`Regions.overlaps_cells`):
    their shared cells are scored in the first one in the file only."""
    pairs = reg.overlaps_cells(cells) if reg is not None and len(cells) else {}
    if not pairs:
        return []
    said = "; ".join(f"{n} cell(s) of {b!r} lie in {a!r}, earlier in the file"
                     for (a, b), n in list(pairs.items())[:3])
    return [f"regions overlap: {said}" + (f" (and {len(pairs) - 3} more pairs)"
                                          if len(pairs) > 3 else "")
            + ". A cell is scored in one region, the first in the file that holds it: draw "
            "regions apart, or score overlapping ones in separate runs"]


def assign_regions(cells, reg, slide_name: str, *, tumour=None, per_region: bool = True,
                   tma_map: dict | None = None) -> None:
    """Columns of a cell table (in place) from its regions: ``in_region`` (the cells the
    scores use: in a region, and in ``tumour`` when given, which adds ``in_tumour``),
    ``region`` (its region's name, "" outside; with ``per_region``) and ``case`` (its
    core's case in ``tma_map``, :func:`case_column`)."""
    where = reg.region_index_cells(cells) if len(cells) else np.array([], np.int64)
    cells["in_region"] = where >= 0
    if tumour is not None:
        cells["in_tumour"] = tumour.contains_cells(cells) if len(cells) else np.zeros(0, bool)
        cells["in_region"] &= cells["in_tumour"]
    if per_region:
        cells["region"] = np.array(("",) + reg.names, dtype=object)[where + 1]
    if tma_map is not None:
        cases = np.array([None, *case_column(reg.names, slide_name, tma_map)], dtype=object)
        cells["case"] = cases[where + 1]


def _largest_line(names) -> int | None:
    """The most regions in one row or one column of grid names (``B-3``), else None."""
    from collections import Counter

    parts = [str(n).rsplit("-", 1) for n in names]
    if not parts or any(len(q) != 2 for q in parts):
        return None
    return max(max(Counter(q[0] for q in parts).values()),
               max(Counter(q[1] for q in parts).values()))


def score_slide_regions(cells, scored_cells, reg, slide_name: str, out, *, tumour=None,
                        tma_map: dict | None = None, case_rule: str = "pooled",
                        her2_calibration=None, gates=None, pixel_size_um=None,
                        min_cells: int = REGION_MIN_CELLS,
                        tissue_area_mm2: dict[str, float] | None = None,
                        shape_yx: tuple[int, int] | None = None
                        ) -> tuple[dict, dict | None]:
    """A slide's regions scored one by one (:func:`score_regions`, ``regions.csv`` in
    ``out``) and, with a TMA map, its cases (:func:`score_cases`, ``cases.csv``): the
    summary's ``regions_scored`` and ``cases_scored`` blocks (the latter None without a
    map). ``cells`` carry :func:`assign_regions`' columns. ``tissue_area_mm2``: each
    region's area of tissue, glass left out (brightfield, from
    :func:`~qdmed.imaging._dab_regions.analyze_dab_regions`), which adds
    ``tissue_area_mm2`` and ``cells_per_tissue_mm2`` to its row. ``shape_yx``: the slide's
    (height, width) px, so that a region wholly outside it says so in its row (not a bare
    "no cells")."""
    from qdmed.report import atomic_write_text

    out = Path(out)
    rows = score_regions(cells, scored_cells, reg.names, reg.missing, order=reg.order,
                         centers=reg.centers, areas=reg.areas, pixel_size_um=pixel_size_um,
                         her2_calibration=her2_calibration, gates=gates, min_cells=min_cells)
    if tissue_area_mm2 is not None:
        for r in rows:
            a = tissue_area_mm2.get(r["region"])
            r["tissue_area_mm2"] = a
            r["cells_per_tissue_mm2"] = r["n_cells"] / a if a else None
            if a and not r["n_cells"] and r["status"] != "missing":  # said, not left bare
                r["message"] = "; ".join(m for m in (
                    f"no nuclei found in its {a:.3g} mm^2 of tissue (pale, without "
                    "haematoxylin, or out of focus?)", r["message"]) if m)
    if shape_yx is not None:
        off = set(reg.outside(shape_yx))
        for r in rows:
            if r["region"] in off and r["status"] != "missing":
                r["message"] = "; ".join(m for m in (
                    f"wholly outside the slide's {shape_yx[1]} x {shape_yx[0]} px",
                    r["message"]) if m)
    if tumour is not None:  # say why a region with cells has none to score
        in_t = cells.groupby("region")["in_tumour"].sum() if len(cells) else {}
        for r in rows:
            if r["status"] != "missing" and r["n_cells"] and not in_t.get(r["region"], 0):
                r["message"] = "; ".join(m for m in ("none of its cells in the tumour "
                                                     "annotations", r["message"]) if m)
    by_case = None
    if tma_map is not None:
        names = [r["region"] for r in rows]
        for r, case in zip(rows, case_column(names, slide_name, tma_map), strict=True):
            r["case"] = case
            if case is None and r["status"] != "missing":
                r["message"] = "; ".join(m for m in (r["message"], "no case in the TMA map")
                                         if m)
        expected = expected_cores(rows)
        absent, notes = cores_not_in_regions(
            tma_map, {map_slide(slide_name): {r["region"] for r in rows}})
        for case, cores in absent.items():
            expected.setdefault(case, []).extend(cores)
        case_rows = score_cases(scored_cells, expected, her2_calibration=her2_calibration,
                                gates=gates, min_cells=min_cells, rule=case_rule,
                                region_rows=rows, notes=notes)
        atomic_write_text(out / "cases.csv", case_table(
            case_rows, her2_calibration is not None,
            _case_fields(_scored_fields(case_rows, scored_cells, her2_calibration, gates),
                         case_rule, her2_calibration is not None)).to_csv(index=False))
        unmapped = [r["region"] for r in rows if r["case"] is None]
        warn = [] if not unmapped else [
            f"{len(unmapped)} of the {len(rows)} cores have no case in the TMA map (e.g. "
            f"{', '.join(unmapped[:3])}; map rows for this slide name "
            f"{map_slide(slide_name)!r} or no slide)"]
        lost = sorted(c for cs in absent.values() for c in cs)
        if lost:
            warn.append(f"{len(lost)} core(s) of the TMA map not in the regions file "
                        f"({', '.join(lost[:5])}): their cases read \"no cells\" unless "
                        "other cores hold them")
        bare = [c for c in lost if (None, c) in tma_map]
        line = _largest_line([r["region"] for r in rows])
        # more than a lost row or column could hold: another block's cores
        if len(bare) > (line if line is not None else len(rows) / 2):
            warn.append(f"the TMA map names {len(bare)} cores, without a slide, that this "
                        f"slide's {len(rows)} regions lack: if the map covers several TMA "
                        "blocks, give its rows their slide (core,case,slide) or analyse the "
                        "blocks together (qdmed image cohort), which finds each core on its "
                        "own block")
        by_case = cases_summary(case_rows, rule=case_rule, warnings=warn)
    atomic_write_text(out / "regions.csv", region_table(
        rows, her2_calibration is not None,
        _scored_fields(rows, scored_cells, her2_calibration, gates)).to_csv(index=False))
    return regions_summary(rows, min_cells), by_case


def _case_fields(scored: dict | None, rule: str, her2: bool) -> dict | None:
    """A scored case row's fields (``scored``, a scored row's) with those a case adds from
    its cores (:func:`score_cases`), for :func:`case_table`'s empty columns."""
    if scored is None:
        return None
    extra = {"her2_core_categories": None, "her2_cores_discordant": None} if her2 else {}
    if rule == "highest":
        extra |= {"n_cores_scored": None, **({"her2_core": None} if her2 else {}),
                  **{f"{k[:-len('_percent_positive')]}_core": None for k in scored
                     if k.endswith("_percent_positive")}}
    return scored | extra


def _scored_fields(rows, scored_cells, her2_calibration, gates) -> dict | None:
    """A scored row's fields (the slide's scored cells scored as one), when no row of
    ``rows`` was scored: the columns its table then holds empty (:func:`_ordered_table`);
    None when some row was, or there are no cells to score."""
    if any(r.get("status") == "ok" for r in rows) or scored_cells is None or \
            not len(scored_cells):
        return None
    return _scored_row({}, scored_cells, "slide", 0, her2_calibration, gates)
