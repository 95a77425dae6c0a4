"""Molar extinction coefficients of QDs and concentrations from UV-Vis absorbance.

Every relation here is a registry entry with its citation and validity range. Extinction is
per mole of nanocrystals, in M^-1 cm^-1.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from qdmed.constants import AVOGADRO, HC_EV_NM
from qdmed.errors import ExtrapolationWarning, InputError, OutOfRangeError, UnknownNameError
from qdmed.optics._sizing import _as_float_array, get_curve
from qdmed.references import (
    JASIENIAK2009,
    MOREELS2007,
    MOREELS2009,
    YU2003,
    YU_NOZIK2005,
    Reference,
)

#: Conversion of an absorption cross-section (cm^2) to a molar decadic extinction
#: coefficient (M^-1 cm^-1): epsilon = sigma N_A / (1000 ln 10).
SIGMA_CM2_TO_EPSILON = AVOGADRO / (1000.0 * np.log(10.0))

#: Reference half width at half maximum of the first-exciton band for Jasieniak 2009, eV.
JASIENIAK_REFERENCE_HWHM_EV = 0.06


@dataclass(frozen=True)
class ExtinctionModel:
    """One published extinction relation.

    ``where`` says at which wavelength it applies: ``"first_exciton"`` or a fixed wavelength
    in nm (e.g. 400.0). ``_eps(diameter_nm, peak_nm, hwhm_ev)`` returns M^-1 cm^-1.
    """

    name: str
    material: str
    reference: Reference
    formula: str
    where: str | float
    _eps: Callable = field(repr=False)
    note: str = ""
    tag: str = "C"
    needs_peak: bool = True  # False: eps depends on the size only (no sizing curve needed)
    diameter_range_nm: tuple[float, float] | None = None  # own calibration range, if any

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "material": self.material,
            "formula": self.formula,
            "where": self.where,
            "tag": self.tag,
            "note": self.note,
            "reference": self.reference.to_dict(),
        }


def _jasieniak(d, lam, hwhm):
    e = HC_EV_NM / lam
    eps = 155507.0 + 6.67054e13 * np.exp(-e / 0.10551)
    if hwhm is not None:
        eps = eps * (JASIENIAK_REFERENCE_HWHM_EV / hwhm)
    return eps


_MODELS = {
    m.name: m
    for m in [
        ExtinctionModel("yu2003-power-CdSe", "CdSe", YU2003, "eps = 5857 D^2.65", "first_exciton",
                        lambda d, lam, h: 5857.0 * d**2.65, "Power-law form [C]."),
        ExtinctionModel("yu2003-energy-CdSe", "CdSe", YU2003, "eps = 1600 dE D^3",
                        "first_exciton", lambda d, lam, h: 1600.0 * (HC_EV_NM / lam) * d**3,
                        "Transition-energy form; coefficient [M], agrees with the power law "
                        "within ~10 % over 450-650 nm [E].", "M"),
        ExtinctionModel("yu2003-power-CdTe", "CdTe", YU2003, "eps = 10043 D^2.12",
                        "first_exciton", lambda d, lam, h: 10043.0 * d**2.12,
                        "Power-law form [C]; small sizes may deviate up to 3x (Kamal 2012)."),
        ExtinctionModel("yu2003-energy-CdTe", "CdTe", YU2003, "eps = 3450 dE D^2.4",
                        "first_exciton", lambda d, lam, h: 3450.0 * (HC_EV_NM / lam) * d**2.4,
                        "Transition-energy form [C1].", "C1"),
        ExtinctionModel("yu2003-power-CdS", "CdS", YU2003, "eps = 21536 D^2.3", "first_exciton",
                        lambda d, lam, h: 21536.0 * d**2.3, "Power-law form [C]."),
        ExtinctionModel("yu2003-energy-CdS", "CdS", YU2003, "eps = 5500 dE D^2.5",
                        "first_exciton", lambda d, lam, h: 5500.0 * (HC_EV_NM / lam) * d**2.5,
                        "Transition-energy form; coefficient [M].", "M"),
        ExtinctionModel("jasieniak2009-CdSe", "CdSe", JASIENIAK2009,
                        "eps_1S = 155507 + 6.67054e13 exp(-E/0.10551), scaled by 0.06 eV/HWHM",
                        "first_exciton", _jasieniak,
                        "Refers to a first-exciton HWHM of 0.06 eV (low-energy side); the "
                        "sample's HWHM rescales it so the integrated absorption is constant "
                        "[C1].", "C1"),
        ExtinctionModel("moreels2009-400-PbS", "PbS", MOREELS2009, "eps_400 = 0.0233 d^3 uM^-1 cm^-1",
                        400.0, lambda d, lam, h: 2.33e4 * d**3,
                        "High-energy extinction scales with volume (Maxwell-Garnett); "
                        "prefactor [C1].", "C1"),
        ExtinctionModel("moreels2007-400-PbSe", "PbSe", MOREELS2007,
                        "eps_400 = 0.0277 d^3 uM^-1 cm^-1", 400.0,
                        lambda d, lam, h: 2.77e4 * d**3, "Prefactor [C1].", "C1"),
        ExtinctionModel("yu2005-1S-InAs", "InAs", YU_NOZIK2005,
                        "sigma_1S = 3.15e-16 R^1.28 cm^2 (R in nm)", "first_exciton",
                        lambda d, lam, h: SIGMA_CM2_TO_EPSILON * 3.15e-16 * (d / 2) ** 1.28,
                        "From the abstract [P]; mean radii 1.6-3.45 nm.", "P", needs_peak=False,
                        diameter_range_nm=(3.2, 6.9)),
        ExtinctionModel("yu2005-2.76eV-InAs", "InAs", YU_NOZIK2005,
                        "sigma(2.76 eV) = 6.2e-16 R^3 cm^2 (R in nm)", HC_EV_NM / 2.76,
                        lambda d, lam, h: SIGMA_CM2_TO_EPSILON * 6.2e-16 * (d / 2) ** 3,
                        "From the abstract [P]; mean radii 1.6-3.45 nm.", "P"),
    ]
}

_DEFAULT_FIRST_EXCITON = {
    "CdSe": "yu2003-power-CdSe",
    "CdTe": "yu2003-power-CdTe",
    "CdS": "yu2003-power-CdS",
    "InAs": "yu2005-1S-InAs",
}
#: The relations that use the sample's first-exciton linewidth (``hwhm_ev``).
_USES_HWHM = frozenset({"jasieniak2009-CdSe"})


def extinction_models(material: str | None = None) -> dict[str, ExtinctionModel]:
    """The extinction registry (optionally one material's entries)."""
    if material is None:
        return dict(_MODELS)
    from qdmed.materials import get_material

    mat = get_material(material).symbol
    return {k: v for k, v in _MODELS.items() if v.material == mat}


def _resolve(material, model, where):
    from qdmed.materials import get_material

    mat = get_material(material).symbol
    cands = {k: v for k, v in _MODELS.items() if v.material == mat and
             ((v.where == "first_exciton") == (where == "first_exciton"))}
    if model is not None:
        for key in (model, f"{model}-{mat}", f"{model}-power-{mat}"):
            if key in cands:
                return cands[key]
        raise UnknownNameError(
            f"unknown extinction model {model!r} for {mat} ({where}); accepted: "
            f"{', '.join(cands) or 'none'}"
        )
    if where == "first_exciton":
        if mat in _DEFAULT_FIRST_EXCITON:
            return _MODELS[_DEFAULT_FIRST_EXCITON[mat]]
    elif cands:
        return next(iter(cands.values()))
    raise UnknownNameError(
        f"no published {where if where != 'first_exciton' else 'first-exciton'} extinction "
        f"relation for {mat} in the registry; materials covered: "
        f"{', '.join(sorted({v.material for v in _MODELS.values() if (v.where == 'first_exciton') == (where == 'first_exciton')}))}"
    )


def extinction_model(material, model=None) -> ExtinctionModel:
    """The first-exciton extinction relation :func:`extinction_first_exciton` uses for
    ``material`` and ``model`` (None: the material's default)."""
    return _resolve(material, model, "first_exciton")


def extinction_first_exciton(material, *, diameter_nm=None, peak_nm=None, model=None,
                             hwhm_ev=None, sizing_model=None, extrapolate=False):
    """Molar extinction coefficient at the first-exciton peak, M^-1 cm^-1.

    Give the diameter or the first-exciton peak (the other is found with the material's
    sizing curve, ``sizing_model``).

    Parameters
    ----------
    material : str
    diameter_nm : float or ndarray, nm, optional
    peak_nm : float or ndarray, nm, optional
    model : str, optional
        ``"yu2003-power"`` (default for Cd chalcogenides), ``"yu2003-energy"``,
        ``"jasieniak2009"`` (CdSe, linewidth normalised), ``"yu2005-1S"`` (InAs).
    hwhm_ev : float, eV, optional
        Low-energy half width at half maximum of the sample's first-exciton band; only the
        Jasieniak model uses it (eps scaled by 0.06 eV / HWHM).

    Returns
    -------
    float or ndarray, M^-1 cm^-1

    References
    ----------
    Yu et al., Chem. Mater. 2003, 15, 2854, doi:10.1021/cm034081k;
    Jasieniak et al., J. Phys. Chem. C 2009, 113, 19468, doi:10.1021/jp906827m;
    Yu et al., J. Phys. Chem. B 2005, 109, 7084, doi:10.1021/jp046127i.

    Examples
    --------
    >>> round(extinction_first_exciton("CdSe", peak_nm=550.0))   # Yu power law
    111534
    """
    m = _resolve(material, model, "first_exciton")
    if hwhm_ev is not None:
        if m.name not in _USES_HWHM:
            raise InputError(f"hwhm_ev is used only by {', '.join(sorted(_USES_HWHM))} "
                             f"(model='jasieniak2009'); {m.name} does not depend on the "
                             "linewidth: drop hwhm_ev or choose that model")
        hwhm_ev = float(_as_float_array(hwhm_ev, "hwhm_ev"))
    d, lam = _diameter_and_peak(m.material, diameter_nm, peak_nm, sizing_model, extrapolate,
                                need_peak=m.needs_peak)
    if m.diameter_range_nm is not None:
        _guard_diameter(m, d, extrapolate)
    out = m._eps(d, lam, hwhm_ev)
    return out if np.ndim(out) else float(out)


def extinction_at(material, wavelength_nm, *, diameter_nm, model=None):
    """Extinction at a fixed high-energy wavelength where a published relation exists
    (PbS and PbSe at 400 nm, Moreels; InAs at 2.76 eV = 449 nm, Yu 2005), M^-1 cm^-1.

    Raises
    ------
    UnknownNameError
        If no published relation covers that material and wavelength.
    """
    wl = float(_as_float_array(wavelength_nm, "wavelength_nm"))
    m = _resolve(material, model, "fixed")
    if abs(float(m.where) - wl) > 5.0:
        raise UnknownNameError(
            f"{m.name} applies at {float(m.where):.0f} nm, not {wl:g} nm; qdmed has no "
            f"published extinction relation for {m.material} at {wl:g} nm"
        )
    d = _as_float_array(diameter_nm, "diameter_nm")
    out = m._eps(d, None, None)
    return out if np.ndim(out) else float(out)


def extinction_from_volume(diameter_nm, intrinsic_absorption_per_cm):
    """High-energy extinction from particle volume: eps = N_A V mu_i / (1000 ln 10).

    Far above the band gap, absorption per particle scales with its volume (Moreels et al.,
    ACS Nano 2009, doi:10.1021/nn900863a; Hens & Moreels, J. Mater. Chem. 2012, 22, 10406,
    doi:10.1039/C2JM30760J). ``intrinsic_absorption_per_cm`` (mu_i, cm^-1) is the intrinsic
    absorption coefficient of the QD material at that wavelength, including the local-field
    factor of the solvent; it must come from the user or a measurement.

    Returns
    -------
    float or ndarray, M^-1 cm^-1
    """
    d = _as_float_array(diameter_nm, "diameter_nm")
    mu = _as_float_array(intrinsic_absorption_per_cm, "intrinsic_absorption_per_cm")
    volume_cm3 = np.pi / 6.0 * (d * 1e-7) ** 3
    out = AVOGADRO * volume_cm3 * mu / (1000.0 * np.log(10.0))
    return out if np.ndim(out) else float(out)


def _guard_diameter(m, d, extrapolate):
    lo, hi = m.diameter_range_nm
    bad = (d < lo) | (d > hi)
    if np.any(bad):
        msg = (f"diameter {float(np.asarray(d)[bad].ravel()[0]):g} nm is outside the calibration "
               f"range of {m.name} ({lo:g}-{hi:g} nm)")
        if not extrapolate:
            raise OutOfRangeError(msg + "; pass extrapolate=True to use it anyway")
        warnings.warn(msg + "; extrapolating", ExtrapolationWarning, stacklevel=3)


def _diameter_and_peak(material, diameter_nm, peak_nm, sizing_model, extrapolate,
                       need_peak=True):
    if (diameter_nm is None) == (peak_nm is None):
        raise InputError("give exactly one of diameter_nm and peak_nm")
    if diameter_nm is not None and not need_peak:  # size-only relation: no sizing curve
        if sizing_model is not None:
            raise InputError(f"sizing_model {sizing_model!r} would not be used: the diameter "
                             "is given and this relation depends on the size only")
        return _as_float_array(diameter_nm, "diameter_nm"), None
    curve = get_curve(material, sizing_model)
    if diameter_nm is not None:
        d = _as_float_array(diameter_nm, "diameter_nm")
        return d, np.asarray(curve.peak_from_diameter(d, extrapolate=extrapolate))
    lam = _as_float_array(peak_nm, "peak_nm")
    return np.asarray(curve.diameter_from_peak(lam, extrapolate=extrapolate)), lam


# -- concentration -----------------------------------------------------------------------
def concentration_from_absorbance(absorbance, extinction_M_cm, *, path_length_cm=1.0):
    """Molar concentration of nanocrystals (mol/L) by Beer-Lambert, c = A / (eps l).

    >>> round(concentration_from_absorbance(0.10, 1.115e5) * 1e6, 3)   # uM
    0.897
    """
    a = np.asarray(absorbance, dtype=float)
    if np.any(~np.isfinite(a)) or np.any(a < 0):
        raise InputError(f"absorbance must be finite and >= 0, got {absorbance!r}")
    eps = _as_float_array(extinction_M_cm, "extinction_M_cm")
    ell = _as_float_array(path_length_cm, "path_length_cm")
    out = a / (eps * ell)
    return out if np.ndim(out) else float(out)


def particles_per_ml(concentration_M):
    """Number of particles per mL from a molar concentration (mol/L): c N_A / 1000."""
    c = np.asarray(concentration_M, dtype=float)
    if np.any(c < 0):
        raise InputError(f"concentration_M must be >= 0, got {concentration_M!r}")
    out = c * AVOGADRO / 1000.0
    return out if np.ndim(out) else float(out)


def particle_mass_g(diameter_nm, density_g_cm3):
    """Mass of one spherical particle, g (bulk density assumed)."""
    d = _as_float_array(diameter_nm, "diameter_nm")
    rho = _as_float_array(density_g_cm3, "density_g_cm3")
    out = np.pi / 6.0 * (d * 1e-7) ** 3 * rho
    return out if np.ndim(out) else float(out)


def mass_concentration_mg_per_ml(concentration_M, diameter_nm, density_g_cm3):
    """Inorganic mass concentration (mg/mL) of spherical particles of bulk density."""
    n_per_ml = particles_per_ml(concentration_M)
    return n_per_ml * particle_mass_g(diameter_nm, density_g_cm3) * 1000.0
