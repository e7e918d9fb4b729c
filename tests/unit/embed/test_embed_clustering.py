"""hemoprofile.embed.clustering: latent clusters recover known blobs (k by BIC), the fits round-trip
through the embedder model file, and the 2-D map is consistent and oriented."""

import numpy as np
import pytest
import torch
from helpers.embed_slides import blobs
from sklearn.metrics import adjusted_rand_score

from hemoprofile.embed.clustering import (
    apply_pca,
    assign_latent_clusters,
    fit_latent_clustering,
    fit_pca,
)
from hemoprofile.embed.model_files import load_embedder, save_embedder
from hemoprofile.nn.vae import VAESpec, build_vae


@pytest.mark.parametrize("method", ["gmm", "kmeans"])
def test_latent_clustering_recovers_blobs_and_bic_picks_k(method):
    z, truth = blobs()
    fit = fit_latent_clustering(z, {"method": method, "k": 0, "k_min": 2, "k_max": 5}, seed=0)
    assert fit["k"] == 3 and fit["selected_by"] == "bic" and set(fit["bic"]) == {2, 3, 4, 5}
    assert adjusted_rand_score(truth, fit["labels"]) == 1.0
    assert np.array_equal(assign_latent_clusters(fit, z), fit["labels"])
    given = fit_latent_clustering(z, {"method": method, "k": 2}, seed=0)
    assert given["k"] == 2 and given["selected_by"] == "config"
    again = fit_latent_clustering(z, {"method": method, "k": 0, "k_min": 2, "k_max": 5}, seed=0)
    assert again["bic"] == fit["bic"] and np.array_equal(again["labels"], fit["labels"])  # seeded


@pytest.mark.parametrize("method,covariance", [("gmm", "full"), ("gmm", "diag"), ("kmeans", "full")])
def test_fits_round_trip_through_the_model_file(method, covariance, tmp_path):
    z, _ = blobs(40, seed=1, spread=1.5)
    fit = fit_latent_clustering(z, {"method": method, "k": 3, "covariance": covariance}, seed=2)
    pca = fit_pca(z)
    model = build_vae(VAESpec(1, 8, latent_dim=3, widths=(4,)))
    save_embedder(tmp_path / "m.pt", model, "none", [], ["A"], 8, pca, fit)
    emb = load_embedder(tmp_path / "m.pt")
    assert emb.clustering["method"] == method and emb.clustering["k"] == 3 and set(emb.clustering["bic"]) == {"3"}
    assert np.array_equal(assign_latent_clusters(emb.clustering, z), fit["labels"])
    assert np.array_equal(apply_pca(emb.pca, z), apply_pca(pca, z))
    if method == "gmm":
        # a format-1 file (numpy GMM) has no precisions_cholesky: derived from the covariances on load
        old = {k: v for k, v in emb.clustering.items() if k != "precisions_cholesky"}
        assert np.array_equal(assign_latent_clusters(old, z), fit["labels"])
        ckpt = torch.load(tmp_path / "m.pt", weights_only=True)
        assert isinstance(ckpt["clustering"]["precisions_cholesky"], torch.Tensor)
        torch.save({**ckpt, "format_version": 99}, tmp_path / "future.pt")
        with pytest.raises(ValueError, match="future.pt: embedder format version 99"):
            load_embedder(tmp_path / "future.pt")


def test_pca_is_consistent_and_oriented():
    z, _ = blobs()
    pca = fit_pca(z)
    xy = apply_pca(pca, z)
    assert xy.shape == (len(z), 2)
    assert np.allclose(xy.mean(0), 0, atol=1e-5)
    again = fit_pca(z[::-1])
    assert np.allclose(again["components"], pca["components"])
    assert pca["explained_variance_ratio"][0] >= pca["explained_variance_ratio"][1]
    comps = pca["components"]
    assert (comps[np.arange(2), np.abs(comps).argmax(1)] > 0).all()  # largest loading positive
    # the projection of a cell does not depend on the cells projected with it
    assert np.array_equal(apply_pca(pca, z[:7]), xy[:7])
