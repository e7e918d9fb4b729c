"""view.zarr: a small slide tiled and segmented by the real stages (with pyramids) opens as one OME-Zarr
image with its labels as NGFF image-labels, for the third-party validator (ome-zarr-models) and the
reader napari-ome-zarr uses (ome-zarr-py); the arrays are linked, not copied."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tifffile
import zarr
from helpers.segment_images import CHANNELS, disc_cells

from hemoprofile.ingest.tile import tile_slide
from hemoprofile.io import create_ome_zarr_labels
from hemoprofile.io.pyramid import downsample_mean, pyramid_levels
from hemoprofile.io.slide_sources import open_slide_source
from hemoprofile.io.slide_view import write_slide_view
from hemoprofile.segment.tiled import segment_slide

TILE = 64
SMALLEST = 64


@pytest.fixture(scope="module")
def slide_dir(tmp_path_factory):
    """results/S1 with image.zarr (tile stage) and labels.zarr (segment stage), both with pyramids."""
    root = tmp_path_factory.mktemp("results")
    image, _ = disc_cells(shape=(190, 230), n=60, seed=5)
    pixels = np.round(image * 60000).astype(np.uint16)
    tifffile.imwrite(root / "slide.ome.tif", pixels, ome=True,
                     metadata={"axes": "CYX", "PhysicalSizeX": 0.591, "PhysicalSizeY": 0.591})
    slide = root / "S1"
    with open_slide_source(root / "slide.ome.tif", "ome-tiff", CHANNELS) as source:
        tile_slide(source, slide / "image.zarr", TILE, progress=None, pyramid_smallest=SMALLEST)
    # segmenting the raw image directly (it holds the channels segmentation needs): enough for a view
    segment_slide(slide / "image.zarr", slide / "labels.zarr", {"backend": "classical", "diameter": 16},
                  progress=None, pyramid_smallest=SMALLEST)
    return slide


def test_view_validates_and_opens_with_its_labels(slide_dir, tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr_models.v05.image import Image
    from ome_zarr_models.v05.labels import Labels

    view = slide_dir / "view.zarr"
    levels = write_slide_view(slide_dir / "image.zarr", slide_dir / "labels.zarr", view)
    assert levels["image_levels"] == [(4, 190, 230), (4, 95, 115), (4, 48, 58)]
    assert levels["labels_levels"] == [(190, 230), (95, 115), (48, 58)]

    root = zarr.open_group(str(view), mode="r")
    model = Image.from_zarr(root)  # validates the image and, through labels/, the image-labels
    assert len(model.attributes.ome.multiscales[0].datasets) == 3
    labels = Labels.from_zarr(root["labels"])
    assert labels.label_paths == ["cells"]
    cells = labels.get_image_labels_group("cells")
    assert cells.attributes.ome.image_label.source.image == "../../"
    assert len(cells.attributes.ome.multiscales[0].datasets) == 3

    nodes = list(Reader(parse_url(str(view)))())
    image_node = nodes[0]
    assert image_node.metadata["channel_names"] == CHANNELS and len(image_node.data) == 3
    label_nodes = [n for n in nodes if "image-label" in n.zarr.root_attrs.get("ome", n.zarr.root_attrs)]
    assert len(label_nodes) == 1 and len(label_nodes[0].data) == 3
    np.testing.assert_array_equal(np.asarray(label_nodes[0].data[0]), zarr.open_group(
        str(slide_dir / "labels.zarr"), mode="r")["0"][:])

    # linked, not copied: a few KB on disk, and the slide folder stays valid when copied whole
    own_bytes = sum(p.lstat().st_size for p in view.rglob("*") if not p.is_dir() or p.is_symlink())
    assert own_bytes < 20_000 and (view / "0").is_symlink()
    copy = tmp_path / "S1"
    shutil.copytree(slide_dir, copy, symlinks=True)
    assert (copy / "view.zarr" / "labels" / "cells" / "1").resolve() == (copy / "labels.zarr" / "1").resolve()
    Image.from_zarr(zarr.open_group(str(copy / "view.zarr"), mode="r"))


def test_stage_pyramids_are_means_and_every_second_label(slide_dir):
    image, labels = pyramid_levels(slide_dir / "image.zarr"), pyramid_levels(slide_dir / "labels.zarr")
    for finer, coarser in zip(image, image[1:]):
        np.testing.assert_array_equal(coarser[:], downsample_mean(finer[:]))
    for finer, coarser in zip(labels, labels[1:]):
        np.testing.assert_array_equal(coarser[:], finer[::2, ::2])
    assert labels[0][:].max() > 20  # cells were found


def test_view_refuses_labels_of_another_slide(slide_dir, tmp_path):
    other = tmp_path / "labels.zarr"
    create_ome_zarr_labels(other, (100, 100), TILE)
    with pytest.raises(ValueError, match=r"labels\.zarr.*\(100, 100\).*not of the same slide"):
        write_slide_view(slide_dir / "image.zarr", other, tmp_path / "view.zarr")
    with pytest.raises(ValueError, match=r"image\.zarr: not a label image"):
        write_slide_view(slide_dir / "image.zarr", slide_dir / "image.zarr", tmp_path / "view.zarr")
    with pytest.raises(ValueError, match=r"missing\.zarr"):
        write_slide_view(tmp_path / "missing.zarr", slide_dir / "labels.zarr", tmp_path / "view.zarr")
    assert not (tmp_path / "view.zarr").exists()
