"""Cell–cell interaction regression on a finished demo run (read-only): the interaction stage's own code
(hemoprofile.interaction.cohort.run_interaction) on every slide, then the RMSE side by side.

    python bench/interaction.py --results /work/democlone/results [--work DIR] [--epochs 25]

Prints the window count, the target's mean and SD, and the out-of-fold RMSE (patient-bootstrap 95% CI)
of: predicting the training folds' mean (the baseline), ridge on the VAE latents, the window CNN, and
the segmentation's own contact count (no model: how far counting on the pipeline's labels is from the
truth); then an ablation of the latent regressor's inputs (ridge, same folds). Nothing is written under
--results; the stage's outputs go to --work (a temporary folder by default).
"""
import argparse
import os
import tempfile
import time

import numpy as np
import pandas as pd
import torch

from hemoprofile.embed.slide import patch_encoder
from hemoprofile.interaction.cohort import run_interaction
from hemoprofile.interaction.regression import latent_regressor_oof, rmse
from hemoprofile.interaction.slide import read_windows

ap = argparse.ArgumentParser()
ap.add_argument("--results", required=True)
ap.add_argument("--work", default=None)
ap.add_argument("--window-size", type=int, default=128)
ap.add_argument("--input-size", type=int, default=32)
ap.add_argument("--windows", type=int, default=16, help="cluster windows and random windows per slide (each)")
ap.add_argument("--epochs", type=int, default=25)
ap.add_argument("--cnn-width", type=int, default=8)
ap.add_argument("--folds", type=int, default=3)
ap.add_argument("--seed", type=int, default=0)
args = ap.parse_args()
torch.set_num_threads(1)
R = args.results
work = args.work or tempfile.mkdtemp(prefix="interaction_bench_")
truth = pd.read_parquet(f"{R}/synthetic/truth_cells.parquet", columns=["slide", "patient"])
patients = truth.groupby("slide")["patient"].first().astype(str).to_dict()
slides = {s: {"preprocessed": f"{R}/{s}/preprocessed.zarr", "labels": f"{R}/{s}/labels.zarr",
              "cells": f"{R}/{s}/cells.parquet", "clusters": f"{R}/{s}/clusters.parquet",
              "embedding": f"{R}/{s}/embedding.parquet", "predictions": f"{R}/{s}/predictions.parquet",
              "truth_labels": f"{R}/synthetic/{s}/truth_labels.zarr"} for s in sorted(patients)}
settings = {"window_size": args.window_size, "input_size": args.input_size, "cluster_windows": args.windows,
            "random_windows": args.windows, "folds": args.folds, "epochs": args.epochs, "cnn_width": args.cnn_width}
t0, c0 = time.perf_counter(), time.process_time()
m = run_interaction(slides, patients, work, encoder=patch_encoder(f"{R}/models/embedder.pt"),
                    truth_cells=f"{R}/synthetic/truth_cells.parquet", settings=settings, seed=args.seed,
                    progress=lambda _m: None)
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
print(f"results {os.path.abspath(R)}: {len(slides)} slides, {m['all']['n_patients']} patients; windows "
      f"{args.window_size} px ({args.windows} on clusters + {args.windows} random per slide) -> CNN input "
      f"{args.input_size} px; {m['folds']} patient-grouped folds; CNN width {args.cnn_width}, {args.epochs} epochs; "
      f"target: contacts from {', '.join(m['target_source'])}")
for part in ("all", "cluster", "random"):
    s = m[part]
    print(f"\n[{part} windows] n = {s['n_windows']}, target mean {s['target_mean']:.3f}, target SD {s['target_sd']:.3f}")
    print(f"  {'predictor':<20} {'RMSE':>7}  95% CI (patient bootstrap, {s['bootstrap']})")
    for name in ("mean", "latent_ridge", "cnn", "segmentation_count"):
        if name in s:
            lo, hi = s[name]["ci95"]
            print(f"  {name:<20} {s[name]['rmse']:7.3f}  [{lo:.3f}, {hi:.3f}]")

table, _ = read_windows([os.path.join(work, "windows", s) for s in slides])
pred = pd.read_parquet(os.path.join(work, "predictions.parquet"))
y, folds = table["contacts"].to_numpy(np.float64), pred["fold"].to_numpy()
zw, zc = table.filter(like="zwin_").to_numpy(), table.filter(like="zcell_").to_numpy()
n = table[["seg_n_cells"]].to_numpy(np.float64)
print("\nlatent ablation (ridge, same folds, all windows):")
for name, X in (("window latent (zwin)", zw), ("mean cell latent (zcell)", zc), ("both (the stage's)", np.hstack([zw, zc])),
                ("segmented cell count only", n), ("both + count x zcell", np.hstack([zw, zc, zc * n]))):
    print(f"  {name:<28} RMSE {rmse(y, latent_regressor_oof(X, y, folds)):.3f}")
print(f"\nstage seconds: wall {wall:.1f}, CPU {cpu:.1f} (windows + both regressors, one process)")
