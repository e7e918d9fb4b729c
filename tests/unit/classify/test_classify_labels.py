"""Training labels: task classes and label mapping, and labels from the synthetic truth (the truth cell under
each centroid)."""

import numpy as np
import pandas as pd
import pytest

from hemoprofile.io import create_ome_zarr_labels
from hemoprofile.classify.labels import SlideInput, slide_raw_labels
from hemoprofile.io.truth import match_truth, truth_cell_types
from hemoprofile.vocabulary import NOT_A_CELL, map_labels, task_classes


def test_task_classes_and_mapping():
    assert task_classes("lineage") == ["lymphoid", "myeloid"]
    assert task_classes("immune6") == ["CD4_T", "CD8_T", "B", "NK", "granulocyte", "monocyte"]
    assert task_classes("ctc") == ["leukocyte", "CTC"]
    assert list(map_labels(["CD4_T", "CD8_T", "NK"], "immune5")) == ["T", "T", "NK"]
    # a gate label that already is a class passes; others (and CTCs in leukocyte tasks) drop out
    assert list(map_labels(["CTC", "leukocyte", "other", None], "ctc")) == ["CTC", "leukocyte", None, None]
    assert list(map_labels(["CTC", "monocyte"], "immune6")) == [None, "monocyte"]
    assert list(map_labels(["lymphocyte", "neutrophil", "platelet"], "lineage")) == ["lymphoid", "myeloid", None]
    assert task_classes("collection", ["b", "a", "b"]) == ["a", "b"]
    with pytest.raises(ValueError, match="unknown task"):
        task_classes("nope")


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
    got = match_truth(ys, xs, tmp_path / "truth_labels.zarr")
    assert got.tolist() == [5, 9, 0, 0, 0, 9, 0]
    rng = np.random.default_rng(0)  # chunk-wise reads agree with indexing the whole image
    ys, xs = rng.uniform(0, 39.4, 200), rng.uniform(0, 39.4, 200)
    direct = full[np.floor(ys + 0.5).astype(int), np.floor(xs + 0.5).astype(int)]
    assert np.array_equal(match_truth(ys, xs, tmp_path / "truth_labels.zarr"), direct)


def _two_cell_truth(tmp_path):
    """A 20 x 20 truth label image with cells 1 (top left) and 2 (centre) at ``tmp_path / "t.zarr"``."""
    lab = create_ome_zarr_labels(tmp_path / "t.zarr", (20, 20), tile_size=8)
    full = np.zeros((20, 20), np.uint32)
    full[0:5, 0:5] = 1
    full[10:15, 10:15] = 2
    lab[:] = full
    return tmp_path / "t.zarr"


def test_truth_cell_types(tmp_path):
    _two_cell_truth(tmp_path)
    truth = pd.DataFrame({"slide": ["S", "S", "T"], "cell_id": [1, 2, 1], "cell_type": ["NK", "CTC", "B"]})
    cells = pd.DataFrame({"y": [2.0, 12.0, 18.0], "x": [2.0, 12.0, 2.0]})
    assert list(truth_cell_types(cells, tmp_path / "t.zarr", truth, "S")) == ["NK", "CTC", None]


def test_objects_on_no_true_cell_are_ctc_negatives_and_outside_other_tasks(tmp_path):
    truth_labels = _two_cell_truth(tmp_path)
    truth = pd.DataFrame({"slide": ["S", "S"], "cell_id": [1, 2], "cell_type": ["NK", "CTC"]})
    cells = pd.DataFrame({"y": [2.0, 12.0, 18.0], "x": [2.0, 12.0, 2.0]})  # the third lies on background
    raw = slide_raw_labels(SlideInput("S", "cells.parquet", "patches.zarr", truth_labels=str(truth_labels)),
                           cells, "truth", truth_cells=truth)
    assert list(raw) == ["NK", "CTC", NOT_A_CELL]
    assert list(map_labels(raw, "ctc")) == ["leukocyte", "CTC", "leukocyte"]
    for task in ("lineage", "immune5", "immune6"):
        assert map_labels(raw, task)[2] is None
