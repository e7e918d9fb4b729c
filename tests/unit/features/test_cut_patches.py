"""Per-cell patches (hemoprofile.features.patches): centring, padding, masks and the stored dtypes."""

import numpy as np

from hemoprofile.features.patches import cut_patches
from hemoprofile.io.patches import to_patch_dtype
from hemoprofile.vocabulary import to_unit


def test_patch_is_centred_on_the_centre_pixel_and_zero_padded_at_the_slide_edge():
    img = np.arange(1, 1 + 2 * 10 * 10, dtype=np.uint16).reshape(2, 10, 10)
    lab = np.zeros((10, 10), np.uint32)
    patches = cut_patches(img, lab, np.array([1, 2]), np.array([[5, 5], [0, 9]]), 4)
    assert patches.shape == (2, 2, 4, 4)
    assert patches[0, 1, 2, 2] == img[1, 5, 5]  # pixel (P // 2, P // 2) is the centre
    np.testing.assert_array_equal(patches[0], img[:, 3:7, 3:7])
    np.testing.assert_array_equal(patches[1, :, :2, :], 0)  # rows above the slide
    np.testing.assert_array_equal(patches[1, :, :, 3], 0)  # columns right of the slide
    np.testing.assert_array_equal(patches[1, :, 2:, :3], img[:, 0:2, 7:10])


def test_patch_masking_of_neighbours_and_background():
    img = np.full((1, 12, 12), 9, np.uint8)
    lab = np.zeros((12, 12), np.uint32)
    lab[4:8, 4:8] = 1
    lab[4:8, 8:10] = 2  # a neighbour touching cell 1
    centre = np.array([[6, 6]])
    kept = cut_patches(img, lab, np.array([1]), centre, 12)[0, 0]
    assert (kept[lab == 2] == 9).all()
    no_neighbours = cut_patches(img, lab, np.array([1]), centre, 12, mask_neighbours=True)[0, 0]
    assert (no_neighbours[lab == 2] == 0).all() and (no_neighbours[lab != 2] == 9).all()
    only_cell = cut_patches(img, lab, np.array([1]), centre, 12, mask_background=True, background_margin_px=1)[0, 0]
    assert (only_cell[lab == 1] == 9).all()
    assert only_cell[3, 5] == 9 and only_cell[2, 5] == 0  # one pixel of margin kept, the rest zeroed
    assert (only_cell[lab == 2] == 9).all()  # neighbours are not background


def test_patch_dtype_policy():
    unit = np.array([0.0, 0.5, 1.0], np.float32)
    assert to_patch_dtype(unit, "uint8").tolist() == [0, 128, 255]
    assert to_patch_dtype(unit, "uint16").tolist() == [0, 32768, 65535]
    assert to_patch_dtype(unit, "float16").dtype == np.float16
    assert to_unit(np.array([0, 65535], np.uint16)).tolist() == [0.0, 1.0]
