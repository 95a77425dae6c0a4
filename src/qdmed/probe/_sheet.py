"""The probe sheet: everything qdmed predicts about one :class:`Probe`, as one result."""

from __future__ import annotations

from dataclasses import dataclass

from qdmed.constants import HC_EV_NM
from qdmed.errors import QdmedError


@dataclass(frozen=True)
class ProbeSheet:
    """Predicted properties of a probe. ``data`` is JSON-safe (see :meth:`to_dict`)."""

    data: dict

    def to_dict(self) -> dict:
        return self.data

    def report(self) -> str:
        d = self.data
        o, h = d["optics"], d["hydrodynamics"]
        lines = [
            f"Probe {d['probe'].get('name') or ''}".rstrip(),
            f"  core {d['probe']['core']['material']} {d['probe']['core']['diameter_nm']:.2f} nm"
            + (f" / {d['probe']['shell']['material']} {d['probe']['shell']['thickness_nm']:.2f} nm"
               if "shell" in d["probe"] else ""),
            f"  emission {o['emission_peak_nm']:.1f} nm, FWHM {o['emission_fwhm_nm']:.1f} nm; "
            f"first exciton {o['absorption_peak_nm']:.1f} nm",
            f"  hydrodynamic diameter {h['hydrodynamic_diameter_nm']:.1f} nm (serum "
            f"{h['serum_hydrodynamic_diameter_nm']:.1f} nm); renal clearable: "
            f"{h['renal_clearable']}",
        ]
        lines += [f"  ! {f}" for f in d["flags"]]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        from qdmed.report import dict_to_html_table

        return dict_to_html_table(self.data)

    def plot(self, axes=None):
        """Emission spectrum and the layer diagram (two panels): on ``axes`` (two matplotlib
        Axes of one figure) when given, else on a new figure. Returns the figure."""
        import matplotlib.pyplot as plt
        import numpy as np

        from qdmed.errors import InputError
        from qdmed.optics import gaussian_in_energy

        own = axes is None
        if own:
            fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
        else:
            axes = list(np.ravel(axes))
            if len(axes) != 2:
                raise InputError(f"axes must be two matplotlib Axes (spectrum, layers); got "
                                 f"{len(axes)}")
            fig = axes[0].figure
        o = self.data["optics"]
        half = max(100.0, 4 * o["emission_fwhm_nm"])
        lo = max(300.0, min(o["emission_peak_nm"], o["absorption_peak_nm"]) - half)
        wl = np.arange(lo, o["emission_peak_nm"] + half, 0.5)
        axes[0].plot(wl, gaussian_in_energy(wl, o["emission_peak_nm"], o["emission_fwhm_meV"]),
                     color="C3")
        axes[0].axvline(o["absorption_peak_nm"], ls="--", color="grey", label="first exciton")
        axes[0].set_xlabel("wavelength (nm)")
        axes[0].set_ylabel("emission (1/nm)")
        axes[0].legend(frameon=False)
        ax2 = axes[1]
        layers = self.data["hydrodynamics"]["layers"]
        for i, lay in enumerate(reversed(layers)):
            r = lay["outer_diameter_nm"] / 2
            ax2.add_patch(plt.Circle((0, 0), r, color=f"C{len(layers) - 1 - i}", alpha=0.35,
                                     label=f"{lay['name']} ({lay['outer_diameter_nm']:.1f} nm)"))
        rmax = layers[-1]["outer_diameter_nm"] / 2
        ax2.add_patch(plt.Circle((0, 0), 5.5 / 2, fill=False, ls=":", color="k",
                                 label="renal cut-off 5.5 nm"))
        ax2.set_xlim(-rmax * 1.1, rmax * 1.1)
        ax2.set_ylim(-rmax * 1.1, rmax * 1.1)
        ax2.set_aspect("equal")
        ax2.set_xlabel("nm")
        ax2.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
        if own:  # a caller's figure keeps its own title and layout
            fig.suptitle(self.data["probe"].get("name") or "probe")
            fig.tight_layout()
        return fig


def probe_sheet(probe, *, dose_mg_per_kg=1.0, temperature_C=37.0) -> ProbeSheet:
    from qdmed import __version__
    from qdmed.optics import extinction_first_exciton, get_curve
    from qdmed.probe._probe import CHOI2010_LIGAND_LIMIT, REFERENCES, RENAL_THRESHOLD_NM
    from qdmed.probe._transport import diffusion_coefficient_um2_s, water_viscosity_mPa_s

    em = probe.emission()
    curve = get_curve(probe.core, probe.sizing_model)
    try:
        import warnings

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            eps = extinction_first_exciton(probe.core, diameter_nm=probe.core_diameter_nm,
                                           sizing_model=curve.name, extrapolate=True)
        eps_note = "first exciton of the core (Yu 2003 power law or material default)"
        if caught:  # outside the extinction relation's own calibration: say so on the sheet
            eps_note += "; " + "; ".join(str(w.message) for w in caught)
    except QdmedError as exc:
        eps, eps_note = None, str(exc)
    hd = probe.hydrodynamic_diameter_nm
    eta = water_viscosity_mPa_s(temperature_C)
    data = {
        "qdmed_version": __version__,
        "probe": probe.to_dict(),
        "optics": {
            "sizing_model": curve.name,
            "sizing_reference": curve.reference.to_dict(),
            "core_first_exciton_nm": float(curve.peak_from_diameter(probe.core_diameter_nm,
                                                                    extrapolate=True)),
            "absorption_peak_nm": em.absorption_peak_nm,
            "absorption_peak_eV": HC_EV_NM / em.absorption_peak_nm,
            "shell_shift_meV": em.shell_shift_meV,
            "stokes_shift_meV": em.stokes_shift_meV,
            "stokes_shift_source": em.stokes_source,
            "emission_peak_nm": em.emission_peak_nm,
            "emission_fwhm_nm": em.fwhm_nm,
            "emission_fwhm_meV": em.fwhm_meV,
            "extinction_first_exciton_M_cm": eps,
            "extinction_note": eps_note,
            "quantum_yield": probe.quantum_yield,
            "brightness_first_exciton_M_cm": None if eps is None else eps * probe.quantum_yield,
        },
        "hydrodynamics": {
            "inorganic_diameter_nm": probe.inorganic_diameter_nm,
            "layers": [lay.to_dict() for lay in probe.layers()],
            "hydrodynamic_diameter_nm": hd,
            "serum_hydrodynamic_diameter_nm": probe.serum_hydrodynamic_diameter_nm,
            "resists_protein_adsorption": probe.resists_protein_adsorption,
            "renal_threshold_nm": RENAL_THRESHOLD_NM,
            "renal_clearable": probe.renal_clearable,
            "temperature_C": temperature_C,
            "water_viscosity_mPa_s": eta,
            "diffusion_coefficient_um2_s": diffusion_coefficient_um2_s(
                hd, temperature_C=temperature_C, viscosity_mPa_s=eta),
            "choi2010_small_ligand_limit": list(CHOI2010_LIGAND_LIMIT),
        },
        "heavy_metals": {"dose_mg_per_kg": dose_mg_per_kg,
                         **probe.heavy_metals(dose_mg_per_kg)},
        "flags": probe.flags(),
        "references": [r.to_dict() for r in REFERENCES],
    }
    return ProbeSheet(data)
