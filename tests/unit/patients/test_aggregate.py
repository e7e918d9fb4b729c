"""Patient-level aggregation (hemoprofile.patients.aggregate) on small hand-made slides."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from hemoprofile.patients.aggregate import (
    aggregate_patients,
    column_descriptions,
    write_patient_table,
)
from hemoprofile.vocabulary import cell_type_names, cell_types

TYPES = ["T", "B", "NK", "granulocyte", "monocyte", "CTC"]


def _slide(tmp_path, slide, types, *, cluster_ids=None, areas=None, latent=None):
    """Write cells/predictions/embedding parquet files for one slide whose cells have ``types``."""
    n = len(types)
    cell_id = np.arange(1, n + 1)
    cells = pd.DataFrame({
        "slide": slide, "cell_id": cell_id,
        "cluster_id": np.full(n, -1) if cluster_ids is None else np.asarray(cluster_ids),
        "area_um2": np.full(n, 50.0) if areas is None else np.asarray(areas, float),
        "eccentricity": 0.3, "solidity": 0.95, "nucleus_ratio": 0.5,
        "mean_DAPI": 1000.0, "mean_CK": 10.0, "mean_VIM": 100.0, "mean_CD45": 900.0,
    })
    immune = [t if t != "CTC" else "granulocyte" for t in types]
    predictions = pd.DataFrame({
        "slide": slide, "cell_id": cell_id, "pred_lineage": "lymphoid", "pred_immune5": immune,
        "pred_ctc": ["CTC" if t == "CTC" else "leukocyte" for t in types],
        "p_ctc_CTC": [0.9 if t == "CTC" else 0.1 for t in types],
    })
    embedding = pd.DataFrame({"slide": slide, "cell_id": cell_id,
                              "cluster": np.zeros(n, int) if latent is None else np.asarray(latent)})
    paths = {}
    for name, frame in (("cells", cells), ("predictions", predictions), ("embedding", embedding)):
        paths[name] = str(tmp_path / f"{slide}_{name}.parquet")
        frame.to_parquet(paths[name], index=False)
    return paths


def test_cell_type_names_follow_the_finest_task_and_add_ctc():
    assert cell_type_names(["lineage", "ctc"]) == ["lymphoid", "myeloid", "CTC"]
    assert cell_type_names(["immune5", "immune6"])[:2] == ["CD4_T", "CD8_T"]
    assert cell_type_names(["hierarchical"]) == ["CD4_T", "CD8_T", "B", "NK", "granulocyte", "monocyte"]


def test_predicted_ctc_overrides_the_immune_type():
    types, task = cell_types(pd.DataFrame({"pred_immune5": ["T", "granulocyte"], "pred_ctc": ["leukocyte", "CTC"]}))
    assert task == "immune5" and types.tolist() == ["T", "CTC"]
    with pytest.raises(ValueError, match="no cell-type column"):
        cell_types(pd.DataFrame({"p_x": [0.1]}))


def test_counts_fractions_and_ctcs_pool_a_patients_slides(tmp_path):
    samples = pd.DataFrame({"slide": ["A_1", "A_2", "B_1"], "patient": ["A", "A", "B"],
                            "condition": ["disease", "disease", "control"]})
    files = {
        "A_1": _slide(tmp_path, "A_1", ["T", "T", "B", "CTC"], areas=[40, 60, 70, 300], latent=[0, 1, 1, 2]),
        "A_2": _slide(tmp_path, "A_2", ["granulocyte", "T", "CTC", "CTC"], areas=[80, 50, 200, 250], latent=[0, 0, 2, 2]),
        "B_1": _slide(tmp_path, "B_1", ["granulocyte"] * 3 + ["monocyte"], latent=[1, 1, 1, 1]),
    }
    table, notes = aggregate_patients(samples, files, cell_type_names=TYPES, latent_clusters=3)
    a, b = (table.set_index("patient").loc[p] for p in ("A", "B"))
    assert list(table["patient"]) == ["A", "B"]
    assert (a.n_slides, a.n_cells, a.n_leukocytes) == (2, 8, 5)
    assert (a.count_T, a.count_B, a.count_granulocyte, a.count_CTC) == (3, 1, 1, 3)
    assert a.frac_T == pytest.approx(3 / 5) and a.frac_NK == 0
    assert a.ctc_count == 3 and a.ctc_per_1000 == pytest.approx(600.0)
    assert a.area_um2__T == pytest.approx(50.0)  # median of 40, 60, 50 over both slides
    assert a.area_um2__CTC == pytest.approx(250.0)
    assert np.isnan(a.area_um2__NK)  # no NK cell: NaN, not 0
    assert a.frac_latent_2 == pytest.approx(3 / 8)
    assert b.ctc_count == 0 and np.isnan(b.ctc_in_clusters_fraction)
    assert b.frac_granulocyte == pytest.approx(0.75) and b.condition == "control"
    assert any("immune5" in n for n in notes)
    assert list(table.columns) == [c for c in column_descriptions(TYPES, 3) if c in table.columns]


def test_ctc_leukocyte_clusters_need_a_ctc_and_a_leukocyte(tmp_path):
    # clusters: 0 = CTC + T (mixed), 1 = two T cells (not mixed), 2 = two CTCs (not mixed), 3 = one cell
    types = ["CTC", "T", "T", "T", "CTC", "CTC", "B", "CTC"]
    cluster_ids = [0, 0, 1, 1, 2, 2, 3, -1]
    samples = pd.DataFrame({"slide": ["S"], "patient": ["P"], "condition": ["disease"]})
    table, _ = aggregate_patients(samples, {"S": _slide(tmp_path, "S", types, cluster_ids=cluster_ids)},
                                  cell_type_names=TYPES)
    row = table.iloc[0]
    assert row.cell_clusters == 3  # the single-cell cluster 3 does not count
    assert row.ctc_leukocyte_clusters == 1
    assert row.ctc_in_clusters_fraction == pytest.approx(1 / 4)


def test_a_slide_without_cells_is_counted_and_noted(tmp_path):
    samples = pd.DataFrame({"slide": ["S1", "S2"], "patient": ["P", "P"], "condition": ["control"] * 2})
    files = {"S1": _slide(tmp_path, "S1", ["T", "B"]), "S2": _slide(tmp_path, "S2", [])}
    table, notes = aggregate_patients(samples, files, cell_type_names=TYPES, latent_clusters=1)
    assert table.iloc[0].n_slides == 2 and table.iloc[0].n_cells == 2
    assert any("S2: no cells" in n for n in notes)


def test_mismatched_predictions_name_the_file(tmp_path):
    files = _slide(tmp_path, "S", ["T", "B", "NK"])
    pd.read_parquet(files["predictions"]).iloc[:2].to_parquet(files["predictions"], index=False)
    samples = pd.DataFrame({"slide": ["S"], "patient": ["P"], "condition": ["control"]})
    with pytest.raises(ValueError, match=r"S_predictions\.parquet has 2 rows"):
        aggregate_patients(samples, {"S": files}, cell_type_names=TYPES)


def test_slides_of_one_patient_must_agree_on_the_condition(tmp_path):
    samples = pd.DataFrame({"slide": ["S1", "S2"], "patient": ["P", "P"], "condition": ["control", "disease"]})
    files = {s: _slide(tmp_path, s, ["T"]) for s in ("S1", "S2")}
    with pytest.raises(ValueError, match="patient P: slides disagree"):
        aggregate_patients(samples, files, cell_type_names=TYPES)


def test_written_table_documents_every_column(tmp_path):
    samples = pd.DataFrame({"slide": ["S"], "patient": ["P"], "condition": ["control"]})
    table, _ = aggregate_patients(samples, {"S": _slide(tmp_path, "S", ["T", "CTC"])}, cell_type_names=TYPES,
                                  latent_clusters=1)
    docs = column_descriptions(TYPES, 1)
    write_patient_table(table, docs, tmp_path / "patients.parquet", tmp_path / "columns.tsv")
    schema = pq.read_schema(tmp_path / "patients.parquet")
    assert all(schema.field(c).metadata[b"description"].decode() == docs[c] for c in table.columns)
    tsv = pd.read_csv(tmp_path / "columns.tsv", sep="\t")
    assert tsv["column"].tolist() == table.columns.tolist() and tsv["description"].notna().all()
    with pytest.raises(ValueError, match="without a description"):
        write_patient_table(table.assign(extra=1), docs, tmp_path / "x.parquet", tmp_path / "x.tsv")
