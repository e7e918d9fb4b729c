"""hemoprofile.embed.conditions: latent clusters by condition. A planted condition-enriched cluster is found
(BH-adjusted) and a null one is not; a cluster carried by a single patient is caught by the patient counts
and the patient-level test; the cohort table from embedding.parquet files (medoids, unknown conditions
counted but not tested, the cVAE's metadata)."""

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from hemoprofile.embed.conditions import (
    benjamini_hochberg,
    cell_condition_table,
    cluster_test,
    clusters_by_condition,
)
from hemoprofile.embed.sample import EmbedSlide
from hemoprofile.embed.slide import embedding_schema


def _cohort(seed=0, n_patients=6, cells=400, planted=0.10, single_patient=False):
    """Cells of ``n_patients`` wild-type and ``n_patients`` mutant patients in 4 clusters: cluster 0 is
    planted (``planted`` of mutant cells, a tenth of that of wild-type cells), clusters 1-2 are null (same
    share in both), cluster 3 (with ``single_patient``) holds 30 % of one mutant patient's cells only."""
    rng = np.random.default_rng(seed)
    clusters, conditions, patients = [], [], []
    for cond in ("wild_type", "mutant"):
        for p in range(n_patients):
            name = f"{cond}_{p}"
            p0 = planted if cond == "mutant" else planted / 10
            probs = np.array([p0, 0.45, 0.45 - p0, 0.0])
            if single_patient and name == "mutant_0":
                probs = np.array([p0, 0.3, 0.4 - p0, 0.3])
            probs = probs / probs.sum()
            clusters.append(rng.choice(4, cells, p=probs))
            conditions += [cond] * cells
            patients += [name] * cells
    return np.concatenate(clusters), np.array(conditions), np.array(patients)


def test_a_planted_enriched_cluster_is_found_and_a_null_one_is_not():
    cl, cond, pat = _cohort()
    t = cell_condition_table(cl, cond, pat, k=4).set_index("cluster")
    assert set(t["test"]) == {"fisher"}
    assert t.loc[0, "p_adjusted"] < 1e-6 and t.loc[0, "enriched_in"] == "mutant"
    assert t.loc[0, "share_mutant"] == pytest.approx(10 / 11, abs=0.03)   # normalised by each condition's cells
    assert t.loc[0, "log2_enrichment_mutant"] > 0.5 and t.loc[0, "log2_enrichment_wild_type"] < 0
    assert t.loc[0, "patient_supported"] and t.loc[0, "p_patients_adjusted"] < 0.05
    assert t.loc[0, "patients_mutant"] == 6  # every mutant patient carries it (>= 1 % of its cells)
    # a null cluster: same share in both conditions
    assert t.loc[1, "p_adjusted"] > 0.05 and t.loc[1, "enriched_in"] == "" and not t.loc[1, "patient_supported"]
    assert t.loc[3, "n_cells"] == 0 and t.loc[3, "test"] == "fisher" and t.loc[3, "p_value"] == 1.0


def test_null_clusters_are_rarely_called_over_many_cohorts():
    calls = 0
    for seed in range(20):
        cl, cond, pat = _cohort(seed=seed, planted=0.0)
        t = cell_condition_table(cl, cond, pat, k=4)
        calls += int((t["enriched_in"] != "").sum())
    assert calls <= 2  # 20 cohorts x 2 null clusters at BH 0.05


def test_a_cluster_carried_by_a_single_patient_is_caught():
    cl, cond, pat = _cohort(single_patient=True)
    t = cell_condition_table(cl, cond, pat, k=4).set_index("cluster")
    row = t.loc[3]
    # on cells alone it looks strongly mutant-enriched ...
    assert row["p_adjusted"] < 1e-10 and row["enriched_in"] == "mutant" and row["share_mutant"] == 1.0
    # ... but one patient carries it, holds all of it, and the patient-level test does not support it
    assert row["patients_mutant"] == 1 and row["patients_wild_type"] == 0
    assert row["top_patient"] == "mutant_0" and row["top_patient_share"] == 1.0
    assert row["p_patients_adjusted"] > 0.05 and not row["patient_supported"]


def test_more_than_two_conditions_use_chi_square_and_unknown_is_counted_not_tested():
    cl = np.array([0] * 30 + [1] * 30 + [0] * 10 + [1] * 50 + [0] * 20 + [1] * 40 + [0] * 40)
    cond = np.array(["a"] * 60 + ["b"] * 60 + ["c"] * 60 + ["unknown"] * 40)
    pat = np.array(["pa"] * 60 + ["pb"] * 60 + ["pc"] * 60 + ["pu"] * 40)
    t = cell_condition_table(cl, cond, pat)
    assert set(t["test"]) == {"chi2"}
    assert "n_unknown" in t and t["n_unknown"].tolist() == [40, 0]
    assert "share_unknown" not in t and t["patients_unknown"].tolist() == [1, 0]
    assert t["n_cells"].tolist() == [100, 120]
    assert np.allclose(t[["share_a", "share_b", "share_c"]].sum(1), 1.0)


def test_cluster_test_and_bh():
    assert cluster_test([10, 0], [10, 10])[0] == "fisher"
    assert cluster_test([5], [10]) == ("", pytest.approx(float("nan"), nan_ok=True))
    assert cluster_test([0, 0, 0], [5, 5, 5]) == ("chi2", 1.0)
    assert benjamini_hochberg([0.01, 0.02, 0.03, 0.5]).tolist() == pytest.approx([0.04, 0.04, 0.04, 0.5])


def _write_embedding(path, slide, z, clusters, meta):
    schema = embedding_schema(z.shape[1], meta)
    frame = pd.DataFrame({"slide": slide, "cell_id": np.arange(len(z), dtype=np.int64) + 1})
    for i in range(z.shape[1]):
        frame[f"z_{i}"] = z[:, i].astype(np.float32)
    frame["map_x"] = frame["z_0"]
    frame["map_y"] = frame["z_1"]
    frame["cluster"] = clusters.astype(np.int32)
    pq.write_table(__import__("pyarrow").Table.from_pandas(frame, schema=schema, preserve_index=False), path)


@pytest.mark.parametrize("condition_on", ["none", "condition"])
def test_cohort_table_from_embeddings_with_medoids(tmp_path, condition_on):
    rng = np.random.default_rng(3)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    sheet = {"S1": ("P1", "wt"), "S2": ("P2", "wt"), "S3": ("P3", "mut"), "S4": ("P4", "mut"), "S5": ("P5", "unknown")}
    paths, items = [], []
    for i, (slide, (patient, cond)) in enumerate(sheet.items()):
        cl = rng.integers(0, 2 if cond == "wt" else 3, 60)  # cluster 2 only in mutants (and unknown)
        z = centres[cl] + rng.normal(0, 1, (60, 2))
        z[0] = centres[cl[0]]  # an exact centre cell on every slide
        meta = {"model_id": "m" * 12, "condition_on": condition_on, "k": 4, "clustering": "gmm"}
        paths.append(str(tmp_path / f"{slide}.parquet"))
        _write_embedding(paths[-1], slide, z, cl, meta)
        items.append(EmbedSlide(slide, "", "", patient, cond))
    out = tmp_path / "cohort" / "clusters_by_condition.parquet"
    t = clusters_by_condition(paths, items, out, settings={"medoids": 4})
    back = pd.read_parquet(out)
    assert len(back) == 4 and back["cluster"].tolist() == [0, 1, 2, 3]  # k from the metadata: empty cluster 3
    assert back["n_cells"].sum() == 300 and back.loc[3, "n_cells"] == 0 and len(back.loc[3, "medoid_rows"]) == 0
    assert back.loc[2, "n_wt"] == 0 and back.loc[2, "enriched_in"] == "mut"
    assert back["n_unknown"].sum() == 60
    for c in range(3):
        slides, ids, rows = back.loc[c, "medoid_slides"], back.loc[c, "medoid_cell_ids"], back.loc[c, "medoid_rows"]
        assert len(slides) == 4 and list(ids) == [r + 1 for r in rows]
        # the nearest ones are near the cluster's mean latent vector
        frame = pd.concat([pd.read_parquet(p) for p in paths])
        centre = frame.loc[frame["cluster"] == c, ["z_0", "z_1"]].mean().to_numpy()
        first = frame[(frame["slide"] == slides[0]) & (frame["cell_id"] == ids[0])][["z_0", "z_1"]].to_numpy()[0]
        d_all = np.sqrt(((frame.loc[frame["cluster"] == c, ["z_0", "z_1"]].to_numpy() - centre) ** 2).sum(1))
        assert np.sqrt(((first - centre) ** 2).sum()) == pytest.approx(d_all.min(), abs=1e-5)
    meta = json.loads(pq.read_schema(out).metadata[b"hemoprofile"])
    assert meta["conditions"] == ["mut", "wt"] and meta["condition_on"] == condition_on
    assert meta["patients_per_condition"] == {"mut": 2, "wt": 2} and meta["medoids"] == 4
    assert t["cluster"].tolist() == back["cluster"].tolist()
