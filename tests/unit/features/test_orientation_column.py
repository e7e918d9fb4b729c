"""cells.parquet ``orientation_deg``: the major axis angle of a known ellipse, from its nucleus where the
nucleus channel marks one, else from the whole mask; in the cells schema."""

import numpy as np
import pytest

from hemoprofile.features.measure import major_axis_angle, measure_cells
from hemoprofile.io.tables import cells_schema


def ellipse(shape, cy, cx, a, b, angle_deg):
    """Mask of an ellipse with semi-axes a (major) and b along ``angle_deg`` (x = column, towards +y = row)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    t = np.radians(angle_deg)
    u = (xx - cx) * np.cos(t) + (yy - cy) * np.sin(t)
    v = -(xx - cx) * np.sin(t) + (yy - cy) * np.cos(t)
    return (u / a) ** 2 + (v / b) ** 2 <= 1


@pytest.mark.parametrize("angle", [0.0, 30.0, -60.0, 89.0, 90.0, -45.0])
def test_angle_of_a_known_ellipse(angle):
    lab = np.zeros((60, 60), np.uint32)
    lab[ellipse(lab.shape, 30, 30, 18, 6, angle)] = 5
    img = np.ones((1, 60, 60), np.float32)
    m = measure_cells(lab, img, img, np.array([5]), channel_names=["CK"])
    assert m["orientation_deg"][0] == pytest.approx(angle, abs=1.0)
    assert -90 < m["orientation_deg"][0] <= 90


def test_nucleus_orientation_wins_over_the_cell_and_falls_back_without_it():
    lab = np.zeros((60, 60), np.uint32)
    lab[ellipse(lab.shape, 30, 30, 20, 8, 0.0)] = 1  # a horizontal cell ...
    pre = np.zeros((2, 60, 60), np.float32)
    pre[0][ellipse(lab.shape, 30, 30, 6, 2, 60.0)] = 1.0  # ... with a nucleus at 60 degrees
    pre[1] = lab > 0
    m = measure_cells(lab, pre, pre, np.array([1]), channel_names=["DAPI", "CK"], nucleus_channel=0,
                      nucleus_threshold=0.5)
    assert m["orientation_deg"][0] == pytest.approx(60.0, abs=2.0)
    m = measure_cells(lab, pre, pre, np.array([1]), channel_names=["DAPI", "CK"])  # no nucleus channel
    assert m["orientation_deg"][0] == pytest.approx(0.0, abs=1.0)
    pre[0] = 0  # nucleus channel without nucleus pixels: the whole mask
    m = measure_cells(lab, pre, pre, np.array([1]), channel_names=["DAPI", "CK"], nucleus_channel=0,
                      nucleus_threshold=0.5)
    assert m["orientation_deg"][0] == pytest.approx(0.0, abs=1.0)


def test_angle_convention_and_schema():
    assert major_axis_angle(1.0, 1.0, 0.0) == 0.0  # a circle
    assert major_axis_angle(4.0, 1.0, -0.0) == 90.0  # -90 maps to +90
    assert "orientation_deg" in cells_schema(["DAPI"]).names
