"""hemoprofile.interaction.slide and .cohort on a tiny fabricated slide whose contacts are known: the
window tables, pixels and slide totals, truth vs segmentation targets, determinism, and the cohort
fit writing predictions and metrics for held-out patients."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
import zarr
from helpers.embed_slides import TINY, two_slides

from hemoprofile.embed.slide import patch_encoder
from hemoprofile.embed.training import train_embedder
from hemoprofile.interaction.cohort import fit_and_evaluate
from hemoprofile.interaction.slide import read_windows, slide_windows
from hemoprofile.io.ome_zarr import create_ome_zarr_image, create_ome_zarr_labels

torch.set_num_threads(1)

# Four 6 x 6 cells in a row, 1-2 and 2-3 touching, 4 apart; cell 3 is a CTC. Known: 2 contacts, 1 CTC-leukocyte.
SQUARES = {1: (10, 10), 2: (10, 16), 3: (10, 22), 4: (40, 40)}


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    root = tmp_path_factory.mktemp("emb")
    train_embedder(two_slides(root), root / "m.pt", root / "m.json", {**TINY, "train": {"epochs": 1}}, progress=None)
    return patch_encoder(root / "m.pt")


def _slide(root, slide="S1", seg_offset=100):
    """Files of a 64 x 64 two-channel slide; segmentation ids = truth ids + ``seg_offset``, except that the
    segmentation merged nothing but missed cell 1 (so its contacts are 1 where the truth has 2)."""
    root.mkdir(parents=True, exist_ok=True)
    truth = np.zeros((64, 64), np.uint32)
    for i, (y, x) in SQUARES.items():
        truth[y:y + 6, x:x + 6] = i
    seg = np.where((truth > 0) & (truth != 1), truth + seg_offset, 0).astype(np.uint32)
    image = create_ome_zarr_image(root / "preprocessed.zarr", (2, 64, 64), np.uint16, 32, ["A", "B"])
    image[:] = (np.stack([truth > 0, truth > 0]) * 50000).astype(np.uint16)
    create_ome_zarr_labels(root / "labels.zarr", (64, 64), 32)[:] = seg
    create_ome_zarr_labels(root / "truth_labels.zarr", (64, 64), 32)[:] = truth
    centre = {i: (y + 2.5, x + 2.5) for i, (y, x) in SQUARES.items()}
    seg_ids = [i + seg_offset for i in (2, 3, 4)]
    cells = pd.DataFrame({"slide": slide, "cell_id": seg_ids, "y": [centre[i][0] for i in (2, 3, 4)],
                          "x": [centre[i][1] for i in (2, 3, 4)]})
    cells.to_parquet(root / "cells.parquet")
    pd.DataFrame({"cell_id": seg_ids, "pred_ctc": ["leukocyte", "CTC", "leukocyte"]}).to_parquet(root / "predictions.parquet")
    pd.DataFrame({f"z_{k}": np.arange(3, dtype=np.float32) + k for k in range(3)}).to_parquet(root / "embedding.parquet")
    pd.DataFrame({"y": [12.5], "x": [18.5]}).to_parquet(root / "clusters.parquet")
    truth_cells = pd.DataFrame({"slide": slide, "cell_id": list(SQUARES), "y": [centre[i][0] for i in SQUARES],
                                "x": [centre[i][1] for i in SQUARES], "cell_type": ["T", "B", "CTC", "NK"]})
    return root, truth_cells


def _run(root, embedder, truth_cells=None, **kw):
    return slide_windows("S1", preprocessed=str(root / "preprocessed.zarr"), labels=str(root / "labels.zarr"),
                         cells=str(root / "cells.parquet"), clusters=str(root / "clusters.parquet"),
                         embedding=str(root / "embedding.parquet"), encoder=embedder, out_dir=str(root / "out"),
                         predictions=str(root / "predictions.parquet"),
                         truth_labels=str(root / "truth_labels.zarr") if truth_cells is not None else None,
                         truth_cells=truth_cells, window_size=kw.pop("window_size", 32), input_size=16,
                         cluster_windows=1, random_windows=kw.pop("random_windows", 3), halo_px=8, seed=0,
                         progress=lambda m: None, **kw)


def test_windows_count_the_known_contacts_on_truth_and_segmentation(tmp_path, embedder):
    root, truth_cells = _slide(tmp_path / "S1")
    result = _run(root, embedder, truth_cells)
    table = pd.read_parquet(root / "out" / "windows.parquet")
    first = table.iloc[0]   # the cluster window: rows 2..33, columns 2..33 holds cells 1-3, not 4
    assert first["kind"] == "cluster" and (first["y0"], first["x0"]) == (0, 2)
    assert (first["n_cells"], first["contacts"], first["ctc_leukocyte_contacts"]) == (3, 2, 1.0)
    assert (first["seg_n_cells"], first["seg_contacts"], first["seg_ctc_leukocyte_contacts"]) == (2, 1, 1.0)
    assert first["target_source"] == "truth" and list(table["kind"]) == ["cluster"] + ["random"] * 3
    assert first[["zcell_0", "zcell_1", "zcell_2"]].tolist() == [0.5, 1.5, 2.5]   # mean latent of cells 102, 103
    pixels = np.asarray(zarr.open_array(str(root / "out" / "windows.zarr"), mode="r"))
    assert pixels.shape == (4, 2, 16, 16) and pixels.dtype == np.uint8 and pixels[0].max() > 0
    totals = json.loads((root / "out" / "contacts.json").read_text())
    assert (totals["contacts"], totals["ctc_leukocyte_contacts"], totals["n_ctc"]) == (1, 1.0, 1)
    assert (totals["truth_contacts"], totals["truth_ctc_leukocyte_contacts"], totals["truth_n_cells"]) == (2, 1.0, 4)
    assert result["windows"] == 4


def test_without_truth_the_target_is_the_segmentation_count_and_runs_repeat(tmp_path, embedder):
    root, _ = _slide(tmp_path / "S1")
    _run(root, embedder)
    a = pd.read_parquet(root / "out" / "windows.parquet")
    assert set(a["target_source"]) == {"segmentation"}
    assert (a["contacts"] == a["seg_contacts"]).all() and a["contacts"].iloc[0] == 1
    _run(root, embedder)
    pd.testing.assert_frame_equal(a, pd.read_parquet(root / "out" / "windows.parquet"))
    with pytest.raises(ValueError, match="block-averaged"):
        _run(root, embedder, window_size=24)


def test_cohort_fit_predicts_every_window_out_of_fold(tmp_path, embedder):
    dirs = []
    for s in range(4):
        root, truth_cells = _slide(tmp_path / f"S{s}")
        _run(root, embedder, truth_cells, random_windows=5)
        dirs.append(str(root / "out"))
    table, pixels = read_windows(dirs)
    patients = np.repeat(["P0", "P1", "P2", "P3"], 6)
    pred, metrics = fit_and_evaluate(table, pixels, patients, folds=2, epochs=2, bootstrap=100)
    assert len(pred) == 24 and metrics["folds"] == 2 and metrics["all"]["n_patients"] == 4
    for p in ("P0", "P1", "P2", "P3"):  # a patient's windows all in one held-out fold
        assert pred.loc[pred["patient"] == p, "fold"].nunique() == 1
    assert {"mean", "latent_ridge", "cnn", "segmentation_count"} <= set(metrics["all"])
    assert np.isfinite(pred[["pred_mean", "pred_latent", "pred_cnn"]].to_numpy()).all()
