"""The extract stage streamed tile by tile against a whole-image reference, clusters, gates and bad inputs."""

import json
import math

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from helpers.extract_reference import extract_reference
from skimage.draw import disk, ellipse

from hemoprofile import io
from hemoprofile.features.cell_clusters import clusters_from_labels
from hemoprofile.features.extract import extract_slide
from hemoprofile.io.patches import open_patch_array

CHANNELS = ["DAPI", "CK", "VIM", "CD45"]


# --- the slide, streamed -------------------------------------------------------------------------------------------


def make_slide(tmp_path, labels, tile=32, pixel_size=0.65, seed=0):
    """Write labels.zarr, image.zarr and preprocessed.zarr for a hand-made label image."""
    rng = np.random.default_rng(seed)
    h, w = labels.shape
    raw = rng.integers(100, 400, (4, h, w)).astype(np.uint16)
    raw[:, labels > 0] += rng.integers(500, 3000, (4, 1)).astype(np.uint16)
    raw[0, labels > 0] += (labels[labels > 0] % 7 * 300).astype(np.uint16)  # nuclei of varying brightness
    pre = (raw.astype(np.float32) / raw.max() * 65535).astype(np.uint16)
    paths = {k: tmp_path / f"{k}.zarr" for k in ("labels", "image", "preprocessed")}
    io.create_ome_zarr_labels(paths["labels"], (h, w), tile, pixel_size_um=pixel_size)[:] = labels
    io.create_ome_zarr_image(paths["image"], raw.shape, np.uint16, tile, CHANNELS, pixel_size)[:] = raw
    io.create_ome_zarr_image(paths["preprocessed"], pre.shape, np.uint16, tile, CHANNELS, pixel_size)[:] = pre
    return paths, raw, pre


def random_cells(shape, n, seed, max_radius=7):
    """Discs and ellipses at random places (on tile seams, slide edges, touching each other)."""
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.uint32)
    next_id = 3
    for _ in range(n):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        ry, rx = rng.uniform(2, max_radius, 2)
        rr, cc = ellipse(cy, cx, ry, rx, shape=shape, rotation=rng.uniform(0, math.pi))
        free = lab[rr, cc] == 0
        if free.sum() >= 4:
            lab[rr[free], cc[free]] = next_id
            next_id += rng.integers(1, 4)  # ids with gaps, as after filtering
    # keep one connected piece per id (partly covered cells may split)
    from scipy import ndimage
    out = np.zeros_like(lab)
    for cell in np.unique(lab)[1:]:
        pieces, n_pieces = ndimage.label(lab == cell)
        if n_pieces:
            largest = np.argmax(np.bincount(pieces.ravel())[1:]) + 1
            out[pieces == largest] = cell
    return out


def run(paths, tmp_path, extract_cfg=None, gating_cfg=None):
    out = {k: tmp_path / "out" / name for k, name in
           (("cells", "cells.parquet"), ("patches", "patches.zarr"), ("clusters", "clusters.parquet"))}
    summary = extract_slide(paths["labels"], paths["image"], paths["preprocessed"], out["cells"], out["patches"],
                            out["clusters"], extract_cfg, gating_cfg, slide="S1", progress=None)
    return summary, out


@pytest.mark.parametrize("cfg", [
    {"patch_size": 16},
    {"patch_size": 12, "mask_neighbours": False, "mask_background": False, "patch_dtype": "uint16"},
])
def test_streaming_equals_whole_image_reference_and_no_cell_is_lost_or_duplicated(tmp_path, cfg):
    lab = random_cells((150, 130), 160, seed=1)  # 5 x 5 tiles of 32 px
    paths, raw, pre = make_slide(tmp_path, lab)
    summary, out = run(paths, tmp_path, {**cfg, "max_cell_diameter_px": 16})
    cells = pd.read_parquet(out["cells"])
    patches, _, attrs = open_patch_array(out["patches"])
    ids = np.unique(lab)[1:]
    assert summary["n_tiles"] == 25 and len(cells) == len(ids) == summary["n_cells"]
    assert sorted(cells["cell_id"]) == ids.tolist()  # none lost, none duplicated
    assert patches.shape == (len(ids), 4, cfg["patch_size"], cfg["patch_size"])
    assert attrs["channel_names"] == CHANNELS and attrs["n_cells"] == len(ids)

    threshold = json.loads(pq.read_schema(out["cells"]).metadata[b"hemoprofile"])["nucleus_threshold"]
    ref, ref_patches = extract_reference(
        lab, raw, pre, CHANNELS, patch_size=cfg["patch_size"], patch_dtype=cfg.get("patch_dtype", "uint8"),
        nucleus_threshold=threshold, pixel_size_um=0.65,
        mask_neighbours=cfg.get("mask_neighbours", True), mask_background=cfg.get("mask_background", True),
    )
    order = np.argsort(cells["cell_id"].to_numpy())  # reference rows ascend by id
    for name, values in ref.items():
        np.testing.assert_allclose(cells[name].to_numpy()[order].astype(float), np.asarray(values, float),
                                   rtol=1e-6, atol=1e-6, err_msg=name)
    # row i of patches.zarr is row i of cells.parquet
    np.testing.assert_array_equal(np.asarray(patches[:])[order], ref_patches)
    # each cell is in the tile holding its centroid; rows come tile by tile, ids ascending within a tile
    tile = (cells["y"] // 32).astype(int) * 5 + (cells["x"] // 32).astype(int)
    assert (cells["tile"] == tile).all()
    assert (np.diff(cells["tile"]) >= 0).all()
    assert all((np.diff(g["cell_id"]) > 0).all() for _, g in cells.groupby("tile"))


def test_cells_larger_than_the_halo_are_measured_whole(tmp_path):
    lab = np.zeros((96, 96), np.uint32)
    rr, cc = disk((47, 47), 30)  # 60 px across, centred near a 4-tile corner; halo would be 5 px
    lab[rr, cc] = 1
    lab[5:9, 5:9] = 2
    paths, raw, pre = make_slide(tmp_path, lab)
    _, out = run(paths, tmp_path, {"max_cell_diameter_px": 4, "patch_size": 8})
    cells = pd.read_parquet(out["cells"]).set_index("cell_id")
    assert cells.loc[1, "area"] == len(rr)
    assert cells.loc[1, ["bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1"]].tolist() == [
        rr.min(), cc.min(), rr.max() + 1, cc.max() + 1]


def test_clusters_and_cluster_id_column(tmp_path):
    lab = np.zeros((64, 64), np.uint32)
    lab[10:20, 25:31] = 1
    lab[10:20, 31:38] = 2  # touches 1, across the seam at x = 32
    lab[20:26, 37:45] = 3  # diagonal touch with 2
    lab[50:55, 5:10] = 4  # alone
    lab[50:55, 12:16] = 5  # 2 px gap from 4: 1.3 um at 0.65 um/px
    paths, *_ = make_slide(tmp_path, lab)
    summary, out = run(paths, tmp_path, {"patch_size": 8, "max_cell_diameter_px": 12})
    cells = pd.read_parquet(out["cells"]).set_index("cell_id")
    clusters = pd.read_parquet(out["clusters"])
    assert summary["n_clusters"] == 1
    assert cells["cluster_id"].to_dict() == {1: 0, 2: 0, 3: 0, 4: -1, 5: -1}
    row = clusters.iloc[0]
    assert row["cell_ids"].tolist() == [1, 2, 3] and row["size"] == 3
    assert [row[k] for k in ("bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1")] == [10, 25, 26, 45]
    assert row["y_um"] == pytest.approx(row["y"] * 0.65)
    # within 1.5 um: 4 and 5 join
    _, out = run(paths, tmp_path, {"patch_size": 8, "max_cell_diameter_px": 12, "cluster_distance_um": 1.5})
    cells = pd.read_parquet(out["cells"]).set_index("cell_id")
    assert cells.loc[4, "cluster_id"] == cells.loc[5, "cluster_id"] == 1
    ref_ids, ref_clusters = clusters_from_labels(lab)
    assert ref_ids.tolist() == [1, 2, 3]


def test_gate_labels_and_provenance_are_written(tmp_path):
    lab = random_cells((64, 64), 40, seed=4)
    paths, *_ = make_slide(tmp_path, lab)
    gating = {"gates": [{"label": "big", "rules": [{"feature": "area", "op": ">", "value": 1.0,
                                                    "scale": "slide_median"}]}], "default_label": "small"}
    _, out = run(paths, tmp_path, {"patch_size": 8}, gating)
    cells = pd.read_parquet(out["cells"])
    expected = np.where(cells["area"] > cells["area"].median(), "big", "small")
    assert (cells["gate_label"] == expected).all()
    meta = json.loads(pq.read_schema(out["cells"]).metadata[b"hemoprofile"])
    assert meta["stage"] == "extract"
    assert meta["gating"]["thresholds"][0]["rules"][0]["threshold"] == cells["area"].median()
    _, out = run(paths, tmp_path, {"patch_size": 8}, {"enabled": False})
    assert "gate_label" not in pd.read_parquet(out["cells"]).columns


def test_empty_slide_gives_empty_outputs(tmp_path):
    paths, *_ = make_slide(tmp_path, np.zeros((40, 40), np.uint32))
    summary, out = run(paths, tmp_path)
    assert summary["n_cells"] == 0
    assert len(pd.read_parquet(out["cells"])) == 0 and len(pd.read_parquet(out["clusters"])) == 0
    assert open_patch_array(out["patches"])[0].shape == (0, 4, 32, 32)


def test_unknown_pixel_size_gives_null_micrometres(tmp_path):
    lab = np.zeros((40, 40), np.uint32)
    lab[5:10, 5:10] = 1
    paths, *_ = make_slide(tmp_path, lab, pixel_size=None)
    _, out = run(paths, tmp_path, {"patch_size": 8})
    cells = pd.read_parquet(out["cells"])
    assert cells["y_um"].isna().all() and cells["area_um2"].isna().all() and cells["y"].notna().all()
    with pytest.raises(ValueError, match="pixel size"):
        run(paths, tmp_path, {"cluster_distance_um": 2.0})


def test_mismatched_inputs_and_bad_settings_raise_naming_the_file(tmp_path):
    paths, *_ = make_slide(tmp_path, np.zeros((40, 40), np.uint32))
    io.create_ome_zarr_image(tmp_path / "small.zarr", (4, 30, 40), np.uint16, 32, CHANNELS)
    with pytest.raises(ValueError, match="small.zarr"):
        extract_slide(paths["labels"], tmp_path / "small.zarr", paths["preprocessed"], tmp_path / "c.parquet",
                      tmp_path / "p.zarr", tmp_path / "k.parquet", progress=None)
    with pytest.raises(ValueError, match="patch_dtype"):
        run(paths, tmp_path, {"patch_dtype": "int8"})
    with pytest.raises(ValueError, match="mean_XX"):
        run(paths, tmp_path, None, {"gates": [{"label": "a", "rules": [{"feature": "mean_XX", "op": ">", "value": 1}]}]})
    assert not (tmp_path / "c.parquet").exists() and not (tmp_path / "p.zarr").exists()


def test_patches_record_the_cell_ids_and_readers_refuse_a_table_from_another_run(tmp_path):
    from hemoprofile.io.patches import check_patches_match_cells, open_patch_array

    paths, *_ = make_slide(tmp_path, random_cells((96, 96), 12, seed=5))
    summary, out = run(paths, tmp_path)
    cells = pd.read_parquet(out["cells"])
    array, _, attributes = open_patch_array(out["patches"])
    assert summary["n_cells"] == len(cells) > 2
    assert attributes["cell_ids_sha256"] == io.CellIdsDigest.of(cells["cell_id"].to_numpy())
    check_patches_match_cells(out["cells"], cells, out["patches"], array, attributes)  # the same run: fine
    # a table with as many rows from another run (here: another order of the ids) is refused, naming both files
    other = cells.iloc[::-1].reset_index(drop=True)
    with pytest.raises(ValueError, match=r"patches.zarr was not written with .*cells.parquet"):
        check_patches_match_cells(out["cells"], other, out["patches"], array, attributes)
    with pytest.raises(ValueError, match="has 2 rows but"):
        check_patches_match_cells(out["cells"], cells.iloc[:2], out["patches"], array, attributes)
