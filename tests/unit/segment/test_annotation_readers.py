"""Annotated folders (hemoprofile.segment.training.annotations): the layouts read, and one clear error per
kind of bad input, naming the file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from skimage.draw import disk
from skimage.io import imsave

from hemoprofile.segment.training.annotations import (
    check_instance_masks,
    read_annotation_folder,
    read_annotation_folders,
    split_annotations,
)


def cells(shape=(64, 64)):
    """A uint16 nuclear image with three discs and their instance labels."""
    labels = np.zeros(shape, np.uint16)
    for k, (y, x) in enumerate([(16, 16), (40, 20), (30, 48)], start=1):
        labels[disk((y, x), 6, shape=shape)] = k
    image = ((labels > 0) * 40000 + 1000).astype(np.uint16)
    return image, labels


def seg_npy(path, masks, image_name):
    np.save(path, {"masks": masks, "outlines": np.zeros_like(masks), "filename": image_name}, allow_pickle=True)


def test_reads_seg_npy_masks_tif_and_cp_masks_png(tmp_path):
    image, labels = cells()
    tifffile.imwrite(tmp_path / "a.tif", image)
    seg_npy(tmp_path / "a_seg.npy", labels, "/elsewhere/a.tif")
    tifffile.imwrite(tmp_path / "b.tif", image)
    tifffile.imwrite(tmp_path / "b_masks.tif", labels)
    imsave(tmp_path / "c.png", (image // 257).astype(np.uint8), check_contrast=False)
    imsave(tmp_path / "c_cp_masks.png", labels.astype(np.uint8), check_contrast=False)
    tifffile.imwrite(tmp_path / "c_flows.tif", np.zeros((3, 64, 64), np.float32), photometric="minisblack")  # a Cellpose output, ignored
    items = read_annotation_folder(tmp_path)
    assert [i.name for i in items] == ["a", "b", "c"]
    assert [i.masks_file.name for i in items] == ["a_seg.npy", "b_masks.tif", "c_cp_masks.png"]
    for item in items:
        assert item.image.shape == (2, 64, 64) and item.image.dtype == np.float32 and not item.image[1].any()
        np.testing.assert_array_equal(item.labels, labels)
    items, record = read_annotation_folders([tmp_path])
    assert record["n_images"] == 3 and record["n_files"] == 6 and record["n_objects"] == 9
    assert len(record["files"]) == 3 and all(len(f["image_sha256"]) == 64 for f in record["files"])


def test_prepared_and_named_multichannel_images(tmp_path):
    image, labels = cells()
    prepared = np.stack([image, image]).astype(np.float32) / 65535
    tifffile.imwrite(tmp_path / "p.tif", prepared)
    tifffile.imwrite(tmp_path / "p_masks.tif", labels)
    (tmp_path / "annotation.json").write_text(json.dumps({"channels": ["cytoplasm", "nucleus"], "prepared": True}))
    np.testing.assert_array_equal(read_annotation_folder(tmp_path)[0].image, prepared)  # used as it is
    (tmp_path / "annotation.json").write_text(json.dumps({"channels": ["CD45", "DAPI"]}))
    item = read_annotation_folder(tmp_path, {"channels": {"nucleus": "DAPI", "cytoplasm": ["CD45"]}})[0]
    assert item.image.shape == (2, 64, 64) and item.image[0].any() and item.image[1].any()


def test_image_without_masks_is_named(tmp_path):
    image, labels = cells()
    tifffile.imwrite(tmp_path / "a.tif", image)
    tifffile.imwrite(tmp_path / "a_masks.tif", labels)
    tifffile.imwrite(tmp_path / "lonely.tif", image)
    with pytest.raises(ValueError, match=r"lonely.tif: image without masks"):
        read_annotation_folder(tmp_path)


def test_masks_without_image_are_named(tmp_path):
    _, labels = cells()
    tifffile.imwrite(tmp_path / "gone_masks.tif", labels)
    with pytest.raises(ValueError, match=r"gone_masks.tif: masks without an image"):
        read_annotation_folder(tmp_path)


def test_two_mask_files_for_one_image(tmp_path):
    image, labels = cells()
    tifffile.imwrite(tmp_path / "a.tif", image)
    tifffile.imwrite(tmp_path / "a_masks.tif", labels)
    seg_npy(tmp_path / "a_seg.npy", labels, "a.tif")
    with pytest.raises(ValueError, match=r"a_masks.tif and a_seg.npy both annotate 'a'"):
        read_annotation_folder(tmp_path)


def test_empty_masks(tmp_path):
    image, labels = cells()
    tifffile.imwrite(tmp_path / "a.tif", image)
    seg_npy(tmp_path / "a_seg.npy", np.zeros_like(labels), "a.tif")
    with pytest.raises(ValueError, match=r"a_seg.npy: masks are empty"):
        read_annotation_folder(tmp_path)


@pytest.mark.parametrize("kind", ["binary_255", "binary_1", "float", "negative"])
def test_non_instance_masks(tmp_path, kind):
    image, labels = cells()
    masks = {"binary_255": ((labels > 0) * 255).astype(np.uint8),
             "float": labels.astype(np.float32),
             "binary_1": (labels > 0).astype(np.uint8),
             "negative": labels.astype(np.int16) - 1}[kind]
    tifffile.imwrite(tmp_path / "a.tif", image)
    tifffile.imwrite(tmp_path / "a_masks.tif", masks)
    with pytest.raises(ValueError, match=r"a_masks.tif: .*(not instance labels|negative)"):
        read_annotation_folder(tmp_path)


def test_class_masks_with_few_ids_over_many_regions_are_refused():
    labels = np.zeros((64, 64), np.uint8)
    for k, (y, x) in enumerate([(8, 8), (8, 30), (8, 52), (30, 8), (30, 30), (30, 52), (52, 8), (52, 30)]):
        labels[disk((y, x), 4, shape=labels.shape)] = 1 + k % 2  # two classes over eight cells
    with pytest.raises(ValueError, match=r"x.png: not instance labels: 2 value\(s\) \(1, 2\) over 8 separate regions"):
        check_instance_masks(labels, "x.png")


def test_mismatched_shapes(tmp_path):
    image, labels = cells()
    tifffile.imwrite(tmp_path / "a.tif", image)
    tifffile.imwrite(tmp_path / "a_masks.tif", labels[:60])
    with pytest.raises(ValueError, match=r"a_masks.tif: masks of shape \(60, 64\) do not match the image .*a.tif"):
        read_annotation_folder(tmp_path)


def test_multichannel_image_needs_channel_names(tmp_path):
    image, labels = cells()
    tifffile.imwrite(tmp_path / "a.tif", np.stack([image, image, image, image]), photometric="minisblack")
    tifffile.imwrite(tmp_path / "a_masks.tif", labels)
    with pytest.raises(ValueError, match=r"a.tif: a multi-channel image of shape \(4, 64, 64\); name its channels"):
        read_annotation_folder(tmp_path)


def test_empty_and_missing_folders(tmp_path):
    with pytest.raises(ValueError, match="holds no image / mask pairs"):
        read_annotation_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_annotation_folder(tmp_path / "nowhere")


def test_split_holds_out_at_least_one_and_is_seeded():
    names = [f"n{k}" for k in range(10)]
    train, val = split_annotations(names, 0.2, seed=0)
    assert len(val) == 2 and sorted(train + val) == list(range(10))
    assert split_annotations(names, 0.2, seed=0) == (train, val)
    assert split_annotations(["a", "b"], 0.2, 0)[1] != [] and split_annotations(["a"], 0.2, 0) == ([0], [])
