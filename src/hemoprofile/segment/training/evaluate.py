"""Scoring a trained model file on prepared inputs with truth labels (validation during training, and
the per-image studies in models/README.md).

The model is loaded with the pipeline's loader and runs through the pipeline's Cellpose backend
(:meth:`hemoprofile.segment.segmenter.CellposeSegmenter.segment_inputs`); without a given diameter each
image's is estimated (:func:`hemoprofile.segment.diameter.estimate_input_diameter`, the factor from the
model's sidecar) and searched by :func:`hemoprofile.segment.diameter.segment_at_estimate`, the loop the
benchmark uses too.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hemoprofile.segment.cellpose_model import load_cellpose_model, read_sidecar
from hemoprofile.segment.diameter import estimate_input_diameter, segment_at_estimate
from hemoprofile.segment.metrics import instance_scores
from hemoprofile.segment.segmenter import CellposeSegmenter

#: Smallest object (pixels) kept when scoring a model (the workflow's ``segment.min_size`` is 15).
EVAL_MIN_SIZE = 8


@dataclass
class TrainedSegmenter:
    """A loaded model file ready to segment (2, row, column) network inputs (see :func:`load_trained_segmenter`)."""

    model: object
    meta: dict
    diameter_factor: float = 1.0
    flow_threshold: float = 0.4
    cellprob_threshold: float = 0.0
    min_size: int = EVAL_MIN_SIZE

    def segment(self, image2: np.ndarray, diameter: float | None = None, refine: bool = True) -> tuple[np.ndarray, float]:
        """Segment a (2, row, column) input; returns the labels and the diameter used.

        A given ``diameter`` is used as it is. Without one it is estimated classically
        (:func:`estimate_input_diameter`), then :func:`segment_at_estimate` retries other diameters
        when nothing is found and, with ``refine``, segments once more at the size of the objects found.
        """
        if diameter is not None:
            return self._eval(image2, diameter), float(diameter)
        estimate = estimate_input_diameter(image2, self.diameter_factor, default=float(self.meta["diam_mean"]))
        return segment_at_estimate(lambda d: self._eval(image2, d), estimate, image2.shape[-2:], refine=refine)

    def _eval(self, image2: np.ndarray, diameter: float) -> np.ndarray:
        backend = CellposeSegmenter(self.model, diameter, self.flow_threshold, self.cellprob_threshold, self.min_size)
        return backend.segment_inputs([np.moveaxis(np.asarray(image2, np.float32), 0, -1)])[0]


def load_trained_segmenter(model_path: str | os.PathLike, device=None) -> TrainedSegmenter:
    """Load a model file + sidecar (on the CPU unless ``device`` says otherwise) with its diameter factor."""
    model = load_cellpose_model(model_path, "cpu" if device is None else device)
    meta = read_sidecar(model_path)
    factor = float(meta.get("diameter_estimator", {}).get("factor", 1.0))
    return TrainedSegmenter(model=model, meta=meta, diameter_factor=factor)


def evaluate_segmenter(model_path: str | os.PathLike, images: Sequence[np.ndarray], labels: Sequence[np.ndarray],
                       thresholds: Sequence[float] = (0.5, 0.75), diameters: Sequence[float] | None = None,
                       segmenter: TrainedSegmenter | None = None) -> dict:
    """Segment 2-channel inputs with a model and score them against truth labels.

    Parameters
    ----------
    model_path : model file with sidecar (ignored when ``segmenter`` is given).
    images, labels : network inputs (see :func:`hemoprofile.segment.input.cellpose_input`) and truth labels.
    diameters : per-image diameters; by default each is estimated (:meth:`TrainedSegmenter.segment`).

    Returns
    -------
    dict of ``ap@0.5``, ``ap@0.75``, precisions, recalls, ``seconds_per_megapixel`` (including the
    diameter estimate), ``n_images``, ``n_true``.
    """
    seg = segmenter or load_trained_segmenter(model_path)
    preds, seconds, pixels = [], 0.0, 0
    for k, image in enumerate(images):
        t0 = time.perf_counter()
        masks, _ = seg.segment(image, None if diameters is None else diameters[k])
        seconds += time.perf_counter() - t0
        pixels += image.shape[-1] * image.shape[-2]
        preds.append(masks)
    scores = instance_scores(labels, preds, thresholds)
    scores["seconds_per_megapixel"] = seconds / max(pixels / 1e6, 1e-9)
    return scores
