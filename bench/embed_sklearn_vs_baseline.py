"""Benchmark: the embed stage's scikit-learn map, latent clusters and metrics against the numpy code they
replaced, on one finished workflow run of the old code (the same VAE, the same latent vectors).

Takes a results folder written by the old code (``results/models/embedder.pt`` and its metrics JSON,
every slide's ``embedding.parquet``, ``cohort/embedding/metrics.json``, and for a synthetic run
``synthetic/samples.tsv``, ``truth_cells.parquet`` and ``truth_labels.zarr``) and the old code's ``src``
folder. It redraws the training sample exactly as ``train_embedder`` drew it and encodes it with the
run's VAE, then:

- checks the reproduction: the old code's PCA of these latents equals the model file's, and the old
  metrics of the model's latent clusters equal the run's metrics JSON;
- fits the map (PCA) and the latent clusters (GMM / k-means, k by BIC) with the new code and prints the
  old and new k, BIC per k, agreement of the two partitions (ARI), and every training-sample metric four
  ways: the run's JSON, old clusters + old metric code, new clusters + new metric code, and the two
  crossings (old metric code on the new clusters, new metric code on the old ones), which separate a
  change of the clustering from a change of the metric code;
- applies the new map and clusters to every embedded cell and counts how many ``map_x`` / ``map_y``
  float32 values and cluster ids differ from the run's embedding.parquet, then compares the cohort
  metrics (as the ``embedding_figures`` rule computes them) with ``cohort/embedding/metrics.json``.

The old code runs in a subprocess with ``--old-src`` first on its path (it has its own ``hemoprofile``).

Usage::

    nice .venv/bin/python bench/embed_sklearn_vs_baseline.py --old-src /tmp/baseline/src \\
        --results /tmp/baseline/results [--work /tmp/embed_sklearn_vs_baseline] [--seeds 4]
"""

from __future__ import annotations

import os

# one BLAS / OpenMP thread (as bench/embed.py): the fits run on one anyway; must precede numpy's import
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import adjusted_rand_score  # noqa: E402

from hemoprofile.embed.clustering import (  # noqa: E402
    apply_pca,
    assign_latent_clusters,
    fit_latent_clustering,
    fit_pca,
)
from hemoprofile.embed.metrics import evaluate_embeddings, latent_metrics  # noqa: E402
from hemoprofile.embed.model_files import load_embedder  # noqa: E402
from hemoprofile.embed.sample import EmbedSlide, condition_matrix, load_sample  # noqa: E402
from hemoprofile.embed.slide import read_embeddings  # noqa: E402
from hemoprofile.embed.training import encode  # noqa: E402
from hemoprofile.nn.devices import pick_device  # noqa: E402

#: The old code's side, run with the old src first on sys.path; reads and writes files in the work folder.
OLD_SIDE = r"""
import json, sys
import numpy as np
import pandas as pd
from hemoprofile import embed as old

assert old.__file__.startswith(sys.argv[3]), f"the old side imported {old.__file__}, not the old src"
work, model_path = sys.argv[1], sys.argv[2]
job = json.load(open(f"{work}/job.json"))
d = np.load(f"{work}/train.npz", allow_pickle=True)
z, new_labels = d["z"], d["new_labels"]
labels = d["labels"] if d["has_labels"] else None
batches = d["batches"]
ss, knn, seed = job["sample_size"], job["knn"], job["seed"]
emb = old.load_embedder(model_path)
old_labels = old.assign_clusters(emb.clustering, z)
pca = old.fit_pca(z, 2)
out = {
    "pca_equal_to_model": bool(np.array_equal(pca["components"], emb.pca["components"])
                               and np.array_equal(pca["mean"], emb.pca["mean"])),
    "train_old_on_old": old.clustering_metrics(z, old_labels, labels, batches, ss, knn, seed),
    "train_old_on_new": old.clustering_metrics(z, new_labels, labels, batches, ss, knn, seed),
}
items = [old.EmbedSlide(**i) for i in job["items"]]
frame = old.read_embeddings(job["embeddings"], job["max_points"], seed)
out["cohort_old_on_old"] = old.evaluate_embeddings(frame, items, emb.condition_on, job["truth_cells"], ss, knn, seed)
cohort_new = np.load(f"{work}/cohort_new_labels.npy")
frame["cluster"] = cohort_new
out["cohort_old_on_new"] = old.evaluate_embeddings(frame, items, emb.condition_on, job["truth_cells"], ss, knn, seed)
np.save(f"{work}/train_old_labels.npy", old_labels)
json.dump(out, open(f"{work}/old.json", "w"), default=lambda v: v.item() if isinstance(v, np.generic) else v.tolist())
"""

#: The old code's latent clusters of the training sample at other seeds (``--seeds``).
OLD_SEEDS = r"""
import json, sys
import numpy as np
from hemoprofile import embed as old

work, seeds = sys.argv[1], json.loads(sys.argv[2])
job = json.load(open(f"{work}/job.json"))
z = np.load(f"{work}/train.npz", allow_pickle=True)["z"]
out = {}
for seed in seeds:
    fit = old.fit_clustering(z, job["cluster"], seed, progress=lambda m: None)
    np.save(f"{work}/old_labels_seed{seed}.npy", fit["labels"])
    out[str(seed)] = {"k": fit["k"], "bic": fit["bic"][fit["k"]]}
json.dump(out, open(f"{work}/old_seeds.json", "w"))
"""


def flatten(m: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in m.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


def max_diff(a: dict, b: dict, silhouettes: bool = True) -> float:
    fa, fb = flatten(a), flatten(b)
    keys = [k for k in fb if silhouettes or "silhouette" not in k]
    return max(abs(fa.get(k, np.nan) - fb[k]) for k in keys)


def table(title: str, columns: dict[str, dict]) -> None:
    flat = {name: flatten(m) for name, m in columns.items()}
    keys = [k for k in flat[next(iter(flat))] if k != "n_cells"]
    print(f"\n{title}")
    print(f"  {'metric':<42}" + "".join(f"{name:>16}" for name in flat))
    for key in keys:
        print(f"  {key:<42}" + "".join(f"{flat[name].get(key, float('nan')):>16.6g}" for name in flat))


def seed_spread(args, work: Path, z, sample, cfg: dict, seed: int, ss: int, knn: int, env: dict) -> None:
    """Old and new latent clusters of the training sample at ``args.seeds`` other seeds, all scored with the
    new metric code: how far apart two seeds of one implementation are, beside how far apart the two are."""
    seeds = list(range(seed + 1, seed + 1 + int(args.seeds)))
    subprocess.run([sys.executable, "-c", OLD_SEEDS, str(work), json.dumps(seeds)], check=True, env=env,
                   cwd=str(work))
    old_fits = json.loads((work / "old_seeds.json").read_text())
    keys = ("k", "silhouette", "davies_bouldin", "calinski_harabasz", "label.ari", "label.nmi", "label.purity",
            "batch.cluster_nmi")
    rows = {"old": [], "new": []}
    for s in seeds:
        fit = fit_latent_clustering(z, cfg["cluster"], s, progress=lambda m: None)
        for name, labels, k in (("old", np.load(work / f"old_labels_seed{s}.npy"), old_fits[str(s)]["k"]),
                                ("new", fit["labels"], fit["k"])):
            m = flatten(latent_metrics(z, labels, sample.labels, sample.batches, ss, knn, seed))
            rows[name].append({"k": float(k), **{key: m.get(key, np.nan) for key in keys[1:]}})
    print(f"\nseed spread: latent clusters of the training sample at seeds {seeds}, every partition scored "
          "with the new metric code (mean ± sd over the seeds; min..max)")
    print(f"  {'metric':<22}{'old':>34}{'new':>34}")
    for key in keys:
        cells = []
        for name in ("old", "new"):
            v = np.array([r[key] for r in rows[name]])
            cells.append(f"{v.mean():.4g} ± {v.std():.2g} ({v.min():.4g}..{v.max():.4g}) ")
        print(f"  {key:<22}" + "".join(f"{c:>34}" for c in cells))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--old-src", type=Path, required=True, help="the old code's src folder")
    p.add_argument("--results", type=Path, required=True, help="a results folder the old code wrote")
    p.add_argument("--work", type=Path, default=Path("/tmp/embed_sklearn_vs_baseline"))
    p.add_argument("--seeds", type=int, default=0,
                   help="also fit old and new latent clusters at this many other seeds (the spread of each)")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    started = time.perf_counter()
    work, results = args.work, args.results
    work.mkdir(parents=True, exist_ok=True)
    model_path = results / "models" / "embedder.pt"
    run = json.loads((results / "models" / "embedder.metrics.json").read_text())
    cfg, seed = run["settings"], int(run["seed"])
    ss, knn = int(cfg["metrics"]["sample_size"]), int(cfg["metrics"]["knn"])
    sheet = pd.read_csv(results / "synthetic" / "samples.tsv", sep="\t", dtype=str).set_index("slide")
    synthetic = (results / "synthetic" / "truth_cells.parquet").exists()
    truth_cells = str(results / "synthetic" / "truth_cells.parquet") if synthetic else None
    items = []
    for slide in run["slides"]:
        row = sheet.loc[slide]
        batch = row.get("batch")
        items.append(EmbedSlide(slide, str(results / slide / "cells.parquet"), str(results / slide / "patches.zarr"),
                                str(row["patient"]), str(row["condition"]),
                                slide if batch is None or pd.isna(batch) or batch == "" else str(batch),
                                str(results / "synthetic" / slide / "truth_labels.zarr") if synthetic else None))
    print(f"{results}: {len(items)} slides, model {run['model_id']}, trained on {run['n_cells']} cells "
          f"({run['device']}); cluster {run['cluster']['method']} k={run['cluster']['k']}")

    # the training sample and its latents, as train_embedder drew and encoded them
    emb = load_embedder(model_path)
    sample = load_sample(items, int(cfg["cells_per_slide"]), cfg["condition_on"], seed, truth_cells,
                         progress=lambda m: None)
    conds = condition_matrix(sample.categories, emb.categories) if emb.condition_on != "none" else None
    z = encode(emb.model, sample.patches, conds, pick_device("cpu", mixed_precision=False), int(cfg["batch_size"]))
    print(f"training sample: {len(z)} cells re-encoded in {time.perf_counter() - started:.0f} s")

    t = time.perf_counter()
    pca = fit_pca(z, 2)
    fit = fit_latent_clustering(z, cfg["cluster"], seed, progress=lambda m: None)
    fit_seconds = time.perf_counter() - t
    new_labels = fit["labels"]
    train_new = latent_metrics(z, new_labels, sample.labels, sample.batches, ss, knn, seed)

    # every embedded cell: the new map and clusters against the run's columns
    paths = [str(results / i.slide / "embedding.parquet") for i in items]
    n_cells = map_diff = map_max = 0
    ari_parts = ([], [])
    for path in paths:
        e = pd.read_parquet(path)
        zz = e[[c for c in e.columns if c.startswith("z_")]].to_numpy()
        xy = apply_pca(pca, zz)
        old_xy = e[["map_x", "map_y"]].to_numpy()
        map_diff += int((xy != old_xy).sum())
        map_max = max(map_max, float(np.abs(xy - old_xy).max()) if len(e) else 0.0)
        cl = assign_latent_clusters(fit, zz)
        ari_parts[0].append(e["cluster"].to_numpy())
        ari_parts[1].append(cl)
        n_cells += len(e)
    old_cohort_cl, new_cohort_cl = np.concatenate(ari_parts[0]), np.concatenate(ari_parts[1])
    frame = read_embeddings(paths, int(cfg["figures"]["max_points"]), seed)
    old_frame_clusters = frame["cluster"].to_numpy().copy()
    zcols = [c for c in frame.columns if c.startswith("z_")]
    frame_new_clusters = assign_latent_clusters(fit, frame[zcols].to_numpy())
    frame["cluster"] = frame_new_clusters
    cohort_new = evaluate_embeddings(frame, items, emb.condition_on, truth_cells, ss, knn, seed)
    frame["cluster"] = old_frame_clusters
    cohort_new_on_old = evaluate_embeddings(frame, items, emb.condition_on, truth_cells, ss, knn, seed)

    # the old code's side
    np.savez(work / "train.npz", z=z, new_labels=new_labels, has_labels=sample.labels is not None,
             labels=sample.labels if sample.labels is not None else np.zeros(0), batches=sample.batches)
    np.save(work / "cohort_new_labels.npy", frame_new_clusters)
    job = {"cluster": cfg["cluster"], "sample_size": ss, "knn": knn, "seed": seed, "embeddings": paths, "truth_cells": truth_cells,
           "max_points": int(cfg["figures"]["max_points"]),
           "items": [{"slide": i.slide, "cells": i.cells, "patches": i.patches, "patient": i.patient,
                      "condition": i.condition, "batch": i.batch, "truth_labels": i.truth_labels} for i in items]}
    (work / "job.json").write_text(json.dumps(job))
    env = {**os.environ, "PYTHONPATH": str(args.old_src)}
    subprocess.run([sys.executable, "-c", OLD_SIDE, str(work), str(model_path), str(args.old_src.resolve())], check=True, env=env,
                   cwd=str(work))
    old = json.loads((work / "old.json").read_text())
    old_labels = np.load(work / "train_old_labels.npy")
    train_new_on_old = latent_metrics(z, old_labels, sample.labels, sample.batches, ss, knn, seed)

    print(f"\nreproduction: old PCA of the re-encoded sample == the model file's: {old['pca_equal_to_model']}; "
          f"old metrics vs the run's JSON: max |diff| {max_diff(old['train_old_on_old'], run['metrics_training_sample']):.3g} "
          "(BLAS thread count changes the silhouettes' last bits)")
    print("same latent clusters, new metric code vs old, max |diff| without / with the silhouettes (sklearn draws "
          f"its silhouette sample differently): {max_diff(train_new_on_old, old['train_old_on_old'], False):.3g} / "
          f"{max_diff(train_new_on_old, old['train_old_on_old']):.3g}")
    print(f"\nmap: components max |new - old| {np.abs(pca['components'] - emb.pca['components']).max():.3g}, "
          f"mean max |new - old| {np.abs(pca['mean'] - emb.pca['mean']).max():.3g}; explained variance "
          f"{np.round(pca['explained_variance_ratio'], 6).tolist()} (old {np.round(emb.pca['explained_variance_ratio'], 6).tolist()})")
    print(f"     {map_diff} of {2 * n_cells} map_x/map_y float32 values differ from the run's embedding.parquet "
          f"(largest difference {map_max:.3g})")
    print(f"\nlatent clusters ({cfg['cluster']['method']}, k {cfg['cluster']['k_min']}..{cfg['cluster']['k_max']} by BIC "
          f"unless k given; new fit {fit_seconds:.1f} s): old k={run['cluster']['k']}, new k={fit['k']}")
    print("  k    BIC old            BIC new")
    for k in sorted(fit["bic"]):
        print(f"  {k:<4} {run['cluster']['bic'].get(str(k), float('nan')):<18.2f} {fit['bic'][k]:.2f}")
    print(f"  ARI(old, new) on the training sample {adjusted_rand_score(old_labels, new_labels):.4f}; on all "
          f"{n_cells} embedded cells {adjusted_rand_score(old_cohort_cl, new_cohort_cl):.4f}; cluster sizes old "
          f"{np.bincount(old_cohort_cl).tolist()} new {np.bincount(new_cohort_cl).tolist()}")
    table("training sample (embedder.metrics.json metrics_training_sample)",
          {"run JSON": run["metrics_training_sample"], "old cl+old m": old["train_old_on_old"],
           "new cl+new m": train_new, "new cl+old m": old["train_old_on_new"], "old cl+new m": train_new_on_old})
    cohort_json = json.loads((results / "cohort" / "embedding" / "metrics.json").read_text())
    table(f"cohort ({len(frame)} cells, cohort/embedding/metrics.json)",
          {"run JSON": cohort_json, "old cl+old m": old["cohort_old_on_old"], "new cl+new m": cohort_new,
           "new cl+old m": old["cohort_old_on_new"], "old cl+new m": cohort_new_on_old})
    if args.seeds:
        seed_spread(args, work, z, sample, cfg, seed, ss, knn, env)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
