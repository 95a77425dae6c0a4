"""What a reader of the reports and tables sees (review findings): names drawn as given,
links that open, empty cells rather than 'None', whole counts, provenance."""

import pandas as pd
import pytest

from qdmed.imaging import analyze_cohort, breast_panel_5plex, simulate_slide
from qdmed.report import HtmlReport

PANEL = breast_panel_5plex()
KW = dict(endmembers=PANEL.endmembers, marker_names=list(PANEL.markers), photons_per_unit=300.0,
          channel_names=list(PANEL.channel_names))


def test_cohort_report_with_odd_names_and_a_failed_slide(tmp_path):
    """A '$' in a slide name was parsed as math by matplotlib and crashed the report (and
    the cohort); a failed slide made cohort.csv's counts floats and printed 'None'."""
    folder = tmp_path / "slides"
    folder.mkdir()
    name = "x$1_{a$ & <b>.ome.zarr"
    simulate_slide(folder / name, (256, 256), preset="BT474", seed=1, tile=256, **KW)
    (folder / "broken.ome.tif").write_bytes(b"II*\x00garbage")
    res = analyze_cohort(folder, PANEL, tmp_path / "out", scheduler="synchronous",
                         progress=False, write_unmixed=False, outlines=False)
    html = (tmp_path / "out" / "report.html").read_text()
    assert "x$1_{a$ &amp; &lt;b&gt;.ome.zarr" in html
    assert "<a href='slides/x%241_%7Ba%24%20%26%20%3Cb%3E/report.html'>" in html
    assert ">None<" not in html
    slide_html = (tmp_path / "out" / "slides" / "x$1_{a$ & <b>" / "report.html").read_text()
    assert "HER2 was not scored: no calibration was given" in slide_html
    table = pd.read_csv(tmp_path / "out" / "cohort.csv", dtype=str, keep_default_na=False)
    ok = table[table["status"] == "ok"].iloc[0]
    assert ok["n_cells"].isdigit() and ok["n_scored"].isdigit()  # not 792.0
    assert table[table["status"] == "failed"].iloc[0]["n_scored"] == ""
    assert res["qdmed_version"] and res["panel"]["markers"]


def test_html_report_links_and_empty_cells(tmp_path):
    rep = HtmlReport("t")
    rep.table([{"a": None, "b": 1.5}])
    rep.links("see: ", [("s<1>", "slides/s 1/report.html")])
    text = rep.render()
    assert "<td></td><td>1.5</td>" in text
    assert "<a href='slides/s%201/report.html'>s&lt;1&gt;</a>" in text


def test_her2_figure_ticks_are_plain_numbers_in_the_reports():
    """The reports draw with math text off (names as given); the HER2 scatter's log axis
    then printed its ticks as '$\\mathdefault{10^{2}}$': they are plain numbers."""
    import matplotlib.pyplot as plt

    from qdmed.imaging import analyze_field, calibrate_her2, score_her2, simulate_field
    from qdmed.imaging._report import her2_figure

    kw = {k: v for k, v in KW.items() if k != "channel_names"}
    controls = {name: analyze_field(simulate_field((384, 384), preset=name, seed=s, **kw).image,
                                    PANEL).table
                for name, s in (("MDA-MB-468", 1), ("MCF-7", 2), ("BT474", 3))}
    cal = calibrate_her2(controls, categories={"MDA-MB-468": "0", "MCF-7": "1+"})
    her2 = score_her2(controls["BT474"], cal)
    with plt.rc_context({"text.parse_math": False}):
        fig = her2_figure(her2)
        fig.canvas.draw()
        ticks = [t.get_text() for t in fig.axes[0].get_yticklabels() if t.get_text()]
    plt.close(fig)
    assert ticks and not any("$" in t or "mathdefault" in t for t in ticks), ticks
    assert "100" in ticks


def test_overview_axes_are_labelled_at_round_micrometres():
    """A thumbnail 600 px wide at 7.998 um per thumbnail pixel (a slide overview): ticks at
    0, 1000, 2000 ... um, not at round thumbnail pixels (0, 800, 1600, 2399 ... um)."""
    import matplotlib.pyplot as plt
    import numpy as np

    from qdmed.imaging._report import um_axes

    fig, ax = plt.subplots()
    ax.imshow(np.zeros((600, 600)))
    um_axes(ax, 7.998)
    fig.canvas.draw()
    lo, hi = ax.get_xlim()
    shown = [t for t in ax.get_xticks() if lo <= t <= hi]
    labels = [f"{t * 7.998:.0f}" for t in shown]
    assert labels == ["0", "1000", "2000", "3000", "4000"]
    assert [t.get_text() for t in ax.get_xticklabels() if lo <= t.get_position()[0] <= hi] \
        == labels
    assert ax.get_xlabel() == "x (um)"
    plt.close(fig)


def test_unmixed_figure_shows_every_channel_on_its_own_scale(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from qdmed.imaging import write_ome_zarr
    from qdmed.imaging._report import unmixed_figure

    rng = np.random.default_rng(0)
    img = np.stack([rng.uniform(0, 10, (64, 64)), rng.uniform(0, 1000, (64, 64)),
                    rng.uniform(0, 0.3, (64, 64))], axis=-1).astype(np.float32)
    write_ome_zarr(tmp_path / "u.ome.zarr", img, channel_names=["DAPI", "HER2", "residual"],
                   pyramid_levels=1)
    fig = unmixed_figure(tmp_path / "u.ome.zarr")
    shown = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title().split(" ")[0] for ax in shown] == ["DAPI", "HER2", "residual"]
    # each component from 0 to its own 99.5th percentile; the residual from 0 to 1
    lims = [v for ax in shown for v in ax.images[0].get_clim()]
    assert lims == pytest.approx([0, np.percentile(img[..., 0], 99.5), 0,
                                  np.percentile(img[..., 1], 99.5), 0, 1.0], rel=1e-5)
    plt.close(fig)


def test_the_unmixing_is_said_in_the_report():
    """How a slide was unmixed is said in words (it was in the provenance JSON only)."""
    from qdmed.imaging._report import unmixing_paragraph

    assert unmixing_paragraph({"settings": {}}) == \
        "Unmixing: exact non-negative least squares per pixel."
    said = unmixing_paragraph({"settings": {"unmix_weights": "poisson", "read_noise_adu": 2.5}})
    assert said.startswith("Unmixing: Poisson maximum likelihood (read noise 2.5 counts) "
                           "per pixel")
    assert unmixing_paragraph({"panel": {"unmixed": True}, "settings": {}}) is None
