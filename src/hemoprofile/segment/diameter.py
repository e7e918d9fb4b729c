"""Object size: measuring it in label images, estimating it in images, and segmenting at an estimate.

Distinct things, distinct names:

- :func:`equivalent_diameters`: each object's equivalent-circle diameter in a label image.
- :func:`label_diameter`: the median of those (Cellpose's ``utils.diameters``): the size of a label image.
- :func:`estimate_diameter`: the typical object diameter of an *image*, from classical segmentation
  passes (``hemoprofile segment --diameter auto``).
- :func:`estimate_input_diameter`: the typical object diameter of a prepared 2-channel *network input*
  (Otsu foreground, twice the largest inscribed radius, times a factor fitted on training data by
  :func:`fit_diameter_factor` and kept in the model's sidecar); fast, for the Cellpose model.
- :func:`segment_at_estimate`: segment at an estimated diameter, retry larger (and smaller) diameters when
  nothing is found, and segment once more at the size of the objects found when it differs from the
  estimate (the one refinement loop, used by training evaluation and the benchmark).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from hemoprofile.segment.segmenter import segment_image
from hemoprofile.segment.settings import segment_settings

#: Relative difference between the diameter used and the one found above which
#: :func:`segment_at_estimate` segments again at the found diameter.
REFINE_TOLERANCE = 0.25
#: Multiples of the estimated diameter :func:`segment_at_estimate` tries, in order, when nothing is found
#: at the estimate.
EMPTY_RETRY_FACTORS = (2.0, 4.0, 0.5)


def equivalent_diameters(labels: np.ndarray) -> np.ndarray:
    """Equivalent-circle diameter (pixels) of every object of a label image."""
    areas = np.bincount(np.asarray(labels).ravel())[1:]
    areas = areas[areas > 0]
    return 2.0 * np.sqrt(areas / np.pi)


def label_diameter(labels: np.ndarray) -> float:
    """Median equivalent-circle diameter of the objects of a label image (Cellpose's ``utils.diameters``).

    Returns 0.0 for an image without objects.

    Example
    -------
    >>> round(label_diameter(np.pad(np.ones((10, 10), int), 2)), 2)
    11.28
    """
    areas = np.bincount(np.asarray(labels).ravel().astype(np.int64))[1:]
    areas = areas[areas > 0]
    if areas.size == 0:
        return 0.0
    return float(np.median(np.sqrt(areas)) / (np.sqrt(np.pi) / 2))


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


def _inscribed_diameter(image2: np.ndarray) -> float:
    """Median of twice the largest inscribed radius of Otsu foreground components (pixels)."""
    from scipy import ndimage as ndi
    from skimage.filters import gaussian, threshold_otsu

    signal = np.clip(np.max(np.asarray(image2, np.float32), axis=0), 0, 1.5)
    signal = gaussian(signal, 1.0)
    if float(signal.max() - signal.min()) < 1e-6:
        return float("nan")
    fg = signal > threshold_otsu(signal)
    lab, n = ndi.label(fg)
    if n == 0:
        return float("nan")
    dist = ndi.distance_transform_edt(fg)
    peak = ndi.maximum(dist, lab, index=np.arange(1, n + 1))
    sizes = ndi.sum(fg, lab, index=np.arange(1, n + 1))
    keep = sizes >= 12  # specks of noise are not objects
    if not keep.any():
        return float("nan")
    return float(2.0 * np.median(peak[keep]))


def estimate_input_diameter(image2: np.ndarray, factor: float = 1.0, default: float = 17.0) -> float:
    """Estimate the median object diameter (pixels) of a 2-channel network input, classically.

    Otsu threshold of the smoothed channel maximum, connected components, twice each component's
    largest inscribed radius (robust to touching objects, unlike the equivalent diameter), median over
    components, times ``factor`` (fitted by :func:`fit_diameter_factor` so it matches the equivalent
    diameter Cellpose uses). Returns ``default`` when nothing stands out.
    """
    raw = _inscribed_diameter(image2)
    if not np.isfinite(raw) or raw <= 0:
        return float(default)
    return float(np.clip(raw * factor, 4.0, 200.0))


def fit_diameter_factor(images: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> float:
    """Median ratio of true to classically estimated diameter over training images (network inputs)."""
    ratios = []
    for image, lab in zip(images, labels):
        raw = _inscribed_diameter(image)
        true = label_diameter(lab)
        if np.isfinite(raw) and raw > 0 and true > 0:
            ratios.append(true / raw)
    return float(np.median(ratios)) if ratios else 1.0


def segment_at_estimate(run: Callable[[float], np.ndarray], estimate: float, shape: Sequence[int],
                        refine: bool = True, retry: bool = True) -> tuple[np.ndarray, float]:
    """Segment an image at an estimated object diameter; return its labels and the diameter used.

    Parameters
    ----------
    run : segments the image at a diameter (pixels) and returns its labels.
    estimate : the estimated diameter; capped at a quarter of the image's shorter side (at least 8 px).
    shape : the image's (row, column) shape.
    refine : when objects are found, compare their median equivalent diameter with the one used, and
        when they differ by more than :data:`REFINE_TOLERANCE` segment once more at the found one (the
        project's net is trained for objects within about +-25% of its ``diam_mean``).
    retry : when nothing is found, try :data:`EMPTY_RETRY_FACTORS` times the diameter in turn (skipping
        any above half the shorter side) and keep the first that finds objects (a classical estimate can
        mistake bright parts of large textured nuclei for objects, several-fold too small; an image with
        no objects costs those extra passes).
    """
    side = min(int(s) for s in shape[-2:])
    diameter = min(float(estimate), max(8.0, side / 4))
    masks = run(diameter)
    if retry and masks.max() == 0:
        for factor in EMPTY_RETRY_FACTORS:
            candidate = diameter * factor
            if candidate > side / 2:
                continue
            found = run(candidate)
            if found.max() > 0:
                masks, diameter = found, candidate
                break
    if refine and masks.max() > 0:
        found = label_diameter(masks)
        if found > 0 and abs(found / diameter - 1) > REFINE_TOLERANCE:
            diameter = found
            masks = run(diameter)
    return masks, float(diameter)
