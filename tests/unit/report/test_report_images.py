"""hemoprofile.report.images: slide thumbnails (block means read in bands, coarser pyramid levels)."""

import numpy as np
import zarr
from helpers import report_fixtures

from hemoprofile import io
from hemoprofile.report.images import block_mean_thumbnail, display_composite, slide_images


def test_thumbnail_block_means_match_numpy_across_chunk_bands(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 65535, (2, 23, 31), dtype=np.uint16)
    array = zarr.create_array(str(tmp_path / "a.zarr"), shape=pixels.shape, chunks=(1, 5, 7), dtype=pixels.dtype)
    array[:] = pixels
    for step in (1, 3, 4, 7):
        expected = np.zeros((2, -(-23 // step), -(-31 // step)))
        for i in range(expected.shape[1]):
            for j in range(expected.shape[2]):
                expected[:, i, j] = pixels[:, i * step:(i + 1) * step, j * step:(j + 1) * step].mean(axis=(1, 2))
        np.testing.assert_allclose(block_mean_thumbnail(array, step), expected, rtol=1e-5)


def test_thumbnail_uses_a_coarser_pyramid_level_when_the_image_has_one(tmp_path):
    raw, pre, labels = report_fixtures.slide_arrays(seed=0)
    path = tmp_path / "preprocessed.zarr"
    io.create_ome_zarr_image(path, pre.shape, pre.dtype, 64, report_fixtures.CHANNELS)[:] = pre
    root = zarr.open_group(str(path), mode="r+")
    half = pre.reshape(4, 48, 2, 48, 2).mean(axis=(2, 4)).astype(np.uint16)
    root.create_array("1", shape=half.shape, chunks=(1, 48, 48), dtype=half.dtype)[:] = half
    ome = dict(root.attrs["ome"])
    ome["multiscales"][0]["datasets"].append({"path": "1", "coordinateTransformations": [
        {"type": "scale", "scale": [1.0, 2.0, 2.0]}]})
    root.attrs["ome"] = ome
    images = slide_images({"preprocessed": str(path)}, width=24)
    assert images["step"] == 4  # level 1 (2x) read with a step of 2
    np.testing.assert_allclose(images["thumbnail"], display_composite(
        block_mean_thumbnail(half, 2) / 65535.0, report_fixtures.CHANNELS), atol=1e-6)
