"""tile_slide on 1 and 2 threads writes the same image.zarr, chunk for chunk, and the same provenance."""

import numpy as np
import pytest
from helpers.slide_writers import CHANNELS3, reference_image, write_frame_folder
from helpers.thread_equality import assert_zarr_stores_identical

from hemoprofile.ingest.tile import tile_slide
from hemoprofile.io import open_ome_zarr
from hemoprofile.io.slide_sources import open_slide_source


@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_tile_output_is_byte_identical_for_1_and_2_threads(tmp_path, dtype):
    image = reference_image((3, 300, 420), dtype, seed=4)
    image[1, :100, :140] = 7 if dtype == "uint16" else 7.0  # a flat frame: its provenance entry must agree
    write_frame_folder(tmp_path / "frames", image, rows=3, cols=3, order="snake")
    outputs = {}
    for threads in (1, 2):
        with open_slide_source(tmp_path / "frames", "frames", CHANNELS3, frame_rows=3, frame_cols=3,
                               frame_order="snake") as source:
            out = tmp_path / f"t{threads}" / "S1" / "image.zarr"
            tile_slide(source, out, tile_size=64, progress=None, threads=threads)
            outputs[threads] = out
    assert assert_zarr_stores_identical(outputs[1], outputs[2]) >= 3 * 5 * 7
    written = open_ome_zarr(outputs[2])
    np.testing.assert_array_equal(np.asarray(written.array[:]), image.astype(written.array.dtype))
    assert written.attributes["flat_tiles"]["CK"]["n"] >= 2  # computed from worker results, in tile order
