"""Segmentation backends on images with known cells: hand-made discs, empty images, channel errors,
an untrained Cellpose net (built offline) and the model-file contract (fp16 state dict + JSON sidecar)."""

import json

import numpy as np
import pytest
from skimage.draw import disk

from hemoprofile.instance_metrics import match_instances
from hemoprofile.segment import (
    CellposeSegmenter,
    build_segmenter,
    estimate_diameter,
    load_cellpose_model,
    model_sidecar_path,
    segment_image,
    segment_settings,
    select_channels,
)

CHANNELS = ["DAPI", "CK", "VIM", "CD45"]


def disc_cells(shape=(200, 200), n=40, radius=(4.0, 6.5), ring=3.0, seed=0, noise=0.03, touching=0.3):
    """(4, y, x) float32 image in [0, 1] with nuclei (DAPI) and cytoplasm rings (CD45), and its truth.

    A fraction of the cells are placed touching an earlier one (their rings meet), as in a real smear.
    """
    rng = np.random.default_rng(seed)
    image = np.zeros((4, *shape), np.float32)
    truth = np.zeros(shape, np.int32)
    centres = []
    for _ in range(n * 50):
        if len(centres) >= n:
            break
        r = rng.uniform(*radius)
        if centres and rng.random() < touching:
            cy0, cx0, r0 = centres[rng.integers(len(centres))]
            angle = rng.uniform(0, 2 * np.pi)
            d = r0 + r + 2 * ring
            cy, cx = cy0 + d * np.sin(angle), cx0 + d * np.cos(angle)
        else:
            cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        margin = r + ring + 2
        if not (margin < cy < shape[0] - margin and margin < cx < shape[1] - margin):
            continue
        cell = disk((cy, cx), r + ring, shape=shape)
        if (truth[cell] > 0).any():
            continue
        centres.append((cy, cx, r))
        truth[cell] = len(centres)
        image[3][cell] = rng.uniform(0.4, 0.7)
        image[0][disk((cy, cx), r, shape=shape)] = rng.uniform(0.6, 1.0)
    image += rng.normal(0, noise, image.shape).astype(np.float32)
    return np.clip(image, 0, 1), truth


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


def test_channel_name_errors_name_the_source_and_the_channels():
    with pytest.raises(ValueError, match=r"slide\.zarr.*'DNA'.*\['DAPI', 'CK', 'VIM', 'CD45'\]"):
        select_channels(CHANNELS, "DNA", ["CK"], source="slide.zarr")
    with pytest.raises(ValueError, match="'CD3'"):
        segment_image(np.zeros((4, 32, 32), np.float32), CHANNELS,
                      {"channels": {"cytoplasm": ["CD3"]}}, source="x.png")
    assert select_channels(CHANNELS, "DAPI", ["CD45", "CK"]).indices == [0, 3, 1]


def test_estimate_diameter_recovers_the_disc_size():
    image, truth = disc_cells(ring=0.0, touching=0.0, radius=(9.0, 11.0), n=20)
    estimate = estimate_diameter(image[0], segment_cfg={"diameter": 15})
    assert 17 <= estimate <= 23


def untrained_model(diam_mean=15.0):
    """A Cellpose 3 model with random weights: builds offline, no download."""
    import torch
    from cellpose import models

    torch.manual_seed(0)
    return models.CellposeModel(gpu=False, pretrained_model=False, diam_mean=diam_mean)


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


def test_model_file_with_fp16_weights_and_small_net_loads_and_runs(tmp_path):
    import torch
    from cellpose.resnet_torch import CPnet

    nbase = [2, 8, 16, 32, 64]  # a small net: last width 64, not Cellpose's 256
    net = CPnet(nbase, 3, sz=3, diam_mean=12.0)
    path = tmp_path / "tiny.pt"
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in net.state_dict().items()}, path)
    model_sidecar_path(path).write_text(json.dumps({"nbase": nbase, "diam_mean": 12.0, "nchan": 2}))
    assert model_sidecar_path(path).name == "tiny.pt.json"
    model = load_cellpose_model(path, "cpu")
    assert model.nbase == nbase and model.diam_mean == pytest.approx(12.0)
    assert all(p.dtype == torch.float32 for p in model.net.parameters())
    image, _ = disc_cells(shape=(48, 48), n=3)
    labels = segment_image(image, CHANNELS, {"backend": "cellpose", "diameter": 12.0},
                           segmenter=build_segmenter({"backend": "cellpose"}, model=model))
    assert labels.shape == (48, 48)
    # without a sidecar the widths come from the weights; nbase without the input count is accepted
    model_sidecar_path(path).write_text(json.dumps({"nbase": nbase[1:], "diam_mean": 12.0, "nchan": 2}))
    assert load_cellpose_model(path, "cpu").nbase == nbase
    model_sidecar_path(path).unlink()
    assert load_cellpose_model(path, "cpu").nbase == nbase


def test_missing_model_file_error_names_the_path_and_the_ways_out(tmp_path):
    missing = tmp_path / "models" / "nothing.pt"
    with pytest.raises(FileNotFoundError, match=r"nothing\.pt.*backend: classical"):
        build_segmenter({"backend": "cellpose", "model": str(missing), "device": "cpu"})
    not_a_model = tmp_path / "junk.pt"
    not_a_model.write_text("junk")
    with pytest.raises(ValueError, match="junk.pt"):
        load_cellpose_model(not_a_model, "cpu")


def test_package_defaults_equal_the_config_schema_defaults():
    from hemoprofile.config import validate_config
    from hemoprofile.segment import DEFAULTS

    assert validate_config({})["segment"] == DEFAULTS


def test_settings_merge_nested_sections():
    cfg = segment_settings({"classical": {"peak_distance": 0.5}}, diameter=20)
    assert cfg["classical"]["peak_distance"] == 0.5 and cfg["classical"]["smoothing_sigma"] == 1.0
    assert cfg["diameter"] == 20 and cfg["channels"]["nucleus"] == "DAPI"


def test_a_dim_marker_is_not_stretched_so_bright_cells_elsewhere_do_not_change_leukocyte_outlines():
    """Leukocytes (DAPI nucleus, CD45 ring) in the left half; CK is noise there. Slide B adds one bright
    CK cell in the right half, far from them. With marker_min_span the leukocytes' labels are the same
    on both slides; without it CK noise is stretched to full range on slide A only and outlines move."""
    from hemoprofile.segment import calibrate_input

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
