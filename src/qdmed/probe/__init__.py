"""QD probe design: core/shell, coating, PEG and ligands -> hydrodynamic size, renal
clearance, heavy-metal dose and optics.

>>> from qdmed.probe import Probe
>>> p = Probe("CdSe", 4.3, shell="ZnS", shell_thickness_nm=0.9, coating="dhla-peg", peg_mw=2000)
>>> p.renal_clearable
False
"""

from qdmed.probe._probe import (
    CHOI2010_LIGAND_LIMIT,
    CORONA_INCREASE_NM,
    PROBE_BOUNDS,
    RENAL_THRESHOLD_NM,
    Layer,
    Probe,
    monolayer_thickness_nm,
    parse_layer_spec,
)
from qdmed.probe._sheet import ProbeSheet, probe_sheet
from qdmed.probe._surface import (
    PegLayer,
    SurfaceEntry,
    coatings,
    flory_radius_nm,
    get_coating,
    get_ligand,
    ligands,
    peg_layer,
)
from qdmed.probe._transport import (
    diffusion_coefficient_um2_s,
    hydrodynamic_diameter_from_diffusion_nm,
    water_viscosity_mPa_s,
)

__all__ = [
    "CHOI2010_LIGAND_LIMIT", "CORONA_INCREASE_NM", "PROBE_BOUNDS", "RENAL_THRESHOLD_NM",
    "Layer", "PegLayer", "Probe", "ProbeSheet", "SurfaceEntry", "coatings", "diffusion_coefficient_um2_s",
    "flory_radius_nm", "get_coating", "get_ligand", "hydrodynamic_diameter_from_diffusion_nm",
    "ligands", "monolayer_thickness_nm", "parse_layer_spec", "peg_layer", "probe_sheet",
    "water_viscosity_mPa_s",
]
