"""Segmentation backends on images with known cells: hand-made discs, empty images, an untrained
Cellpose net (built offline) run batched."""

import numpy as np
import pytest
from helpers.segment_images import CHANNELS, disc_cells, untrained_model

from hemoprofile.segment.metrics import match_instances
from hemoprofile.segment.segmenter import (
    CellposeSegmenter,
    build_segmenter,
    segment_image,
)


def test_classical_finds_hand_made_cells_with_ap_at_least_0_9():
    image, truth = disc_cells()
    labels = segment_image(image, CHANNELS, {"backend": "classical", "diameter": 16})
    assert labels.dtype == np.int32 and labels.shape == truth.shape
    result = match_instances(truth, labels, 0.5)
    assert result["ap"] >= 0.9, result
    # ids are 1..N
    assert set(np.unique(labels)) == set(range(labels.max() + 1))


def test_classical_nuclei_only_and_grayscale_image():
    image, truth = disc_cells(ring=0.0, touching=0.0)
    labels = segment_image(image[0], None, {"diameter": 11})
    assert match_instances(truth, labels, 0.5)["ap"] >= 0.9


def test_empty_image_gives_no_labels():
    for image in (np.zeros((4, 64, 64), np.float32), np.full((4, 64, 64), 0.3, np.float32)):
        labels = segment_image(image, CHANNELS)
        assert labels.shape == (64, 64) and labels.max() == 0


@pytest.mark.slow  # Cellpose import compiles numba code (~5 s)
def test_cellpose_backend_runs_batched_with_an_untrained_net():
    image, _ = disc_cells(shape=(64, 64), n=6)
    segmenter = build_segmenter({"backend": "cellpose", "diameter": 15}, model=untrained_model())
    assert isinstance(segmenter, CellposeSegmenter)
    labels = segment_image(image, CHANNELS, {"backend": "cellpose"}, segmenter=segmenter)
    assert labels.shape == (64, 64) and labels.dtype == np.int32
    # several windows per eval call, of two shapes (padded to one internally), results in input order
    windows = [image[[0, 3, 1, 2]][:, :48, :48], image[[0, 3, 1, 2]][:, :40, :56], image[[0, 3, 1, 2]][:, 8:56, 8:56]]
    out = segmenter.segment(windows)
    assert [o.shape for o in out] == [(48, 48), (40, 56), (48, 48)]
    assert all(o.dtype == np.int32 and o.min() >= 0 for o in out)
    # the network input is [cytoplasm, nucleus]; without cytoplasm channels [nucleus, zeros]
    x = segmenter.network_input(windows[0])
    assert x.shape == (48, 48, 2) and x.dtype == np.float32
    nuclei_only = build_segmenter({"backend": "cellpose", "channels": {"cytoplasm": []}}, model=segmenter.model)
    nuclei_only.calibrate(lambda: [(windows[0][:1], (slice(None), slice(None)))], 1)
    assert not nuclei_only.network_input(windows[0][:1])[..., 1].any()
