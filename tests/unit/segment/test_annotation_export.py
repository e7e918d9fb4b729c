"""export-for-annotation (hemoprofile.segment.annotation): the least sure tiles, written as the Cellpose 3
GUI's <name>.tif + <name>_seg.npy and as TIFF image / mask pairs, read back by Cellpose's own loader
(in the slow test, which loads Cellpose anyway) and by the training reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import zarr
from helpers.segment_images import CHANNELS, disc_cells

from hemoprofile.cli.main import main
from hemoprofile.io import create_ome_zarr_image, open_ome_zarr
from hemoprofile.segment.annotation import MANIFEST, export_for_annotation, shape_score
from hemoprofile.segment.input import cellpose_input
from hemoprofile.segment.tiled import segment_slide
from hemoprofile.segment.training.annotations import read_annotation_folder
from hemoprofile.models import resolve_model
from hemoprofile.segment.training.finetune import bundled_segmentation_model

REPO = Path(__file__).resolve().parents[3]
TILE = 96
# every tile in the calibration sample: the slide-wide statistics are the whole image's
CFG = {"backend": "classical", "diameter": 16, "sample_tiles": 64,
       "channels": {"nucleus": "DAPI", "cytoplasm": ["CD45"]}}
#: The keys the Cellpose 3 GUI reads from a _seg.npy (cellpose/gui/io.py _load_seg) and
#: cellpose.io.masks_flows_to_seg writes.
GUI_KEYS = {"outlines", "masks", "chan_choose", "ismanual", "filename", "flows", "diameter"}


def segmented_slide(root: Path, cfg=CFG, shape=(288, 288), n=120):
    image, truth = disc_cells(shape=shape, n=n, seed=4)
    slide = root / "S1"
    array = create_ome_zarr_image(slide / "preprocessed.zarr", image.shape, "uint16", TILE, CHANNELS,
                                  pixel_size_um=0.65, name="preprocessed")
    array[:] = np.round(image * 65535).astype(np.uint16)
    segment_slide(slide / "preprocessed.zarr", slide / "labels.zarr", cfg, progress=None)
    return slide, array[:], truth


def merge_objects_in_tile(labels_path: Path, y0: int, x0: int) -> None:
    """Make one tile's masks implausible: pairs of separate cells share one id."""
    labels = zarr.open_group(str(labels_path), mode="r+")["0"]
    tile = labels[y0:y0 + TILE, x0:x0 + TILE]
    ids = np.unique(tile[tile > 0])
    merged = tile.copy()
    for a, b in zip(ids[::2], ids[1::2]):
        merged[tile == b] = a
    labels[y0:y0 + TILE, x0:x0 + TILE] = merged


def test_shape_score_flags_merged_and_tiny_objects_but_not_edge_ones():
    from skimage.draw import disk

    labels = np.zeros((80, 80), np.int32)
    labels[disk((20, 20), 8)] = 1  # a cell of the configured size
    labels[disk((60, 60), 8)] = 2
    labels[disk((60, 20), 8)] = 2  # two cells with one id: not solid
    labels[disk((20, 60), 2)] = 3  # debris
    labels[disk((0, 40), 3, shape=labels.shape)] = 4  # cut by the edge: not scored
    assert shape_score(labels, diameter=16) == (pytest.approx(2 / 3), 3)
    assert shape_score(np.zeros((10, 10), np.int32), 16) == (0.0, 0)


def test_export_writes_gui_and_tiff_pairs_of_the_least_sure_tiles(tmp_path):
    slide, image, _ = segmented_slide(tmp_path)
    merge_objects_in_tile(slide / "labels.zarr", TILE, 2 * TILE)
    out = tmp_path / "fix"
    table = export_for_annotation(slide / "preprocessed.zarr", slide / "labels.zarr", out, k=3, segment_cfg=CFG,
                                  progress=None)
    assert list(pd.read_csv(out / MANIFEST).columns) == list(table.columns)
    assert len(table) == 3 and list(table["score"]) == sorted(table["score"], reverse=True)
    first = table.iloc[0]
    assert (first.y0, first.x0) == (TILE, 2 * TILE) and first.shape_score > 0.75  # the tile with merged cells leads
    assert table["shape_score"].iloc[1:].max() < 0.5
    assert table["margin_score"].between(0, 1).all() and (table["margin_score"] > 0).all()

    labels = open_ome_zarr(slide / "labels.zarr").array
    network = cellpose_input(image, CHANNELS, CFG)  # the whole image's statistics = the slide's here
    for row in table.itertuples():
        region = (slice(row.y0, row.y1), slice(row.x0, row.x1))
        gui_image = tifffile.imread(out / "cellpose" / f"{row.name}.tif")
        assert gui_image.shape == (2, TILE, TILE) and gui_image.dtype == np.float32
        np.testing.assert_allclose(gui_image, network[:, region[0], region[1]], atol=1e-5)
        record = np.load(out / "cellpose" / f"{row.name}_seg.npy", allow_pickle=True).item()
        assert GUI_KEYS <= set(record)
        assert Path(record["filename"]).is_file() and record["chan_choose"] == [1, 2]
        stored = labels[region]
        # same objects, numbered 1..N
        assert record["masks"].max() == len(np.unique(stored[stored > 0])) == row.n_objects
        assert np.array_equal(record["masks"] > 0, stored > 0)
        assert len(record["ismanual"]) == record["masks"].max()
        np.testing.assert_array_equal(tifffile.imread(out / "tiff" / f"{row.name}_masks.tif"), record["masks"])
        np.testing.assert_array_equal(tifffile.imread(out / "tiff" / f"{row.name}.tif"), gui_image)

    # and so does the training reader, from either folder, using the exported images as they are
    for sub in ("cellpose", "tiff"):
        items = read_annotation_folder(out / sub)
        assert sorted(i.name for i in items) == sorted(table["name"])
        for item in items:
            np.testing.assert_array_equal(item.image, tifffile.imread(out / "cellpose" / f"{item.name}.tif"))


def test_cli_export_for_annotation(tmp_path, capsys):
    slide, _, _ = segmented_slide(tmp_path, shape=(192, 192), n=40)
    assert main(["export-for-annotation", str(slide), str(tmp_path / "out"), "-k", "2"]) == 0
    assert len(pd.read_csv(tmp_path / "out" / MANIFEST)) == 2
    assert main(["export-for-annotation", str(tmp_path), str(tmp_path / "out2")]) == 1
    assert "preprocessed.zarr not found" in capsys.readouterr().err


@pytest.mark.slow  # loads Cellpose and segments a small slide with the bundled model on the CPU
def test_export_from_a_cellpose_segmented_slide_scores_the_cell_probability(tmp_path):
    model = str(resolve_model(bundled_segmentation_model()))
    cfg = {**CFG, "backend": "cellpose", "model": model, "device": "cpu"}
    slide, _, _ = segmented_slide(tmp_path, cfg, shape=(96, 192), n=20)
    out = tmp_path / "fix"
    table = export_for_annotation(slide / "preprocessed.zarr", slide / "labels.zarr", out, k=2, segment_cfg=cfg,
                                  progress=None)
    assert len(table) == 2 and set(table["backend"]) == {"cellpose"}
    assert (table["margin_score"] > 0).all() and (table["margin_score"] < 1).all()
    record = np.load(out / "cellpose" / f"{table['name'][0]}_seg.npy", allow_pickle=True).item()
    rgb, cellprob = record["flows"][0], record["flows"][1]
    assert rgb.shape == (1, TILE, TILE, 3) and cellprob.shape == (1, TILE, TILE) and cellprob.dtype == np.uint8
    assert record["flows"][4].shape == (3, TILE, TILE)  # dP and cell probability, as masks_flows_to_seg writes
    # Cellpose's own loader (the one its training CLI uses with --mask_filter _seg.npy) reads the masks
    from cellpose import io as cp_io

    images, masks, names = cp_io.load_images_labels(str(out / "cellpose"), mask_filter="_seg.npy")
    assert len(names) == 2 and all(m.max() > 0 for m in masks)
    assert all(image.shape == (2, TILE, TILE) for image in images)
