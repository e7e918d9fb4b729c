"""A whole-image (non-tiled) extraction in memory: the reference the streaming extract stage is tested
against."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hemoprofile.features.measure import measure_cells
from hemoprofile.features.patches import cut_patches
from hemoprofile.io.patches import to_patch_dtype
from hemoprofile.vocabulary import to_unit


def extract_reference(
    labels: np.ndarray,
    raw: np.ndarray,
    preprocessed: np.ndarray,
    channel_names: Sequence[str],
    *,
    patch_size: int = 32,
    patch_dtype: str = "uint8",
    nucleus_channel: str | None = "DAPI",
    nucleus_threshold: float | None = None,
    pixel_size_um: float | None = None,
    mask_neighbours: bool = False,
    mask_background: bool = False,
    background_margin_px: int = 2,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Whole-image (non-tiled) extraction of all cells in memory, ordered by cell id: the reference the
    streaming :func:`extract_slide` is tested against. For small images only.

    Returns
    -------
    (columns as :func:`measure_cells` returns them, patches (N, C, P, P)).
    """
    lab = np.asarray(labels)
    ids = np.unique(lab)
    ids = ids[ids != 0].astype(np.int64)
    pre = to_unit(preprocessed)
    ci = list(channel_names).index(nucleus_channel) if nucleus_channel in list(channel_names) else None
    cols = measure_cells(lab, np.asarray(raw), pre, ids, channel_names=channel_names,
                         nucleus_channel=ci, nucleus_threshold=nucleus_threshold, pixel_size_um=pixel_size_um)
    centres = np.stack([np.floor(cols["y"] + 0.5), np.floor(cols["x"] + 0.5)], axis=1).astype(np.int64)
    patches = cut_patches(to_patch_dtype(pre, patch_dtype), lab, ids, centres, patch_size,
                          mask_neighbours=mask_neighbours, mask_background=mask_background,
                          background_margin_px=background_margin_px)
    return cols, patches
