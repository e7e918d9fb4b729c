"""hemoprofile.interaction.windows: contact counts on hand-made label images with known contacts,
window placement, block-mean downsampling."""

import numpy as np
import pytest

from hemoprofile.interaction.windows import (cells_in_window, count_contacts, downsample_window, slide_contacts,
                                             window_contacts, window_origins)


def _labels():
    """A 20 x 20 image: cells 1-2 touch side by side, 2-3 touch only diagonally (8-adjacency), 4 is alone
    two pixels from 3, 5 (a CTC) touches 4, 6 lies in the halo only and touches 5.

    Known contacts: (1,2), (2,3), (4,5), (5,6).
    """
    lab = np.zeros((20, 20), np.int32)
    lab[1:5, 1:4] = 1
    lab[1:5, 4:7] = 2
    lab[5:8, 7:10] = 3       # corner (4, 6) of cell 2 meets (5, 7) of cell 3 diagonally
    lab[5:8, 12:15] = 4      # columns 10, 11 empty: 3 and 4 do not touch
    lab[8:11, 12:15] = 5
    lab[11:14, 12:15] = 6
    return lab


def test_window_contacts_count_exactly_the_known_touching_pairs():
    lab = _labels()
    assert window_contacts(lab, np.array([1, 2, 3, 4, 5, 6]), np.array([5])) == (4, 2.0)
    # cell 6 is not in the window (its centroid is outside): its contact with 5 does not count
    assert window_contacts(lab, np.array([1, 2, 3, 4, 5]), np.array([5])) == (3, 1.0)
    # without cell types the CTC count is NaN, the contacts are the same
    contacts, ctc = window_contacts(lab, np.array([1, 2, 3]))
    assert contacts == 2 and np.isnan(ctc)


def test_separated_cells_have_no_contact_and_touching_after_one_pixel_dilation_do():
    lab = np.zeros((5, 9), np.int32)
    lab[1:4, 1:3] = 1
    lab[1:4, 4:6] = 2        # one background column between 1 and 2: no contact
    assert window_contacts(lab, np.array([1, 2])) [0] == 0
    lab[1:4, 3] = 2          # now adjacent
    assert window_contacts(lab, np.array([1, 2]))[0] == 1


def test_slide_contacts_in_tiles_equal_the_whole_image():
    rng = np.random.default_rng(0)
    lab = np.zeros((70, 90), np.int32)
    for i in range(1, 60):
        y, x = rng.integers(0, 66), rng.integers(0, 86)
        lab[y:y + 4, x:x + 4] = i
    whole = slide_contacts(lab, block=1000)
    assert len(whole) > 5
    for block in (7, 16, 33):
        np.testing.assert_array_equal(slide_contacts(lab, block=block), whole)
    assert slide_contacts(_labels(), block=6).tolist() == [[1, 2], [2, 3], [4, 5], [5, 6]]


def test_cells_in_window_by_centroid_half_open():
    ids = np.array([1, 2, 3, 4])
    y = np.array([0.0, 9.99, 10.0, 5.0])
    x = np.array([0.0, 5.0, 5.0, -0.1])
    assert cells_in_window(ids, y, x, 0, 0, 10).tolist() == [1, 2]


def test_count_contacts_ctc_leukocyte_pairs_only():
    pairs = np.array([[1, 2], [2, 3], [3, 4]])
    # 2 and 3 both CTC: their pair is CTC-CTC, not CTC-leukocyte
    assert count_contacts(pairs, np.array([1, 2, 3, 4]), np.array([2, 3])) == (3, 2.0)


def test_window_origins_stay_inside_and_are_seeded():
    centres = np.array([[2.0, 2.0], [99.0, 99.0], [50.0, 50.0]])
    a, kinds = window_origins(100, 120, 32, centres, 2, 5, np.random.default_rng(1))
    b, _ = window_origins(100, 120, 32, centres, 2, 5, np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)
    assert kinds == ["cluster"] * 2 + ["random"] * 5
    assert (a[:, 0] >= 0).all() and (a[:, 0] <= 100 - 32).all() and (a[:, 1] >= 0).all() and (a[:, 1] <= 120 - 32).all()
    with pytest.raises(ValueError, match="exceeds the image"):
        window_origins(20, 100, 32, centres, 1, 1, np.random.default_rng(0))


def test_downsample_window_block_means_and_rejects_non_multiples():
    x = np.ones((2, 8, 8))
    x[0, :4, :4] = 0
    out = downsample_window(x, 2)
    assert out.shape == (2, 2, 2) and out[0].tolist() == [[0.0, 1.0], [1.0, 1.0]]
    with pytest.raises(ValueError, match="multiple"):
        downsample_window(np.ones((1, 10, 10)), 4)


def test_touching_pairs_agree_with_the_extract_stages_adjacency():
    """The contacts counted here are the adjacency extract clusters cells by (distance 0)."""
    from hemoprofile.features.cell_clusters import adjacent_pairs
    from hemoprofile.interaction.windows import touching_pairs

    rng = np.random.default_rng(5)
    lab = np.zeros((60, 60), np.int32)
    for i in range(1, 80):
        y, x = rng.integers(0, 56, 2)
        lab[y:y + rng.integers(2, 6), x:x + rng.integers(2, 6)] = i
    np.testing.assert_array_equal(touching_pairs(lab), adjacent_pairs(lab))
