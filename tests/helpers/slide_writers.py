"""Test helpers that write slides in the input layouts hemoprofile reads (shared by the reader and tile tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

from hemoprofile.io import frame_filename, frame_grid_position

CHANNELS3 = ["DAPI", "CK", "CD45"]


def reference_image(shape, dtype, seed=0) -> np.ndarray:
    """Pixels spanning the dtype's range, so a wrong cast or byte order cannot go unnoticed."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return (rng.normal(0, 1000, shape)).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)


def write_frame_folder(folder: Path, image: np.ndarray, rows: int, cols: int, order: str,
                       pattern: str = "Tile{index:06d}.tif", channel_names=CHANNELS3) -> None:
    """Cut a C x Y x X image into rows x cols frames written as an HDSCA scanner names them."""
    folder.mkdir(parents=True, exist_ok=True)
    n_channels, height, width = image.shape
    fh, fw = height // rows, width // cols
    for c in range(n_channels):
        for frame in range(rows * cols):
            r, k = frame_grid_position(frame, rows, cols, order)
            name = frame_filename(pattern, frame, c, channel_names[c], rows * cols)
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(folder / name, image[c, r * fh:(r + 1) * fh, k * fw:(k + 1) * fw])
