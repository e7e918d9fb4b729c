"""Instance matching and AP against cases computed by hand."""

import numpy as np
import pytest

from hemoprofile.segment.metrics import (
    average_precision,
    iou_matrix,
    iou_pairs,
    match_instances,
)


def test_iou_of_two_overlapping_bars_is_computed_by_hand():
    true = np.zeros((1, 10), int)
    pred = np.zeros((1, 10), int)
    true[0, 0:4] = 3  # 4 px
    pred[0, 2:8] = 9  # 6 px, intersection 2, union 8
    table = iou_pairs(true, pred)
    assert table["true"].tolist() == [3] and table["pred"].tolist() == [9]
    assert table["intersection"].tolist() == [2]
    assert table["iou"][0] == pytest.approx(2 / 8)
    assert iou_matrix(true, pred).tolist() == [[0.25]]


def test_match_counts_tp_fp_fn_and_ap_as_tp_over_tp_fp_fn():
    true = np.zeros((10, 10), int)
    pred = np.zeros((10, 10), int)
    true[0:4, 0:4] = 1  # matched exactly by pred 5
    pred[0:4, 0:4] = 5
    true[6:10, 6:10] = 2  # 16 px; pred 6 covers 8 of them and 4 outside: IoU 8/20 = 0.4
    pred[6:10, 6:8] = 6
    pred[2:4, 8:10] = 6
    pred[0:2, 6:8] = 7  # pure false positive
    result = match_instances(true, pred, 0.5)
    assert (result["tp"], result["fp"], result["fn"]) == (1, 2, 1)
    assert result["ap"] == pytest.approx(1 / 4)
    assert result["precision"] == pytest.approx(1 / 3)
    assert result["recall"] == pytest.approx(1 / 2)
    assert result["f1"] == pytest.approx(2 / 5)
    assert result["mean_matched_iou"] == pytest.approx(1.0)
    low = match_instances(true, pred, 0.3)  # now the 0.4 pair matches too
    assert (low["tp"], low["fp"], low["fn"]) == (2, 1, 0)
    assert low["mean_matched_iou"] == pytest.approx((1.0 + 0.4) / 2)


def test_low_threshold_matching_is_one_to_one_and_maximises_matches():
    # One true object split in two halves by the prediction: at IoU 0.3 each half is a candidate
    # (IoU 0.5 each) but only one may match.
    true = np.zeros((4, 8), int)
    true[:, :] = 1
    pred = np.zeros((4, 8), int)
    pred[:, :4] = 1
    pred[:, 4:] = 2
    result = match_instances(true, pred, 0.3)
    assert (result["tp"], result["fp"], result["fn"]) == (1, 1, 0)


def test_empty_images_are_perfect_and_missing_predictions_score_zero():
    empty = np.zeros((5, 5), int)
    both_empty = match_instances(empty, empty)
    assert both_empty["ap"] == 1.0 and both_empty["tp"] == 0
    one = empty.copy()
    one[1:3, 1:3] = 1
    missed = match_instances(one, empty)
    assert (missed["tp"], missed["fn"], missed["ap"], missed["recall"]) == (0, 1, 0.0, 0.0)
    assert missed["precision"] == 1.0  # no prediction was wrong


def test_average_precision_pools_counts_and_reports_the_per_image_mean():
    a = np.zeros((6, 6), int)
    a[0:2, 0:2] = 1
    a[3:5, 3:5] = 2
    b = a.copy()
    b[3:5, 3:5] = 0  # misses one of two
    result = average_precision([a, a], [a, b], thresholds=(0.5, 0.75))
    pooled = result[0.5]
    assert (pooled["tp"], pooled["fp"], pooled["fn"]) == (3, 0, 1)
    assert pooled["ap"] == pytest.approx(3 / 4)
    assert pooled["ap_image_mean"] == pytest.approx((1.0 + 0.5) / 2)
    assert pooled["n_images"] == 2
    assert set(result) == {0.5, 0.75}


def test_shape_mismatch_and_bad_threshold_are_errors():
    with pytest.raises(ValueError, match="shape"):
        match_instances(np.zeros((2, 2), int), np.zeros((3, 3), int))
    with pytest.raises(ValueError, match="iou_threshold"):
        match_instances(np.zeros((2, 2), int), np.zeros((2, 2), int), 0.0)
