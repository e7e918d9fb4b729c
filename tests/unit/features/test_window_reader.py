"""The chunk-caching window reader of the extract stage (hemoprofile.features.windows)."""

import numpy as np

from hemoprofile import io
from hemoprofile.features.windows import WindowReader


def test_window_reader_returns_what_zarr_returns_and_keeps_few_chunks(tmp_path):
    data = np.arange(3 * 70 * 90, dtype=np.uint16).reshape(3, 70, 90)
    array = io.create_ome_zarr_image(tmp_path / "a.zarr", data.shape, np.uint16, 16, ["a", "b", "c"])
    array[:] = data
    reader = WindowReader(array)
    for tile in io.iter_tiles((70, 90), 16):
        y0, y1, x0, x1 = io.halo_window(tile, 5, (70, 90))
        np.testing.assert_array_equal(reader.read(y0, y1, x0, x1), data[:, y0:y1, x0:x1])
        # the cache holds exactly the chunks this window meets: at most 3 x 3, whatever the slide size
        met = {(cy, cx) for cy in range(y0 // 16, (y1 - 1) // 16 + 1) for cx in range(x0 // 16, (x1 - 1) // 16 + 1)}
        assert set(reader.cache) == met and len(met) <= 9
    # every chunk is decoded once per tile row whose window meets it (at most 3 times), not once per window
    counting = WindowReader(array)
    reads = []
    counting.array = type("Counting", (), {"__getitem__": lambda _s, key: reads.append(key) or array[key],
                                           "chunks": array.chunks, "shape": array.shape, "dtype": array.dtype})()
    for tile in io.iter_tiles((70, 90), 16):
        counting.read(*io.halo_window(tile, 5, (70, 90)))
    chunk_reads = {}
    for key in reads:
        chunk = (key[-2].start // 16, key[-1].start // 16)
        chunk_reads[chunk] = chunk_reads.get(chunk, 0) + 1
    assert len(chunk_reads) == 5 * 6 and max(chunk_reads.values()) <= 3
