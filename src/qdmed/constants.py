"""Physical constants (CODATA 2018, exact SI values where defined) and unit conversions.

Every conversion is a small vectorized function so that units stay explicit at call sites.
"""

from __future__ import annotations

import numpy as np

#: Planck constant times speed of light, in eV nm (CODATA 2018: h c = 1239.841984 eV nm).
HC_EV_NM = 1239.841984
#: Avogadro constant, 1/mol (exact, SI 2019).
AVOGADRO = 6.02214076e23
#: Boltzmann constant, J/K (exact, SI 2019).
BOLTZMANN_J_PER_K = 1.380649e-23
#: Elementary charge, C (exact).
ELEMENTARY_CHARGE_C = 1.602176634e-19
#: Vacuum permittivity, F/m (CODATA 2018).
VACUUM_PERMITTIVITY_F_PER_M = 8.8541878128e-12
#: Electron rest mass, kg (CODATA 2018).
ELECTRON_MASS_KG = 9.1093837015e-31
#: Reduced Planck constant, J s (exact).
HBAR_J_S = 1.054571817e-34
#: Rydberg energy, eV (CODATA 2018).
RYDBERG_EV = 13.605693122994
#: Bohr radius, nm (CODATA 2018).
BOHR_RADIUS_NM = 0.0529177210903


def ev_from_nm(wavelength_nm):
    """Photon energy in eV from vacuum wavelength in nm, E = hc / lambda."""
    return HC_EV_NM / np.asarray(wavelength_nm, dtype=float)


def nm_from_ev(energy_ev):
    """Vacuum wavelength in nm from photon energy in eV, lambda = hc / E."""
    return HC_EV_NM / np.asarray(energy_ev, dtype=float)


def fwhm_nm_to_mev(fwhm_nm, center_nm):
    """Convert a linewidth from nm to meV at a given centre wavelength.

    Uses the exact difference ``hc/(lambda - w/2) - hc/(lambda + w/2)`` rather than the
    first-order ``hc w / lambda^2`` so that broad lines (NIR, CuInS2) convert correctly;
    the two agree to < 0.1 % for a 30 nm line at 525 nm (135 meV).
    """
    w = np.asarray(fwhm_nm, dtype=float)
    c = np.asarray(center_nm, dtype=float)
    return 1000.0 * (HC_EV_NM / (c - w / 2) - HC_EV_NM / (c + w / 2))


def fwhm_mev_to_nm(fwhm_mev, center_nm):
    """Exact inverse of :func:`fwhm_nm_to_mev`: the width w (nm), centred at ``center_nm``,
    whose end points differ by ``fwhm_mev`` in photon energy.

    Solves hc w / (lambda^2 - w^2/4) = W for w: w = 2 (sqrt(hc^2 + W^2 lambda^2) - hc) / W.
    """
    w_ev = np.asarray(fwhm_mev, dtype=float) / 1000.0
    lam = np.asarray(center_nm, dtype=float)
    return 2.0 * (np.sqrt(HC_EV_NM**2 + (w_ev * lam) ** 2) - HC_EV_NM) / w_ev
