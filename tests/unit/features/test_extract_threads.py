"""extract_slide on 1 and 2 threads writes the same cells.parquet, clusters.parquet and patches.zarr."""

import numpy as np
from helpers.thread_equality import (
    assert_parquet_identical,
    assert_zarr_stores_identical,
)
from skimage.draw import disk, ellipse

from hemoprofile import io
from hemoprofile.features import extract as extract_module
from hemoprofile.features.extract import extract_slide

CHANNELS = ["DAPI", "CK", "VIM", "CD45"]


def write_inputs(root, shape=(260, 300), tile=64, seed=0):
    """labels.zarr (cells on tile seams, touching pairs, one cell larger than the halo allows),
    image.zarr and preprocessed.zarr."""
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.uint32)
    next_id = 5
    for _ in range(160):
        rr, cc = ellipse(rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), *rng.uniform(2.5, 7, 2),
                         shape=shape, rotation=rng.uniform(0, np.pi))
        free = lab[rr, cc] == 0
        if free.sum() >= 8:
            lab[rr[free], cc[free]] = next_id
            next_id += int(rng.integers(1, 4))
    rr, cc = disk((128, 128), 40, shape=shape)  # larger than max_cell_diameter_px: the window is regrown
    lab[rr, cc] = next_id
    raw = rng.integers(100, 400, (4, *shape)).astype(np.uint16)
    raw[:, lab > 0] += rng.integers(500, 3000, (4, 1)).astype(np.uint16)
    pre = (raw.astype(np.float32) / raw.max() * 65535).astype(np.uint16)
    paths = {k: root / f"{k}.zarr" for k in ("labels", "image", "preprocessed")}
    io.create_ome_zarr_labels(paths["labels"], shape, tile, pixel_size_um=0.65)[:] = lab
    io.create_ome_zarr_image(paths["image"], raw.shape, np.uint16, tile, CHANNELS, 0.65)[:] = raw
    io.create_ome_zarr_image(paths["preprocessed"], pre.shape, np.uint16, tile, CHANNELS, 0.65)[:] = pre
    return paths


def test_extract_outputs_are_byte_identical_for_1_and_2_threads(tmp_path, monkeypatch):
    monkeypatch.setattr(extract_module, "TILES_PER_BLOCK", 2)  # rows of 5 tiles: blocks of 2, 2 and 1
    inputs = write_inputs(tmp_path)
    cfg = {"max_cell_diameter_px": 30, "patch_size": 24, "cluster_distance_um": 2.0}
    runs = {}
    for threads in (1, 2):
        out = tmp_path / f"t{threads}" / "S1"
        out.mkdir(parents=True)
        messages = []
        summary = extract_slide(inputs["labels"], inputs["image"], inputs["preprocessed"], out / "cells.parquet",
                                out / "patches.zarr", out / "clusters.parquet", cfg, slide="S1",
                                progress=messages.append, threads=threads)
        runs[threads] = out, summary, [m for m in messages if " s (" not in m]
    (one, s1, m1), (two, s2, m2) = runs[1], runs[2]
    assert s1["n_cells"] == s2["n_cells"] > 100 and s1["n_clusters"] > 0 and s1["n_tiles"] == 5 * 5
    assert assert_parquet_identical(one / "cells.parquet", two / "cells.parquet") == s1["n_cells"]
    assert assert_parquet_identical(one / "clusters.parquet", two / "clusters.parquet") == s1["n_clusters"]
    assert assert_zarr_stores_identical(one / "patches.zarr", two / "patches.zarr") > 0
    assert any("re-reading with halo" in m for m in m1) and m1 == m2  # warnings and progress in tile order
