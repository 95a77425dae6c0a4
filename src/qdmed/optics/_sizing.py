"""Empirical sizing curves: first-exciton absorption peak <-> nanocrystal size.

Each published curve is one :class:`SizingCurve` in a registry, with its citation, formula,
validity range and reference values; forward and inverse are vectorized over numpy arrays.
The valid ranges are the guard ranges of the reference document (qd-physics.md §1): the span of
the calibration data, narrowed where a polynomial misbehaves (CdTe: D < 0 below ~447 nm;
CdSe-Yu blows up toward the bulk gap; Jasieniak non-monotonic below ~335 nm).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from qdmed.constants import HC_EV_NM
from qdmed.errors import ExtrapolationWarning, InputError, OutOfRangeError, UnknownNameError
from qdmed.references import (
    ALMEIDA2023,
    JASIENIAK2009,
    MOREELS2007,
    MOREELS2009,
    PENG1998,
    YU2003,
    Reference,
)

#: Edge length of a regular tetrahedron -> diameter of the sphere of equal volume:
#: V = L^3 / (6 sqrt 2) = pi d^3 / 6  =>  d = L (1 / (sqrt(2) pi))^(1/3).
TETRAHEDRON_EDGE_TO_SPHERE_DIAMETER = (1.0 / (np.sqrt(2.0) * np.pi)) ** (1.0 / 3.0)


def _as_float_array(x, name: str) -> np.ndarray:
    try:
        arr = np.asarray(x, dtype=float)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number or an array of numbers, got {x!r}") from None
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{name} must be finite, got {x!r}")
    if np.any(arr <= 0):
        bad = arr[arr <= 0].ravel()[0]
        raise InputError(f"{name} must be positive, got {bad:g}")
    return arr


@dataclass(frozen=True)
class SizingCurve:
    """One published size <-> first-exciton-peak relation.

    Attributes
    ----------
    name : str
        Registry key, e.g. ``"yu2003-CdSe"``.
    material : str
        Material symbol.
    reference : Reference
        Source publication.
    formula : str
        The equation as published (D or d in nm, lambda in nm, E in eV).
    peak_range_nm : (float, float)
        Validity range of the first-exciton peak wavelength, nm.
    size_quantity : str
        What the curve's size means: ``"diameter"`` (sphere) or ``"edge_length"`` (tetrahedron).
    note : str
        Caveats (provenance tags, known deviations).
    """

    name: str
    material: str
    reference: Reference
    formula: str
    peak_range_nm: tuple[float, float]
    size_quantity: str
    _size: Callable = field(repr=False)  # peak_nm -> size quantity (nm)
    _peak: Callable = field(repr=False)  # size quantity (nm) -> peak_nm
    note: str = ""
    to_diameter_factor: float = 1.0

    # -- ranges -------------------------------------------------------------------------
    @property
    def size_range_nm(self) -> tuple[float, float]:
        """Validity range in the curve's own size quantity (nm)."""
        a, b = (float(self._size(np.array(x))) for x in self.peak_range_nm)
        return (min(a, b), max(a, b))

    @property
    def diameter_range_nm(self) -> tuple[float, float]:
        """Validity range as (equivalent-sphere) diameter, nm."""
        lo, hi = self.size_range_nm
        return (lo * self.to_diameter_factor, hi * self.to_diameter_factor)

    def _guard(self, values, lo, hi, what, unit, extrapolate):
        outside = (values < lo * (1 - 1e-12)) | (values > hi * (1 + 1e-12))
        if np.any(outside):
            bad = values[outside].ravel()[0]
            msg = (
                f"{what} {bad:g} {unit} is outside the validity range {lo:.4g}-{hi:.4g} {unit} "
                f"of sizing curve {self.name} ({self.reference.citation.split('.')[0]})"
            )
            if not extrapolate:
                raise OutOfRangeError(msg + "; pass extrapolate=True (CLI: --extrapolate) to evaluate anyway")
            warnings.warn(msg + "; extrapolating", ExtrapolationWarning, stacklevel=4)

    # -- forward / inverse ----------------------------------------------------------------
    def size_from_peak(self, peak_nm, *, extrapolate: bool = False):
        """Curve's size quantity (nm) from the first-exciton peak (nm)."""
        lam = _as_float_array(peak_nm, "peak_nm")
        self._guard(lam, *self.peak_range_nm, "first-exciton peak", "nm", extrapolate)
        out = self._size(lam)
        if np.any(~np.isfinite(out)) or np.any(out <= 0):
            raise OutOfRangeError(
                f"sizing curve {self.name} gives no physical size for peak_nm={peak_nm!r}"
            )
        return out if out.ndim else float(out)

    def diameter_from_peak(self, peak_nm, *, extrapolate: bool = False):
        """(Equivalent-sphere) diameter in nm from the first-exciton peak (nm)."""
        return self.size_from_peak(peak_nm, extrapolate=extrapolate) * self.to_diameter_factor

    def peak_from_size(self, size_nm, *, extrapolate: bool = False):
        """First-exciton peak (nm) from the curve's own size quantity (nm)."""
        s = _as_float_array(size_nm, "size_nm")
        self._guard(s, *self.size_range_nm, self.size_quantity.replace("_", " "), "nm",
                    extrapolate)
        out = self._peak(s)
        if np.any(~np.isfinite(out)):
            raise OutOfRangeError(
                f"sizing curve {self.name} cannot be inverted at size {size_nm!r} nm"
            )
        return out if out.ndim else float(out)

    def peak_from_diameter(self, diameter_nm, *, extrapolate: bool = False):
        """First-exciton peak (nm) from the (equivalent-sphere) diameter (nm)."""
        d = _as_float_array(diameter_nm, "diameter_nm")
        return self.peak_from_size(d / self.to_diameter_factor, extrapolate=extrapolate)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "material": self.material,
            "formula": self.formula,
            "size_quantity": self.size_quantity,
            "peak_range_nm": list(self.peak_range_nm),
            "size_range_nm": [round(x, 4) for x in self.size_range_nm],
            "diameter_range_nm": [round(x, 4) for x in self.diameter_range_nm],
            "note": self.note,
            "reference": self.reference.to_dict(),
        }


# ----------------------------------------------------------------------------------------
# Polynomial curves D(lambda): the inverse lambda(D) is found on the monotone branch by a
# dense table + Newton polish (vectorized; exact to ~1e-10 nm).
# ----------------------------------------------------------------------------------------
def _poly_curve(coeffs_high_first, monotone_nm):
    p = np.poly1d(coeffs_high_first)
    dp = p.deriv()
    grid = np.linspace(*monotone_nm, 8001)
    vals = p(grid)
    if not np.all(np.diff(vals) > 0):  # pragma: no cover - registry self-check
        raise RuntimeError("polynomial is not increasing on its declared monotone branch")

    def size(lam):
        return p(lam)

    def peak(d):
        lam = np.interp(d, vals, grid, left=np.nan, right=np.nan)
        for _ in range(3):
            lam = lam - (p(lam) - d) / dp(lam)
        return lam

    return size, peak


_YU_CDSE = [1.6122e-9, -2.6575e-6, 1.6242e-3, -0.4277, 41.57]
_YU_CDTE = [9.8127e-7, -1.7147e-3, 1.0064, -194.84]
_YU_CDS = [-6.6521e-8, 1.9557e-4, -9.2352e-2, 13.29]
_JAS_CDSE = [1.62974e-9, -2.85743e-6, 1.8873e-3, -0.54736, 59.60816]


def _moreels_pbs():
    # E0 = 0.41 + 1/(0.0252 d^2 + 0.283 d); inverse is the positive root of a quadratic.
    def size(lam):
        e = HC_EV_NM / lam
        with np.errstate(invalid="ignore", divide="ignore"):
            return (-0.283 + np.sqrt(0.283**2 + 4 * 0.0252 / (e - 0.41))) / (2 * 0.0252)

    def peak(d):
        return HC_EV_NM / (0.41 + 1.0 / (0.0252 * d**2 + 0.283 * d))

    return size, peak


def _moreels_pbse():
    # E0 = 0.278 + 1/(0.016 d^2 + 0.209 d + 0.45)
    def size(lam):
        e = HC_EV_NM / lam
        with np.errstate(invalid="ignore", divide="ignore"):
            c = 0.45 - 1.0 / (e - 0.278)
            return (-0.209 + np.sqrt(0.209**2 - 4 * 0.016 * c)) / (2 * 0.016)

    def peak(d):
        return HC_EV_NM / (0.278 + 1.0 / (0.016 * d**2 + 0.209 * d + 0.45))

    return size, peak


def _almeida_inp():
    # E1S = 1.33 + 9.128 (L / Angstrom)^-0.684  (L = tetrahedron edge length)
    def size(lam):
        e = HC_EV_NM / lam
        with np.errstate(invalid="ignore"):
            return ((e - 1.33) / 9.128) ** (-1.0 / 0.684) / 10.0

    def peak(edge_nm):
        return HC_EV_NM / (1.33 + 9.128 * (10.0 * edge_nm) ** -0.684)

    return size, peak


#: Peng, Wickham & Alivisatos (JACS 1998, SI table, p. 3): InAs first-exciton absorption peak
#: (nm), PL peak (eV) and TEM size (nm), 20 rows as printed. Transcription checked row by row
#: against a curated, independently audited copy of the SI (MatterSyn paper review
#: ``peng1998``, github.com/cuiyist/mattersyn, data/paper-reviews/peng1998.json) [C].
PENG1998_INAS_TABLE = (
    (838, 1.41, 2.3), (861, 1.38, 2.4), (886, 1.34, 2.6), (905, 1.31, 2.8), (929, 1.28, 3.0),
    (954, 1.24, 3.2), (976, 1.22, 3.4), (1004, 1.19, 3.6), (1029, 1.16, 3.8), (1051, 1.13, 4.0),
    (1078, 1.10, 4.2), (1107, 1.08, 4.4), (1132, 1.05, 4.6), (1159, 1.03, 4.8), (1187, 1.01, 5.0),
    (1216, 0.98, 5.2), (1246, 0.96, 5.4), (1272, 0.94, 5.6), (1305, 0.92, 5.8), (1333, 0.90, 6.0),
)


def _table_curve(peaks_nm, sizes_nm):
    """Monotone piecewise-cubic (PCHIP, Fritsch-Carlson) interpolation through a published
    table, size(peak), continued linearly (end slopes) outside the table; the inverse is found
    on a dense table and polished by Newton steps.

    PCHIP passes through every row exactly and never overshoots between rows, so a monotone
    table gives a monotone curve (a polynomial fit to the same rows need not)."""
    from scipy.interpolate import PchipInterpolator

    x = np.asarray(peaks_nm, float)
    f = PchipInterpolator(x, np.asarray(sizes_nm, float), extrapolate=True)
    df = f.derivative()
    lo, hi = x[0], x[-1]
    s_lo, s_hi = float(df(lo)), float(df(hi))

    def size(lam):
        lam = np.asarray(lam, float)
        inside = f(np.clip(lam, lo, hi))
        return np.where(lam < lo, f(lo) + s_lo * (lam - lo),
                        np.where(lam > hi, f(hi) + s_hi * (lam - hi), inside))

    def slope(lam):
        return np.where(lam < lo, s_lo, np.where(lam > hi, s_hi, df(np.clip(lam, lo, hi))))

    grid = np.linspace(lo, hi, 16001)
    vals = size(grid)
    if not np.all(np.diff(vals) > 0):  # pragma: no cover - registry self-check
        raise RuntimeError("tabulated sizing curve is not increasing")
    d_lo, d_hi = float(vals[0]), float(vals[-1])

    def peak(d):
        d = np.asarray(d, float)
        lam = np.interp(d, vals, grid)
        for _ in range(3):
            lam = lam - (size(lam) - d) / slope(lam)
        # the linear continuations invert exactly
        return np.where(d < d_lo, lo + (d - d_lo) / s_lo,
                        np.where(d > d_hi, hi + (d - d_hi) / s_hi, lam))

    return size, peak


def _build_registry() -> dict[str, SizingCurve]:
    reg: dict[str, SizingCurve] = {}

    def add(curve):
        reg[curve.name] = curve

    s, p = _poly_curve(_YU_CDSE, (400.0, 700.0))
    add(SizingCurve(
        "yu2003-CdSe", "CdSe", YU2003,
        "D = 1.6122e-9 L^4 - 2.6575e-6 L^3 + 1.6242e-3 L^2 - 0.4277 L + 41.57",
        (450.0, 650.0), "diameter", s, p,
        "Coefficients identical in >= 4 independent codes [C]; the paper puts size and "
        "extinction uncertainty at +/-10-15 % (1 s.d.). Blows up toward the bulk gap above "
        "650 nm.",
    ))
    s, p = _poly_curve(_YU_CDTE, (460.0, 800.0))
    add(SizingCurve(
        "yu2003-CdTe", "CdTe", YU2003,
        "D = 9.8127e-7 L^3 - 1.7147e-3 L^2 + 1.0064 L - 194.84",
        (490.0, 730.0), "diameter", s, p,
        "D < 0 below ~447 nm (non-physical); guard 490-730 nm [E]. Kamal 2012 reports the "
        "small-size extinction deviates up to 3x.",
    ))
    s, p = _poly_curve(_YU_CDS, (280.0, 500.0))
    add(SizingCurve(
        "yu2003-CdS", "CdS", YU2003,
        "D = -6.6521e-8 L^3 + 1.9557e-4 L^2 - 9.2352e-2 L + 13.29",
        (300.0, 470.0), "diameter", s, p,
        "Small-size calibration points mostly from Vossmeyer 1994 (XRD) [T].",
    ))
    s, p = _poly_curve(_JAS_CDSE, (400.0, 700.0))
    add(SizingCurve(
        "jasieniak2009-CdSe", "CdSe", JASIENIAK2009,
        "d = 59.60816 - 0.54736 L + 1.8873e-3 L^2 - 2.85743e-6 L^3 + 1.62974e-9 L^4",
        (450.0, 660.0), "diameter", s, p,
        "Coefficients from one public implementation [C1] labelled 'valid 2 to 8 nm'; "
        "non-monotonic below ~335 nm.",
    ))
    s, p = _moreels_pbs()
    add(SizingCurve(
        "moreels2009-PbS", "PbS", MOREELS2009,
        "E0 = 0.41 + 1/(0.0252 d^2 + 0.283 d)  (eV, d in nm; Eq. 4)",
        (800.0, 2000.0), "diameter", s, p,
        "Identical in three independent sources [C]; closed-form inverse.",
    ))
    s, p = _moreels_pbse()
    add(SizingCurve(
        "moreels2007-PbSe", "PbSe", MOREELS2007,
        "E0 = 0.278 + 1/(0.016 d^2 + 0.209 d + 0.45)  (eV, d in nm)",
        (1000.0, 2500.0), "diameter", s, p,
        "[C]; the validity range is the typical synthesis span (about 3-10 nm) [M].",
    ))
    s, p = _almeida_inp()
    add(SizingCurve(
        "almeida2023-InP", "InP", ALMEIDA2023,
        "E1S = 1.33 + 9.128 (L/Angstrom)^-0.684  (eV; L = tetrahedron edge length)",
        (448.0, 570.0), "edge_length", s, p,
        "InP QDs are tetrahedral: the curve's size is the edge length L, converted to the "
        "equivalent-volume sphere diameter d = 0.6083 L. Fit as transcribed [T]; it gives "
        "2.765 eV at L = 1.50 nm against 2.70 eV measured (0.065 eV). Range = the paper's own "
        "data, L = 1.5-3.2 nm.",
        TETRAHEDRON_EDGE_TO_SPHERE_DIAMETER,
    ))
    rows = np.array(PENG1998_INAS_TABLE, float)
    s, p = _table_curve(rows[:, 0], rows[:, 2])
    add(SizingCurve(
        "peng1998-InAs", "InAs", PENG1998,
        "d(lambda): monotone cubic (PCHIP) interpolation through the 20 rows of the SI table "
        "(838 nm, 2.3 nm) ... (1333 nm, 6.0 nm)",
        (838.0, 1333.0), "diameter", s, p,
        "Tabulated, no published formula: the SI table gives absorption peak, PL peak and TEM "
        "size (discussed as diameter) in 0.2 nm steps, so it is read off the group's smooth "
        "TEM calibration (main text refs. 5, 7, 9; for InAs, Guzelian et al., Appl. Phys. "
        "Lett. 1996, 69, 1432) [C]. No uncertainty is printed; TEM sizing of InAs carries "
        "about +/-10 % (assumed [M]). Range = the table's span, 2.3-6.0 nm.",
    ))
    return reg


_REGISTRY = _build_registry()

#: Default curve per material (the first listed in the issue for that material).
DEFAULT_CURVE = {
    "CdSe": "yu2003-CdSe",
    "CdTe": "yu2003-CdTe",
    "CdS": "yu2003-CdS",
    "PbS": "moreels2009-PbS",
    "PbSe": "moreels2007-PbSe",
    "InP": "almeida2023-InP",
    "InAs": "peng1998-InAs",
}


def models(material: str | None = None) -> dict[str, SizingCurve]:
    """The sizing-curve registry (optionally only one material's curves).

    >>> sorted(models("CdSe"))
    ['jasieniak2009-CdSe', 'yu2003-CdSe']
    """
    if material is None:
        return dict(_REGISTRY)
    mat = _canonical_material(material)
    return {k: v for k, v in _REGISTRY.items() if v.material == mat}


def _canonical_material(material: str) -> str:
    from qdmed.materials import get_material

    try:
        return get_material(material).symbol
    except FileNotFoundError:  # pragma: no cover - data file missing in a broken install
        raise
    except UnknownNameError:
        raise


def get_curve(material: str, model: str | None = None) -> SizingCurve:
    """The sizing curve for ``material``: ``model`` by name, or the material's default.

    Raises
    ------
    UnknownNameError
        Unknown material or model, or no curve for that material.
    """
    mat = _canonical_material(material)
    if model is None:
        if mat not in DEFAULT_CURVE:
            raise UnknownNameError(
                f"no empirical sizing curve for {mat} in the registry; materials with curves: "
                f"{', '.join(DEFAULT_CURVE)} (use qdmed.optics.brus_gap_ev for an "
                "effective-mass estimate, which is not an empirical calibration)"
            )
        return _REGISTRY[DEFAULT_CURVE[mat]]
    key = model if model in _REGISTRY else f"{model}-{mat}"
    if key not in _REGISTRY:
        low = {k.lower(): k for k in _REGISTRY}
        key = low.get(key.lower(), key)
    if key not in _REGISTRY or _REGISTRY[key].material != mat:
        names = [k for k, v in _REGISTRY.items() if v.material == mat]
        raise UnknownNameError(
            f"unknown sizing model {model!r} for {mat}; accepted: {', '.join(names) or 'none'}"
        )
    return _REGISTRY[key]


def size_from_peak(material, peak_nm, model=None, *, extrapolate=False):
    """Nanocrystal diameter (nm) from the first-exciton absorption peak (nm).

    Parameters
    ----------
    material : str
        Material symbol (``"CdSe"``, ``"PbS"``, ...).
    peak_nm : float or ndarray, nm
        First-exciton absorption peak wavelength(s).
    model : str, optional
        Curve name (``"yu2003"``, ``"jasieniak2009"``, ...); default per material.
    extrapolate : bool
        Evaluate outside the validity range with an :class:`ExtrapolationWarning`
        instead of raising :class:`~qdmed.errors.OutOfRangeError`.

    Returns
    -------
    float or ndarray, nm
        Diameter; for InP (tetrahedra) the equivalent-volume sphere diameter.

    Examples
    --------
    >>> round(size_from_peak("CdSe", 600.0), 3)   # Yu 2003
    4.583
    """
    return get_curve(material, model).diameter_from_peak(peak_nm, extrapolate=extrapolate)


def peak_from_size(material, diameter_nm, model=None, *, extrapolate=False):
    """First-exciton absorption peak (nm) from the diameter (nm); inverse of
    :func:`size_from_peak`.

    >>> round(peak_from_size("CdSe", 4.0), 1)   # Yu 2003
    585.3
    """
    return get_curve(material, model).peak_from_diameter(diameter_nm, extrapolate=extrapolate)
