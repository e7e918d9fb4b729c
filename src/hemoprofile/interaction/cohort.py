"""The ``interaction`` stage over the cohort (:func:`run_interaction`): every slide's windows
(:func:`hemoprofile.interaction.slide.slide_windows`, one slide in memory at a time, into
``windows/<slide>/``), then both regressors in patient-grouped folds (:func:`interaction_cohort`).

Why one cohort job and not a job per slide: the windows of a slide cost about 0.3 s, loading torch and
the embedder in a job of its own several seconds; the regressors need every slide anyway. A cohort of
hundreds of slides still holds only one slide's labels and image window at a time plus the windows
(``interaction.cluster_windows + random_windows`` per slide, 4 KB each at 32 px).

Outputs in ``<results>/cohort/interaction/``:

``slides.parquet``, one row per slide: ``slide``, ``patient``, ``n_cells``, ``n_ctc``, ``contacts``,
``ctc_leukocyte_contacts`` over the whole slide from the segmentation (labels.zarr, the ctc
classifier's ``pred_ctc``; what the patient table uses), and ``truth_*`` the same from the ground truth
(synthetic slides; NaN otherwise).

``predictions.parquet``, one row per window: ``slide``, ``patient``, ``window``, ``kind``, ``target``
(the window's ``contacts``), ``target_source``, ``n_cells``, ``seg_contacts``, ``ctc_leukocyte_contacts``,
``fold`` (the held-out fold it was predicted in), ``pred_mean`` (training folds' mean), ``pred_latent``
(ridge on the VAE latents), ``pred_cnn`` (the window CNN); every prediction out of fold.

``metrics.json``: :func:`hemoprofile.interaction.regression.rmse_summary` over all windows and per
window kind, plus the settings, the fold count and seconds.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd

from hemoprofile.interaction.regression import (cnn_regressor_oof, latent_regressor_oof, mean_baseline_oof,
                                                patient_folds, rmse_summary)
from hemoprofile.interaction.slide import Encoder, read_windows, slide_windows
from hemoprofile.io import atomic_output

log = logging.getLogger(__name__)

#: Per-slide totals of slides.parquet (segmentation, then ground truth).
SLIDE_TOTALS = ("n_cells", "n_ctc", "contacts", "ctc_leukocyte_contacts", "truth_n_cells", "truth_n_ctc",
                "truth_contacts", "truth_ctc_leukocyte_contacts")

#: Predictions compared in metrics.json (column of predictions.parquet -> name in the metrics).
PREDICTORS = {"pred_mean": "mean", "pred_latent": "latent_ridge", "pred_cnn": "cnn"}


def latent_features(table: pd.DataFrame) -> np.ndarray:
    """The latent regressor's input: ``zwin_*`` and ``zcell_*`` columns of windows.parquet."""
    cols = [c for c in table.columns if c.startswith(("zwin_", "zcell_"))]
    if not cols:
        raise ValueError("windows table has no zwin_/zcell_ latent columns")
    return table[cols].to_numpy(np.float64)


def fit_and_evaluate(table: pd.DataFrame, pixels: np.ndarray, patients, *, folds: int = 3, epochs: int = 25,
                     cnn_width: int = 8, bootstrap: int = 1000, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """Out-of-fold predictions of the mean, ridge-on-latent and CNN regressors, and their RMSE summary.

    Parameters
    ----------
    table : windows (concatenated windows.parquet of the slides).
    pixels : (n, C, S, S) stored windows, row i = table row i.
    patients : each window's patient (folds hold whole patients).

    Returns
    -------
    (predictions table, metrics dict) as described in the module docstring.
    """
    y = table["contacts"].to_numpy(np.float64)
    fold = patient_folds(patients, folds, seed)
    out = pd.DataFrame({
        "slide": table["slide"].astype(str).to_numpy(), "patient": np.asarray(patients).astype(str),
        "window": table["window"].to_numpy(), "kind": table["kind"].astype(str).to_numpy(), "target": y,
        "target_source": table["target_source"].astype(str).to_numpy(), "n_cells": table["n_cells"].to_numpy(),
        "seg_contacts": table["seg_contacts"].to_numpy(),
        "ctc_leukocyte_contacts": table["ctc_leukocyte_contacts"].to_numpy(np.float64), "fold": fold,
    })
    out["pred_mean"] = mean_baseline_oof(y, fold)
    out["pred_latent"] = latent_regressor_oof(latent_features(table), y, fold)
    out["pred_cnn"] = cnn_regressor_oof(pixels, y, fold, epochs=epochs, width=cnn_width, seed=seed)
    metrics = {"target": "contacts", "target_source": sorted(set(out["target_source"])), "folds": int(fold.max() + 1),
               "window_size": int(table["size"].iloc[0]) if len(table) else None,
               "input_size": int(pixels.shape[-1]), "epochs": int(epochs)}
    preds = {name: out[col].to_numpy() for col, name in PREDICTORS.items()}
    if set(out["target_source"]) == {"truth"}:  # how far the segmentation's own count is from the truth
        preds["segmentation_count"] = out["seg_contacts"].to_numpy(np.float64)
    metrics["all"] = rmse_summary(y, preds, out["patient"], bootstrap, seed)
    for kind, part in out.groupby("kind"):
        sub = {name: p[part.index.to_numpy()] for name, p in preds.items()}
        metrics[str(kind)] = rmse_summary(part["target"].to_numpy(), sub, part["patient"], bootstrap, seed)
    return out, metrics


def interaction_cohort(window_dirs: Mapping[str, str], patients: Mapping[str, str], out_predictions: str,
                       out_metrics: str, *, folds: int = 3, epochs: int = 25, cnn_width: int = 8,
                       bootstrap: int = 1000, seed: int = 0, progress: Callable[[str], object] | None = None) -> dict:
    """Fit and evaluate the regressors on every slide's windows; write predictions.parquet and metrics.json.

    Parameters
    ----------
    window_dirs : slide -> its ``interaction`` folder (windows.parquet, windows.zarr).
    patients : slide -> patient (sample sheet).
    """
    say = progress or log.info
    started = time.perf_counter()
    table, pixels = read_windows(list(window_dirs.values()))
    missing = sorted(set(table["slide"].astype(str)) - set(patients))
    if missing:
        raise ValueError(f"slides without a patient in the sample sheet: {missing}")
    pat = table["slide"].astype(str).map(patients).to_numpy()
    say(f"{len(table)} windows of {len(window_dirs)} slides, {len(set(pat))} patients")
    out, metrics = fit_and_evaluate(table, pixels, pat, folds=folds, epochs=epochs, cnn_width=cnn_width,
                                    bootstrap=bootstrap, seed=seed)
    metrics["seconds"] = time.perf_counter() - started
    for path in (out_predictions, out_metrics):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_output(out_predictions) as tmp:
        out.to_parquet(tmp, index=False)
    with atomic_output(out_metrics) as tmp:
        tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    a = metrics["all"]
    say(f"RMSE (target SD {a['target_sd']:.2f}): " + ", ".join(
        f"{name} {a[name]['rmse']:.2f}" for name in a if isinstance(a[name], dict)))
    return metrics


def run_interaction(slides: Mapping[str, Mapping[str, str]], patients: Mapping[str, str], out_dir: str, *,
                    encoder: Encoder, truth_cells: str | None = None, categories: Mapping[str, str] | None = None,
                    settings: Mapping | None = None, halo_px: int = 64, seed: int = 0,
                    progress: Callable[[str], object] | None = None) -> dict:
    """The whole stage: windows of every slide, per-slide totals, regressors, metrics.

    Parameters
    ----------
    slides : slide -> {"preprocessed", "labels", "cells", "clusters", "embedding", "predictions" and, for
        synthetic slides, "truth_labels"} paths.
    patients : slide -> patient.
    out_dir : ``<results>/cohort/interaction`` (windows/, slides.parquet, predictions.parquet, metrics.json).
    encoder : the project's VAE as a function (``hemoprofile.embed.slide.patch_encoder`` of the embedder
        model file); ``categories``: slide -> its cVAE condition value.
    truth_cells : truth_cells.parquet of a synthetic cohort (targets from the truth), else None.
    settings : the config's ``interaction`` section (window_size, input_size, cluster_windows,
        random_windows, folds, epochs, cnn_width, bootstrap).
    """
    cfg = {"window_size": 128, "input_size": 32, "cluster_windows": 16, "random_windows": 16, "folds": 3,
           "epochs": 25, "cnn_width": 8, "bootstrap": 1000, **dict(settings or {})}
    say = progress or log.info
    truth = None
    if truth_cells:
        truth = pd.read_parquet(truth_cells, columns=["slide", "cell_id", "cell_type", "y", "x"])
    dirs, totals = {}, []
    for slide, paths in slides.items():
        dirs[slide] = os.path.join(out_dir, "windows", slide)
        use_truth = truth is not None and paths.get("truth_labels")
        result = slide_windows(
            slide, preprocessed=paths["preprocessed"], labels=paths["labels"], cells=paths["cells"],
            clusters=paths["clusters"], embedding=paths["embedding"], encoder=encoder, out_dir=dirs[slide],
            predictions=paths.get("predictions"), truth_labels=paths.get("truth_labels") if use_truth else None,
            truth_cells=truth[truth["slide"] == slide] if use_truth else None, window_size=cfg["window_size"],
            input_size=cfg["input_size"], cluster_windows=cfg["cluster_windows"],
            random_windows=cfg["random_windows"], halo_px=halo_px, seed=seed,
            category=(categories or {}).get(slide), progress=say)
        totals.append({"slide": slide, "patient": str(patients[slide]),
                       **{k: result.get(k) for k in SLIDE_TOTALS}})
    table = pd.DataFrame(totals, columns=["slide", "patient", *SLIDE_TOTALS])
    for k in SLIDE_TOTALS:
        table[k] = pd.to_numeric(table[k], errors="coerce").astype(np.float64)
    with atomic_output(os.path.join(out_dir, "slides.parquet")) as tmp:
        table.to_parquet(tmp, index=False)
    return interaction_cohort(dirs, patients, os.path.join(out_dir, "predictions.parquet"),
                              os.path.join(out_dir, "metrics.json"), folds=cfg["folds"], epochs=cfg["epochs"],
                              cnn_width=cfg["cnn_width"], bootstrap=cfg["bootstrap"], seed=seed, progress=say)
