"""Emission: Stokes shift, shell red shift, ensemble linewidth, spectra and brightness."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qdmed.constants import HC_EV_NM, fwhm_mev_to_nm
from qdmed.errors import InputError, UnknownNameError
from qdmed.materials import get_material
from qdmed.optics._ema import core_shell_gap
from qdmed.optics._sizing import _as_float_array, get_curve
from qdmed.optics._spectrum import Spectrum, default_grid, gaussian_in_energy
from qdmed.references import PENG1998, Reference

NORRIS1996 = Reference(
    "norris1996",
    "Norris, D. J.; Bawendi, M. G. Measurement and assignment of the size-dependent optical "
    "spectrum in CdSe quantum dots. Phys. Rev. B 1996, 53, 16338-16346",
    "10.1103/PhysRevB.53.16338",
)


@dataclass(frozen=True)
class StokesModel:
    """Non-resonant ensemble Stokes shift, dE = a + b / s^2 (eV), with s the size quantity of
    the material's default sizing curve in nm (diameter, or edge length for InP)."""

    material: str
    a_eV: float
    b_eV_nm2: float
    reference: Reference
    tag: str
    note: str

    def __call__(self, diameter_nm):
        curve = get_curve(self.material)
        s = np.asarray(diameter_nm, float) / curve.to_diameter_factor
        return self.a_eV + self.b_eV_nm2 / s**2


#: Ensemble Stokes shifts: unverified [M] interpolations of typically reported values
#: (CdSe, CdTe, InP) and a fit to a published table (InAs). They exist so that
#: an emission target can be turned into a core size at all; every probe sheet that uses one
#: says so, and ``stokes_shift_meV=`` overrides it with a measured value.
STOKES_MODELS = {
    "CdSe": StokesModel(
        "CdSe", 0.0156, 0.3375, NORRIS1996, "M",
        "Interpolates ~100 meV at d = 2 nm and ~25 meV at 6 nm, the range of ensemble "
        "(non-resonant) Stokes shifts commonly reported for CdSe; unverified, confirm against "
        "your own absorption/PL pair.",
    ),
    "CdTe": StokesModel(
        "CdTe", 0.0156, 0.3375, NORRIS1996, "M",
        "CdSe values reused for CdTe (same order of magnitude reported); unverified.",
    ),
    "InP": StokesModel(
        "InP", 0.06, 0.30, NORRIS1996, "M",
        "In terms of the tetrahedron edge length L: ~100-150 meV for green-red InP dots "
        "(L ~ 2.2-3.2 nm), larger than CdSe; unverified. The reference entry points to the "
        "CdSe assignment paper for the mechanism only.",
    ),
    "InAs": StokesModel(
        "InAs", 0.0303, 0.2111, PENG1998, "C",
        "Least-squares fit by qdmed of dE = a + b/d^2 to the 20 absorption-peak / PL-peak "
        "pairs of the Peng 1998 SI table (30-70 meV for d = 6.0-2.3 nm); residuals within "
        "+/-9 meV, the rounding of the printed PL energies (0.01 eV).",
    ),
}


def stokes_shift_ev(material, diameter_nm):
    """Ensemble Stokes shift (eV) from the unverified [M] interpolation for ``material``.

    Raises
    ------
    UnknownNameError
        Where no model is registered: pass a measured ``stokes_shift_meV`` instead.
    """
    mat = get_material(material).symbol
    if mat not in STOKES_MODELS:
        raise UnknownNameError(
            f"no Stokes-shift model for {mat}; give stokes_shift_meV from a measured "
            f"absorption/emission pair (models exist for {', '.join(STOKES_MODELS)})"
        )
    out = STOKES_MODELS[mat](_as_float_array(diameter_nm, "diameter_nm"))
    return out if np.ndim(out) else float(out)


def shell_shift_ev(core, core_diameter_nm, shell=None, shell_thickness_nm=0.0, *,
                   core_gap_eV=None):
    """Red shift (eV, positive = red) of the band-edge transition caused by a shell.

    The shift is the difference between the bare-core and the core/shell gaps of the
    effective-mass model (:func:`core_shell_gap`). Because that model overestimates
    confinement in small dots (strongly for InP and other light-electron materials), the core
    is first replaced by its *effective-mass-equivalent* diameter d*: the diameter whose
    bare-core model gap equals the measured (empirical) core gap ``core_gap_eV``. The carriers
    then have the kinetic energy the experiment implies when they meet the shell's barrier,
    which keeps the predicted leakage into the shell (and the shift) from being wildly
    overestimated. This calibration is qdmed's choice, documented here; without
    ``core_gap_eV`` the nominal diameter is used.
    """
    from scipy.optimize import brentq

    if not shell or shell_thickness_nm <= 0:
        return 0.0
    d_eff = float(core_diameter_nm)
    if core_gap_eV is not None:
        from qdmed.errors import ConvergenceError

        def f(x):
            try:
                return core_shell_gap(core, x).gap_eV - core_gap_eV
            except ConvergenceError:  # no bound state: gap above the barrier
                return np.inf

        lo, hi = 0.5 * d_eff, 10.0 * d_eff
        if f(lo) > 0 > f(hi):
            d_eff = brentq(f, lo, hi, xtol=1e-5)
    bare = core_shell_gap(core, d_eff)
    coated = core_shell_gap(core, d_eff, shell, shell_thickness_nm)
    return float(bare.gap_eV - coated.gap_eV)


@dataclass(frozen=True)
class EmissionPrediction:
    """Predicted band-edge emission of a (core/shell) QD ensemble."""

    material: str
    core_diameter_nm: float
    shell: str | None
    shell_thickness_nm: float
    absorption_peak_nm: float  # of the (core/shell) particle
    emission_peak_nm: float
    stokes_shift_meV: float
    shell_shift_meV: float
    fwhm_meV: float
    fwhm_nm: float
    sizing_model: str
    stokes_source: str
    warnings: tuple = ()

    def spectrum(self, wavelength_nm=None) -> Spectrum:
        grid = default_grid() if wavelength_nm is None else np.asarray(wavelength_nm, float)
        return Spectrum(grid, gaussian_in_energy(grid, self.emission_peak_nm, self.fwhm_meV),
                        "emission", f"{self.material} {self.emission_peak_nm:.0f} nm")

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["warnings"] = list(self.warnings)
        return d


#: Above this shell red shift (eV) for a shell that confines both carriers in bulk (type I),
#: the effective-mass estimate is flagged: measured ZnS shelling shifts of CdSe and InP are a
#: few nm to ~10 nm (reference document §5), i.e. tens of meV.
SHELL_SHIFT_WARN_EV = 0.1


def ensemble_fwhm_meV(material, diameter_nm, size_dispersion, *, sizing_model=None,
                      homogeneous_fwhm_meV=0.0, extrapolate=False):
    """Ensemble linewidth (FWHM, meV) from the size distribution.

    sigma_E = |dE/dd| sigma_d with dE/dd from the material's sizing curve (central
    difference), FWHM_inh = 2 sqrt(2 ln 2) sigma_E, combined in quadrature with an optional
    homogeneous FWHM (Gaussian approximation of the Voigt profile). The same relation read
    backwards gives the size dispersion from an absorption HWHM (Nikolaev & Averkiev, Appl.
    Phys. Lett. 2009, as used in public sizing tools; reference document §3.3).

    Parameters
    ----------
    size_dispersion : float
        Relative standard deviation of the diameter (e.g. 0.05 for 5 %).
    """
    sd = float(size_dispersion)
    if not 0 <= sd < 0.5:
        raise InputError(f"size_dispersion must be a relative s.d. in [0, 0.5), got {sd!r}")
    curve = get_curve(material, sizing_model)
    d = float(_as_float_array(diameter_nm, "diameter_nm"))
    curve.peak_from_diameter(d, extrapolate=extrapolate)  # range guard on the nominal size
    h = 1e-3 * d
    f = curve.to_diameter_factor
    e_plus = HC_EV_NM / curve._peak(np.asarray((d + h) / f))
    e_minus = HC_EV_NM / curve._peak(np.asarray((d - h) / f))
    de_dd = abs(e_plus - e_minus) / (2 * h)
    fwhm_inh = 2 * np.sqrt(2 * np.log(2)) * de_dd * sd * d * 1000.0
    return float(np.hypot(fwhm_inh, float(homogeneous_fwhm_meV)))


def predict_emission(material, core_diameter_nm, *, shell=None, shell_thickness_nm=0.0,
                     size_dispersion=0.08, stokes_shift_meV=None, homogeneous_fwhm_meV=0.0,
                     sizing_model=None, extrapolate=False) -> EmissionPrediction:
    """Emission peak and linewidth of a core or core/shell QD.

    E_abs = hc / lambda_1S(d) (empirical sizing curve) - shell red shift (effective-mass
    difference); E_em = E_abs - Stokes shift. The linewidth follows :func:`ensemble_fwhm_meV`.
    """
    curve = get_curve(material, sizing_model)
    d = float(_as_float_array(core_diameter_nm, "core_diameter_nm"))
    lam_core = curve.peak_from_diameter(d, extrapolate=extrapolate)
    shell_shift = shell_shift_ev(curve.material, d, shell, shell_thickness_nm,
                                 core_gap_eV=HC_EV_NM / lam_core)
    e_abs = HC_EV_NM / lam_core - shell_shift
    if stokes_shift_meV is None:
        stokes = stokes_shift_ev(curve.material, d)
        src = f"{STOKES_MODELS[curve.material].tag}: {STOKES_MODELS[curve.material].note}"
    else:
        stokes = float(stokes_shift_meV) / 1000.0
        if stokes < 0:
            raise InputError(f"stokes_shift_meV must be >= 0, got {stokes_shift_meV!r}")
        src = "given"
    e_em = e_abs - stokes
    fwhm = ensemble_fwhm_meV(curve.material, d, size_dispersion, sizing_model=curve.name,
                             homogeneous_fwhm_meV=homogeneous_fwhm_meV, extrapolate=True)
    lam_em = HC_EV_NM / e_em
    warns = []
    if shell and shell_thickness_nm > 0:
        from qdmed.optics._ema import bulk_alignment

        label, _, _ = bulk_alignment(curve.material, shell)
        if label == "type I" and shell_shift > SHELL_SHIFT_WARN_EV:
            warns.append(
                f"effective-mass shell shift {shell_shift * 1000:.0f} meV for {curve.material}/"
                f"{shell} (bulk type I) is far above the few-to-~10 nm measured for ZnS shelling: "
                "the model lets the confined carrier leak into the shell (parabolic bands, "
                "uncertain offsets); treat the emission as a lower bound in energy and measure it"
            )
    return EmissionPrediction(
        material=curve.material, core_diameter_nm=d, shell=shell,
        shell_thickness_nm=float(shell_thickness_nm), absorption_peak_nm=HC_EV_NM / e_abs,
        emission_peak_nm=lam_em, stokes_shift_meV=stokes * 1000, shell_shift_meV=shell_shift * 1000,
        fwhm_meV=fwhm, fwhm_nm=float(fwhm_mev_to_nm(fwhm, lam_em)), sizing_model=curve.name,
        stokes_source=src, warnings=tuple(warns),
    )


def core_for_emission(material, emission_nm, *, shell=None, shell_thickness_nm=0.0,
                      stokes_shift_meV=None, sizing_model=None, extrapolate=False,
                      size_dispersion=0.08) -> EmissionPrediction:
    """Solve the core diameter whose (core/shell) emission peaks at ``emission_nm``.

    Bracketed root finding (brentq) over the sizing curve's diameter range.

    Raises
    ------
    OutOfRangeError
        If the target cannot be reached inside the curve's validity range (and
        ``extrapolate`` is False); the message gives the reachable emission range.
    """
    from scipy.optimize import brentq

    from qdmed.errors import OutOfRangeError

    target = float(_as_float_array(emission_nm, "emission_nm"))
    curve = get_curve(material, sizing_model)
    lo, hi = curve.diameter_range_nm
    if extrapolate:
        lo, hi = lo * 0.8, hi * 1.25

    def em(d):
        return predict_emission(curve.material, d, shell=shell,
                                shell_thickness_nm=shell_thickness_nm,
                                stokes_shift_meV=stokes_shift_meV, sizing_model=curve.name,
                                extrapolate=True, size_dispersion=size_dispersion)

    # the emission need not be monotonic in the core size (shell shift and Stokes shift both
    # shrink with size): scan a grid, bracket every crossing, take the smallest core
    grid = np.linspace(lo, hi, 41)
    vals = np.array([em(d).emission_peak_nm for d in grid]) - target
    cross = np.nonzero((vals[:-1] == 0) | (np.sign(vals[:-1]) != np.sign(vals[1:])))[0]
    if cross.size == 0:
        raise OutOfRangeError(
            f"emission {target:g} nm is outside what {curve.material}"
            f"{'/' + shell if shell else ''} reaches inside the validity range of {curve.name}: "
            f"{vals.min() + target:.1f}-{vals.max() + target:.1f} nm (core {lo:.2f}-{hi:.2f} nm)"
            + ("" if extrapolate else "; pass extrapolate=True (CLI: --extrapolate) to extend it")
        )
    i = int(cross[0])
    d = grid[i] if vals[i] == 0 else brentq(lambda x: em(x).emission_peak_nm - target,
                                              grid[i], grid[i + 1], xtol=1e-5)
    if cross.size > 1:
        import warnings

        from qdmed.errors import QdmedWarning

        warnings.warn(
            f"{cross.size} core sizes give {target:g} nm emission for {curve.material}"
            f"{'/' + shell if shell else ''}; the smallest ({d:.2f} nm) is used",
            QdmedWarning, stacklevel=2,
        )
    if extrapolate:
        clo, chi = curve.diameter_range_nm
        if not clo <= d <= chi:
            import warnings

            from qdmed.errors import ExtrapolationWarning

            warnings.warn(
                f"core diameter {d:.2f} nm for {target:g} nm emission lies outside "
                f"{curve.name}'s validity range {clo:.2f}-{chi:.2f} nm",
                ExtrapolationWarning, stacklevel=2,
            )
    return em(d)


def brightness(extinction_M_cm, quantum_yield):
    """Molecular brightness, M^-1 cm^-1: extinction at the excitation wavelength x QY."""
    qy = np.asarray(quantum_yield, float)
    if np.any((qy < 0) | (qy > 1)):
        raise InputError(f"quantum_yield must be in [0, 1], got {quantum_yield!r}")
    out = np.asarray(extinction_M_cm, float) * qy
    return out if np.ndim(out) else float(out)


def emission_spectrum(peak_nm, fwhm_nm, *, wavelength_nm=None, label="") -> Spectrum:
    """Emission spectrum with a Gaussian lineshape in energy, unit area over wavelength,
    whose per-nm maximum lies at ``peak_nm`` (see :func:`gaussian_in_energy`).

    ``fwhm_nm`` is converted to energy about the peak (exact two-sided conversion); the per-nm
    curve's FWHM then matches it to within 0.35 % for the catalog's lines (25-80 nm wide).
    """
    from qdmed.constants import fwhm_nm_to_mev

    peak = float(_as_float_array(peak_nm, "peak_nm"))
    grid = default_grid() if wavelength_nm is None else np.asarray(wavelength_nm, float)
    fwhm_mev = float(fwhm_nm_to_mev(float(_as_float_array(fwhm_nm, "fwhm_nm")), peak))
    return Spectrum(grid, gaussian_in_energy(grid, peak, fwhm_mev), "emission",
                    label or f"{peak:.0f} nm")


def first_exciton_absorption(peak_nm, extinction_M_cm, hwhm_meV, *, wavelength_nm=None,
                             label="") -> Spectrum:
    """The first-exciton absorption band as a Gaussian in energy with peak height
    ``extinction_M_cm`` (M^-1 cm^-1). Higher transitions and the continuum are not modelled:
    use measured spectra where they matter."""
    grid = default_grid() if wavelength_nm is None else np.asarray(wavelength_nm, float)
    e = HC_EV_NM / grid
    e0 = HC_EV_NM / float(peak_nm)
    sigma = float(hwhm_meV) / 1000.0 / np.sqrt(2 * np.log(2))
    vals = float(extinction_M_cm) * np.exp(-0.5 * ((e - e0) / sigma) ** 2)
    return Spectrum(grid, vals, "extinction", label or f"1S {float(peak_nm):.0f} nm")
