"""Nuclei from the optional deep-learning segmenters, cellpose and StarDist.

Three things the thin calls of these packages leave to their user, done here:

- **Resolution.** A pretrained nuclear model expects nuclei of the size in pixels it was
  trained on. cellpose's ``nuclei`` model rescales an image so that a nucleus of the given
  ``diameter`` becomes its ``diam_mean`` of 17 px (Stringer et al. 2021; cellpose 4 rescales
  to 30 px), and QuPath runs StarDist's ``2D_versatile_fluo`` model at 0.5 um per pixel (its
  StarDist extension's documented ``.pixelSize(0.5)``; Schmidt et al. 2018). qdmed runs
  both models at ``model_pixel_size_um`` (0.5 by default: 17 px is then 8.5 um, a typical
  nucleus) whatever the slide's pixel size: cellpose is given the ``diameter`` that makes
  its rescaling ``pixel_size_um / model_pixel_size_um``, StarDist that ``scale``; both
  return labels in the image's own pixels. Without it, a slide scanned at 0.25 um per pixel
  showed the models nuclei twice the size they were trained on.
- **The model, once.** Loading a model takes seconds (and a download the first time):
  models are kept per process, so a slide's tiles load it once per worker.
- **Offline and custom models.** Both packages download their pretrained weights on first
  use; without internet they fail with a network error (StarDist with a bare
  ``Exception``). ``model`` names weights on disk instead (a lab's own trained model, or
  the pretrained one copied there): for cellpose a model file, for StarDist a model folder
  with ``config.json`` and its weights. A path that does not exist is refused here, since
  cellpose 3 would fall back to another model unsaid and StarDist run with random weights.

**Intensity.** The input is normalised as each package does by default, percentiles of the
nuclear channel to 0 and 1: the 1st and 99.8th for StarDist (as QuPath does too), the 1st
and 99th for cellpose (its ``normalize99``), which is given the image so
(``normalize=False``). On a slide the two values are the reference region's (the window
with most tissue, :func:`qdmed.imaging.fix_global_thresholds`) for every tile: a tile
normalised alone, QuPath's default, stretches the noise of an empty or sparse tile over
the whole range, where the models "dream up" nuclei (QuPath's 2022 hackathon, discussion
6; StarDist itself normalises a whole image before tiling it).

References
----------
.. [1] C. Stringer, T. Wang, M. Michaelos, M. Pachitariu (2021). Cellpose: a generalist
   algorithm for cellular segmentation. Nat. Methods 18, 100-106.
   doi:10.1038/s41592-020-01018-x
.. [2] U. Schmidt, M. Weigert, C. Broaddus, G. Myers (2018). Cell detection with
   star-convex polygons. MICCAI 2018, LNCS 11071, 265-273. doi:10.1007/978-3-030-00934-2_30
"""

from __future__ import annotations

import functools
import threading
import warnings
from pathlib import Path

import numpy as np

from qdmed.errors import InputError

__all__ = ["MODEL_PIXEL_SIZE_UM", "check_segmentation_model", "load_segmentation_model",
           "model_ident", "nuclear_range", "package_version", "resolve_model",
           "segment_external"]

#: Pixel size (um) the pretrained nuclear models are run at (QuPath's StarDist convention).
MODEL_PIXEL_SIZE_UM = 0.5
#: Percentiles of the nuclear channel mapped to 0 and 1: each package's default (StarDist's,
#: as QuPath's; cellpose's normalize99), as their models were trained and are run.
NORM_PERCENTILES = {"cellpose": (1.0, 99.0), "stardist": (1.0, 99.8)}
#: The segmentations done by these packages.
EXTERNAL_METHODS = tuple(NORM_PERCENTILES)
#: One model call at a time in a process: a Dask worker of a user's cluster may run tiles in
#: several threads, and neither package documents its models as safe to share between
#: threads (both use every core within a call).
_CALL_LOCK = threading.Lock()
#: cellpose 4's fixed object size in pixels (its ``diameter`` rescales to it).
_CELLPOSE4_DIAMETER_PX = 30.0
_INSTALL = {"cellpose": "`pip install qdmed[seg]`",
            "stardist": "`pip install qdmed[stardist]`"}
_MODEL_HELP = ("its pretrained weights are downloaded on first use; offline, give weights "
               "on disk with model= (--segmentation-model): for cellpose a model file, for "
               "StarDist a model folder with config.json and weights_best.h5")
#: Fewer model pixels across than this hold no whole nucleus (16 px at 0.5 um is 8 um), and
#: cellpose fails on them (an image resized to nothing): no labels.
MIN_MODEL_PX = 16


def _first_line(exc: BaseException) -> str:
    """An exception said in one line (torch's unpickling errors run to a page)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _missing(method: str, exc: ImportError) -> InputError:
    return InputError(
        f"the segmentation method {method!r} (--segmentation {method}) needs the optional "
        f"package {method}, which is not installed ({exc}); install it with "
        f"{_INSTALL[method]} or use method='watershed' (--segmentation watershed).")


def _model_path(method: str, model) -> Path:
    p = Path(model).expanduser()
    if method == "cellpose" and not p.is_file():
        raise InputError(f"cellpose model {str(model)!r} is not a file; give a cellpose model "
                         "file (e.g. one trained with cellpose, or a pretrained one such as "
                         "nucleitorch_0 copied to disk)")
    if method == "stardist":
        if not (p / "config.json").is_file():
            raise InputError(f"StarDist model {str(model)!r} is not a StarDist model folder: "
                             "it needs config.json and its weights (weights_best.h5)")
        if not any(p.glob("*.h5")) and not any(p.glob("*.hdf5")):
            raise InputError(f"StarDist model folder {str(model)!r} holds no weights "
                             "(*.h5): StarDist would run with random weights")
    return p


def resolve_model(method: str, model) -> str | None:
    """``model`` (a cellpose model file, a StarDist model folder) checked and made absolute,
    so that every process of a run, on any machine of a cluster, reads the same one (and a
    summary names it); None stays None."""
    return None if model is None else str(_model_path(method, model).resolve())


def model_ident(method: str, model) -> list | None:
    """What identifies the weights at ``model`` for a resumed run and the model cache: the
    size and modification time of the cellpose file, or of the StarDist folder's config and
    weight files (weights replaced under the same name are another model)."""
    if model is None:
        return None
    p = _model_path(method, model)
    files = [p] if p.is_file() else sorted(
        f for f in p.iterdir() if f.suffix in (".json", ".h5", ".hdf5") and f.is_file())
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def package_version(method: str) -> str | None:
    """``"<package> <version>"`` of the installed cellpose or StarDist (None: not installed),
    for a summary."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{method} {version(method)}"
    except PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=4)
def _load(method: str, path: str | None, ident: str = ""):
    if method == "cellpose":
        try:
            from cellpose import models
        except ImportError as exc:
            raise _missing(method, exc) from exc
        try:
            if path is None:  # cellpose 4 ignores model_type: it runs its cpsam model
                return models.CellposeModel(gpu=False, model_type="nuclei")
            return models.CellposeModel(gpu=False, pretrained_model=path)
        except Exception as exc:  # a download without network, a file of another kind...
            raise InputError(
                f"cellpose could not load its model 'nuclei' ({_first_line(exc)}); {_MODEL_HELP}"
                if path is None else
                f"cellpose could not load {path!r}: is it a cellpose model file? "
                f"({_first_line(exc)})") from exc
    try:
        from stardist.models import StarDist2D
    except ImportError as exc:
        raise _missing(method, exc) from exc
    try:
        if path is None:
            return StarDist2D.from_pretrained("2D_versatile_fluo")
        p = Path(path)
        return StarDist2D(None, name=p.name, basedir=str(p.parent))
    except Exception as exc:  # StarDist raises a bare Exception when the download fails
        raise InputError(
            f"StarDist could not load its model '2D_versatile_fluo' ({_first_line(exc)}); "
            f"{_MODEL_HELP}" if path is None else
            f"StarDist could not load the model folder {path!r} ({_first_line(exc)})") from exc


def load_segmentation_model(method: str, model=None):
    """The cellpose or StarDist model ``segment_external`` runs (loaded once per process):
    the pretrained nuclear one (cellpose ``nuclei``, StarDist ``2D_versatile_fluo``), or the
    weights at ``model`` (a cellpose model file, a StarDist model folder).

    Raises
    ------
    InputError
        An unknown method, a package that is not installed, a model path that is not one,
        or a model that cannot be loaded (e.g. its download without network).
    """
    if method not in _INSTALL:
        raise InputError(f"no external segmentation {method!r}; accepted: "
                         f"{', '.join(_INSTALL)}")
    path = resolve_model(method, model)
    return _load(method, path, repr(model_ident(method, path)))


def check_segmentation_model(segmentation: str, model,
                             pixel_size_um: float = MODEL_PIXEL_SIZE_UM) -> str | None:
    """A cellpose or StarDist segmentation loaded before any tile, so that a package not
    installed, a model path that is not one or a download that fails is said at once (and
    the model is loaded once in this process), and its model's path made absolute (for
    workers in other folders or on other machines); returned. A model or a model pixel size
    for another method is refused."""
    from qdmed.imaging._cells import _positive

    _positive("segmentation_pixel_size_um (--segmentation-pixel-size)", pixel_size_um)
    if segmentation in EXTERNAL_METHODS:
        load_segmentation_model(segmentation, model)
        return resolve_model(segmentation, model)
    for given, what in ((model is not None, "a segmentation model (--segmentation-model)"),
                        (pixel_size_um != MODEL_PIXEL_SIZE_UM, "a segmentation pixel size "
                                               "(--segmentation-pixel-size)")):
        if given:
            raise InputError(f"{what} is for cellpose or stardist; segmentation "
                             f"{segmentation!r} takes none")
    return None


def _cellpose_diameter(m, model, zoom: float) -> float:
    """The ``diameter`` (image pixels) that makes cellpose see the image as at the model's
    pixel size (``zoom`` model pixels per image pixel). cellpose 3 rescales an image by
    ``diam_mean / diameter``: for its pretrained model, whose nuclei are ``diam_mean`` (17)
    px at the model's pixel size, the diameter is ``diam_mean / zoom``; a model of one's own
    was trained on images whose nuclei were ``diam_labels`` px (each rescaled to
    ``diam_mean``, cellpose's default), so its diameter is ``diam_labels / zoom`` (a review
    found such a model given nuclei 2.5 times too small). cellpose 4 rescales to 30 px."""
    ref = getattr(m, "diam_mean", None)
    if ref is None:
        return _CELLPOSE4_DIAMETER_PX / zoom
    labels = getattr(m, "diam_labels", None)
    if model is not None and labels is not None and float(labels) > 0:
        ref = labels
    return float(ref) / zoom


def nuclear_range(img, method: str) -> tuple[float, float] | None:
    """The nuclear intensities mapped to 0 and 1 for ``method``'s model (its
    :data:`NORM_PERCENTILES` of the image), or None when the image has no spread (nothing
    to normalise by)."""
    lo, hi = (float(v) for v in np.percentile(np.asarray(img, dtype=np.float64),
                                               NORM_PERCENTILES[method]))
    return (lo, hi) if hi > lo else None


def segment_external(img: np.ndarray, method: str, pixel_size_um: float, model=None,
                     model_pixel_size_um: float = MODEL_PIXEL_SIZE_UM,
                     value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Nuclei of a 2-D nuclear image by cellpose or StarDist, the image seen by the model at
    ``model_pixel_size_um`` and normalised by ``value_range`` (low, high: to 0 and 1; None:
    the image's own :func:`nuclear_range`); see the module notes. Labels in the image's
    pixels (int32).
    """
    m = load_segmentation_model(method, model)
    zoom = float(pixel_size_um) / float(model_pixel_size_um)  # model pixels per image pixel
    if min(img.shape) * zoom < MIN_MODEL_PX:
        return np.zeros(img.shape, dtype=np.int32)
    lo, hi = value_range if value_range is not None else (nuclear_range(img, method)
                                                          or (0.0, 1.0))
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        raise InputError(f"the nuclear intensity range for {method} must be finite with low < "
                         f"high; got ({lo!r}, {hi!r})")
    norm = (np.asarray(img, dtype=np.float64) - lo) / (hi - lo)
    with _CALL_LOCK, warnings.catch_warnings():
        # torch's notice on its sparse tensors (cellpose's mask building) is no news to a user
        warnings.filterwarnings("ignore", message="Sparse invariant checks")
        if method == "cellpose":
            masks = m.eval(norm, diameter=_cellpose_diameter(m, model, zoom),
                           normalize=False)[0]
        else:
            masks = m.predict_instances(norm, scale=None if zoom == 1 else zoom)[0]
    masks = np.asarray(masks)
    if masks.size == img.size:  # cellpose squeezes an image one pixel wide
        masks = masks.reshape(img.shape)
    if masks.shape != img.shape:
        raise InputError(f"{method} returned labels of shape {masks.shape} for an image of "
                         f"shape {img.shape}")
    return masks.astype(np.int32, copy=False)
