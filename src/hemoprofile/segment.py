"""Cell segmentation backends and whole-image segmentation.

Two backends share one interface (:class:`ClassicalSegmenter`, :class:`CellposeSegmenter`, built by
:func:`build_segmenter` from the ``segment`` config section):

``classical``
    Gaussian smoothing of the nuclear channel, a global threshold (Otsu), distance transform with peak
    markers spaced by a fraction of the diameter, watershed -> nuclei; then each nucleus grows into the
    thresholded cytoplasm composite by at most ``classical.cytoplasm_growth`` x diameter (watershed
    from the nuclei). Fast, needs no model; the baseline.
``cellpose``
    A Cellpose 3 ``CellposeModel`` fed the 2-channel input ``[cytoplasm composite, nucleus]`` (or
    ``[nucleus, zeros]`` when no cytoplasm channel is configured, the Cellpose grayscale convention),
    several windows per ``model.eval`` call. Model files load through :func:`load_cellpose_model`.

Intensity calibration
    Both backends see the same prepared input. The nucleus channel is scaled so its 1st and 99th
    percentiles map to 0 and 1; each cytoplasm marker is scaled by its 1st and 99.9th percentiles (the
    range at least ``marker_min_span`` wide, so a marker dim on the whole slide is not stretched) and
    clipped at 0 (so a bright marker such as CK on a tumour cell cannot hide a dim one such as CD45), the
    markers are combined (``sum`` or ``max``) and the composite is scaled by its 1st and 99th
    percentiles. This is the input the project's own Cellpose model is trained on
    (:mod:`hemoprofile.segmentation_training`). The percentiles, and the classical thresholds, are
    *statistics of the whole slide*: computed once from histograms of a sample of tiles
    (:meth:`calibrate`), so every tile is cut with the same map and a tiled run equals a whole-image
    run. For a single image they are the image's own (``normalisation: window`` makes each window use its
    own percentiles instead, as Cellpose does by default).

Arrays are (channel, row, column) float32 with values in [0, 1] (see :func:`as_unit_float`); label
images are (row, column) int32, 0 = background.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

log = logging.getLogger(__name__)

#: Cellpose 3 built-in model names accepted as ``segment.model`` (they download on first use).
PRETRAINED_MODELS = ("cyto3", "cyto2", "cyto", "nuclei", "tissuenet_cp3", "livecell_cp3", "yeast_PhC_cp3",
                     "yeast_BF_cp3", "bact_phase_cp3", "bact_fluor_cp3", "deepbacs_cp3", "cyto2_cp3")
#: Percentiles that map to 0 and 1 (nucleus and composite; the Cellpose convention).
INPUT_PERCENTILES = (1.0, 99.0)
#: Percentiles of each cytoplasm marker before they are combined.
MARKER_PERCENTILES = (1.0, 99.9)
#: Histogram used for slide-wide statistics: raw channels live in [0, 1]; prepared (normalised, possibly
#: smoothed) values mostly in [0, 1] with tails, so their histogram spans [-1, 4] (values outside are
#: counted in the edge bins, which moves neither the percentiles used nor an Otsu threshold noticeably).
HIST_BINS = 16384
RAW_RANGE = (0.0, 1.0)
PREPARED_RANGE = (-1.0, 4.0)

#: The JSON sidecar of a model file is the model path with this appended (``x.pt`` -> ``x.pt.json``).
SIDECAR_SUFFIX = ".json"


# --- channels and intensities ------------------------------------------------------------------------


@dataclass(frozen=True)
class ChannelSelection:
    """Which image channels make the segmentation input: indices into the image's channel axis."""

    nucleus: int
    cytoplasm: tuple[int, ...]
    names: tuple[str, ...]

    @property
    def indices(self) -> list[int]:
        """Channel indices to read, nucleus first (the order of a *selected* window)."""
        return [self.nucleus, *self.cytoplasm]


def select_channels(
    channel_names: Sequence[str], nucleus: str, cytoplasm: Sequence[str] = (), source: str = "image"
) -> ChannelSelection:
    """Resolve the configured channel names against an image's channel names.

    Parameters
    ----------
    channel_names : the image's channel names, in channel order.
    nucleus : name of the nuclear stain (e.g. ``DAPI``).
    cytoplasm : names of the markers combined into the cytoplasm composite (may be empty: nuclei only).
    source : what the image is (a path), for the error message.

    Raises
    ------
    ValueError naming ``source``, the missing names and the channels the image has.

    Example
    -------
    >>> select_channels(["DAPI", "CK", "VIM", "CD45"], "DAPI", ["CD45", "CK"]).indices
    [0, 3, 1]
    """
    names = [str(n) for n in channel_names]
    wanted = [str(nucleus), *[str(c) for c in cytoplasm]]
    missing = [w for w in wanted if w not in names]
    if missing:
        raise ValueError(
            f"{source}: segmentation channel(s) {', '.join(map(repr, missing))} not found; the image has "
            f"channels {names} (set segment.channels.nucleus / segment.channels.cytoplasm to names among these)"
        )
    if str(nucleus) in [str(c) for c in cytoplasm]:
        raise ValueError(f"{source}: channel {nucleus!r} is both the nucleus and a cytoplasm channel")
    return ChannelSelection(names.index(str(nucleus)), tuple(names.index(str(c)) for c in cytoplasm), tuple(names))


def as_unit_float(array: np.ndarray) -> np.ndarray:
    """Return pixels as float32 in [0, 1]: integers divided by their dtype's maximum, floats unchanged.

    This is the project's convention for preprocessed images (uint16 or uint8 representing [0, 1]).
    """
    array = np.asarray(array)
    if np.issubdtype(array.dtype, np.integer):
        return array.astype(np.float32) / np.float32(np.iinfo(array.dtype).max)
    return array.astype(np.float32, copy=False)


def _histogram(values: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    lo, hi = value_range
    idx = np.floor((np.asarray(values, np.float32).ravel() - lo) * (HIST_BINS / (hi - lo)))
    return np.bincount(np.clip(idx, 0, HIST_BINS - 1).astype(np.int64), minlength=HIST_BINS)


def _bin_centres(value_range: tuple[float, float]) -> np.ndarray:
    lo, hi = value_range
    return lo + (np.arange(HIST_BINS) + 0.5) * ((hi - lo) / HIST_BINS)


def _hist_percentiles(counts: np.ndarray, value_range: tuple[float, float], q: Sequence[float]) -> list[float]:
    total = counts.sum()
    if total == 0:
        return [0.0 for _ in q]
    cumulative = np.cumsum(counts) / total
    centres = _bin_centres(value_range)
    return [float(centres[min(np.searchsorted(cumulative, p / 100.0), HIST_BINS - 1)]) for p in q]


def _hist_otsu(counts: np.ndarray, value_range: tuple[float, float]) -> float:
    """Otsu threshold of a histogram; +inf when it has fewer than two occupied bins (nothing to split)."""
    from skimage.filters import threshold_otsu

    occupied = np.flatnonzero(counts)
    if occupied.size < 2:
        return math.inf
    # Trim to the occupied span: same threshold, far fewer bins to scan.
    span = slice(occupied[0], occupied[-1] + 1)
    return float(threshold_otsu(hist=(counts[span], _bin_centres(value_range)[span])))


def _scale(channel: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi - lo <= 1e-6 * max(1.0, abs(hi)):
        return np.zeros(channel.shape, np.float32)  # a flat channel carries no contrast
    return (channel - np.float32(lo)) * np.float32(1.0 / (hi - lo))


@dataclass
class InputCalibration:
    """Slide-wide (or image-wide) intensity map from selected channels to the 2 prepared channels.

    ``marker_ranges`` holds one (low, high) per selected channel (nucleus first), ``composite_range``
    the (low, high) of the combined cytoplasm markers (None without cytoplasm channels).
    """

    marker_ranges: list[tuple[float, float]]
    composite_range: tuple[float, float] | None
    combine: str = "sum"

    def prepare(self, window: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Map a selected window (k, y, x) to (nucleus, cytoplasm composite or None), float32."""
        nucleus = _scale(window[0], *self.marker_ranges[0])
        if window.shape[0] == 1:
            return nucleus, None
        composite = _combine_markers(window, self.marker_ranges, self.combine)
        return nucleus, _scale(composite, *self.composite_range)


def _combine_markers(window: np.ndarray, marker_ranges, combine: str) -> np.ndarray:
    markers = [np.maximum(_scale(window[k], *marker_ranges[k]), 0) for k in range(1, window.shape[0])]
    if combine == "max":
        return np.maximum.reduce(markers)
    return np.add.reduce(markers)


WindowSource = Callable[[], Iterable[tuple[np.ndarray, tuple[slice, slice]]]]


def calibrate_input(windows: WindowSource, n_channels: int, combine: str = "sum",
                    marker_min_span: float = 0.0) -> InputCalibration:
    """Compute the intensity map of :class:`InputCalibration` from histograms of sampled windows.

    Parameters
    ----------
    windows : callable returning a fresh iterable of ``(selected window (k, y, x) in [0, 1], core)``;
        only pixels inside ``core`` (a pair of slices into the window) are counted. Called twice.
    n_channels : k, the number of selected channels (nucleus first, then cytoplasm markers).
    combine : how cytoplasm markers are combined, ``sum`` or ``max``.
    marker_min_span : each cytoplasm marker's range is at least this wide (high >= low + span, in the
        [0, 1] units of the input). A marker that is dim on the whole slide is then not stretched to
        full range: without it, CK noise on a slide without CTCs filled the composite while slides with
        CTCs kept it dark, which changed every leukocyte's outline with the slide's CTC content.
    """
    hists = np.zeros((n_channels, HIST_BINS), np.int64)
    for window, core in windows():
        for k in range(n_channels):
            hists[k] += _histogram(window[k][core], RAW_RANGE)
    ranges = [tuple(_hist_percentiles(hists[0], RAW_RANGE, INPUT_PERCENTILES))]
    for h in hists[1:]:
        low, high = _hist_percentiles(h, RAW_RANGE, MARKER_PERCENTILES)
        ranges.append((low, max(high, low + float(marker_min_span))))
    if n_channels == 1:
        return InputCalibration(ranges, None, combine)
    composite_hist = np.zeros(HIST_BINS, np.int64)
    for window, core in windows():
        composite_hist += _histogram(_combine_markers(window, ranges, combine)[core], PREPARED_RANGE)
    composite_range = tuple(_hist_percentiles(composite_hist, PREPARED_RANGE, INPUT_PERCENTILES))
    return InputCalibration(ranges, composite_range, combine)


# --- settings ------------------------------------------------------------------------------------------


#: Defaults of the ``segment`` config section (the schema, config/schemas/config.schema.yaml, is the
#: reference; these let the package be used without the workflow).
DEFAULTS = {
    "backend": "classical",
    "model": "models/segmentation/hemoprofile_cellpose.pt",
    "device": "auto",
    "diameter": 15.0,
    "channels": {"nucleus": "DAPI", "cytoplasm": ["CD45", "CK", "VIM"], "combine": "sum"},
    "normalisation": "slide",
    "marker_min_span": 0.5,
    "sample_tiles": 16,
    "overlap_diameters": 2.5,
    "batch_tiles": 4,
    "flow_threshold": 0.4,
    "cellprob_threshold": 0.0,
    "min_size": 15,
    "classical": {"smoothing_sigma": 1.0, "peak_distance": 0.3, "threshold_scale": 1.0, "cytoplasm_growth": 0.5},
}


def segment_settings(segment_cfg: Mapping | None = None, **overrides) -> dict:
    """Return a complete ``segment`` section: ``segment_cfg`` over :data:`DEFAULTS`, then ``overrides``.

    Nested sections (``channels``, ``classical``) merge key by key.
    """
    merged = json.loads(json.dumps(DEFAULTS))
    for source in (segment_cfg or {}, overrides):
        for key, value in source.items():
            if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
                merged[key].update(value)
            else:
                merged[key] = value
    return merged


# --- classical backend ---------------------------------------------------------------------------------


class ClassicalSegmenter:
    """Threshold + distance-transform watershed nuclei, grown into the cytoplasm composite.

    Parameters
    ----------
    diameter : typical cell diameter in pixels; sets the peak spacing and the cytoplasm growth.
    smoothing_sigma : Gaussian sigma (pixels) applied before thresholding.
    peak_distance : minimum distance between nucleus seeds, as a fraction of ``diameter``.
    threshold_scale : multiplies the Otsu thresholds (above 1 keeps only brighter objects).
    cytoplasm_growth : how far a cell may extend beyond its nucleus, as a fraction of ``diameter``.
    min_size : nuclei smaller than this (pixels) are dropped as debris.
    """

    name = "classical"

    def __init__(self, diameter: float = 15.0, smoothing_sigma: float = 1.0, peak_distance: float = 0.3,
                 threshold_scale: float = 1.0, cytoplasm_growth: float = 0.5, min_size: int = 15,
                 combine: str = "sum", marker_min_span: float = 0.0):
        self.diameter = float(diameter)
        self.sigma = float(smoothing_sigma)
        self.min_distance = max(1, int(round(peak_distance * self.diameter)))
        self.threshold_scale = float(threshold_scale)
        self.growth = float(cytoplasm_growth) * self.diameter
        self.min_size = int(min_size)
        self.combine = combine
        self.marker_min_span = float(marker_min_span)
        self.calibration: InputCalibration | None = None
        self.nucleus_threshold = math.inf
        self.cytoplasm_threshold = math.inf

    @property
    def context(self) -> int:
        """Pixels of context a pixel's prepared value depends on (the smoothing kernel's radius)."""
        return int(math.ceil(4 * self.sigma))

    def _smooth(self, channel: np.ndarray) -> np.ndarray:
        return ndi.gaussian_filter(channel, self.sigma, mode="nearest") if self.sigma > 0 else channel

    def calibrate(self, windows: WindowSource, n_channels: int) -> None:
        """Fix the intensity map and the Otsu thresholds of the smoothed nucleus and composite."""
        self.calibration = calibrate_input(windows, n_channels, self.combine, self.marker_min_span)
        nucleus_hist = np.zeros(HIST_BINS, np.int64)
        cyto_hist = np.zeros(HIST_BINS, np.int64)
        for window, core in windows():
            nucleus, cyto = self.calibration.prepare(window)
            nucleus_hist += _histogram(self._smooth(nucleus)[core], PREPARED_RANGE)
            if cyto is not None:
                cyto_hist += _histogram(self._smooth(cyto)[core], PREPARED_RANGE)
        self.nucleus_threshold = _hist_otsu(nucleus_hist, PREPARED_RANGE) * self.threshold_scale
        self.cytoplasm_threshold = _hist_otsu(cyto_hist, PREPARED_RANGE) * self.threshold_scale
        log.info("classical thresholds: nucleus %.4f, cytoplasm %.4f", self.nucleus_threshold,
                 self.cytoplasm_threshold)

    def segment(self, windows: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Segment selected windows (k, y, x) in [0, 1]; return one int32 label image per window."""
        if self.calibration is None:
            raise RuntimeError("calibrate() the segmenter before segment()")
        return [self._segment_one(*self.calibration.prepare(w)) for w in windows]

    def _segment_one(self, nucleus: np.ndarray, cyto: np.ndarray | None) -> np.ndarray:
        from skimage.feature import peak_local_max
        from skimage.segmentation import relabel_sequential, watershed

        mask = self._smooth(nucleus) > self.nucleus_threshold
        mask = ndi.binary_fill_holes(mask)
        if self.min_size > 1:
            # (skimage's remove_small_objects changed its size argument in 0.26; this works with any)
            components, _ = ndi.label(mask)
            mask = (np.bincount(components.ravel()) >= self.min_size)[components] & mask
        if not mask.any():
            return np.zeros(nucleus.shape, np.int32)
        distance = ndi.distance_transform_edt(mask)
        # A slightly smoothed distance map gives one peak per round nucleus instead of a ridge of them.
        distance = ndi.gaussian_filter(distance, 1.0)
        peaks = peak_local_max(distance, min_distance=self.min_distance, exclude_border=False,
                               labels=mask.astype(np.uint8))
        markers = np.zeros(mask.shape, np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1, dtype=np.int32)
        nuclei = watershed(-distance, markers, mask=mask)
        # A component whose peak was suppressed by a brighter neighbour's still becomes an object.
        orphans, n_orphans = ndi.label(mask & (nuclei == 0))
        if n_orphans:
            nuclei = np.where(orphans > 0, orphans + len(peaks), nuclei).astype(np.int32)
        if cyto is not None and self.growth > 0 and math.isfinite(self.cytoplasm_threshold):
            # Distance to the nearest nucleus, octagonal (mean of the chessboard and city-block chamfer
            # distances, within 8 % of Euclidean): a growth limit needs no more, and it is 10x faster.
            background = nuclei == 0
            reach = 0.5 * (ndi.distance_transform_cdt(background, metric="chessboard")
                           + ndi.distance_transform_cdt(background, metric="taxicab")).astype(np.float32)
            region = ((self._smooth(cyto) > self.cytoplasm_threshold) & (reach <= self.growth)) | (nuclei > 0)
            nuclei = watershed(reach, nuclei, mask=region)
        return relabel_sequential(nuclei.astype(np.int32))[0]


# --- cellpose backend ----------------------------------------------------------------------------------


def pick_device(requested: str = "auto"):
    """Return the torch device for ``auto`` (CUDA when available, else CPU), ``cpu`` or ``cuda``, logged.

    Delegates to the project's one device helper, :func:`hemoprofile.nn.devices.pick_device`; Cellpose
    inference runs in float32, so no mixed precision is requested.
    """
    from hemoprofile.nn.devices import pick_device as pick

    return pick(requested, mixed_precision=False, logger=log).device


def model_sidecar_path(model_path: str | os.PathLike) -> Path:
    """The JSON sidecar of a model file: the model path with ``.json`` appended (``x.pt.json``)."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.name + SIDECAR_SUFFIX)


def is_model_file(model: str) -> bool:
    """True when ``segment.model`` names a file (anything that is not a Cellpose built-in name)."""
    return str(model) not in PRETRAINED_MODELS


def missing_model_message(path: str | os.PathLike) -> str:
    """The error text for a missing model file: the path and the three ways forward."""
    return (
        f"Cellpose model file {str(path)!r} not found. Train the project's model with the workflow's "
        "segmentation-training rule (hemoprofile.segmentation_training; it writes the .pt file and its "
        ".pt.json sidecar under models/), or set segment.backend: classical (no model needed), or set "
        f"segment.model to a Cellpose built-in name ({', '.join(PRETRAINED_MODELS[:4])}) on a machine that "
        "can download it."
    )


def _infer_nbase(state: Mapping) -> list[int] | None:
    # CPnet's encoder: downsample.down.res_down_<i>.conv.conv_0.2.weight has shape (nbase[i+1], nbase[i], 3, 3).
    widths = []
    i = 0
    while f"downsample.down.res_down_{i}.conv.conv_0.2.weight" in state:
        weight = state[f"downsample.down.res_down_{i}.conv.conv_0.2.weight"]
        if i == 0:
            widths.append(int(weight.shape[1]))
        widths.append(int(weight.shape[0]))
        i += 1
    return widths or None


#: ``cellpose.core.run_net`` (3.1) stores each image's style vector in a fixed 256-wide array.
CELLPOSE_STYLE_WIDTH = 256
_STYLE_PADDED_CPNET = None


def _style_padded_cpnet():
    """A ``CPnet`` whose style output is zero-padded (or cut) to 256 values.

    Cellpose 3.1's ``run_net`` writes styles into a fixed (n, 256) array, so a narrower net
    (``nbase[-1]`` of 128, say) fails inside ``model.eval``. Styles only feed Cellpose's size model,
    which the project does not use, so padding them changes no mask.
    """
    global _STYLE_PADDED_CPNET
    if _STYLE_PADDED_CPNET is None:
        import torch.nn.functional as F
        from cellpose.resnet_torch import CPnet

        class StylePaddedCPnet(CPnet):
            def forward(self, data):
                out, style, features = super().forward(data)
                width = style.shape[1]
                if width < CELLPOSE_STYLE_WIDTH:
                    style = F.pad(style, (0, CELLPOSE_STYLE_WIDTH - width))
                return out, style[:, :CELLPOSE_STYLE_WIDTH], features

        _STYLE_PADDED_CPNET = StylePaddedCPnet
    return _STYLE_PADDED_CPNET


def load_cellpose_model(path_or_name: str | os.PathLike, device=None):
    """Load a Cellpose 3 ``CellposeModel`` from a model file (+ sidecar) or a built-in model name.

    Model file contract (shared with :mod:`hemoprofile.segmentation_training`)
        - ``<model>`` (any name, ``.pt`` by convention) is a ``torch.save``'d ``state_dict`` of
          ``cellpose.resnet_torch.CPnet``; float tensors may be float16 (they are cast to float32 here).
        - ``<model>.json`` -- the model path with ``.json`` *appended* (``hemoprofile_cellpose.pt.json``)
          -- is an optional JSON sidecar ``{"nbase": [...], "diam_mean": float, "nchan": 2, ...}``:

          ``nbase``: the U-Net widths *including the input channel count first*, as
          ``CellposeModel.nbase`` stores them: Cellpose's default is ``[2, 32, 64, 128, 256]``, a smaller
          net e.g. ``[2, 16, 32, 64, 128]``. A list without the leading ``nchan`` (``[16, 32, 64, 128]``)
          is accepted too. ``diam_mean``: the object diameter (pixels) the net was trained at; inputs are
          rescaled by ``diam_mean / diameter``. ``nchan``: network inputs (2: ``[cytoplasm, nucleus]`` or
          ``[nucleus, zeros]``). ``diam_labels`` is optional; other keys are ignored.
        - A net whose last width is not 256 is wrapped so its style vector is padded to 256 values
          (Cellpose 3.1's ``run_net`` assumes 256; styles do not affect the masks).
        - Without a sidecar the widths are read from the state dict's shapes and ``diam_mean`` from its
          ``diam_mean`` entry; a plain Cellpose-trained file therefore loads too.

    Parameters
    ----------
    path_or_name : a model file, or a Cellpose built-in name (``cyto3``, ``nuclei``, ``cyto2``; these are
        downloaded by Cellpose on first use, which needs network access).
    device : torch device; None picks one with :func:`pick_device` (``auto``).

    Returns
    -------
    cellpose.models.CellposeModel with ``.net`` in eval mode on ``device``.

    Raises
    ------
    FileNotFoundError naming the path and how to obtain a model, for a missing file.
    """
    name = str(path_or_name)
    if is_model_file(name) and not Path(name).is_file():  # before the slow imports: fail fast
        raise FileNotFoundError(missing_model_message(name))
    try:
        import torch
        from cellpose import models
        from cellpose.resnet_torch import CPnet
    except ImportError as err:
        raise RuntimeError(f"the cellpose backend needs cellpose>=3.1,<4 and torch ({err}); install them "
                           "(envs/gpu.yaml) or set segment.backend: classical") from err

    device = pick_device("auto") if device is None else torch.device(device)
    gpu = device.type == "cuda"
    if not is_model_file(name):
        log.info("loading Cellpose built-in model %s (downloads on first use)", name)
        try:
            return models.CellposeModel(gpu=gpu, device=device, model_type=name)
        except Exception as err:  # network errors come in many types
            raise RuntimeError(f"cannot load Cellpose built-in model {name!r} ({err}); it must be downloaded "
                               "once with network access, or use a model file / segment.backend: classical") from err
    path = Path(name)
    if not path.is_file():
        raise FileNotFoundError(missing_model_message(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: not a loadable torch state dict ({err})") from err
    if not isinstance(state, Mapping) or "output.2.weight" not in state:
        raise ValueError(f"{path}: not a Cellpose CPnet state dict (no 'output.2.weight')")
    if any(k.startswith("W2") for k in state):
        raise ValueError(f"{path}: a Cellpose 4 (cpsam) model; this project runs Cellpose 3")
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    sidecar = model_sidecar_path(path)
    meta = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    nchan = int(meta.get("nchan", 2))
    nbase = list(meta.get("nbase") or _infer_nbase(state) or [nchan, 32, 64, 128, 256])
    if nbase[0] != nchan or len(nbase) < 2 or nbase[1] <= nchan:
        nbase = [nchan, *nbase]
    if "diam_mean" in meta:
        diam_mean = float(meta["diam_mean"])
    elif "diam_mean" in state:
        diam_mean = float(state["diam_mean"].reshape(-1)[0])
    else:
        diam_mean = 30.0
    nout = int(state["output.2.weight"].shape[0])
    model = models.CellposeModel(gpu=gpu, device=device, pretrained_model=False, diam_mean=diam_mean, nchan=nchan)
    net_class = CPnet if nbase[-1] == CELLPOSE_STYLE_WIDTH else _style_padded_cpnet()
    net = net_class(nbase, nout, sz=3, mkldnn=model.mkldnn, max_pool=True, diam_mean=diam_mean)
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not fit a CPnet with nbase {nbase} (sidecar {sidecar}): {err}") from err
    model.net = net.to(device)
    model.net.eval()
    model.nbase = nbase
    model.nclasses = nout
    model.diam_mean = diam_mean
    model.diam_labels = float(meta.get("diam_labels", float(net.diam_labels.reshape(-1)[0])))
    model.pretrained_model = str(path)
    log.info("loaded Cellpose model %s (nbase %s, diam_mean %.1f) on %s", path, nbase, diam_mean, device)
    return model


class CellposeSegmenter:
    """Cellpose 3 segmentation of prepared windows, several windows per ``model.eval`` call.

    Parameters
    ----------
    model : a loaded ``CellposeModel`` (see :func:`load_cellpose_model`), kept for the whole slide.
    diameter : object diameter in pixels in the image; Cellpose rescales by ``diam_mean / diameter``.
    flow_threshold, cellprob_threshold, min_size : passed to ``model.eval``.
    normalisation : ``slide`` (percentiles fixed by :meth:`calibrate`) or ``window`` (each window its own).
    """

    name = "cellpose"
    context = 0

    def __init__(self, model, diameter: float = 15.0, flow_threshold: float = 0.4, cellprob_threshold: float = 0.0,
                 min_size: int = 15, normalisation: str = "slide", combine: str = "sum", model_name: str = "",
                 marker_min_span: float = 0.0):
        self.model = model
        self.diameter = float(diameter)
        self.flow_threshold = float(flow_threshold)
        self.cellprob_threshold = float(cellprob_threshold)
        self.min_size = int(min_size)
        self.normalisation = normalisation
        self.combine = combine
        self.marker_min_span = float(marker_min_span)
        self.model_name = model_name
        self.calibration: InputCalibration | None = None
        self.n_channels = 0

    @property
    def device(self) -> str:
        """The torch device the network runs on."""
        return str(getattr(self.model, "device", "cpu"))

    def calibrate(self, windows: WindowSource, n_channels: int) -> None:
        """Fix the slide-wide intensity map (with ``normalisation: window`` only the channel count)."""
        self.n_channels = n_channels
        if self.normalisation == "slide":
            self.calibration = calibrate_input(windows, n_channels, self.combine, self.marker_min_span)

    def network_input(self, window: np.ndarray) -> np.ndarray:
        """The (y, x, 2) float32 network input of a selected window: [cytoplasm, nucleus] or [nucleus, 0]."""
        calibration = self.calibration
        if calibration is None:
            calibration = calibrate_input(lambda: [(window, (slice(None), slice(None)))], window.shape[0], self.combine,
                                          self.marker_min_span)
        nucleus, cyto = calibration.prepare(window)
        second = np.zeros_like(nucleus) if cyto is None else nucleus
        return np.stack([nucleus if cyto is None else cyto, second], axis=-1).astype(np.float32)

    def segment(self, windows: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Segment selected windows (k, y, x) with one ``model.eval`` call; return int32 labels per window.

        Smaller windows (at the slide's edges) are zero-padded at the bottom and right to the largest
        one, so a batch always runs together; zero is background after normalisation, and Cellpose pads
        a whole image with zeros the same way. Masks are cropped back to each window.
        """
        if not windows:
            return []
        inputs = [self.network_input(w) for w in windows]
        height = max(x.shape[0] for x in inputs)
        width = max(x.shape[1] for x in inputs)
        batch = np.zeros((len(inputs), height, width, 2), np.float32)
        for i, x in enumerate(inputs):
            batch[i, : x.shape[0], : x.shape[1]] = x
        masks = self._eval(batch)
        return [m[: x.shape[0], : x.shape[1]].copy() for m, x in zip(masks, inputs)]

    def _eval(self, batch: np.ndarray) -> list[np.ndarray]:
        # A (n, y, x, 2) stack runs the net over all n images' 224 px blocks together; one image goes in
        # as (y, x, 2) because Cellpose squeezes a length-1 axis. channels=None keeps both inputs as they
        # are (channels=[0, ...] would average them into a grayscale image).
        kwargs = dict(channels=None, normalize={"normalize": False, "norm3D": False}, diameter=self.diameter,
                      flow_threshold=self.flow_threshold, cellprob_threshold=self.cellprob_threshold,
                      min_size=self.min_size)
        if len(batch) == 1:
            masks = self.model.eval(batch[0], channel_axis=2, **kwargs)[0]
            return [np.asarray(masks, np.int32).reshape(batch.shape[1:3])]
        masks = self.model.eval(batch, channel_axis=3, z_axis=0, **kwargs)[0]
        masks = np.asarray(masks, np.int32).reshape(batch.shape[:3])
        return list(masks)


# --- construction and whole-image segmentation ------------------------------------------------------


def build_segmenter(segment_cfg: Mapping | None = None, model=None, device=None):
    """Build the backend named by ``segment_cfg["backend"]`` (not yet calibrated).

    Parameters
    ----------
    segment_cfg : the ``segment`` config section (missing keys take :data:`DEFAULTS`).
    model : an already loaded ``CellposeModel`` to reuse (cellpose backend); loaded from
        ``segment_cfg["model"]`` when None.
    device : torch device for loading; None uses ``segment_cfg["device"]``.
    """
    cfg = segment_settings(segment_cfg)
    combine = cfg["channels"]["combine"]
    if cfg["backend"] == "classical":
        c = cfg["classical"]
        return ClassicalSegmenter(cfg["diameter"], c["smoothing_sigma"], c["peak_distance"], c["threshold_scale"],
                                  c["cytoplasm_growth"], cfg["min_size"], combine, cfg["marker_min_span"])
    if cfg["backend"] == "cellpose":
        if model is None:
            if is_model_file(cfg["model"]) and not Path(cfg["model"]).is_file():
                raise FileNotFoundError(missing_model_message(cfg["model"]))
            model = load_cellpose_model(cfg["model"], pick_device(cfg["device"]) if device is None else device)
        return CellposeSegmenter(model, cfg["diameter"], cfg["flow_threshold"], cfg["cellprob_threshold"],
                                 cfg["min_size"], cfg["normalisation"], combine, model_name=str(cfg["model"]),
                                 marker_min_span=cfg["marker_min_span"])
    raise ValueError(f"segment.backend {cfg['backend']!r} not one of classical, cellpose")


def segment_image(image: np.ndarray, channel_names: Sequence[str] | None = None, segment_cfg: Mapping | None = None,
                  segmenter=None, source: str = "image") -> np.ndarray:
    """Segment one whole image (no tiling); statistics come from the image itself.

    Parameters
    ----------
    image : (row, column) or (channel, row, column); integers are read as [0, 1] of their dtype range.
    channel_names : names of the channels; None for a 2-D image (its one channel is the nucleus).
    segment_cfg : the ``segment`` config section.
    segmenter : a backend from :func:`build_segmenter` to reuse (e.g. a loaded Cellpose model).
    source : what the image is, for error messages.

    Returns
    -------
    (row, column) int32 labels, 0 = background, objects numbered 1..N.

    Example
    -------
    >>> from skimage.draw import disk
    >>> img = np.zeros((64, 64), np.float32); img[disk((20, 20), 6)] = 1; img[disk((44, 40), 6)] = 1
    >>> int(segment_image(img, segment_cfg={"diameter": 12}).max())
    2
    """
    cfg = segment_settings(segment_cfg)
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[np.newaxis]
        channel_names = channel_names or [cfg["channels"]["nucleus"]]
        cfg["channels"]["cytoplasm"] = [c for c in cfg["channels"]["cytoplasm"] if c in channel_names]
    if channel_names is None:
        raise ValueError(f"{source}: a multi-channel image needs channel names")
    if len(channel_names) != image.shape[0]:
        raise ValueError(f"{source}: {len(channel_names)} channel names for {image.shape[0]} channels")
    selection = select_channels(channel_names, cfg["channels"]["nucleus"], cfg["channels"]["cytoplasm"], source)
    window = as_unit_float(image[selection.indices])
    segmenter = segmenter or build_segmenter(cfg)
    full = (slice(None), slice(None))
    segmenter.calibrate(lambda: [(window, full)], window.shape[0])
    return segmenter.segment([window])[0]


def equivalent_diameters(labels: np.ndarray) -> np.ndarray:
    """Equivalent-circle diameter (pixels) of every object of a label image."""
    areas = np.bincount(np.asarray(labels).ravel())[1:]
    areas = areas[areas > 0]
    return 2.0 * np.sqrt(areas / np.pi)


def estimate_diameter(image: np.ndarray, channel_names: Sequence[str] | None = None,
                      segment_cfg: Mapping | None = None, rounds: int = 2, source: str = "image") -> float:
    """Estimate the typical object diameter of an image with classical passes.

    Each pass segments with the current diameter (it sets the seed spacing and the cytoplasm growth) and
    takes the median equivalent diameter of the objects found; two rounds settle it. Returns the
    configured diameter when nothing is found.
    """
    cfg = segment_settings(segment_cfg, backend="classical")
    diameter = float(cfg["diameter"])
    for _ in range(rounds):
        labels = segment_image(image, channel_names, {**cfg, "diameter": diameter}, source=source)
        sizes = equivalent_diameters(labels)
        if sizes.size == 0:
            break
        diameter = float(max(np.median(sizes), 3.0))
    return diameter
