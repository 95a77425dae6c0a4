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

StarDist's input is normalised as StarDist and QuPath do by default: the image's 1st and
99.8th percentiles to 0 and 1 (per tile on a slide, as QuPath's default does); cellpose
normalises its input itself (1st to 99th percentile).

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
from pathlib import Path

import numpy as np

from qdmed.errors import InputError

__all__ = ["MODEL_PIXEL_SIZE_UM", "load_segmentation_model", "segment_external"]

#: Pixel size (um) the pretrained nuclear models are run at (QuPath's StarDist convention).
MODEL_PIXEL_SIZE_UM = 0.5
#: One model call at a time in a process: a Dask worker of a user's cluster may run tiles in
#: several threads, and neither package documents its models as safe to share between
#: threads (both use every core within a call).
_CALL_LOCK = threading.Lock()
#: cellpose 4's fixed object size in pixels (its ``diameter`` rescales to it).
_CELLPOSE4_DIAMETER_PX = 30.0
_INSTALL = {"cellpose": "`pip install qdmed[seg]`",
            "stardist": "`pip install qdmed[stardist]`"}
_MODEL_HELP = ("their pretrained weights are downloaded on first use; offline, give weights "
               "on disk with model= (--segmentation-model): for cellpose a model file, for "
               "StarDist a model folder with config.json and weights_best.h5")


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


@functools.lru_cache(maxsize=4)
def _load(method: str, path: str | None):
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
            raise InputError(f"cellpose could not load its model "
                             f"{'nuclei' if path is None else path!r} ({type(exc).__name__}: "
                             f"{exc}); {_MODEL_HELP}") from exc
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
        raise InputError(f"StarDist could not load its model "
                         f"{'2D_versatile_fluo' if path is None else path!r} "
                         f"({type(exc).__name__}: {exc}); {_MODEL_HELP}") from exc


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
    path = None if model is None else str(_model_path(method, model).resolve())
    return _load(method, path)


def segment_external(img: np.ndarray, method: str, pixel_size_um: float, model=None,
                     model_pixel_size_um: float = MODEL_PIXEL_SIZE_UM) -> np.ndarray:
    """Nuclei of a 2-D nuclear image by cellpose or StarDist, the image seen by the model at
    ``model_pixel_size_um`` (see the module notes); labels in the image's pixels (int32).
    """
    m = load_segmentation_model(method, model)
    zoom = float(pixel_size_um) / float(model_pixel_size_um)  # model pixels per image pixel
    if method == "cellpose":
        # the diameter (image pixels) whose rescaling, ref / diameter, is `zoom`: cellpose 3
        # rescales to the model's diam_mean (17 px for nuclei), cellpose 4 to 30 px
        ref = getattr(m, "diam_mean", None) or _CELLPOSE4_DIAMETER_PX
        with _CALL_LOCK:
            masks = m.eval(img, diameter=float(ref) / zoom)[0]
    else:
        lo, hi = np.percentile(img, [1.0, 99.8])
        norm = (img - lo) / max(hi - lo, 1e-12)
        with _CALL_LOCK:
            masks = m.predict_instances(norm, scale=None if zoom == 1 else zoom)[0]
    masks = np.asarray(masks)
    if masks.shape != img.shape:
        raise InputError(f"{method} returned labels of shape {masks.shape} for an image of "
                         f"shape {img.shape}")
    return masks.astype(np.int32, copy=False)
