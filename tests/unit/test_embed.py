"""hemoprofile.embed and latent_maps: metrics against their definitions, clustering on known blobs,
batch-mixing measures, and train_embedder -> embed_slide -> cohort_figures on tiny written slides
(determinism, keys, consistent map, cVAE conditions, errors naming files)."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from hemoprofile import embed
from hemoprofile.embed import (
    EmbedSlide,
    adjusted_rand_index,
    apply_pca,
    assign_clusters,
    calinski_harabasz_score,
    davies_bouldin_score,
    fit_clustering,
    fit_pca,
    knn_batch_entropy,
    normalized_mutual_info,
    purity,
    silhouette_score,
)

torch.set_num_threads(1)


def blobs(n_per=60, centres=((0, 0, 0), (6, 0, 0), (0, 6, 0)), seed=0, spread=0.5):
    rng = np.random.default_rng(seed)
    z = np.concatenate([rng.normal(c, spread, (n_per, len(c))) for c in centres])
    return z, np.repeat(np.arange(len(centres)), n_per)


# --- metrics against their definitions -----------------------------------------------------------------


def test_silhouette_matches_the_definition():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(40, 3))
    labels = rng.integers(0, 3, 40)
    d = np.sqrt(((z[:, None] - z[None]) ** 2).sum(-1))
    s = []
    for i in range(len(z)):
        own = (labels == labels[i]) & (np.arange(len(z)) != i)
        a = d[i, own].mean() if own.any() else 0.0
        b = min(d[i, labels == k].mean() for k in set(labels) - {labels[i]})
        s.append((b - a) / max(a, b) if own.any() else 0.0)
    assert silhouette_score(z, labels, block=7) == pytest.approx(np.mean(s))


def test_davies_bouldin_and_calinski_harabasz_match_the_definitions():
    z, labels = blobs(20, seed=2, spread=1.5)
    k = 3
    cents = np.stack([z[labels == j].mean(0) for j in range(k)])
    s = np.array([np.linalg.norm(z[labels == j] - cents[j], axis=1).mean() for j in range(k)])
    db = np.mean([max((s[i] + s[j]) / np.linalg.norm(cents[i] - cents[j]) for j in range(k) if j != i) for i in range(k)])
    assert davies_bouldin_score(z, labels) == pytest.approx(db)
    mean = z.mean(0)
    between = sum((labels == j).sum() * ((cents[j] - mean) ** 2).sum() for j in range(k))
    within = sum(((z[labels == j] - cents[j]) ** 2).sum() for j in range(k))
    assert calinski_harabasz_score(z, labels) == pytest.approx(between / within * (len(z) - k) / (k - 1))


def test_label_agreement_known_values():
    # reference values of scikit-learn's documentation examples
    assert adjusted_rand_index([0, 0, 1, 1], [0, 0, 1, 2]) == pytest.approx(0.5714285714)
    assert normalized_mutual_info([0, 0, 1, 1], [0, 0, 1, 2]) == pytest.approx(0.8)
    assert adjusted_rand_index([0, 0, 0, 0], [0, 1, 2, 3]) == pytest.approx(0.0)
    # invariant to renaming clusters; works on strings
    assert adjusted_rand_index(["a", "a", "b", "b"], [5, 5, 2, 2]) == 1.0
    assert normalized_mutual_info(["a", "a", "b", "b"], [5, 5, 2, 2]) == pytest.approx(1.0)
    assert purity(["a", "a", "b", "b", "b"], [0, 0, 0, 1, 1]) == pytest.approx(4 / 5)


def test_batch_mixing_measures():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(400, 2))
    random_batches = rng.integers(0, 4, 400)
    assert knn_batch_entropy(z, random_batches, k=15) > 0.85
    assert abs(silhouette_score(z, random_batches)) < 0.1
    apart = np.repeat(np.arange(4), 100)
    z_apart = z * 0.1 + apart[:, None] * 5.0
    assert knn_batch_entropy(z_apart, apart, k=15) < 0.05
    assert silhouette_score(z_apart, apart) > 0.9
    # within groups: two cell types far apart, batches mixed inside each -> mixed within label
    types = rng.integers(0, 2, 400)
    z_types = z + types[:, None] * 20.0
    assert knn_batch_entropy(z_types, random_batches, k=15, groups=types) > 0.85


# --- clustering --------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["gmm", "kmeans"])
def test_clustering_recovers_blobs_and_bic_picks_k(method):
    z, truth = blobs()
    fit = fit_clustering(z, {"method": method, "k": 0, "k_min": 2, "k_max": 5}, seed=0)
    assert fit["k"] == 3 and fit["selected_by"] == "bic" and set(fit["bic"]) == {2, 3, 4, 5}
    assert adjusted_rand_index(truth, fit["labels"]) == 1.0
    assert np.array_equal(assign_clusters(fit, z), fit["labels"])
    given = fit_clustering(z, {"method": method, "k": 2}, seed=0)
    assert given["k"] == 2 and given["selected_by"] == "config"


def test_pca_is_consistent_and_oriented():
    z, _ = blobs()
    pca = fit_pca(z)
    xy = apply_pca(pca, z)
    assert xy.shape == (len(z), 2)
    assert np.allclose(xy.mean(0), 0, atol=1e-5)
    again = fit_pca(z[::-1])
    assert np.allclose(again["components"], pca["components"])
    assert pca["explained_variance_ratio"][0] >= pca["explained_variance_ratio"][1]


def test_resolve_embed_rejects_unknown_and_bad_values():
    with pytest.raises(ValueError, match="unknown key 'foo'"):
        embed.resolve_embed({"foo": 1})
    with pytest.raises(ValueError, match="unknown key 'epoch'"):
        embed.resolve_embed({"train": {"epoch": 1}})
    with pytest.raises(ValueError, match="condition_on"):
        embed.resolve_embed({"condition_on": "patient"})
    assert embed.resolve_embed({"train": {"epochs": 3}})["train"]["lr"] == embed.DEFAULT_EMBED["train"]["lr"]


# --- stages on tiny written slides -------------------------------------------------------------------


def write_slide(folder, slide, n, gain, seed, size=16):
    """Two cell 'types' (disc, ring) with a per-slide gain on channel 0; cells.parquet with a label column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hemoprofile.extract import PatchWriter, patch_attributes, to_patch_dtype

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    r = np.hypot(yy, xx)
    labels = np.where(rng.random(n) < 0.5, "disc", "ring")
    patches = np.zeros((n, 2, size, size), np.float32)
    for i, lab in enumerate(labels):
        radius = rng.uniform(4, 6)
        shape = (r < radius) if lab == "disc" else ((r < radius) & (r > radius - 2))
        patches[i, 0] = shape * min(1.0, 0.6 * gain)
        patches[i, 1] = (r < radius) * 0.3
    patches += rng.normal(0, 0.02, patches.shape).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    with PatchWriter(folder / "patches.zarr", 2, size, "uint8", patch_attributes(["A", "B"], size, "uint8")) as w:
        w.append(to_patch_dtype(np.clip(patches, 0, 1), "uint8"))
    pq.write_table(pa.table({"slide": [slide] * n, "cell_id": np.arange(1, n + 1, dtype=np.int64) * 3,
                             "label": labels.tolist()}), folder / "cells.parquet")
    return EmbedSlide(slide, str(folder / "cells.parquet"), str(folder / "patches.zarr"), patient=slide,
                      condition="c" + slide[-1], batch="b" + slide[-1])


TINY = {"latent_dim": 3, "widths": [4, 8], "cells_per_slide": 40, "device": "cpu", "mixed_precision": False,
        "train": {"epochs": 2, "batch_size": 16}, "cluster": {"k": 0, "k_min": 2, "k_max": 3, "n_init": 1},
        "metrics": {"sample_size": 200}}


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    root = tmp_path_factory.mktemp("slides")
    return [write_slide(root / "S1", "S1", 50, 1.0, 1), write_slide(root / "S2", "S2", 30, 1.5, 2)]


def test_train_is_deterministic_and_embed_writes_the_contract(slides, tmp_path):
    m1 = embed.train_embedder(slides, tmp_path / "a.pt", tmp_path / "a.json", TINY, seed=4, threads=1, progress=None)
    m2 = embed.train_embedder(slides, tmp_path / "b.pt", tmp_path / "b.json", TINY, seed=4, threads=1, progress=None)
    a, b = embed.load_embedder(tmp_path / "a.pt"), embed.load_embedder(tmp_path / "b.pt")
    for (name, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), name
    assert m1["history"] == m2["history"]
    saved = json.loads((tmp_path / "a.json").read_text())
    assert saved["n_cells"] == 40 + 30 and saved["slides"] == ["S1", "S2"]  # capped at cells_per_slide
    lab = saved["metrics_training_sample"]["label"]  # collection label column found
    assert lab["n_labelled"] == 70 and 0.0 <= lab["purity"] <= 1.0
    assert saved["metrics_training_sample"]["batch"]["n_batches"] == 2

    out = tmp_path / "S2_embedding.parquet"
    summary = embed.embed_slide(tmp_path / "a.pt", slides[1].patches, slides[1].cells, out, device="cpu",
                                batch_size=7, progress=None)
    table = pd.read_parquet(out)
    assert list(table.columns) == ["slide", "cell_id", "z_0", "z_1", "z_2", "map_x", "map_y", "cluster"]
    cells = pd.read_parquet(slides[1].cells)
    assert table["slide"].eq("S2").all() and np.array_equal(table["cell_id"], cells["cell_id"])
    assert table["cluster"].between(0, a.clustering["k"] - 1).all() and summary["n_cells"] == 30
    z = table[["z_0", "z_1", "z_2"]].to_numpy()
    assert np.allclose(table[["map_x", "map_y"]].to_numpy(), apply_pca(a.pca, z), atol=1e-5)
    # the same cells give the same latents through the training sample and through embed_slide
    from hemoprofile.classify import open_patch_array

    array, _, _ = open_patch_array(slides[1].patches)
    assert np.allclose(embed.encode(a.model, np.asarray(array[:5])), z[:5], atol=1e-5)


def test_conditional_vae_and_unknown_condition(slides, tmp_path):
    cfg = {**TINY, "condition_on": "batch", "train": {"epochs": 1, "batch_size": 16}}
    embed.train_embedder(slides, tmp_path / "c.pt", tmp_path / "c.json", cfg, seed=0, progress=None)
    model = embed.load_embedder(tmp_path / "c.pt")
    assert model.categories == ["b1", "b2"] and model.model.spec.n_conditions == 2
    with pytest.raises(ValueError, match="give the slide's batch"):
        embed.embed_slide(model, slides[0].patches, slides[0].cells, tmp_path / "x.parquet", progress=None)
    messages = []
    embed.embed_slide(model, slides[0].patches, slides[0].cells, tmp_path / "x.parquet", category="b9",
                      device="cpu", progress=messages.append)
    assert any("not in the embedder's training set" in m for m in messages)
    import pyarrow.parquet as pq

    meta = json.loads(pq.read_schema(tmp_path / "x.parquet").metadata[b"hemoprofile"])
    assert meta["category"] == "b9" and "average condition" in meta["warning"] and meta["condition_on"] == "batch"


def test_errors_name_the_files(slides, tmp_path):
    embed.train_embedder(slides[:1], tmp_path / "m.pt", tmp_path / "m.json", {**TINY, "train": {"epochs": 1}},
                         progress=None)
    with pytest.raises(ValueError, match="S2/cells.parquet has 30 rows but .*S1/patches.zarr has 50"):
        embed.embed_slide(tmp_path / "m.pt", slides[0].patches, slides[1].cells, tmp_path / "e.parquet", progress=None)
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        embed.load_embedder(tmp_path / "nothing.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="bad.pt"):
        embed.load_embedder(tmp_path / "bad.pt")


def test_cohort_figures_write_pngs_and_metrics(slides, tmp_path):
    from hemoprofile.latent_maps import cohort_figures

    embed.train_embedder(slides, tmp_path / "m.pt", tmp_path / "m.json", {**TINY, "train": {"epochs": 1}},
                         progress=None)
    paths = []
    for item in slides:
        paths.append(str(tmp_path / f"{item.slide}.parquet"))
        embed.embed_slide(tmp_path / "m.pt", item.patches, item.cells, paths[-1], device="cpu", progress=None)
    outputs = {k: str(tmp_path / "fig" / f"{k}.png") for k in ("cluster", "slide", "condition", "label",
                                                                 "prediction", "reconstructions")}
    outputs["metrics"] = str(tmp_path / "fig" / "metrics.json")
    metrics = cohort_figures(tmp_path / "m.pt", paths, slides, outputs, embed_cfg={"figures": {"reconstructions": 3}})
    for key, path in outputs.items():
        data = open(path, "rb").read()
        assert data[:4] == (b"\x89PNG" if key != "metrics" else data[:4]), key
    assert metrics["n_cells"] == 80 and metrics["label"]["n_labelled"] == 80
    assert json.loads(open(outputs["metrics"]).read())["batch"]["n_batches"] == 2
