"""Benchmark: the bundled Cellpose model against the classical backend, on images never trained on.

Prints, side by side in one run, AP@0.5, AP@0.75 (AP = TP / (TP + FP + FN), pooled over images, the
StarDist / DSB 2018 definition), precision and recall at IoU 0.5, and seconds per megapixel, for

(a) synthetic held-out slides: the demo cohort (config/config.yaml ``synthetic``, its seed), simulated
    with ground truth; the model was trained on a cohort with a different seed;
(b) DSB 2018 held-out test images: the ``test`` part of the split file the model was trained with.

Both backends go through the pipeline's own code (``hemoprofile.segment.segmenter.segment_image``: the
input preparation of ``rule segment`` and of training, ``hemoprofile.segment.input.cellpose_input``)
and get the same per-image diameter, estimated classically with
``hemoprofile.segment.diameter.estimate_input_diameter`` (Otsu + inscribed radius, factor from the
model's sidecar), then searched by the package's ``segment_at_estimate`` with each backend's own
result: 2x, 4x, 0.5x the estimate when nothing is found, then once more at the median diameter of the
objects found when it differs by more than 25%. The ``true diameter`` rows show what a perfect size
estimate would give (the median equivalent diameter of the expert masks).
Seconds per megapixel count the segmentation calls only; the diameter estimate's cost is printed apart.
Named baselines: StarDist's published AP@0.5 of 0.864 on DSB 2018 (Schmidt et al. 2018, test split of
their own) and the classical backend in the same run.

Usage (the DSB folder: ``--dsb-dir`` or the ``HEMOPROFILE_DSB_DIR`` environment variable)::

    .venv/bin/python bench/segmentation.py --dsb-dir DSB            # full: 80 DSB test images, all demo slides
    .venv/bin/python bench/segmentation.py --dsb-dir DSB --quick    # 12 DSB test images, 1 synthetic slide
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

from hemoprofile.models import DEFAULT_SEGMENTATION_MODEL  # noqa: E402
from hemoprofile.segment.cellpose_model import load_cellpose_model, model_file, read_sidecar  # noqa: E402
from hemoprofile.segment.diameter import (  # noqa: E402
    estimate_input_diameter,
    label_diameter,
    segment_at_estimate,
)
from hemoprofile.segment.input import cellpose_input  # noqa: E402
from hemoprofile.segment.metrics import instance_scores  # noqa: E402
from hemoprofile.segment.segmenter import build_segmenter, segment_image  # noqa: E402
from hemoprofile.segment.settings import segment_settings  # noqa: E402
from hemoprofile.segment.training.data import read_dsb_image, read_split  # noqa: E402

DEFAULT_CONFIG = ROOT / "config" / "config.yaml"
STARDIST_DSB_AP50 = 0.864


def dsb_test_set(split_path: Path, dsb_dir: Path, limit: int | None):
    ids = read_split(split_path)["test"]
    if limit:
        ids = ids[:limit]
    images, labels = [], []
    for image_id in ids:
        image, lab = read_dsb_image(dsb_dir, image_id)
        images.append((image, None))
        labels.append(lab)
    return images, labels


def synthetic_test_set(work_dir: Path, n_slides: int | None, config_path: Path = DEFAULT_CONFIG):
    from hemoprofile.config import load_config
    from hemoprofile.simulate import plan_cohort, read_synthetic_frame, simulate_slide

    synth_cfg = load_config(config_path)["synthetic"]
    plan = plan_cohort(synth_cfg, work_dir)
    rows = range(len(plan) if n_slides is None else min(n_slides, len(plan)))
    images, labels = [], []
    for i in rows:
        sample = plan.iloc[i].to_dict()
        if not (work_dir / sample["slide"] / "truth_cells.parquet").exists():
            simulate_slide(synth_cfg, sample, work_dir)
        names = str(sample["channels"]).split(",")
        for f in range(int(sample["frame_rows"]) * int(sample["frame_cols"])):
            image, lab, _ = read_synthetic_frame(sample, f)
            images.append((image, names))
            labels.append(np.asarray(lab, np.int32))
    return images, labels, int(synth_cfg["seed"])


def run_backend(name, images, diameters, model=None, refine=False):
    """Segment every image with a backend through segment_image at its diameter; with ``refine``, search
    around the estimate with the package's loop (``segment_at_estimate``: retry when nothing is found,
    refine from the objects found). Returns labels and seconds per megapixel."""
    preds, seconds, pixels = [], 0.0, 0

    def run(image, names, diameter):
        cfg = segment_settings({}, backend=name, diameter=float(diameter), normalisation="window")
        return segment_image(image, names, cfg, segmenter=build_segmenter(cfg, model=model))

    for (image, names), diameter in zip(images, diameters):
        t0 = time.perf_counter()
        labels, _ = segment_at_estimate(lambda d, image=image, names=names: run(image, names, d), diameter,
                                        image.shape[-2:], refine=refine, retry=refine)
        seconds += time.perf_counter() - t0
        pixels += image.shape[-1] * image.shape[-2]
        preds.append(labels)
    return preds, seconds / (pixels / 1e6)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_SEGMENTATION_MODEL,
                        help=f"model file, or a bundled model (default {DEFAULT_SEGMENTATION_MODEL})")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help="config whose synthetic section simulates the held-out slides (default: the demo's)")
    parser.add_argument("--split", type=Path, default=None, help="split file (default: the model sidecar's, else beside the model)")
    parser.add_argument("--dsb-dir", type=Path, default=os.environ.get("HEMOPROFILE_DSB_DIR"),
                        help="the DSB 2018 fluorescence folder (default: $HEMOPROFILE_DSB_DIR)")
    parser.add_argument("--synthetic-slides", type=int, default=None, help="demo slides to score (default all)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "hemoprofile_bench_segmentation")
    parser.add_argument("--quick", action="store_true", help="12 DSB test images and 1 synthetic slide")
    parser.add_argument("--no-true-diameter", action="store_true", help="skip the cellpose (true diameter) row")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.dsb_dir is None:
        parser.error("name the DSB 2018 fluorescence folder with --dsb-dir (or HEMOPROFILE_DSB_DIR)")

    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    args.model = model_file(args.model)
    meta = read_sidecar(args.model)
    factor = float(meta.get("diameter_estimator", {}).get("factor", 1.0))
    split = args.split
    if split is None:
        split = args.model.with_name("dsb2018_split.json")
    model = load_cellpose_model(args.model, torch.device("cpu"))
    print(f"model {args.model} ({args.model.stat().st_size / 1e6:.1f} MB, nbase {meta['nbase']}, diam_mean "
          f"{meta['diam_mean']}); split {split}; torch threads {torch.get_num_threads()}")

    sets = {}
    n_slides = 1 if args.quick else args.synthetic_slides
    s_imgs, s_labs, seed = synthetic_test_set(args.work / "synthetic", n_slides, args.config)
    sets[f"synthetic held-out (demo seed {seed}, {len(s_imgs)} frames)"] = (s_imgs, s_labs)
    d_imgs, d_labs = dsb_test_set(split, args.dsb_dir, 12 if args.quick else None)
    sets[f"DSB 2018 test split ({len(d_imgs)} images, never trained on)"] = (d_imgs, d_labs)

    results = {}
    for set_name, (imgs, labs) in sets.items():
        t0 = time.perf_counter()
        est = [estimate_input_diameter(cellpose_input(im, names), factor, default=float(meta["diam_mean"]))
               for im, names in imgs]
        t_est = time.perf_counter() - t0
        mp = sum(im.shape[-1] * im.shape[-2] for im, _ in imgs) / 1e6
        true = [max(label_diameter(lab), 3.0) for lab in labs]
        rel = np.abs(np.array(est) / np.array(true) - 1)
        rows = {}
        preds, spmp = run_backend("cellpose", imgs, est, model=model, refine=True)
        rows["cellpose (bundled model)"] = {**instance_scores(labs, preds), "s_per_MP": spmp}
        preds, spmp = run_backend("classical", imgs, est, refine=True)
        rows["classical backend"] = {**instance_scores(labs, preds), "s_per_MP": spmp}
        if not args.no_true_diameter:
            preds, spmp = run_backend("cellpose", imgs, true, model=model)
            rows["cellpose, true diameter"] = {**instance_scores(labs, preds), "s_per_MP": spmp}
            preds, spmp = run_backend("classical", imgs, true)
            rows["classical, true diameter"] = {**instance_scores(labs, preds), "s_per_MP": spmp}
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
