"""Effective-mass models: the Brus equation and a spherical core/shell model.

Where these fail (read before use)
----------------------------------
* Brus with bulk parabolic masses grossly overestimates the gap of small dots: for CdSe it is
  +0.95 eV too high at d = 3 nm and +0.42 eV at 4 nm against Yu 2003; for PbS it gives 4.24 eV
  at 3 nm against 1.34 eV measured (non-parabolic bands, near-equal masses). Use the empirical
  sizing curves whenever one exists; use Brus for trends and teaching.
* The core/shell model inherits the same bias. qdmed therefore uses it for *differences*
  (the red shift a shell causes, relative to the bare core in the same model) added to an
  empirical core gap, and to classify band alignment, not for absolute gaps.
* Band offsets come from electron affinities (Anderson's rule), which ignores interface
  dipoles and strain (CdSe/ZnS has ~12 % lattice mismatch); PbS/CdS is a known case where the
  rule's answer (quasi-type II) differs from the usual description (type I).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq

from qdmed.constants import (
    BOHR_RADIUS_NM,
    ELECTRON_MASS_KG,
    ELEMENTARY_CHARGE_C,
    HBAR_J_S,
    RYDBERG_EV,
    VACUUM_PERMITTIVITY_F_PER_M,
)
from qdmed.errors import ConvergenceError, InputError
from qdmed.materials import Material, get_material
from qdmed.optics._sizing import _as_float_array

#: hbar^2 / (2 m0), eV nm^2.
HBAR2_OVER_2M0_EV_NM2 = HBAR_J_S**2 / (2 * ELECTRON_MASS_KG) / ELEMENTARY_CHARGE_C * 1e18
#: e^2 / (4 pi eps0), eV nm.
COULOMB_EV_NM = ELEMENTARY_CHARGE_C / (4 * np.pi * VACUUM_PERMITTIVITY_F_PER_M) * 1e9

#: Coulomb and correlation coefficients of the Brus equation (Kayanuma 1988, strong confinement).
BRUS_COULOMB_COEFF = 1.786
BRUS_RYDBERG_COEFF = 0.248


@dataclass(frozen=True)
class BrusResult:
    """Terms of the Brus equation, eV. ``gap_eV = bulk + confinement - coulomb - correlation``."""

    diameter_nm: float
    bulk_gap_eV: float
    confinement_eV: float
    coulomb_eV: float
    correlation_eV: float

    @property
    def gap_eV(self) -> float:
        return self.bulk_gap_eV + self.confinement_eV - self.coulomb_eV - self.correlation_eV

    @property
    def peak_nm(self) -> float:
        from qdmed.constants import nm_from_ev

        return float(nm_from_ev(self.gap_eV))

    def to_dict(self) -> dict:
        return {
            "diameter_nm": self.diameter_nm,
            "bulk_gap_eV": self.bulk_gap_eV,
            "confinement_eV": self.confinement_eV,
            "coulomb_eV": self.coulomb_eV,
            "correlation_eV": self.correlation_eV,
            "gap_eV": self.gap_eV,
            "peak_nm": self.peak_nm,
        }


def brus_gap_ev(material, diameter_nm, *, coulomb_coeff=BRUS_COULOMB_COEFF,
                rydberg_coeff=BRUS_RYDBERG_COEFF, electron_mass_m0=None, hole_mass_m0=None,
                dielectric=None, band_gap_eV=None):
    """Lowest excited state of a spherical nanocrystal by the Brus equation, eV.

    E(R) = Eg + hbar^2 pi^2 / (2 R^2) (1/me + 1/mh) - 1.786 e^2 / (4 pi eps0 eps R)
    - 0.248 E*_Ry,   with E*_Ry = 13.606 eV (mu/m0) / eps^2.

    Parameters
    ----------
    material : str or Material
    diameter_nm : float or ndarray, nm
    coulomb_coeff, rydberg_coeff : float
        1.786 and 0.248 (Kayanuma 1988). Many public scripts use 1.8 and drop the Rydberg
        term; pass ``coulomb_coeff=1.8, rydberg_coeff=0`` to reproduce them.
    electron_mass_m0, hole_mass_m0, dielectric, band_gap_eV : float, optional
        Override the registry values.

    Returns
    -------
    BrusResult or ndarray of gaps
        A :class:`BrusResult` for a scalar diameter, else an array of gaps in eV.

    References
    ----------
    Brus, J. Chem. Phys. 1984, 80, 4403, doi:10.1063/1.447218.
    Kayanuma, Phys. Rev. B 1988, 38, 9797, doi:10.1103/PhysRevB.38.9797.

    Examples
    --------
    >>> round(brus_gap_ev("CdSe", 4.0).gap_eV, 3)
    2.533
    """
    m = get_material(material)
    me = electron_mass_m0 or m.electron_mass_m0
    mh = hole_mass_m0 or m.hole_mass_m0
    eps = dielectric or m.dielectric_static
    eg = band_gap_eV if band_gap_eV is not None else m.band_gap_eV
    d = _as_float_array(diameter_nm, "diameter_nm")
    r = d / 2.0
    conf = HBAR2_OVER_2M0_EV_NM2 * np.pi**2 / r**2 * (1 / me + 1 / mh)
    coul = coulomb_coeff * COULOMB_EV_NM / (eps * r)
    mu = me * mh / (me + mh)
    corr = rydberg_coeff * RYDBERG_EV * mu / eps**2
    if d.ndim == 0:
        return BrusResult(float(d), eg, float(conf), float(coul), float(corr))
    return eg + conf - coul - corr


def bohr_radius_nm(material, *, electron_mass_m0=None, hole_mass_m0=None, dielectric=None):
    """Exciton Bohr radius a_B = a0 eps / (mu/m0), nm.

    >>> round(bohr_radius_nm("CdSe"), 2)
    4.98
    """
    m = get_material(material)
    me = electron_mass_m0 or m.electron_mass_m0
    mh = hole_mass_m0 or m.hole_mass_m0
    eps = dielectric or m.dielectric_static
    return BOHR_RADIUS_NM * eps / (me * mh / (me + mh))


# ----------------------------------------------------------------------------------------
# Spherical core/shell, one band per carrier, finite offsets, BenDaniel-Duke matching.
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CoreShellResult:
    """Band-edge state of a spherical core/shell nanocrystal (effective-mass model).

    Energies in eV. ``electron_core_fraction`` and ``hole_core_fraction`` are the
    probabilities of finding each carrier inside the core.
    """

    core: str
    shell: str | None
    core_diameter_nm: float
    shell_thickness_nm: float
    electron_level_eV: float  # absolute, vacuum-referenced
    hole_level_eV: float  # absolute, vacuum-referenced
    coulomb_eV: float
    electron_core_fraction: float
    hole_core_fraction: float
    bulk_alignment: str
    alignment: str
    delta_cb_eV: float | None
    delta_vb_eV: float | None

    @property
    def gap_eV(self) -> float:
        return self.electron_level_eV - self.hole_level_eV - self.coulomb_eV

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["gap_eV"] = self.gap_eV
        return d


def bulk_alignment(core, shell) -> tuple[str, float, float]:
    """Bulk band alignment of a heterojunction by Anderson's rule.

    Returns (label, dCB, dVB) with dCB = CB_shell - CB_core and dVB = VB_core - VB_shell
    (both positive: the shell confines both carriers, straddling = type I). A staggered
    alignment is type II; an offset below 0.3 eV for one carrier is labelled quasi-type II.
    """
    c, s = get_material(core), get_material(shell)
    dcb = s.conduction_band_eV - c.conduction_band_eV
    dvb = c.valence_band_eV - s.valence_band_eV
    if dcb > 0 and dvb > 0:
        label = "quasi-type II" if min(dcb, dvb) < 0.3 else "type I"
    elif dcb < 0 and dvb < 0:
        label = "reverse type I"
    else:
        label = "type II"
        if abs(dcb if dcb < 0 else dvb) < 0.3:
            label = "quasi-type II"
    return label, float(dcb), float(dvb)


def _sinc_r(k, r):
    """sin(k r)/k for complex k (sinh for imaginary k), finite as k -> 0."""
    k = np.where(np.abs(k) < 1e-9, 1e-9, k)
    return np.sin(k * r) / k


def _propagate(e, potentials, masses, radii_nm):
    """Vectorized over energies ``e``: mismatch of the outer boundary condition, plus the
    per-region (start, end, k, u0, du0) needed to sample u(r)."""
    e = np.asarray(e, dtype=float)
    k = np.sqrt((2 * masses[0] * (e - potentials[0]) / (2 * HBAR2_OVER_2M0_EV_NM2)) + 0j)
    r = radii_nm[0]
    segs = [(0.0, r, k, None, None)]
    u, du = _sinc_r(k, r), np.cos(k * r)
    for i in range(1, len(radii_nm)):
        dR = (du / r - u / r**2) / masses[i - 1]  # (1/m) dR/dr is continuous
        du = masses[i] * dR * r + u / r
        k = np.sqrt((2 * masses[i] * (e - potentials[i]) / (2 * HBAR2_OVER_2M0_EV_NM2)) + 0j)
        segs.append((r, radii_nm[i], k, u, du))
        dr = radii_nm[i] - r
        u, du = u * np.cos(k * dr) + du * _sinc_r(k, dr), -u * k * np.sin(k * dr) + du * np.cos(k * dr)
        r = radii_nm[i]
    q_out = 2 * masses[-1] * (e - potentials[-1]) / (2 * HBAR2_OVER_2M0_EV_NM2)
    kappa = np.sqrt(np.maximum(-q_out, 0.0))
    mismatch = (du - u / r) / masses[-2] - (-kappa * u - u / r) / masses[-1]
    return np.real(mismatch), segs, (r, kappa, u)


def _radial_level(potentials, masses, radii_nm, e_lo, e_hi, n_scan=600):
    """Lowest l=0 level of a piecewise-constant spherical well.

    ``potentials`` (eV) and ``masses`` (m0) for regions [0, r1), [r1, r2), ..., [r_last, inf).
    Matching conditions: u = rR continuous and (1/m) dR/dr continuous (BenDaniel-Duke).
    """
    # geometric scan above the well bottom: fine near the ground state, coarse near the top
    grid = e_lo + np.geomspace(1e-5, (e_hi - e_lo) * (1 - 1e-9), n_scan)
    vals = _propagate(grid, potentials, masses, radii_nm)[0]
    sign = np.nonzero(np.sign(vals[:-1]) * np.sign(vals[1:]) < 0)[0]
    if sign.size == 0:
        raise ConvergenceError(
            "core/shell effective-mass model found no bound state below the outer barrier"
        )
    i = sign[0]
    e = brentq(lambda x: float(_propagate(x, potentials, masses, radii_nm)[0]),
               grid[i], grid[i + 1], xtol=1e-12)
    _, segs, tail = _propagate(e, potentials, masses, radii_nm)
    return e, segs, tail


def _profile(segs, tail, r_grid):
    """Sample u(r) on ``r_grid`` from the propagation segments."""
    u = np.zeros(r_grid.shape, dtype=complex)
    start, end, k, _, _ = segs[0]
    m = r_grid < end
    u[m] = _sinc_r(k, r_grid[m])
    for start, end, k, u0, du0 in segs[1:]:
        m = (r_grid >= start) & (r_grid < end)
        x = r_grid[m] - start
        u[m] = u0 * np.cos(k * x) + du0 * _sinc_r(k, x)
    r_out, kappa, u_out = tail
    m = r_grid >= r_out
    u[m] = u_out * np.exp(-kappa * (r_grid[m] - r_out))
    return np.real(u)


def _classify(dcb, dvb, fe, fh) -> str:
    """Size-dependent alignment from bulk offsets and carrier localisation.

    Straddling offsets (type I in bulk) stay type I while both carriers are mostly (>= 50 %)
    in the core, and a carrier whose offset is small (< 0.3 eV) stays >= 80 % in the core;
    otherwise the carrier is delocalised over the shell: quasi-type II (CdSe/CdS). Staggered
    offsets give type II when the carriers sit on opposite sides (one >= 70 % in the core,
    the other <= 30 %), otherwise quasi-type II.
    """
    if dcb > 0 and dvb > 0:
        if fe < 0.5 or fh < 0.5:
            return "quasi-type II"
        if (dcb < 0.3 and fe < 0.8) or (dvb < 0.3 and fh < 0.8):
            return "quasi-type II"
        return "type I"
    if dcb < 0 and dvb < 0:
        return "reverse type I" if (fe < 0.5 and fh < 0.5) else "quasi-type II"
    if (fe >= 0.7 and fh <= 0.3) or (fh >= 0.7 and fe <= 0.3):
        return "type II"
    return "quasi-type II"


def core_shell_gap(core, core_diameter_nm, shell=None, shell_thickness_nm=0.0, *,
                   outer_barrier_eV=4.0, outer_mass_m0=1.0, n_grid=1500):
    """Band-edge gap of a spherical (core/shell) nanocrystal in the effective-mass model.

    Each carrier sees a piecewise-constant potential: its bulk band edge in the core and the
    shell (band offsets from the electron affinities, Anderson's rule) and an outer barrier
    ``outer_barrier_eV`` above the highest band edge of the structure (ligands/solvent), with
    mass ``outer_mass_m0`` outside. The l = 0 ground states are solved exactly with
    BenDaniel-Duke matching (continuity of R and of (1/m) dR/dr), and the electron-hole Coulomb
    energy is the first-order integral  e^2/(4 pi eps0 eps_core) <1/max(r_e, r_h)>  over the
    radial densities (exact angular average for s states). With no shell and an infinite
    barrier the model reduces to the confinement term of Brus plus a Coulomb term of
    1.786 e^2/(4 pi eps0 eps R).

    Parameters
    ----------
    core, shell : str
        Material symbols (shell optional).
    core_diameter_nm, shell_thickness_nm : float, nm

    Returns
    -------
    CoreShellResult

    References
    ----------
    Haus, Zhou, Honma, Komiyama, Phys. Rev. B 1993, 47, 1359, doi:10.1103/PhysRevB.47.1359
    (core/shell effective-mass model); Brus 1984, doi:10.1063/1.447218.
    Alignment classes follow Dennis et al., Nano Lett. 2012, 12, 5545, doi:10.1021/nl302453x.
    See the module docstring for where this model fails.
    """
    c = get_material(core)
    d = float(_as_float_array(core_diameter_nm, "core_diameter_nm"))
    t = float(shell_thickness_nm)
    if t < 0 or not np.isfinite(t):
        raise InputError(f"shell_thickness_nm must be >= 0, got {shell_thickness_nm!r}")
    s: Material | None = get_material(shell) if shell else None
    if s is None and t > 0:
        raise InputError("shell_thickness_nm > 0 needs a shell material")
    a = d / 2
    layers = [c] + ([s] if s is not None and t > 0 else [])
    radii = [a] + ([a + t] if len(layers) == 2 else [])
    cb = [m.conduction_band_eV for m in layers]
    vb = [m.valence_band_eV for m in layers]
    top = max(cb) + outer_barrier_eV
    bottom = min(vb) - outer_barrier_eV
    e_e, segs_e, tail_e = _radial_level(
        cb + [top], [m.electron_mass_m0 for m in layers] + [outer_mass_m0], radii,
        min(cb), top,
    )
    # holes: energies measured downward (E_h = -E), potential = -VB
    e_h, segs_h, tail_h = _radial_level(
        [-v for v in vb] + [-bottom], [m.hole_mass_m0 for m in layers] + [outer_mass_m0],
        radii, min(-v for v in vb), -bottom,
    )
    r_end = radii[-1] + 3.0
    r_grid = np.linspace(1e-6, r_end, n_grid)
    ue = _profile(segs_e, tail_e, r_grid)
    uh = _profile(segs_h, tail_h, r_grid)
    dr = r_grid[1] - r_grid[0]
    pe = ue**2 / (np.sum(ue**2) * dr)
    ph = uh**2 / (np.sum(uh**2) * dr)
    # <1/max(re, rh)> = int pe(r) [Qh(r)/r + int_r^inf ph(r')/r' dr'] dr
    qh = np.cumsum(ph) * dr
    tail_int = np.cumsum((ph / r_grid)[::-1])[::-1] * dr
    inv_r = np.sum(pe * (qh / r_grid + tail_int - ph / r_grid * dr)) * dr
    coul = COULOMB_EV_NM / c.dielectric_static * inv_r
    in_core = r_grid < a
    fe = float(np.sum(pe[in_core]) * dr)
    fh = float(np.sum(ph[in_core]) * dr)
    if s is not None and t > 0:
        bulk_label, dcb, dvb = bulk_alignment(c, s)
        label = _classify(dcb, dvb, fe, fh)
    else:
        bulk_label, dcb, dvb, label = "core only", None, None, "core only"
    return CoreShellResult(
        core=c.symbol, shell=s.symbol if s is not None else None, core_diameter_nm=d,
        shell_thickness_nm=t, electron_level_eV=float(e_e), hole_level_eV=float(-e_h),
        coulomb_eV=float(coul), electron_core_fraction=fe, hole_core_fraction=fh,
        bulk_alignment=bulk_label, alignment=label, delta_cb_eV=dcb, delta_vb_eV=dvb,
    )
