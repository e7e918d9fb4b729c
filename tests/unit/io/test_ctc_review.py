"""Review CSVs read back (hemoprofile.io.ctc_review): accepted spellings and clear errors."""

import pandas as pd
import pytest

from hemoprofile.io.ctc_review import read_review, review_counts


def _csv(tmp_path, text):
    path = tmp_path / "S1.csv"
    path.write_text(text)
    return path


def test_a_page_export_reads_back(tmp_path):
    path = _csv(tmp_path, "slide,cell_id,decision,note,reviewer,time\n"
                          'S1,10,CTC,"bright CK, round",ana,2026-12-05T08:00:00Z\nS1,20,not_CTC,,ana,\n'
                          "S1,30,unsure,,ana,\nS1,40,Not CTC,,ana,\n")
    review = read_review(path, "S1", cell_ids=range(1, 100))
    assert review["decision"].tolist() == ["CTC", "not_CTC", "unsure", "not_CTC"]
    assert review.loc[0, "note"] == "bright CK, round"
    counts = review_counts(review, [10, 20, 50])
    assert counts == {"reviewed": 4, "reviewed_ctc": 1, "reviewed_not_ctc": 2, "unsure": 1, "unreviewed": 1,
                      "reviewed_outside": 2}


@pytest.mark.parametrize("text, message", [
    ("slide,cell_id,decision\nS1,10,maybe\n", r"S1.csv: unknown decision\(s\) \['maybe'\] on line\(s\) 2"),
    ("slide,cell_id,decision\nS1,999,CTC\n", r"S1.csv: unknown cell id\(s\) \[999\]"),
    ("slide,cell_id,decision\nS2,10,CTC\n", r"S1.csv: rows 2 are about slide\(s\) \['S2'\]"),
    ("slide,cell_id\nS1,10\n", r"S1.csv: missing column\(s\) \['decision'\]"),
    ("slide,cell_id,decision\nS1,ten,CTC\n", r"S1.csv: cell_id is not an integer"),
    ("slide,cell_id,decision\nS1,10,CTC\nS1,10,not_CTC\n", r"S1.csv: cell\(s\) \[10\] reviewed more than once"),
])
def test_malformed_reviews_name_the_file_and_the_line(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        read_review(_csv(tmp_path, text), "S1", cell_ids=range(1, 100))


def test_no_review_counts_every_candidate_unreviewed():
    assert review_counts(None, [1, 2])["unreviewed"] == 2
    assert review_counts(pd.DataFrame({"cell_id": [], "decision": []}), [1])["reviewed"] == 0
