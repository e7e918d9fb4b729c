"""Cell–cell interaction regression on a finished demo run (read-only): cut every slide's windows with
their ground-truth contact counts, fit the regressors in patient-grouped folds, print RMSE side by side.

    python bench/interaction.py --results /work/democlone/results [--work /tmp/x] [--epochs 30]

Prints the window count, the target's mean and SD, and the out-of-fold RMSE (patient-bootstrap 95% CI)
of: predicting the training folds' mean (baseline), ridge on the VAE latents, the window CNN, and the
segmentation's own contact count (how far counting on the pipeline's labels is from the truth).
Nothing is written under --results; windows go to --work (a temporary folder by default).
"""
import argparse
import os
import tempfile
import time

import pandas as pd

from hemoprofile.interaction.cohort import interaction_cohort
from hemoprofile.interaction.slide import slide_windows

ap = argparse.ArgumentParser()
ap.add_argument("--results", required=True)
ap.add_argument("--work", default=None)
ap.add_argument("--window-size", type=int, default=128)
ap.add_argument("--input-size", type=int, default=32)
ap.add_argument("--windows", type=int, default=16, help="cluster windows and random windows per slide (each)")
ap.add_argument("--epochs", type=int, default=30)
ap.add_argument("--folds", type=int, default=3)
ap.add_argument("--seed", type=int, default=0)
args = ap.parse_args()
R = args.results
work = args.work or tempfile.mkdtemp(prefix="interaction_bench_")
truth = pd.read_parquet(f"{R}/synthetic/truth_cells.parquet", columns=["slide", "patient", "cell_id", "cell_type", "y", "x"])
patients = truth.groupby("slide")["patient"].first().astype(str).to_dict()
slides = sorted(patients)
t0 = time.perf_counter()
dirs = {}
for s in slides:
    dirs[s] = f"{work}/{s}"
    slide_windows(s, preprocessed=f"{R}/{s}/preprocessed.zarr", labels=f"{R}/{s}/labels.zarr",
                  cells=f"{R}/{s}/cells.parquet", clusters=f"{R}/{s}/clusters.parquet",
                  embedding=f"{R}/{s}/embedding.parquet", embedder=f"{R}/models/embedder.pt", out_dir=dirs[s],
                  predictions=f"{R}/{s}/predictions.parquet", truth_labels=f"{R}/synthetic/{s}/truth_labels.zarr",
                  truth_cells=truth[truth["slide"] == s], window_size=args.window_size, input_size=args.input_size,
                  cluster_windows=args.windows, random_windows=args.windows, seed=args.seed, progress=lambda m: None)
t1 = time.perf_counter()
m = interaction_cohort(dirs, patients, f"{work}/predictions.parquet", f"{work}/metrics.json", folds=args.folds,
                       epochs=args.epochs, seed=args.seed, progress=lambda m: None)
t2 = time.perf_counter()
print(f"results {os.path.abspath(R)}: {len(slides)} slides, {m['all']['n_patients']} patients, "
      f"windows {args.window_size} px -> CNN input {args.input_size} px, {m['folds']} patient-grouped folds, "
      f"CNN {args.epochs} epochs, target: contacts from {', '.join(m['target_source'])}")
for part in ("all", "cluster", "random"):
    s = m[part]
    print(f"\n[{part} windows] n = {s['n_windows']}, target mean {s['target_mean']:.3f}, target SD {s['target_sd']:.3f}")
    print(f"  {'predictor':<20} {'RMSE':>7}  95% CI (patient bootstrap, {s['bootstrap']})")
    for name in ("mean", "latent_ridge", "cnn", "segmentation_count"):
        if name in s:
            lo, hi = s[name]["ci95"]
            print(f"  {name:<20} {s[name]['rmse']:7.3f}  [{lo:.3f}, {hi:.3f}]")
print(f"\nseconds: windows {t1 - t0:.1f}, fit + evaluate {t2 - t1:.1f}")
