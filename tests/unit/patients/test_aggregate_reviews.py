"""Patient aggregation with CTC candidates and a review CSV: the review, not the raw candidates,
decides the CTC count (the round trip of the review page's export)."""

import numpy as np
import pandas as pd
import pytest
from helpers.review_slides import write_review_slide

from hemoprofile.patients.aggregate import aggregate_patients, table_descriptions
from hemoprofile.patients.table import feature_columns
from hemoprofile.classify.candidates import candidate_table
from hemoprofile.io.ctc_review import write_candidates

TYPES = ["T", "granulocyte", "CTC"]


@pytest.fixture
def slide(tmp_path):
    paths = write_review_slide(tmp_path, n=300, n_ctc=5, patches=False)
    table = candidate_table("S1", paths["cells"], paths["predictions"], 0.5)
    paths["candidates"] = str(tmp_path / "S1" / "candidates.parquet")
    write_candidates(table, paths["candidates"], threshold=0.5)
    return paths


def _aggregate(slide, **extra):
    samples = pd.DataFrame({"slide": ["S1"], "patient": ["P1"], "condition": ["disease"]})
    files = {"S1": {"cells": slide["cells"], "predictions": slide["predictions"], **extra}}
    table, notes = aggregate_patients(samples, files, cell_type_names=TYPES)
    return table.iloc[0], notes


def test_review_changes_the_ctc_count(slide, tmp_path):
    before, _ = _aggregate(slide, candidates=slide["candidates"])
    assert before["ctc_count"] == 5 and before["ctc_candidates"] == 5 and before["ctc_reviewed_slides"] == 0
    ids = slide["ctc_ids"]
    review = tmp_path / "S1.csv"
    pd.DataFrame({"slide": "S1", "cell_id": ids[:4], "decision": ["CTC", "CTC", "not_CTC", "unsure"],
                  "note": "", "reviewer": "t", "time": ""}).to_csv(review, index=False)
    after, notes = _aggregate(slide, candidates=slide["candidates"], review=str(review))
    assert after["ctc_count"] == 2 and after["count_CTC"] == 2 and after["ctc_candidates"] == 5
    assert after["ctc_reviewed_slides"] == 1
    assert after["n_leukocytes"] == 298 and after["ctc_per_1000"] == pytest.approx(1000 * 2 / 298)
    # the rejected candidates are counted as leukocytes of their immune type
    assert after["count_T"] + after["count_granulocyte"] == 298
    assert any("S1.csv: 2 CTC, 1 not CTC, 1 unsure" in n and "1 candidate(s) without a decision" in n for n in notes)
    # counts, not features: the patient model does not see them
    table = pd.DataFrame([after])
    assert "ctc_candidates" not in feature_columns(table) and "ctc_reviewed_slides" in table_descriptions(table)


def test_without_candidates_the_classifier_decides(slide):
    row, _ = _aggregate(slide)
    assert row["ctc_count"] == 5 and "ctc_candidates" not in row.index


def test_a_malformed_review_names_its_file(slide, tmp_path):
    review = tmp_path / "S1.csv"
    review.write_text("slide,cell_id,decision\nS1,123456,CTC\n")
    with pytest.raises(ValueError, match=r"S1.csv: unknown cell id\(s\) \[123456\]"):
        _aggregate(slide, candidates=slide["candidates"], review=str(review))
    review.write_text(f"slide,cell_id,decision\nS1,{slide['ctc_ids'][0]},yes\n")
    with pytest.raises(ValueError, match=r"S1.csv: unknown decision\(s\) \['yes'\]"):
        _aggregate(slide, candidates=slide["candidates"], review=str(review))
