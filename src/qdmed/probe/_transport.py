"""Diffusion of a probe in water: Stokes-Einstein with the IAPWS viscosity of water."""

from __future__ import annotations

import numpy as np

from qdmed.constants import BOLTZMANN_J_PER_K
from qdmed.errors import InputError


def water_viscosity_mPa_s(temperature_C=25.0, pressure_MPa=0.101325):
    """Dynamic viscosity of liquid water, mPa s, from the IAPWS 2008 formulation.

    Uses the ``iapws`` package (IAPWS-95 density, IAPWS 2008 viscosity; Huber et al.,
    J. Phys. Chem. Ref. Data 2009, 38, 101, doi:10.1063/1.3088050). Valid for liquid water,
    0-100 degC at ambient pressure here.

    >>> round(water_viscosity_mPa_s(25.0), 4)
    0.89
    """
    t = float(temperature_C)
    if not 0.0 < t < 100.0:
        raise InputError(f"temperature_C must be in (0, 100) degC for liquid water, got {t:g}")
    from iapws import IAPWS95

    return float(IAPWS95(T=t + 273.15, P=float(pressure_MPa)).mu * 1000.0)


def diffusion_coefficient_um2_s(hydrodynamic_diameter_nm, *, temperature_C=25.0,
                                viscosity_mPa_s=None):
    """Translational diffusion coefficient, um^2/s: D = k_B T / (3 pi eta d_H).

    Stokes-Einstein (Einstein, Ann. Phys. 1905, doi:10.1002/andp.19053220806). Reference
    document §4.5: d_H = 5.5 nm in water at 25 degC gives 89.2 um^2/s.
    """
    d = np.asarray(hydrodynamic_diameter_nm, float)
    if np.any(~np.isfinite(d)) or np.any(d <= 0):
        raise InputError(f"hydrodynamic_diameter_nm must be > 0, got {hydrodynamic_diameter_nm!r}")
    eta = water_viscosity_mPa_s(temperature_C) if viscosity_mPa_s is None else float(viscosity_mPa_s)
    t_k = float(temperature_C) + 273.15
    out = BOLTZMANN_J_PER_K * t_k / (3 * np.pi * eta * 1e-3 * d * 1e-9) * 1e12
    return out if np.ndim(out) else float(out)


def hydrodynamic_diameter_from_diffusion_nm(diffusion_um2_s, *, temperature_C=25.0):
    """Inverse Stokes-Einstein: d_H (nm) from a diffusion coefficient (um^2/s), e.g. DLS."""
    dcoef = np.asarray(diffusion_um2_s, float)
    if np.any(dcoef <= 0):
        raise InputError(f"diffusion_um2_s must be > 0, got {diffusion_um2_s!r}")
    eta = water_viscosity_mPa_s(temperature_C)
    t_k = float(temperature_C) + 273.15
    out = BOLTZMANN_J_PER_K * t_k / (3 * np.pi * eta * 1e-3 * dcoef * 1e-12) * 1e9
    return out if np.ndim(out) else float(out)
