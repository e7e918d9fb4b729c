"""Object sizes: the classical image estimate, the network-input estimate, and segmenting at an estimate
(retry when nothing is found, refine from the objects found)."""

import numpy as np
import pytest
from helpers.segment_images import disc_cells, disc_image
from skimage.draw import disk

from hemoprofile.segment.diameter import (
    equivalent_diameters,
    estimate_diameter,
    estimate_input_diameter,
    label_diameter,
    segment_at_estimate,
)
from hemoprofile.segment.input import cellpose_input


def test_estimate_diameter_recovers_the_disc_size():
    image, truth = disc_cells(ring=0.0, touching=0.0, radius=(9.0, 11.0), n=20)
    estimate = estimate_diameter(image[0], segment_cfg={"diameter": 15})
    assert 17 <= estimate <= 23


def test_estimate_input_diameter_of_discs():
    image, labels = disc_image([16] * 12)
    est = estimate_input_diameter(cellpose_input(image), factor=1.0)
    assert est == pytest.approx(label_diameter(labels), rel=0.2)


def test_label_diameter_is_the_median_equivalent_diameter():
    _, labels = disc_image([10, 16, 22])
    assert label_diameter(labels) == pytest.approx(float(np.median(equivalent_diameters(labels))))
    assert label_diameter(np.zeros((8, 8), int)) == 0.0


def test_segment_at_estimate_retries_then_refines_and_can_do_neither():
    truth = np.zeros((200, 200), np.int32)
    for k, (y, x) in enumerate([(50, 50), (50, 150), (150, 100)], start=1):
        truth[disk((y, x), 20, shape=truth.shape)] = k
    asked = []

    def run(diameter):
        asked.append(diameter)
        return truth if diameter >= 30 else np.zeros_like(truth)

    masks, used = segment_at_estimate(run, 10.0, truth.shape)
    assert asked[:3] == [10.0, 20.0, 40.0] and masks.max() == 3
    assert used == pytest.approx(40.0)  # found 40 px objects at 40 px: within the tolerance, no refinement
    asked.clear()
    masks, used = segment_at_estimate(run, 10.0, truth.shape, refine=False, retry=False)
    assert asked == [10.0] and masks.max() == 0 and used == 10.0
    asked.clear()
    segment_at_estimate(run, 500.0, truth.shape, refine=False, retry=False)
    assert asked == [50.0]  # capped at a quarter of the shorter side
