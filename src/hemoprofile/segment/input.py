"""The segmentation input: channel selection, intensity calibration and the 2-channel network input.

Every segmentation path sees the same prepared input: both backends in the workflow and the CLI, the
training of the project's Cellpose model (:mod:`hemoprofile.segment.training`) and the benchmark.

Intensity calibration
    The nucleus channel is scaled so its 1st and 99th percentiles map to 0 and 1; each cytoplasm marker
    is scaled by its 1st and 99.9th percentiles (the range at least ``marker_min_span`` wide, so a marker
    dim on the whole slide is not stretched) and clipped at 0 (so a bright marker such as CK on a tumour
    cell cannot hide a dim one such as CD45), the markers are combined (``sum`` or ``max``) and the
    composite is scaled by its 1st and 99th percentiles. The percentiles are *statistics of the whole
    slide*: computed once from histograms of a sample of tiles (:func:`calibrate_input`), so every tile
    is cut with the same map and a tiled run equals a whole-image run. For a single image they are the
    image's own.

Network input
    Cellpose gets ``[cytoplasm composite, nucleus]``, or ``[nucleus, zeros]`` when no cytoplasm channel
    is configured (the Cellpose grayscale convention): :func:`network_input` for a selected window,
    :func:`cellpose_input` for a whole image (what training and the benchmark use).

Arrays are (channel, row, column) float32 with values in [0, 1] (stored integers are read with
:func:`hemoprofile.vocabulary.to_unit`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from hemoprofile.segment.settings import segment_settings
from hemoprofile.vocabulary import to_unit

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
#: Names of the two network input channels, in order (with cytoplasm channels).
INPUT_CHANNELS = ("cytoplasm", "nucleus")

FULL = (slice(None), slice(None))


# --- channels ------------------------------------------------------------------------------------------


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


def select_image(image: np.ndarray, channel_names: Sequence[str] | None, cfg: Mapping,
                 source: str = "image") -> np.ndarray:
    """The selected window (k, y, x) of a whole image, float32 in [0, 1], nucleus first.

    Parameters
    ----------
    image : (row, column) or (channel, row, column); integers are read as [0, 1] of their dtype range.
    channel_names : names of the channels; None for a 2-D image (its one channel is the nucleus, and
        only cytoplasm channels among ``channel_names`` are kept).
    cfg : a complete ``segment`` section (:func:`hemoprofile.segment.settings.segment_settings`).
    source : what the image is, for error messages.
    """
    image = np.asarray(image)
    cytoplasm = list(cfg["channels"]["cytoplasm"])
    if image.ndim == 2:
        image = image[np.newaxis]
        channel_names = channel_names or [cfg["channels"]["nucleus"]]
        cytoplasm = [c for c in cytoplasm if c in channel_names]
    if channel_names is None:
        raise ValueError(f"{source}: a multi-channel image needs channel names")
    if len(channel_names) != image.shape[0]:
        raise ValueError(f"{source}: {len(channel_names)} channel names for {image.shape[0]} channels")
    selection = select_channels(channel_names, cfg["channels"]["nucleus"], cytoplasm, source)
    return to_unit(image[selection.indices])


# --- histograms ----------------------------------------------------------------------------------------


def histogram(values: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """Counts of ``values`` in :data:`HIST_BINS` bins over ``value_range`` (outliers in the edge bins)."""
    lo, hi = value_range
    idx = np.floor((np.asarray(values, np.float32).ravel() - lo) * (HIST_BINS / (hi - lo)))
    return np.bincount(np.clip(idx, 0, HIST_BINS - 1).astype(np.int64), minlength=HIST_BINS)


def bin_centres(value_range: tuple[float, float]) -> np.ndarray:
    """Centres of the histogram bins over ``value_range``."""
    lo, hi = value_range
    return lo + (np.arange(HIST_BINS) + 0.5) * ((hi - lo) / HIST_BINS)


def histogram_percentiles(counts: np.ndarray, value_range: tuple[float, float], q: Sequence[float]) -> list[float]:
    """Percentiles ``q`` (0..100) of a histogram, as bin centres; zeros for an empty histogram."""
    total = counts.sum()
    if total == 0:
        return [0.0 for _ in q]
    cumulative = np.cumsum(counts) / total
    centres = bin_centres(value_range)
    return [float(centres[min(np.searchsorted(cumulative, p / 100.0), HIST_BINS - 1)]) for p in q]


def histogram_otsu(counts: np.ndarray, value_range: tuple[float, float]) -> float:
    """Otsu threshold of a histogram; +inf when it has fewer than two occupied bins (nothing to split)."""
    from skimage.filters import threshold_otsu

    occupied = np.flatnonzero(counts)
    if occupied.size < 2:
        return math.inf
    # Trim to the occupied span: same threshold, far fewer bins to scan.
    span = slice(occupied[0], occupied[-1] + 1)
    return float(threshold_otsu(hist=(counts[span], bin_centres(value_range)[span])))


# --- calibration ---------------------------------------------------------------------------------------


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
            hists[k] += histogram(window[k][core], RAW_RANGE)
    ranges = [tuple(histogram_percentiles(hists[0], RAW_RANGE, INPUT_PERCENTILES))]
    for h in hists[1:]:
        low, high = histogram_percentiles(h, RAW_RANGE, MARKER_PERCENTILES)
        ranges.append((low, max(high, low + float(marker_min_span))))
    if n_channels == 1:
        return InputCalibration(ranges, None, combine)
    composite_hist = np.zeros(HIST_BINS, np.int64)
    for window, core in windows():
        composite_hist += histogram(_combine_markers(window, ranges, combine)[core], PREPARED_RANGE)
    composite_range = tuple(histogram_percentiles(composite_hist, PREPARED_RANGE, INPUT_PERCENTILES))
    return InputCalibration(ranges, composite_range, combine)


# --- the network input ---------------------------------------------------------------------------------


def network_input(window: np.ndarray, calibration: InputCalibration | None = None, combine: str = "sum",
                  marker_min_span: float = 0.0) -> np.ndarray:
    """The (y, x, 2) float32 network input of a selected window: [cytoplasm, nucleus] or [nucleus, 0].

    Without a ``calibration`` the window's own statistics are used (``combine`` and ``marker_min_span``
    as in :func:`calibrate_input`).
    """
    if calibration is None:
        calibration = calibrate_input(lambda: [(window, FULL)], window.shape[0], combine, marker_min_span)
    nucleus, cyto = calibration.prepare(window)
    second = np.zeros_like(nucleus) if cyto is None else nucleus
    return np.stack([nucleus if cyto is None else cyto, second], axis=-1).astype(np.float32)


def cellpose_input(image: np.ndarray, channel_names: Sequence[str] | None = None,
                   segment_cfg: Mapping | None = None, source: str = "image") -> np.ndarray:
    """The (2, row, column) float32 network input of a whole image, with the image's own statistics.

    The same map the ``cellpose`` backend applies to a whole image (:func:`select_image`, then
    :func:`network_input`): this is what the project's model is trained and benchmarked on.

    Parameters
    ----------
    image : (row, column) nuclear-stain image, or (channel, row, column) IF image; integers are read as
        [0, 1] of their dtype range, floats must already be in [0, 1].
    channel_names : names of a multi-channel image's channels.
    segment_cfg : the ``segment`` config section (channels, ``combine``, ``marker_min_span``).
    source : what the image is, for error messages.

    Example
    -------
    >>> x = cellpose_input(np.arange(64, dtype=np.uint8).reshape(8, 8))
    >>> x.shape, x.dtype, bool(x[1].any())
    ((2, 8, 8), dtype('float32'), False)
    """
    cfg = segment_settings(segment_cfg)
    window = select_image(image, channel_names, cfg, source)
    prepared = network_input(window, None, cfg["channels"]["combine"], cfg["marker_min_span"])
    return np.ascontiguousarray(np.moveaxis(prepared, -1, 0))


def input_preparation(segment_cfg: Mapping | None = None) -> dict:
    """A JSON-ready description of :func:`cellpose_input` under ``segment_cfg`` (for model sidecars)."""
    cfg = segment_settings(segment_cfg)
    return {
        "function": "hemoprofile.segment.input.cellpose_input",
        "input_channels": list(INPUT_CHANNELS),
        "nucleus": cfg["channels"]["nucleus"],
        "cytoplasm_markers": list(cfg["channels"]["cytoplasm"]),
        "combine": cfg["channels"]["combine"],
        "marker_min_span": float(cfg["marker_min_span"]),
        "percentiles": list(INPUT_PERCENTILES),
        "marker_percentiles": list(MARKER_PERCENTILES),
        "statistics": f"the image's own, from {HIST_BINS}-bin histograms",
        "single_channel": "[image, zeros]",
    }
