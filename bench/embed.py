"""Benchmark: the unsupervised latent space, VAE vs conditional VAE, on a synthetic cohort with a strong
per-slide batch effect and on the PBC collection.

Synthetic: simulates a small cohort (``--patients`` per condition, one slide each) with
``synthetic.batch_effect`` = ``--batch-effect`` (default 0.5, above the config default 0.15, so there is
a slide effect to remove), then runs tile, preprocess, segment (classical) and extract through the
package functions (or takes a finished results folder with ``--results``). Truth cell types come from
``truth_labels.zarr`` under each segmented cell's centroid. Per model (and a named baseline: PCA of the
raw patch pixels to the same dimension, clustered the same way) it prints, over every embedded cell:

- clustering on the latent space itself: silhouette, Davies-Bouldin, Calinski-Harabasz (k by BIC);
- agreement with truth cell types: ARI, NMI, purity, and the silhouette of the latents by cell type;
- batch mixing: silhouette by slide (lower = better mixed), kNN slide entropy (1 = as mixed as the
  cohort), both also within each cell type (so differing compositions of the slides cannot fake it),
  and NMI(cluster, slide) (lower = clusters less tied to a slide).

It also prints how much of the simulated gain is left after preprocessing: the spread across slides
(coefficient of variation of the per-slide median) of each channel's mean intensity of granulocytes,
in the raw image (cells.parquet ``mean_<C>``) and in the patches (preprocessed, percentile-clipped).

PBC (``/work/shared/data/pbc``, 8 classes, one collection = one batch): ingests it with
:func:`hemoprofile.ingest.collection.ingest_collection` and prints the same clustering metrics and agreement
with the 8 labels for the VAE and the raw-pixel baseline (a cVAE has nothing to condition on there).

Orientation (``--orientation``, issue 21): instead of the VAE/cVAE comparison, trains a plain VAE with
``embed.orientation`` none and major_axis side by side (same epochs, same seeds, ``--seeds``) on the
cohort (``--results``; its cells.parquet need ``orientation_deg``, written by extract version 2) and on
the PBC crops (angles from the patches), printing silhouette, ARI, NMI, clustering accuracy, kNN label
accuracy (5-fold, latent means) and the validation reconstruction error, plus the cost of the load-time
rotation against reading the patches (cells/s).

Usage::

    nice .venv/bin/python bench/embed.py [--workdir /tmp/hemoprofile-bench-embed] [--results RESULTS]
        [--batch-effect 0.5] [--patients 2] [--epochs 15] [--betas 1 4] [--pbc /work/shared/data/pbc] [--skip-pbc]
    nice .venv/bin/python bench/embed.py --orientation --results RESULTS [--seeds 0 1] [--epochs 8]
        [--cells-per-slide 200] [--pbc-epochs 8]
"""

from __future__ import annotations

import os

# one BLAS thread: the GMM's and metrics' small matrix products ran 5x slower with two threads on a
# shared, loaded 2-core machine (measured); must be set before numpy is imported
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import copy  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from hemoprofile import simulate  # noqa: E402
from hemoprofile.embed.clustering import apply_pca, assign_latent_clusters, fit_latent_clustering, fit_pca  # noqa: E402
from hemoprofile.embed.metrics import evaluate_embeddings, format_metrics  # noqa: E402
from hemoprofile.embed.model_files import load_embedder  # noqa: E402
from hemoprofile.embed.sample import EmbedSlide, load_sample  # noqa: E402
from hemoprofile.embed.settings import resolve_embed  # noqa: E402
from hemoprofile.embed.slide import embed_slide, read_embeddings  # noqa: E402
from hemoprofile.embed.training import train_embedder  # noqa: E402
from hemoprofile.config import validate_config  # noqa: E402


def simulate_cohort(workdir: Path, batch_effect: float, patients: int, seed: int) -> tuple[Path, pd.DataFrame]:
    """Simulate and process a small cohort (cached in workdir); return (results folder, plan)."""
    from hemoprofile.features.extract import extract_slide
    from hemoprofile.preprocess.pipeline import preprocess_slide
    from hemoprofile.io.slide_sources import open_slide_source
    from hemoprofile.segment.tiled import segment_slide
    from hemoprofile.ingest.tile import tile_slide

    cfg = validate_config({"synthetic": {"enabled": True}})
    s = copy.deepcopy(cfg["synthetic"])
    s["batch_effect"] = float(batch_effect)
    s["seed"] = int(seed)
    # the schema's conditions are real rates (5 CTCs per million): enriched to the 8 per 1000 this bench
    # was built with, so that its small slides hold CTCs
    s["ctc_enrichment"] = 1600
    for condition in s["conditions"].values():
        condition["patients"] = int(patients)
    results = workdir / f"cohort_be{batch_effect:g}_p{patients}_s{seed}"
    plan = simulate.plan_cohort(s, results / "synthetic")
    for row in plan.itertuples():
        out = results / row.slide
        if (out / "cells.parquet").exists():
            continue
        t = time.perf_counter()
        sample = plan[plan["slide"] == row.slide].iloc[0]
        simulate.simulate_slide(s, sample, results / "synthetic")
        with open_slide_source(sample["path"], "frames", simulate.CHANNELS, pixel_size_um=s["pixel_size_um"],
                               frame_rows=int(sample["frame_rows"]), frame_cols=int(sample["frame_cols"])) as src:
            tile_slide(src, out / "image.zarr", tile_size=cfg["tile"]["size"], progress=None)
        preprocess_slide(out / "image.zarr", out / "preprocessed.zarr", cfg["preprocess"], progress=None)
        segment_slide(out / "preprocessed.zarr", out / "labels.zarr", cfg["segment"], progress=None)
        extract_slide(out / "labels.zarr", out / "image.zarr", out / "preprocessed.zarr", out / "cells.parquet",
                      out / "patches.zarr", out / "clusters.parquet", cfg["extract"], cfg["gating"], slide=row.slide,
                      progress=None)
        print(f"  simulated and processed {row.slide} ({row.condition}) in {time.perf_counter() - t:.1f} s", flush=True)
    truth = [str(results / "synthetic" / slide / "truth_cells.parquet") for slide in plan["slide"]]
    if not (results / "synthetic" / "truth_cells.parquet").exists():
        simulate.write_cohort_truth(truth, results / "synthetic" / "truth_cells.parquet")
    return results, plan


def cohort_items(results: Path, plan: pd.DataFrame) -> list[EmbedSlide]:
    items = []
    for row in plan.itertuples():
        batch = getattr(row, "batch", None)
        items.append(EmbedSlide(
            row.slide, str(results / row.slide / "cells.parquet"), str(results / row.slide / "patches.zarr"),
            str(row.patient), str(row.condition), str(batch) if isinstance(batch, str) and batch else row.slide,
            str(results / "synthetic" / row.slide / "truth_labels.zarr")))
    return items


def train_and_embed(items, cfg: dict, work: Path, seed: int, truth_cells):
    """Train an embedder on ``items`` into ``work``, embed every slide with it; return (training record,
    the cohort's embeddings)."""
    work.mkdir(parents=True, exist_ok=True)
    trained = train_embedder(items, work / "embedder.pt", work / "embedder.metrics.json", cfg, seed=seed,
                             truth_cells=truth_cells, threads=1, progress=None)
    model = load_embedder(work / "embedder.pt")
    paths = []
    for item in items:
        paths.append(str(work / f"{item.slide}.embedding.parquet"))
        embed_slide(model, item.patches, item.cells, paths[-1], category=item.category(cfg.get("condition_on", "none")),
                    device="cpu", threads=1, progress=None)
    return trained, read_embeddings(paths)


def run_model(name: str, items, cfg: dict, work: Path, seed: int, truth_cells) -> dict:
    """Train, embed every slide, score every embedded cell; print and return the cohort metrics."""
    t = time.perf_counter()
    trained, frame = train_and_embed(items, cfg, work, seed, truth_cells)
    m = evaluate_embeddings(frame, items, cfg.get("condition_on", "none"), truth_cells,
                            sample_size=int(cfg.get("metrics", {}).get("sample_size", 4000)), seed=seed)
    last = trained["history"][-1]
    print(f"\n[{name}] k={trained['cluster']['k']} by {trained['cluster']['selected_by']}; {len(trained['history'])} epochs, "
          f"final loss {last['loss']:.1f} (recon {last['recon']:.1f}, KL {last['kl']:.1f}); train {trained['train_seconds']:.0f} s, "
          f"total {time.perf_counter() - t:.0f} s")
    print("  " + format_metrics(m).replace("\n", "\n  "))
    return m


def run_pixel_baseline(name: str, items, cfg: dict, seed: int, truth_cells) -> dict:
    """Baseline: PCA of the raw patch pixels to latent_dim components, clustered and scored the same way."""
    from hemoprofile.io.patches import open_patch_array

    t = time.perf_counter()
    full = resolve_embed(cfg)
    sample = load_sample(items, int(full["cells_per_slide"]), "none", seed, truth_cells, progress=lambda m: None)
    flat = sample.patches.reshape(len(sample.patches), -1).astype(np.float32) / 255.0
    pca = fit_pca(flat, int(full["latent_dim"]))
    clustering = fit_latent_clustering(apply_pca(pca, flat), full["cluster"], seed)
    frames = []
    for item in items:
        array, _, _ = open_patch_array(item.patches)
        cells = pd.read_parquet(item.cells, columns=["cell_id"])
        z = apply_pca(pca, np.asarray(array[:]).reshape(len(cells), -1).astype(np.float32) / 255.0)
        f = pd.DataFrame(z, columns=[f"z_{i}" for i in range(z.shape[1])])
        f.insert(0, "cell_id", cells["cell_id"].to_numpy())
        f.insert(0, "slide", item.slide)
        f["cluster"] = assign_latent_clusters(clustering, z)
        f["row"] = np.arange(len(f))
        frames.append(f)
    frame = pd.concat(frames, ignore_index=True)
    m = evaluate_embeddings(frame, items, "none", truth_cells,
                            sample_size=int(full["metrics"]["sample_size"]), seed=seed)
    print(f"\n[{name}] k={clustering['k']} by {clustering['selected_by']}; {time.perf_counter() - t:.0f} s")
    print("  " + format_metrics(m).replace("\n", "\n  "))
    return m


def remaining_batch_effect(items, truth_cells) -> None:
    """Spread across slides of granulocytes' per-channel intensity: raw image vs preprocessed patches."""
    from hemoprofile.io.patches import open_patch_array
    from hemoprofile.io.truth import truth_cell_types

    truth = pd.read_parquet(truth_cells, columns=["slide", "cell_id", "cell_type"])
    raw, pre = {}, {}
    channels = None
    for item in items:
        cells = pd.read_parquet(item.cells)
        types = truth_cell_types(cells, item.truth_labels, truth, item.slide)
        rows = np.flatnonzero(types == "granulocyte")
        array, channels, _ = open_patch_array(item.patches)
        patches = np.asarray(array[:])[rows].astype(np.float32) / 255.0
        fg = patches.sum(1, keepdims=True) > 0  # the cell's pixels (extract zeroes background and neighbours)
        raw[item.slide] = [float(np.median(cells[f"mean_{c}"].to_numpy()[rows])) for c in channels]
        pre[item.slide] = [float(np.median((patches[:, i:i + 1] * fg).sum((1, 2, 3)) / fg.sum((1, 2, 3)).clip(1)))
                           for i in range(len(channels))]
    raw_a, pre_a = np.array(list(raw.values())), np.array(list(pre.values()))
    cv = lambda a: a.std(0) / np.maximum(a.mean(0), 1e-12)  # noqa: E731
    print("\nremaining slide effect, granulocytes: CV across slides of the per-slide median intensity")
    print("  channel  " + "  ".join(f"{c:>6}" for c in channels))
    print("  raw      " + "  ".join(f"{v:6.3f}" for v in cv(raw_a)))
    print("  patches  " + "  ".join(f"{v:6.3f}" for v in cv(pre_a)))


def knn_label_accuracy(z: np.ndarray, labels, k: int = 15, max_cells: int = 5000, seed: int = 0) -> float:
    """5-fold cross-validated accuracy of a k-nearest-neighbour classifier of the labels on the latents."""
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    if labels is None:
        return float("nan")
    keep = np.flatnonzero(np.array([v is not None for v in labels]))
    if len(keep) > max_cells:
        keep = np.sort(np.random.default_rng(seed).choice(keep, max_cells, replace=False))
    y = np.asarray(labels, object)[keep].astype(str)
    return float(cross_val_score(KNeighborsClassifier(k), z[keep], y, cv=5).mean())


def rotation_cost(items, repeats: int = 3) -> dict:
    """Cells/s of reading every patch (zarr, decompressed) and of orienting them (angles from the table
    when it has them, else from the patches), best of ``repeats``."""
    from hemoprofile.embed.orientation import orient_patches
    from hemoprofile.embed.sample import read_angles
    from hemoprofile.io.patches import open_patch_array, read_patch_rows

    read_s, orient_s, orient_patch_s, n = [], [], [], 0
    for _ in range(repeats):
        tr = to = tp = 0.0
        n = 0
        for item in items:
            t = time.perf_counter()
            array, names, _ = open_patch_array(item.patches)
            patches = read_patch_rows(array)
            tr += time.perf_counter() - t
            angles = read_angles(item.cells)
            t = time.perf_counter()
            orient_patches(patches, names, angles)
            to += time.perf_counter() - t
            t = time.perf_counter()
            orient_patches(patches, names, None)
            tp += time.perf_counter() - t
            n += len(patches)
        read_s.append(tr), orient_s.append(to), orient_patch_s.append(tp)
    out = {"cells": n, "read_cells_per_s": n / min(read_s), "orient_cells_per_s": n / min(orient_s),
           "orient_from_patch_cells_per_s": n / min(orient_patch_s)}
    print(f"  load-time rotation, {n} cells, best of {repeats}: read {out['read_cells_per_s']:.0f} cells/s, orient "
          f"(table angles) {out['orient_cells_per_s']:.0f} cells/s, orient (angles from the patch) "
          f"{out['orient_from_patch_cells_per_s']:.0f} cells/s", flush=True)
    return out


def orientation_arms(name: str, items, cfg: dict, work: Path, seeds, orientations, truth_cells) -> dict:
    """Train, embed and score a plain VAE per orientation and seed; print one row per run and the means."""
    from hemoprofile.embed.sample import cohort_labels

    rows = {}
    for orientation in orientations:
        for seed in seeds:
            t = time.perf_counter()
            run_cfg = {**cfg, "condition_on": "none", "orientation": orientation}
            trained, frame = train_and_embed(items, run_cfg, work / f"{orientation}_s{seed}", seed, truth_cells)
            m = evaluate_embeddings(frame, items, "none", truth_cells,
                                    sample_size=int(cfg["metrics"]["sample_size"]), seed=seed)
            labels = cohort_labels(frame, items, truth_cells)
            z = frame[[c for c in frame.columns if c.startswith("z_")]].to_numpy()
            last = trained["history"][-1]
            lab = m.get("label", {})
            rows[(orientation, seed)] = {
                "silhouette": m["silhouette"], "ari": lab.get("ari", np.nan), "nmi": lab.get("nmi", np.nan),
                "accuracy": lab.get("accuracy", np.nan), "knn_acc": knn_label_accuracy(z, labels, seed=seed),
                "val_recon": last.get("val_recon", np.nan), "k": m["n_clusters"],
                "train_s": trained["train_seconds"], "total_s": time.perf_counter() - t}
            r = rows[(orientation, seed)]
            print(f"  [{name}] {orientation:>10} seed {seed}: k={r['k']} sil {r['silhouette']:.3f} ARI {r['ari']:.3f} "
                  f"NMI {r['nmi']:.3f} acc {r['accuracy']:.3f} kNN-acc {r['knn_acc']:.3f} val recon "
                  f"{r['val_recon']:.2f}; train {r['train_s']:.0f} s, total {r['total_s']:.0f} s", flush=True)
    keys = ("silhouette", "ari", "nmi", "accuracy", "knn_acc", "val_recon")
    print(f"\n  [{name}] mean over seeds {list(seeds)} (val recon: per-cell BCE of held-out patches, as the model saw them)")
    print("  " + f"{'orientation':>12} " + " ".join(f"{k:>10}" for k in keys))
    for orientation in orientations:
        vals = [np.mean([rows[(orientation, s)][k] for s in seeds]) for k in keys]
        print("  " + f"{orientation:>12} " + " ".join(f"{v:10.3f}" for v in vals))
    return rows


def summary_table(rows: dict) -> None:
    print("\nsummary (latent-space metrics over all embedded cells; arrows: which way is better)")
    head = ("model", "k", "sil↑", "DB↓", "ARI↑", "NMI↑", "purity↑", "sil(type)↑", "sil(batch)↓", "kNN-ent↑",
            "kNN-ent|type↑", "NMI(cl,batch)↓")
    print("  " + " ".join(f"{h:>13}" for h in head))
    for name, m in rows.items():
        lab, bat = m.get("label", {}), m.get("batch", {})
        vals = [m["n_clusters"], m["silhouette"], m["davies_bouldin"], lab.get("ari", np.nan), lab.get("nmi", np.nan),
                lab.get("purity", np.nan), lab.get("silhouette_by_label", np.nan), bat.get("silhouette_by_batch", np.nan),
                bat.get("knn_entropy", np.nan), bat.get("knn_entropy_within_label", np.nan), bat.get("cluster_nmi", np.nan)]
        print("  " + f"{name:>13} " + " ".join(f"{v:13d}" if isinstance(v, int) else f"{v:13.3f}" for v in vals))


def main(argv=None) -> int:
    """Run the benchmark (arguments as in the module docstring); return the exit status."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", type=Path, default=Path("/tmp/hemoprofile-bench-embed"))
    p.add_argument("--results", type=Path, help="a finished synthetic results folder (skips simulation)")
    p.add_argument("--batch-effect", type=float, default=0.5)
    p.add_argument("--patients", type=int, default=2, help="patients per condition (one slide each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--betas", type=float, nargs="+", default=[1.0], help="KL weights to run VAE and cVAE at")
    p.add_argument("--cells-per-slide", type=int, default=1000)
    p.add_argument("--pbc", type=Path, default=Path(os.environ.get("HEMOPROFILE_PBC_DIR", "/work/shared/data/pbc")),
                   help="the PBC collection folder (default: $HEMOPROFILE_PBC_DIR, else /work/shared/data/pbc)")
    p.add_argument("--pbc-patch-size", type=int, default=32)
    p.add_argument("--pbc-epochs", type=int, default=12)
    p.add_argument("--skip-pbc", action="store_true")
    p.add_argument("--skip-synthetic", action="store_true")
    p.add_argument("--orientation", action="store_true",
                   help="compare embed.orientation none vs major_axis (plain VAE) instead of VAE vs cVAE")
    p.add_argument("--orientations", nargs="+", default=["none", "major_axis"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()
    base = {"latent_dim": 16, "widths": [16, 32, 64], "device": "cpu", "mixed_precision": False,
            "cells_per_slide": args.cells_per_slide, "train": {"epochs": args.epochs, "batch_size": 64, "lr": 3e-3},
            "cluster": {"method": "gmm", "k": 0, "k_min": 3, "k_max": 10, "n_init": 1},
            "metrics": {"sample_size": 4000, "knn": 15}}

    if args.orientation:
        return orientation_main(args, base, started)
    if not args.skip_synthetic:
        if args.results:
            results = args.results
            plan = pd.read_csv(results / "synthetic" / "samples.tsv", sep="\t")
            print(f"synthetic cohort: {results} ({len(plan)} slides, batch effect as simulated there)")
        else:
            print(f"synthetic cohort: {args.patients} patient(s) x 3 conditions, synthetic.batch_effect "
                  f"{args.batch_effect} (config default 0.15), seed {args.seed}")
            results, plan = simulate_cohort(args.workdir, args.batch_effect, args.patients, args.seed)
        items = cohort_items(results, plan)
        truth = results / "synthetic" / "truth_cells.parquet"
        n = sum(len(pd.read_parquet(i.cells, columns=["cell_id"])) for i in items)
        print(f"{len(items)} slides, {n} segmented cells; training sample <= {args.cells_per_slide} per slide; "
              f"{args.epochs} epochs; GMM k by BIC in 3..10")
        remaining_batch_effect(items, truth)
        rows = {"pixels+PCA": run_pixel_baseline("baseline: raw pixels, PCA to 16-D", items, base, args.seed, truth)}
        for beta in args.betas:
            tag = "" if beta == 1.0 else f" b={beta:g}"
            rows["VAE" + tag] = run_model(f"VAE, beta {beta:g}", items, {**base, "beta": beta, "condition_on": "none"},
                                          args.workdir / f"vae_b{beta:g}", args.seed, truth)
            rows["cVAE(slide)" + tag] = run_model(f"cVAE conditioned on slide (= batch here), beta {beta:g}", items,
                                                  {**base, "beta": beta, "condition_on": "slide"},
                                                  args.workdir / f"cvae_b{beta:g}", args.seed, truth)
        summary_table(rows)

    if not args.skip_pbc:
        if not args.pbc.is_dir():
            print(f"\nPBC: {args.pbc} not found; skipped")
        else:
            item, n = pbc_collection(args)
            print(f"\nPBC: {n} crops, 8 labels, {args.pbc_patch_size} px RGB; one collection = one batch (no cVAE)")
            cfg = {**base, "cells_per_slide": n, "train": {**base["train"], "epochs": args.pbc_epochs}}
            rows = {"pixels+PCA": run_pixel_baseline("PBC baseline: raw pixels, PCA to 16-D", item, cfg, args.seed, None),
                    "VAE": run_model("PBC VAE", item, cfg, args.workdir / "pbc_vae", args.seed, None)}
            summary_table(rows)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return 0


def pbc_collection(args) -> tuple[list, int]:
    """The PBC crops ingested at ``--pbc-patch-size`` into the work folder (once; reused by later runs):
    ``([its EmbedSlide], number of crops)``."""
    from hemoprofile.ingest.collection import ingest_collection

    out = args.workdir / f"pbc_{args.pbc_patch_size}"
    if not (out / "cells.parquet").exists():
        t = time.perf_counter()
        ingest_collection(args.pbc, out / "cells.parquet", out / "patches.zarr", args.pbc_patch_size, progress=None)
        print(f"\ningested {args.pbc} at {args.pbc_patch_size} px in {time.perf_counter() - t:.0f} s")
    item = [EmbedSlide("pbc", str(out / "cells.parquet"), str(out / "patches.zarr"))]
    return item, len(pd.read_parquet(item[0].cells, columns=["cell_id"]))


def orientation_main(args, base: dict, started: float) -> int:
    """The ``--orientation`` mode (module docstring)."""
    if not args.skip_synthetic:
        results = args.results
        plan = pd.read_csv(results / "synthetic" / "samples.tsv", sep="\t")
        items = cohort_items(results, plan)
        truth = results / "synthetic" / "truth_cells.parquet"
        n = sum(len(pd.read_parquet(i.cells, columns=["cell_id"])) for i in items)
        print(f"cohort {results}: {len(items)} slides, {n} cells; training sample <= {args.cells_per_slide} per slide, "
              f"{args.epochs} epochs, seeds {args.seeds}; GMM k by BIC in 3..10", flush=True)
        rotation_cost(items)
        orientation_arms("cohort", items, base, args.workdir / "orient_cohort", args.seeds, args.orientations, truth)
    if not args.skip_pbc:
        item, n = pbc_collection(args)
        print(f"\nPBC: {n} crops, 8 labels, {args.pbc_patch_size} px RGB; angles from the patches (no table column); "
              f"{args.pbc_epochs} epochs, seeds {args.seeds}", flush=True)
        rotation_cost(item)
        cfg = {**base, "cells_per_slide": n, "train": {**base["train"], "epochs": args.pbc_epochs}}
        orientation_arms("PBC", item, cfg, args.workdir / "orient_pbc", args.seeds, args.orientations, None)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
