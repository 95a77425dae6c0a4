"""The cellpose and StarDist adapters (qdmed.imaging._external_seg), on stand-ins with the
packages' call signatures (cellpose 3.1 ``CellposeModel(gpu, model_type | pretrained_model)``
and ``eval(img, diameter) -> (masks, flows, styles)`` rescaling by ``diam_mean / diameter``;
StarDist 0.9 ``StarDist2D.from_pretrained`` / ``StarDist2D(None, name, basedir)`` and
``predict_instances(img, scale) -> (labels, details)``; both read in their installed
sources), so that what qdmed asks of them is checked without their weights, which need
internet. The last tests run the real packages with random weights when they are
installed (not in CI)."""

import sys
import types

import numpy as np
import pytest

from qdmed.errors import InputError
from qdmed.imaging import _external_seg as ext
from qdmed.imaging import segment_nuclei


def _image(n=64):
    yy, xx = np.mgrid[:n, :n]
    img = np.zeros((n, n))
    for cy, cx in ((16, 16), (40, 44)):
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 36] = 1.0
    return img


def _discs(img):
    from scipy import ndimage as ndi

    return ndi.label(img > 0.5)[0]


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """Stand-ins for cellpose.models and stardist.models recording their calls."""
    calls = []

    class CellposeModel:
        def __init__(self, gpu=True, model_type=None, pretrained_model=None):
            assert gpu is False  # the CPU path is the default
            calls.append(("cellpose load", model_type, pretrained_model))
            self.diam_mean = 17.0

        def eval(self, img, diameter=None, normalize=True):
            assert normalize is False  # qdmed normalises (one range for a slide's tiles)
            calls.append(("cellpose eval", diameter, img.shape))
            return _discs(img).astype(np.uint16), None, None

    class StarDist2D:
        def __init__(self, config, name=None, basedir=None):
            calls.append(("stardist load", name, basedir))

        @classmethod
        def from_pretrained(cls, name):
            calls.append(("stardist pretrained", name))
            return cls(None)

        def predict_instances(self, img, scale=None):
            calls.append(("stardist predict", scale, float(img.min()), float(img.max())))
            return _discs(img).astype(np.int32), {}

    cp, cpm = types.ModuleType("cellpose"), types.ModuleType("cellpose.models")
    cpm.CellposeModel, cp.models = CellposeModel, cpm
    sd, sdm = types.ModuleType("stardist"), types.ModuleType("stardist.models")
    sdm.StarDist2D, sd.models = StarDist2D, sdm
    for name, mod in (("cellpose", cp), ("cellpose.models", cpm), ("stardist", sd),
                      ("stardist.models", sdm)):
        monkeypatch.setitem(sys.modules, name, mod)
    ext._load.cache_clear()
    yield calls
    ext._load.cache_clear()


@pytest.mark.parametrize("method", ["cellpose", "stardist"])
def test_the_pretrained_nuclear_models_and_the_size_filter(fake, method):
    img = _image()
    img[:3, :3] = 1.0  # a 9-px speck: removed by the nucleus size filter (2.25 um^2)
    lab = segment_nuclei(img, pixel_size_um=0.5, method=method, min_area_um2=5.0)
    assert lab.dtype == np.int32 and lab.max() == 2 and lab[:3, :3].max() == 0
    assert fake[0] == (("cellpose load", "nuclei", None) if method == "cellpose" else
                       ("stardist pretrained", "2D_versatile_fluo"))


def test_models_see_the_image_at_their_pixel_size(fake):
    img = _image()
    for px in (0.5, 0.25):
        lab = segment_nuclei(img, pixel_size_um=px, method="cellpose", min_area_um2=1.0)
        assert lab.dtype == np.int32 and lab.max() == 2
    # cellpose 3 rescales by diam_mean / diameter: 17 / 17 = 1 at 0.5 um per pixel, and
    # 17 / 34 = 0.5 at 0.25 (nuclei twice as many pixels across are halved)
    assert [c[1] for c in fake if c[0] == "cellpose eval"] == [17.0, 34.0]
    segment_nuclei(img, pixel_size_um=0.25, method="stardist", min_area_um2=1.0)
    segment_nuclei(img, pixel_size_um=0.5, method="stardist", min_area_um2=1.0)
    segment_nuclei(img, pixel_size_um=0.25, method="stardist", min_area_um2=1.0,
                   model_pixel_size_um=0.25)
    pred = [c for c in fake if c[0] == "stardist predict"]
    assert [c[1] for c in pred] == [0.5, None, None]  # StarDist zooms the image by `scale`
    assert all((c[2], c[3]) == pytest.approx((0.0, 1.0), abs=0.01) for c in pred)
    # each model loaded once in the process, whatever the number of images
    assert [c[0] for c in fake].count("cellpose load") == 1
    assert [c[0] for c in fake].count("stardist pretrained") == 1


def test_one_normalisation_for_every_tile_of_a_slide(fake):
    """A tile normalised alone stretches its noise over the whole range, where the models
    dream up nuclei (QuPath 2022 hackathon, discussion 6): a slide's tiles get its reference
    region's range instead (fix_global_thresholds)."""
    noise = np.random.default_rng(3).normal(0.05, 0.01, (64, 64)).clip(0)
    ext.segment_external(noise, "stardist", 0.5)
    ext.segment_external(noise, "stardist", 0.5, value_range=(0.0, 1.0))
    own, fixed = [c[3] for c in fake if c[0] == "stardist predict"]
    assert own >= 1.0 and fixed < 0.15  # the noise fills the range, or stays near 0
    with pytest.raises(InputError, match="low < high"):
        ext.segment_external(noise, "stardist", 0.5, value_range=(1.0, 1.0))
    assert ext.nuclear_range(np.ones((8, 8)), "stardist") is None
    # each package's own percentiles: cellpose's normalize99, StarDist's 1 and 99.8
    ramp = np.arange(1001.0)
    assert ext.nuclear_range(ramp, "cellpose") == (10.0, 990.0)
    assert ext.nuclear_range(ramp, "stardist") == (10.0, 998.0)


def test_a_slide_fixes_the_models_range_on_its_reference_region(fake):
    from dataclasses import replace

    from qdmed.imaging import (
        AnalysisSettings,
        breast_panel_5plex,
        fix_global_thresholds,
        simulate_field,
        unmix_image,
    )

    panel = breast_panel_5plex()
    field = simulate_field((256, 256), preset="BT474", seed=4, endmembers=panel.endmembers,
                           marker_names=list(panel.markers))
    s = AnalysisSettings(segmentation="stardist").with_pixel_size()
    fixed = fix_global_thresholds(field.image, panel, s)
    dapi = unmix_image(field.image, panel)[..., panel.components.index("DAPI")]
    assert fixed.segmentation_range == pytest.approx(ext.nuclear_range(dapi, "stardist"))
    assert fixed.to_dict()["segmentation_range"] == list(fixed.segmentation_range)
    given = replace(s, segmentation_range=(0.0, 2.0))  # a range given is kept
    assert fix_global_thresholds(field.image, panel, given).segmentation_range == (0.0, 2.0)
    assert fix_global_thresholds(field.image, panel, s.__class__().with_pixel_size()) \
        .segmentation_range is None  # the watershed has its own threshold


def test_cellpose_4_is_given_its_own_reference_size(fake, monkeypatch):
    # cellpose 4 rescales to 30 px and its model has no diam_mean
    model = ext.load_segmentation_model("cellpose")
    monkeypatch.delattr(model, "diam_mean")
    segment_nuclei(_image(), pixel_size_um=0.25, method="cellpose", min_area_um2=1.0)
    assert [c[1] for c in fake if c[0] == "cellpose eval"] == [60.0]


def test_models_on_disk(fake, tmp_path):
    f = tmp_path / "my_nuclei_model"
    f.write_bytes(b"weights")
    segment_nuclei(_image(), method="cellpose", model=f, min_area_um2=1.0)
    assert ("cellpose load", None, str(f.resolve())) in fake
    folder = tmp_path / "sd" / "my_model"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    with pytest.raises(InputError, match="holds no weights"):  # StarDist would run random
        segment_nuclei(_image(), method="stardist", model=folder)
    (folder / "weights_best.h5").write_bytes(b"weights")
    segment_nuclei(_image(), method="stardist", model=folder, min_area_um2=1.0)
    assert ("stardist load", "my_model", str(folder.parent.resolve())) in fake
    # a path that is not a model is refused before the package is asked (cellpose 3 would
    # fall back to another model unsaid)
    n = len(fake)
    for method, bad in (("cellpose", tmp_path / "missing"), ("cellpose", tmp_path),
                        ("stardist", tmp_path / "missing")):
        with pytest.raises(InputError, match="is not a"):
            segment_nuclei(_image(), method=method, model=bad)
    assert len(fake) == n
    with pytest.raises(InputError, match="the watershed takes none"):
        segment_nuclei(_image(), model=f)


def test_a_model_that_cannot_be_loaded_is_said(fake, monkeypatch):
    import urllib.error

    def offline(*a, **k):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(sys.modules["cellpose.models"].CellposeModel, "__init__", offline)
    with pytest.raises(InputError, match="cellpose could not load its model 'nuclei' "
                                         r"\(URLError.*offline, give weights on disk"):
        segment_nuclei(_image(), method="cellpose")

    def bare(*a, **k):  # StarDist's failed download: a bare Exception
        raise Exception("URL fetch failure on https://github.com/...")

    monkeypatch.setattr(sys.modules["stardist.models"].StarDist2D, "from_pretrained", bare)
    with pytest.raises(InputError, match="StarDist could not load its model "
                                         "'2D_versatile_fluo'.*URL fetch failure"):
        segment_nuclei(_image(), method="stardist")


def test_a_package_not_installed_is_said(monkeypatch):
    ext._load.cache_clear()
    for name in ("cellpose", "cellpose.models", "stardist", "stardist.models"):
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
    with pytest.raises(InputError, match=r"needs the optional package cellpose.*qdmed\[seg\]"):
        segment_nuclei(_image(), method="cellpose")
    with pytest.raises(InputError, match=r"package stardist.*qdmed\[stardist\]"):
        segment_nuclei(_image(), method="stardist")
    ext._load.cache_clear()


def test_a_slide_checks_its_segmentation_before_any_tile(tmp_path, monkeypatch):
    from qdmed.imaging import AnalysisSettings, analyze_slide, breast_panel_5plex, simulate_slide

    ext._load.cache_clear()
    monkeypatch.setitem(sys.modules, "cellpose", None)
    panel = breast_panel_5plex()
    slide = tmp_path / "s.ome.zarr"
    simulate_slide(slide, (128, 128), preset="BT474", seed=1, endmembers=panel.endmembers,
                   marker_names=list(panel.markers), tile=128, write_labels=False)
    for settings, message in ((AnalysisSettings(segmentation="cellpose"),
                               "needs the optional package cellpose"),
                              (AnalysisSettings(segmentation_model=str(tmp_path)),
                               "is for cellpose or stardist"),
                              (AnalysisSettings(segmentation="stardist",
                                                segmentation_pixel_size_um=0),
                               "segmentation_pixel_size_um")):
        with pytest.raises(InputError, match=message):
            analyze_slide(slide, panel, tmp_path / "out", settings=settings, progress=False)
        assert not (tmp_path / "out").exists()  # said before any tile
    ext._load.cache_clear()


# ---------------------------------------------------------------- the real packages, if any
# the packages' own warnings (Keras under numpy 2, torch's sparse checks) are theirs
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning",
                            "ignore::UserWarning")
def test_real_cellpose_with_random_weights(tmp_path, monkeypatch):
    """cellpose 3 offline: a model of random weights saved and loaded from disk runs on a
    float64 image and gives labels of its shape (no weights are downloaded)."""
    models = pytest.importorskip("cellpose.models")
    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(tmp_path))
    path = tmp_path / "random_nuclei"
    pytest.importorskip("torch").manual_seed(0)
    try:
        models.CellposeModel(gpu=False, pretrained_model=False, diam_mean=17.0).net \
            .save_model(str(path))
    except (TypeError, ValueError) as exc:  # cellpose 4 trains no model from scratch
        pytest.skip(f"cellpose without random-weight models: {exc}")
    ext._load.cache_clear()
    lab = segment_nuclei(_image(128), pixel_size_um=0.25, method="cellpose", model=path)
    assert lab.shape == (128, 128) and lab.dtype == np.int32
    ext._load.cache_clear()


# the packages' own warnings (Keras under numpy 2, torch's sparse checks) are theirs
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning",
                            "ignore::UserWarning")
def test_real_stardist_with_random_weights(tmp_path):
    """StarDist offline: a random-weight model saved to a folder and loaded from it runs at
    another pixel size and gives labels of the image's shape."""
    sdm = pytest.importorskip("stardist.models")
    m = sdm.StarDist2D(sdm.Config2D(n_rays=16, grid=(2, 2), n_channel_in=1), name="rand",
                       basedir=str(tmp_path))
    m.keras_model.save_weights(str(m.logdir / "weights_best.h5"))
    ext._load.cache_clear()
    lab = segment_nuclei(_image(128), pixel_size_um=0.25, method="stardist",
                         model=tmp_path / "rand", min_area_um2=0.0)
    assert lab.shape == (128, 128) and lab.dtype == np.int32
    ext._load.cache_clear()


def test_a_cellpose_model_of_ones_own_is_given_its_training_size(fake, tmp_path):
    """cellpose 3 trains on images rescaled so that their nuclei, diam_labels px across,
    become diam_mean px: a model of one's own sees the image as in training with diameter
    diam_labels / zoom (a review: diam_mean / zoom gave nuclei 2.5 times too small)."""
    f = tmp_path / "own"
    f.write_bytes(b"weights")
    m = ext.load_segmentation_model("cellpose", f)
    m.diam_mean, m.diam_labels = 30.0, 12.0
    segment_nuclei(_image(), pixel_size_um=0.25, method="cellpose", model=f,
                   model_pixel_size_um=0.5, min_area_um2=1.0)
    assert [c[1] for c in fake if c[0] == "cellpose eval"] == [24.0]  # 12 px at 0.5 um


def test_a_model_is_named_by_its_absolute_path_and_its_files(fake, tmp_path, monkeypatch):
    from qdmed.imaging._external_seg import check_segmentation_model

    f = tmp_path / "own"
    f.write_bytes(b"weights")
    monkeypatch.chdir(tmp_path)
    # every worker of a cluster, wherever it runs, reads the same file (a review: a relative
    # path failed on workers started in another folder)
    assert check_segmentation_model("cellpose", "own") == str(f.resolve())
    before = ext.model_ident("cellpose", f)
    f.write_bytes(b"other weights")  # retrained under the same name: another model
    assert ext.model_ident("cellpose", f) != before
    for method, model, px in (("watershed", f, 0.5), ("watershed", None, 0.4)):
        with pytest.raises(InputError, match="is for cellpose or stardist"):
            check_segmentation_model(method, model, px)


def test_the_command_line_default_is_the_models_pixel_size():
    from qdmed.cli.image import _MODEL_PX

    assert _MODEL_PX == ext.MODEL_PIXEL_SIZE_UM


def test_images_too_small_for_a_nucleus_get_no_labels(fake):
    for shape, px in (((1, 1), 0.5), ((3, 7), 0.1), ((1, 50), 0.5), ((40, 7), 0.5)):
        lab = segment_nuclei(np.random.default_rng(0).random(shape), pixel_size_um=px,
                             method="cellpose")
        assert lab.shape == shape and lab.max() == 0
    assert not [c for c in fake if c[0] == "cellpose eval"]  # never asked


def test_a_file_that_is_no_model_is_said_in_one_line(fake, monkeypatch, tmp_path):
    import pickle

    def unpickle(*a, **k):
        raise pickle.UnpicklingError("Weights only load failed.\n" + "torch advice\n" * 40)

    monkeypatch.setattr(sys.modules["cellpose.models"].CellposeModel, "__init__", unpickle)
    f = tmp_path / "notes.txt"
    f.write_text("not a model")
    with pytest.raises(InputError) as err:
        segment_nuclei(_image(), method="cellpose", model=f)
    assert str(err.value) == (f"cellpose could not load {str(f.resolve())!r}: is it a "
                              "cellpose model file? (UnpicklingError: Weights only load "
                              "failed.)")


def test_the_summary_and_report_name_the_package_and_its_model(monkeypatch):
    import qdmed.imaging._analyze as analyze
    from qdmed.imaging._report import segmentation_paragraph

    monkeypatch.setattr(analyze, "package_version", lambda method: "cellpose 4.2.1")
    s = analyze.segmentation_summary(5, "DAPI", False, "cellpose")
    assert s["package"] == "cellpose 4.2.1" and "ran its cpsam model" in s["warnings"][0]
    assert not analyze.segmentation_summary(5, "DAPI", False, "cellpose", "/m/own")["warnings"]
    text = segmentation_paragraph({"settings": {"segmentation": "stardist",
                                                "segmentation_model": "/a/b/my_model",
                                                "segmentation_pixel_size_um": 0.4,
                                                "nuclear_marker": "DAPI"},
                                   "segmentation": {"package": "stardist 0.9.2"}})
    assert text.startswith("Segmentation: nuclei by stardist 0.9.2 (the model my_model, seen "
                           "at 0.4 um per pixel) on the unmixed DAPI channel")
