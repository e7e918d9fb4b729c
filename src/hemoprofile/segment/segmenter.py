"""The segmentation backends behind one interface, and whole-image segmentation.

Two backends share one interface (``calibrate`` on sampled windows, then ``segment`` a list of selected
windows), built by :func:`build_segmenter` from the ``segment`` config section:

``classical``
    :class:`hemoprofile.segment.classical.ClassicalSegmenter`: threshold + watershed; no model.
``cellpose``
    :class:`CellposeSegmenter`: a Cellpose 3 ``CellposeModel`` fed the 2-channel network input of
    :mod:`hemoprofile.segment.input`, several windows per ``model.eval`` call. Model files load through
    :func:`hemoprofile.segment.cellpose_model.load_cellpose_model`.

The percentiles (and the classical thresholds) are statistics of the whole slide, fixed by
``calibrate``; for a single image (:func:`segment_image`) they are the image's own
(``normalisation: window`` makes each window use its own percentiles instead, as Cellpose does by
default). Label images are (row, column) int32, 0 = background.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import numpy as np

from hemoprofile.segment.cellpose_model import (
    cellpose_device,
    is_model_file,
    load_cellpose_model,
    model_file,
)
from hemoprofile.segment.classical import ClassicalSegmenter
from hemoprofile.segment.input import (
    FULL,
    InputCalibration,
    WindowSource,
    calibrate_input,
    network_input,
    select_image,
)
from hemoprofile.segment.settings import segment_settings


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
    #: one model call at a time: torch spreads each call over the job's threads (and a GPU runs one anyway).
    parallel_windows = False

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
        """The (y, x, 2) float32 network input of a selected window: [cytoplasm, nucleus] or [nucleus, 0]
        (:func:`hemoprofile.segment.input.network_input`; the window's own statistics without a calibration)."""
        return network_input(window, self.calibration, self.combine, self.marker_min_span)

    def segment(self, windows: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Segment selected windows (k, y, x) with one ``model.eval`` call; return int32 labels per window.

        Smaller windows (at the slide's edges) are zero-padded at the bottom and right to the largest
        one, so a batch always runs together; zero is background after normalisation, and Cellpose pads
        a whole image with zeros the same way. Masks are cropped back to each window.
        """
        return self.segment_inputs([self.network_input(w) for w in windows])

    def segment_inputs(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Segment prepared (y, x, 2) network inputs with one ``model.eval`` call (see :meth:`segment`)."""
        if not inputs:
            return []
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


def build_segmenter(segment_cfg: Mapping | None = None, model=None, device=None):
    """Build the backend named by ``segment_cfg["backend"]`` (not yet calibrated).

    Parameters
    ----------
    segment_cfg : the ``segment`` config section (missing keys take the schema's defaults).
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
            if is_model_file(cfg["model"]):
                model_file(cfg["model"])  # a missing file fails here, before the device is chosen
            model = load_cellpose_model(cfg["model"], cellpose_device(cfg["device"]) if device is None else device)
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
    window = select_image(image, channel_names, cfg, source)
    segmenter = segmenter or build_segmenter(cfg)
    segmenter.calibrate(lambda: [(window, FULL)], window.shape[0])
    return segmenter.segment([window])[0]


