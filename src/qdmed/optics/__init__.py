"""QD optics: sizing curves, extinction and concentration, effective-mass models, emission.

Public surface (registries list their citations and validity ranges):

- sizing: :func:`size_from_peak`, :func:`peak_from_size`, :func:`models`, :func:`get_curve`
- extinction: :func:`extinction_first_exciton`, :func:`extinction_at`,
  :func:`extinction_from_volume`, :func:`extinction_models`, :func:`concentration_from_absorbance`,
  :func:`particles_per_ml`, :func:`mass_concentration_mg_per_ml`
- effective mass: :func:`brus_gap_ev`, :func:`bohr_radius_nm`, :func:`core_shell_gap`,
  :func:`bulk_alignment`
- emission: :func:`predict_emission`, :func:`core_for_emission`, :func:`ensemble_fwhm_meV`,
  :func:`emission_spectrum`, :func:`first_exciton_absorption`, :func:`brightness`
- catalog: :func:`qdot_catalog`, :func:`get_qdot`; the :class:`Spectrum` value.
"""

from qdmed.optics._catalog import QdotProduct, get_qdot, qdot_catalog
from qdmed.optics._ema import (
    BrusResult,
    CoreShellResult,
    bohr_radius_nm,
    brus_gap_ev,
    bulk_alignment,
    core_shell_gap,
)
from qdmed.optics._emission import (
    STOKES_MODELS,
    EmissionPrediction,
    brightness,
    core_for_emission,
    emission_spectrum,
    ensemble_fwhm_meV,
    first_exciton_absorption,
    predict_emission,
    shell_shift_ev,
    stokes_shift_ev,
)
from qdmed.optics._extinction import (
    ExtinctionModel,
    concentration_from_absorbance,
    extinction_at,
    extinction_first_exciton,
    extinction_from_volume,
    extinction_model,
    extinction_models,
    mass_concentration_mg_per_ml,
    particle_mass_g,
    particles_per_ml,
)
from qdmed.optics._sizing import (
    DEFAULT_CURVE,
    TETRAHEDRON_EDGE_TO_SPHERE_DIAMETER,
    SizingCurve,
    get_curve,
    models,
    peak_from_size,
    size_from_peak,
)
from qdmed.optics._spectrum import Spectrum, default_grid, gaussian_in_energy

__all__ = [
    "DEFAULT_CURVE", "STOKES_MODELS", "TETRAHEDRON_EDGE_TO_SPHERE_DIAMETER", "BrusResult",
    "CoreShellResult", "EmissionPrediction", "ExtinctionModel", "QdotProduct", "SizingCurve",
    "Spectrum", "bohr_radius_nm", "brightness", "brus_gap_ev", "bulk_alignment",
    "concentration_from_absorbance", "core_for_emission", "core_shell_gap", "default_grid",
    "emission_spectrum", "ensemble_fwhm_meV", "extinction_at", "extinction_first_exciton",
    "extinction_from_volume", "extinction_model", "extinction_models", "first_exciton_absorption",
    "gaussian_in_energy", "get_curve", "get_qdot", "mass_concentration_mg_per_ml", "models",
    "particle_mass_g", "particles_per_ml", "peak_from_size", "predict_emission",
    "qdot_catalog", "shell_shift_ev", "size_from_peak", "stokes_shift_ev",
]
