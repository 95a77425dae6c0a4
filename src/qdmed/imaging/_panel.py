"""Multiplex panel design: QDs -> markers, detection channels, mixing matrix, crosstalk."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from qdmed.errors import FileFormatError, InputError, check_fields, check_number
from qdmed.optics import Spectrum, default_grid, emission_spectrum

#: Default tissue autofluorescence under violet excitation: a broad band peaking near 520 nm
#: (flavins, lipofuscin). Shape and position are an unverified [M] default; estimate the real
#: spectrum from an unstained control (:func:`autofluorescence_from_control`).
DEFAULT_AF_PEAK_NM = 520.0
DEFAULT_AF_FWHM_NM = 150.0
#: Nuclear counterstain DAPI (bound to DNA): emission maximum ~461 nm; excited at 405 nm
#: (Thermo Fisher DAPI product data [M]); modelled as an energy-Gaussian, FWHM ~ 70 nm [M].
DAPI_PEAK_NM = 461.0
DAPI_FWHM_NM = 70.0
#: DAPI absorbs in the UV (maximum 358 nm bound to DNA) and is used with UV or violet
#: (405 nm) lasers, not blue (488 nm) ones (Beckman Coulter DAPI product data [M]); taken
#: here as not excited above this wavelength [M].
DAPI_MAX_EXCITATION_NM = 420.0
#: Wavelengths a detection band may span: qdmed models spectra on 350-1000 nm; edges below
#: this floor are taken for micrometres and refused.
_BAND_FLOOR_NM = 200.0
_BAND_CEILING_NM = 2000.0
#: A component with less of its emission than this in all the channels together, or a
#: channel with less than this share of the average channel's signal, has no signal.
_MIN_DETECTED = 1e-3
#: A label with less of its emission than this in the channels is warned as weak.
_WEAK_DETECTED = 0.25
#: A label's relative brightness, or a marker's relative abundance (``check_number``
#: keywords): a vendor's extinction (8.8e6 M^-1 cm^-1 for Qdot 800) or receptors per cell
#: (~2e6 HER2 on BT-474) may be given as they are; 1e308 overflowed the simulated photon
#: counts (a review), and 1e12 times the 1e6 photons per unit simulate allows stays within
#: what numpy's Poisson sampler takes (~9e18).
BRIGHTNESS_RANGE = {"lo": 0.0, "lo_open": True, "hi": 1e12}


def check_bands(channels, source: str = "channels") -> list[tuple[float, float]]:
    """Detection bands checked: (low_nm, high_nm) pairs of finite numbers, high > low, in
    nanometres (200-2000 nm; smaller edges are refused as micrometres)."""
    try:
        bands = [(float(lo), float(hi)) for lo, hi in channels]
        if any(isinstance(v, bool | str) for band in channels for v in band):
            raise TypeError("an edge is text or true/false")  # float() took "440" and true
    except (TypeError, ValueError) as exc:
        raise InputError(f"{source}: detection bands must be [low_nm, high_nm] pairs of "
                         f"numbers; got "
                         f"{channels!r}") from exc
    if not bands:
        raise InputError(f"{source}: no detection band given")
    for lo, hi in bands:
        if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
            raise InputError(f"{source}: every band needs finite edges with high > low; got "
                             f"{lo:g}-{hi:g} nm")
        if lo < _BAND_FLOOR_NM or hi > _BAND_CEILING_NM:
            hint = (" (these look like micrometres: give nanometres, e.g. 500-560)"
                    if hi < _BAND_FLOOR_NM else "")
            raise InputError(f"{source}: band {lo:g}-{hi:g} nm is outside "
                             f"{_BAND_FLOOR_NM:.0f}-{_BAND_CEILING_NM:.0f} nm{hint}")
    return bands


def autofluorescence_spectrum(peak_nm=DEFAULT_AF_PEAK_NM, fwhm_nm=DEFAULT_AF_FWHM_NM,
                              wavelength_nm=None) -> Spectrum:
    s = emission_spectrum(peak_nm, fwhm_nm, wavelength_nm=wavelength_nm, label="autofluorescence")
    return Spectrum(s.wavelength_nm, s.values, "autofluorescence", "autofluorescence")


#: Most channels of a spectral detector (hyperspectral cameras record a few hundred).
MAX_SPECTRAL_CHANNELS = 1024


def spectral_channels(n: int, low_nm: float, high_nm: float) -> list[tuple[float, float]]:
    """Contiguous equal-width bands of a spectral detector with ``n`` channels."""
    if n < 1 or not high_nm > low_nm:
        raise InputError(f"spectral detector needs n >= 1 and high > low, got n={n}, "
                         f"{low_nm}-{high_nm} nm")
    if n > MAX_SPECTRAL_CHANNELS:  # a review's 100000 passed
        raise InputError(f"spectral detector of {n} channels: at most "
                         f"{MAX_SPECTRAL_CHANNELS} (hyperspectral cameras record a few "
                         "hundred bands)")
    edges = np.linspace(low_nm, high_nm, n + 1)
    return check_bands([(float(a), float(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)],
                       "spectral detector")


def mixing_matrix(spectra, channels, brightness=None) -> np.ndarray:
    """Channels x components matrix: each (area-normalised) spectrum integrated over each band,
    times the component's relative brightness."""
    b = np.ones(len(spectra)) if brightness is None else np.asarray(brightness, float)
    m = np.array([[s.normalized().band_integral(lo, hi) for s in spectra] for lo, hi in channels])
    return m * b[None, :]


def spreading_matrix(endmembers) -> np.ndarray:
    """Spillover spreading matrix of least-squares unmixing under shot noise.

    ``S[i, j] = sqrt(sum_c P[i, c]^2 A[c, j])`` with ``P = pinv(A)``: the standard deviation
    of component ``i``'s unmixed abundance that component ``j`` alone causes, per square root
    of ``j``'s abundance, when the detected counts are Poisson (variance = mean; counts in
    photo-electrons: with a gain of ``g`` counts per electron, multiply by ``sqrt(g)``).
    Element ``(i, j)`` is how much pixels bright in ``j`` widen the negative population of
    ``i``: a positivity gate for ``i`` from a control lacking ``j`` is too low in tissue rich
    in ``j``. This is the quantity Nguyen et al. (Cytometry A 2013;83:306-315,
    doi:10.1002/cyto.a.22251) measure from single-stain controls as the spillover spreading
    matrix (``sqrt(var_pos - var_neg) / sqrt(signal_pos - signal_neg)``), derived here from
    the endmembers, and it describes least-squares unmixing without the non-negativity
    constraint exactly (checked against that definition by simulation). qdmed's NNLS
    clips the spread: per pixel its upper tail is narrower, but the clipping leaves a
    positive offset that does not average out over a cell's pixels (built-in panel, pure
    single-stain pixels of abundance 300: DAPI into HER2, 99th percentile 13
    against 66 unconstrained, where 2.326 S sqrt(300) gives 67; ER into PR, 100-pixel
    means 1.4 +- 0.2 against 0 +- 0.4).
    Read ``S`` as a ranking of which pairs matter, not as the per-cell spread of NNLS
    means. Diagonal: the component's own shot-noise factor. Scale: per square root of
    ``j``'s abundance in the panel's column units (area-normalised emission times
    brightness), not per square root of ``j``'s signal in its primary detector as
    cytometry's spillover spreading matrices are normalised, so the values are not
    comparable with a cytometer's SSM; the ranking of pairs can differ from it too.
    """
    a = np.asarray(endmembers, dtype=np.float64)
    p = np.linalg.pinv(a)
    return np.sqrt((p * p) @ a)


def _normalized_columns(m: np.ndarray) -> np.ndarray | None:
    """``m`` with unit-norm columns (None when a column is all zero)."""
    norms = np.linalg.norm(m, axis=0, keepdims=True)
    return None if np.any(norms == 0) else m / norms


def noise_gains(m: np.ndarray) -> np.ndarray:
    """Per component, the noise amplification of least-squares unmixing: the norm of its row
    of ``pinv(m)`` times the norm of its column (1 for a column orthogonal to all others;
    independent of each column's scale); infinite for a component with no signal."""
    norms = np.linalg.norm(m, axis=0)
    out = np.full(m.shape[1], np.inf)
    ok = norms > 0  # a column without signal contributes nothing to the others
    if ok.any():
        out[ok] = np.sqrt(np.sum(np.linalg.pinv(m[:, ok] / norms[ok]) ** 2, axis=1))
    return out


def condition_number(m: np.ndarray) -> float:
    """Condition number of the column-normalised mixing matrix: how well the spectra
    separate, whatever the labels' brightness (scaling a column, a brighter label, changes
    the plain condition number but not how separable the spectra are; the NNLS solver works
    on the same normalised matrix). Infinite when a component has no signal."""
    mn = _normalized_columns(m)
    return float("inf") if mn is None else float(np.linalg.cond(mn))


def _crosstalk(m: np.ndarray) -> dict:
    norms = np.linalg.norm(m, axis=0, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        mn = m / norms
        cos = mn.T @ mn
        primary = np.argmax(m, axis=0)
        spill = m[primary, :].T / m[primary, np.arange(m.shape[1])][:, None]  # row i: comp i
    return {"cosine": cos, "spillover": spill, "noise_gain": noise_gains(m),
            "spreading": spreading_matrix(m), "condition_number": condition_number(m)}


@dataclass(frozen=True, eq=False)
class Panel:
    """A multiplexed QD panel: one label per marker, detection channels, mixing matrix.

    ``components`` are the marker names followed by ``"autofluorescence"`` (if modelled).
    ``endmembers`` (channels x components) is what the unmixing uses.

    An *already-unmixed* panel (:func:`unmixed_panel`; ``unmixed`` is True) describes an image
    whose channels are per-marker abundances, unmixed elsewhere (an inForm
    ``component_data.tif``, a Phenochart-unmixed QPTIFF, any image with one channel per
    marker): ``sources`` names the image channel of each component, and ``channels`` holds
    the image's channel names once bound to an image (:func:`bind_unmixed`). It has no
    spectra; its endmembers select each component's channel, so the exact NNLS solution is
    that channel clipped at zero.
    """

    markers: tuple[str, ...]
    labels: tuple[str, ...]
    spectra: tuple[Spectrum, ...]
    channels: tuple[tuple[float, float], ...]
    brightness: tuple[float, ...]
    excitation_nm: float = 405.0
    autofluorescence: Spectrum | None = None
    warnings: tuple[str, ...] = field(default=())
    measured: tuple = ()  # ((component, per-channel vector), ...) replacing modelled columns
    #: already-unmixed panels: the image channel (name, or 0-based index) of each component,
    #: in component order; empty for a spectral panel
    sources: tuple = ()
    #: separability warning thresholds (kept when measured endmembers replace columns)
    max_condition: float = 100.0
    max_cosine: float = 0.98

    @property
    def unmixed(self) -> bool:
        """True for an already-unmixed panel (image channels = components)."""
        return bool(self.sources)

    @property
    def components(self) -> tuple[str, ...]:
        if self.unmixed:
            return self.markers + (("autofluorescence",) if len(self.sources) > len(self.markers)
                                   else ())
        return self.markers + (("autofluorescence",) if self.autofluorescence is not None else ())

    @property
    def channel_names(self) -> tuple[str, ...]:
        if self.unmixed:
            return tuple(self.channels)
        return tuple(f"{lo:.0f}-{hi:.0f}nm" for lo, hi in self.channels)

    def source_channels(self) -> tuple[int, ...]:
        """Already-unmixed panels bound to an image: each component's channel index."""
        if not self.unmixed:
            raise InputError("a spectral panel has no source channels: it unmixes spectra")
        if not self.channels:
            raise InputError("an already-unmixed panel knows its channels only once bound to "
                             "an image's channel names (bind_unmixed(panel, names), or "
                             "image_channels in its file)")
        return tuple(channel_index(src, self.channels, f"component {comp!r}")
                     for comp, src in zip(self.components, self.sources, strict=True))

    @property
    def endmembers(self) -> np.ndarray:
        if self.unmixed:
            idx = self.source_channels()
            m = np.zeros((len(self.channels), len(idx)))
            m[list(idx), np.arange(len(idx))] = 1.0
            return m
        specs = list(self.spectra) + ([self.autofluorescence] if self.autofluorescence else [])
        b = list(self.brightness) + ([1.0] if self.autofluorescence else [])
        m = mixing_matrix(specs, self.channels, b)
        for name, vec in self.measured:
            j = self.components.index(name)
            v = np.asarray(vec, float)
            # keep the modelled column's scale, so abundances stay comparable across components
            m[:, j] = v / v.sum() * m[:, j].sum()
        return m

    def with_measured(self, endmembers: dict) -> Panel:
        """A copy whose endmember columns are replaced by measured channel profiles
        (e.g. from single-stain controls, :func:`endmember_from_control`), keyed by component
        name (a marker or ``"autofluorescence"``)."""
        if self.unmixed:
            raise InputError("an already-unmixed panel has no spectra to measure: its image "
                             "channels are the components")
        meas = dict(self.measured)
        for name, vec in endmembers.items():
            if name not in self.components:
                raise InputError(f"measured endmember {name!r} is not a panel component "
                                 f"{list(self.components)}")
            v = np.asarray(vec, float)
            if v.shape != (len(self.channels),) or np.any(v < 0) or not v.sum() > 0:
                raise InputError(f"measured endmember {name!r} must be {len(self.channels)} "
                                 f"non-negative values (one per channel), not all zero; got {vec!r}")
            meas[name] = tuple(float(x) for x in v)
        return _with_warnings(replace(self, measured=tuple(meas.items())))

    def in_channel_order(self, order) -> Panel:
        """A copy whose detection channels are reordered: channel ``i`` of the copy is
        channel ``order[i]`` of this panel, and measured endmembers are reordered alike (the
        same spectra, listed as an image stores its bands in another order)."""
        if self.unmixed:
            raise InputError("an already-unmixed panel is bound to its image's channels by "
                             "name (bind_unmixed), not reordered")
        order = [int(i) for i in order]
        if sorted(order) != list(range(len(self.channels))):
            raise InputError(f"a channel order must list each of the panel's "
                             f"{len(self.channels)} channels once (0-based); got {order}")
        return replace(self, channels=tuple(self.channels[i] for i in order),
                       measured=tuple((name, tuple(vec[i] for i in order))
                                      for name, vec in self.measured))

    def crosstalk(self) -> dict:
        return _crosstalk(self.endmembers)

    def to_dict(self) -> dict:
        if self.unmixed:
            return {"unmixed": True, "markers": list(self.markers),
                    "labels": dict(zip(self.components, map(str, self.sources), strict=True)),
                    "components": list(self.components),
                    "image_channels": list(self.channels) or None,
                    "image_channel_index": dict(zip(self.components, self.source_channels(),
                                                    strict=True)) if self.channels else None,
                    # the endmembers select channels: orthonormal columns
                    "condition_number": 1.0, "warnings": list(self.warnings)}
        ct = self.crosstalk()
        return {
            "excitation_nm": self.excitation_nm,
            "markers": list(self.markers),
            "labels": dict(zip(self.markers, self.labels, strict=True)),
            "label_peaks_nm": {m: s.peak_nm for m, s in zip(self.markers, self.spectra, strict=True)},
            "channels_nm": [list(c) for c in self.channels],
            "components": list(self.components),
            "mixing_matrix": self.endmembers.round(6).tolist(),
            "condition_number": ct["condition_number"],
            "max_cosine_similarity": float(np.max(ct["cosine"] - np.eye(len(self.components)))),
            "spillover": ct["spillover"].round(4).tolist(),
            "noise_gain": ct["noise_gain"].round(3).tolist(),
            # row i, column j: spread of i per sqrt(abundance of j) (spreading_matrix)
            "spreading": ct["spreading"].round(4).tolist(),
            "warnings": list(self.warnings),
        }

    def to_yaml_dict(self) -> dict:
        """The panel file layout. Catalog Qdots and DAPI are stored by name; other labels and
        the autofluorescence store their sampled spectrum (1 nm grid, 6 significant digits),
        so that a saved panel reloads with the same endmembers to those digits (the
        built-in panel's to 2.1e-5 relative, measured; peak/FWHM are written for reading
        only)."""

        if self.unmixed:
            doc = {"components": dict(zip(self.components, self.sources, strict=True))}
            return doc | ({"image_channels": list(self.channels)} if self.channels else {})

        def spec(s: Spectrum) -> dict:
            grid = np.arange(float(np.ceil(s.wavelength_nm[0])), float(s.wavelength_nm[-1]) + 0.5)
            return {"wavelength_nm": grid.tolist(),
                    "values": [float(f"{v:.6g}") for v in s.resample(grid)]}

        markers = {}
        for m, lab, s, b in zip(self.markers, self.labels, self.spectra, self.brightness,
                                strict=True):
            e = {"label": lab, "peak_nm": round(s.peak_nm, 2), "fwhm_nm": round(s.fwhm_nm, 2),
                 "brightness": b}
            if not _resolvable(lab) or not _same_spectrum(_label_spectrum(lab, s.wavelength_nm),
                                                          s):
                e["spectrum"] = spec(s)  # a custom label, even one under a catalog name
            markers[m] = e
        af = None
        if self.autofluorescence is not None:
            af = {"peak_nm": round(self.autofluorescence.peak_nm, 2),
                  "fwhm_nm": round(self.autofluorescence.fwhm_nm, 2),
                  "spectrum": spec(self.autofluorescence)}
        return {"excitation_nm": self.excitation_nm,
                "channels_nm": [list(c) for c in self.channels],
                "markers": markers, "autofluorescence": af,
                "measured_endmembers": {k: list(v) for k, v in self.measured}}

    def to_file(self, path) -> Path:
        """Write the panel document (:meth:`to_yaml_dict`): YAML, or JSON for a ``.json``
        path (a review found YAML in a .json file); :meth:`from_file` reads either."""
        import json

        import yaml

        from qdmed.report import atomic_write_text

        doc = self.to_yaml_dict()
        text = (json.dumps(doc, indent=1) + "\n" if str(path).lower().endswith(".json")
                else yaml.safe_dump(doc, sort_keys=False))
        return atomic_write_text(path, text)

    @classmethod
    def from_file(cls, path) -> Panel:
        import yaml

        p = Path(path)
        from qdmed._documents import safe_load_unique

        try:
            doc = safe_load_unique(p.read_text(encoding="utf-8"))
        except OSError as exc:
            raise InputError(f"cannot read panel file {p}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise FileFormatError(f"{p}: not a UTF-8 text (YAML) file ({exc.reason} at byte "
                                  f"{exc.start})") from exc
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            raise FileFormatError(f"{p}:{' line ' + str(mark.line + 1) if mark else ''} "
                                  f"malformed YAML" + (f": {exc.problem}" if getattr(
                                      exc, "problem", None) else "")) from exc
        return cls.from_dict(doc, source=str(p))

    @classmethod
    def from_dict(cls, doc, *, source="<panel>") -> Panel:
        if isinstance(doc, dict) and "components" in doc:
            if "mixing_matrix" in doc or "condition_number" in doc and "markers" in doc:
                # a review's Panel.from_dict(p.to_dict()) read as a malformed panel
                raise FileFormatError(f"{source}: this is Panel.to_dict()'s summary, not a "
                                      "panel document: save a panel with to_file(path) or "
                                      "to_yaml_dict(), and read it with Panel.from_file or "
                                      "Panel.from_dict(p.to_yaml_dict())")
            if "channels_nm" in doc or "markers" in doc:
                raise FileFormatError(f"{source}: a panel is spectral ('markers' and "
                                      f"'channels_nm') or already unmixed ('components'), "
                                      f"not both")
            return _unmixed_from_dict(doc, source)
        if not isinstance(doc, dict) or "markers" not in doc or "channels_nm" not in doc:
            raise FileFormatError(f"{source}: a panel needs 'markers' and 'channels_nm' (a "
                                  f"spectral panel) or 'components' (an already-unmixed image)")
        check_fields(doc, _PANEL_KEYS, source)
        if not isinstance(doc["markers"], dict) or not doc["markers"]:
            raise FileFormatError(f"{source}: 'markers' must map marker names to "
                                  "{label: ...} or {peak_nm: ..., fwhm_nm: ...}")
        grid = default_grid(350, 1000, 0.5)
        markers, labels, spectra, bright = [], [], [], []
        for m, e in doc["markers"].items():
            if not isinstance(m, str):  # YAML reads yes, null, 123 as non-text (a review
                # got markers "True", "None" and "123")
                raise FileFormatError(f"{source}: marker name {m!r} is not text (YAML reads "
                                      "yes/no/on/off, null and numbers as such): quote it, "
                                      "e.g. 'CD3': or \"yes\":")
            if not isinstance(e, dict):
                raise FileFormatError(f"{source}: markers.{m} must be a mapping")
            check_fields(e, _MARKER_KEYS, source, f"markers.{m}")
            try:
                if "spectrum" in e:
                    s = _spectrum_from_doc(e["spectrum"], grid, str(e.get("label", m)))
                elif "label" in e and _resolvable(e["label"]):
                    s = _label_spectrum(e["label"], grid)
                    _check_catalog_entry(e, s)
                elif "peak_nm" in e:
                    _check_custom_name(e.get("label"))
                    s = emission_spectrum(_band_value(e, "peak_nm", source, f"markers.{m}"),
                                          _band_value(e, "fwhm_nm", source, f"markers.{m}",
                                                      30.0),
                                          wavelength_nm=grid, label=str(e.get("label", m)))
                elif "label" in e:  # a name qdmed cannot rebuild, and no spectrum
                    raise FileFormatError(
                        f"{source}: markers.{m}: label {e['label']!r} is not in the catalog "
                        f"(catalog labels: DAPI, {', '.join(_catalog_names())}); for another "
                        "label give its 'peak_nm' (+ 'fwhm_nm') or a 'spectrum'")
                else:
                    raise FileFormatError(
                        f"{source}: markers.{m} needs a catalog 'label' (e.g. Qdot 605), "
                        "'peak_nm' (+ 'fwhm_nm') or a 'spectrum'")
                b = check_number(e.get("brightness", 1.0), f"{source}: markers.{m}.brightness",
                                 **BRIGHTNESS_RANGE, error=FileFormatError)
            except FileFormatError:
                raise  # already names the file and the entry
            except (TypeError, ValueError, KeyError) as exc:
                if isinstance(exc, InputError):
                    raise FileFormatError(f"{source}: markers.{m}: {exc}") from exc
                raise FileFormatError(f"{source}: markers.{m}: malformed entry ({exc})") from exc
            markers.append(str(m))
            labels.append(str(e.get("label", f"{s.peak_nm:.0f} nm")))
            spectra.append(s)
            bright.append(b)
        try:
            channels = check_bands(doc.get("channels_nm"), f"{source}: channels_nm")
        except InputError as exc:
            raise FileFormatError(str(exc)) from None
        af = doc.get("autofluorescence", {"peak_nm": DEFAULT_AF_PEAK_NM,
                                         "fwhm_nm": DEFAULT_AF_FWHM_NM})
        if isinstance(af, dict):
            check_fields(af, _AF_KEYS, source, "autofluorescence")
        try:
            if af is None:
                af_s = None
            elif isinstance(af, dict) and "spectrum" in af:
                s = _spectrum_from_doc(af["spectrum"], grid, "autofluorescence")
                af_s = Spectrum(s.wavelength_nm, s.values, "autofluorescence", "autofluorescence")
            elif isinstance(af, dict):
                af_s = autofluorescence_spectrum(
                    _band_value(af, "peak_nm", source, "autofluorescence"),
                    _band_value(af, "fwhm_nm", source, "autofluorescence"), grid)
            else:
                raise TypeError("not a mapping")
        except (TypeError, ValueError, KeyError) as exc:
            raise FileFormatError(f"{source}: autofluorescence must be null or a mapping with "
                                  f"peak_nm and fwhm_nm (or a spectrum) ({exc})") from exc
        excitation_nm = check_number(doc.get("excitation_nm", 405.0), f"{source}: excitation_nm",
                                     lo=_BAND_FLOOR_NM, hi=_BAND_CEILING_NM, unit="nm",
                                     error=FileFormatError)
        try:
            panel = build_panel_from_spectra(markers, labels, spectra, channels,
                                             brightness=bright, excitation_nm=excitation_nm,
                                             autofluorescence=af_s)
        except InputError as exc:  # bands in um, an excitation out of range...
            raise FileFormatError(f"{source}: {exc}") from None
        meas = doc.get("measured_endmembers") or {}
        if not isinstance(meas, dict):
            raise FileFormatError(f"{source}: measured_endmembers must map component -> list")
        try:
            return panel.with_measured(meas) if meas else panel
        except (TypeError, ValueError) as exc:
            if isinstance(exc, InputError):
                raise FileFormatError(f"{source}: {exc}") from exc
            raise FileFormatError(f"{source}: measured_endmembers must map each component to "
                                  f"one number per channel ({exc})") from exc

    def plot(self):
        import matplotlib.pyplot as plt

        if self.unmixed:
            rows = [[c, str(src)] for c, src in zip(self.components, self.sources, strict=True)]
            fig, ax = plt.subplots(figsize=(5.5, 0.45 * len(rows) + 0.9))
            ax.axis("off")
            t = ax.table(cellText=rows, colLabels=["component", "image channel"], loc="center",
                         cellLoc="left")
            t.scale(1, 1.3)
            ax.set_title("already-unmixed panel: each component read from its channel",
                         fontsize=9)
            fig.tight_layout()
            return fig
        fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
        for i, (m, s) in enumerate(zip(self.markers, self.spectra, strict=True)):
            axes[0].plot(s.wavelength_nm, s.normalized("peak").values, color=f"C{i}",
                         label=m if self.labels[i] == m else f"{m}: {self.labels[i]}")
        if self.autofluorescence is not None:
            af = self.autofluorescence.normalized("peak")
            axes[0].plot(af.wavelength_nm, af.values, "k--", label="autofluorescence")
        for lo, hi in self.channels:
            axes[0].axvspan(lo, hi, color="grey", alpha=0.08)
        axes[0].set_xlim(self.channels[0][0] - 60, self.channels[-1][1] + 40)
        axes[0].set_xlabel("wavelength (nm)")
        axes[0].set_ylabel("normalised emission")
        axes[0].legend(fontsize=7, frameon=False)
        im = axes[1].imshow(self.endmembers / self.endmembers.max(0), aspect="auto", cmap="viridis")
        axes[1].set_yticks(range(len(self.channels)), self.channel_names, fontsize=7)
        axes[1].set_xticks(range(len(self.components)), self.components, rotation=45, fontsize=7)
        axes[1].set_title(f"mixing matrix (cond = {self.crosstalk()['condition_number']:.1f})")
        fig.colorbar(im, ax=axes[1]).set_label("relative to its peak channel", fontsize=8)
        ssm = self.crosstalk()["spreading"]
        off = ssm - np.diag(np.diag(ssm))
        im2 = axes[2].imshow(off, cmap="magma", aspect="auto")
        n = len(self.components)
        axes[2].set_xticks(range(n), self.components, rotation=45, fontsize=7)
        axes[2].set_yticks(range(n), self.components, fontsize=7)
        axes[2].set_xlabel("bright component j", fontsize=8)
        axes[2].set_ylabel("spread into i", fontsize=8)
        axes[2].set_title("spillover spreading (off-diagonal)", fontsize=9)
        if n <= 10:
            for i in range(n):
                for j in range(n):
                    if i != j:
                        axes[2].text(j, i, f"{off[i, j]:.2f}", ha="center", va="center",
                                     fontsize=6, color="w" if off[i, j] < 0.6 * off.max()
                                     else "k")
        fig.colorbar(im2, ax=axes[2]).set_label("spread (per sqrt abundance)", fontsize=8)
        fig.tight_layout()
        return fig


def _norm_channel(name: str) -> str:
    return " ".join(str(name).split()).casefold()


def channel_index(src, channel_names, what: str) -> int:
    """The index of an image channel given as a 0-based index, or as a name matched exactly,
    else ignoring case and runs of spaces ('Qdot  605' = 'qdot 605'); `what` names what it is
    for in errors (e.g. "component 'HER2'")."""
    names = list(channel_names)
    if isinstance(src, int | np.integer) and not isinstance(src, bool):
        if 0 <= int(src) < len(names):
            return int(src)
        raise InputError(f"{what}: channel index {src} is out of range; the "
                         f"image has {len(names)} channels (0-{len(names) - 1}: "
                         f"{', '.join(names)})")
    hits = [i for i, n in enumerate(names) if n == src]  # exact, else loosely
    hits = hits or [i for i, n in enumerate(names) if _norm_channel(n) == _norm_channel(src)]
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise InputError(f"{what}: the image has {len(hits)} channels named "
                         f"{src!r} (at {', '.join(map(str, hits))}): give the 0-based index "
                         f"of the one to read")
    raise InputError(f"{what}: the image has no channel {src!r}; its "
                     f"channels are {', '.join(map(repr, names))} (or give a 0-based index)")


def unmixed_panel(components: dict, *, image_channels=None) -> Panel:
    """A panel for an image whose channels are already per-marker abundances.

    Parameters
    ----------
    components : dict
        Component name -> the image channel holding it: a channel name (as the file names it,
        e.g. an inForm component ``"Qdot 605"``; case and repeated spaces are ignored) or a
        0-based channel index. Must include the nuclear counterstain the analysis segments
        (``DAPI`` by default). A component named ``autofluorescence`` (any case) is the
        autofluorescence, kept apart from the markers as in a spectral panel. Image channels
        not named are not analysed.
    image_channels : list of str, optional
        The image's channel names, to bind the panel now (the analyses bind it to each slide
        themselves, :func:`bind_unmixed`).

    The unmixing of such a panel is exact and trivial: each component is its channel,
    clipped at zero (the non-negative least-squares solution when every component is one
    channel). Nothing here knows the spectra, so nothing checks crosstalk: the software
    that unmixed the image is responsible for it.
    """
    if not isinstance(components, dict) or not components:
        raise InputError("an already-unmixed panel needs components: a mapping of component "
                         "name -> image channel (name or 0-based index)")
    names, srcs, af = [], [], None
    for comp, src in components.items():
        comp = str(comp).strip()
        if not comp:
            raise InputError("an already-unmixed panel has an empty component name")
        ok_int = isinstance(src, int | np.integer) and not isinstance(src, bool) and src >= 0
        if not (ok_int or (isinstance(src, str) and src.strip())):
            raise InputError(f"component {comp!r}: the image channel must be a channel name or "
                             f"a 0-based index, got {src!r}")
        src = int(src) if ok_int else src.strip()
        if comp.casefold() == "autofluorescence":
            if af is not None:
                raise InputError("an already-unmixed panel names the autofluorescence twice "
                                 f"({af!r} and {src!r})")
            af = src
            continue
        names.append(comp)
        srcs.append(src)
    if af is not None:
        srcs.append(af)
    _check_distinct(names, "component")
    keys = [s if isinstance(s, int) else _norm_channel(s) for s in srcs]
    dup = sorted({str(s) for s, k in zip(srcs, keys, strict=True) if keys.count(k) > 1})
    if dup:
        raise InputError(f"image channel(s) {', '.join(dup)} are given to more than one "
                         f"component; each component needs a channel of its own")
    panel = Panel(tuple(names), tuple(str(s) for s in srcs), (), (), (1.0,) * len(names),
                  sources=tuple(srcs))
    return bind_unmixed(panel, image_channels) if image_channels is not None else panel


def bind_unmixed(panel: Panel, channel_names, *, where: str = "the image") -> Panel:
    """An already-unmixed panel bound to an image's channel names (every component's channel
    found, by name or index; InputError naming the missing one and the channels there are).
    A spectral panel is returned as it is."""
    if not panel.unmixed:
        return panel
    names = tuple(str(n) for n in channel_names)
    if not names:
        raise InputError(f"{where} has no channels")
    sources = panel.sources
    if panel.channels and panel.channels != names:
        # bound before to another image (a panel file made with --slide): a channel given by
        # its index there is that channel's name here, so that a slide whose channels come
        # in another order is read by name, not by place
        try:
            sources = tuple(panel.channels[channel_index(src, panel.channels, f"component {comp!r}")]
                            if isinstance(src, int) else src
                            for comp, src in zip(panel.components, sources, strict=True))
        except InputError as e:
            raise InputError(f"the panel's own image_channels: {e}") from None
    try:
        for comp, src in zip(panel.components, sources, strict=True):
            channel_index(src, names, f"component {comp!r}")
    except InputError as e:
        raise InputError(f"{where}: {e}") from None
    return replace(panel, channels=names, sources=sources,
                   labels=tuple(str(s) for s in sources))


def _unmixed_from_dict(doc: dict, source: str) -> Panel:
    extra = sorted(set(doc) - {"components", "image_channels", "unmixed"})
    if extra:
        raise FileFormatError(f"{source}: an already-unmixed panel ('components') takes "
                              f"'components' and optionally 'image_channels', not "
                              f"{', '.join(map(repr, extra))}; a spectral panel takes "
                              f"'markers' and 'channels_nm' instead")
    chans = doc.get("image_channels")
    if chans is not None and (not isinstance(chans, list)
                              or not all(isinstance(c, str) for c in chans)):
        raise FileFormatError(f"{source}: image_channels must be a list of channel names")
    try:
        return unmixed_panel(doc["components"], image_channels=chans)
    except InputError as e:
        raise FileFormatError(f"{source}: {e}") from None


#: A catalog label's peak_nm / fwhm_nm in a panel file are for reading only; values further
#: than this from the catalog's spectrum are refused, not ignored (they were edited to be
#: used). Panel files written before the emission lineshape peaked at the catalog's maximum
#: hold peaks up to 2.9 nm blue of it (Qdot 800): 3 nm keeps them readable.
CATALOG_ENTRY_TOLERANCE_NM = 3.0


#: The fields of a spectral panel file, of a marker entry and of the autofluorescence entry:
#: any other is refused (a misspelt 'autofluoresence: null' kept the model autofluorescence,
#: a marker's 'fwhm: 20' the 30 nm default).
_PANEL_KEYS = frozenset({"excitation_nm", "channels_nm", "markers", "autofluorescence",
                         "measured_endmembers"})
_MARKER_KEYS = frozenset({"label", "peak_nm", "fwhm_nm", "spectrum", "brightness"})
_AF_KEYS = frozenset({"peak_nm", "fwhm_nm", "spectrum"})
#: What a panel file's peak_nm and fwhm_nm may be: the spectra's grid (nm), and a width
#: from a laser line's to autofluorescence's broadest (a review: fwhm_nm 1e9 was said as
#: "fwhm_meV must be > 0, got -0.00496", peak_nm 1500 as "spectrum is zero", true as 1 nm).
_BAND_RANGES = {"peak_nm": (350.0, 1000.0), "fwhm_nm": (1.0, 300.0)}


def _band_value(entry: dict, key: str, source: str, where: str,
                default: float | None = None) -> float:
    """``entry[key]`` (peak_nm or fwhm_nm) as a number of nm in :data:`_BAND_RANGES`, or
    FileFormatError naming the file, the entry and the range."""
    if key not in entry and default is not None:
        return default
    lo, hi = _BAND_RANGES[key]
    return check_number(entry.get(key), f"{source}: {where}.{key}", lo=lo, hi=hi, unit="nm",
                        error=FileFormatError)


def _check_catalog_entry(e: dict, s: Spectrum) -> None:
    """A panel entry naming a catalog label (or DAPI): its peak_nm and fwhm_nm, if given, must
    agree with the catalog spectrum (``ValueError`` naming both otherwise)."""
    for key, have in (("peak_nm", s.peak_nm), ("fwhm_nm", s.fwhm_nm)):
        if key in e:
            given = float(e[key])  # not a number: the caller names the entry
            if not abs(given - have) <= CATALOG_ENTRY_TOLERANCE_NM:
                raise InputError(f"{e['label']} is a catalog label ({key} {have:.1f}); {key} "
                                 f"{given:g} would not be used: drop {key}, or give the label "
                                 "a name of its own to make a custom label of it")


def _check_custom_name(label) -> None:
    """A custom label (peak_nm, no spectrum) named like a catalog Qdot that is not one: a
    misspelt catalog name, which would silently become a made-up spectrum."""
    if isinstance(label, str) and label.strip().lower().startswith("qdot"):
        from qdmed.optics import qdot_catalog

        raise InputError(f"{label!r} is not a catalog Qdot ({', '.join(qdot_catalog())}); "
                         "correct the name, or give a custom label a name of its own")


def _catalog_names() -> list[str]:
    """The catalog's QD products (by emission peak, as the catalog lists them)."""
    from qdmed.optics import qdot_catalog

    return list(qdot_catalog())


def _resolvable(label) -> bool:
    """True for labels qdmed can rebuild by name (catalog Qdots, DAPI)."""
    from qdmed.errors import UnknownNameError
    from qdmed.optics import get_qdot

    if not isinstance(label, str):
        return False
    if label.strip().upper() == "DAPI":
        return True
    try:
        get_qdot(label)
    except UnknownNameError:
        return False
    return True


def label_key(label) -> str:
    """A label's name as compared between panels: a catalog Qdot's catalog name however
    spelled (``"qdot 525"``, ``"Qdot525"``, ``"525"`` -> ``"Qdot 525"``), ``"DAPI"``, else
    the name stripped (a review: a panel file's ``qdot 525`` was refused as another QD than
    the controls' ``Qdot 525``, its spectrum the same)."""
    from qdmed.optics import get_qdot

    s = str(label).strip()
    if s.upper() == "DAPI":
        return "DAPI"
    return get_qdot(s).name if _resolvable(s) else s


def _same_spectrum(a: Spectrum, b: Spectrum) -> bool:
    """Whether two emission spectra on one grid have the same area-normalised shape."""
    va, vb = a.normalized().values, b.normalized().values
    return va.shape == vb.shape and bool(np.allclose(va, vb, rtol=1e-6,
                                                     atol=1e-9 * float(np.max(np.abs(va)))))


def _spectrum_from_doc(d, grid, label) -> Spectrum:
    if not isinstance(d, dict) or "wavelength_nm" not in d or "values" not in d:
        raise FileFormatError("a spectrum needs 'wavelength_nm' and 'values' lists")
    s = Spectrum(d["wavelength_nm"], d["values"], "emission", label)
    return Spectrum(grid, s.resample(grid), "emission", label)


def _label_spectrum(label, grid) -> Spectrum:
    """Emission spectrum of a label: a catalog Qdot name, ``"DAPI"``, or a Probe/Spectrum."""
    from qdmed.optics import get_qdot
    from qdmed.probe import Probe

    if isinstance(label, Spectrum):
        return Spectrum(grid, label.resample(grid), "emission", label.label)
    if isinstance(label, Probe):
        return label.emission_spectrum(grid)
    if str(label).strip().upper() == "DAPI":
        return emission_spectrum(DAPI_PEAK_NM, DAPI_FWHM_NM, wavelength_nm=grid, label="DAPI")
    return get_qdot(label).emission_spectrum(grid)


def _check_distinct(names, what: str) -> None:
    """InputError where two names are one but for case: HER2 and her2 give columns HER2_*
    and her2_* that most tables and QuPath read as one (a review's --markers HER2,her2)."""
    names = [str(n) for n in names]
    folded = [n.casefold() for n in names]
    if len(set(folded)) != len(folded):
        twice = sorted({n for n in names if folded.count(n.casefold()) > 1})
        raise InputError(f"{what} names given more than once (case aside): "
                         f"{', '.join(twice)} ({what}s: {', '.join(names)})")


def build_panel_from_spectra(markers, labels, spectra, channels, *, brightness=None,
                             excitation_nm=405.0, autofluorescence=None,
                             max_condition=100.0, max_cosine=0.98) -> Panel:
    """Assemble a Panel and attach separability warnings."""
    if len(markers) != len(spectra):
        raise InputError(f"{len(markers)} markers but {len(spectra)} spectra")
    _check_distinct(markers, "marker")
    channels = check_bands(channels)
    n_comp = len(markers) + (autofluorescence is not None)
    if len(channels) < n_comp:
        raise InputError(f"{len(channels)} detection channels cannot separate {n_comp} components "
                         "(need at least as many channels as components)")
    b = tuple(check_number(x, f"brightness of {m}", **BRIGHTNESS_RANGE)
              for m, x in zip(markers, brightness or [1.0] * len(markers), strict=True))
    excitation_nm = check_number(excitation_nm, "excitation_nm", lo=_BAND_FLOOR_NM,
                                 hi=_BAND_CEILING_NM, unit="nm")
    panel = Panel(tuple(markers), tuple(labels), tuple(spectra), tuple(channels), b,
                  excitation_nm, autofluorescence, max_condition=float(max_condition),
                  max_cosine=float(max_cosine))
    return _with_warnings(panel)


def excitation_problem(label: str, spectrum: Spectrum, excitation_nm: float) -> str | None:
    """Why a label is barely or not excited at `excitation_nm` (None when it is): DAPI above
    :data:`DAPI_MAX_EXCITATION_NM`; any other label (a QD) at or above the blue half-maximum
    of its emission band, since a QD absorbs below its emission band with its extinction
    rising steeply toward the UV (qd-physics reference, section 3.1 [M]; any fluorophore
    absorbs blue of its emission)."""
    if str(label).strip().upper() == "DAPI":
        if excitation_nm > DAPI_MAX_EXCITATION_NM:
            return (f"DAPI is not excited at {excitation_nm:g} nm (it absorbs in the UV, "
                    f"maximum 358 nm; used with UV or violet lasers, up to "
                    f"~{DAPI_MAX_EXCITATION_NM:.0f} nm)")
        return None
    edge = spectrum.peak_nm - spectrum.fwhm_nm / 2
    if excitation_nm >= edge:
        return (f"{label} (emission peak {spectrum.peak_nm:.0f} nm) is barely or not excited "
                f"at {excitation_nm:g} nm: a QD absorbs below its emission band (here below "
                f"~{edge:.0f} nm), most strongly toward the UV")
    return None


def _with_warnings(panel: Panel) -> Panel:
    """The panel with its warnings: separability (cosine similarity, condition number of the
    column-normalised mixing matrix), components or channels without signal, labels the
    excitation does not reach, and an excitation line inside a detection band."""
    m = panel.endmembers
    ct = _crosstalk(m)
    warns = []
    comps = panel.components
    # a modelled column is the fraction of the (area-normalised) emission in each band, times
    # the brightness; measured columns keep the model's scale
    detected = m.sum(axis=0) / np.asarray(panel.brightness + (1.0,) * (m.shape[1]
                                                                       - len(panel.brightness)))
    for j in np.flatnonzero(~(detected >= _MIN_DETECTED)):
        warns.append(f"{comps[j]} gives no signal in any channel (under {100 * _MIN_DETECTED:g} "
                     f"% of its emission falls in {', '.join(panel.channel_names)}): check "
                     "that the bands are in nm and cover its emission")
    for j in np.flatnonzero((detected >= _MIN_DETECTED) & (detected < _WEAK_DETECTED)):
        if comps[j] != "autofluorescence" and not panel.measured:
            warns.append(f"{comps[j]}: only {100 * detected[j]:.0f} % of its label's emission "
                         "falls in the channels: its signal is that much weaker")
    for i in np.flatnonzero(~(m.sum(axis=1) >= _MIN_DETECTED * m.sum() / m.shape[0])):
        warns.append(f"channel {panel.channel_names[i]} collects no signal from any component")
    cos = ct["cosine"]
    for i, j in itertools.combinations(range(len(comps)), 2):
        if cos[i, j] > panel.max_cosine:
            warns.append(f"{comps[i]} and {comps[j]} cannot be separated in these channels "
                         f"(spectral cosine similarity {cos[i, j]:.3f} > {panel.max_cosine})")
    if ct["condition_number"] > panel.max_condition:
        warns.append(f"mixing matrix condition number {ct['condition_number']:.0f} > "
                     f"{panel.max_condition:.0f}: unmixing will amplify noise")
    for lab, spec in zip(panel.labels, panel.spectra, strict=True):
        why = excitation_problem(lab, spec, panel.excitation_nm)
        if why:
            warns.append(why)
    for lo, hi in panel.channels:
        if lo <= panel.excitation_nm <= hi:
            warns.append(f"the excitation at {panel.excitation_nm:g} nm falls in the "
                         f"{lo:.0f}-{hi:.0f} nm channel: its light reaches that detector "
                         "unless a dichroic or notch filter blocks it")
    warns += _marker_name_warnings(panel.markers)
    return replace(panel, warnings=tuple(warns))


def _like_typo(name: str, known: str) -> bool:
    """``name`` reads as a typo of ``known`` (both upper-cased): the same but for hyphens,
    underscores and spaces (HER-2, CLAUDIN4), a letter doubled (ERR for ER, at any
    length), or, from four letters on, one letter changed or dropped (HEP2). A letter
    added that is not a doubling makes another marker (PSMA is not PSA, ERK not ER, CAR
    not AR), as does a digit changed for a digit (HER3)."""
    name, known = (re.sub(r"[-_ ]", "", v) for v in (name, known))
    if name == known:
        return True
    if len(name) == len(known) + 1:
        return any(name[i] == name[i - 1] and name[:i] + name[i + 1:] == known
                   for i in range(1, len(name)))
    if len(name) < 4:
        return False
    if len(name) == len(known):
        diff = [(x, y) for x, y in zip(name, known, strict=True) if x != y]
        return len(diff) == 1 and not (diff[0][0].isdigit() and diff[0][1].isdigit())
    return len(name) + 1 == len(known) and any(
        known[:i] + known[i + 1:] == name for i in range(len(known)))


def _marker_name_warnings(markers) -> list[str]:
    """A marker named like, but not as, one whose compartment qdmed knows (ERR, Her2): a
    typo, which shows only when the marker is gated (no compartment known). A marker of
    one's own (CD8, HER3, PSMA, ERK: :func:`_like_typo`) is not warned."""
    from qdmed.imaging._scoring import MARKER_COMPARTMENTS

    out = []
    for m in map(str, markers):
        if m in MARKER_COMPARTMENTS or m == "autofluorescence":
            continue
        like = [k for k in MARKER_COMPARTMENTS if m.upper() == k.upper()
                or _like_typo(m.upper(), k.upper())]
        if like:
            out.append(f"marker {m!r} is not one qdmed knows the compartment of, but is named "
                       f"like {like[0]!r}: a typo? (a marker of your own is gated with "
                       f"calibrate --compartment {m}=nucleus|cytoplasm|membrane|cell)")
    return out


def _label_name(label) -> str:
    """A candidate label's name: a catalog name as given, a Probe's ``name``, a Spectrum's
    ``label``."""
    if isinstance(label, Spectrum):
        name = label.label
    else:
        name = getattr(label, "name", label)
    name = str(name or "").strip()
    if not name:
        raise InputError(f"a candidate label has no name: give each Probe a name and each "
                         f"Spectrum a label ({type(label).__name__})")
    return name


def design_panel(markers, available, channels, *, expression=None, brightness=None,
                 excitation_nm=405.0, autofluorescence="default", fixed=None) -> Panel:
    """Assign labels to markers so that every marker is read with the least noise.

    Parameters
    ----------
    markers : list of str
        Biomarkers to label, e.g. ``["HER2", "ER", "PR", "EGFR", "mTOR"]``.
    available : list
        Candidate labels: catalog names (``"Qdot 605"``), :class:`qdmed.probe.Probe` objects
        or emission :class:`Spectrum` objects, named by the name, the Probe's ``name`` or
        the Spectrum's ``label`` (a name given twice is taken once; two different labels
        under one name are refused). A Probe with ``targets`` (an antibody conjugate) labels
        one of its targets only, and is left out when none is among the markers; catalog
        Qdots and spectra (secondary reagents) label any marker.
    channels : list of (low_nm, high_nm)
        Detection bands (filters, or :func:`spectral_channels` for a spectral detector).
    expression : dict, optional
        Expected relative abundance per marker; the labels read with the least noise per
        unit signal go to the least abundant markers (the usual panel-design rule, "bright
        labels to dim markers", as in flow cytometry, with the unmixing's noise gain in it:
        a bright label on the autofluorescence peak can read a scarce marker worse than a
        dimmer one beside it). Without it, labels take the markers in the candidates'
        order.
    brightness : dict, optional
        Relative brightness per label name (default 1 each: no vendor extinction at 405 nm is
        verified in the catalog).
    excitation_nm : float
        The excitation line. Labels it barely or does not excite
        (:func:`excitation_problem`) are not candidates; a fixed one is kept with a warning.
    autofluorescence : "default", Spectrum or None
    fixed : dict, optional
        Marker -> label pairs that must be kept (e.g. a nuclear counterstain: ``{"DAPI": "DAPI"}``).

    Every subset of the candidates of the right size is scored by its worst marker: the
    largest of ``noise_gain / sqrt(signal)`` over the markers (:func:`noise_gains` of the
    mixing matrix, autofluorescence included; ``signal`` is the brightness times the share
    of the label's emission that falls in the channels; under shot noise a label giving
    ``b`` times the signal gives ``sqrt(b)`` times the signal-to-noise), ties going to the
    better-conditioned
    subset, then to the order the candidates are given in (exhaustive: fine for the <= ~12
    candidates of real panels). Spectral separability does not depend on brightness, so a
    brighter label never scores worse. Within the best subset, labels are matched to
    markers by that noise per unit signal and the expression.
    """
    grid = default_grid(350, 1000, 0.5)
    channels = check_bands(channels)
    for what, v in (("markers", markers), ("available", available)):
        if isinstance(v, str):  # read as its characters (a review: "4 markers")
            raise InputError(f"{what} must be a list, e.g. [{v!r}]; got the string {v!r}")
    markers = list(markers)
    fixed = dict(fixed or {})
    stray = [m for m in fixed if m not in markers]
    if stray:
        raise InputError(f"fixed labels for {', '.join(map(repr, stray))}, which "
                         f"{'is' if len(stray) == 1 else 'are'} not among the markers {markers}")
    free = [m for m in markers if m not in fixed]
    taken = {_label_name(v).casefold() for v in fixed.values()}
    spec: dict[str, Spectrum] = {}
    # a probe made for its targets (an anti-EGFR conjugate) labels those markers only
    targets: dict[str, list[str]] = {}
    skipped = []
    for a in available:
        name = _label_name(a)
        if name.casefold() in taken:
            continue
        aims = {str(t).casefold() for t in getattr(a, "targets", ()) or ()}
        if aims:
            targets[name] = [m for m in free if m.casefold() in aims]
            if not targets[name]:
                skipped.append((name, f"{name} targets {', '.join(a.targets)}, not among the "
                                      "markers to label"))
                continue
        s = _label_spectrum(a, grid)
        if name in spec:
            if not np.allclose(spec[name].values, s.values, rtol=1e-6, atol=1e-12):
                raise InputError(f"two different candidate labels are named {name!r}: give "
                                 "each its own name")
            continue
        why = excitation_problem(name, s, float(excitation_nm))
        if why:
            skipped.append((name, why))
            continue
        spec[name] = s
    names = list(spec)
    known = {_label_name(a) for a in available} | {_label_name(v) for v in fixed.values()}
    stray = [n for n in (brightness or {}) if n not in known]
    if stray:
        raise InputError(f"brightness given for {', '.join(map(repr, stray))}, not among the "
                         f"candidate labels ({', '.join(sorted(known))})")
    for n, v in (brightness or {}).items():
        check_number(v, f"brightness of {n!r}", **BRIGHTNESS_RANGE)
    for m, v in (expression or {}).items():  # NaN or -1 changed the assignment, unsaid
        check_number(v, f"expression of {m!r}", **BRIGHTNESS_RANGE)
    stray = [m for m in (expression or {}) if m not in markers]
    if stray:
        raise InputError(f"expression given for {', '.join(map(repr, stray))}, not among the "
                         f"markers ({', '.join(markers)})")
    fixed_labels = {_label_name(v) for v in fixed.values()}
    unused = [f"brightness of {n!r}" for n in (brightness or {}) if n in fixed_labels] + \
        [f"expression of {m!r}" for m in (expression or {}) if m in fixed]
    if unused:
        raise InputError(f"{', '.join(unused)}: a label fixed to its marker (the counterstain) "
                         "is not assigned, so this would not be used")
    if len(names) < len(free):
        from qdmed.optics import qdot_catalog

        # catalog Qdots not given that this excitation would take, to suggest
        more = [q for q in qdot_catalog() if q not in known and q.casefold() not in taken
                and not excitation_problem(q, _label_spectrum(q, grid), float(excitation_nm))]
        raise InputError(f"{len(free)} markers but only {len(names)} usable candidate labels"
                         + (f" (left out: {', '.join(n for n, _ in skipped)}; "
                            f"{skipped[0][1]}{'; and so on' if len(skipped) > 1 else ''})"
                            if skipped else "")
                         + (f": add candidates (--labels, available): catalog Qdots not given "
                            f"are {', '.join(more)}, or custom probes (qdmed design --out)"
                            if more else "" if skipped else ": add custom probes to the "
                            "candidates (qdmed design --out; --labels, available)"))
    bright = {n: float((brightness or {}).get(n, 1.0)) for n in names}
    af = (autofluorescence_spectrum(wavelength_nm=grid) if autofluorescence == "default"
          else autofluorescence)
    fixed_specs = [_label_spectrum(v, grid) for v in fixed.values()]
    n_fixed = len(fixed_specs)
    best = None
    for combo in itertools.combinations(names, len(free)):
        if _target_matching(combo, targets) is None:
            continue  # two probes for one marker: no assignment
        specs = fixed_specs + [spec[n] for n in combo] + ([af] if af is not None else [])
        m = mixing_matrix(specs, channels)
        gains = noise_gains(m)[: n_fixed + len(combo)]
        # the signal a label gives: its brightness times the share of its emission that
        # falls in the channels (a Qdot 800 read by bands ending at 740 nm gives a sliver)
        b = np.array([1.0] * n_fixed + [bright[n] for n in combo]) * \
            m.sum(axis=0)[: n_fixed + len(combo)]
        per_label = gains / np.sqrt(b)  # each label's noise per unit signal
        score = (float(np.max(per_label)) if gains.size else 0.0, condition_number(m))
        if best is None or score < best[0]:
            best = (score, combo, dict(zip(combo, per_label[n_fixed:], strict=True)))
    if best is None:
        raise InputError(f"the probes made for their targets cannot each take one of them "
                         f"({'; '.join(f'{n}: {t}' for n, t in targets.items())}) with "
                         f"{len(free)} markers to label: add candidates, or drop a probe")
    combo = list(best[1])
    # probes made for a target go to it; of the others, the label read with the least noise
    # per unit signal (its noise gain over the root of its signal, as the subsets are
    # scored) to the least expressed marker, ties keeping the candidates' order: pairing
    # them so keeps the worst marker's relative noise, noise / sqrt(expression), smallest.
    # (By brightness alone a review's scarce HER2 got the noisiest label, Qdot 525 on the
    # autofluorescence peak: 2.4 against 1.15 for Qdot 705)
    assign = {m: n for n, m in _target_matching(combo, targets).items()}
    rest_m = [m for m in free if m not in assign]
    rest_l = [n for n in combo if n not in targets]
    expr = {m: float((expression or {}).get(m, 1.0)) for m in rest_m}
    order_m = sorted(rest_m, key=lambda m: expr[m])
    noise = best[2]  # each label's noise per unit signal, as the subset was scored
    order_l = sorted(rest_l, key=lambda n: noise[n])
    # expressions that do not differ (none given, or all equal) leave the candidates' order
    assign |= (dict(zip(order_m, order_l, strict=True)) if len(set(expr.values())) > 1
               else dict(zip(rest_m, rest_l, strict=True)))
    labels = [_label_name(fixed[m]) if m in fixed else assign[m] for m in markers]
    spectra = [_label_spectrum(fixed[m], grid) if m in fixed else spec[assign[m]] for m in markers]
    b = [1.0 if m in fixed else bright[assign[m]] for m in markers]
    return build_panel_from_spectra(markers, labels, spectra, channels,
                                    brightness=b, excitation_nm=excitation_nm,
                                    autofluorescence=af)


def _target_matching(combo, targets: dict[str, list[str]]) -> dict[str, str] | None:
    """Each probe of ``combo`` made for targets given one of them, no marker twice
    ({label: marker}), or None where none exists (backtracking: a panel holds a few)."""
    aimed = [n for n in combo if n in targets]

    def place(i: int, used: dict[str, str]) -> dict[str, str] | None:
        if i == len(aimed):
            return dict(used)
        for m in targets[aimed[i]]:
            if m not in used.values():
                used[aimed[i]] = m
                found = place(i + 1, used)
                if found is not None:
                    return found
                del used[aimed[i]]
        return None

    return place(0, {})


def breast_panel_5plex(n_channels: int = 8) -> Panel:
    """The demo panel: HER2, ER, PR, EGFR, mTOR on Qdot 525/565/605/655/705 + DAPI + AF,
    one 405 nm excitation, an 8-channel spectral detector 440-740 nm (Yezhelyev 2007-style)."""
    channels = spectral_channels(n_channels, 440.0, 740.0)
    return design_panel(
        ["DAPI", "HER2", "ER", "PR", "EGFR", "mTOR"],
        ["Qdot 525", "Qdot 565", "Qdot 605", "Qdot 655", "Qdot 705"],
        channels, fixed={"DAPI": "DAPI"},
    )


def endmember_from_control(image_yxc, *, percentile: float = 50.0,
                           background=None) -> np.ndarray:
    """A measured endmember (per channel, unit sum) from a control image: a single-stain
    control for one label, or an unstained section for autofluorescence. It is the mean
    channel profile of the pixels above the ``percentile`` of total intensity, minus an
    optional per-channel ``background`` (e.g. the unstained control's profile scaled to it),
    as inForm builds its spectral library from single-stain slides. For a stained control
    whose autofluorescence must be removed without knowing its scale, see
    :func:`qdmed.imaging.single_stain_endmember` and :func:`qdmed.imaging.spectral_library`."""
    prof = autofluorescence_from_control(image_yxc, percentile=percentile)
    if background is not None:
        b = np.asarray(background, float)
        if b.shape != prof.shape:
            raise InputError(f"background must have {prof.size} values, got shape {b.shape}")
        prof = np.clip(prof - b, 0, None)
        if not prof.sum() > 0:
            raise InputError("control profile vanishes after background subtraction")
        prof = prof / prof.sum()
    return prof


def valid_pixels(img: np.ndarray, valid, what: str) -> np.ndarray:
    """The (N, C) pixels of a (Y, X, C) image where `valid` (None: all)."""
    pix = img.reshape(-1, img.shape[2])
    if valid is None:
        return pix
    v = np.asarray(valid, dtype=bool)
    if v.shape != img.shape[:2]:
        raise InputError(f"{what}: valid must be a (Y, X) mask of the image's shape "
                         f"{img.shape[:2]}; got {v.shape}")
    return pix[v.ravel()]


def autofluorescence_from_control(image_yxc, *, percentile: float = 50.0,
                                  valid=None, channel_names=None) -> np.ndarray:
    """Autofluorescence endmember (per channel, unit sum) from an unstained control image:
    the channel profile of the tissue pixels (above the ``percentile`` of total intensity,
    and where the total smoothed over 7 x 7 px is above a fifth of its 95th percentile, so
    that glass is left out of a control that is mostly glass: a pellet, small cores; bright
    granules, a few percent of the pixels, neither set that level nor pass for glass once
    smoothed), among the ``valid`` pixels if given (a (Y, X) mask, e.g. all but the
    saturated ones).

    A channel whose tissue mean is below zero (an offset larger than the detector's dark
    level subtracted, or subtracted from a dark-corrected image) is refused, named (by
    ``channel_names`` if given): its profile would be negative and fail later as a
    negative endmember, the offset unnamed (a review)."""
    img = np.asarray(image_yxc, float)
    if img.ndim != 3:
        raise InputError(f"control image must be (Y, X, C), got shape {img.shape}")
    if not np.all(np.isfinite(img)):
        raise InputError("the control image contains NaN or infinite values")
    pix = valid_pixels(img, valid, "control image")
    if pix.shape[0] < 20:
        raise InputError(f"the control has {pix.shape[0]} usable pixels; need at least 20")
    tot = pix.sum(-1)
    # glass: a 30 %-tissue control's pixels above the median were a third glass, whose
    # noise floor flattened the profile (a review: single stains' misfit 0.12-0.57 with it);
    # the level from the smoothed total, as granules 5x the tissue in 1 % of the pixels set
    # a cut on the pixels' own 99th percentile that kept mostly them (cosine 0.78-0.95)
    from scipy import ndimage as ndi

    smooth = ndi.uniform_filter(img.sum(-1), 7, mode="nearest")
    smooth = smooth.ravel() if valid is None else smooth[np.asarray(valid, dtype=bool)]
    sel = (tot > np.percentile(tot, percentile)) & \
        (smooth > 0.2 * np.percentile(smooth, 95.0))
    prof = pix[sel].mean(0) if sel.sum() >= 10 else None
    if prof is None or not prof.sum() > 0:
        raise InputError("the control has too little signal for a channel profile (fewer "
                         "than 10 pixels above the median, or none above zero: an offset "
                         "larger than the detector's dark level subtracted?)")
    below = np.flatnonzero(prof < 0)
    if below.size:
        names = [str(channel_names[i]) if channel_names is not None else f"channel {i}"
                 for i in below]
        said = ", ".join(f"{n}: {prof[i]:.3g}" for n, i in zip(names, below, strict=True))
        raise InputError(f"the control's tissue reads below zero on average (counts; {said}): "
                         f"an offset larger than the detector's dark level was subtracted "
                         f"(--offset), or the image was dark-corrected already")
    return prof / prof.sum()

