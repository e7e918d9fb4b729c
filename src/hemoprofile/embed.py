"""Unsupervised latent space of cell patches: (conditional) VAE training, per-slide embedding, clustering
and honest clustering metrics.

Stages (the workflow's ``embed`` rule family; scripts in workflow/scripts are thin adapters):

- :func:`train_embedder`: draws up to ``cells_per_slide`` cells per slide (seeded), trains a
  :class:`hemoprofile.nn.vae.ConvVAE` (a cVAE when ``condition_on`` is ``slide``, ``batch`` or ``condition``),
  encodes the sample, fits the 2-D map (PCA) and the clustering (GMM or k-means, k given or chosen by
  BIC) on the sample's latent means, scores the clustering and writes one model file holding all of it
  plus a metrics JSON. Fitting map and clusters once, here, is what makes map coordinates and cluster
  ids comparable across slides.
- :func:`embed_slide`: streams one slide's patches through the encoder (posterior mean), applies the
  stored PCA and clustering, and writes ``embedding.parquet``.
- :func:`evaluate_embeddings`: metrics over the embedded cohort (the figures rule and the benchmark).

``embedding.parquet`` columns: ``slide`` (string), ``cell_id`` (int64; (slide, cell_id) is the key, row
order = cells.parquet), ``z_0`` .. ``z_{d-1}`` (float32, posterior mean), ``map_x``, ``map_y`` (float32,
the first two principal components of the training sample's latent means: the same axes for every
slide), ``cluster`` (int32, 0..k-1). The schema metadata ``hemoprofile`` holds the model id and condition.

Metrics (:func:`clustering_metrics`): silhouette, Davies-Bouldin and Calinski-Harabasz on the latent
vectors themselves (never on the 2-D map, which would flatter or hide structure); adjusted Rand index,
normalised mutual information and purity of clusters against labels where labels exist (synthetic
truth cell types matched by centroid to ``truth_labels.zarr``, or a collection's ``label`` column); and
batch mixing: the silhouette of the latent vectors by batch (near 0 or below = batches mixed, 1 = each
batch apart), the same within each cell type where labels exist, and the normalised entropy of batches
among each cell's k nearest neighbours (1 = as mixed as the cohort, 0 = neighbours all from the cell's
own batch). scikit-learn is not a dependency: k-means, the GMM and every metric are implemented here
with numpy (and checked against their definitions in tests/unit/test_embed.py).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

import hemoprofile
from hemoprofile.nn.augment import random_dihedral
from hemoprofile.nn.devices import DeviceChoice, pick_device
from hemoprofile.io import atomic_output, model_id
from hemoprofile.io.patches import check_patches_match_cells, check_slide_patches, open_patch_array, read_patch_rows
from hemoprofile.io.tables import read_cells
from hemoprofile.io.truth import truth_cell_types
from hemoprofile.nn.vae import ConvVAE, VAESpec, build_vae, vae_loss

log = logging.getLogger(__name__)

MODEL_FORMAT = "hemoprofile-embedder"
MODEL_FORMAT_VERSION = 1
#: Version of the embed stage's outputs; rules pass it as params, so a bump reruns training and embedding.
STAGE_VERSION = {"stage": "embed", "version": int(hemoprofile.STAGE_VERSIONS.get("embed", 1))}

CONDITION_CHOICES = ("none", "slide", "batch", "condition")
CLUSTER_METHODS = ("gmm", "kmeans")

#: Defaults of the ``embed`` config section (the schema in config/schemas carries the same).
DEFAULT_EMBED: dict = {
    "condition_on": "none",
    "latent_dim": 16,
    "beta": 1.0,
    "widths": [16, 32, 64],
    "cells_per_slide": 2000,
    "device": "auto",
    "mixed_precision": True,
    "batch_size": 1024,
    "train": {"epochs": 20, "minutes": 0.0, "batch_size": 128, "lr": 2e-3, "weight_decay": 0.0,
              "kl_warmup": 0.3, "val_fraction": 0.1, "dihedral": True},
    "cluster": {"method": "gmm", "k": 0, "k_min": 2, "k_max": 12, "covariance": "full", "n_init": 2,
                "max_iter": 200},
    "metrics": {"sample_size": 5000, "knn": 15},
    "figures": {"max_points": 20000, "reconstructions": 8, "colour_by_prediction": True},
}


def _merge(base: dict, override: Mapping, where: str) -> dict:
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if key not in out:
            raise ValueError(f"{where}: unknown key {key!r}; allowed: {', '.join(sorted(out))}")
        out[key] = _merge(out[key], value, f"{where}.{key}") if isinstance(out[key], dict) else value
    return out


def resolve_embed(cfg: Mapping | None) -> dict:
    """Complete ``embed`` settings (:data:`DEFAULT_EMBED` overridden by ``cfg``), checked.

    Raises
    ------
    ValueError for an unknown key or an out-of-range value.
    """
    out = _merge(DEFAULT_EMBED, cfg or {}, "embed")
    if out["condition_on"] not in CONDITION_CHOICES:
        raise ValueError(f"embed.condition_on must be one of {CONDITION_CHOICES}, got {out['condition_on']!r}")
    if out["cluster"]["method"] not in CLUSTER_METHODS:
        raise ValueError(f"embed.cluster.method must be one of {CLUSTER_METHODS}, got {out['cluster']['method']!r}")
    if out["cluster"]["covariance"] not in ("full", "diag"):
        raise ValueError(f"embed.cluster.covariance must be full or diag, got {out['cluster']['covariance']!r}")
    c = out["cluster"]
    if int(c["k"]) < 0 or int(c["k_min"]) < 1 or int(c["k_max"]) < int(c["k_min"]):
        raise ValueError(f"embed.cluster: need k >= 0 and 1 <= k_min <= k_max, got {c}")
    if int(out["latent_dim"]) < 2:
        raise ValueError(f"embed.latent_dim must be >= 2 (the 2-D map needs two components), got {out['latent_dim']}")
    if float(out["beta"]) < 0 or int(out["cells_per_slide"]) < 1:
        raise ValueError("embed.beta must be >= 0 and embed.cells_per_slide >= 1")
    return out


# ---------------------------------------------------------------------------------------------------
# Inputs


@dataclass
class EmbedSlide:
    """One slide's inputs: cells.parquet, patches.zarr and its sample-sheet fields.

    ``batch`` defaults to the slide (as the sample sheet does); ``truth_labels`` is the slide's
    ``truth_labels.zarr`` on synthetic cohorts (labels for the metrics only, never for training).
    """

    slide: str
    cells: str
    patches: str
    patient: str = ""
    condition: str = ""
    batch: str = ""
    truth_labels: str | None = None

    def category(self, condition_on: str) -> str | None:
        """The cVAE condition value of this slide (``None`` for a plain VAE)."""
        if condition_on == "none":
            return None
        value = {"slide": self.slide, "batch": self.batch or self.slide, "condition": self.condition}[condition_on]
        if not value:
            raise ValueError(f"slide {self.slide}: condition_on {condition_on!r} but the sample sheet gives no value")
        return str(value)


@dataclass
class EmbedSample:
    """Cells drawn for training: uint8/uint16/float16 patches in memory plus keys, covariates and labels."""

    patches: np.ndarray
    slides: np.ndarray
    cell_ids: np.ndarray
    batches: np.ndarray
    conditions: np.ndarray
    labels: np.ndarray | None  # object; None where a cell has no label
    channels: list[str]
    patch_size: int
    categories: np.ndarray = field(default_factory=lambda: np.zeros(0, object))  # cVAE condition per cell


def _read_cells(item: EmbedSlide, with_position: bool) -> pd.DataFrame:
    available = pq.read_schema(item.cells).names if os.path.exists(item.cells) else []
    wanted = ["slide", "cell_id"] + (["y", "x"] if with_position else []) + ["label"]
    return read_cells(item.cells, [c for c in wanted if c in available] or ["cell_id"])


def slide_labels(item: EmbedSlide, cells: pd.DataFrame, truth_cells: pd.DataFrame | None) -> np.ndarray | None:
    """Each cell's reference label (truth cell type or collection ``label``), ``None`` where unknown;
    ``None`` overall when the slide has no labels at all."""
    if item.truth_labels and truth_cells is not None:
        return truth_cell_types(cells, item.truth_labels, truth_cells, item.slide)
    if "label" in cells.columns:
        return np.array([v if isinstance(v, str) and v else None for v in cells["label"]], dtype=object)
    return None


def _truth_table(truth_cells) -> pd.DataFrame | None:
    if truth_cells is None or isinstance(truth_cells, pd.DataFrame):
        return truth_cells
    return read_cells(truth_cells, ["slide", "cell_id", "cell_type"])


def load_sample(items: Sequence[EmbedSlide], cells_per_slide: int, condition_on: str = "none", seed: int = 0,
                truth_cells: str | os.PathLike | pd.DataFrame | None = None,
                progress: Callable[[str], None] | None = None) -> EmbedSample:
    """Draw up to ``cells_per_slide`` cells of each slide (seeded per slide, rows ascending) into memory.

    Parameters
    ----------
    items : the slides.
    cells_per_slide : cap per slide (keeps memory bounded and every slide represented).
    condition_on : which sample-sheet field becomes each cell's cVAE category.
    seed : base seed; slide i draws with ``default_rng([seed, i])`` so adding a slide changes no other draw.
    truth_cells : truth_cells.parquet (synthetic cohorts) for reference labels.

    Raises
    ------
    ValueError naming the files when rows and patches disagree or slides differ in channels/patch size.
    """
    say = progress or (lambda m: log.info(m))
    truth = _truth_table(truth_cells)
    parts = []
    channels = size = None
    any_labels = False
    for i, item in enumerate(items):
        array, names, attributes = open_patch_array(item.patches)
        cells = _read_cells(item, with_position=bool(item.truth_labels and truth is not None))
        channels, size = check_slide_patches(item, cells, array, attributes, names, channels, size)
        n = len(cells)
        rng = np.random.default_rng([int(seed), i])
        rows = np.sort(rng.choice(n, min(n, int(cells_per_slide)), replace=False)) if n else np.zeros(0, np.int64)
        sub = cells.iloc[rows].reset_index(drop=True)
        labels = slide_labels(item, sub, truth)
        any_labels |= labels is not None
        m = len(rows)
        parts.append({
            "patches": read_patch_rows(array, rows),
            "slides": np.full(m, item.slide, object),
            "cell_ids": sub["cell_id"].to_numpy(np.int64),
            "batches": np.full(m, item.batch or item.slide, object),
            "conditions": np.full(m, item.condition or "", object),
            "labels": labels if labels is not None else np.full(m, None, object),
            "categories": np.full(m, item.category(condition_on), object),
        })
        say(f"{item.slide}: {m} of {n} cells drawn")
    if not parts:
        raise ValueError("no slides given")
    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    if not len(cat["patches"]):
        raise ValueError(f"no cells in any of the {len(items)} slides ({items[0].cells}, ...)")
    return EmbedSample(cat["patches"], cat["slides"], cat["cell_ids"], cat["batches"], cat["conditions"],
                       cat["labels"] if any_labels else None, list(channels), int(size), cat["categories"])


# ---------------------------------------------------------------------------------------------------
# Training and encoding


def _to_unit(batch: np.ndarray) -> torch.Tensor:
    """Stored patches -> float32 tensor in [0, 1] (integers were stored scaled to their full range)."""
    batch = np.ascontiguousarray(batch)
    if batch.dtype == np.uint8:
        return torch.from_numpy(batch).float() / 255.0
    if np.issubdtype(batch.dtype, np.integer):
        return torch.from_numpy(batch.astype(np.float32) / np.float32(np.iinfo(batch.dtype).max))
    return torch.from_numpy(batch.astype(np.float32)).clamp(0.0, 1.0)


def condition_matrix(categories: Sequence, known: Sequence[str]) -> np.ndarray | None:
    """One-hot (cells, len(known)) rows of the cVAE condition; an unknown category gets the uniform row
    (the average condition), ``None`` when ``known`` is empty (a plain VAE)."""
    if not len(known):
        return None
    index = {k: i for i, k in enumerate(known)}
    out = np.zeros((len(categories), len(known)), np.float32)
    for row, value in enumerate(categories):
        j = index.get(value)
        if j is None:
            out[row] = 1.0 / len(known)
        else:
            out[row, j] = 1.0
    return out


@dataclass
class FitHistory:
    """Per-epoch training record (batch-mean loss terms per cell) and the stopping reason."""

    epochs: list[dict] = field(default_factory=list)
    stopped: str = "epochs"
    seconds: float = 0.0


def fit_vae(patches: np.ndarray, conditions: np.ndarray | None, spec: VAESpec, train_cfg: Mapping, beta: float,
            seed: int = 0, device: DeviceChoice | None = None,
            progress: Callable[[str], None] | None = None) -> tuple[ConvVAE, FitHistory]:
    """Train a (conditional) VAE on in-memory patches.

    Parameters
    ----------
    patches : (N, C, P, P) stored patches (uint8, uint16 or float in [0, 1]).
    conditions : (N, n_conditions) one-hot rows, or ``None`` for a plain VAE.
    spec : the architecture.
    train_cfg : ``embed.train`` settings (epochs, minutes, batch_size, lr, weight_decay, kl_warmup,
        val_fraction, dihedral).
    beta : KL weight, reached linearly over the first ``kl_warmup`` fraction of the epochs (avoids the
        posterior collapse an early full KL term causes).
    seed : seeds the split, the batch order, the augmentations and the reparameterisation noise; on a
        CPU two runs with the same inputs give identical weights (``minutes`` > 0 stops by the clock and
        is then the one source of run-to-run difference).

    Returns
    -------
    (model in eval mode on the CPU, :class:`FitHistory`).
    """
    cfg = {**DEFAULT_EMBED["train"], **dict(train_cfg or {})}
    say = progress or (lambda m: log.info(m))
    device = device or pick_device("cpu", mixed_precision=False)
    started = time.perf_counter()
    torch.manual_seed(int(seed))
    gen = torch.Generator().manual_seed(int(seed))
    rng = np.random.default_rng(int(seed))
    n = len(patches)
    order = rng.permutation(n)
    n_val = int(round(n * float(cfg["val_fraction"]))) if n >= 20 else 0
    val_idx, train_idx = np.sort(order[:n_val]), order[n_val:]
    model = build_vae(spec).to(device.device)
    opt = torch.optim.AdamW(model.parameters(), lr=float(cfg["lr"]), weight_decay=float(cfg["weight_decay"]))
    epochs = int(cfg["epochs"])
    bs = max(2, int(cfg["batch_size"]))
    steps_per_epoch = max(1, math.ceil(len(train_idx) / bs))
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=float(cfg["lr"]), total_steps=max(total, 1),
                                                pct_start=0.15, anneal_strategy="cos")
    scaler = device.grad_scaler()
    warm = float(cfg["kl_warmup"]) * total
    limit = float(cfg["minutes"]) * 60.0
    history = FitHistory()
    cond_t = torch.from_numpy(conditions) if conditions is not None else None
    step = 0
    for epoch in range(epochs):
        model.train()
        perm = train_idx[rng.permutation(len(train_idx))]
        sums = np.zeros(3)
        seen = 0
        for s in range(steps_per_epoch):
            idx = np.sort(perm[s * bs:(s + 1) * bs])
            if len(idx) < 2:  # batch norm needs two samples
                continue
            x = _to_unit(patches[idx])
            if cfg["dihedral"]:
                x = random_dihedral(x, gen)
            x = x.to(device.device)
            c = cond_t[idx].to(device.device) if cond_t is not None else None
            b = float(beta) * (min(1.0, (step + 1) / warm) if warm > 0 else 1.0)
            with device.autocast():
                logits, mu, logvar = model(x, c)
            loss, recon, kl = vae_loss(logits, x, mu, logvar, b)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            scaler.step(opt)
            scaler.update()
            sched.step()
            step += 1
            sums += np.array([loss.item(), recon.item(), kl.item()]) * len(idx)
            seen += len(idx)
        record = {"epoch": epoch + 1, "beta": b, "loss": sums[0] / max(seen, 1), "recon": sums[1] / max(seen, 1),
                  "kl": sums[2] / max(seen, 1)}
        if n_val:
            record.update({f"val_{k}": v for k, v in
                           _evaluate_loss(model, patches[val_idx], None if cond_t is None else cond_t[val_idx],
                                          float(beta), device).items()})
        history.epochs.append(record)
        say(f"epoch {epoch + 1}/{epochs}: loss {record['loss']:.2f} (recon {record['recon']:.2f}, kl "
            f"{record['kl']:.2f}, beta {b:.3g})" + (f", val loss {record['val_loss']:.2f}" if n_val else ""))
        if limit and time.perf_counter() - started > limit and epoch + 1 < epochs:
            history.stopped = f"time limit ({cfg['minutes']} min) after {epoch + 1} epochs"
            say(f"stopping: {history.stopped}")
            break
    history.seconds = time.perf_counter() - started
    return model.cpu().eval(), history


@torch.no_grad()
def _evaluate_loss(model: ConvVAE, patches: np.ndarray, cond: torch.Tensor | None, beta: float,
                   device: DeviceChoice, batch_size: int = 512) -> dict:
    model.eval()
    sums, n = np.zeros(3), 0
    for s in range(0, len(patches), batch_size):
        x = _to_unit(patches[s:s + batch_size]).to(device.device)
        c = cond[s:s + batch_size].to(device.device) if cond is not None else None
        with device.autocast():
            logits, mu, logvar = model(x, c)
        loss, recon, kl = vae_loss(logits, x, mu, logvar, beta)
        sums += np.array([float(loss), float(recon), float(kl)]) * len(x)
        n += len(x)
    return {"loss": sums[0] / n, "recon": sums[1] / n, "kl": sums[2] / n}


@torch.no_grad()
def encode(model: ConvVAE, patches, conditions: np.ndarray | None = None, device: DeviceChoice | None = None,
           batch_size: int = 1024) -> np.ndarray:
    """Posterior means (N, latent_dim) float32 of stored patches (an array or a zarr array, read in blocks).

    Example
    -------
    >>> model = build_vae(VAESpec(1, 8, latent_dim=2, widths=(4,))).eval()
    >>> encode(model, np.zeros((3, 1, 8, 8), np.uint8)).shape
    (3, 2)
    """
    device = device or pick_device("cpu", mixed_precision=False)
    model = model.to(device.device).eval()
    out = np.zeros((len(patches), model.spec.latent_dim), np.float32)
    for s in range(0, len(patches), batch_size):
        x = _to_unit(np.asarray(patches[s:s + batch_size])).to(device.device)
        c = torch.from_numpy(conditions[s:s + batch_size]).to(device.device) if conditions is not None else None
        # float16 autocast on a GPU keeps ~3 significant digits of z; CPU bfloat16 only ~2, too coarse
        # for distances between cells, so a CPU encodes in float32
        with device.autocast() if device.amp_dtype == torch.float16 else contextlib.nullcontext():
            mu, _ = model.encode(x, c)
        out[s:s + len(x)] = mu.float().cpu().numpy()
    return out


@torch.no_grad()
def reconstruct(model: ConvVAE, patches: np.ndarray, conditions: np.ndarray | None = None) -> np.ndarray:
    """Reconstructions (N, C, P, P) float32 in [0, 1] from the posterior means (CPU, for figures)."""
    model = model.cpu().eval()
    x = _to_unit(np.asarray(patches))
    c = torch.from_numpy(conditions) if conditions is not None else None
    logits, _, _ = model(x, c)
    return torch.sigmoid(logits).numpy()


# ---------------------------------------------------------------------------------------------------
# 2-D map


def fit_pca(z: np.ndarray, n_components: int = 2) -> dict:
    """PCA of ``z`` by SVD: ``{"mean", "components" (n_components, d), "explained_variance_ratio"}``.
    Component signs are fixed (largest loading positive) so refits give the same orientation."""
    z = np.asarray(z, np.float64)
    mean = z.mean(0)
    _, s, vt = np.linalg.svd(z - mean, full_matrices=False)
    comps = vt[:n_components]
    signs = np.sign(comps[np.arange(len(comps)), np.abs(comps).argmax(1)])
    comps = comps * signs[:, None]
    var = s ** 2
    return {"mean": mean, "components": comps, "explained_variance_ratio": var[:n_components] / max(var.sum(), 1e-12)}


def apply_pca(pca: Mapping, z: np.ndarray) -> np.ndarray:
    """Project ``z`` (N, d) onto the fitted components: (N, n_components) float32."""
    return ((np.asarray(z, np.float64) - np.asarray(pca["mean"])) @ np.asarray(pca["components"]).T).astype(np.float32)


# ---------------------------------------------------------------------------------------------------
# Clustering (numpy: scikit-learn is not a dependency)


def _sq_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] - 2.0 * a @ b.T + (b * b).sum(1)[None, :]
    return np.maximum(d, 0.0)


def kmeans(z: np.ndarray, k: int, seed: int = 0, n_init: int = 2, max_iter: int = 200,
           tol: float = 1e-6) -> dict:
    """k-means (k-means++ seeding, Lloyd iterations), best of ``n_init`` runs by inertia.

    Returns
    -------
    dict: ``centroids`` (k, d), ``labels`` (N,), ``inertia`` (sum of squared distances).

    Example
    -------
    >>> z = np.array([[0.0, 0], [0, 0.1], [5, 5], [5, 5.1]])
    >>> sorted(np.bincount(kmeans(z, 2)["labels"]).tolist())
    [2, 2]
    """
    z = np.asarray(z, np.float64)
    n = len(z)
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= k <= number of points ({n}), got k={k}")
    rng = np.random.default_rng(seed)
    best = None
    for _ in range(max(1, int(n_init))):
        centres = [z[rng.integers(n)]]
        d2 = _sq_dist(z, centres[0][None])[:, 0]
        for _ in range(1, k):
            p = d2 / d2.sum() if d2.sum() > 0 else np.full(n, 1.0 / n)
            centres.append(z[rng.choice(n, p=p)])
            d2 = np.minimum(d2, _sq_dist(z, centres[-1][None])[:, 0])
        c = np.array(centres)
        prev = np.inf
        for _ in range(int(max_iter)):
            dist = _sq_dist(z, c)
            labels = dist.argmin(1)
            inertia = float(dist[np.arange(n), labels].sum())
            for j in range(k):
                members = labels == j
                # an emptied cluster restarts at the point farthest from its centre
                c[j] = z[members].mean(0) if members.any() else z[dist[np.arange(n), labels].argmax()]
            if prev - inertia <= tol * max(abs(prev), 1e-12):
                break
            prev = inertia
        dist = _sq_dist(z, c)
        labels = dist.argmin(1)
        inertia = float(dist[np.arange(n), labels].sum())
        if best is None or inertia < best["inertia"]:
            best = {"centroids": c.copy(), "labels": labels, "inertia": inertia}
    return best


def _gmm_log_prob(z: np.ndarray, params: Mapping) -> np.ndarray:
    """(N, k) log(weight_j * N(z | mean_j, cov_j)), through the Cholesky factors of the precisions
    (one matrix product per component instead of a triangular solve per point)."""
    means, weights = np.asarray(params["means"]), np.asarray(params["weights"])
    n, d = z.shape
    out = np.empty((n, len(means)))
    for j in range(len(means)):
        if params["covariance"] == "diag":
            var = np.asarray(params["covariances"][j])
            maha = ((z - means[j]) ** 2 / var).sum(1)
            logdet = np.log(var).sum()
        else:
            chol = np.linalg.cholesky(np.asarray(params["covariances"][j]))
            prec_chol = np.linalg.inv(chol).T  # cov^-1 = prec_chol @ prec_chol.T
            y = z @ prec_chol - means[j] @ prec_chol
            maha = (y * y).sum(1)
            logdet = 2.0 * np.log(np.diag(chol)).sum()
        out[:, j] = np.log(max(weights[j], 1e-300)) - 0.5 * (d * math.log(2 * math.pi) + logdet + maha)
    return out


def _logsumexp(a: np.ndarray) -> np.ndarray:
    m = a.max(1, keepdims=True)
    return (m + np.log(np.exp(a - m).sum(1, keepdims=True)))[:, 0]


def fit_gmm(z: np.ndarray, k: int, covariance: str = "full", seed: int = 0, n_init: int = 2, max_iter: int = 200,
            tol: float = 1e-4, reg_covar: float = 1e-4) -> dict:
    """Gaussian mixture by EM, initialised from k-means, best of ``n_init`` runs by log-likelihood.

    ``reg_covar`` is added to the covariance diagonals: latent units that collapsed to the prior have
    near-zero spread across cells and would make a covariance singular.

    Returns
    -------
    dict: ``means``, ``covariances``, ``weights``, ``covariance``, ``log_likelihood`` (total), ``bic``,
    ``n_parameters``, ``labels``.
    """
    z = np.asarray(z, np.float64)
    n, d = z.shape
    best = None
    for init in range(max(1, int(n_init))):
        labels = kmeans(z, k, seed=seed + 1000 * init, n_init=1, max_iter=50)["labels"]
        resp = np.eye(k)[labels]
        prev = -np.inf
        for _ in range(int(max_iter)):
            nk = resp.sum(0) + 1e-10
            means = (resp.T @ z) / nk[:, None]
            if covariance == "diag":
                covs = np.stack([(resp[:, j:j + 1] * (z - means[j]) ** 2).sum(0) / nk[j] + reg_covar for j in range(k)])
            else:
                covs = np.stack([((resp[:, j:j + 1] * (z - means[j])).T @ (z - means[j])) / nk[j]
                                 + reg_covar * np.eye(d) for j in range(k)])
            params = {"means": means, "covariances": covs, "weights": nk / n, "covariance": covariance}
            logp = _gmm_log_prob(z, params)
            norm = _logsumexp(logp)
            ll = float(norm.sum())
            resp = np.exp(logp - norm[:, None])
            if ll - prev < tol * n:
                break
            prev = ll
        if best is None or ll > best["log_likelihood"]:
            best = {**params, "log_likelihood": ll, "labels": resp.argmax(1)}
    cov_params = k * d if covariance == "diag" else k * d * (d + 1) // 2
    p = k * d + cov_params + k - 1
    best["n_parameters"] = int(p)
    best["bic"] = float(-2.0 * best["log_likelihood"] + p * math.log(n))
    return best


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


def fit_clustering(z: np.ndarray, cluster_cfg: Mapping, seed: int = 0,
                   progress: Callable[[str], None] | None = None) -> dict:
    """Fit the clustering of ``embed.cluster`` on latent vectors; k from config, or by BIC over
    ``k_min..k_max`` when ``k`` is 0.

    Returns
    -------
    dict: ``method``, ``k``, ``bic`` ({k: BIC} of the candidates; one entry when k is given), and the
    model (``centroids`` for k-means; ``means``/``covariances``/``weights``/``covariance`` for a GMM),
    plus ``labels`` of ``z``.
    """
    cfg = {**DEFAULT_EMBED["cluster"], **dict(cluster_cfg or {})}
    say = progress or (lambda m: log.info(m))
    z = np.asarray(z, np.float64)
    n = len(z)
    ks = [int(cfg["k"])] if int(cfg["k"]) > 0 else list(range(int(cfg["k_min"]), int(cfg["k_max"]) + 1))
    ks = [k for k in ks if k <= n] or [min(n, max(ks[0], 1))]
    fits, bic = {}, {}
    for k in ks:
        if cfg["method"] == "gmm":
            fit = fit_gmm(z, k, cfg["covariance"], seed=seed, n_init=int(cfg["n_init"]), max_iter=int(cfg["max_iter"]))
            bic[k] = fit["bic"]
        else:
            fit = kmeans(z, k, seed=seed, n_init=int(cfg["n_init"]), max_iter=int(cfg["max_iter"]))
            bic[k] = kmeans_bic(z, fit)
        fits[k] = fit
        if len(ks) > 1:
            say(f"{cfg['method']} k={k}: BIC {bic[k]:.1f}")
    k = min(bic, key=bic.get)
    return {**fits[k], "method": cfg["method"], "k": int(k), "bic": {int(a): float(b) for a, b in bic.items()},
            "selected_by": "bic" if len(ks) > 1 else "config"}


def assign_clusters(clustering: Mapping, z: np.ndarray) -> np.ndarray:
    """Cluster id (int32) of each latent vector under a fitted clustering (nearest centroid / most
    probable component)."""
    z = np.asarray(z, np.float64)
    if not len(z):
        return np.zeros(0, np.int32)
    if clustering["method"] == "kmeans":
        return _sq_dist(z, np.asarray(clustering["centroids"])).argmin(1).astype(np.int32)
    return _gmm_log_prob(z, clustering).argmax(1).astype(np.int32)


# ---------------------------------------------------------------------------------------------------
# Metrics


def _codes(values) -> tuple[np.ndarray, int]:
    _, inv = np.unique(np.asarray(values).astype(str), return_inverse=True)
    return inv.ravel(), int(inv.max()) + 1 if len(inv) else 0


def _subsample(n: int, size: int, seed: int) -> np.ndarray:
    if size <= 0 or n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def silhouette_score(z: np.ndarray, labels, sample_size: int = 5000, seed: int = 0, block: int = 1024) -> float:
    """Mean silhouette (Rousseeuw 1987) with Euclidean distances, on at most ``sample_size`` points
    (seeded; the exact score is O(N^2)). Cells alone in their cluster score 0, as in scikit-learn.
    NaN when there are fewer than 2 or more than N-1 clusters.

    Example
    -------
    >>> round(silhouette_score(np.array([[0.0], [1.0], [10.0], [11.0]]), [0, 0, 1, 1]), 4)
    0.8997
    """
    z = np.asarray(z, np.float64)
    idx = _subsample(len(z), int(sample_size), seed)
    z = z[idx]
    codes, k = _codes(np.asarray(labels, dtype=object)[idx])
    n = len(z)
    if k < 2 or k > n - 1:
        return float("nan")
    onehot = np.eye(k)[codes]
    counts = onehot.sum(0)
    sq = (z * z).sum(1)
    scores = np.zeros(n)
    for s in range(0, n, block):
        d = np.sqrt(np.maximum(sq[s:s + block, None] - 2 * z[s:s + block] @ z.T + sq[None], 0.0))
        sums = d @ onehot  # (block, k) summed distance to each cluster
        own = codes[s:s + block]
        rows = np.arange(len(own))
        own_n = counts[own] - 1
        a = np.where(own_n > 0, sums[rows, own] / np.maximum(own_n, 1), 0.0)
        mean_other = sums / counts[None]
        mean_other[rows, own] = np.inf
        b = mean_other.min(1)
        sil = (b - a) / np.maximum(np.maximum(a, b), 1e-300)
        scores[s:s + block] = np.where(own_n > 0, sil, 0.0)
    return float(scores.mean())


def davies_bouldin_score(z: np.ndarray, labels) -> float:
    """Davies-Bouldin index (lower = more compact, better separated clusters); NaN below 2 clusters."""
    z = np.asarray(z, np.float64)
    codes, k = _codes(labels)
    if k < 2:
        return float("nan")
    cents = np.stack([z[codes == j].mean(0) for j in range(k)])
    spread = np.array([np.sqrt(((z[codes == j] - cents[j]) ** 2).sum(1)).mean() for j in range(k)])
    dist = np.sqrt(_sq_dist(cents, cents))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (spread[:, None] + spread[None]) / dist
    np.fill_diagonal(ratio, -np.inf)
    ratio[~np.isfinite(ratio) & (ratio != -np.inf)] = np.inf
    return float(ratio.max(1).mean())


def calinski_harabasz_score(z: np.ndarray, labels) -> float:
    """Calinski-Harabasz index (between- over within-cluster dispersion; higher = better)."""
    z = np.asarray(z, np.float64)
    codes, k = _codes(labels)
    n = len(z)
    if k < 2 or n <= k:
        return float("nan")
    mean = z.mean(0)
    between = within = 0.0
    for j in range(k):
        members = z[codes == j]
        c = members.mean(0)
        between += len(members) * ((c - mean) ** 2).sum()
        within += ((members - c) ** 2).sum()
    return float(between * (n - k) / (within * (k - 1))) if within > 0 else float("inf")


def _contingency(a, b) -> np.ndarray:
    ca, ka = _codes(a)
    cb, kb = _codes(b)
    table = np.zeros((ka, kb), np.int64)
    np.add.at(table, (ca, cb), 1)
    return table


def adjusted_rand_index(truth, pred) -> float:
    """Adjusted Rand index (Hubert and Arabie 1985): 1 = same partition, about 0 = chance.

    Example
    -------
    >>> round(adjusted_rand_index([0, 0, 1, 1], [0, 0, 1, 2]), 6)
    0.571429
    """
    table = _contingency(truth, pred)
    n = table.sum()
    comb = lambda x: x * (x - 1) / 2.0  # noqa: E731
    index = comb(table).sum()
    a, b = comb(table.sum(1)).sum(), comb(table.sum(0)).sum()
    expected = a * b / comb(n) if n > 1 else 0.0
    top = (a + b) / 2.0
    if top == expected:
        return 1.0
    return float((index - expected) / (top - expected))


def normalized_mutual_info(truth, pred) -> float:
    """Mutual information over the arithmetic mean of the two entropies (scikit-learn's default).

    Example
    -------
    >>> round(normalized_mutual_info([0, 0, 1, 1], [0, 0, 1, 2]), 4)
    0.8
    """
    table = _contingency(truth, pred).astype(np.float64)
    n = table.sum()
    pa_, pb = table.sum(1) / n, table.sum(0) / n
    nz = table > 0
    pij = table[nz] / n
    mi = float((pij * np.log(pij / np.outer(pa_, pb)[nz])).sum())
    ha = float(-(pa_[pa_ > 0] * np.log(pa_[pa_ > 0])).sum())
    hb = float(-(pb[pb > 0] * np.log(pb[pb > 0])).sum())
    if ha == 0 and hb == 0:
        return 1.0
    return float(mi / ((ha + hb) / 2.0)) if ha + hb > 0 else 0.0


def purity(truth, pred) -> float:
    """Fraction of cells whose cluster's majority label is their own label."""
    table = _contingency(truth, pred)
    return float(table.max(0).sum() / max(table.sum(), 1))


def knn_batch_entropy(z: np.ndarray, batches, k: int = 15, groups=None, sample_size: int = 5000, seed: int = 0,
                      block: int = 1024) -> float:
    """Batch mixing: the entropy of batch labels among each cell's ``k`` nearest neighbours (Euclidean,
    in ``z``), divided by the entropy of the batch proportions of the cells searched, averaged over cells.

    1 = neighbourhoods as mixed as the whole (sub)population, 0 = every neighbour from the cell's own
    batch. With ``groups`` (e.g. cell types), neighbours are searched within each group only and the
    groups' scores are averaged weighted by size: mixing of batches *within* a cell type, which a
    composition difference between batches cannot fake. NaN with fewer than 2 batches.
    """
    z = np.asarray(z, np.float64)
    idx = _subsample(len(z), int(sample_size), seed)
    z = z[idx]
    b_codes, nb = _codes(np.asarray(batches, dtype=object)[idx])
    if nb < 2:
        return float("nan")
    g = np.zeros(len(z), np.int64) if groups is None else _codes(np.asarray(groups, dtype=object)[idx])[0]
    total, weight = 0.0, 0
    for grp in np.unique(g):
        members = np.flatnonzero(g == grp)
        zz, bb = z[members], b_codes[members]
        props = np.bincount(bb, minlength=nb) / len(bb)
        h_ref = float(-(props[props > 0] * np.log(props[props > 0])).sum())
        kk = min(int(k), len(members) - 1)
        if h_ref <= 0 or kk < 1:
            continue
        sq = (zz * zz).sum(1)
        ent = np.zeros(len(members))
        for s in range(0, len(members), block):
            d = sq[s:s + block, None] - 2 * zz[s:s + block] @ zz.T + sq[None]
            rows = np.arange(d.shape[0])
            d[rows, rows + s] = np.inf  # a cell is not its own neighbour
            nn = np.argpartition(d, kk - 1, axis=1)[:, :kk]
            counts = np.zeros((len(rows), nb))
            np.add.at(counts, (np.repeat(rows, kk), bb[nn].ravel()), 1.0)
            p = counts / kk
            with np.errstate(divide="ignore", invalid="ignore"):
                ent[s:s + block] = -np.where(p > 0, p * np.log(p), 0.0).sum(1)
        total += float((ent / h_ref).sum())
        weight += len(members)
    return total / weight if weight else float("nan")


def clustering_metrics(z: np.ndarray, clusters, labels=None, batches=None, sample_size: int = 5000, knn: int = 15,
                       seed: int = 0) -> dict:
    """All metrics of the latent space (see the module docstring) as a JSON-ready dict.

    Parameters
    ----------
    z : (N, d) latent vectors (not a 2-D projection).
    clusters : (N,) cluster ids.
    labels : (N,) reference labels (``None`` entries ignored for label metrics), or ``None``.
    batches : (N,) batch (or slide) of each cell, or ``None``.
    sample_size : cells used by the O(N^2) metrics (silhouettes, kNN), seeded.
    knn : neighbours for the batch entropy.

    Returns
    -------
    dict with ``n_cells``, ``n_clusters``, ``silhouette``, ``davies_bouldin``, ``calinski_harabasz``, and when
    labels exist ``label``: {``n_labelled``, ``ari``, ``nmi``, ``purity``, ``silhouette_by_label``}, and when
    there are two or more batches ``batch``: {``n_batches``, ``silhouette_by_batch``, ``knn_entropy``, ``cluster_nmi``, and
    with labels ``silhouette_by_batch_within_label`` and ``knn_entropy_within_label``}.
    """
    z = np.asarray(z, np.float64)
    clusters = np.asarray(clusters)
    out = {"n_cells": int(len(z)), "n_clusters": int(len(np.unique(clusters))),
           "silhouette": silhouette_score(z, clusters, sample_size, seed),
           "davies_bouldin": davies_bouldin_score(z, clusters),
           "calinski_harabasz": calinski_harabasz_score(z, clusters)}
    labelled = None
    if labels is not None:
        labels = np.asarray(labels, dtype=object)
        labelled = np.array([v is not None and v == v for v in labels])
        if labelled.sum() >= 2:
            t, c = labels[labelled].astype(str), clusters[labelled]
            out["label"] = {"n_labelled": int(labelled.sum()), "n_labels": int(len(np.unique(t))),
                            "ari": adjusted_rand_index(t, c), "nmi": normalized_mutual_info(t, c),
                            "purity": purity(t, c),
                            "silhouette_by_label": silhouette_score(z[labelled], t, sample_size, seed)}
        else:
            labelled = None
    if batches is not None and len(np.unique(np.asarray(batches, dtype=object).astype(str))) >= 2:
        batches = np.asarray(batches, dtype=object).astype(str)
        bat = {"n_batches": int(len(np.unique(batches))),
               "silhouette_by_batch": silhouette_score(z, batches, sample_size, seed),
               "knn_entropy": knn_batch_entropy(z, batches, knn, None, sample_size, seed),
               "cluster_nmi": normalized_mutual_info(batches, clusters)}
        if labelled is not None:
            t = labels[labelled].astype(str)
            zs, bs = z[labelled], batches[labelled]
            per = []
            for lab in np.unique(t):
                m = t == lab
                if len(np.unique(bs[m])) >= 2 and m.sum() >= 3:
                    per.append((m.sum(), silhouette_score(zs[m], bs[m], sample_size, seed)))
            bat["silhouette_by_batch_within_label"] = (float(sum(w * s for w, s in per) / sum(w for w, _ in per))
                                                       if per else float("nan"))
            bat["knn_entropy_within_label"] = knn_batch_entropy(zs, bs, knn, t, sample_size, seed)
        out["batch"] = bat
    return out


def format_metrics(m: Mapping) -> str:
    """One or more readable lines of :func:`clustering_metrics` output."""
    lines = [f"{m['n_cells']} cells, {m['n_clusters']} clusters: silhouette {m['silhouette']:.3f}, "
             f"Davies-Bouldin {m['davies_bouldin']:.3f}, Calinski-Harabasz {m['calinski_harabasz']:.1f}"]
    if "label" in m:
        lab = m["label"]
        lines.append(f"vs {lab['n_labels']} labels ({lab['n_labelled']} cells): ARI {lab['ari']:.3f}, NMI {lab['nmi']:.3f}, "
                     f"purity {lab['purity']:.3f}, silhouette by label {lab['silhouette_by_label']:.3f}")
    if "batch" in m:
        b = m["batch"]
        text = (f"batch mixing ({b['n_batches']} batches): silhouette by batch {b['silhouette_by_batch']:.3f}, "
                f"kNN batch entropy {b['knn_entropy']:.3f}, NMI(cluster, batch) {b['cluster_nmi']:.3f}")
        if "knn_entropy_within_label" in b:
            text += (f"; within label: silhouette by batch {b['silhouette_by_batch_within_label']:.3f}, "
                     f"kNN batch entropy {b['knn_entropy_within_label']:.3f}")
        lines.append(text)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# Model files


def _tensor_tree(value):
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, dict):
        return {str(k): _tensor_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_tensor_tree(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _numpy_tree(value):
    if isinstance(value, torch.Tensor):
        return value.numpy()
    if isinstance(value, dict):
        return {k: _numpy_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numpy_tree(v) for v in value]
    return value


@dataclass
class Embedder:
    """A loaded embedder: the VAE, what it was trained on, the 2-D map and the clustering."""

    model: ConvVAE
    condition_on: str
    categories: list[str]
    channels: list[str]
    patch_size: int
    pca: dict
    clustering: dict
    model_id: str
    path: str = ""

    def conditions_for(self, values: Sequence) -> np.ndarray | None:
        """One-hot cVAE rows for these category values (``None`` for a plain VAE)."""
        return condition_matrix(list(values), self.categories) if self.condition_on != "none" else None


def save_embedder(path: str | os.PathLike, model: ConvVAE, condition_on: str, categories: Sequence[str],
                  channels: Sequence[str], patch_size: int, pca: Mapping, clustering: Mapping,
                  extra: Mapping | None = None) -> str:
    """Write a model file atomically (``torch.save`` of plain types and tensors); return its id."""
    cl = {k: v for k, v in clustering.items() if k not in ("labels",)}
    ckpt = {
        "format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION, "spec": model.spec.to_dict(),
        "state_dict": model.state_dict(), "condition_on": condition_on, "categories": [str(c) for c in categories],
        "channels": [str(c) for c in channels], "patch_size": int(patch_size),
        "pca": _tensor_tree(dict(pca)), "clustering": _tensor_tree({**cl, "bic": {str(k): v for k, v in cl["bic"].items()}}),
        "hemoprofile_version": hemoprofile.__version__, "stage": STAGE_VERSION, **_tensor_tree(dict(extra or {})),
    }
    with atomic_output(path) as tmp:
        torch.save(ckpt, tmp)
    return model_id(path)


def load_embedder(path: str | os.PathLike) -> Embedder:
    """Load a model file written by :func:`save_embedder`.

    Raises
    ------
    FileNotFoundError / ValueError naming the file when it is missing or not an embedder model.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"embedder model not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for foreign or corrupt files
        raise ValueError(f"{path}: not a readable embedder model ({err})") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path}: not a hemoprofile embedder model (format {ckpt.get('format') if isinstance(ckpt, dict) else type(ckpt)})")
    model = build_vae(ckpt["spec"])
    model.load_state_dict(ckpt["state_dict"])
    clustering = _numpy_tree(ckpt["clustering"])
    return Embedder(model.eval(), ckpt["condition_on"], list(ckpt["categories"]), list(ckpt["channels"]),
                    int(ckpt["patch_size"]), _numpy_tree(ckpt["pca"]), clustering, model_id(path), str(path))


# ---------------------------------------------------------------------------------------------------
# Stages


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value)}")


def _write_json(path, obj) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=_json_default, allow_nan=True))


def train_embedder(items: Sequence[EmbedSlide], out_model: str | os.PathLike, out_metrics: str | os.PathLike,
                   embed_cfg: Mapping | None = None, seed: int = 0,
                   truth_cells: str | os.PathLike | pd.DataFrame | None = None, threads: int | None = None,
                   progress: Callable[[str], None] | None = None) -> dict:
    """The ``train_embedder`` stage: sample cells, train the (c)VAE, fit map and clusters, score, save.

    Parameters
    ----------
    items : every slide of the cohort (one category per slide/batch/condition for a cVAE).
    out_model, out_metrics : model file and metrics JSON (both written atomically).
    embed_cfg : the ``embed`` config section.
    seed : the config's seed.
    truth_cells : synthetic truth_cells.parquet (reference labels for the metrics only).
    threads : CPU threads for torch.

    Returns
    -------
    The metrics dict written to ``out_metrics``: settings, sample sizes, training history, BIC per k,
    chosen k, PCA explained variance, :func:`clustering_metrics` of the training sample, model id.

    Example
    -------
    >>> train_embedder([EmbedSlide("S1", "results/S1/cells.parquet", "results/S1/patches.zarr")],
    ...                "results/models/embedder.pt", "results/models/embedder.metrics.json")  # doctest: +SKIP
    """
    cfg = resolve_embed(embed_cfg)
    say = progress or (lambda m: log.info(m))
    started = time.perf_counter()
    device = pick_device(cfg["device"], bool(cfg["mixed_precision"]), threads=threads, logger=log)
    say(f"device {device.description}")
    sample = load_sample(items, int(cfg["cells_per_slide"]), cfg["condition_on"], seed, truth_cells, say)
    categories = sorted({str(c) for c in sample.categories}) if cfg["condition_on"] != "none" else []
    conds = condition_matrix(sample.categories, categories)
    spec = VAESpec(len(sample.channels), sample.patch_size, int(cfg["latent_dim"]), tuple(cfg["widths"]),
                   len(categories))
    say(f"training a {'c' if categories else ''}VAE on {len(sample.patches)} cells of {len(items)} slides"
        + (f", conditioned on {cfg['condition_on']} ({len(categories)} categories)" if categories else ""))
    model, history = fit_vae(sample.patches, conds, spec, cfg["train"], float(cfg["beta"]), seed, device, say)
    z = encode(model, sample.patches, conds, device, int(cfg["batch_size"]))
    pca = fit_pca(z, 2)
    clustering = fit_clustering(z, cfg["cluster"], seed, say)
    say(f"{clustering['method']}: k = {clustering['k']} ({clustering['selected_by']})")
    metrics = clustering_metrics(z, clustering["labels"], sample.labels, sample.batches,
                                 int(cfg["metrics"]["sample_size"]), int(cfg["metrics"]["knn"]), seed)
    say("training sample: " + format_metrics(metrics).replace("\n", "; "))
    mid = save_embedder(out_model, model, cfg["condition_on"], categories, sample.channels, sample.patch_size, pca,
                        clustering, {"settings": {k: v for k, v in cfg.items() if k != "figures"}})
    result = {
        "model_id": mid, "stage": STAGE_VERSION, "settings": cfg, "seed": seed, "device": device.description,
        "n_cells": int(len(sample.patches)), "slides": [i.slide for i in items], "categories": categories,
        "channels": sample.channels, "patch_size": sample.patch_size,
        "history": history.epochs, "stopped": history.stopped, "train_seconds": history.seconds,
        "cluster": {"method": clustering["method"], "k": clustering["k"], "selected_by": clustering["selected_by"],
                    "bic": clustering["bic"]},
        "pca_explained_variance_ratio": pca["explained_variance_ratio"],
        "metrics_training_sample": metrics, "seconds": time.perf_counter() - started,
    }
    _write_json(out_metrics, result)
    say(f"wrote {out_model} (id {mid}) and {out_metrics} in {result['seconds']:.1f} s")
    return result


def embedding_schema(latent_dim: int, metadata: Mapping | None = None) -> pa.Schema:
    """Arrow schema of embedding.parquet (see the module docstring)."""
    fields = [pa.field("slide", pa.string()), pa.field("cell_id", pa.int64())]
    fields += [pa.field(f"z_{i}", pa.float32()) for i in range(latent_dim)]
    fields += [pa.field("map_x", pa.float32()), pa.field("map_y", pa.float32()), pa.field("cluster", pa.int32())]
    meta = {"hemoprofile": json.dumps(dict(metadata), default=_json_default)} if metadata else None
    return pa.schema(fields, metadata=meta)


def embed_slide(model_path: str | os.PathLike | Embedder, patches_path: str | os.PathLike,
                cells_path: str | os.PathLike, out_path: str | os.PathLike, *, slide: str | None = None,
                category: str | None = None, device: str = "auto", mixed_precision: bool = True,
                batch_size: int = 1024, threads: int | None = None,
                progress: Callable[[str], None] | None = None) -> dict:
    """The ``embed`` stage for one slide: latent means, map coordinates and clusters -> embedding.parquet.

    Streams ``batch_size`` patches at a time and writes one parquet row group per block, so memory is
    bounded whatever the slide's size.

    Parameters
    ----------
    model_path : a model file of :func:`train_embedder` (or a loaded :class:`Embedder`).
    patches_path, cells_path : the slide's patches.zarr and cells.parquet (row i = patch i).
    out_path : embedding.parquet (written atomically).
    slide : slide name (default: the cells table's ``slide`` column).
    category : the slide's cVAE condition value (its slide, batch or condition, as the model's
        ``condition_on``); a value the model was not trained on gets the average condition, with a warning.

    Returns
    -------
    dict: ``slide``, ``n_cells``, ``cluster_counts``, ``model_id``, ``seconds``.

    Raises
    ------
    ValueError naming the files when rows and patches disagree, or the patches' channels or size differ
    from the model's.
    """
    started = time.perf_counter()
    say = progress or (lambda m: log.info(m))
    emb = model_path if isinstance(model_path, Embedder) else load_embedder(model_path)
    array, names, attributes = open_patch_array(patches_path)
    if names != emb.channels or int(array.shape[-1]) != emb.patch_size:
        raise ValueError(f"{patches_path}: channels {names} / patch size {array.shape[-1]} differ from the model's "
                         f"{emb.channels} / {emb.patch_size} ({emb.path})")
    cells = read_cells(cells_path, ["slide", "cell_id"]) if "slide" in pq.read_schema(cells_path).names \
        else read_cells(cells_path, ["cell_id"])
    check_patches_match_cells(cells_path, cells, patches_path, array, attributes)
    slide = slide or (str(cells["slide"].iloc[0]) if len(cells) and "slide" in cells else os.path.basename(
        os.path.dirname(os.path.abspath(cells_path))))
    warning = None
    if emb.condition_on != "none":
        if category is None:
            raise ValueError(f"{emb.path} is conditioned on {emb.condition_on}: give the slide's {emb.condition_on}")
        if str(category) not in emb.categories:
            warning = (f"{emb.condition_on} {category!r} of slide {slide} was not in the embedder's training set; "
                       f"using the average condition")
            say("warning: " + warning)
            log.warning(warning)
    dev = pick_device(device, mixed_precision, threads=threads, logger=log)
    d = emb.model.spec.latent_dim
    schema = embedding_schema(d, {"stage": STAGE_VERSION, "model_id": emb.model_id, "condition_on": emb.condition_on,
                                  "category": category, "warning": warning, "map": "pca",
                                  "clustering": emb.clustering["method"], "k": int(emb.clustering["k"])})
    ids = cells["cell_id"].to_numpy(np.int64)
    counts = np.zeros(int(emb.clustering["k"]), np.int64)
    block = max(1, int(batch_size)) * 4
    with atomic_output(out_path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for s in range(0, len(ids), block):
            e = min(s + block, len(ids))
            conds = emb.conditions_for([category] * (e - s))
            z = encode(emb.model, np.asarray(array[s:e]), conds, dev, batch_size)
            xy = apply_pca(emb.pca, z)
            cl = assign_clusters(emb.clustering, z)
            counts += np.bincount(cl, minlength=len(counts))
            cols = [pa.array([slide] * (e - s), pa.string()), pa.array(ids[s:e], pa.int64())]
            cols += [pa.array(z[:, i], pa.float32()) for i in range(d)]
            cols += [pa.array(xy[:, 0], pa.float32()), pa.array(xy[:, 1], pa.float32()), pa.array(cl, pa.int32())]
            writer.write_table(pa.Table.from_arrays(cols, schema=schema))
            say(f"{e}/{len(ids)} cells embedded")
        if not len(ids):
            writer.write_table(schema.empty_table())
    seconds = time.perf_counter() - started
    say(f"{slide}: {len(ids)} cells in {seconds:.1f} s; cluster sizes {counts.tolist()}")
    return {"slide": slide, "n_cells": int(len(ids)), "cluster_counts": counts.tolist(), "model_id": emb.model_id,
            "seconds": seconds}


def read_embeddings(paths: Sequence[str | os.PathLike], max_cells: int = 0, seed: int = 0) -> pd.DataFrame:
    """Concatenate embedding.parquet tables, keeping at most ``max_cells`` rows overall (an even share
    per slide, seeded; 0 = all), with a ``row`` column: the row in its slide's table (= cells.parquet)."""
    frames = []
    per = int(math.ceil(max_cells / max(len(paths), 1))) if max_cells else 0
    for i, path in enumerate(paths):
        if not os.path.exists(path):
            raise FileNotFoundError(f"embedding table not found: {path}")
        table = pd.read_parquet(path)
        table["row"] = np.arange(len(table))
        if per and len(table) > per:
            table = table.iloc[np.sort(np.random.default_rng([seed, i]).choice(len(table), per, replace=False))]
        frames.append(table)
    if not frames:
        raise ValueError("no embedding tables given")
    return pd.concat(frames, ignore_index=True)


def cohort_labels(frame: pd.DataFrame, items: Sequence[EmbedSlide],
                  truth_cells: str | os.PathLike | pd.DataFrame | None = None) -> np.ndarray | None:
    """Reference labels of the rows of :func:`read_embeddings` (``None`` when no slide has any)."""
    truth = _truth_table(truth_cells)
    out = np.full(len(frame), None, object)
    found = False
    by_slide = {i.slide: i for i in items}
    for slide, rows in frame.groupby("slide").indices.items():
        item = by_slide.get(str(slide))
        if item is None:
            continue
        cells = _read_cells(item, with_position=bool(item.truth_labels and truth is not None))
        sub = cells.iloc[frame["row"].to_numpy()[rows]].reset_index(drop=True)
        labels = slide_labels(item, sub, truth)
        if labels is not None:
            out[rows] = labels
            found = True
    return out if found else None


def evaluate_embeddings(frame: pd.DataFrame, items: Sequence[EmbedSlide], condition_on: str = "none",
                        truth_cells=None, sample_size: int = 5000, knn: int = 15, seed: int = 0) -> dict:
    """:func:`clustering_metrics` of embedded cells (rows of :func:`read_embeddings`), with the batch of
    each cell from ``items`` and labels from truth or a ``label`` column; also per condition counts."""
    zcols = [c for c in frame.columns if c.startswith("z_")]
    by_slide = {i.slide: i for i in items}
    batches = np.array([(by_slide[s].batch or s) if s in by_slide else s for s in frame["slide"].astype(str)], object)
    labels = cohort_labels(frame, items, truth_cells)
    m = clustering_metrics(frame[zcols].to_numpy(), frame["cluster"].to_numpy(), labels, batches, sample_size, knn, seed)
    m["condition_on"] = condition_on
    return m
