"""Single 2-D images from disk (microscope images handed to ``hemoprofile segment``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: Image files ``hemoprofile segment`` reads.
IMAGE_SUFFIXES = (".png", ".tif", ".tiff")


def read_image(path: Path) -> np.ndarray:
    """Read a 2-D image as (channel, row, column); RGB(A) and (row, column, channel) become channel-first.

    An alpha channel is dropped. Raises ValueError naming the file when it is not a 2-D image.
    """
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        image = tifffile.imread(path)
    else:
        import imageio.v3 as iio

        image = iio.imread(path)
    image = np.squeeze(np.asarray(image))
    if image.ndim == 2:
        return image[np.newaxis]
    if image.ndim != 3:
        raise ValueError(f"{path}: expected a 2-D image (row, column[, channel]), got shape {image.shape}")
    if image.shape[-1] <= 4 and image.shape[0] > 4:  # channels last (PNG RGB/RGBA, most TIFFs)
        if path.suffix.lower() == ".png" and image.shape[-1] in (2, 4):
            image = image[..., :-1]  # gray+alpha / RGBA: drop alpha
        image = np.moveaxis(image, -1, 0)
    return image
