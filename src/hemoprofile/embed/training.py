"""Training and running the (conditional) VAE of the embed stage.

- :func:`fit_vae`: trains a :class:`hemoprofile.nn.vae.ConvVAE` (a cVAE when given condition rows) on
  in-memory patches, seeded (deterministic on a CPU).
- :func:`encode` / :func:`reconstruct`: posterior means and reconstructions of stored patches.
- :func:`train_embedder`: the ``train_embedder`` stage: draws up to ``cells_per_slide`` cells per slide,
  trains the (c)VAE, encodes the sample, fits the 2-D map and the latent clusters on the sample's latent
  means (:mod:`hemoprofile.embed.clustering`), scores them (:mod:`hemoprofile.embed.metrics`) and writes one
  model file (:mod:`hemoprofile.embed.model_files`) plus a metrics JSON. Fitting map and latent clusters
  once, here, is what makes map coordinates and cluster ids comparable across slides.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from hemoprofile.embed.clustering import fit_latent_clustering, fit_pca
from hemoprofile.embed.metrics import format_metrics, latent_metrics, write_json
from hemoprofile.embed.model_files import save_embedder
from hemoprofile.embed.sample import EmbedSlide, condition_matrix, load_sample
from hemoprofile.embed.settings import STAGE_VERSION, embed_defaults, resolve_embed
from hemoprofile.nn.augment import random_dihedral
from hemoprofile.nn.devices import DeviceChoice, pick_device, ready_for_inference
from hemoprofile.nn.vae import ConvVAE, VAESpec, build_vae, vae_loss
from hemoprofile.vocabulary import to_unit

log = logging.getLogger(__name__)


def _unit_tensor(batch: np.ndarray) -> torch.Tensor:
    """Stored patches -> float32 tensor in [0, 1] (:func:`hemoprofile.vocabulary.to_unit`)."""
    return torch.from_numpy(np.ascontiguousarray(to_unit(np.ascontiguousarray(batch))))


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
    cfg = {**embed_defaults("train"), **dict(train_cfg or {})}
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
            x = _unit_tensor(patches[idx])
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
        x = _unit_tensor(patches[s:s + batch_size]).to(device.device)
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
    model = ready_for_inference(model, device.device)  # converts nothing when already there (threads share it)
    out = np.zeros((len(patches), model.spec.latent_dim), np.float32)
    for s in range(0, len(patches), batch_size):
        x = _unit_tensor(np.asarray(patches[s:s + batch_size])).to(device.device)
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
    x = _unit_tensor(np.asarray(patches))
    c = torch.from_numpy(conditions) if conditions is not None else None
    logits, _, _ = model(x, c)
    return torch.sigmoid(logits).numpy()


def train_embedder(items: Sequence[EmbedSlide], out_model: str | os.PathLike, out_metrics: str | os.PathLike,
                   embed_cfg: Mapping | None = None, seed: int = 0,
                   truth_cells: str | os.PathLike | pd.DataFrame | None = None, threads: int | None = None,
                   progress: Callable[[str], None] | None = None) -> dict:
    """The ``train_embedder`` stage: sample cells, train the (c)VAE, fit map and latent clusters, score, save.

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
    chosen k, PCA explained variance, :func:`~hemoprofile.embed.metrics.latent_metrics` of the training
    sample, model id.

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
    sample = load_sample(items, int(cfg["cells_per_slide"]), cfg["condition_on"], seed, truth_cells, say,
                         orientation=cfg["orientation"])
    # fixed-orientation patches are canonical: flips and 90-degree turns would undo it
    train_cfg = {**cfg["train"], "dihedral": bool(cfg["train"]["dihedral"]) and cfg["orientation"] == "none"}
    categories = sorted({str(c) for c in sample.categories}) if cfg["condition_on"] != "none" else []
    conds = condition_matrix(sample.categories, categories)
    spec = VAESpec(len(sample.channels), sample.patch_size, int(cfg["latent_dim"]), tuple(cfg["widths"]),
                   len(categories))
    say(f"training a {'c' if categories else ''}VAE on {len(sample.patches)} cells of {len(items)} slides"
        + (f", conditioned on {cfg['condition_on']} ({len(categories)} categories)" if categories else ""))
    model, history = fit_vae(sample.patches, conds, spec, train_cfg, float(cfg["beta"]), seed, device, say)
    z = encode(model, sample.patches, conds, device, int(cfg["batch_size"]))
    pca = fit_pca(z, 2)
    clustering = fit_latent_clustering(z, cfg["cluster"], seed, say)
    say(f"{clustering['method']}: k = {clustering['k']} ({clustering['selected_by']})")
    metrics = latent_metrics(z, clustering["labels"], sample.labels, sample.batches,
                             int(cfg["metrics"]["sample_size"]), int(cfg["metrics"]["knn"]), seed)
    say("training sample: " + format_metrics(metrics).replace("\n", "; "))
    mid = save_embedder(out_model, model, cfg["condition_on"], categories, sample.channels, sample.patch_size, pca,
                        clustering, {"settings": {k: v for k, v in cfg.items() if k != "figures"},
                                     "orientation": cfg["orientation"]})
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
    write_json(out_metrics, result)
    say(f"wrote {out_model} (id {mid}) and {out_metrics} in {result['seconds']:.1f} s")
    return result
