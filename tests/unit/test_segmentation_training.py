"""Tests of hemoprofile.segmentation_training: data, split, input preparation, model files, training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hemoprofile import segmentation_training as st

FIXTURE_DSB = Path(__file__).resolve().parents[1] / "fixtures" / "dsb2018"


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


def disc_image(diameters, shape=(128, 128), seed=0):
    """Bright discs of the given diameters on a dark, noisy background, and their labels."""
    from skimage.draw import disk

    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    k = 0
    for d in diameters:
        for _ in range(100):
            y, x = rng.integers(d, shape[0] - d), rng.integers(d, shape[1] - d)
            rr, cc = disk((y, x), d / 2 + 2, shape=shape)
            if not labels[rr, cc].any():
                k += 1
                rr, cc = disk((y, x), d / 2, shape=shape)
                labels[rr, cc] = k
                break
    image = (labels > 0) * 200.0 + rng.normal(20, 3, shape)
    return np.clip(image, 0, 255).astype(np.uint8), labels


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
    data = st.prepare_training_data(dsb_dir, tmp_path / "split.json", split_seed=0, synth_cfg=None, synth_dir=None,
                                    synth_seed=1007)
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
        assert np.percentile(image[0], 99) == pytest.approx(1.0, abs=1e-5)
        assert len(np.unique(lab)) - 1 == index[image_id]


def test_cellpose_input_multichannel():
    rng = np.random.default_rng(0)
    image = rng.integers(100, 4000, (4, 32, 32)).astype(np.uint16)
    out = st.cellpose_input(image, ["DAPI", "CK", "VIM", "CD45"])
    assert out.shape == (2, 32, 32) and out.dtype == np.float32
    np.testing.assert_allclose(out[1], st.normalise_percentile(image[0]), atol=1e-6)  # nucleus = DAPI
    with pytest.raises(ValueError, match="DAPI"):
        st.cellpose_input(image, ["A", "CK", "VIM", "CD45"])


def test_estimate_diameter_of_discs():
    image, labels = disc_image([16] * 12)
    est = st.estimate_diameter(st.cellpose_input(image), factor=1.0)
    assert est == pytest.approx(st.label_diameter(labels), rel=0.2)


# --- model files ------------------------------------------------------------------------------------


def test_sidecar_json_round_trip(tmp_path):
    meta = {"nbase": [2, 16, 32, 64, 128], "diam_mean": 15.0, "nchan": 2, "diameter_estimator": {"factor": 1.2}}
    path = st.write_sidecar(tmp_path / "m.pt", meta)
    assert path.name == "m.pt.json"
    assert st.read_sidecar(tmp_path / "m.pt") == meta
    with pytest.raises(ValueError, match="nbase"):
        st.write_sidecar(tmp_path / "x.pt", {"diam_mean": 1, "nchan": 2})
    with pytest.raises(FileNotFoundError):
        st.read_sidecar(tmp_path / "missing.pt")


@pytest.mark.slow  # imports torch and cellpose (several seconds on a loaded machine)
def test_sidecar_round_trip_fp16(tmp_path):
    import torch

    torch.manual_seed(0)
    net = st.build_net([2, 8, 16, 32, 256], diam_mean=17.0)
    path = tmp_path / "m.pt"
    meta = st.save_model_fp16(net, path, {"note": "test"})
    assert st.sidecar_path(path) == tmp_path / "m.pt.json"
    side = st.read_sidecar(path)
    assert side["nbase"] == [2, 8, 16, 32, 256] and side["nchan"] == 2 and side["diam_mean"] == 17.0
    assert side["note"] == "test" and side == json.loads(json.dumps(meta))
    state = torch.load(path, weights_only=True)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    loaded, _ = st.load_net(path)
    for k, v in net.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v.half().float() if v.is_floating_point() else v)


@pytest.mark.slow  # imports cellpose.models
def test_model_file_loads_with_pipeline_loader(tmp_path):
    segment = pytest.importorskip("hemoprofile.segment")
    import torch

    net = st.build_net([2, 8, 16, 32, 64], diam_mean=17.0)  # last width != 256: the loader pads styles
    path = tmp_path / "m.pt"
    st.save_model_fp16(net, path, {})
    model = segment.load_cellpose_model(path, torch.device("cpu"))
    assert list(model.nbase) == [2, 8, 16, 32, 64] and model.diam_mean == 17.0


def test_instance_scores_perfect_and_empty():
    _, labels = disc_image([12] * 5)
    perfect = st.instance_scores([labels], [labels])
    assert perfect["ap@0.5"] == 1.0 and perfect["ap@0.75"] == 1.0
    empty = st.instance_scores([labels], [np.zeros_like(labels)])
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
    cfg = st.TrainConfig(nbase=[2, 8, 16, 32, 64], bsize=64, batch_size=4, images_per_epoch=4, steps=1,
                         time_budget_min=budget, warmup_steps=1, seed=0)
    out = tmp_path / "seg.pt"
    record = st.train_segmenter(crops, labs, out, cfg, val_sets={"dsb": (crops[:1], labs[:1])},
                                work_dir=tmp_path / "work", metrics_path=tmp_path / "metrics.json")
    assert record["steps"] >= 1
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics["validation"]["dsb"]) >= {"ap@0.5", "ap@0.75", "seconds_per_megapixel"}
    seg = st.load_segmenter(out)
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

    seg = st.Segmenter(model=StandIn(), meta={"diam_mean": 15.0}, diameter_factor=1.0)
    masks, used = seg.segment(image, diameter=12.0)  # a given diameter is used as it is: no retry
    assert masks.max() == 0 and asked == [12.0]
    asked.clear()
    estimate = 10.0  # a bad estimate: the estimator's factor scales its 40 px down to 10 px
    seg.diameter_factor = estimate / st.estimate_diameter(image, 1.0)
    masks, used = seg.segment(image)
    assert asked[0] == pytest.approx(estimate) and asked[1:3] == [pytest.approx(20.0), pytest.approx(40.0)]
    assert masks.max() == 3
    # the refinement then measures the objects found (equivalent diameter 40 px) and settles there
    assert used == pytest.approx(st.label_diameter(truth), rel=0.3)


def test_training_can_start_from_a_model_file(dsb, tmp_path):
    import torch

    _, images, labels = dsb
    crops, labs = tiny_crops(images, labels)
    small = dict(nbase=[2, 8, 16, 32, 64], bsize=64, batch_size=4, images_per_epoch=4, steps=1, warmup_steps=1)
    st.train_segmenter(crops, labs, tmp_path / "first.pt", st.TrainConfig(**small, seed=0), work_dir=tmp_path / "w1")
    # a second run from the first one's weights, with a learning rate too small to move them, ends where it began
    st.train_segmenter(crops, labs, tmp_path / "tuned.pt",
                       st.TrainConfig(**{**small, "learning_rate": 1e-12}, seed=5, init_model=str(tmp_path / "first.pt")),
                       work_dir=tmp_path / "w2")
    st.train_segmenter(crops, labs, tmp_path / "scratch.pt",
                       st.TrainConfig(**{**small, "learning_rate": 1e-12}, seed=5), work_dir=tmp_path / "w3")
    first, tuned, scratch = (st.load_net(tmp_path / f"{name}.pt")[0].state_dict() for name in ("first", "tuned", "scratch"))
    key = next(k for k, v in first.items() if v.ndim == 4)  # a convolution's weights
    assert torch.allclose(first[key], tuned[key], atol=1e-3)
    assert not torch.allclose(first[key], scratch[key], atol=1e-3)
    with pytest.raises(ValueError, match=r"first.pt has nbase \[2, 8, 16, 32, 64\]"):
        st.train_segmenter(crops, labs, tmp_path / "x.pt",
                           st.TrainConfig(**{**small, "nbase": [2, 8, 16, 32]}, init_model=str(tmp_path / "first.pt")),
                           work_dir=tmp_path / "w4")
    with pytest.raises(FileNotFoundError, match="nothere.pt"):
        st.train_segmenter(crops, labs, tmp_path / "y.pt", st.TrainConfig(**small, init_model=str(tmp_path / "nothere.pt")),
                           work_dir=tmp_path / "w5")
