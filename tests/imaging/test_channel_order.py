"""A slide whose channels are named as the panel's bands but stored in another order is
analysed with the panel in the slide's order (measured endmembers reordered alike): the same
cells and levels as the slide in the panel's order. It used to be refused ("channel 702-740nm
does not match the panel's band ..."); a spectral library's control still is, naming the
order."""

import numpy as np
import pandas as pd
import pytest

from qdmed.errors import InputError
from qdmed.imaging import (
    analyze_slide,
    breast_panel_5plex,
    read_slide,
    simulate_slide,
    spectral_library,
    write_ome_zarr,
)
from qdmed.imaging._calibration_file import differences, intensity_scale

PANEL = breast_panel_5plex()
RUN = dict(scheduler="synchronous", progress=False, write_unmixed=False, outlines=False)


def test_bands_in_another_order_are_matched_by_name(tmp_path):
    kw = dict(endmembers=PANEL.endmembers, marker_names=list(PANEL.markers),
              photons_per_unit=300.0, channel_names=list(PANEL.channel_names))
    s = simulate_slide(tmp_path / "s.ome.zarr", (320, 320), preset="BT474", seed=3, tile=320,
                       **kw)
    # a measured HER2 endmember (a channel profile, reordered with the bands)
    her2 = PANEL.endmembers[:, PANEL.components.index("HER2")] * np.linspace(0.9, 1.1, 8)
    panel = PANEL.with_measured({"HER2": her2})
    order = [3, 0, 7, 1, 6, 2, 5, 4]
    data = np.asarray(read_slide(s.path).data)
    write_ome_zarr(tmp_path / "p.ome.zarr", data[..., order],
                   channel_names=[PANEL.channel_names[i] for i in order],
                   pixel_size_um=s.pixel_size_um)
    a = analyze_slide(s.path, panel, tmp_path / "a", **RUN)
    b = analyze_slide(tmp_path / "p.ome.zarr", panel, tmp_path / "b", **RUN)
    assert b.summary["panel"]["channels_nm"] == [list(PANEL.channels[i]) for i in order]
    ca, cb = pd.read_parquet(a.cells_path), pd.read_parquet(b.cells_path)
    assert len(ca) == len(cb) > 50
    cols = [c for c in ca if c.endswith("_mean")]
    np.testing.assert_allclose(cb[cols].to_numpy(), ca[cols].to_numpy(), rtol=1e-9, atol=1e-9)
    # named as --filters takes bands, without the unit: matched alike (they had been read
    # by position, a microscopist's walk-through)
    plain = [n.removesuffix("nm") for n in (PANEL.channel_names[i] for i in order)]
    write_ome_zarr(tmp_path / "q.ome.zarr", data[..., order], channel_names=plain,
                   pixel_size_um=s.pixel_size_um)
    c = analyze_slide(tmp_path / "q.ome.zarr", panel, tmp_path / "c", **RUN)
    np.testing.assert_allclose(pd.read_parquet(c.cells_path)[cols].to_numpy(),
                               ca[cols].to_numpy(), rtol=1e-9, atol=1e-9)
    from qdmed.imaging._analyze import _band

    assert _band("590-630") == (590.0, 630.0) and _band("590 - 630 nm") == (590.0, 630.0)
    assert _band("1-2") is None and _band("630-590") is None and _band("C1-2") is None
    # one intensity scale for a calibration: the same bands in another order
    assert differences(intensity_scale(a.summary["panel"], a.summary["slide"]),
                       intensity_scale(b.summary["panel"], b.summary["slide"])) == []
    # a control for a spectral library is measured in the panel's order: said, not guessed
    with pytest.raises(InputError, match=r"its channels are the panel's bands in another "
                                         r"order .*give them in the panel's order"):
        spectral_library(PANEL, unstained=tmp_path / "p.ome.zarr")


def test_a_channel_order_lists_every_channel_once():
    with pytest.raises(InputError, match="each of the panel's 8 channels once"):
        PANEL.in_channel_order([0, 0, 1, 2, 3, 4, 5, 6])
