"""``hemoprofile train-classifier`` and ``hemoprofile classify`` on a single-cell collection, end to end."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

torch.set_num_threads(1)


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


@pytest.mark.slow
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
