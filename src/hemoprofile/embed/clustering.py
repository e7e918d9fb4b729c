"""Fits on the latent space, made once on the training sample's latent means and applied to every slide:
the 2-D map (:func:`fit_pca`, scikit-learn's PCA) and the latent clusters (:func:`fit_latent_clustering`:
scikit-learn's GaussianMixture or KMeans, k from the config or chosen by BIC).

A fit is a plain dict of numpy arrays and numbers, which is what the embedder model file stores
(:mod:`hemoprofile.embed.model_files`: ``torch.save`` of tensors, loaded with ``weights_only``; no pickled
scikit-learn objects):

- map: ``mean``, ``components`` (2, d), ``explained_variance_ratio``;
- GMM: ``weights``, ``means``, ``covariances``, ``precisions_cholesky`` (the fitted attributes of
  :class:`sklearn.mixture.GaussianMixture`), ``covariance`` (full or diag), ``log_likelihood``,
  ``n_parameters``; :func:`assign_latent_clusters` rebuilds the GaussianMixture from them and predicts;
- k-means: ``centroids`` (``cluster_centers_``), ``inertia``; new cells go to the nearest centroid.

The project's own parts: component signs fixed so refits give the same orientation, the projection
order of operations (the map of a cell does not depend on how many cells are projected with it), the
BIC of a k-means solution (:func:`kmeans_bic`), and the choice of k by BIC. The fits run on one BLAS and
OpenMP thread: KMeans sums its threads' partial centroids in the order the threads finish, which with
more threads changes the last bits from run to run.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping

import numpy as np
from scipy import linalg
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import pairwise_distances_argmin
from sklearn.mixture import GaussianMixture
from threadpoolctl import threadpool_limits

from hemoprofile.embed.settings import embed_defaults

log = logging.getLogger(__name__)

#: Added to the GMM covariance diagonals: latent units that collapsed to the prior have near-zero spread
#: across cells and would make a covariance singular.
REG_COVAR = 1e-4
#: EM stops when the mean log-likelihood per cell gains less than this.
GMM_TOL = 1e-4

# ---------------------------------------------------------------------------------------------------
# 2-D map


def fit_pca(z: np.ndarray, n_components: int = 2) -> dict:
    """PCA of ``z`` (float64, full SVD): ``{"mean", "components" (n_components, d), "explained_variance_ratio"}``.
    Component signs are fixed (largest loading positive) so refits give the same orientation.

    Example
    -------
    >>> pca = fit_pca(np.array([[0.0, 0.0], [2.0, 1.0], [4.0, 2.1], [6.0, 2.9]]), 1)
    >>> np.round(pca["components"], 2).tolist(), bool(pca["explained_variance_ratio"][0] > 0.99)
    ([[0.9, 0.44]], True)
    """
    z = np.asarray(z, np.float64)
    pca = PCA(n_components=n_components, svd_solver="full").fit(z)
    comps = pca.components_
    signs = np.sign(comps[np.arange(len(comps)), np.abs(comps).argmax(1)])
    comps = comps * signs[:, None]
    return {"mean": pca.mean_, "components": comps, "explained_variance_ratio": pca.explained_variance_ratio_}


def apply_pca(pca: Mapping, z: np.ndarray) -> np.ndarray:
    """Project ``z`` (N, d) onto the fitted components: (N, n_components) float32."""
    return ((np.asarray(z, np.float64) - np.asarray(pca["mean"])) @ np.asarray(pca["components"]).T).astype(np.float32)


# ---------------------------------------------------------------------------------------------------
# Latent clusters


def _fit_kmeans(z: np.ndarray, k: int, seed: int, n_init: int, max_iter: int) -> dict:
    km = KMeans(n_clusters=k, n_init=max(1, int(n_init)), max_iter=int(max_iter), random_state=int(seed)).fit(z)
    return {"centroids": km.cluster_centers_, "inertia": float(km.inertia_), "labels": km.labels_.astype(np.int64)}


def gmm_n_parameters(k: int, d: int, covariance: str) -> int:
    """Free parameters of a k-component GMM in d dimensions (means, covariances, weights)."""
    cov_params = k * d if covariance == "diag" else k * d * (d + 1) // 2
    return int(k * d + cov_params + k - 1)


def _fit_gmm(z: np.ndarray, k: int, covariance: str, seed: int, n_init: int, max_iter: int) -> dict:
    gm = GaussianMixture(n_components=k, covariance_type=covariance, tol=GMM_TOL, reg_covar=REG_COVAR,
                         max_iter=int(max_iter), n_init=max(1, int(n_init)), init_params="kmeans",
                         random_state=int(seed)).fit(z)
    n, d = z.shape
    return {"weights": gm.weights_, "means": gm.means_, "covariances": gm.covariances_,
            "precisions_cholesky": gm.precisions_cholesky_, "covariance": covariance,
            "log_likelihood": float(gm.score(z) * n), "n_parameters": gmm_n_parameters(k, d, covariance),
            "bic": float(gm.bic(z)), "converged": bool(gm.converged_), "labels": gm.predict(z).astype(np.int64)}


def kmeans_bic(z: np.ndarray, result: Mapping) -> float:
    """BIC of a k-means solution read as a mixture of spherical Gaussians with one shared variance
    (the X-means criterion of Pelleg and Moore, 2000)."""
    z = np.asarray(z, np.float64)
    n, d = z.shape
    k = len(result["centroids"])
    var = max(result["inertia"] / max(n - k, 1) / d, 1e-12)
    counts = np.bincount(result["labels"], minlength=k)
    ll = float((counts[counts > 0] * np.log(counts[counts > 0] / n)).sum()
               - n * d / 2.0 * math.log(2 * math.pi * var) - (n - k) * d / 2.0)
    p = k * d + 1 + k - 1
    return -2.0 * ll + p * math.log(n)


def fit_latent_clustering(z: np.ndarray, cluster_cfg: Mapping, seed: int = 0,
                          progress: Callable[[str], None] | None = None) -> dict:
    """Fit the latent clusters of ``embed.cluster`` on latent vectors; k from config, or by BIC over
    ``k_min..k_max`` when ``k`` is 0 (``n_init`` restarts and ``max_iter`` iterations each, seeded).

    Returns
    -------
    dict: ``method``, ``k``, ``bic`` ({k: BIC} of the candidates; one entry when k is given),
    ``selected_by`` (``bic`` or ``config``), the fitted model (see the module docstring) and ``labels``
    of ``z``.

    Example
    -------
    >>> z = np.array([[0.0, 0], [0, 0.1], [0.1, 0], [5, 5], [5, 5.1], [5.1, 5]])
    >>> fit = fit_latent_clustering(z, {"method": "kmeans", "k": 2})
    >>> fit["k"], fit["selected_by"], sorted(np.bincount(fit["labels"]).tolist())
    (2, 'config', [3, 3])
    """
    cfg = {**embed_defaults("cluster"), **dict(cluster_cfg or {})}
    say = progress or (lambda m: log.info(m))
    z = np.asarray(z, np.float64)
    n = len(z)
    ks = [int(cfg["k"])] if int(cfg["k"]) > 0 else list(range(int(cfg["k_min"]), int(cfg["k_max"]) + 1))
    ks = [k for k in ks if k <= n] or [min(n, max(ks[0], 1))]
    fits, bic = {}, {}
    with threadpool_limits(limits=1):
        for k in ks:
            if cfg["method"] == "gmm":
                fit = _fit_gmm(z, k, cfg["covariance"], seed, int(cfg["n_init"]), int(cfg["max_iter"]))
                bic[k] = fit["bic"]
                if not fit["converged"]:
                    say(f"gmm k={k}: EM did not converge in {cfg['max_iter']} iterations")
            else:
                fit = _fit_kmeans(z, k, seed, int(cfg["n_init"]), int(cfg["max_iter"]))
                bic[k] = kmeans_bic(z, fit)
            fits[k] = fit
            if len(ks) > 1:
                say(f"{cfg['method']} k={k}: BIC {bic[k]:.1f}")
    k = min(bic, key=bic.get)
    return {**fits[k], "method": cfg["method"], "k": int(k), "bic": {int(a): float(b) for a, b in bic.items()},
            "selected_by": "bic" if len(ks) > 1 else "config"}


def _precisions_cholesky(covariances: np.ndarray, covariance: str) -> np.ndarray:
    """What GaussianMixture computes from its covariances (for model files that lack it)."""
    if covariance == "diag":
        return 1.0 / np.sqrt(covariances)
    out = np.empty_like(covariances)
    for j, cov in enumerate(covariances):
        chol = linalg.cholesky(cov, lower=True)
        out[j] = linalg.solve_triangular(chol, np.eye(len(cov)), lower=True).T
    return out


def gaussian_mixture(clustering: Mapping) -> GaussianMixture:
    """The fitted :class:`~sklearn.mixture.GaussianMixture` of a GMM latent clustering dict."""
    means = np.asarray(clustering["means"], np.float64)
    covariances = np.asarray(clustering["covariances"], np.float64)
    gm = GaussianMixture(n_components=len(means), covariance_type=clustering["covariance"])
    gm.weights_ = np.asarray(clustering["weights"], np.float64)
    gm.means_ = means
    gm.covariances_ = covariances
    chol = clustering.get("precisions_cholesky")
    gm.precisions_cholesky_ = (np.asarray(chol, np.float64) if chol is not None
                               else _precisions_cholesky(covariances, clustering["covariance"]))
    gm.n_features_in_ = means.shape[1]
    return gm


def assign_latent_clusters(clustering: Mapping, z: np.ndarray) -> np.ndarray:
    """Latent cluster id (int32) of each latent vector under a fitted clustering (nearest centroid /
    most probable GMM component)."""
    z = np.asarray(z, np.float64)
    if not len(z):
        return np.zeros(0, np.int32)
    if clustering["method"] == "kmeans":
        return pairwise_distances_argmin(z, np.asarray(clustering["centroids"], np.float64)).astype(np.int32)
    return gaussian_mixture(clustering).predict(z).astype(np.int32)
