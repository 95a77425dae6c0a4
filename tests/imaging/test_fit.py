"""Does the panel explain the slide? The residual per square root of the counts grows with
brightness when a label on the slide is missing from the panel (qdmed.imaging._fit)."""

import numpy as np

from qdmed.imaging import analyze_slide, breast_panel_5plex, simulate_slide
from qdmed.imaging._fit import fit_summary
from qdmed.imaging._panel import build_panel_from_spectra

P = breast_panel_5plex()
RUN = dict(scheduler="synchronous", progress=False, write_unmixed=False, outlines=False)


def _without(marker):
    keep = [i for i, m in enumerate(P.markers) if m != marker]
    return build_panel_from_spectra([P.markers[i] for i in keep], [P.labels[i] for i in keep],
                                    [P.spectra[i] for i in keep], P.channels,
                                    brightness=[P.brightness[i] for i in keep],
                                    autofluorescence=P.autofluorescence)


def test_a_label_missing_from_the_panel_is_flagged(tmp_path):
    """MCF-7 (PR+ in ~60 % of cells) analysed without PR in the panel: the HER2 call moved
    from 1+ to 0 in a user's run with no warning; now the fit says so (measured ratio 16
    against 0.5 with the right panel)."""
    s = simulate_slide(tmp_path / "s.ome.zarr", (512, 512), preset="MCF-7",
                       endmembers=P.endmembers, marker_names=list(P.markers),
                       channel_names=list(P.channel_names), seed=4, tile=512)
    right = analyze_slide(s.path, P, tmp_path / "a", tile=256, **RUN).summary["fit"]
    assert right["ratio"] < 1.0 and not right["warnings"] and right["n_samples"] == 4 * 512
    wrong = analyze_slide(s.path, _without("PR"), tmp_path / "b", tile=256, **RUN).summary
    assert wrong["fit"]["ratio"] > 5
    assert any(w.startswith("fit: the panel does not explain the brightest cells")
               for w in _warnings(wrong))


def _warnings(summary):
    from qdmed.imaging._analyze import summary_warnings

    return summary_warnings(summary)


def test_fit_summary_needs_enough_samples():
    rng = np.random.default_rng(0)
    counts = rng.uniform(10, 1000, 150)
    d = fit_summary([{"counts": counts.tolist(), "residual": np.sqrt(counts).tolist()}, None])
    assert d["ratio"] is None and d["n_samples"] == 150 and not d["warnings"]
    counts = 10 ** rng.uniform(1, 5, 1000)  # 10-100,000 counts
    shot = fit_summary([{"counts": counts.tolist(),
                         "residual": (0.5 * np.sqrt(counts)).tolist()}])
    assert abs(shot["ratio"] - 1.0) < 1e-9 and not shot["warnings"]
    misfit = fit_summary([{"counts": counts.tolist(), "residual": (0.1 * counts).tolist()}])
    assert misfit["ratio"] > 3 and misfit["warnings"]
