"""Synthetic multiplexed QD tissue images with per-pixel and per-cell ground truth.

No public QD-stained tissue image is known, so qdmed's imaging stage is tested and
demonstrated on images generated here from a forward model:

1. **Geometry** (:func:`simulate_tissue`). Cell centres sit on a jittered hexagonal lattice
   whose random numbers come from a hash-seeded RNG per block of 32 x 32 lattice sites
   (``numpy.random.default_rng([seed, tag, block_row, block_col])``), so the cell list does
   not depend on how the image is cut into tiles. Each nucleus is an ellipse with a random
   orientation; its major semi-axis is clamped below half the distance to the nearest
   neighbour minus the membrane thickness, so nuclei never overlap and never touch a
   membrane. A cell is the Voronoi region of its centre limited to the cell radius; the
   membrane is the ring of cell pixels within ``membrane_thickness_um`` of another label
   (a neighbour cell or stroma); the cytoplasm is the rest of the cell. By default
   (``junctions='resolved'``) two touching cells draw two such rings side by side, a
   junction twice the membrane's width with each cell's stain on its own side. With
   ``junctions='shared'`` the junction is one line of the membrane's width, half on each
   side, and every pixel of it shows both cells' membranes (two membranes 10-20 nm apart
   are not resolved by a light microscope): a HER2-0 cell's junction with a 3+ cell shows
   the 3+ membrane on both sides, and which cell a junction belongs to is for the
   analysis to decide.
   Where a cell meets stroma its ring keeps the full width. A pixel's labels
   depend only on the global cell list, never on the tile being rendered. Tissue versus
   glass follows a smooth random field (a sum of 24 plane waves with wavelengths of
   150-800 um) thresholded to cover ``tissue_fraction`` of the area on average.
2. **Expression** (:func:`list_presets`). Each cell gets a level per marker (relative units;
   1 ~ strong staining) from a preset; HER2 cells get an ASCO/CAP 2018 category
   (0 / 1+ / 2+ / 3+), a membrane intensity and a membrane completeness (fraction of the
   perimeter stained) following :data:`HER2_CATEGORY_MODEL`.
3. **Image formation** (:func:`simulate_field`, :func:`simulate_slide`). Abundance maps
   (markers in their compartments, exactly 0 elsewhere, plus a smooth tissue
   autofluorescence) are mixed through the endmember matrix, then photon shot noise
   (Poisson), Gaussian read noise, gain and offset are applied.

Marker levels in the presets are illustrative relative numbers chosen to reproduce each
line's or subtype's published receptor phenotype; they are not measurements.

References
----------
.. [1] Wolff AC et al. (2018) Human epidermal growth factor receptor 2 testing in breast
   cancer: ASCO/CAP clinical practice guideline focused update. J Clin Oncol 36:2105-2122.
   doi:10.1200/JCO.2018.77.8738
.. [2] Neve RM et al. (2006) A collection of breast cancer cell lines for the study of
   functionally distinct cancer subtypes. Cancer Cell 10:515-527.
   doi:10.1016/j.ccr.2006.10.008
.. [3] Subik K et al. (2010) The expression patterns of ER, PR, HER2, CK5/6, EGFR, Ki-67
   and AR by immunohistochemical analysis in breast cancer cell lines. Breast Cancer
   (Auckl) 4:35-41.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from qdmed.errors import InputError, UnknownNameError
from qdmed.report._json import to_jsonable

__all__ = [
    "COMPARTMENT_CODES",
    "HER2_CATEGORIES",
    "HER2_CATEGORY_MODEL",
    "JUNCTIONS",
    "Marker",
    "MarkerLevel",
    "Preset",
    "SyntheticField",
    "SyntheticSlide",
    "SyntheticTissue",
    "list_markers",
    "list_presets",
    "simulate_field",
    "simulate_slide",
    "simulate_tissue",
]

COMPARTMENTS = ("nucleus", "cytoplasm", "membrane")
#: How two touching cells' membranes are drawn (module docstring, Geometry).
JUNCTIONS = ("resolved", "shared")
#: Codes of the ``compartments`` image: 0 stroma/glass, 1 nucleus, 2 cytoplasm, 3 membrane.
COMPARTMENT_CODES = MappingProxyType({"background": 0, "nucleus": 1, "cytoplasm": 2,
                                      "membrane": 3})
HER2_CATEGORIES = ("0", "1+", "2+", "3+")

#: Per-cell HER2 truth model: category -> ((intensity lo, hi), (completeness lo, hi)), both
#: drawn uniformly. Intensity is in relative abundance units (3+ ~ 1), completeness is the
#: stained fraction of the membrane perimeter. From the ASCO/CAP 2018 descriptions [1]_:
#: 0 = no staining; 1+ = faint/barely perceptible, incomplete; 2+ = weak-moderate, complete;
#: 3+ = intense, complete (circumferential). The gap 0.75-0.9 in completeness keeps
#: "incomplete" and "complete" separable.
HER2_CATEGORY_MODEL = MappingProxyType({
    "0": ((0.0, 0.0), (0.0, 0.0)),
    "1+": ((0.08, 0.20), (0.25, 0.75)),
    "2+": ((0.30, 0.55), (0.90, 1.00)),
    "3+": ((0.80, 1.20), (0.95, 1.00)),
})

_BLOCK = 32          # lattice sites per RNG block side
_NOISE_BLOCK = 256   # px per noise RNG block side
_N_UNIF = 48         # uniforms per lattice site
_JITTER = 0.25       # jitter radius / lattice spacing
_OCCUPANCY = 0.92    # fraction of lattice sites that hold a cell (the rest: stroma gaps)
_TAG_SITES, _TAG_TISSUE, _TAG_AF, _TAG_NOISE = 0x5173, 0x7155, 0xAF, 0x9015E
_TAG_HER2 = 0x4E52
_OFFSET = 1 << 24    # keeps RNG keys non-negative for blocks left of / above the origin
_WORKERS = min(8, os.cpu_count() or 1)  # threads for noise blocks (numpy releases the GIL)


# --------------------------------------------------------------------------- registries
@dataclass(frozen=True)
class Marker:
    """A stainable target: its compartment and gene."""

    name: str
    compartment: str
    gene: str
    description: str


@dataclass(frozen=True)
class MarkerLevel:
    """Per-cell level distribution of one marker in a preset.

    A cell is positive with probability ``positive_fraction``; a positive cell's level is
    log-normal with mean ``level`` and coefficient of variation ``cv``; negative cells are 0.
    """

    positive_fraction: float
    level: float
    cv: float = 0.3


@dataclass(frozen=True)
class Preset:
    """An expression preset (cell line or tumour subtype)."""

    name: str
    kind: str
    description: str
    citation: str
    doi: str | None
    her2_mix: Mapping[str, float]
    markers: Mapping[str, MarkerLevel]
    her2_patch_um: float | None = None  # correlation length of clonal HER2 patches

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "description": self.description,
                "citation": self.citation, "doi": self.doi, "her2_mix": dict(self.her2_mix),
                "her2_patch_um": self.her2_patch_um,
                "markers": {k: vars(v).copy() for k, v in self.markers.items()}}


_MARKERS: dict[str, Marker] = {}
_PRESETS: dict[str, Preset] = {}


def _register_marker(name: str, compartment: str, gene: str, description: str) -> None:
    _MARKERS[name] = Marker(name, compartment, gene, description)


for _args in (
    ("HER2", "membrane", "ERBB2", "receptor tyrosine kinase; amplified in ~15-20 % of breast cancers"),
    ("EGFR", "membrane", "EGFR", "epidermal growth factor receptor; high in basal-like/TNBC"),
    ("ER", "nucleus", "ESR1", "oestrogen receptor alpha"),
    ("PR", "nucleus", "PGR", "progesterone receptor"),
    ("mTOR", "cytoplasm", "MTOR", "mechanistic target of rapamycin kinase"),
    ("CA125", "membrane", "MUC16", "mucin 16; ovarian serous carcinoma marker"),
    ("claudin-4", "membrane", "CLDN4", "tight-junction protein; high in ovarian and luminal cancers"),
    ("PSA", "cytoplasm", "KLK3", "prostate-specific antigen (kallikrein 3)"),
    ("AR", "nucleus", "AR", "androgen receptor"),
    # nuclear counterstain (registered last so the other markers' random draws are unchanged)
    ("DAPI", "nucleus", "DNA", "nuclear counterstain (DAPI), present in every cell"),
    # added after DAPI, for the same reason (no preset expresses it yet)
    ("Ki67", "nucleus", "MKI67", "proliferation antigen, nuclear in cycling cells; the Ki-67 "
     "index is the percent of positive tumour nuclei (Nielsen TO et al., J Natl Cancer Inst "
     "2021;113:808-819, doi:10.1093/jnci/djaa201)"),
):
    _register_marker(*_args)

_HER2_MARKER_SLOT = 8  # uniforms 8..11: HER2 category, intensity, completeness, arc start
_MARKER_SLOT0 = 12     # uniforms 12+2i, 13+2i: marker i (registry order) positivity, level


def _check_preset(p: Preset) -> None:
    """A user's Preset checked as the built-in ones are: known HER2 categories with
    non-negative shares summing to 1, known markers, fractions in [0, 1], levels >= 0."""
    mix = dict(p.her2_mix)
    bad = sorted(set(mix) - set(HER2_CATEGORIES))
    if bad:
        raise InputError(f"preset {p.name!r}: unknown HER2 categories {bad}; accepted: "
                         f"{', '.join(HER2_CATEGORIES)}")
    try:
        vals = [float(v) for v in mix.values()]
    except (TypeError, ValueError):
        vals = [math.nan]
    if not all(math.isfinite(v) and v >= 0 for v in vals) or abs(sum(vals) - 1) > 1e-6:
        raise InputError(f"preset {p.name!r}: her2_mix shares must be >= 0 and sum to 1; got "
                         f"{mix}")
    unknown = sorted(set(p.markers) - (set(_MARKERS) - {"HER2"}))
    if unknown:
        raise InputError(f"preset {p.name!r}: unknown markers {unknown} (HER2 is set by "
                         f"her2_mix); accepted: {', '.join(m for m in _MARKERS if m != 'HER2')}")
    for m, lv in p.markers.items():
        ok = isinstance(lv, MarkerLevel) and 0 <= lv.positive_fraction <= 1 and \
            lv.level >= 0 and lv.cv >= 0
        if not ok:
            raise InputError(f"preset {p.name!r}: marker {m!r} needs a MarkerLevel with "
                             f"positive_fraction in [0, 1] and level, cv >= 0; got {lv!r}")
    if p.her2_patch_um is not None and not (math.isfinite(p.her2_patch_um)
                                            and p.her2_patch_um > 0):
        raise InputError(f"preset {p.name!r}: her2_patch_um must be > 0 um or None; got "
                         f"{p.her2_patch_um!r}")


def _register_preset(name: str, kind: str, description: str, citation: str, doi: str | None,
                     her2_mix: dict[str, float], her2_patch_um: float | None = None,
                     **markers: tuple[float, float, float]) -> None:
    mix = {c: float(her2_mix.get(c, 0.0)) for c in HER2_CATEGORIES}
    markers.setdefault("DAPI", (1.0, 1.0, 0.15))  # every nucleus takes the counterstain
    lv = {k.replace("_", "-"): MarkerLevel(*v) for k, v in markers.items()}
    preset = Preset(name, kind, description, citation, doi, MappingProxyType(mix),
                    MappingProxyType(lv), her2_patch_um)
    assert set(her2_mix) <= set(HER2_CATEGORIES), name  # unknown keys would be dropped above
    _check_preset(preset)  # as a user's preset is checked
    _PRESETS[name] = preset


_NEVE = ("Neve RM et al. (2006) Cancer Cell 10:515-527; Subik K et al. (2010) Breast Cancer "
         "(Auckl) 4:35-41")
_NEVE_DOI = "10.1016/j.ccr.2006.10.008"
_register_preset(
    "MCF-7", "cell line", "luminal A breast adenocarcinoma line: ER+ PR+, HER2 low (IHC 0-1+)",
    _NEVE, _NEVE_DOI, {"0": 0.3, "1+": 0.7},
    ER=(0.95, 0.9, 0.3), PR=(0.6, 0.5, 0.5), EGFR=(0.1, 0.05, 0.5), mTOR=(1.0, 0.4, 0.3),
    AR=(0.5, 0.3, 0.5), claudin_4=(0.9, 0.6, 0.3))
_register_preset(
    "BT474", "cell line", "luminal B breast ductal carcinoma line: ERBB2-amplified, HER2 3+, "
    "ER+ PR+", _NEVE, _NEVE_DOI, {"2+": 0.05, "3+": 0.95},
    ER=(0.8, 0.6, 0.4), PR=(0.6, 0.4, 0.5), EGFR=(0.2, 0.1, 0.5), mTOR=(1.0, 0.6, 0.3),
    AR=(0.7, 0.4, 0.4), claudin_4=(0.9, 0.6, 0.3))
_register_preset(
    "SK-BR-3", "cell line", "HER2-enriched breast adenocarcinoma line: ERBB2-amplified, "
    "HER2 3+, ER- PR-", _NEVE, _NEVE_DOI, {"2+": 0.05, "3+": 0.95},
    EGFR=(0.6, 0.3, 0.5), mTOR=(1.0, 0.6, 0.3), AR=(0.5, 0.3, 0.5), claudin_4=(0.8, 0.5, 0.3))
# HER2 0 as qdmed's table of known controls takes it (HERmark Table 1, Larson et al. 2010;
# other reports read 0-1+), with as few faint cells as the other 0 line: the faint cut-off
# is the 0 controls' 95th percentile, which a 0 control's faint cells move. At 20 % (a 1+
# slide) a calibration on it as the 0 control raised the cut-off and read a 1+ tumour as
# 0 (a review); at 8 % still 37.1 against 35.8, the tumour's 11.4 % faint cells read 8 %
_register_preset(
    "MDA-MB-231", "cell line", "claudin-low triple-negative breast line: ER- PR- HER2 0 "
    "(HERmark Table 1; 0-1+ elsewhere), EGFR high", _NEVE, _NEVE_DOI, {"0": 0.95, "1+": 0.05},
    EGFR=(0.95, 0.6, 0.4), mTOR=(1.0, 0.5, 0.3), claudin_4=(0.1, 0.1, 0.5))
_register_preset(
    "MDA-MB-468", "cell line", "basal-like triple-negative breast line: EGFR-amplified "
    "(very high), ER- PR- HER2 0", _NEVE, _NEVE_DOI, {"0": 0.95, "1+": 0.05},
    EGFR=(1.0, 1.0, 0.3), mTOR=(1.0, 0.5, 0.3), claudin_4=(0.8, 0.5, 0.3))
_register_preset(
    "OVCAR-3", "cell line", "high-grade serous ovarian carcinoma line: CA125 (MUC16) high, "
    "claudin-4 high, HER2 0-1+",
    "Hamilton TC et al. (1983) Cancer Res 43:5379-5389", None, {"0": 0.6, "1+": 0.4},
    CA125=(0.9, 0.8, 0.4), claudin_4=(0.95, 0.8, 0.3), EGFR=(0.5, 0.3, 0.5),
    mTOR=(1.0, 0.5, 0.3))
_register_preset(
    "LNCaP", "cell line", "androgen-sensitive prostate adenocarcinoma line: AR+, PSA+",
    "Horoszewicz JS et al. (1983) Cancer Res 43:1809-1818", None, {"0": 0.7, "1+": 0.3},
    AR=(0.95, 0.8, 0.3), PSA=(0.9, 0.7, 0.4), mTOR=(1.0, 0.5, 0.3), EGFR=(0.3, 0.2, 0.5))
_register_preset(
    "luminal-A", "tumour", "luminal A breast carcinoma: ER+ PR high, HER2-negative (0/1+)",
    "Goldhirsch A et al. (2013) Ann Oncol 24:2206-2223 (St Gallen surrogate definitions)",
    "10.1093/annonc/mdt303", {"0": 0.5, "1+": 0.5}, 60.0,
    ER=(0.9, 0.8, 0.4), PR=(0.7, 0.6, 0.5), EGFR=(0.05, 0.1, 0.5), mTOR=(1.0, 0.3, 0.4),
    AR=(0.7, 0.4, 0.5), claudin_4=(0.8, 0.5, 0.4))
_register_preset(
    "HER2-enriched", "tumour", "HER2-enriched breast carcinoma: HER2 3+ in most tumour cells "
    "(IHC-positive by ASCO/CAP 2018), PR-, ER in a few cells (~5 %: ER-low by ASCO/CAP "
    "2020)",
    "Perou CM et al. (2000) Nature 406:747-752; Wolff AC et al. (2018) J Clin Oncol "
    "36:2105-2122", "10.1200/JCO.2018.77.8738", {"1+": 0.05, "2+": 0.15, "3+": 0.8}, 60.0,
    ER=(0.05, 0.3, 0.5), EGFR=(0.3, 0.3, 0.5), mTOR=(1.0, 0.6, 0.3), AR=(0.5, 0.4, 0.5),
    claudin_4=(0.8, 0.5, 0.4))
_register_preset(
    "triple-negative", "tumour", "triple-negative breast carcinoma: ER- PR- HER2 0/1+, EGFR "
    "positive in a subset (basal-like)",
    "Foulkes WD, Smith IE, Reis-Filho JS (2010) N Engl J Med 363:1938-1948",
    "10.1056/NEJMra1001389", {"0": 0.85, "1+": 0.15}, 60.0,
    EGFR=(0.6, 0.6, 0.5), mTOR=(1.0, 0.6, 0.4), AR=(0.2, 0.3, 0.5), claudin_4=(0.4, 0.3, 0.5))
_register_preset(
    "her2-heterogeneous", "tumour", "breast carcinoma with intratumoural HER2 heterogeneity: "
    "a mix of 0, 1+, 2+ and 3+ cells (30/30/20/20 %) in clonal patches (~150 um correlation "
    "length, as intratumoural heterogeneity is regional); ER+ in a subset",
    "Wolff AC et al. (2018) J Clin Oncol 36:2105-2122", "10.1200/JCO.2018.77.8738",
    {"0": 0.3, "1+": 0.3, "2+": 0.2, "3+": 0.2}, 150.0,
    ER=(0.6, 0.6, 0.4), PR=(0.4, 0.4, 0.5), EGFR=(0.2, 0.2, 0.5), mTOR=(1.0, 0.5, 0.3))
_register_preset(
    "her2-ultralow", "tumour", "ER+ breast carcinoma, HER2-ultralow: faint incomplete "
    "membrane staining in <= 10 % of tumour cells (5 % here)",
    "Wolff AC et al. (2018) J Clin Oncol 36:2105-2122; DESTINY-Breast06 entry criterion "
    "(Bardia A et al., N Engl J Med 2024)", "10.1200/JCO.2018.77.8738", {"0": 0.95, "1+": 0.05}, 60.0,
    ER=(0.9, 0.8, 0.4), PR=(0.6, 0.5, 0.5), mTOR=(1.0, 0.3, 0.4))


def list_presets() -> Mapping[str, Preset]:
    """The expression presets, name -> :class:`Preset` (read-only).

    Cell lines: MCF-7, BT474, SK-BR-3, MDA-MB-231, MDA-MB-468, OVCAR-3, LNCaP. Tumour
    subtypes: luminal-A, HER2-enriched, triple-negative, her2-heterogeneous, her2-ultralow.
    Each holds a description, a citation (and DOI where known), the HER2 category mix and the
    level distribution of the other markers (markers not listed are absent: level 0).

    Examples
    --------
    >>> p = list_presets()["SK-BR-3"]
    >>> p.her2_mix["3+"], p.markers.get("ER")
    (0.95, None)
    """
    return MappingProxyType(_PRESETS)


def list_markers() -> Mapping[str, Marker]:
    """The markers known to the simulator, name -> :class:`Marker` (compartment, gene)."""
    return MappingProxyType(_MARKERS)


def _get_preset(preset: str | Preset) -> Preset:
    if isinstance(preset, Preset):
        _check_preset(preset)
        return preset
    if preset in _PRESETS:
        return _PRESETS[preset]
    # cell lines are written with and without hyphens (BT-474, BT474; MCF7, MCF-7)
    key = _preset_key(preset)
    for name, p in _PRESETS.items():
        if _preset_key(name) == key:
            return p
    raise UnknownNameError(f"unknown preset {preset!r}; accepted: {', '.join(_PRESETS)}")


def _preset_key(name) -> str:
    return str(name).lower().replace("-", "").replace(" ", "").replace("_", "")


# --------------------------------------------------------------------------- validation
def _shape2(shape: Any) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in shape)
        ok = all(float(s) == int(s) for s in shape)
    except (TypeError, ValueError):
        ok = False
    if not ok or h < 1 or w < 1:
        raise InputError(f"shape must be two positive integers (Y, X) in px, got {shape!r}")
    return h, w


def _positive(name: str, value: Any, *, allow_zero: bool = False,
              most: float | None = None, why: str = "") -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero) or (
            most is not None and v > most):
        rng = ">= 0" if allow_zero else "> 0"
        rng += "" if most is None else f" and <= {most:g}{why}"
        raise InputError(f"{name} must be a finite number {rng}, got {value!r}")
    return v


def _mean_sd(name: str, value: Any) -> tuple[float, float]:
    if np.ndim(value) == 0:
        return _positive(name, value), 0.0
    try:
        m, s = value
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number or a pair (mean, sd) in um, got "
                         f"{value!r}") from None
    return _positive(f"{name} mean", m), _positive(f"{name} sd", s, allow_zero=True)


def _seed(seed: Any) -> int:
    if seed is None:
        return int(np.random.SeedSequence().entropy)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise InputError(f"seed must be a non-negative integer or None, got {seed!r}")
    return int(seed)


# --------------------------------------------------------------------------- smooth fields
def _wave_modes(seed: int, tag: int, lam_lo: float, lam_hi: float, n: int = 24) -> np.ndarray:
    rng = np.random.default_rng([seed, tag])
    lam = np.exp(rng.uniform(np.log(lam_lo), np.log(lam_hi), n))
    ang = rng.uniform(0, 2 * np.pi, n)
    k = 2 * np.pi / lam
    return np.stack([k * np.sin(ang), k * np.cos(ang), rng.uniform(0, 2 * np.pi, n)], axis=1)


def _wave_eval(modes: np.ndarray, y_um: np.ndarray, x_um: np.ndarray) -> np.ndarray:
    """Sum of unit plane waves scaled to unit variance, at points (broadcasting)."""
    out = np.zeros(np.broadcast_shapes(np.shape(y_um), np.shape(x_um)))
    for ky, kx, ph in modes:
        out += np.cos(ky * y_um + kx * x_um + ph)
    return out * math.sqrt(2.0 / len(modes))


def _field_on_pixels(modes: np.ndarray, node_um: float, y0: int, y1: int, x0: int, x1: int,
                     ps: float) -> np.ndarray:
    """Field on pixel centres by bilinear interpolation of a global node lattice.

    Every operation is elementwise on global coordinates, so a pixel's value does not depend
    on the region requested.
    """
    yu = (np.arange(y0, y1) + 0.5) * ps / node_um
    xu = (np.arange(x0, x1) + 0.5) * ps / node_um
    my, mx = np.floor(yu).astype(np.int64), np.floor(xu).astype(np.int64)
    ty, tx = yu - my, xu - mx
    ny = np.arange(my.min(), my.max() + 2)
    nx = np.arange(mx.min(), mx.max() + 2)
    nodes = _wave_eval(modes, (ny * node_um)[:, None], (nx * node_um)[None, :])
    jx = mx - nx[0]
    gx = nodes[:, jx] * (1 - tx) + nodes[:, jx + 1] * tx
    jy = my - ny[0]
    return gx[jy, :] * (1 - ty)[:, None] + gx[jy + 1, :] * ty[:, None]


# --------------------------------------------------------------------------- the scene
@dataclass(frozen=True, eq=False)
class _Geometry:
    shape: tuple[int, int]
    ps: float
    seed: int
    cy: np.ndarray          # px coordinates of centres (pixel i spans [i-0.5, i+0.5])
    cx: np.ndarray
    a: np.ndarray           # nucleus semi-axes, px
    b: np.ndarray
    theta: np.ndarray       # nucleus orientation, rad
    radius: np.ndarray      # cell radius limit, px
    unif: np.ndarray        # (N, _N_UNIF) per-cell uniforms (expression uses 8:)
    ring_px: float
    tissue_thr: float       # -inf: all tissue, +inf: none
    tissue_modes: np.ndarray
    af_modes: np.ndarray
    discs: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))  # TMA cores: cy, cx, r px
    core: np.ndarray | None = None  # per cell: index into discs (TMA), else None
    junctions: str = "resolved"     # JUNCTIONS: how two cells' membranes meet

    @property
    def n(self) -> int:
        return int(self.cy.size)


def _disc_index(discs: np.ndarray, y_px: np.ndarray, x_px: np.ndarray) -> np.ndarray:
    """Per point (pixel coordinates): the index of the disc (cy, cx, r px) holding it, -1
    outside all (discs do not overlap)."""
    out = np.full(np.shape(y_px), -1, dtype=np.int64)
    for i, (cy, cx, r) in enumerate(discs):
        out[(y_px - cy) ** 2 + (x_px - cx) ** 2 <= r * r] = i
    return out


def _build_geometry(shape: tuple[int, int], *, density: float, ps: float,
                    nucleus_radius: tuple[float, float], cell_radius: tuple[float, float],
                    membrane_um: float, tissue_fraction: float, seed: int,
                    discs=None, junctions: str = "resolved") -> _Geometry:
    from scipy.spatial import cKDTree
    from scipy.special import ndtri

    h, w = shape
    spacing = math.sqrt(2.0 / (math.sqrt(3.0) * density / _OCCUPANCY / 1e6))  # um
    margin = membrane_um + 1.5 * ps
    a_min = max(1.0, ps)
    worst = (1 - 2 * _JITTER) * spacing / 2 - margin
    if worst < a_min:
        raise InputError(
            f"cell_density_per_mm2={density:g} is too high for pixel_size_um={ps:g} and "
            f"membrane_thickness_um={membrane_um:g}: nuclei would be under {a_min:g} um; "
            f"use at most {_max_density(ps, membrane_um):.0f} cells/mm2")
    if tissue_fraction >= 1:
        thr = -math.inf
    elif tissue_fraction <= 0:
        thr = math.inf
    else:
        thr = float(-ndtri(tissue_fraction))
    tissue_modes = _wave_modes(seed, _TAG_TISSUE, 150.0, 800.0)
    af_modes = _wave_modes(seed, _TAG_AF, 40.0, 200.0)

    dy_site = spacing * math.sqrt(3.0) / 2
    halo = 3 * spacing
    hy, wx = h * ps, w * ps
    i0, i1 = math.floor(-halo / dy_site), math.ceil((hy + halo) / dy_site)
    j0, j1 = math.floor(-halo / spacing) - 1, math.ceil((wx + halo) / spacing)
    rows, cols, unif = [], [], []
    for bi in range(i0 // _BLOCK, i1 // _BLOCK + 1):
        for bj in range(j0 // _BLOCK, j1 // _BLOCK + 1):
            rng = np.random.default_rng([seed, _TAG_SITES, bi + _OFFSET, bj + _OFFSET])
            u = rng.random((_BLOCK, _BLOCK, _N_UNIF))
            ii, jj = np.meshgrid(np.arange(bi * _BLOCK, (bi + 1) * _BLOCK),
                                 np.arange(bj * _BLOCK, (bj + 1) * _BLOCK), indexing="ij")
            keep = (ii >= i0) & (ii <= i1) & (jj >= j0) & (jj <= j1)
            rows.append(ii[keep])
            cols.append(jj[keep])
            unif.append(u[keep])
    ii = np.concatenate(rows)
    jj = np.concatenate(cols)
    u = np.concatenate(unif)
    r = _JITTER * spacing * np.sqrt(u[:, 0])
    phi = 2 * np.pi * u[:, 1]
    y = ii * dy_site + r * np.sin(phi)
    x = (jj + 0.5 * (ii & 1)) * spacing + r * np.cos(phi)
    occ = u[:, 2] < _OCCUPANCY
    if thr == math.inf:
        occ[:] = False
    elif math.isfinite(thr):
        occ &= _wave_eval(tissue_modes, y, x) > thr
    discs = np.zeros((0, 3)) if discs is None else np.asarray(discs, dtype=np.float64)
    if discs.size:  # TMA: cells only inside the cores (a cell's centre inside its core)
        occ &= _disc_index(discs, y / ps - 0.5, x / ps - 0.5) >= 0
    y, x, u = y[occ], x[occ], u[occ]
    inside = (y >= 0) & (y < hy) & (x >= 0) & (x < wx)
    if inside.sum() >= 1 and y.size >= 2:
        nn = cKDTree(np.column_stack([y, x])).query(np.column_stack([y, x]), k=2)[0][:, 1]
    else:
        nn = np.full(y.size, np.inf)
    y, x, u, nn = y[inside], x[inside], u[inside], nn[inside]
    order = np.lexsort((x, y))
    y, x, u, nn = y[order], x[order], u[order], nn[order]

    uc = np.clip(u, 1e-12, 1 - 1e-12)
    rn_mean, rn_sd = nucleus_radius
    rnuc = np.maximum(rn_mean + rn_sd * ndtri(uc[:, 3]), max(0.3 * rn_mean, a_min))
    aspect = 1.0 + 0.5 * u[:, 4]
    a = rnuc * np.sqrt(aspect)
    b = rnuc / np.sqrt(aspect)
    scale = np.minimum(1.0, (nn / 2 - margin) / a)  # nn >= (1 - 2 jitter) spacing
    a, b = a * scale, b * scale
    theta = np.pi * u[:, 5]
    rc_mean, rc_sd = cell_radius
    radius = np.maximum(rc_mean + rc_sd * ndtri(uc[:, 6]), a + margin + ps)
    return _Geometry(shape=(h, w), ps=ps, seed=seed, cy=y / ps - 0.5, cx=x / ps - 0.5,
                     a=a / ps, b=b / ps, theta=theta, radius=radius / ps, unif=u,
                     ring_px=membrane_um / ps, tissue_thr=thr, tissue_modes=tissue_modes,
                     af_modes=af_modes, discs=discs,
                     core=_disc_index(discs, y / ps - 0.5, x / ps - 0.5) if discs.size
                     else None, junctions=junctions)


def _max_density(ps: float, membrane_um: float) -> float:
    a_min = max(1.0, ps)
    spacing = 2 * (a_min + membrane_um + 1.5 * ps) / (1 - 2 * _JITTER)
    return 2.0 / (math.sqrt(3.0) * spacing**2) * _OCCUPANCY * 1e6


def _disk(r: float) -> np.ndarray:
    n = int(math.floor(r))
    yy, xx = np.mgrid[-n:n + 1, -n:n + 1]
    return (yy * yy + xx * xx) <= r * r + 1e-9


def _render_geometry(g: _Geometry, y0: int, y1: int, x0: int, x1: int) -> dict[str, np.ndarray]:
    """Labels and compartments of region [y0:y1, x0:x1] (may extend past the image)."""
    from scipy import ndimage as ndi

    mr = int(math.ceil(g.ring_px)) + 1
    ry0, ry1, rx0, rx1 = y0 - mr, y1 + mr, x0 - mr, x1 + mr
    ny, nx = ry1 - ry0, rx1 - rx0
    lab = np.zeros((ny, nx), np.int32)
    nuc = np.zeros((ny, nx), np.int32)
    best = np.full((ny, nx), np.inf)
    if g.n:
        sel = np.nonzero((g.cy + g.radius >= ry0) & (g.cy - g.radius <= ry1)
                         & (g.cx + g.radius >= rx0) & (g.cx - g.radius <= rx1))[0]
        cos_t, sin_t = np.cos(g.theta), np.sin(g.theta)
        for i in sel.tolist():
            cy, cx, rr = float(g.cy[i]), float(g.cx[i]), float(g.radius[i])
            ya, yb = max(ry0, math.floor(cy - rr)), min(ry1, math.ceil(cy + rr) + 1)
            xa, xb = max(rx0, math.floor(cx - rr)), min(rx1, math.ceil(cx + rr) + 1)
            if ya >= yb or xa >= xb:
                continue
            dy = (np.arange(ya, yb) - cy)[:, None]
            dx = (np.arange(xa, xb) - cx)[None, :]
            d2 = dy * dy + dx * dx
            sb = best[ya - ry0:yb - ry0, xa - rx0:xb - rx0]
            m = (d2 < sb) & (d2 <= rr * rr)
            sb[m] = d2[m]
            lab[ya - ry0:yb - ry0, xa - rx0:xb - rx0][m] = i + 1
            ai, bi = float(g.a[i]), float(g.b[i])
            if ai + 1 < rr:  # nucleus bounding box is smaller: clip the work
                k = int(math.ceil(ai)) + 1
                yc, xc = int(round(cy)), int(round(cx))
                na, nb = max(ya, yc - k), min(yb, yc + k + 1)
                ma, mb = max(xa, xc - k), min(xb, xc + k + 1)
                if na >= nb or ma >= mb:
                    continue
                dy = (np.arange(na, nb) - cy)[:, None]
                dx = (np.arange(ma, mb) - cx)[None, :]
            else:
                na, nb, ma, mb = ya, yb, xa, xb
            uu = dx * cos_t[i] + dy * sin_t[i]
            vv = dy * cos_t[i] - dx * sin_t[i]
            q = (uu / ai) ** 2 + (vv / bi) ** 2 <= 1.0
            nuc[na - ry0:nb - ry0, ma - rx0:mb - rx0][q] = i + 1
    # at least one pixel: a membrane thinner than a pixel still puts its signal in the
    # cell's boundary pixels (a footprint of one pixel would draw no membrane at all)
    fp = _disk(max(1.0, g.ring_px))
    mx = ndi.maximum_filter(lab, footprint=fp, mode="nearest")
    mn = ndi.minimum_filter(lab, footprint=fp, mode="nearest")
    c = slice(mr, mr + (y1 - y0)), slice(mr, mr + (x1 - x0))
    junction = None
    if g.junctions == "shared":
        # where two cells meet, each holds half the line (its side); at stroma the ring keeps
        # its full width inside the cell
        hp = _disk(max(1.0, g.ring_px / 2))
        other = np.where(lab > 0, lab, np.iinfo(lab.dtype).max)
        junction = ((ndi.maximum_filter(lab, footprint=hp, mode="nearest") != lab)
                    | (ndi.minimum_filter(other, footprint=hp, mode="nearest") != lab))[c]
    lab, nuc, mx, mn = lab[c], nuc[c], mx[c], mn[c]
    nuc = np.where(nuc == lab, nuc, 0)  # guaranteed by construction; kept as a safeguard
    comp = np.zeros(lab.shape, np.uint8)
    incell = lab > 0
    comp[incell] = 2
    if junction is None:
        comp[incell & ((mx != lab) | (mn != lab))] = 3
    else:
        junction &= incell
        comp[junction | (incell & (mn == 0))] = 3
    comp[nuc > 0] = 1
    if g.discs.size:  # TMA: a core is punched out of the block, cutting its edge cells
        inside = _disc_mask(g, y0, y1, x0, x1)
        lab, nuc, comp = (np.where(inside, a, 0).astype(a.dtype) for a in (lab, nuc, comp))
        if junction is not None:
            junction &= inside
    out = {"cells": lab, "nuclei": nuc, "compartments": comp}
    if junction is not None:
        out["junction"] = junction & (comp == 3)
    return out


def _disc_mask(g: _Geometry, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Pixels of region [y0:y1, x0:x1] inside any TMA core (``g.discs``)."""
    cy, cx, r = g.discs.T
    near = (cy + r >= y0) & (cy - r <= y1) & (cx + r >= x0) & (cx - r <= x1)
    yy, xx = np.ogrid[y0:y1, x0:x1]
    disc = np.zeros((y1 - y0, x1 - x0), bool)
    for dy, dx, dr in g.discs[near]:
        disc |= (yy - dy) ** 2 + (xx - dx) ** 2 <= dr * dr
    return disc


def _tissue_maps(g: _Geometry, y0: int, y1: int, x0: int, x1: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(tissue bool, soft tissue weight 0..1) of a region; TMA cores (``g.discs``) confine
    the tissue to their discs."""
    shp = (y1 - y0, x1 - x0)
    if g.tissue_thr == -math.inf:
        tissue, soft = np.ones(shp, bool), np.ones(shp)
    elif g.tissue_thr == math.inf:
        return np.zeros(shp, bool), np.zeros(shp)
    else:
        f = _field_on_pixels(g.tissue_modes, 16.0, y0, y1, x0, x1, g.ps)
        tissue, soft = f > g.tissue_thr, np.clip((f - g.tissue_thr) / 0.5, 0.0, 1.0)
    if g.discs.size:
        disc = _disc_mask(g, y0, y1, x0, x1)
        tissue, soft = tissue & disc, soft * disc
    return tissue, soft


# --------------------------------------------------------------------------- expression
@dataclass(frozen=True, eq=False)
class _Expression:
    marker_names: tuple[str, ...]
    levels: np.ndarray          # (K, N+1) nominal level, index 0 = background (0)
    completeness: np.ndarray    # (K, N+1) stained fraction of the membrane (1 unless HER2)
    arc_start: np.ndarray       # (N+1,) rad
    her2_category: np.ndarray   # (N,) int index into HER2_CATEGORIES
    her2_intensity: np.ndarray  # (N,)
    her2_completeness: np.ndarray


def _expression(g: _Geometry, preset: Preset, marker_names: tuple[str, ...]) -> _Expression:
    from scipy.special import ndtr, ndtri

    u = np.clip(g.unif, 1e-12, 1 - 1e-12)
    n = g.n
    cum = np.cumsum([preset.her2_mix.get(c, 0.0) for c in HER2_CATEGORIES])
    cum[-1] = 1.0 + 1e-9
    s = _HER2_MARKER_SLOT
    u_cat = u[:, s]
    if preset.her2_patch_um:
        # clonal patches: a smooth unit-variance random field at the cell centres (global
        # coordinates, so tile-independent) with 10 % independent per-cell variance
        modes = _wave_modes(g.seed, _TAG_HER2, preset.her2_patch_um / 2, preset.her2_patch_um * 2)
        z = _wave_eval(modes, g.cy * g.ps, g.cx * g.ps)
        u_cat = ndtr(0.95 * z + math.sqrt(1 - 0.95**2) * ndtri(u[:, s]))
    cat = np.searchsorted(cum, u_cat, side="right").astype(np.int64)
    cat = np.minimum(cat, len(HER2_CATEGORIES) - 1)
    inten = np.zeros(n)
    compl = np.zeros(n)
    for ci, cname in enumerate(HER2_CATEGORIES):
        (ilo, ihi), (clo, chi) = HER2_CATEGORY_MODEL[cname]
        m = cat == ci
        inten[m] = ilo + (ihi - ilo) * u[m, s + 1]
        compl[m] = clo + (chi - clo) * u[m, s + 2]
    arc = np.concatenate([[0.0], 2 * np.pi * u[:, s + 3]])
    names = list(_MARKERS)
    k = len(marker_names)
    levels = np.zeros((k, n + 1))
    complete = np.ones((k, n + 1))
    for mi, mname in enumerate(marker_names):
        if mname == "HER2":
            levels[mi, 1:] = inten
            complete[mi, 1:] = compl
            continue
        spec = preset.markers.get(mname)
        if spec is None or spec.positive_fraction <= 0 or spec.level <= 0:
            continue
        slot = _MARKER_SLOT0 + 2 * names.index(mname)
        pos = u[:, slot] < spec.positive_fraction
        sig = math.sqrt(math.log1p(spec.cv**2))
        lv = spec.level * np.exp(sig * ndtri(u[:, slot + 1]) - sig * sig / 2)
        levels[mi, 1:] = np.where(pos, lv, 0.0)
    return _Expression(marker_names, levels, complete, arc, cat, inten, compl)


def _expression_by_core(g: _Geometry, presets: Sequence[Preset], marker_names: tuple[str, ...]
                        ) -> _Expression:
    """Expression of a TMA: each cell drawn from the preset of its core (``g.core``), from the
    same per-cell uniforms as :func:`_expression` (a core equals that preset's tissue)."""
    ex = [_expression(g, pr, marker_names) for pr in presets]
    core = g.core if g.core is not None else np.zeros(g.n, np.int64)
    sel = np.asarray(core, dtype=np.int64)
    pick = np.arange(g.n)
    levels = np.stack([e.levels for e in ex])  # (cores, K, N+1)
    complete = np.stack([e.completeness for e in ex])
    lv = levels[:, :, 0].copy()[0]
    levels_out = np.concatenate([lv[:, None], levels[sel, :, pick + 1].T], axis=1)
    complete_out = np.concatenate([complete[0][:, :1], complete[sel, :, pick + 1].T], axis=1)
    return _Expression(marker_names, levels_out, complete_out, ex[0].arc_start,
                       np.stack([e.her2_category for e in ex])[sel, pick],
                       np.stack([e.her2_intensity for e in ex])[sel, pick],
                       np.stack([e.her2_completeness for e in ex])[sel, pick])


def _patterns(g: _Geometry, ex: _Expression, geo: dict[str, np.ndarray], y0: int, x0: int
              ) -> tuple[list[np.ndarray], np.ndarray]:
    """Per-marker level maps (float32, exact zeros outside the marker's compartment) and the
    HER2-style stained-membrane mask of each membrane marker."""
    lab, comp = geo["cells"], geo["compartments"]
    out = []
    mem = comp == 3
    arc_ok = None
    stained = np.zeros(lab.shape, bool)
    for mi, mname in enumerate(ex.marker_names):
        code = COMPARTMENT_CODES[_MARKERS[mname].compartment]
        lv = ex.levels[mi].astype(np.float32)
        a = np.zeros(lab.shape, np.float32)
        m = comp == code
        a[m] = lv[lab[m]]
        if code == 3 and np.any(ex.completeness[mi] < 1):
            if arc_ok is None:
                yy, xx = np.nonzero(mem)
                li = lab[mem]
                ang = np.arctan2((yy + y0) - g.cy[li - 1], (xx + x0) - g.cx[li - 1])
                rel = np.mod(ang - ex.arc_start[li], 2 * np.pi)
                arc_ok = (yy, xx, li, rel)
            yy, xx, li, rel = arc_ok
            keep = rel < 2 * np.pi * ex.completeness[mi][li]
            a[yy[~keep], xx[~keep]] = 0.0
            if mname == "HER2":
                stained[yy[keep], xx[keep]] = True
        out.append(a)
    if "junction" in geo:
        _share_junctions(g, ex, geo, out)
    return out, stained


def _share_junctions(g: _Geometry, ex: _Expression, geo: dict[str, np.ndarray],
                     maps: list[np.ndarray]) -> None:
    """``junctions='shared'``: each junction pixel of a membrane marker's map also shows
    the neighbouring cell's membrane across the line (in place): the mean of that marker
    over the other cells' junction pixels within the ring width, as drawn for them alone.
    Two membranes 10-20 nm apart are one line at light-microscope resolution, so a
    junction's signal is both cells' sum; pixels keep their cell. The line holds whole
    pixels, so its pixels are scaled by :func:`_junction_spread` to carry what the two
    resolved rings do. The pixels within a ring width of the map's edge see only what the
    map holds (the caller pads the region)."""
    lab, jun = geo["cells"], geo["junction"]
    idx = [i for i, m in enumerate(ex.marker_names)
           if COMPARTMENT_CODES[_MARKERS[m].compartment] == 3 and maps[i].any()]
    if not idx or not jun.any():
        return
    r = int(math.floor(max(1.0, g.ring_px)))
    fp = _disk(max(1.0, g.ring_px))
    h, w = lab.shape
    cnt = np.zeros(lab.shape, np.float32)
    sums = [np.zeros(lab.shape, np.float32) for _ in idx]
    for dy, dx in zip(*(np.nonzero(fp)), strict=True):
        oy, ox = int(dy) - r, int(dx) - r
        if oy == 0 and ox == 0:
            continue
        # pixel p = (y, x) looks at q = (y + oy, x + ox)
        py = slice(max(0, -oy), h - max(0, oy))
        px = slice(max(0, -ox), w - max(0, ox))
        qy = slice(max(0, oy), h - max(0, -oy))
        qx = slice(max(0, ox), w - max(0, -ox))
        lp, lq = lab[py, px], lab[qy, qx]
        ok = jun[py, px] & jun[qy, qx] & (lq != lp) & (lq > 0)
        cnt[py, px] += ok
        for sm, i in zip(sums, idx, strict=True):
            sm[py, px] += np.where(ok, maps[i][qy, qx], np.float32(0))
    has = cnt > 0
    # the line holds whole pixels: spread both membranes over them so that it carries what
    # the two resolved rings do (a line under 2 px: half each)
    spread = np.float32(_junction_spread(float(g.ring_px)))
    for sm, i in zip(sums, idx, strict=True):
        maps[i][has] += sm[has] / cnt[has]
        if spread != 1:
            maps[i][jun] *= spread


@functools.lru_cache(maxsize=64)
def _junction_spread(ring_px: float) -> float:
    """Width of one cell's resolved ring over the width of the shared line, for a
    straight junction averaged over its direction (0-85 degrees in steps of 5): the
    shared line's pixels are scaled by it so that a junction carries both membranes'
    signal as the two resolved rings do. The rings are pixels within ``ring_px`` of the
    other cell (1 px at least), the line pixels within ``ring_px / 2`` on either side:
    whole pixels, so that a line under 1.4 px still takes one on each side (0.5 here;
    0.72 from 1.4 to 2 px, where diagonal steps count) and 3 px give 1.10. Rounded to 0.01
    (2 px: 1). From 8 px on it is taken as 1: the pixels' steps then move it by a few %
    (1.01-1.07 at 6-8 px), and a wider ring would not fit the square measured. On
    synthetic cells, whose junctions bend and meet, a junction then carries 0.91-1.0x the
    resolved rings' signal for rings of 1-6 px (a field's whole HER2: 1.00-1.11x)."""
    if ring_px >= 8:  # the square below would cut wider rings off (a review: 0.5 at 40 px)
        return 1.0
    from scipy import ndimage as ndi

    n = 64
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    fp_r, fp_s = _disk(max(1.0, ring_px)), _disk(max(1.0, ring_px / 2))
    inner = (np.abs(yy) < n / 4) & (np.abs(xx) < n / 4)  # away from the square's edges
    res = sha = 0
    for deg in range(0, 90, 5):
        t = math.radians(deg)
        side = (xx * math.cos(t) + yy * math.sin(t)) < 0
        lab = np.where(side, 1, 2)
        for fp in (fp_r, fp_s):
            near = (ndi.maximum_filter(lab, footprint=fp) != lab) | (
                ndi.minimum_filter(lab, footprint=fp) != lab)
            if fp is fp_r:
                res += int((near & inner & side).sum())
            else:
                sha += int((near & inner).sum())
    return round(res / sha, 2)


@dataclass(frozen=True, eq=False)
class _Scene:
    geometry: _Geometry
    expression: _Expression
    endmembers: np.ndarray      # (C, K+1)
    brightness: np.ndarray      # (K,)
    bleach: np.ndarray          # (C, K+1) multiplicative factors
    autofluorescence: float
    photons_per_unit: float
    read_noise_e: float
    gain: float
    offset: float
    noise: bool
    dtype: np.dtype
    bit_depth: int = 16


def _render(sc: _Scene, y0: int, y1: int, x0: int, x1: int, *, want_abundances: bool = True
            ) -> dict[str, Any]:
    """Render region [y0:y1, x0:x1]. Every pixel depends only on the scene, not the region."""
    g = sc.geometry
    # mixing and noise work on aligned 256 px blocks: render the enclosing blocks, then crop
    nb = _NOISE_BLOCK
    ay0, ax0 = (y0 // nb) * nb, (x0 // nb) * nb
    ay1, ax1 = -(-y1 // nb) * nb, -(-x1 // nb) * nb
    # a shared junction's pixel looks across the line: render a ring wider, then crop
    pad = int(math.ceil(max(1.0, g.ring_px))) if g.junctions == "shared" else 0
    geo = _render_geometry(g, ay0 - pad, ay1 + pad, ax0 - pad, ax1 + pad)
    pats, stained = _patterns(g, sc.expression, geo, ay0 - pad, ax0 - pad)
    if pad:
        cp = slice(pad, -pad), slice(pad, -pad)
        geo = {k: v[cp] for k, v in geo.items()}
        pats, stained = [p[cp] for p in pats], stained[cp]
    tissue, soft = _tissue_maps(g, ay0, ay1, ax0, ax1)
    comp = geo["compartments"]
    shp = comp.shape
    k = len(pats)
    ab = np.zeros((*shp, k + 1), np.float32)
    for i, p in enumerate(pats):
        ab[..., i] = p * np.float32(sc.brightness[i])
    if sc.autofluorescence > 0:
        wcomp = np.array([1.0, 0.35, 0.7, 0.7])[comp]
        f2 = _field_on_pixels(g.af_modes, 8.0, ay0, ay1, ax0, ax1, g.ps)
        ab[..., k] = (sc.autofluorescence * soft * (0.6 + 0.4 * 0.5 * (1 + np.tanh(f2)))
                      * wcomp).astype(np.float32)
    coef_t = np.ascontiguousarray((sc.endmembers * sc.bleach).T)  # (K+1, C)
    nc = coef_t.shape[1]
    img = np.empty((*shp, nc), sc.dtype)
    nb = _NOISE_BLOCK

    def block(by: int, bx: int) -> None:
        # fixed 256 x 256 blocks on the global grid: the same arithmetic for a pixel whatever
        # region is rendered, and one RNG per block
        lam = ab[by:by + nb, bx:bx + nb].astype(np.float64) @ coef_t
        lam *= sc.photons_per_unit
        if sc.noise:
            gy, gx = (ay0 + by) // nb, (ax0 + bx) // nb
            rng = np.random.default_rng([g.seed, _TAG_NOISE, gy + _OFFSET, gx + _OFFSET])
            e = rng.poisson(lam)
            if sc.read_noise_e > 0:
                e = e + rng.normal(0.0, sc.read_noise_e, lam.shape)
        else:
            e = lam
        adu = sc.gain * e + sc.offset if (sc.gain != 1 or sc.offset != 0) else e
        if sc.dtype.kind == "u":
            adu = np.clip(np.rint(adu), 0, 2 ** sc.bit_depth - 1)  # the detector's ceiling
        img[by:by + nb, bx:bx + nb] = adu.astype(sc.dtype)

    starts = [(by, bx) for by in range(0, shp[0], nb) for bx in range(0, shp[1], nb)]
    if _WORKERS > 1 and len(starts) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(_WORKERS, len(starts))) as ex:
            list(ex.map(lambda t: block(*t), starts))
    else:
        for t in starts:
            block(*t)
    cy0, cx0 = y0 - ay0, x0 - ax0
    c = slice(cy0, cy0 + (y1 - y0)), slice(cx0, cx0 + (x1 - x0))
    out = {"image": img[c], "cells": geo["cells"][c], "nuclei": geo["nuclei"][c],
           "compartments": comp[c], "tissue": tissue[c] | (geo["cells"][c] > 0),
           "her2_stained": stained[c], "patterns": [p[c] for p in pats]}
    if want_abundances:
        out["abundances"] = ab[c]
    return out


class _TruthAccumulator:
    """Per-cell sums over rendered regions (each pixel must be added exactly once)."""

    def __init__(self, n: int, marker_names: tuple[str, ...]) -> None:
        self.n = n
        self.names = marker_names
        self.cols: dict[str, np.ndarray] = {}

    def _add(self, key: str, lab: np.ndarray, w: np.ndarray | None = None) -> None:
        v = np.bincount(lab.ravel(), weights=None if w is None else w.ravel(),
                        minlength=self.n + 1)[: self.n + 1].astype(np.float64)
        self.cols[key] = self.cols.get(key, 0.0) + v

    def add(self, r: dict[str, Any], y0: int, x0: int) -> None:
        lab, comp = r["cells"], r["compartments"]
        self._add("area", lab)
        yy = np.broadcast_to(np.arange(y0, y0 + lab.shape[0], dtype=np.float64)[:, None],
                             lab.shape)
        xx = np.broadcast_to(np.arange(x0, x0 + lab.shape[1], dtype=np.float64)[None, :],
                             lab.shape)
        self._add("sum_y", lab, yy)
        self._add("sum_x", lab, xx)
        for cname in COMPARTMENTS:
            m = comp == COMPARTMENT_CODES[cname]
            self._add(f"n_{cname}", lab[m])
        m = comp == 3
        self._add("her2_stained", lab[m], r["her2_stained"][m].astype(np.float64))
        for mname, p in zip(self.names, r["patterns"], strict=True):
            m = comp == COMPARTMENT_CODES[_MARKERS[mname].compartment]
            self._add(f"sum_{mname}", lab[m], p[m].astype(np.float64))

    def table(self, g: _Geometry, ex: _Expression) -> Any:
        import pandas as pd

        n = self.n
        if not self.cols:
            self.cols = {"area": np.zeros(n + 1)}
        area = self.cols["area"][1:]
        keep = np.nonzero(area > 0)[0]

        def mean(num: np.ndarray, den: np.ndarray) -> np.ndarray:
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)

        d: dict[str, Any] = {
            "cell_id": (keep + 1).astype(np.int32),
            "centroid_y": mean(self.cols.get("sum_y", np.zeros(n + 1))[1:], area)[keep],
            "centroid_x": mean(self.cols.get("sum_x", np.zeros(n + 1))[1:], area)[keep],
            "area_px": area[keep].astype(np.int64),
        }
        for cname in COMPARTMENTS:
            d[f"{cname}_area_px"] = self.cols.get(f"n_{cname}", np.zeros(n + 1))[1:][keep] \
                .astype(np.int64)
        d.update({
            "center_y": g.cy[keep], "center_x": g.cx[keep],
            "nucleus_major_um": 2 * g.a[keep] * g.ps, "nucleus_minor_um": 2 * g.b[keep] * g.ps,
            "nucleus_angle_rad": g.theta[keep],
            "her2_category": np.array(HER2_CATEGORIES, dtype=object)[ex.her2_category[keep]],
            "her2_intensity": ex.her2_intensity[keep],
            "her2_completeness": ex.her2_completeness[keep],
        })
        n_mem = self.cols.get("n_membrane", np.zeros(n + 1))[1:]
        d["her2_stained_fraction"] = mean(
            self.cols.get("her2_stained", np.zeros(n + 1))[1:], n_mem)[keep] \
            if "HER2" in self.names else np.full(keep.size, np.nan)
        for mi, mname in enumerate(self.names):
            own = _MARKERS[mname].compartment
            d[f"{mname}_level"] = ex.levels[mi, 1:][keep]
            for cname in COMPARTMENTS:
                cnt = self.cols.get(f"n_{cname}", np.zeros(n + 1))[1:]
                if cname == own:
                    v = mean(self.cols.get(f"sum_{mname}", np.zeros(n + 1))[1:], cnt)
                else:
                    v = np.where(cnt > 0, 0.0, np.nan)
                d[f"{mname}_{cname}"] = v[keep]
        if g.core is not None:
            d["core_index"] = g.core[keep]  # TMA: index of the cell's core
        df = pd.DataFrame(d)
        df["her2_category"] = df["her2_category"].astype(str)
        return df


# --------------------------------------------------------------------------- results
def _version() -> str:
    try:
        from qdmed import __version__
    except ImportError:  # pragma: no cover
        return "unknown"
    return __version__


def _her2_counts(truth: Any) -> dict[str, int]:
    vc = truth["her2_category"].value_counts() if len(truth) else {}
    return {c: int(vc.get(c, 0)) for c in HER2_CATEGORIES}


@dataclass(frozen=True, eq=False)
class SyntheticTissue:
    """Cell geometry from :func:`simulate_tissue`.

    Attributes
    ----------
    nuclei, cells : ndarray (Y, X) int32
        Labels; a nucleus has the id of its cell; 0 = no cell.
    compartments : ndarray (Y, X) uint8
        :data:`COMPARTMENT_CODES`: 0 stroma/glass, 1 nucleus, 2 cytoplasm, 3 membrane.
    tissue : ndarray (Y, X) bool
        Tissue (cells or stroma) versus glass.
    cell_table : pandas.DataFrame
        cell_id, center_y, center_x (px), nucleus_major_um, nucleus_minor_um,
        nucleus_angle_rad, cell_radius_um.
    pixel_size_um : float
    params : dict
    """

    nuclei: np.ndarray
    cells: np.ndarray
    compartments: np.ndarray
    tissue: np.ndarray
    cell_table: Any
    pixel_size_um: float
    params: dict[str, Any]

    @property
    def nucleus(self) -> np.ndarray:
        return self.compartments == 1

    @property
    def cytoplasm(self) -> np.ndarray:
        return self.compartments == 2

    @property
    def membrane(self) -> np.ndarray:
        return self.compartments == 3

    @property
    def n_cells(self) -> int:
        return len(self.cell_table)

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable({"shape": list(self.cells.shape), "n_cells": self.n_cells,
                           "tissue_fraction_observed": float(self.tissue.mean()),
                           "pixel_size_um": self.pixel_size_um, "params": self.params})


@dataclass(frozen=True, eq=False)
class SyntheticField:
    """A synthetic multiplexed QD field with ground truth (from :func:`simulate_field`).

    Attributes
    ----------
    image : ndarray (Y, X, C), uint16 or float32
        Detector counts (ADU).
    abundances : ndarray (Y, X, K+1) float32
        Ground-truth abundances: markers (level x ``qd_brightness``) then autofluorescence.
        With ``noise=False``, ``image = gain * photons_per_unit * (abundances @
        (endmembers * bleach).T) + offset``.
    nuclei, cells : ndarray (Y, X) int32
        Labels (same id for a cell and its nucleus).
    compartments : ndarray (Y, X) uint8
        0 stroma/glass, 1 nucleus, 2 cytoplasm, 3 membrane.
    tissue : ndarray (Y, X) bool
    truth : pandas.DataFrame
        One row per cell: cell_id, centroid_y, centroid_x, area_px, per-compartment areas,
        center_y/x, nucleus axes, her2_category ('0', '1+', '2+', '3+'), her2_intensity,
        her2_completeness (nominal), her2_stained_fraction (rendered: the share of the
        cell's membrane pixels stained; the arc is drawn by angle around the cell's centre,
        so in a non-circular cell the two differ by up to ~0.13 and a few % of 2+ cells,
        drawn 0.9-1.0 complete, render below the scorer's 0.9), and per marker
        ``<m>_level`` (nominal) and ``<m>_<compartment>`` (mean rendered level over that
        compartment's pixels: 0 outside the marker's compartment, NaN if the cell has no
        pixel of that compartment in the image).
    marker_names, channel_names : tuple of str
    endmembers : ndarray (C, K+1)
    pixel_size_um : float
    params : dict
        Every parameter, the seed and the qdmed version (provenance).
    """

    image: np.ndarray
    abundances: np.ndarray
    nuclei: np.ndarray
    cells: np.ndarray
    compartments: np.ndarray
    tissue: np.ndarray
    truth: Any
    marker_names: tuple[str, ...]
    channel_names: tuple[str, ...]
    endmembers: np.ndarray
    pixel_size_um: float
    params: dict[str, Any] = field(repr=False)

    @property
    def n_cells(self) -> int:
        return len(self.truth)

    @property
    def nucleus(self) -> np.ndarray:
        return self.compartments == 1

    @property
    def cytoplasm(self) -> np.ndarray:
        return self.compartments == 2

    @property
    def membrane(self) -> np.ndarray:
        return self.compartments == 3

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (no pixel arrays, no per-cell table)."""
        img = self.image
        return to_jsonable({
            "kind": "SyntheticField", "shape": list(img.shape), "dtype": str(img.dtype),
            "n_cells": self.n_cells, "marker_names": list(self.marker_names),
            "channel_names": list(self.channel_names), "pixel_size_um": self.pixel_size_um,
            "her2_category_counts": _her2_counts(self.truth),
            "channel_mean": [float(img[..., c].mean()) for c in range(img.shape[2])],
            "params": self.params,
        })

    def report(self) -> str:
        d = self.to_dict()
        p = self.params
        return "\n".join([
            f"Synthetic QD field {d['shape'][0]}x{d['shape'][1]} px x {d['shape'][2]} channels "
            f"({self.pixel_size_um} um/px), preset {p['preset']!r}, seed {p['seed']}",
            f"cells: {d['n_cells']}; HER2 categories: {d['her2_category_counts']}",
            f"markers: {', '.join(self.marker_names)} (+ autofluorescence)",
            f"preset source: {p['preset_citation']}",
        ])

    def _repr_html_(self) -> str:
        import html

        return "<pre>" + html.escape(self.report()) + "</pre>"


@dataclass(frozen=True, eq=False)
class SyntheticSlide:
    """A synthetic whole slide written to OME-Zarr by :func:`simulate_slide`.

    Attributes
    ----------
    path : pathlib.Path
        The OME-Zarr store (image levels ``0, 1, ...``; labels ``labels/cells``,
        ``labels/nuclei`` when written).
    shape : (Y, X, C)
    truth : pandas.DataFrame
        Per-cell truth, same columns as :attr:`SyntheticField.truth`.
    marker_names, channel_names : tuple of str
    pixel_size_um : float
    params : dict
    """

    path: Path
    shape: tuple[int, int, int]
    truth: Any
    marker_names: tuple[str, ...]
    channel_names: tuple[str, ...]
    pixel_size_um: float
    params: dict[str, Any] = field(repr=False)
    _scene: _Scene = field(repr=False, default=None)  # type: ignore[assignment]

    @property
    def n_cells(self) -> int:
        return len(self.truth)

    def render_region(self, y0: int, y1: int, x0: int, x1: int) -> dict[str, np.ndarray]:
        """Re-render any region independently: keys image, abundances, cells, nuclei,
        compartments, tissue. Identical to the same region of the written slide."""
        h, w, _ = self.shape
        if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
            raise InputError(f"region [{y0}:{y1}, {x0}:{x1}] must lie inside the slide of "
                             f"shape {self.shape[:2]}")
        r = _render(self._scene, y0, y1, x0, x1)
        return {k: r[k] for k in ("image", "abundances", "cells", "nuclei", "compartments",
                                  "tissue")}

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable({"kind": "SyntheticSlide", "path": str(self.path),
                           "shape": list(self.shape), "n_cells": self.n_cells,
                           "marker_names": list(self.marker_names),
                           "channel_names": list(self.channel_names),
                           "pixel_size_um": self.pixel_size_um,
                           "her2_category_counts": _her2_counts(self.truth),
                           "params": self.params})


# --------------------------------------------------------------------------- public API
def _geometry_params(shape: Any, cell_density_per_mm2: Any, pixel_size_um: Any,
                     nucleus_radius_um: Any, cell_radius_um: Any, membrane_thickness_um: Any,
                     tissue_fraction: Any, seed: Any, junctions: Any = "resolved"
                     ) -> dict[str, Any]:
    tf = _positive("tissue_fraction", tissue_fraction, allow_zero=True)
    if tf > 1:
        raise InputError(f"tissue_fraction must be in [0, 1], got {tissue_fraction!r}")
    if not isinstance(junctions, str) or junctions not in JUNCTIONS:
        raise InputError(f"junctions must be one of {list(JUNCTIONS)}; got {junctions!r}")
    return {
        "shape": _shape2(shape),
        "cell_density_per_mm2": _positive("cell_density_per_mm2", cell_density_per_mm2),
        "pixel_size_um": _positive("pixel_size_um", pixel_size_um),
        "nucleus_radius_um": _mean_sd("nucleus_radius_um", nucleus_radius_um),
        "cell_radius_um": _mean_sd("cell_radius_um", cell_radius_um),
        "membrane_thickness_um": _positive("membrane_thickness_um", membrane_thickness_um),
        "tissue_fraction": tf,
        "seed": _seed(seed),
        "junctions": junctions,
    }


def _geometry_from(p: dict[str, Any]) -> _Geometry:
    return _build_geometry(p["shape"], density=p["cell_density_per_mm2"],
                           ps=p["pixel_size_um"], nucleus_radius=p["nucleus_radius_um"],
                           cell_radius=p["cell_radius_um"],
                           membrane_um=p["membrane_thickness_um"],
                           tissue_fraction=p["tissue_fraction"], seed=p["seed"],
                           discs=p.get("discs"), junctions=p.get("junctions", "resolved"))


def simulate_tissue(
    shape: tuple[int, int],
    *,
    cell_density_per_mm2: float = 3000.0,
    pixel_size_um: float = 0.5,
    nucleus_radius_um: float | tuple[float, float] = (4.0, 0.6),
    cell_radius_um: float | tuple[float, float] = (10.0, 1.5),
    membrane_thickness_um: float = 1.0,
    tissue_fraction: float = 1.0,
    seed: int | None = 0,
    junctions: str = "resolved",
) -> SyntheticTissue:
    """Simulate cell geometry: nuclei, cells and compartments.

    Parameters
    ----------
    shape : (int, int), px
        Image shape (Y, X).
    cell_density_per_mm2 : float, cells/mm2
        Mean density of cells in tissue.
    pixel_size_um : float, um/px
    nucleus_radius_um : float or (mean, sd), um
        Equivalent radius of the (elliptical, aspect ratio 1-1.5) nucleus; clamped so that
        nuclei never overlap or reach a membrane.
    cell_radius_um : float or (mean, sd), um
        Largest distance from the centre that belongs to the cell (cells are Voronoi regions
        limited by this radius; gaps are stroma).
    membrane_thickness_um : float, um
        Width of the membrane ring.
    junctions : {'resolved', 'shared'}
        How two touching cells' membranes are drawn (module docstring, Geometry):
        ``'resolved'`` (default), two rings side by side, each cell's stain on its side;
        ``'shared'``, one line of ``membrane_thickness_um``, half in each cell, every pixel
        of it showing both cells' membranes (as a light microscope sees a junction).
    tissue_fraction : float in [0, 1]
        Expected fraction of the area covered by tissue (a smooth random mask); 0 gives an
        empty slide with zero cells.
    seed : int or None
        Everything is deterministic from the seed; None draws one (recorded in ``params``).

    Returns
    -------
    SyntheticTissue

    Raises
    ------
    InputError
        A non-positive or malformed parameter, or a density too high for nuclei of at
        least max(1 um, 1 px).

    Examples
    --------
    >>> t = simulate_tissue((256, 256), seed=1)
    >>> t.cells.shape, t.cells.dtype.name, bool((t.nuclei[t.nuclei > 0] ==
    ...                                         t.cells[t.nuclei > 0]).all())
    ((256, 256), 'int32', True)
    """
    p = _geometry_params(shape, cell_density_per_mm2, pixel_size_um, nucleus_radius_um,
                         cell_radius_um, membrane_thickness_um, tissue_fraction, seed,
                         junctions)
    g = _geometry_from(p)
    h, w = p["shape"]
    geo = _render_geometry(g, 0, h, 0, w)
    tissue, _ = _tissue_maps(g, 0, h, 0, w)
    import pandas as pd

    ids = np.unique(geo["cells"])
    ids = ids[ids > 0] - 1
    table = pd.DataFrame({"cell_id": (ids + 1).astype(np.int32), "center_y": g.cy[ids],
                          "center_x": g.cx[ids], "nucleus_major_um": 2 * g.a[ids] * g.ps,
                          "nucleus_minor_um": 2 * g.b[ids] * g.ps,
                          "nucleus_angle_rad": g.theta[ids],
                          "cell_radius_um": g.radius[ids] * g.ps})
    p["qdmed_version"] = _version()
    return SyntheticTissue(nuclei=geo["nuclei"], cells=geo["cells"],
                           compartments=geo["compartments"], tissue=tissue | (geo["cells"] > 0),
                           cell_table=table, pixel_size_um=g.ps, params=to_jsonable(p))


def _panel_spectra(panel: Any, endmembers: Any, marker_names: Any, channel_names: Any
                   ) -> tuple[Any, Any, Any]:
    """The endmembers, markers and channel names of a simulation: those of ``panel`` (a
    spectral :class:`~qdmed.imaging.Panel` with an autofluorescence spectrum, the last
    column), or as given. Both, or neither, is refused."""
    if panel is None:
        if endmembers is None or marker_names is None:
            raise InputError("give the panel to simulate (panel=breast_panel_5plex(), or a "
                             "Panel of design_panel / Panel.from_file), or endmembers and "
                             "marker_names")
        return endmembers, marker_names, channel_names
    from qdmed.imaging._panel import Panel

    if not isinstance(panel, Panel):
        raise InputError(f"panel must be a qdmed Panel (breast_panel_5plex(), design_panel(...), "
                         f"Panel.from_file(...)); got {type(panel).__name__}")
    given = [n for n, v in (("endmembers", endmembers), ("marker_names", marker_names),
                            ("channel_names", channel_names)) if v is not None]
    if given:
        raise InputError(f"give the panel or {', '.join(given)}, not both: the panel holds "
                         "its endmembers, markers and channels")
    if panel.unmixed:
        raise InputError("an already-unmixed panel (unmixed_panel) has no spectra to "
                         "simulate with: give a spectral panel")
    if panel.autofluorescence is None:
        raise InputError("the synthetic tissue draws autofluorescence: give a panel with an "
                         "autofluorescence spectrum (design_panel's default, "
                         "breast_panel_5plex())")
    return panel.endmembers, list(panel.markers), list(panel.channel_names)


def _scene_params(preset: Any, endmembers: Any, marker_names: Any, channel_names: Any,
                  autofluorescence: Any, qd_brightness: Any, photons_per_unit: Any,
                  read_noise_e: Any, gain_adu_per_e: Any, offset_adu: Any, photobleaching: Any,
                  noise: Any, dtype: Any, bit_depth: Any = 16, panel: Any = None
                  ) -> dict[str, Any]:
    pr = _get_preset(preset)
    endmembers, marker_names, channel_names = _panel_spectra(panel, endmembers, marker_names,
                                                             channel_names)
    if isinstance(marker_names, str) or marker_names is None:
        raise InputError(f"marker_names must be a sequence of marker names, got "
                         f"{marker_names!r}; known: {', '.join(_MARKERS)}")
    names = tuple(str(m) for m in marker_names)
    for m in names:
        if m not in _MARKERS:
            raise UnknownNameError(
                f"the synthetic tissue has no expression model for marker {m!r} (marker_names, "
                f"the panel's markers); it models {', '.join(_MARKERS)}: simulate a panel of "
                "those (a panel of other markers is analysed on real slides)")
    if len(set(names)) != len(names):
        raise InputError(f"marker_names must be unique, got {list(names)}")
    k = len(names)
    e = np.asarray(endmembers, dtype=np.float64)
    if e.ndim != 2 or e.shape[1] != k + 1 or e.shape[0] < 1:
        raise InputError(f"endmembers must be (n_channels, K+1) = (C, {k + 1}) for {k} "
                         f"markers plus autofluorescence (last column), got shape {e.shape}")
    if not np.all(np.isfinite(e)) or np.any(e < 0):
        raise InputError("endmembers must be finite and non-negative")
    nc = e.shape[0]
    if channel_names is None:
        chn = tuple(f"C{i}" for i in range(nc))
    else:
        chn = tuple(str(c) for c in channel_names)
        if isinstance(channel_names, str) or len(chn) != nc:
            raise InputError(f"channel_names must name the {nc} rows of endmembers, got "
                             f"{channel_names!r}")
    br = np.broadcast_to(np.asarray(qd_brightness, dtype=np.float64), (k,)).copy() \
        if np.ndim(qd_brightness) == 0 or np.size(qd_brightness) == k else None
    if br is None or not np.all(np.isfinite(br)) or np.any(br < 0):
        raise InputError(f"qd_brightness must be a number >= 0 or {k} of them (one per "
                         f"marker; 0: the label is absent, as on a single-stain or unstained "
                         f"control), got {qd_brightness!r}")
    if photobleaching is None:
        rate = np.zeros(k + 1)
    else:
        try:
            rate = np.broadcast_to(np.asarray(photobleaching, dtype=np.float64),
                                   (k + 1,)).copy()
        except ValueError:
            rate = np.array([np.nan])
        if not np.all(np.isfinite(rate)) or np.any(rate < 0) or np.any(rate >= 1):
            raise InputError(f"photobleaching must be None or a fraction lost per exposure in "
                             f"[0, 1), scalar or one per component ({k + 1}), got "
                             f"{photobleaching!r}")
    bleach = (1.0 - rate)[None, :] ** np.arange(nc)[:, None]
    if dtype not in ("uint16", "float32", np.uint16, np.float32):
        raise InputError(f"dtype must be 'uint16' or 'float32', got {dtype!r}")
    if isinstance(bit_depth, bool) or not isinstance(bit_depth, int | np.integer) \
            or not 8 <= bit_depth <= 16:
        raise InputError(f"bit_depth must be an integer from 8 to 16 (the detector's ADC bits; "
                         f"uint16 values are clipped to 2**bit_depth - 1), got {bit_depth!r}")
    if np.dtype(dtype) != np.uint16 and bit_depth != 16:
        raise InputError(f"bit_depth={bit_depth} needs dtype='uint16' (float32 images are not "
                         f"clipped), got dtype={dtype!r}")
    return {
        "preset": pr, "marker_names": names, "channel_names": chn, "endmembers": e,
        "brightness": br, "bleach": bleach, "photobleaching": rate,
        "autofluorescence": _positive("autofluorescence", autofluorescence, allow_zero=True),
        # a 16-bit pixel holds 65535: a million photons a unit is far past any detector
        # (a review's 1e300 failed inside numpy's Poisson sampler)
        "photons_per_unit": _positive("photons_per_unit", photons_per_unit, most=1e6,
                                      why=" (a 16-bit pixel holds 65535 counts)"),
        "read_noise_e": _positive("read_noise_e", read_noise_e, allow_zero=True),
        "gain_adu_per_e": _positive("gain_adu_per_e", gain_adu_per_e),
        "offset_adu": _positive("offset_adu", offset_adu, allow_zero=True, most=65535.0,
                                why=" (a 16-bit pixel's ceiling; a review's 1e12 gave an "
                                    "image saturated everywhere, unsaid)"),
        "noise": bool(noise), "dtype": np.dtype(dtype), "bit_depth": int(bit_depth),
    }


def _make_scene(gp: dict[str, Any], sp: dict[str, Any]) -> _Scene:
    g = _geometry_from(gp)
    ex = _expression_by_core(g, sp["core_presets"], sp["marker_names"]) \
        if sp.get("core_presets") else _expression(g, sp["preset"], sp["marker_names"])
    return _Scene(geometry=g, expression=ex, endmembers=sp["endmembers"],
                  brightness=sp["brightness"], bleach=sp["bleach"],
                  autofluorescence=sp["autofluorescence"],
                  photons_per_unit=sp["photons_per_unit"], read_noise_e=sp["read_noise_e"],
                  gain=sp["gain_adu_per_e"], offset=sp["offset_adu"], noise=sp["noise"],
                  dtype=sp["dtype"], bit_depth=sp["bit_depth"])


def _provenance(gp: dict[str, Any], sp: dict[str, Any]) -> dict[str, Any]:
    pr: Preset = sp["preset"]
    d = dict(gp)
    d.update({k: v for k, v in sp.items()
              if k not in ("preset", "bleach", "brightness", "core_presets")})
    d.pop("discs", None)  # TMA cores are described by simulate_tma's 'cores'
    if sp.get("core_presets"):
        d["core_presets"] = [c.name for c in sp["core_presets"]]
    d.update(preset=pr.name, preset_citation=pr.citation, preset_doi=pr.doi,
             qd_brightness=sp["brightness"], dtype=str(sp["dtype"]),
             qdmed_version=_version(),
             model={"lattice": "hexagonal", "jitter": _JITTER, "occupancy": _OCCUPANCY,
                    "noise_block_px": _NOISE_BLOCK, "her2_category_model":
                    {k: [list(a), list(b)] for k, (a, b) in HER2_CATEGORY_MODEL.items()}})
    return to_jsonable(d)


def simulate_field(
    shape: tuple[int, int],
    *,
    preset: str | Preset,
    panel: Any = None,
    endmembers: Any = None,
    marker_names: Sequence[str] | None = None,
    channel_names: Sequence[str] | None = None,
    autofluorescence: float = 0.3,
    qd_brightness: float | Sequence[float] = 1.0,
    photons_per_unit: float = 1000.0,
    read_noise_e: float = 2.0,
    gain_adu_per_e: float = 1.0,
    offset_adu: float = 0.0,
    photobleaching: float | Sequence[float] | None = None,
    noise: bool = True,
    dtype: str = "uint16",
    bit_depth: int = 16,
    seed: int | None = 0,
    pixel_size_um: float = 0.5,
    cell_density_per_mm2: float = 3000.0,
    nucleus_radius_um: float | tuple[float, float] = (4.0, 0.6),
    cell_radius_um: float | tuple[float, float] = (10.0, 1.5),
    membrane_thickness_um: float = 1.0,
    tissue_fraction: float = 1.0,
    junctions: str = "resolved",
) -> SyntheticField:
    """Simulate one multiplexed QD field of view with ground truth.

    Parameters
    ----------
    shape : (int, int), px
    preset : str or Preset
        A name from :func:`list_presets` or a custom :class:`Preset`.
    panel : Panel, optional
        A spectral panel with an autofluorescence spectrum (e.g. ``breast_panel_5plex()``):
        its endmembers, markers and channel names. Or give these three instead:
    endmembers : array (C, K+1)
        Detected signal per unit abundance of each component in each channel: columns are
        the markers in ``marker_names`` order, the last column autofluorescence.
    marker_names : sequence of str
        K markers from :func:`list_markers`; markers the preset does not list are absent.
    channel_names : sequence of str, optional
        Default ``C0 .. C{C-1}``.
    autofluorescence : float, abundance units
        Autofluorescence of stroma in tissue (cells: nucleus x0.35, cytoplasm/membrane x0.7),
        modulated by a smooth random field; exactly 0 on glass.
    qd_brightness : float or (K,) floats >= 0
        Relative brightness of each marker's QD conjugate: abundance = level x brightness
        (0: the label is absent, for single-stain, fluorescence-minus-one or unstained
        controls).
    photons_per_unit : float, e-
        Expected photoelectrons per unit of ``abundances @ endmembers.T``. The command
        line's ``qdmed image simulate`` defaults to 300: slides that meet (controls and the
        tissue of one calibration) need the same value, which nothing checks.
    read_noise_e : float, e- rms
    gain_adu_per_e : float, ADU/e-
    offset_adu : float, ADU
    photobleaching : None, float or (K+1,) floats
        Fraction of signal lost per exposure; channels are taken as acquired one after
        another in order, so channel c is scaled by ``(1 - rate) ** c``. None: no bleaching.
    noise : bool
        False gives the expected counts without shot or read noise.
    dtype : 'uint16' or 'float32'
        uint16 is rounded and clipped to [0, 2**bit_depth - 1].
    bit_depth : int, 8-16
        Bits of the detector's ADC (uint16 only): values above ``2**bit_depth - 1`` are
        clipped there, i.e. saturated (12 for a 12-bit camera).
    seed : int or None
    pixel_size_um, cell_density_per_mm2, nucleus_radius_um, cell_radius_um,
    membrane_thickness_um, tissue_fraction, junctions
        Geometry, as in :func:`simulate_tissue`. With ``junctions='shared'`` the truth's
        membrane columns are the mean of what is drawn in the cell's membrane pixels,
        its neighbours' share of the junctions included (a 0 cell beside 3+ cells reads
        above 0); ``her2_*`` and ``{marker}_level`` keep the cell's own.

    Returns
    -------
    SyntheticField

    Raises
    ------
    InputError
        Malformed parameters (the message names the parameter, what is accepted and the
        value received).
    UnknownNameError
        Unknown preset or marker name.

    Notes
    -----
    Expected counts per pixel and channel c:
    ``lambda_c = photons_per_unit * sum_j E[c, j] * (1 - r_j) ** c * A_j``; the recorded
    value is ``gain * (Poisson(lambda_c) + Normal(0, read_noise_e)) + offset`` (uint16:
    rounded and clipped to ``[0, 2**bit_depth - 1]``, the saturation of a real detector). Noise is
    drawn per aligned 256 x 256 px block from ``default_rng([seed, tag, block_y, block_x])``
    so a field equals the same region of :func:`simulate_slide` with the same parameters.
    """
    gp = _geometry_params(shape, cell_density_per_mm2, pixel_size_um, nucleus_radius_um,
                          cell_radius_um, membrane_thickness_um, tissue_fraction, seed,
                          junctions)
    sp = _scene_params(preset, endmembers, marker_names, channel_names, autofluorescence,
                       qd_brightness, photons_per_unit, read_noise_e, gain_adu_per_e,
                       offset_adu, photobleaching, noise, dtype, bit_depth, panel)
    sc = _make_scene(gp, sp)
    h, w = gp["shape"]
    r = _render(sc, 0, h, 0, w)
    acc = _TruthAccumulator(sc.geometry.n, sp["marker_names"])
    acc.add(r, 0, 0)
    return SyntheticField(image=r["image"], abundances=r["abundances"], nuclei=r["nuclei"],
                          cells=r["cells"], compartments=r["compartments"], tissue=r["tissue"],
                          truth=acc.table(sc.geometry, sc.expression),
                          marker_names=sp["marker_names"], channel_names=sp["channel_names"],
                          endmembers=sp["endmembers"], pixel_size_um=gp["pixel_size_um"],
                          params=_provenance(gp, sp))


#: Most cells a simulated slide or TMA may hold: its cell list is held in memory (~1.4 kB a
#: cell, 2.8 GB here; a 32k x 32k slide at 0.5 um/px holds ~800,000).
MAX_SIMULATED_CELLS = 2_000_000


def simulate_slide(
    path: str | os.PathLike,
    shape: tuple[int, int],
    *,
    preset: str | Preset,
    panel: Any = None,
    endmembers: Any = None,
    marker_names: Sequence[str] | None = None,
    channel_names: Sequence[str] | None = None,
    tile: int = 1024,
    pyramid_levels: int | str = "auto",
    write_labels: bool = True,
    overwrite: bool = True,
    autofluorescence: float = 0.3,
    qd_brightness: float | Sequence[float] = 1.0,
    photons_per_unit: float = 1000.0,
    read_noise_e: float = 2.0,
    gain_adu_per_e: float = 1.0,
    offset_adu: float = 0.0,
    photobleaching: float | Sequence[float] | None = None,
    noise: bool = True,
    dtype: str = "uint16",
    bit_depth: int = 16,
    seed: int | None = 0,
    pixel_size_um: float = 0.5,
    cell_density_per_mm2: float = 3000.0,
    nucleus_radius_um: float | tuple[float, float] = (4.0, 0.6),
    cell_radius_um: float | tuple[float, float] = (10.0, 1.5),
    membrane_thickness_um: float = 1.0,
    tissue_fraction: float = 1.0,
    progress: bool = False,
    junctions: str = "resolved",
) -> SyntheticSlide:
    """Simulate a whole-slide-sized image tile by tile, straight into an OME-Zarr store.

    The cell list (centres, nucleus ellipses, radii, levels) is generated once for the whole
    slide (a table: ~3,000 cells/mm2, ~2e5 cells for 16k x 16k px at 0.5 um/px); each tile is
    rendered from it, so a pixel's labels and expected counts depend only on the cell list
    and its global position, and noise comes from per-256-px-block RNGs. The result does not
    depend on ``tile``, and any region can be re-rendered alone
    (:meth:`SyntheticSlide.render_region`). Memory holds a few tiles plus the cell list
    (~1.4 kB per cell: 0.35 GB for a 16k x 16k slide of ~200k cells, 1.2 GB at 32k).

    Parameters
    ----------
    path : str or path-like
        Destination OME-Zarr folder (NGFF 0.4, Zarr v2), written atomically.
    shape : (int, int), px
    tile : int, px
        Tile edge used for rendering; a multiple of 256 avoids re-rendering noise blocks
        shared by two tiles. The zarr chunk edge is 1024 px when ``tile`` is 1024 times a
        power of two, else ``tile``.
    pyramid_levels : int or 'auto'
        Resolution levels written (2x2 mean each).
    write_labels : bool
        Also write ``labels/cells`` and ``labels/nuclei`` (NGFF labels, int32).
    overwrite : bool
    progress : bool
        A progress bar of the tiles rendered, on stderr.
    Other parameters
        As in :func:`simulate_field`.

    Returns
    -------
    SyntheticSlide
        Path, shape, per-cell truth table and parameters.

    Raises
    ------
    InputError, UnknownNameError
        As :func:`simulate_field`; also a bad ``tile`` or an existing path with
        ``overwrite=False``.
    """
    gp = _geometry_params(shape, cell_density_per_mm2, pixel_size_um, nucleus_radius_um,
                          cell_radius_um, membrane_thickness_um, tissue_fraction, seed,
                          junctions)
    sp = _scene_params(preset, endmembers, marker_names, channel_names, autofluorescence,
                       qd_brightness, photons_per_unit, read_noise_e, gain_adu_per_e,
                       offset_adu, photobleaching, noise, dtype, bit_depth, panel)
    return _write_scene(path, gp, sp, tile=tile, pyramid_levels=pyramid_levels,
                        write_labels=write_labels, overwrite=overwrite, progress=progress)


def _write_scene(path, gp: dict[str, Any], sp: dict[str, Any], *, tile, pyramid_levels,
                 write_labels, overwrite, extra: dict[str, Any] | None = None,
                 progress: bool = False) -> SyntheticSlide:
    """Render a scene tile by tile into an OME-Zarr store (:func:`simulate_slide`); with
    ``progress``, a bar counts the tiles (a 4096^2 slide takes about a minute)."""
    from qdmed.imaging._analyze import _progress
    from qdmed.imaging._slideio import _auto_levels, _check_dest, _ZarrImageWriter

    if isinstance(tile, bool) or not isinstance(tile, int | np.integer) or tile < 16:
        raise InputError(f"tile must be an integer >= 16 px, got {tile!r}")
    tile = int(tile)
    if str(path).lower().endswith((".tif", ".tiff", ".qptiff", ".svs", ".ndpi")):
        # a folder named like a TIFF would then be refused by every reader as "a directory"
        raise InputError(f"{path}: a simulated slide or TMA is written as OME-Zarr (a "
                         "folder); give a path ending in .zarr (e.g. slide.ome.zarr). An "
                         "OME-TIFF: a field from simulate_field, written by write_ome_tiff")
    h, w = gp["shape"]
    discs = gp.get("discs")  # a TMA's tissue is its cores
    area_px = (float(np.sum(np.pi * discs[:, 2] ** 2)) if discs is not None and len(discs)
               else h * w)
    n_cells = (area_px * (gp["pixel_size_um"] / 1000.0) ** 2 * gp["cell_density_per_mm2"]
               * gp["tissue_fraction"])
    if n_cells > MAX_SIMULATED_CELLS:  # the cell list is held whole (~1.4 kB a cell)
        raise InputError(f"a {h} x {w} px scene would hold ~{n_cells:.3g} cells (~"
                         f"{1.4e3 * n_cells / 1e9:.3g} GB of cell list in memory); up to "
                         f"{MAX_SIMULATED_CELLS:,} are simulated (a 16k x 16k slide holds "
                         "~200,000): give a smaller size or grid")
    p = _check_dest(path, overwrite)
    sc = _make_scene(gp, sp)
    nc = sp["endmembers"].shape[0]
    n_levels = _auto_levels((h, w), tile, pyramid_levels)
    params = _provenance(gp, sp)
    params.update(extra or {})
    # 1024 px zarr chunks when the tile is a power-of-two multiple of 1024 (so tile writes,
    # halved at every pyramid level, still fill whole chunks): an analysis tile read with its
    # margins then decompresses about half as much as with 2048 px chunks (0.37 -> 0.20 s for
    # a 2208^2 x 8 region, measured). Other tiles keep chunk = tile.
    q, r = divmod(tile, 1024)
    chunk = 1024 if r == 0 and q & (q - 1) == 0 else tile
    params.update(tile=tile, chunk=chunk, write_labels=bool(write_labels))
    writer = _ZarrImageWriter(p, (h, w, nc), sp["dtype"], channel_names=sp["channel_names"],
                              pixel_size_um=gp["pixel_size_um"], chunks=(chunk, chunk),
                              pyramid_levels=n_levels, name=p.name,
                              significant_bits=sp["bit_depth"] if sp["bit_depth"] < 16 else None)
    try:
        lab_arr = writer.add_label("cells") if write_labels else None
        nuc_arr = writer.add_label("nuclei") if write_labels else None
        acc = _TruthAccumulator(sc.geometry.n, sp["marker_names"])
        with _progress(progress, -(-h // tile) * -(-w // tile), 0,
                       f"{p.name} (tiles)") as advance:
            for y0 in range(0, h, tile):
                for x0 in range(0, w, tile):
                    y1, x1 = min(h, y0 + tile), min(w, x0 + tile)
                    r = _render(sc, y0, y1, x0, x1, want_abundances=False)
                    writer.write(y0, x0, r["image"])
                    if lab_arr is not None:
                        lab_arr[y0:y1, x0:x1] = r["cells"]
                        nuc_arr[y0:y1, x0:x1] = r["nuclei"]
                    acc.add(r, y0, x0)
                    advance()
        truth = acc.table(sc.geometry, sc.expression)
        writer.finish(extra_attrs={"synthetic": params})
    except BaseException:
        writer.abort()
        raise
    return SyntheticSlide(path=p, shape=(h, w, nc), truth=truth,
                          marker_names=sp["marker_names"], channel_names=sp["channel_names"],
                          pixel_size_um=gp["pixel_size_um"], params=params, _scene=sc)
