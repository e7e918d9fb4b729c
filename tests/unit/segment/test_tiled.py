"""Tiled segmentation equals whole-image segmentation: same objects, none cut or duplicated at seams,
slide-wide unique ids; labels.zarr is a valid OME-Zarr label image with its provenance."""

import numpy as np
import pytest
import zarr
from helpers.segment_images import CHANNELS, disc_cells, untrained_model

from hemoprofile.io import create_ome_zarr_image, open_ome_zarr
from hemoprofile.segment.metrics import match_instances
from hemoprofile.segment.segmenter import build_segmenter, segment_image
from hemoprofile.segment.tiled import (
    _Areas,
    paste_tile_labels,
    segment_slide,
    segment_tiled,
)

TILE = 96
CFG = {"backend": "classical", "diameter": 16, "sample_tiles": 1000}


@pytest.fixture(scope="module")
def slide():
    # 3 x 3 tiles of 96 px (the last row and column partial), dense enough that many cells sit on seams
    return disc_cells(shape=(260, 250), n=140, seed=4)


def seam_cuts(tiled, whole, tile):
    """Whole-image objects that span a tile boundary but whose tiled twin (the tiled object overlapping
    them most) does not span it: objects the tiling cut in two.

    (Pixel-level comparison would also flag a boundary between two touching cells that moved by one
    pixel where watershed ties are broken differently; that is not a cut.)
    """
    pairs = []  # (whole id, tiled id on side a, tiled id on side b) along every boundary line
    for x in range(tile, tiled.shape[1], tile):
        pairs.append(np.stack([whole[:, x - 1], whole[:, x], tiled[:, x - 1], tiled[:, x]]))
    for y in range(tile, tiled.shape[0], tile):
        pairs.append(np.stack([whole[y - 1], whole[y], tiled[y - 1], tiled[y]]))
    wa, wb, ta, tb = np.concatenate(pairs, axis=1).astype(np.int64)
    spanning = np.unique(wa[(wa == wb) & (wa > 0)])
    cuts = 0
    for obj in spanning:
        overlap = np.bincount(tiled[whole == obj].astype(np.int64))
        overlap[0] = 0
        twin = overlap.argmax()
        if not ((ta == twin) & (tb == twin)).any():
            cuts += 1
    return cuts, spanning.size


def test_tiled_equals_whole_image(slide):
    image, truth = slide
    whole = segment_image(image, CHANNELS, CFG)
    tiled = np.zeros(whole.shape, np.uint32)
    messages = []
    summary = segment_tiled(image, tiled, CHANNELS, CFG, tile_size=TILE, progress=messages.append)
    assert summary["tiles"] == 9 and messages and "MP/s" in messages[-1]
    n_whole, n_tiled = int(whole.max()), summary["n_objects"]
    assert abs(n_tiled - n_whole) <= max(1, 0.005 * n_whole)
    # every whole-image object has its tiled twin
    result = match_instances(whole, tiled, 0.9)
    assert result["tp"] >= n_whole - max(1, 0.005 * n_whole), result
    # ids 1..N, each used once
    assert set(np.unique(tiled)) == set(range(n_tiled + 1))
    cuts, spanning = seam_cuts(tiled, whole, TILE)
    assert cuts == 0
    assert spanning >= 5  # objects do straddle seams, so the test exercises stitching
    assert match_instances(truth, tiled, 0.5)["ap"] >= 0.9


def test_duplicate_from_a_neighbour_is_dropped_and_partial_overlap_pasted_on_background():
    from hemoprofile.io import Tile

    written = np.zeros((10, 10), np.int64)
    written[2:6, 2:6] = 1  # already written by an earlier tile, 16 px
    areas = _Areas()
    areas.set(np.array([1]), np.array([16]))
    new = np.zeros((10, 10), np.int32)
    new[2:6, 3:7] = 1  # overlaps 12/16 of object 1: duplicate
    new[6:9, 6:9] = 2  # free: pasted as id 2
    new[5:8, 0:3] = 3  # overlaps 1 px of object 1 (<50 %): pasted on background only
    tile = Tile(0, 0, 0, 10, 0, 10)
    merged, next_id, counts = paste_tile_labels(written, new, tile, (0, 10, 0, 10), 0.0, 2, areas)
    assert counts == {"kept": 3, "duplicates": 1, "pasted": 2}
    assert next_id == 4
    assert (merged[2:6, 2:6] == 1).all()  # the written object is untouched
    assert (merged[6:9, 6:9] == 2).all()
    assert (merged == 3).sum() == 8 and merged[5, 2] == 1
    assert written.max() == 1  # input not modified


def test_empty_slide_and_empty_tiles(tmp_path):
    image = np.zeros((4, 200, 150), np.float32)
    sink = np.zeros((200, 150), np.uint32)
    assert segment_tiled(image, sink, CHANNELS, CFG, tile_size=64, progress=None)["n_objects"] == 0
    assert sink.max() == 0
    # cells in one corner only: the other tiles are empty
    cells, _ = disc_cells(shape=(80, 80), n=5)
    image[:, :80, :80] = cells
    sink[:] = 0
    summary = segment_tiled(image, sink, CHANNELS, CFG, tile_size=64, progress=None)
    assert summary["n_objects"] == 5 and sink[:, 100:].max() == 0


def write_preprocessed(path, image, tile):
    array = create_ome_zarr_image(path, image.shape, "uint16", tile, CHANNELS, pixel_size_um=0.65, name="preprocessed")
    array[:] = np.round(image * 65535).astype(np.uint16)


def test_segment_slide_writes_an_ome_zarr_label_image(tmp_path, slide):
    from ome_zarr_models.v05.image_label import ImageLabel

    image, truth = slide
    pre = tmp_path / "preprocessed.zarr"
    write_preprocessed(pre, image, TILE)
    out = tmp_path / "labels.zarr"
    summary = segment_slide(pre, out, CFG, progress=None)
    labels = open_ome_zarr(out)
    assert labels.array.shape == image.shape[1:] and labels.array.dtype == np.uint32
    assert labels.array.chunks == (TILE, TILE)
    assert labels.pixel_size_um == pytest.approx(0.65)
    meta = labels.attributes
    assert meta["backend"] == "classical" and meta["diameter"] == 16
    assert meta["channels"]["nucleus"] == "DAPI" and meta["n_objects"] == summary["n_objects"] > 100
    ImageLabel.from_zarr(zarr.open_group(str(out), mode="r"))
    # the same as segmenting the uint16 image whole
    whole = segment_image(np.asarray(zarr.open_group(str(pre), mode="r")["0"][:]), CHANNELS, CFG)
    assert match_instances(whole, labels.array[:], 0.9)["ap"] >= 0.99
    assert not list(tmp_path.glob("*.tmp-*"))  # atomic: no temporary left behind


def test_segment_slide_names_the_file_when_channels_are_missing(tmp_path, slide):
    pre = tmp_path / "preprocessed.zarr"
    write_preprocessed(pre, slide[0][:, :64, :64], 64)
    with pytest.raises(ValueError, match=r"preprocessed\.zarr.*'PanCK'"):
        segment_slide(pre, tmp_path / "labels.zarr", {"channels": {"cytoplasm": ["PanCK"]}}, progress=None)
    assert not (tmp_path / "labels.zarr").exists()


@pytest.mark.slow  # Cellpose import compiles numba code (~5 s)
def test_cellpose_backend_stitches_with_an_untrained_net(slide):
    image = slide[0][:, :100, :100]
    cfg = {"backend": "cellpose", "diameter": 8, "batch_tiles": 4, "sample_tiles": 100}
    segmenter = build_segmenter(cfg, model=untrained_model(diam_mean=8.0))
    sink = np.zeros((100, 100), np.uint32)
    summary = segment_tiled(image, sink, CHANNELS, cfg, tile_size=50, segmenter=segmenter, progress=None)
    assert summary["tiles"] == 4
    assert set(np.unique(sink)) == set(range(summary["n_objects"] + 1))


class ThresholdModel:
    """Stands in for a ``CellposeModel``: same ``eval`` call and return shape, masks by thresholding the
    nucleus input (channel 1 of [cytoplasm, nucleus]), so the Cellpose path's batching, padding,
    cropping and stitching can be checked against a known answer without a trained network."""

    device = "cpu"

    def __init__(self):
        self.batch_sizes = []

    def eval(self, x, channel_axis=None, z_axis=None, channels=None, normalize=None, **kwargs):
        from scipy import ndimage as ndi

        assert channels is None and normalize["normalize"] is False
        stack = x if x.ndim == 4 else x[np.newaxis]
        assert stack.shape[-1] == 2 and channel_axis == stack.ndim - 1 - (x.ndim == 3)
        self.batch_sizes.append(len(stack))
        masks = np.stack([ndi.label(ndi.binary_opening(plane[..., 1] > 0.5, iterations=1))[0] for plane in stack])
        return (masks if x.ndim == 4 else masks[0]), None, None


def test_cellpose_path_batches_pads_and_stitches_like_the_whole_image(slide):
    image, truth = slide
    cfg = {"backend": "cellpose", "diameter": 16, "batch_tiles": 4, "sample_tiles": 1000,
           "channels": {"cytoplasm": ["CD45"]}}
    model = ThresholdModel()
    whole = segment_image(image, CHANNELS, cfg, segmenter=build_segmenter(cfg, model=model))
    tiled = np.zeros(whole.shape, np.uint32)
    summary = segment_tiled(image, tiled, CHANNELS, cfg, tile_size=TILE, progress=None,
                            segmenter=build_segmenter(cfg, model=model))
    # 9 windows of several shapes in batches of 4, 4, 1 (edge windows padded, not run alone)
    assert model.batch_sizes[1:] == [4, 4, 1]
    assert summary["n_objects"] == whole.max() > 100
    assert match_instances(whole, tiled, 0.9)["ap"] == 1.0
    assert seam_cuts(tiled, whole, TILE)[0] == 0


def test_segment_slide_pyramid_leaves_level_0_unchanged(tmp_path, slide):
    from ome_zarr_models.v05.image_label import ImageLabel

    pre = tmp_path / "preprocessed.zarr"
    write_preprocessed(pre, slide[0], TILE)
    segment_slide(pre, tmp_path / "flat.zarr", CFG, progress=None, pyramid_smallest=None)
    summary = segment_slide(pre, tmp_path / "labels.zarr", CFG, progress=None, pyramid_smallest=128)
    flat, labels = (zarr.open_group(str(tmp_path / name), mode="r") for name in ("flat.zarr", "labels.zarr"))
    assert summary["pyramid_levels"] == 3 and sorted(flat.array_keys()) == ["0"]  # 260 -> 130 -> 65 px
    np.testing.assert_array_equal(labels["0"][:], flat["0"][:])
    np.testing.assert_array_equal(labels["1"][:], flat["0"][::2, ::2])
    np.testing.assert_array_equal(labels["2"][:], flat["0"][::4, ::4])
    assert len(ImageLabel.from_zarr(labels).attributes.ome.multiscales[0].datasets) == 3
