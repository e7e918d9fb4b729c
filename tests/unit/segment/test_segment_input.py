"""The one segmentation input: channel selection, slide-wide calibration with the marker floor, and the
2-channel network input shared by the Cellpose backend, training and the benchmark."""

import numpy as np
import pytest
from helpers.segment_images import CHANNELS, disc_cells
from skimage.draw import disk

from hemoprofile.segment.input import (
    FULL,
    calibrate_input,
    cellpose_input,
    input_preparation,
    select_channels,
)
from hemoprofile.segment.segmenter import build_segmenter, segment_image


def test_channel_name_errors_name_the_source_and_the_channels():
    with pytest.raises(ValueError, match=r"slide\.zarr.*'DNA'.*\['DAPI', 'CK', 'VIM', 'CD45'\]"):
        select_channels(CHANNELS, "DNA", ["CK"], source="slide.zarr")
    with pytest.raises(ValueError, match="'CD3'"):
        segment_image(np.zeros((4, 32, 32), np.float32), CHANNELS,
                      {"channels": {"cytoplasm": ["CD3"]}}, source="x.png")
    assert select_channels(CHANNELS, "DAPI", ["CD45", "CK"]).indices == [0, 3, 1]


def test_a_dim_marker_is_not_stretched_so_bright_cells_elsewhere_do_not_change_leukocyte_outlines():
    """Leukocytes (DAPI nucleus, CD45 ring) in the left half; CK is noise there. Slide B adds one bright
    CK cell in the right half, far from them. With marker_min_span the leukocytes' labels are the same
    on both slides; without it CK noise is stretched to full range on slide A only and outlines move."""
    rng = np.random.default_rng(3)
    shape = (160, 320)
    dapi, cd45 = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    for k in range(12):
        cy, cx = 20 + 40 * (k // 4), 20 + 36 * (k % 4)
        cd45[disk((cy, cx), 7, shape=shape)] = 0.6
        dapi[disk((cy, cx), 4, shape=shape)] = 0.8
    ck = rng.uniform(0.0, 0.08, shape).astype(np.float32)  # noise only
    without_ctc = np.stack([dapi, ck, cd45])
    with_ctc = without_ctc.copy()
    with_ctc[1][disk((80, 260), 14, shape=shape)] = 1.0
    with_ctc[0][disk((80, 260), 6, shape=shape)] = 0.6
    left = (slice(None), slice(0, 200))
    cfg = {"diameter": 14, "channels": {"nucleus": "DAPI", "cytoplasm": ["CD45", "CK"]}}

    def leukocyte_labels(image, span):
        return segment_image(image, ["DAPI", "CK", "CD45"], {**cfg, "marker_min_span": span})[left] > 0

    np.testing.assert_array_equal(leukocyte_labels(without_ctc, 0.5), leukocyte_labels(with_ctc, 0.5))
    assert (leukocyte_labels(without_ctc, 0.0) != leukocyte_labels(with_ctc, 0.0)).sum() > 10
    # the calibration itself: the noise-only CK range is widened to the span, a bright one is kept
    full = (slice(None), slice(None))
    dim = calibrate_input(lambda: [(without_ctc, full)], 3, marker_min_span=0.5).marker_ranges[1]
    bright = calibrate_input(lambda: [(with_ctc, full)], 3, marker_min_span=0.5).marker_ranges[1]
    assert dim[1] - dim[0] == pytest.approx(0.5) and bright[1] > 0.9


def test_cellpose_input_is_what_the_cellpose_backend_feeds_the_net_for_a_whole_image():
    image, _ = disc_cells(shape=(64, 80), n=8)
    image[1] = np.random.default_rng(1).uniform(0, 0.05, image.shape[1:])  # a dim CK: the marker floor matters
    cfg = {"backend": "cellpose"}
    backend = build_segmenter(cfg, model=object())  # the network is not run
    window = image[select_channels(CHANNELS, "DAPI", ["CD45", "CK", "VIM"]).indices]
    backend.calibrate(lambda: [(window, FULL)], window.shape[0])
    x = cellpose_input(image, CHANNELS, cfg)
    assert x.shape == (2, 64, 80) and x.dtype == np.float32 and x.flags.c_contiguous
    np.testing.assert_array_equal(x, np.moveaxis(backend.network_input(window), -1, 0))
    # the floor is on: without it the dim CK noise is stretched and the composite differs
    assert not np.array_equal(x[0], cellpose_input(image, CHANNELS, {"marker_min_span": 0.0})[0])
    np.testing.assert_array_equal(x[1], cellpose_input(image, CHANNELS, {"marker_min_span": 0.0})[1])
    assert input_preparation(cfg)["marker_min_span"] == 0.5


def test_cellpose_input_of_a_single_channel_image_is_image_and_zeros():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 200, (40, 50)).astype(np.uint8)
    x = cellpose_input(gray)
    assert x.shape == (2, 40, 50) and not x[1].any()
    assert np.percentile(x[0], 99) == pytest.approx(1.0, abs=0.01)
    with pytest.raises(ValueError, match="DAPI"):
        cellpose_input(np.zeros((4, 8, 8), np.uint16), ["A", "CK", "VIM", "CD45"])
    assert segment_image(gray, None, {"diameter": 8}).shape == (40, 50)
