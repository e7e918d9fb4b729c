"""Training of the project's Cellpose model: DSB split and data, the synthetic training cohort read from
disk, prepared inputs, scoring, training runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.segment_images import CHANNELS, disc_cells, disc_image
from helpers.slide_writers import write_frame_folder

from hemoprofile.io import create_ome_zarr_labels
from hemoprofile.segment.cellpose_model import load_net
from hemoprofile.segment.diameter import estimate_input_diameter, label_diameter
from hemoprofile.segment.input import cellpose_input, network_input
from hemoprofile.segment.metrics import instance_scores
from hemoprofile.segment.training import data as st
from hemoprofile.segment.training.evaluate import (
    TrainedSegmenter,
    load_trained_segmenter,
)
from hemoprofile.segment.training.train import TrainConfig, train_segmenter

FIXTURE_DSB = Path(__file__).resolve().parents[2] / "fixtures" / "dsb2018"


@pytest.fixture(scope="module")
def dsb_dir() -> Path:
    """Three DSB 2018 images + expert masks copied into the repository (see ATTRIBUTION.md there)."""
    if not (FIXTURE_DSB / "index.csv").is_file():
        pytest.fail(f"test fixture missing: {FIXTURE_DSB} (DSB 2018 images + masks, see its ATTRIBUTION.md)")
    return FIXTURE_DSB


@pytest.fixture(scope="module")
def dsb(dsb_dir):
    ids = st.dsb_image_ids(dsb_dir)
    images, labels = st.load_dsb(ids, dsb_dir)
    return ids, images, labels


# --- split -------------------------------------------------------------------------------------------


def test_split_is_disjoint_complete_and_seeded():
    ids = [f"img{k:03d}" for k in range(400)]
    parts = st.split_ids(ids, seed=0)
    assert [len(parts[p]) for p in ("train", "validation", "test")] == [280, 40, 80]
    seen = [i for p in parts.values() for i in p]
    assert sorted(seen) == sorted(ids)  # complete, no id twice
    assert set(parts["train"]).isdisjoint(parts["test"]) and set(parts["validation"]).isdisjoint(parts["test"])
    assert st.split_ids(list(reversed(ids)), seed=0) == parts  # depends on the set of ids, not their order
    assert st.split_ids(ids, seed=1)["test"] != parts["test"]


def test_split_file_round_trip(tmp_path):
    parts = st.split_ids([f"i{k}" for k in range(20)], seed=3)
    path = tmp_path / "split.json"
    st.write_split(parts, path, seed=3, source="x")
    assert st.read_split(path) == parts
    assert json.loads(path.read_text())["seed"] == 3


def test_prepare_training_data_keeps_test_images_out(dsb_dir, tmp_path):
    data = st.prepare_training_data(dsb_dir, tmp_path / "split.json", split_seed=0, cohort_path=None)
    parts = st.read_split(tmp_path / "split.json")
    assert sum(len(v) for v in parts.values()) == 3
    assert data["n_dsb"] == len(parts["train"])
    assert len(data["val"]["dsb"][0]) == len(parts["validation"])


# --- input preparation ------------------------------------------------------------------------------


def test_load_dsb_gives_image_and_zero_channel(dsb, dsb_dir):
    ids, images, labels = dsb
    index = {r.split(",")[0]: int(r.split(",")[3]) for r in (dsb_dir / "index.csv").read_text().splitlines()[1:]}
    for image_id, image, lab in zip(ids, images, labels):
        assert image.shape == (2, 256, 256) and image.dtype == np.float32
        assert not image[1].any()
        # the pipeline's preparation (percentiles from a 16384-bin histogram, so 99th percentile ~ 1)
        np.testing.assert_array_equal(image, cellpose_input(st.read_dsb_image(dsb_dir, image_id)[0]))
        assert np.percentile(image[0], 99) == pytest.approx(1.0, abs=1e-3)
        assert len(np.unique(lab)) - 1 == index[image_id]


def test_cellpose_input_multichannel():
    rng = np.random.default_rng(0)
    image = rng.integers(100, 4000, (4, 32, 32)).astype(np.uint16)
    out = cellpose_input(image, ["DAPI", "CK", "VIM", "CD45"])
    assert out.shape == (2, 32, 32) and out.dtype == np.float32
    nucleus_only = network_input(image[:1].astype(np.float32) / 65535)  # [nucleus, zeros]
    np.testing.assert_allclose(out[1], nucleus_only[..., 0], atol=1e-6)  # nucleus = DAPI
    with pytest.raises(ValueError, match="DAPI"):
        cellpose_input(image, ["A", "CK", "VIM", "CD45"])


def write_cohort(root: Path, n_slides: int = 3, rows: int = 1, cols: int = 2, frame: int = 48) -> Path:
    """Slides as the simulate stage writes them (a frame folder + truth_labels.zarr each) and their sheet."""
    sheet = []
    for k in range(n_slides):
        slide = f"P{k + 1:02d}_S1"
        image, truth = disc_cells(shape=(rows * frame, cols * frame), n=6, seed=k)
        write_frame_folder(root / slide / "frames", np.round(image * 65535).astype(np.uint16), rows, cols,
                           "row-major", channel_names=CHANNELS)
        labels = create_ome_zarr_labels(root / slide / "truth_labels.zarr", truth.shape, frame, name="truth_labels",
                                        dtype="uint32")
        labels[:] = truth + (truth > 0) * 1000  # slide-wide ids: not 1..N per frame
        sheet.append({"slide": slide, "path": str(root / slide / "frames"), "format": "frames",
                      "channels": ",".join(CHANNELS), "frame_rows": rows, "frame_cols": cols})
    pd.DataFrame(sheet).to_csv(root / st.COHORT_SHEET, sep="\t", index=False)
    return root / st.COHORT_SHEET


def test_training_frames_are_read_from_the_simulated_cohort_on_disk(dsb_dir, tmp_path):
    cohort_path = write_cohort(tmp_path / "synthetic")
    images, labels, names = st.read_training_frames(st.read_cohort(cohort_path))
    assert names == ["P01_S1/0", "P01_S1/1", "P02_S1/0", "P02_S1/1", "P03_S1/0", "P03_S1/1"]
    assert all(im.shape == (2, 48, 48) and im.dtype == np.float32 for im in images)
    assert all(set(np.unique(lab)) == set(range(lab.max() + 1)) for lab in labels)  # 1..N per frame
    data = st.prepare_training_data(dsb_dir, tmp_path / "split.json", 0, cohort_path, synth_val_slides=1)
    assert len(data["train"][0]) == data["n_dsb"] + 4 and len(data["val"]["synthetic"][0]) == 2
    np.testing.assert_array_equal(data["val"]["synthetic"][0][1], images[5])


def test_training_cohort_config_takes_the_training_seed():
    synthetic = {"seed": 7, "conditions": {"healthy": {"patients": 4}}}
    cfg = st.training_cohort_config(synthetic, {"synthetic_seed": 1007, "synthetic_patients_per_condition": 2})
    assert cfg["seed"] == 1007 and cfg["conditions"]["healthy"]["patients"] == 2 and synthetic["seed"] == 7
    with pytest.raises(ValueError, match="synthetic_seed equals synthetic.seed"):
        st.training_cohort_config(synthetic, {"synthetic_seed": 7})


# --- scoring ---------------------------------------------------------------------------------------


def test_instance_scores_perfect_and_empty():
    _, labels = disc_image([12] * 5)
    perfect = instance_scores([labels], [labels])
    assert perfect["ap@0.5"] == 1.0 and perfect["ap@0.75"] == 1.0
    empty = instance_scores([labels], [np.zeros_like(labels)])
    assert empty["ap@0.5"] == 0.0 and empty["recall@0.5"] == 0.0


# --- training -----------------------------------------------------------------------------------------


def tiny_crops(images, labels, n=4, size=96):
    """The n crops (of the fixture images, on a 32 px grid) holding the most nuclei."""
    found = []
    for im, lab in zip(images, labels):
        for y in range(0, im.shape[1] - size + 1, 32):
            for x in range(0, im.shape[2] - size + 1, 32):
                crop = st._relabel(lab[y:y + size, x:x + size])
                found.append((int(crop.max()), im[:, y:y + size, x:x + size].copy(), crop))
    found.sort(key=lambda f: -f[0])
    return [f[1] for f in found[:n]], [f[2] for f in found[:n]]


@pytest.mark.slow
@pytest.mark.parametrize("budget", [None, 0.02], ids=["train_seg", "clock-bound"])
def test_training_writes_loadable_model(dsb, tmp_path, budget):
    _, images, labels = dsb
    crops, labs = tiny_crops(images, labels)
    cfg = TrainConfig.from_settings(nbase=[2, 8, 16, 32, 64], bsize=64, batch_size=4, images_per_epoch=4, steps=1,
                         time_budget_min=budget, warmup_steps=1, seed=0)
    out = tmp_path / "seg.pt"
    record = train_segmenter(crops, labs, out, cfg, val_sets={"dsb": (crops[:1], labs[:1])},
                                work_dir=tmp_path / "work", metrics_path=tmp_path / "metrics.json")
    assert record["steps"] >= 1
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics["validation"]["dsb"]) >= {"ap@0.5", "ap@0.75", "seconds_per_megapixel"}
    seg = load_trained_segmenter(out)
    assert seg.meta["nbase"] == [2, 8, 16, 32, 64] and seg.meta["dtype"] == "float16"
    masks, diameter = seg.segment(crops[0])
    assert masks.shape == crops[0].shape[1:] and diameter > 0


def test_segment_retries_larger_diameters_when_nothing_is_found_at_the_estimate():
    """A stand-in model that finds the 40 px discs only when told a diameter of at least 30 px."""
    from skimage.draw import disk

    truth = np.zeros((200, 200), np.int32)
    for k, (y, x) in enumerate([(50, 50), (50, 150), (150, 100)], start=1):
        truth[disk((y, x), 20, shape=truth.shape)] = k
    image = np.stack([(truth > 0).astype(np.float32), np.zeros(truth.shape, np.float32)])
    asked = []

    class StandIn:
        def eval(self, x, diameter, **kwargs):
            asked.append(diameter)
            return (truth if diameter >= 30 else np.zeros_like(truth),)

    seg = TrainedSegmenter(model=StandIn(), meta={"diam_mean": 15.0}, diameter_factor=1.0)
    masks, used = seg.segment(image, diameter=12.0)  # a given diameter is used as it is: no retry
    assert masks.max() == 0 and asked == [12.0]
    asked.clear()
    estimate = 10.0  # a bad estimate: the estimator's factor scales its 40 px down to 10 px
    seg.diameter_factor = estimate / estimate_input_diameter(image, 1.0)
    masks, used = seg.segment(image)
    assert asked[0] == pytest.approx(estimate) and asked[1:3] == [pytest.approx(20.0), pytest.approx(40.0)]
    assert masks.max() == 3
    # the refinement then measures the objects found (equivalent diameter 40 px) and settles there
    assert used == pytest.approx(label_diameter(truth), rel=0.3)


def test_training_can_start_from_a_model_file(dsb, tmp_path):
    import torch

    _, images, labels = dsb
    crops, labs = tiny_crops(images, labels)
    small = dict(nbase=[2, 8, 16, 32, 64], bsize=64, batch_size=4, images_per_epoch=4, steps=1, warmup_steps=1,
                 time_budget_min=None)
    train_segmenter(crops, labs, tmp_path / "first.pt", TrainConfig.from_settings(**small, seed=0), work_dir=tmp_path / "w1")
    # a second run from the first one's weights, with a learning rate too small to move them, ends where it began
    train_segmenter(crops, labs, tmp_path / "tuned.pt",
                    TrainConfig.from_settings(**{**small, "learning_rate": 1e-12}, seed=5, init_model=str(tmp_path / "first.pt")),
                    work_dir=tmp_path / "w2")
    train_segmenter(crops, labs, tmp_path / "scratch.pt",
                    TrainConfig.from_settings(**{**small, "learning_rate": 1e-12}, seed=5), work_dir=tmp_path / "w3")
    first, tuned, scratch = (load_net(tmp_path / f"{name}.pt")[0].state_dict() for name in ("first", "tuned", "scratch"))
    key = next(k for k, v in first.items() if v.ndim == 4)  # a convolution's weights
    assert torch.allclose(first[key], tuned[key], atol=1e-3)
    assert not torch.allclose(first[key], scratch[key], atol=1e-3)
    with pytest.raises(ValueError, match=r"first.pt has nbase \[2, 8, 16, 32, 64\]"):
        train_segmenter(crops, labs, tmp_path / "x.pt",
                        TrainConfig.from_settings(**{**small, "nbase": [2, 8, 16, 32]}, init_model=str(tmp_path / "first.pt")),
                        work_dir=tmp_path / "w4")
    with pytest.raises(FileNotFoundError, match="nothere.pt"):
        train_segmenter(crops, labs, tmp_path / "y.pt",
                        TrainConfig.from_settings(**small, init_model=str(tmp_path / "nothere.pt")), work_dir=tmp_path / "w5")
