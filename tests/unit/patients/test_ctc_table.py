"""The cohort CTC table (hemoprofile.patients.ctc_table): counts per slide and patient, reviewed vs raw,
and the Garwood interval."""

import pandas as pd
import pytest
from helpers.review_slides import write_review_slide

from hemoprofile.classify.candidates import candidate_table
from hemoprofile.io.ctc_review import write_candidates
from hemoprofile.patients.ctc_table import COLUMNS, ctc_cohort_table


def test_reviewed_slides_count_reviewed_ctcs_and_patients_pool_their_slides(tmp_path):
    files = {}
    for slide, n_ctc in (("A1", 4), ("A2", 2), ("B1", 0)):
        paths = write_review_slide(tmp_path, slide=slide, n=250, n_ctc=n_ctc, patches=False)
        out = tmp_path / slide / "candidates.parquet"
        write_candidates(candidate_table(slide, paths["cells"], paths["predictions"], 0.5), out)
        files[slide] = {"cells": paths["cells"], "candidates": str(out)}
        if slide == "A1":
            review = tmp_path / "A1.csv"
            pd.DataFrame({"slide": "A1", "cell_id": paths["ctc_ids"][:3],
                          "decision": ["CTC", "not_CTC", "unsure"]}).to_csv(review, index=False)
            files[slide]["review"] = str(review)
    samples = pd.DataFrame({"slide": ["A1", "A2", "B1"], "patient": ["PA", "PA", "PB"],
                            "condition": ["disease", "disease", "control"]})
    table = ctc_cohort_table(samples, files)
    assert list(table.columns) == list(COLUMNS)
    s = table[table["level"] == "slide"].set_index("slide")
    assert s.loc["A1", ["candidates", "reviewed_ctc", "unsure", "unreviewed", "ctc_count"]].tolist() == [4, 1, 1, 1, 1]
    assert s.loc["A2", ["candidates", "reviewed_slides", "ctc_count"]].tolist() == [2, 0, 2]
    p = table[table["level"] == "patient"].set_index("patient")
    assert p.loc["PA", ["n_cells", "candidates", "ctc_count", "reviewed_slides"]].tolist() == [500, 6, 3, 1]
    assert p.loc["PA", "ctc_per_million"] == pytest.approx(3 / 497 * 1e6)
    assert p.loc["PA", "ctc_per_million_low"] < p.loc["PA", "ctc_per_million"] < p.loc["PA", "ctc_per_million_high"]
    # none found: the rate is 0 and the upper end is 3.689 per 250 cells
    assert p.loc["PB", "ctc_per_million"] == 0 and p.loc["PB", "ctc_per_million_low"] == 0
    assert p.loc["PB", "ctc_per_million_high"] == pytest.approx(3.6889 / 250 * 1e6, rel=1e-3)
