"""Multiscale pyramids: each level is the 2x mean (images) or every second pixel (labels) of the one
before, level 0 is never touched, the NGFF metadata validates, and memory stays at a few chunks
whatever the image's size."""

from __future__ import annotations

import hashlib
import tracemalloc

import numpy as np
import pytest
import zarr

from hemoprofile.io import create_ome_zarr_image, create_ome_zarr_labels
from hemoprofile.io.pyramid import (
    downsample_mean,
    downsample_nearest,
    pyramid_levels,
    pyramid_shapes,
    write_pyramid,
)


def reference_mean(block: np.ndarray) -> np.ndarray:
    """The 2 x 2 block mean in float64, edge blocks averaged over the pixels they have (no padding trick)."""
    h, w = block.shape[-2:]
    out = np.zeros((*block.shape[:-2], -(-h // 2), -(-w // 2)))
    for i in range(out.shape[-2]):
        for j in range(out.shape[-1]):
            out[..., i, j] = block[..., 2 * i:2 * i + 2, 2 * j:2 * j + 2].astype(np.float64).mean(axis=(-2, -1))
    return out


def level0_digest(path) -> str:
    """Hash of every file of level 0 (its chunks and metadata), to prove it is bitwise unchanged."""
    digest = hashlib.sha256()
    for f in sorted((path / "0").rglob("*")):
        if f.is_file():
            digest.update(str(f.relative_to(path)).encode() + f.read_bytes())
    return digest.hexdigest()


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "uint32", "int64", "uint64"])
@pytest.mark.parametrize("shape", [(6, 8), (7, 9), (1, 5), (2, 3, 5)])
def test_mean_downsample_is_the_rounded_block_mean(dtype, shape):
    info = np.iinfo(dtype)
    rng = np.random.default_rng(0)
    block = rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    block.flat[:4] = info.max  # no overflow at the top of the range
    got = downsample_mean(block)
    assert got.dtype == block.dtype
    if block.dtype.itemsize < 8:  # exact in float64
        np.testing.assert_array_equal(got, np.floor(reference_mean(block) + 0.5).astype(dtype))
    else:  # beyond float64's 53 bits: compare with exact integers
        exact = np.vectorize(lambda *v: (sum(int(x) for x in v) * 2 + len(v)) // (2 * len(v)), otypes=[object])
        h, w = shape[-2:]
        padded = np.pad(block, [(0, 0)] * (block.ndim - 2) + [(0, h % 2), (0, w % 2)], mode="edge")
        want = exact(padded[..., ::2, ::2], padded[..., 1::2, ::2], padded[..., ::2, 1::2], padded[..., 1::2, 1::2])
        assert got.astype(object).tolist() == want.tolist()


def test_mean_downsample_of_floats_and_nearest_of_labels():
    block = np.random.default_rng(1).random((5, 7)).astype(np.float32)
    got = downsample_mean(block)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, reference_mean(block), rtol=1e-6)
    labels = np.arange(35, dtype=np.uint32).reshape(5, 7)
    np.testing.assert_array_equal(downsample_nearest(labels), labels[::2, ::2])
    with pytest.raises(ValueError, match="bool"):
        downsample_mean(np.zeros((2, 2), bool))


def test_level_shapes_halve_down_to_the_smallest_size():
    shapes = pyramid_shapes((33000, 96000), 2048)  # an HDSCA slide: 96 x 24 frames of 1362 x 1004 px
    assert shapes[0] == (33000, 96000) and max(shapes[-1]) <= 2048 < max(shapes[-2])
    assert all(s == (-(-p[0] // 2), -(-p[1] // 2)) for p, s in zip(shapes, shapes[1:]))
    assert pyramid_shapes((100, 2048), 2048) == [(100, 2048)]
    with pytest.raises(ValueError, match="positive"):
        pyramid_shapes((10, 10), 0)


def test_image_pyramid_levels_are_means_of_the_level_before_and_level_0_is_untouched(tmp_path):
    from ome_zarr_models.v05.image import Image

    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 65535, size=(2, 150, 230), dtype=np.uint16)
    path = tmp_path / "image.zarr"
    create_ome_zarr_image(path, pixels.shape, np.uint16, 32, ["DAPI", "CK"], pixel_size_um=0.5)[:] = pixels
    before = level0_digest(path)

    shapes = write_pyramid(path, smallest=40)
    assert shapes == [(2, 150, 230), (2, 75, 115), (2, 38, 58), (2, 19, 29)]
    assert level0_digest(path) == before
    levels = pyramid_levels(path)
    assert [lv.shape for lv in levels] == shapes and all(lv.chunks == (1, 32, 32) for lv in levels)
    for finer, coarser in zip(levels, levels[1:]):
        np.testing.assert_array_equal(coarser[:], np.floor(reference_mean(finer[:]) + 0.5).astype(np.uint16))

    model = Image.from_zarr(zarr.open_group(str(path), mode="r"))  # the third-party NGFF validator
    datasets = model.attributes.ome.multiscales[0].datasets
    assert [d.path for d in datasets] == ["0", "1", "2", "3"]
    scales = [list(d.coordinateTransformations[0].scale) for d in datasets]
    assert scales == [[1.0, 0.5 * 2**k, 0.5 * 2**k] for k in range(4)]
    assert zarr.open_group(str(path), mode="r").attrs["ome"]["multiscales"][0]["type"] == "mean"

    # rebuilt with fewer levels: the old coarse arrays go, the metadata lists what exists
    assert write_pyramid(path, smallest=200) == shapes[:2]
    root = zarr.open_group(str(path), mode="r")
    assert sorted(root.array_keys()) == ["0", "1"] and level0_digest(path) == before
    Image.from_zarr(root)


def test_label_pyramid_keeps_ids_exact_and_validates_as_image_label(tmp_path):
    from ome_zarr_models.v05.image_label import ImageLabel

    labels = np.repeat(np.repeat(np.arange(1, 1 + 13 * 17, dtype=np.uint32).reshape(13, 17), 9, 0), 9, 1)[:110, :150]
    path = tmp_path / "labels.zarr"
    create_ome_zarr_labels(path, labels.shape, 32)[:] = labels
    shapes = write_pyramid(path, smallest=64)  # method from the image-label metadata: nearest
    assert shapes == [(110, 150), (55, 75), (28, 38)]
    levels = pyramid_levels(path)
    np.testing.assert_array_equal(levels[1][:], labels[::2, ::2])
    np.testing.assert_array_equal(levels[2][:], labels[::4, ::4])
    assert set(np.unique(levels[2][:])) <= set(np.unique(labels))
    ImageLabel.from_zarr(zarr.open_group(str(path), mode="r"))
    assert zarr.open_group(str(path), mode="r").attrs["ome"]["multiscales"][0]["type"] == "nearest"


def test_bad_input_names_the_file(tmp_path):
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    with pytest.raises(ValueError, match=r"plain\.zarr.*multiscales"):
        write_pyramid(tmp_path / "plain.zarr")
    create_ome_zarr_labels(tmp_path / "l.zarr", (10, 10), 8)
    with pytest.raises(ValueError, match="'mean' or 'nearest'"):
        write_pyramid(tmp_path / "l.zarr", method="mode")


def _peak_bytes_of_pyramid(path, side: int, tile: int) -> int:
    array = create_ome_zarr_image(path, (1, side, side), np.uint16, tile, ["DAPI"])
    ramp = (np.arange(side, dtype=np.uint32) * 7 % 4096).astype(np.uint16)
    for y0 in range(0, side, tile):  # written band by band: the test itself stays small in memory
        array[0, y0:y0 + tile] = ramp[None, :] + np.uint16(y0 % 1000)
    tracemalloc.start()
    try:
        write_pyramid(path, smallest=tile)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_is_a_few_chunks_whatever_the_image_size(tmp_path):
    tile = 256
    small = _peak_bytes_of_pyramid(tmp_path / "small.zarr", 1024, tile)  # level 0: 2 MB, 2 levels more
    large = _peak_bytes_of_pyramid(tmp_path / "large.zarr", 4096, tile)  # level 0: 32 MB, 4 levels more
    level1_bytes = 2048 * 2048 * 2  # 8 MB: holding one whole level of the large image would fail below
    assert large < 3 * 2**20 < level1_bytes, f"peak {large / 2**20:.2f} MiB for a 4096 px image"
    assert large <= 1.5 * small + 256 * 2**10, f"peak grows with size: {small} -> {large} bytes"
