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


def _slide_with_pyramids(tmp_path):
    """preprocessed.zarr without a pyramid; image.zarr and labels.zarr with theirs (as the stages write)."""
    from hemoprofile.io.pyramid import write_pyramid

    raw, pre, labels = report_fixtures.slide_arrays(seed=0)
    paths = {"preprocessed": str(tmp_path / "preprocessed.zarr"), "image": str(tmp_path / "image.zarr"),
             "labels": str(tmp_path / "labels.zarr")}
    io.create_ome_zarr_image(paths["preprocessed"], pre.shape, pre.dtype, 32, report_fixtures.CHANNELS)[:] = pre
    io.create_ome_zarr_image(paths["image"], raw.shape, raw.dtype, 32, report_fixtures.CHANNELS)[:] = raw
    io.create_ome_zarr_labels(paths["labels"], labels.shape, 32)[:] = labels
    write_pyramid(paths["image"], smallest=24)
    write_pyramid(paths["labels"], smallest=24, method="nearest")
    return paths, raw, labels


def test_thumbnail_of_a_preprocessed_image_without_pyramid_comes_from_the_raw_pyramid(tmp_path):
    from hemoprofile.report.images import percentile_stretch

    paths, raw, _ = _slide_with_pyramids(tmp_path)
    level2 = np.asarray(zarr.open_group(paths["image"], mode="r")["2"][:])  # 4x: the coarsest >= 24 px wide
    assert level2.shape[-1] == 24
    images = slide_images({k: v for k, v in paths.items() if k != "labels"}, width=24)
    assert images["step"] == 4  # image.zarr's level 2, not level 0 of preprocessed.zarr
    np.testing.assert_allclose(images["thumbnail"], display_composite(
        percentile_stretch(block_mean_thumbnail(level2, 1)), report_fixtures.CHANNELS), atol=1e-6)
    # the detail crop still shows the preprocessed image at full resolution
    assert images["source"] == paths["preprocessed"]
    # an image fewer than RAW_PYRAMID_FROM thumbnail widths wide keeps the preprocessed thumbnail
    small = slide_images({k: v for k, v in paths.items() if k != "labels"}, width=48)
    pre = np.asarray(zarr.open_group(paths["preprocessed"], mode="r")["0"][:])
    np.testing.assert_allclose(small["thumbnail"], display_composite(
        block_mean_thumbnail(pre, 2) / 65535.0, report_fixtures.CHANNELS), atol=1e-6)


def test_thumbnail_outlines_read_a_labels_level_whose_factor_divides_the_step(tmp_path):
    from hemoprofile.report.images import _level_dividing

    paths, _, labels = _slide_with_pyramids(tmp_path)
    level, factor = _level_dividing(paths["labels"], 4)
    assert factor in (2, 4) and level.shape[-1] == -(-labels.shape[-1] // factor)
    assert _level_dividing(paths["labels"], 3)[1] == 1  # no level's factor divides 3: level 0
    with_outlines = slide_images(paths, width=24)
    assert with_outlines["outlines"] and with_outlines["step"] == 4
    outlined = (with_outlines["thumbnail"] == np.asarray((1.0, 0.85, 0.0), np.float32)).all(axis=-1)
    assert outlined.any()
