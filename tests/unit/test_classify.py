"""Classifier tasks, metrics, held-out splits, truth matching, training and inference on tiny data.

Tiny data: "slides" whose patches carry the class in which channel is bright (a task a 2-stage net
learns in a few epochs), written in the patches.zarr + cells.parquet contract of hemoprofile.extract.
"""

import json

import numpy as np
import pandas as pd
import pytest
import torch
import zarr

from hemoprofile import classify as C
from hemoprofile.io import create_ome_zarr_labels

torch.set_num_threads(1)

CHANNELS = ["DAPI", "CK", "VIM", "CD45"]
TINY = {
    "model": {"widths": [8, 16], "blocks": [1, 1], "dropout": 0.0},
    "train": {"epochs": 4, "minutes": 1.0, "batch_size": 32, "lr": 1e-2, "patience": 0, "ema_decay": 0.9},
    "augment": {"blur_p": 0.0, "channel_dropout": 0.0},
    "split": {"val_fraction": 0.25, "test_fraction": 0.25},
    "device": "cpu",
    "mixed_precision": False,
    "batch_size": 64,
}
# which channel is bright for each cell type (CTC: CK; lymphoid: VIM; myeloid: CD45; DAPI = subtype)
BRIGHT = {"CD4_T": (2, 0.2), "CD8_T": (2, 0.9), "B": (2, 0.5), "NK": (2, 0.5),
          "granulocyte": (3, 0.2), "monocyte": (3, 0.9), "CTC": (1, 0.5)}


def write_slide(folder, slide, labels, size=12, seed=0, column="label"):
    """Write cells.parquet + patches.zarr for cells of the given types; return (cells, patches) paths."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    patches = (rng.random((n, len(CHANNELS), size, size)) * 40).astype(np.uint8)
    for i, t in enumerate(labels):
        channel, dapi = BRIGHT[t]
        patches[i, channel, 3:-3, 3:-3] += 180
        patches[i, 0, 4:-4, 4:-4] = int(dapi * 255)
    folder.mkdir(parents=True, exist_ok=True)
    arr = zarr.create_array(str(folder / "patches.zarr"), shape=patches.shape, chunks=(16, 1, size, size),
                            dtype="uint8")
    arr[:] = patches
    arr.attrs["hemoprofile"] = {"channel_names": CHANNELS, "patch_size": size, "dtype": "uint8"}
    cells = pd.DataFrame({"slide": slide, "cell_id": np.arange(1, n + 1, dtype=np.int64),
                          "y": rng.random(n) * 100, "x": rng.random(n) * 100, column: list(labels)})
    cells.to_parquet(folder / "cells.parquet")
    return str(folder / "cells.parquet"), str(folder / "patches.zarr")


def make_cohort(tmp_path, n_slides=4, per_type=12, types=("CD4_T", "CD8_T", "granulocyte", "monocyte", "CTC")):
    items = []
    for s in range(n_slides):
        labels = [t for t in types for _ in range(per_type)]
        cells, patches = write_slide(tmp_path / f"S{s}", f"S{s}", labels, seed=s)
        items.append(C.SlideInput(f"S{s}", cells, patches, group=f"P{s}"))
    return items


# --- tasks and metrics -----------------------------------------------------------------------------


def test_task_classes_and_mapping():
    assert C.task_classes("lineage") == ["lymphoid", "myeloid"]
    assert C.task_classes("immune6") == ["CD4_T", "CD8_T", "B", "NK", "granulocyte", "monocyte"]
    assert C.task_classes("ctc") == ["leukocyte", "CTC"]
    assert list(C.map_labels(["CD4_T", "CD8_T", "NK"], "immune5")) == ["T", "T", "NK"]
    # a gate label that already is a class passes; others (and CTCs in leukocyte tasks) drop out
    assert list(C.map_labels(["CTC", "leukocyte", "other", None], "ctc")) == ["CTC", "leukocyte", None, None]
    assert list(C.map_labels(["CTC", "monocyte"], "immune6")) == [None, "monocyte"]
    assert list(C.map_labels(["lymphocyte", "neutrophil", "platelet"], "lineage")) == ["lymphoid", "myeloid", None]
    assert C.task_classes("collection", ["b", "a", "b"]) == ["a", "b"]
    with pytest.raises(ValueError, match="unknown task"):
        C.task_classes("nope")


def test_metrics_against_hand_computed_values():
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 0, 1, 1, 2, 2]
    m = C.classification_metrics(y_true, y_pred, ["a", "b", "c"])
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert m["per_class"]["b"]["precision"] == pytest.approx(0.5)
    assert m["per_class"]["a"]["recall"] == pytest.approx(2 / 3)
    f1 = [2 * 1 * (2 / 3) / (1 + 2 / 3), 0.5, 2 * 0.5 * 1 / 1.5]
    assert m["macro_f1"] == pytest.approx(np.mean(f1))
    assert "true" in C.format_confusion(m)


# --- splits ------------------------------------------------------------------------------------------


def test_stratified_split_keeps_proportions_and_is_seeded():
    labels = np.array(["a"] * 50 + ["b"] * 10)
    parts = C.stratified_split(labels, [0.2], seed=1)
    assert sorted(np.concatenate(parts).tolist()) == list(range(60))
    assert (labels[parts[1]] == "b").sum() == 2 and (labels[parts[1]] == "a").sum() == 10
    assert all(np.array_equal(p, q) for p, q in zip(parts, C.stratified_split(labels, [0.2], seed=1)))


def test_group_split_holds_out_whole_groups_and_covers_rare_classes():
    groups = np.repeat([f"P{i}" for i in range(8)], 10)
    labels = np.array(["leukocyte"] * 80, dtype=object)
    labels[[5, 35, 75]] = "CTC"  # only patients 0, 3 and 7 have CTCs
    parts = C.group_split(groups, labels, [0.25, 0.25], seed=0)
    sets = [set(groups[p]) for p in parts]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert all("CTC" in set(labels[p]) for p in parts)


def test_make_split_drops_exact_copies_from_held_out_parts():
    patches = np.zeros((40, 1, 4, 4), np.uint8)
    patches[:, 0, 0, 0] = np.arange(40)
    patches[30:] = patches[:10]  # 10 copies of other cells
    labels = np.array(["a", "b"] * 20, dtype=object)
    parts, info = C.make_split(labels, None, 0.25, 0.25, seed=0, patches=patches)
    train_keys = {p.tobytes() for p in patches[parts[0]]}
    for idx in parts[1:]:
        assert not any(p.tobytes() in train_keys for p in patches[idx])
    assert "cells" in info["held_out_by"]


# --- labels from truth ------------------------------------------------------------------------------


def test_match_truth_reads_the_label_under_each_centroid(tmp_path):
    lab = create_ome_zarr_labels(tmp_path / "truth_labels.zarr", (40, 40), tile_size=16)
    full = np.zeros((40, 40), np.uint32)
    full[2:10, 2:10] = 5
    full[20:35, 18:39] = 9  # spans chunk borders
    lab[:] = full
    # centroid pixel = floor(v + 0.5), as extract places patch centres: (33.6, 17.6) -> (34, 18) is in
    # cell 9, (33.6, 17.4) -> (34, 17) is not; off-image centroids get 0
    ys = np.array([5.4, 30.0, 0.0, 39.6, -3.0, 33.6, 33.6])
    xs = np.array([5.0, 35.2, 30.0, 20.0, 2.0, 17.6, 17.4])
    got = C.match_truth(ys, xs, tmp_path / "truth_labels.zarr")
    assert got.tolist() == [5, 9, 0, 0, 0, 9, 0]
    rng = np.random.default_rng(0)  # chunk-wise reads agree with indexing the whole image
    ys, xs = rng.uniform(0, 39.4, 200), rng.uniform(0, 39.4, 200)
    direct = full[np.floor(ys + 0.5).astype(int), np.floor(xs + 0.5).astype(int)]
    assert np.array_equal(C.match_truth(ys, xs, tmp_path / "truth_labels.zarr"), direct)


def test_truth_cell_types(tmp_path):
    lab = create_ome_zarr_labels(tmp_path / "t.zarr", (20, 20), tile_size=8)
    full = np.zeros((20, 20), np.uint32)
    full[0:5, 0:5] = 1
    full[10:15, 10:15] = 2
    lab[:] = full
    truth = pd.DataFrame({"slide": ["S", "S", "T"], "cell_id": [1, 2, 1], "cell_type": ["NK", "CTC", "B"]})
    cells = pd.DataFrame({"y": [2.0, 12.0, 18.0], "x": [2.0, 12.0, 2.0]})
    assert list(C.truth_cell_types(cells, tmp_path / "t.zarr", truth, "S")) == ["NK", "CTC", None]


# --- training and inference end to end ---------------------------------------------------------------


def test_train_then_classify_slides(tmp_path):
    items = make_cohort(tmp_path)
    out_model, out_metrics = tmp_path / "models" / "classifier_ctc.pt", tmp_path / "models" / "classifier_ctc.metrics.json"
    cfg = {**TINY, "label_source": "column", "label_column": "label"}
    metrics = C.train_classifier(items, "ctc", out_model, out_metrics, cfg, seed=0)
    written = json.loads(out_metrics.read_text())
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "per_class", "confusion_matrix"):
        assert key in written["test"]
    assert written["model_id"] == C.model_id(out_model) == metrics["model_id"]
    split = written["split"]
    assert not set(split["train_groups"]) & set(split["test_groups"])
    assert written["test"]["balanced_accuracy"] > 0.8  # CK-bright CTCs are easy

    out = tmp_path / "S0" / "predictions.parquet"
    summary = C.classify_slide(items[0].patches, items[0].cells, [str(out_model)], out, device="cpu",
                               mixed_precision=False, batch_size=16)
    pred = pd.read_parquet(out)
    assert list(pred.columns) == ["slide", "cell_id", "p_ctc_leukocyte", "p_ctc_CTC", "pred_ctc", "model_ctc"]
    assert len(pred) == summary["n_cells"] == 60
    assert np.allclose(pred[["p_ctc_leukocyte", "p_ctc_CTC"]].sum(1), 1, atol=1e-4)
    assert (pred["model_ctc"] == C.model_id(out_model)).all()
    truth = pd.read_parquet(items[0].cells)["label"].map(lambda t: "CTC" if t == "CTC" else "leukocyte")
    assert (pred["pred_ctc"] == truth).mean() > 0.8


def test_hierarchical_model_gives_leaf_probabilities(tmp_path):
    items = make_cohort(tmp_path, n_slides=3, per_type=10)
    cfg = {**TINY, "label_source": "column", "label_column": "label",
           "train": {**TINY["train"], "epochs": 2}}
    data = C.load_training_cells(items, "column", label_column="label")
    ckpt, metrics = C.train_task(data, "hierarchical", cfg, seed=0, device=C.pick_device("cpu", False))
    path = tmp_path / "h.pt"
    C.write_classifier(ckpt, metrics, path, tmp_path / "h.json")
    clf = C.load_classifier(path)
    assert clf.output_classes == ["CD4_T", "CD8_T", "B", "NK", "granulocyte", "monocyte"]
    p = C.classifier_probabilities(clf, data.patches[:7], C.pick_device("cpu", False), 4, 1, CHANNELS)
    assert p.shape == (7, 6) and np.allclose(p.sum(1), 1, atol=1e-4)
    assert "test_lineage" in metrics and metrics["test"]["classes"] == clf.output_classes


def test_saved_model_round_trip_and_missing_channel(tmp_path):
    from hemoprofile.nn.cnn import CellNetSpec, build_model

    torch.manual_seed(0)
    net = build_model(CellNetSpec(4, 2, 12, widths=(4,), blocks=(1,))).eval()
    path = tmp_path / "m.pt"
    mid = C.save_classifier(path, net, "ctc", ["leukocyte", "CTC"], CHANNELS, 12)
    clf = C.load_classifier(path)
    assert clf.model_id == mid and clf.channels == CHANNELS
    x = np.random.default_rng(0).integers(0, 255, (5, 4, 12, 12), dtype=np.uint8)
    dev = C.pick_device("cpu", False)
    with torch.no_grad():
        direct = torch.softmax(net(torch.from_numpy(x).float() / 255), 1).numpy()
    assert np.allclose(C.classifier_probabilities(clf, x, dev), direct, atol=1e-4)
    # channels in another order are matched by name; an absent channel is fed as zeros
    shuffled = x[:, [3, 2, 1, 0]]
    assert np.allclose(C.classifier_probabilities(clf, shuffled, dev, patch_channels=CHANNELS[::-1]), direct, atol=1e-4)
    dropped = C.classifier_probabilities(clf, x[:, :3], dev, patch_channels=CHANNELS[:3])
    x0 = x.copy()
    x0[:, 3] = 0
    with torch.no_grad():
        expect = torch.softmax(net(torch.from_numpy(x0).float() / 255), 1).numpy()
    assert np.allclose(dropped, expect, atol=1e-4)
    with pytest.raises(ValueError, match="none of the model's channels"):
        C.channel_index(CHANNELS, ["a", "b"], "x")


def test_half_weights_file_is_smaller_and_predicts_alike(tmp_path):
    from hemoprofile.nn.cnn import CellNetSpec, build_model

    torch.manual_seed(0)
    net = build_model(CellNetSpec(4, 3, 16, widths=(16, 32), blocks=(1, 1))).eval()
    args = ("immune", ["a", "b", "c"], CHANNELS, 16)
    C.save_classifier(tmp_path / "full.pt", net, *args)
    C.save_classifier(tmp_path / "half.pt", net, *args, half_weights=True)
    assert (tmp_path / "half.pt").stat().st_size < 0.7 * (tmp_path / "full.pt").stat().st_size
    full, half = C.load_classifier(tmp_path / "full.pt"), C.load_classifier(tmp_path / "half.pt")
    assert next(half.model.parameters()).dtype == torch.float32  # loaded back into float32
    assert "float16" in half.metadata["weights_dtype"]
    x = np.random.default_rng(1).integers(0, 255, (16, 4, 16, 16), dtype=np.uint8)
    dev = C.pick_device("cpu", False)
    p_full, p_half = C.classifier_probabilities(full, x, dev), C.classifier_probabilities(half, x, dev)
    assert not np.array_equal(p_full, p_half)  # the weights were rounded ...
    assert np.allclose(p_full, p_half, atol=5e-3)  # ... by about float16's precision


def test_clear_errors_name_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.pt"):
        C.load_classifier(tmp_path / "nothere.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="bad.pt"):
        C.load_classifier(tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="unknown key"):
        C.resolve_classify({"epochs": 3})


# --- command line on a single-cell collection ----------------------------------------------------------


def make_collection(folder, per_class=16, with_labels=True):
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = []
    colours = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}
    for label, colour in colours.items():
        (folder / "images" / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = (rng.random((30, 32, 3)) * 50).astype(np.uint8)
            img[8:22, 8:24] = colour
            rel = f"images/{label}/{label}_{i}.png"
            Image.fromarray(img).save(folder / rel)
            rows.append((rel, label))
    if with_labels:
        pd.DataFrame(rows, columns=["path", "label"]).to_csv(folder / "labels.csv", index=False)


def cli_parser():
    import argparse

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    from hemoprofile.cli.classify import add_classify_parser, add_train_classifier_parser

    add_train_classifier_parser(sub)
    add_classify_parser(sub)
    return parser


def test_cli_train_and_classify_collection(tmp_path, capsys):
    make_collection(tmp_path / "coll")
    parser = cli_parser()
    model = tmp_path / "m.pt"
    args = parser.parse_args(["train-classifier", str(tmp_path / "coll"), "--out", str(model), "--epochs", "3",
                              "--patch-size", "20", "--crop-margin", "4", "--widths", "8,16", "--batch-size", "16",
                              "--device", "cpu", "--lr", "0.01", "--patience", "0"])
    assert args.func(args) == 0
    metrics = json.loads((tmp_path / "m.metrics.json").read_text())
    assert metrics["classes"] == ["blue", "green", "red"] and metrics["test"]["n"] > 0
    out = tmp_path / "pred.csv"
    make_collection(tmp_path / "unlabelled", per_class=4, with_labels=False)
    args = parser.parse_args(["classify", str(tmp_path / "unlabelled"), "--model", str(model), "--out", str(out),
                              "--device", "cpu"])
    assert args.func(args) == 0
    pred = pd.read_csv(out)
    assert list(pred.columns) == ["path", "predicted_label", "p_blue", "p_green", "p_red"]
    assert len(pred) == 12 and np.allclose(pred[["p_blue", "p_green", "p_red"]].sum(1), 1, atol=1e-4)
    # without labels.csv, labels come from folder names, and the command scores against them
    assert "accuracy" in capsys.readouterr().out


def test_fit_stops_early_and_honours_the_time_budget():
    from hemoprofile.nn.augment import AugmentConfig
    from hemoprofile.nn.cnn import CellNetSpec

    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (64, 2, 8, 8), dtype=np.uint8)
    y = rng.integers(0, 2, 64)
    spec = CellNetSpec(2, 2, 8, widths=(4,), blocks=(1,))
    dev = C.pick_device("cpu", False)
    aug = AugmentConfig(blur_p=0.0)
    # learning rate ~0: validation never improves after the first evaluation
    still = C.TrainSettings(epochs=50, batch_size=16, lr=1e-12, patience=2, ema_decay=0.0)
    result = C.fit_classifier(x[:48], y[:48], x[48:], y[48:], spec, aug, still, dev)
    assert result.stopped == "early stopping" and result.epochs == 3 and result.best_epoch == 1
    quick = C.TrainSettings(epochs=10_000, minutes=0.02, batch_size=16, patience=0)
    result = C.fit_classifier(x, y, None, None, spec, aug, quick, dev)
    assert result.stopped == "time budget" and result.seconds < 10
    # seeded: the same settings give the same weights
    a = C.fit_classifier(x, y, None, None, spec, aug, C.TrainSettings(epochs=2, batch_size=16, seed=3), dev)
    b = C.fit_classifier(x, y, None, None, spec, aug, C.TrainSettings(epochs=2, batch_size=16, seed=3), dev)
    assert all(torch.equal(p, q) for p, q in zip(a.model.state_dict().values(), b.model.state_dict().values()))
