"""Per-cell measures (hemoprofile.features.measure) against hand-made label images with known features."""

import numpy as np
import pytest
from skimage.draw import disk, ellipse
from skimage.measure import regionprops

from hemoprofile.features.measure import measure_cells


def measure(labels, raw, pre=None, **kwargs):
    ids = np.unique(labels)
    ids = ids[ids != 0]
    pre = raw.astype(np.float32) / max(float(raw.max()), 1.0) if pre is None else pre
    names = kwargs.pop("channel_names", [f"c{i}" for i in range(raw.shape[0])])
    return ids, measure_cells(labels, raw, pre, ids, channel_names=names, **kwargs)


# --- features of single cells ----------------------------------------------------------------------------


def test_rectangle_area_centroid_bbox_perimeter_solidity():
    lab = np.zeros((20, 30), np.uint32)
    lab[4:8, 10:16] = 5  # 4 x 6 rectangle
    raw = np.zeros((1, 20, 30), np.uint16)
    _, m = measure(lab, raw, pixel_size_um=0.5)
    assert m["area"][0] == 24
    assert (m["y"][0], m["x"][0]) == (5.5, 12.5)
    assert (m["y_um"][0], m["x_um"][0]) == (2.75, 6.25)
    assert m["area_um2"][0] == pytest.approx(6.0)
    assert [m[k][0] for k in ("bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1")] == [4, 10, 8, 16]
    assert m["perimeter"][0] == pytest.approx(regionprops(lab)[0].perimeter)
    assert m["solidity"][0] == pytest.approx(1.0)
    assert not m["at_border"][0]


def test_solidity_of_an_l_shape_is_area_over_hull_of_pixel_squares():
    lab = np.zeros((5, 5), np.uint32)
    lab[1, 1] = lab[2, 1] = lab[2, 2] = 1  # hull of the three unit squares: 2 x 2 minus a half corner
    _, m = measure(lab, np.zeros((1, 5, 5), np.uint16))
    assert m["solidity"][0] == pytest.approx(3 / 3.5)


def test_shape_and_intensity_features_match_skimage_regionprops():
    rng = np.random.default_rng(3)
    lab = np.zeros((80, 80), np.uint32)
    for i, (cy, cx, ry, rx, rot) in enumerate([(20, 20, 9, 5, 0.3), (50, 30, 6, 6, 0), (40, 62, 12, 4, -1.0)], 1):
        rr, cc = ellipse(cy, cx, ry, rx, shape=lab.shape, rotation=rot)
        lab[rr, cc] = i * 10
    raw = rng.integers(0, 4000, (2, 80, 80)).astype(np.uint16)
    ids, m = measure(lab, raw)
    props = {r.label: r for r in regionprops(lab, intensity_image=np.moveaxis(raw, 0, -1))}
    for k, cell in enumerate(ids):
        r = props[cell]
        assert m["area"][k] == r.area
        assert m["perimeter"][k] == pytest.approx(r.perimeter)
        assert m["eccentricity"][k] == pytest.approx(r.eccentricity, abs=1e-9)
        assert (m["y"][k], m["x"][k]) == pytest.approx(r.centroid)
        assert (m["bbox_y0"][k], m["bbox_x0"][k], m["bbox_y1"][k], m["bbox_x1"][k]) == r.bbox
        assert 0.85 < m["solidity"][k] <= 1.0
        for c in range(2):
            assert m[f"mean_c{c}"][k] == pytest.approx(r.intensity_mean[c])
            assert m[f"max_c{c}"][k] == r.intensity_max[c]
            assert m[f"integrated_c{c}"][k] == pytest.approx(r.intensity_mean[c] * r.area)


def test_eccentricity_of_a_disc_is_near_zero_and_of_a_line_one():
    lab = np.zeros((40, 40), np.uint32)
    lab[disk((15, 15), 8)] = 1
    lab[30, 5:25] = 2
    _, m = measure(lab, np.zeros((1, 40, 40), np.uint16))
    assert m["eccentricity"][0] < 0.05
    assert m["eccentricity"][1] == pytest.approx(1.0)


def test_nucleus_area_and_ratio_from_the_threshold():
    lab = np.zeros((20, 20), np.uint32)
    lab[2:12, 2:12] = 1  # 100 px cell
    pre = np.zeros((2, 20, 20), np.float32)
    pre[0, 5:9, 5:9] = 0.8  # 16 px nucleus
    pre[0, 2:12, 2] = 0.3  # dim cytoplasm below the threshold
    _, m = measure(lab, np.zeros((2, 20, 20), np.uint16), pre, nucleus_channel=0, nucleus_threshold=0.5)
    assert m["nucleus_area"][0] == 16
    assert m["nucleus_ratio"][0] == pytest.approx(0.16)
    _, m = measure(lab, np.zeros((2, 20, 20), np.uint16), pre)  # no nucleus channel: missing values
    assert np.isnan(m["nucleus_ratio"][0])


def test_texture_is_zero_on_flat_cells_and_grows_with_granularity():
    lab = np.zeros((30, 60), np.uint32)
    lab[5:25, 5:25] = 1
    lab[5:25, 35:55] = 2
    pre = np.full((1, 30, 60), 0.5, np.float32)
    pre[0, 5:25, 35:55] = np.where((np.indices((20, 20)).sum(0) % 2) == 0, 0.2, 0.8)
    _, m = measure(lab, np.zeros((1, 30, 60), np.uint16), pre)
    assert m["texture_c0"][0] == pytest.approx(0.0, abs=1e-6)
    assert m["texture_c0"][1] > 1.0


def test_at_border_marks_cells_touching_the_slide_edge_only():
    lab = np.zeros((20, 20), np.uint32)
    lab[0:3, 5:8] = 1
    lab[8:11, 17:20] = 2
    lab[8:11, 8:11] = 3
    _, m = measure(lab, np.zeros((1, 20, 20), np.uint16))
    assert m["at_border"].tolist() == [True, True, False]
    # a window inside a larger slide: its edge is not the slide's
    _, m = measure(lab, np.zeros((1, 20, 20), np.uint16), origin=(10, 10), slide_shape=(100, 100))
    assert m["at_border"].tolist() == [False, False, False]
