"""Test helpers of the preprocess tests: a fluorescence-like synthetic channel, an image.zarr writer and
the config section the tests run with."""

from __future__ import annotations

import numpy as np

from hemoprofile import io

TILE = 256  # 600 x 700 is not a multiple of it: edge tiles are 88 and 188 pixels

#: Mirrors config/config.yaml's preprocess section (copied so that config edits do not move these tests).
CONFIG = {
    "output_dtype": "uint16",
    "sample_tiles": 16,
    "default": {
        "percentile_clip": {"enabled": True, "low": 0.5, "high": 99.9},
        "normalise": {"enabled": True},
        "clahe": {"enabled": False, "kernel_size": 64, "clip_limit": 0.01},
        "denoise": {"enabled": False, "weight": 0.05, "iterations": 20},
    },
    "channels": {
        "DAPI": {"denoise": {"enabled": True, "weight": 0.04, "iterations": 20}},
        "CK": {"clahe": {"enabled": True, "kernel_size": 64, "clip_limit": 0.01}},
    },
}


def synthetic_channel(seed: int, shape=(600, 700)) -> np.ndarray:
    """A fluorescence-like uint16 channel: background gradient, Gaussian blobs, Poisson + read noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    img = 300.0 + 0.4 * xx + 0.3 * yy
    for _ in range(60):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        radius, amplitude = rng.uniform(4, 12), rng.uniform(500, 20000)
        img += amplitude * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2))
    img = rng.poisson(img) + rng.normal(0, 12, shape)
    return np.clip(img, 0, 65535).astype(np.uint16)


def write_image(path, image_cyx: np.ndarray, names, tile=TILE, pixel_size_um=0.65):
    array = io.create_ome_zarr_image(
        path, image_cyx.shape, image_cyx.dtype, tile, names, pixel_size_um=pixel_size_um,
        extra_attributes={"stage": "tile", "slide": "S1"},
    )
    array[:] = image_cyx
    return path
