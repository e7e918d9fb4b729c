"""Images with known cells for the segment tests: hand-made discs with nuclei and cytoplasm rings, and
an untrained Cellpose model (built offline, no download)."""

from __future__ import annotations

import numpy as np
from skimage.draw import disk

CHANNELS = ["DAPI", "CK", "VIM", "CD45"]


def disc_cells(shape=(200, 200), n=40, radius=(4.0, 6.5), ring=3.0, seed=0, noise=0.03, touching=0.3):
    """(4, y, x) float32 image in [0, 1] with nuclei (DAPI) and cytoplasm rings (CD45), and its truth.

    A fraction of the cells are placed touching an earlier one (their rings meet), as in a real smear.
    """
    rng = np.random.default_rng(seed)
    image = np.zeros((4, *shape), np.float32)
    truth = np.zeros(shape, np.int32)
    centres = []
    for _ in range(n * 50):
        if len(centres) >= n:
            break
        r = rng.uniform(*radius)
        if centres and rng.random() < touching:
            cy0, cx0, r0 = centres[rng.integers(len(centres))]
            angle = rng.uniform(0, 2 * np.pi)
            d = r0 + r + 2 * ring
            cy, cx = cy0 + d * np.sin(angle), cx0 + d * np.cos(angle)
        else:
            cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        margin = r + ring + 2
        if not (margin < cy < shape[0] - margin and margin < cx < shape[1] - margin):
            continue
        cell = disk((cy, cx), r + ring, shape=shape)
        if (truth[cell] > 0).any():
            continue
        centres.append((cy, cx, r))
        truth[cell] = len(centres)
        image[3][cell] = rng.uniform(0.4, 0.7)
        image[0][disk((cy, cx), r, shape=shape)] = rng.uniform(0.6, 1.0)
    image += rng.normal(0, noise, image.shape).astype(np.float32)
    return np.clip(image, 0, 1), truth


def disc_image(diameters, shape=(128, 128), seed=0):
    """Bright discs of the given diameters on a dark, noisy background (uint8), and their labels."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    k = 0
    for d in diameters:
        for _ in range(100):
            y, x = rng.integers(d, shape[0] - d), rng.integers(d, shape[1] - d)
            rr, cc = disk((y, x), d / 2 + 2, shape=shape)
            if not labels[rr, cc].any():
                k += 1
                rr, cc = disk((y, x), d / 2, shape=shape)
                labels[rr, cc] = k
                break
    image = (labels > 0) * 200.0 + rng.normal(20, 3, shape)
    return np.clip(image, 0, 255).astype(np.uint8), labels


def untrained_model(diam_mean=15.0):
    """A Cellpose 3 model with random weights: builds offline, no download."""
    import torch
    from cellpose import models

    torch.manual_seed(0)
    return models.CellposeModel(gpu=False, pretrained_model=False, diam_mean=diam_mean)
