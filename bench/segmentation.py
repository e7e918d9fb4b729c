"""Benchmark: the bundled Cellpose model against the classical backend, on images never trained on.

Prints, side by side in one run, AP@0.5, AP@0.75 (AP = TP / (TP + FP + FN), pooled over images, the
StarDist / DSB 2018 definition), precision and recall at IoU 0.5, and seconds per megapixel, for

(a) synthetic held-out slides: the demo cohort (config/config.yaml ``synthetic``, its seed), simulated
    with ground truth; the model was trained on a cohort with a different seed;
(b) DSB 2018 held-out test images: the ``test`` part of the split file the model was trained with.

Both backends go through the pipeline's own code (``hemoprofile.segment.segment_image``: the same input
preparation as ``rule segment``) and get the same per-image diameter, estimated classically with
``hemoprofile.segmentation_training.estimate_diameter`` (Otsu + inscribed radius, factor from the
model's sidecar), then refined once from each backend's own result (segment again at the median
diameter of the objects found when it differs by more than 25%). The ``true diameter`` rows show what
a perfect size estimate would give (the median equivalent diameter of the expert masks).
Seconds per megapixel count the segmentation call only; the diameter estimate's cost is printed apart.
Named baselines: StarDist's published AP@0.5 of 0.864 on DSB 2018 (Schmidt et al. 2018, test split of
their own) and the classical backend in the same run.

Usage::

    .venv/bin/python bench/segmentation.py            # full: 80 DSB test images, 12 synthetic slides
    .venv/bin/python bench/segmentation.py --quick    # 12 DSB test images, 1 synthetic slide
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from hemoprofile import segment  # noqa: E402
from hemoprofile.instance_metrics import average_precision  # noqa: E402
from hemoprofile.segmentation_training import (  # noqa: E402
    DSB_DIR, REFINE_TOLERANCE, cellpose_input, estimate_diameter, label_diameter, read_sidecar, read_split)

DEFAULT_MODEL = ROOT / "models" / "segmentation" / "hemoprofile_cellpose.pt"
STARDIST_DSB_AP50 = 0.864


def dsb_test_set(split_path: Path, dsb_dir: Path, limit: int | None):
    from skimage.io import imread

    ids = read_split(split_path)["test"]
    if limit:
        ids = ids[:limit]
    images, labels = [], []
    for image_id in ids:
        img = imread(dsb_dir / "images" / f"{image_id}.png")
        if img.ndim == 3:
            img = img[..., :3].mean(axis=-1).astype(np.uint8)
        images.append((img, None))
        labels.append(imread(dsb_dir / "masks" / f"{image_id}.png").astype(np.int32))
    return images, labels


def synthetic_test_set(work_dir: Path, n_slides: int | None):
    import yaml

    from hemoprofile import synth
    from hemoprofile.config import validate_config

    cfg = validate_config(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()),
                          ROOT / "config" / "schemas" / "config.schema.yaml")
    synth_cfg = cfg["synthetic"]
    plan = synth.plan_cohort(synth_cfg, work_dir)
    rows = range(len(plan) if n_slides is None else min(n_slides, len(plan)))
    images, labels = [], []
    for i in rows:
        sample = plan.iloc[i].to_dict()
        if not (work_dir / sample["slide"] / "truth_cells.parquet").exists():
            synth.simulate_slide(synth_cfg, sample, work_dir)
        names = str(sample["channels"]).split(",")
        for f in range(int(sample["frame_rows"]) * int(sample["frame_cols"])):
            image, lab, _ = synth.read_synthetic_frame(sample, f)
            images.append((image, names))
            labels.append(np.asarray(lab, np.int32))
    return images, labels, int(synth_cfg["seed"])


def run_backend(name, images, diameters, model=None, refine=False):
    """Segment every image with a backend through segment_image; with ``refine``, segment once more at
    the median diameter of the objects found when it differs from the one used by more than 25%
    (as ``segmentation_training.Segmenter.segment``). Returns labels and seconds per megapixel."""
    preds, seconds, pixels = [], 0.0, 0

    def run(image, names, diameter):
        cfg = segment.segment_settings({}, backend=name, diameter=float(diameter), normalisation="window")
        return segment.segment_image(image, names, cfg, segmenter=segment.build_segmenter(cfg, model=model))

    for (image, names), diameter in zip(images, diameters):
        diameter = min(float(diameter), max(8.0, min(image.shape[-2:]) / 4))
        t0 = time.perf_counter()
        labels = run(image, names, diameter)
        if refine and labels.max() > 0:
            found = label_diameter(labels)
            if found > 0 and abs(found / diameter - 1) > REFINE_TOLERANCE:
                labels = run(image, names, found)
        seconds += time.perf_counter() - t0
        pixels += image.shape[-1] * image.shape[-2]
        preds.append(labels)
    return preds, seconds / (pixels / 1e6)


def score(labels, preds):
    ap = average_precision(labels, preds, (0.5, 0.75))
    return {"ap@0.5": ap[0.5]["ap"], "ap@0.75": ap[0.75]["ap"], "precision@0.5": ap[0.5]["precision"],
            "recall@0.5": ap[0.5]["recall"], "ap_image_mean@0.5": ap[0.5]["ap_image_mean"]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--split", type=Path, default=None, help="split file (default: the model sidecar's, else beside the model)")
    parser.add_argument("--dsb-dir", type=Path, default=DSB_DIR)
    parser.add_argument("--synthetic-slides", type=int, default=None, help="demo slides to score (default all)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "hemoprofile_bench_segmentation")
    parser.add_argument("--quick", action="store_true", help="12 DSB test images and 1 synthetic slide")
    parser.add_argument("--no-true-diameter", action="store_true", help="skip the cellpose (true diameter) row")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    meta = read_sidecar(args.model)
    factor = float(meta.get("diameter_estimator", {}).get("factor", 1.0))
    split = args.split
    if split is None:
        split = args.model.with_name("dsb2018_split.json")
    model = segment.load_cellpose_model(args.model, torch.device("cpu"))
    print(f"model {args.model} ({args.model.stat().st_size / 1e6:.1f} MB, nbase {meta['nbase']}, diam_mean "
          f"{meta['diam_mean']}); split {split}; torch threads {torch.get_num_threads()}")

    sets = {}
    n_slides = 1 if args.quick else args.synthetic_slides
    s_imgs, s_labs, seed = synthetic_test_set(args.work / "synthetic", n_slides)
    sets[f"synthetic held-out (demo seed {seed}, {len(s_imgs)} frames)"] = (s_imgs, s_labs)
    d_imgs, d_labs = dsb_test_set(split, args.dsb_dir, 12 if args.quick else None)
    sets[f"DSB 2018 test split ({len(d_imgs)} images, never trained on)"] = (d_imgs, d_labs)

    results = {}
    for set_name, (imgs, labs) in sets.items():
        t0 = time.perf_counter()
        est = [estimate_diameter(cellpose_input(im, names), factor, default=float(meta["diam_mean"])) for im, names in imgs]
        t_est = time.perf_counter() - t0
        mp = sum(im.shape[-1] * im.shape[-2] for im, _ in imgs) / 1e6
        true = [max(label_diameter(lab), 3.0) for lab in labs]
        rel = np.abs(np.array(est) / np.array(true) - 1)
        rows = {}
        preds, spmp = run_backend("cellpose", imgs, est, model=model, refine=True)
        rows["cellpose (bundled model)"] = {**score(labs, preds), "s_per_MP": spmp}
        preds, spmp = run_backend("classical", imgs, est, refine=True)
        rows["classical backend"] = {**score(labs, preds), "s_per_MP": spmp}
        if not args.no_true_diameter:
            preds, spmp = run_backend("cellpose", imgs, true, model=model)
            rows["cellpose, true diameter"] = {**score(labs, preds), "s_per_MP": spmp}
            preds, spmp = run_backend("classical", imgs, true)
            rows["classical, true diameter"] = {**score(labs, preds), "s_per_MP": spmp}
        results[set_name] = {"rows": rows, "megapixels": mp, "diameter_estimate_s_per_MP": t_est / mp,
                             "diameter_median_rel_error": float(np.median(rel))}
        print(f"\n{set_name}: {mp:.2f} MP; diameter estimate {t_est / mp:.2f} s/MP, median relative error "
              f"{np.median(rel):.1%}")
        print(f"  {'method':28s} {'AP@0.5':>7s} {'AP@0.75':>8s} {'prec@0.5':>9s} {'rec@0.5':>8s} {'s/MP':>7s}")
        for name, r in rows.items():
            print(f"  {name:28s} {r['ap@0.5']:7.3f} {r['ap@0.75']:8.3f} {r['precision@0.5']:9.3f} "
                  f"{r['recall@0.5']:8.3f} {r['s_per_MP']:7.2f}")
        if set_name.startswith("DSB"):
            print(f"  {'StarDist (published, DSB)':28s} {STARDIST_DSB_AP50:7.3f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
