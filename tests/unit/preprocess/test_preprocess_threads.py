"""preprocess_slide on 1 and 2 threads writes the same preprocessed.zarr, chunk for chunk."""

import copy

import numpy as np
import pytest
from helpers.preprocess_images import CONFIG, synthetic_channel, write_image
from helpers.thread_equality import assert_zarr_stores_identical

from hemoprofile import io
from hemoprofile.preprocess.pipeline import preprocess_slide


@pytest.mark.parametrize("output_dtype", ["float32", "uint16"])
def test_preprocess_output_is_byte_identical_for_1_and_2_threads(tmp_path, output_dtype):
    names = ["DAPI", "CK", "VIM"]  # TV denoising, CLAHE, clip + normalise only (CONFIG's channels)
    image = np.stack([synthetic_channel(seed, shape=(300, 380)) for seed in range(len(names))])
    src = write_image(tmp_path / "image.zarr", image, names, tile=96)
    cfg = copy.deepcopy(CONFIG)
    cfg["output_dtype"] = output_dtype
    cfg["channels"]["DAPI"]["denoise"]["iterations"] = 8
    outputs = {t: tmp_path / f"t{t}" / "preprocessed.zarr" for t in (1, 2)}
    for threads, out in outputs.items():
        preprocess_slide(src, out, cfg, seed=1, progress=None, threads=threads)
    assert assert_zarr_stores_identical(outputs[1], outputs[2]) == 3 * 4 * 4
    one, two = (np.asarray(io.open_ome_zarr(p).array[:]) for p in outputs.values())
    assert one.dtype == np.dtype(output_dtype) and np.array_equal(one, two) and one.any()
