"""Rare-event figures against truth: objects matched to true cells, recall counted over true CTCs (found by
segmentation or not), false candidates per million non-CTC objects, by subgroup and by source."""

import numpy as np
import pandas as pd
import pytest

from hemoprofile.classify.rare_events import (BACKGROUND, false_by_source, objects_with_truth, recall_by_group,
                                              rule_figures)
from hemoprofile.io import create_ome_zarr_labels


@pytest.fixture()
def slide(tmp_path):
    """A 40 x 40 truth image: CTC 1 (EMT), CTC 2 (in a cluster, never segmented), a leukocyte 3, CK debris 4,
    a dim-CD45 granulocyte 5; five objects: on 1, on 3, on 4, on 5 and one on background."""
    labels = np.zeros((40, 40), np.uint32)
    for cell_id, (y, x) in {1: (2, 2), 2: (2, 20), 3: (20, 2), 4: (20, 20), 5: (30, 30)}.items():
        labels[y:y + 6, x:x + 6] = cell_id
    create_ome_zarr_labels(tmp_path / "truth_labels.zarr", labels.shape, tile_size=16)[:] = labels
    truth = pd.DataFrame({"slide": "s", "cell_id": [1, 2, 3, 4, 5],
                          "cell_type": ["CTC", "CTC", "CD4_T", "CK_debris", "granulocyte"],
                          "lookalike": ["", "", "", "CK_debris", "dim_CD45"],
                          "ctc_subtype": ["EMT", "CK_high", "", "", ""], "cluster_id": [-1, 7, -1, -1, -1]})
    cells = pd.DataFrame({"slide": "s", "cell_id": [10, 11, 12, 13, 14],
                          "y": [4.0, 22.0, 22.0, 32.0, 36.0], "x": [4.0, 4.0, 22.0, 32.0, 2.0]})
    return objects_with_truth(cells, tmp_path / "truth_labels.zarr", truth), truth


def test_objects_take_the_true_cell_and_its_source(slide):
    objects, _ = slide
    assert objects["truth_id"].tolist() == [1, 3, 4, 5, 0]
    assert objects["is_ctc"].tolist() == [True, False, False, False, False]
    assert objects["source"].tolist() == ["CTC", "CD4_T", "CK_debris", "dim_CD45", BACKGROUND]
    assert objects["cell_id"].tolist() == [10, 11, 12, 13, 14]  # the cells' own columns are kept


def test_recall_counts_true_ctcs_and_false_rate_counts_non_ctc_objects(slide):
    objects, truth = slide
    ctcs = truth[truth["cell_type"] == "CTC"]
    flagged = np.array([True, False, True, True, True])
    r = rule_figures(objects, flagged, ctcs)
    assert (r["ctc"], r["ctc_segmented"], r["found"]) == (2, 1, 1)  # CTC 2 was never segmented
    assert r["recall"] == 0.5 and r["recall_ci95"][0] < 0.5 < r["recall_ci95"][1]
    assert (r["candidates"], r["false"], r["objects_not_ctc"]) == (4, 3, 4)
    assert r["false_per_million"] == pytest.approx(750_000)
    assert r["false_per_million_ci95"][0] < 750_000 < r["false_per_million_ci95"][1]
    nothing = rule_figures(objects, np.zeros(5, bool), ctcs)
    assert (nothing["found"], nothing["false"], nothing["false_per_million"]) == (0, 0, 0.0)
    with pytest.raises(ValueError, match="4 flags for 5 objects"):
        rule_figures(objects, flagged[:4], ctcs)


def test_a_ctc_on_another_slide_is_not_found_by_the_same_id(slide):
    objects, truth = slide
    other = pd.DataFrame({"slide": ["t"], "cell_id": [1]})
    assert rule_figures(objects, np.ones(5, bool), other)["found"] == 0


def test_recall_by_group_and_false_by_source(slide):
    objects, truth = slide
    ctcs = truth[truth["cell_type"] == "CTC"].reset_index(drop=True)
    flagged = np.array([True, False, True, True, True])
    groups = recall_by_group(objects, flagged, ctcs, {"EMT": ctcs["ctc_subtype"] == "EMT",
                                                      "in a cluster": ctcs["cluster_id"] >= 0})
    assert groups[["group", "ctc", "found", "recall"]].values.tolist() == [["EMT", 1, 1, 1.0],
                                                                           ["in a cluster", 1, 0, 0.0]]
    counts = false_by_source(objects, flagged)
    assert counts.to_dict() == {"CK_debris": 1, "dim_CD45": 1, BACKGROUND: 1}


def test_truth_without_needed_columns_is_refused(slide, tmp_path):
    objects, truth = slide
    with pytest.raises(ValueError, match="lookalike"):
        objects_with_truth(objects[["slide", "cell_id", "y", "x"]], tmp_path / "truth_labels.zarr",
                           truth.drop(columns="lookalike"))
