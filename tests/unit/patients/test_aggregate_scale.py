"""Aggregation at cohort scale (issue 16 §5): 20 slides of 3 M cells aggregate in bounded memory, and
the helpers that keep it bounded (categorical cell types, the columns they need) agree with the plain ones."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from helpers.cell_tables import write_cell_tables

from hemoprofile.patients.aggregate import aggregate_patients, patient_row
from hemoprofile.vocabulary import LEUKOCYTE_TYPES, cell_type_columns, cell_types, cell_types_categorical

TASKS = {"immune6": list(LEUKOCYTE_TYPES), "ctc": ["leukocyte", "CTC"]}
SRC = Path(__file__).resolve().parents[3] / "src"

#: The child: aggregate 20 slides (10 patients x 2) that all point at the same three tables, then print
#: the table's counts and the child's own peak RSS (so earlier children of the test run do not count).
CHILD = """
import json, resource, sys
import pandas as pd
from hemoprofile.patients.aggregate import aggregate_patients
folder, out = sys.argv[1], sys.argv[2]
slides = [f"S{i:02d}" for i in range(20)]
files = {s: {k: f"{folder}/{k}.parquet" for k in ("cells", "predictions", "embedding")} for s in slides}
samples = pd.DataFrame({"slide": slides, "patient": [f"P{i // 2:02d}" for i in range(20)], "condition": "x"})
table, notes = aggregate_patients(samples, files)
table.to_parquet(out)
print(json.dumps({"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "notes": notes}))
"""


@pytest.mark.slow
def test_twenty_slides_of_three_million_cells_aggregate_in_under_4_gb(tmp_path):
    n = 3_000_000
    paths = write_cell_tables(tmp_path / "tables", "S", n, tasks=TASKS, cell_pairs=True, chunk_rows=262144)
    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "tables"), str(tmp_path / "patients.parquet")],
                          capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["rss_mb"] < 4096, f"peak RSS {result['rss_mb']:.0f} MB"

    # every patient has the same two copies of one table: twice the table's own counts
    pred = pq.read_table(paths["predictions"], columns=["pred_immune6", "pred_ctc"]).to_pandas()
    types = pd.Series(np.where(pred["pred_ctc"] == "CTC", "CTC", pred["pred_immune6"])).value_counts()
    cells = pq.read_table(paths["cells"], columns=["cluster_id", "area_um2"]).to_pandas()
    table = pd.read_parquet(tmp_path / "patients.parquet")
    assert len(table) == 10 and (table["n_slides"] == 2).all() and (table["n_cells"] == 2 * n).all()
    for t in (*LEUKOCYTE_TYPES, "CTC"):
        assert (table[f"count_{t}"] == 2 * types[t]).all()
    assert (table["n_leukocytes"] == 2 * (n - types["CTC"])).all()
    sizes = cells.loc[cells["cluster_id"] >= 0, "cluster_id"].value_counts()
    assert (table["cell_clusters"] == 2 * int((sizes >= 2).sum())).all()
    is_ctc = (pred["pred_ctc"] == "CTC").to_numpy()
    assert table["area_um2__CTC"].iloc[0] == pytest.approx(float(np.median(cells["area_um2"].to_numpy()[is_ctc])))
    assert [c for c in table.columns if c.startswith("frac_latent_")] == [f"frac_latent_{k}" for k in range(5)]
    assert any("immune6" in note for note in result["notes"])


def test_cell_type_columns_name_only_what_cell_types_reads():
    names = ["cell_id", "pred_lineage", "pred_immune6", "p_ctc_CTC", "pred_ctc", "model_ctc"]
    assert cell_type_columns(names) == ["pred_immune6", "pred_ctc"]
    assert cell_type_columns(["pred_ctc"]) == ["pred_ctc"]
    assert cell_type_columns(["cell_id", "p_x"]) == []


@pytest.mark.parametrize("categorical", [False, True])
def test_categorical_cell_types_equal_the_plain_ones(categorical):
    rng = np.random.default_rng(3)
    immune = list(np.array(["T", "B", "NK", "granulocyte"], dtype=object)[rng.integers(0, 4, 200)])
    immune[5] = None  # a missing prediction reads "None", as the object path gives it
    ctc = np.where(rng.random(200) < 0.1, "CTC", "leukocyte")
    pred = pd.DataFrame({"pred_immune5": immune, "pred_ctc": ctc})
    if categorical:
        pred = pred.astype("category")
    types, task = cell_types_categorical(pred)
    plain, plain_task = cell_types(pd.DataFrame({"pred_immune5": immune, "pred_ctc": ctc}))
    assert task == plain_task == "immune5"
    assert isinstance(types, pd.Categorical) and list(types) == list(plain)
    assert list(types)[5] == ("CTC" if ctc[5] == "CTC" else "None")
    only_ctc, task = cell_types_categorical(pd.DataFrame({"pred_ctc": ["CTC", "leukocyte"]}))
    assert list(only_ctc) == ["CTC", "leukocyte"] and task == "ctc"
    with pytest.raises(ValueError, match="no cell-type column"):
        cell_types_categorical(pd.DataFrame({"p_x": [0.1]}))


def test_patient_row_is_the_same_for_string_and_categorical_cell_types():
    rng = np.random.default_rng(4)
    n = 500
    cells = pd.DataFrame({"cell_type": np.array(["T", "B", "CTC"], dtype=object)[rng.integers(0, 3, n)],
                          "cluster_id": np.where(rng.random(n) < 0.4, rng.integers(0, 60, n), -1),
                          "slide": np.array(["S1", "S2"], dtype=object)[rng.integers(0, 2, n)],
                          "latent_cluster": rng.integers(0, 3, n),
                          "area_um2": rng.normal(50, 5, n).astype(np.float32)})
    plain = patient_row(cells, ["T", "B", "NK", "CTC"], 3, ["area_um2"])
    as_categories = cells.assign(cell_type=cells["cell_type"].astype("category"),
                                 slide=cells["slide"].astype("category"))
    assert patient_row(as_categories, ["T", "B", "NK", "CTC"], 3, ["area_um2"]) == pytest.approx(plain, nan_ok=True)
    assert plain["count_NK"] == 0 and np.isnan(plain["area_um2__NK"]) and plain["ctc_leukocyte_clusters"] > 0


def test_a_patients_cells_are_read_without_the_other_patients(tmp_path, monkeypatch):
    """Each slide's cells are read once, patient by patient (never the cohort at once)."""
    import hemoprofile.patients.aggregate as aggregate

    files = {s: {k: str(v) for k, v in write_cell_tables(tmp_path / s, s, 50, tasks=TASKS, seed=i).items()}
             for i, s in enumerate(["A1", "A2", "B1"])}
    samples = pd.DataFrame({"slide": ["A1", "A2", "B1"], "patient": ["A", "A", "B"], "condition": "x"})
    read, rows = [], []
    real_slide, real_row = aggregate._slide_cells, aggregate.patient_row
    monkeypatch.setattr(aggregate, "_slide_cells", lambda slide, *a: read.append(slide) or real_slide(slide, *a))
    monkeypatch.setattr(aggregate, "patient_row", lambda cells, *a: rows.append(len(cells)) or real_row(cells, *a))
    table, _ = aggregate_patients(samples, files)
    assert read == ["A1", "A2", "B1"] and rows == [100, 50]
    assert table["n_cells"].tolist() == [100, 50]
