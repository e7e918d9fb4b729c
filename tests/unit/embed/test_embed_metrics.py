"""hemoprofile.embed.metrics: the scores against their definitions, label agreement on known values,
batch-mixing measures, and NaN where a score is undefined."""

import math

import numpy as np
import pytest
from helpers.embed_slides import blobs

from hemoprofile.embed.metrics import (
    calinski_harabasz,
    davies_bouldin,
    knn_batch_entropy,
    latent_metrics,
    purity,
    silhouette,
)


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
    assert silhouette(z, labels) == pytest.approx(np.mean(s))
    assert silhouette(z, labels.astype(str).astype(object)) == pytest.approx(np.mean(s))  # object labels


def test_davies_bouldin_and_calinski_harabasz_match_the_definitions():
    z, labels = blobs(20, seed=2, spread=1.5)
    k = 3
    cents = np.stack([z[labels == j].mean(0) for j in range(k)])
    s = np.array([np.linalg.norm(z[labels == j] - cents[j], axis=1).mean() for j in range(k)])
    db = np.mean([max((s[i] + s[j]) / np.linalg.norm(cents[i] - cents[j]) for j in range(k) if j != i) for i in range(k)])
    assert davies_bouldin(z, labels) == pytest.approx(db)
    mean = z.mean(0)
    between = sum((labels == j).sum() * ((cents[j] - mean) ** 2).sum() for j in range(k))
    within = sum(((z[labels == j] - cents[j]) ** 2).sum() for j in range(k))
    assert calinski_harabasz(z, labels) == pytest.approx(between / within * (len(z) - k) / (k - 1))


def test_undefined_scores_are_nan():
    z = np.arange(8.0).reshape(4, 2)
    for score in (silhouette, davies_bouldin, calinski_harabasz):
        assert math.isnan(score(z, [0, 0, 0, 0])), score  # one group
        assert math.isnan(score(z, [0, 1, 2, 3])), score  # as many groups as cells


def test_silhouette_on_a_seeded_sample():
    z, labels = blobs(200, seed=3, spread=2.0)
    a, b = silhouette(z, labels, sample_size=100, seed=5), silhouette(z, labels, sample_size=100, seed=5)
    assert a == b and abs(a - silhouette(z, labels, sample_size=0)) < 0.1


def test_label_agreement_known_values():
    # reference values of scikit-learn's documentation examples, through latent_metrics (labels = truth)
    def agreement(labels, clusters):
        z = np.arange(2.0 * len(labels)).reshape(len(labels), 2)
        return latent_metrics(z, np.asarray(clusters), np.asarray(labels, dtype=object))["label"]

    assert agreement(["0", "0", "1", "1"], [0, 0, 1, 2])["ari"] == pytest.approx(0.5714285714)
    assert agreement(["0", "0", "1", "1"], [0, 0, 1, 2])["nmi"] == pytest.approx(0.8)
    assert agreement(["0", "0", "0", "0"], [0, 1, 2, 3])["ari"] == pytest.approx(0.0)
    # invariant to renaming clusters; works on strings
    assert agreement(["a", "a", "b", "b"], [5, 5, 2, 2])["ari"] == 1.0
    assert agreement(["a", "a", "b", "b"], [5, 5, 2, 2])["nmi"] == pytest.approx(1.0)
    assert purity(["a", "a", "b", "b", "b"], [0, 0, 0, 1, 1]) == pytest.approx(4 / 5)
    # cells without a label are left out of the label metrics
    lab = agreement(["a", None, "a", "b", "b"], [1, 0, 1, 0, 0])
    assert lab["n_labelled"] == 4 and lab["ari"] == 1.0 and lab["purity"] == 1.0


def test_batch_mixing_measures():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(400, 2))
    random_batches = rng.integers(0, 4, 400)
    assert knn_batch_entropy(z, random_batches, k=15) > 0.85
    assert abs(silhouette(z, random_batches)) < 0.1
    apart = np.repeat(np.arange(4), 100)
    z_apart = z * 0.1 + apart[:, None] * 5.0
    assert knn_batch_entropy(z_apart, apart, k=15) < 0.05
    assert silhouette(z_apart, apart) > 0.9
    # within groups: two cell types far apart, batches mixed inside each -> mixed within label
    types = rng.integers(0, 2, 400)
    z_types = z + types[:, None] * 20.0
    assert knn_batch_entropy(z_types, random_batches, k=15, groups=types) > 0.85


def test_latent_metrics_keys():
    z, blob = blobs(30, seed=4)
    labels = np.array([f"t{b}" for b in blob], dtype=object)
    batches = np.tile(["b1", "b2"], 45).astype(object)
    m = latent_metrics(z, blob, labels, batches, sample_size=50, knn=5)
    assert m["n_cells"] == 90 and m["n_clusters"] == 3 and m["silhouette"] > 0.7
    assert m["label"]["ari"] == 1.0 and m["label"]["purity"] == 1.0 and m["label"]["n_labels"] == 3
    b = m["batch"]
    assert b["n_batches"] == 2 and b["cluster_nmi"] == pytest.approx(0.0, abs=1e-12)
    assert b["knn_entropy"] > 0.7 and abs(b["silhouette_by_batch_within_label"]) < 0.1
    assert "knn_entropy_within_label" in b


def test_clustering_accuracy_is_one_for_a_relabelled_perfect_clustering():
    from hemoprofile.embed.metrics import clustering_accuracy

    truth = np.array(["T", "B", "NK", "mono"] * 25)
    renamed = {"T": 7, "B": 0, "NK": 3, "mono": 11}
    assert clustering_accuracy(truth, [renamed[t] for t in truth]) == 1.0
    rng = np.random.default_rng(0)
    assert clustering_accuracy(truth, rng.permutation([renamed[t] for t in truth])) < 0.5


def test_clustering_accuracy_of_a_known_contingency_table():
    from hemoprofile.embed.metrics import clustering_accuracy

    # contingency (labels x clusters): a: [5, 1, 0], b: [4, 0, 0], c: [0, 3, 2]
    # best one-to-one: a->0 (5), c->1 (3), b->2 (0): 8 of 15; purity would give (5 + 3 + 2) / 15
    truth = ["a"] * 6 + ["b"] * 4 + ["c"] * 5
    pred = [0] * 5 + [1] + [0] * 4 + [1] * 3 + [2] * 2
    assert clustering_accuracy(truth, pred) == pytest.approx(8 / 15)
    assert purity(truth, pred) == pytest.approx(10 / 15)


def test_latent_metrics_and_their_text_carry_the_clustering_accuracy():
    from hemoprofile.embed.metrics import format_metrics

    z, labels = blobs(30, seed=4)
    m = latent_metrics(z, labels, labels.astype(str))
    assert m["label"]["accuracy"] == 1.0
    assert "accuracy 1.000" in format_metrics(m)
