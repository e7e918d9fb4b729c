"""Training on tiny data: a task end to end then inference on a slide, hierarchical models, early stopping,
the time budget and seeding."""

import json

import numpy as np
import pandas as pd
import torch

from hemoprofile.classify.checkpoints import load_classifier, write_classifier
from hemoprofile.classify.inference import classifier_probabilities, classify_slide
from hemoprofile.classify.labels import load_training_cells
from hemoprofile.classify.training import TrainSettings, fit_classifier, train_classifier, train_task
from hemoprofile.io import model_id
from hemoprofile.nn.devices import pick_device

from helpers.classify_cohort import CHANNELS, TINY, make_cohort

torch.set_num_threads(1)


def test_train_then_classify_slides(tmp_path):
    items = make_cohort(tmp_path)
    out_model, out_metrics = tmp_path / "models" / "classifier_ctc.pt", tmp_path / "models" / "classifier_ctc.metrics.json"
    cfg = {**TINY, "label_source": "column", "label_column": "label"}
    metrics = train_classifier(items, "ctc", out_model, out_metrics, cfg, seed=0)
    written = json.loads(out_metrics.read_text())
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "per_class", "confusion_matrix"):
        assert key in written["test"]
    assert written["model_id"] == model_id(out_model) == metrics["model_id"]
    split = written["split"]
    assert not set(split["train_groups"]) & set(split["test_groups"])
    assert written["test"]["balanced_accuracy"] > 0.8  # CK-bright CTCs are easy

    out = tmp_path / "S0" / "predictions.parquet"
    summary = classify_slide(items[0].patches, items[0].cells, [str(out_model)], out, device="cpu",
                               mixed_precision=False, batch_size=16)
    pred = pd.read_parquet(out)
    assert list(pred.columns) == ["slide", "cell_id", "p_ctc_leukocyte", "p_ctc_CTC", "pred_ctc", "model_ctc"]
    assert len(pred) == summary["n_cells"] == 60
    assert np.allclose(pred[["p_ctc_leukocyte", "p_ctc_CTC"]].sum(1), 1, atol=1e-4)
    assert (pred["model_ctc"] == model_id(out_model)).all()
    truth = pd.read_parquet(items[0].cells)["label"].map(lambda t: "CTC" if t == "CTC" else "leukocyte")
    assert (pred["pred_ctc"] == truth).mean() > 0.8


def test_hierarchical_model_gives_leaf_probabilities(tmp_path):
    items = make_cohort(tmp_path, n_slides=3, per_type=10)
    cfg = {**TINY, "label_source": "column", "label_column": "label",
           "train": {**TINY["train"], "epochs": 2}}
    data = load_training_cells(items, "column", label_column="label")
    ckpt, metrics = train_task(data, "hierarchical", cfg, seed=0, device=pick_device("cpu", False))
    path = tmp_path / "h.pt"
    write_classifier(ckpt, metrics, path, tmp_path / "h.json")
    clf = load_classifier(path)
    assert clf.output_classes == ["CD4_T", "CD8_T", "B", "NK", "granulocyte", "monocyte"]
    p = classifier_probabilities(clf, data.patches[:7], pick_device("cpu", False), 4, 1, CHANNELS)
    assert p.shape == (7, 6) and np.allclose(p.sum(1), 1, atol=1e-4)
    assert "test_lineage" in metrics and metrics["test"]["classes"] == clf.output_classes


def test_fit_stops_early_and_honours_the_time_budget():
    from hemoprofile.nn.augment import AugmentConfig
    from hemoprofile.nn.cnn import CellNetSpec

    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (64, 2, 8, 8), dtype=np.uint8)
    y = rng.integers(0, 2, 64)
    spec = CellNetSpec(2, 2, 8, widths=(4,), blocks=(1,))
    dev = pick_device("cpu", False)
    aug = AugmentConfig(blur_p=0.0)
    # learning rate ~0: validation never improves after the first evaluation
    still = TrainSettings(epochs=50, batch_size=16, lr=1e-12, patience=2, ema_decay=0.0)
    result = fit_classifier(x[:48], y[:48], x[48:], y[48:], spec, aug, still, dev)
    assert result.stopped == "early stopping" and result.epochs == 3 and result.best_epoch == 1
    quick = TrainSettings(epochs=10_000, minutes=0.02, batch_size=16, patience=0)
    result = fit_classifier(x, y, None, None, spec, aug, quick, dev)
    assert result.stopped == "time budget" and result.seconds < 10
    # seeded: the same settings give the same weights
    a = fit_classifier(x, y, None, None, spec, aug, TrainSettings(epochs=2, batch_size=16, seed=3), dev)
    b = fit_classifier(x, y, None, None, spec, aug, TrainSettings(epochs=2, batch_size=16, seed=3), dev)
    assert all(torch.equal(p, q) for p, q in zip(a.model.state_dict().values(), b.model.state_dict().values()))
