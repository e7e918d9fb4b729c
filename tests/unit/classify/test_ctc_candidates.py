"""CTC candidates of a slide (hemoprofile.classify.candidates): who passes, in what order, with which
columns, read in batches."""

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers.review_slides import write_review_slide

from hemoprofile.classify import candidates as cand
from hemoprofile.io.ctc_review import candidates_metadata, read_candidates, write_candidates
from hemoprofile.classify.calibration import fit_calibration


def test_candidates_are_the_cells_over_the_threshold_ranked_by_score(tmp_path, monkeypatch):
    monkeypatch.setattr(cand, "BATCH_ROWS", 50)  # several batches, not aligned with the row groups
    paths = write_review_slide(tmp_path, n=400, n_ctc=6, patches=False)
    calibration = fit_calibration(np.array([0.1, 0.2, 0.9, 0.95]), np.array([0, 0, 1, 1]))
    table = cand.candidate_table("S1", paths["cells"], paths["predictions"], 0.5, clusters_path=paths["clusters"],
                                 calibration=calibration)
    assert table["cell_id"].tolist() == paths["ctc_ids"]  # scores descend with the cell id
    assert table["rank"].tolist() == list(range(1, 7))
    assert np.all(np.diff(table["p_ctc_CTC"]) <= 0)
    assert table["row"].tolist() == [i - 1 for i in paths["ctc_ids"]]
    assert table["gate_ctc"].all() and set(table["gate_label"]) == {"CTC"}
    assert table.loc[0, "cluster_id"] == 0 and table.loc[0, "cluster_size"] == 3
    assert (table.loc[1:, "cluster_id"] == -1).all() and (table.loc[1:, "cluster_size"] == 1).all()
    assert table["p_ctc_calibrated"].between(0, 1).all()
    assert (table["mean_CK"] == 900).all() and "area_um2" in table

    out = tmp_path / "candidates.parquet"
    write_candidates(table, out, threshold=0.5, source="config")
    assert candidates_metadata(out) == {"threshold": 0.5, "source": "config"}
    assert read_candidates(out)["cell_id"].tolist() == paths["ctc_ids"]


def test_lower_threshold_adds_leukocytes_and_no_calibration_gives_nan(tmp_path):
    paths = write_review_slide(tmp_path, n=200, n_ctc=3, patches=False)
    scores = pq.read_table(paths["predictions"], columns=["p_ctc_CTC"]).column(0).to_numpy()
    table = cand.candidate_table("S1", paths["cells"], paths["predictions"], 0.2)
    assert len(table) == int((scores >= 0.2).sum()) > 3
    assert table["p_ctc_calibrated"].isna().all()
    empty = cand.candidate_table("S1", paths["cells"], paths["predictions"], 1.5)
    assert len(empty) == 0 and "cluster_size" in empty


def test_mismatched_cells_and_predictions_name_the_file(tmp_path):
    a = write_review_slide(tmp_path / "a", n=100, n_ctc=2, patches=False)
    b = write_review_slide(tmp_path / "b", n=100, n_ctc=5, patches=False)  # other CTC rows, other ids there
    table = pq.read_table(b["cells"]).to_pandas()
    table["cell_id"] += 1000
    table.to_parquet(b["cells"])
    with pytest.raises(ValueError, match="cells.parquet: cell ids differ"):
        cand.candidate_table("S1", b["cells"], a["predictions"], 0.5)
