"""Benchmark: cell classifiers on held-out synthetic slides, end to end (segmented cells, not truth crops).

Takes the results folder of a finished workflow run on the synthetic cohort and scores each task's
predictions (``results/<slide>/predictions.parquet``, column ``pred_<task>``) against the simulator's
truth: a segmented cell takes the ground-truth cell under its centroid in
``results/synthetic/<slide>/truth_labels.zarr`` (hemoprofile.io.truth.match_truth), and that cell's type
in ``results/synthetic/truth_cells.parquet``. Only slides of the patients the task's training held out
(``test_groups`` in ``results/models/classifier_<task>.metrics.json``) are scored, so no cell the model
was trained or early-stopped on counts; cells on background (segmentation false positives) and cells
outside a task (CTCs for leukocyte tasks) are counted and reported, not scored.

Printed per task: accuracy, balanced accuracy, macro F1 and the confusion matrix, beside two baselines
from the same run: the majority class, and for ``ctc`` the marker gate (``gate_label`` of cells.parquet).
Segmentation recall (truth cells found) and precision (segmented cells on a truth cell) are printed too,
since they bound what any classifier can score here.

Usage::

    .venv/bin/python bench/classify_synthetic.py results [--tasks lineage immune5 ctc] [--all-slides]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd


from hemoprofile.classify.metrics import classification_metrics, format_confusion  # noqa: E402
from hemoprofile.io.truth import match_truth  # noqa: E402
from hemoprofile.vocabulary import map_labels, task_classes  # noqa: E402


def held_out_slides(results: Path, task: str, samples: pd.DataFrame) -> list[str] | None:
    """Slides of the patients (groups) the task's training held out for testing, from its metrics file."""
    path = results / "models" / f"classifier_{task}.metrics.json"
    if not path.exists():
        return None
    split = json.loads(path.read_text()).get("split", {})
    groups = set(split.get("test_groups", []))
    by_patient = samples[samples["patient"].astype(str).isin(groups)]["slide"].astype(str).tolist()
    by_slide = samples[samples["slide"].astype(str).isin(groups)]["slide"].astype(str).tolist()
    return sorted(set(by_patient) | set(by_slide))


def main(argv=None) -> int:
    """Run the benchmark (command-line arguments as in the module docstring); return the exit status."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=Path, help="results folder of a finished synthetic workflow run")
    p.add_argument("--tasks", nargs="+", help="tasks to score (default: every pred_<task> column found)")
    p.add_argument("--all-slides", action="store_true", help="score every slide, not only held-out ones "
                   "(optimistic: includes the training slides)")
    p.add_argument("--gate-column", default="gate_label")
    args = p.parse_args(argv)
    results = args.results
    synth = results / "synthetic"
    for needed in (synth / "truth_cells.parquet", synth / "samples.tsv"):
        if not needed.exists():
            p.error(f"{needed} not found: run the workflow on the synthetic cohort first")
    samples = pd.read_csv(synth / "samples.tsv", sep="\t")
    truth = pd.read_parquet(synth / "truth_cells.parquet", columns=["slide", "cell_id", "cell_type"])

    per_slide: dict[str, pd.DataFrame] = {}
    seg_found, seg_total, seg_matched, seg_cells = 0, 0, 0, 0
    for slide in samples["slide"].astype(str):
        pred_path = results / slide / "predictions.parquet"
        cells_path = results / slide / "cells.parquet"
        if not pred_path.exists() or not cells_path.exists():
            print(f"skip {slide}: {pred_path if not pred_path.exists() else cells_path} missing")
            continue
        cells = pd.read_parquet(cells_path)
        pred = pd.read_parquet(pred_path)
        if not np.array_equal(cells["cell_id"].to_numpy(), pred["cell_id"].to_numpy()):
            pred = cells[["cell_id"]].merge(pred, on="cell_id", how="left")
        ids = match_truth(cells["y"].to_numpy(), cells["x"].to_numpy(), synth / slide / "truth_labels.zarr")
        t = truth[truth["slide"] == slide]
        lookup = dict(zip(t["cell_id"].to_numpy(np.int64), t["cell_type"].astype(str)))
        frame = pred.copy()
        frame["truth_id"] = ids
        frame["truth_type"] = [lookup.get(int(i)) if i else None for i in ids]
        if args.gate_column in cells.columns:
            frame["gate"] = cells[args.gate_column].to_numpy()
        per_slide[slide] = frame
        seg_cells += len(cells)
        seg_matched += int((ids > 0).sum())
        seg_total += len(t)
        seg_found += len(set(ids[ids > 0].tolist()))
    if not per_slide:
        print("no slide with predictions.parquet and cells.parquet found")
        return 1
    print(f"segmentation vs truth over {len(per_slide)} slides: {seg_found}/{seg_total} truth cells found "
          f"(recall {seg_found / max(seg_total, 1):.3f}); {seg_matched}/{seg_cells} segmented cells lie on a "
          f"truth cell (precision {seg_matched / max(seg_cells, 1):.3f})")

    columns = set().union(*(f.columns for f in per_slide.values()))
    tasks = args.tasks or sorted(c[len("pred_"):] for c in columns if c.startswith("pred_"))
    for task in tasks:
        if f"pred_{task}" not in columns:
            print(f"\n{task}: no pred_{task} column in the predictions")
            continue
        slides = list(per_slide) if args.all_slides else held_out_slides(results, task, samples)
        if slides is None:
            print(f"\n{task}: no results/models/classifier_{task}.metrics.json (a given model?); scoring all slides")
            slides = list(per_slide)
        slides = [s for s in slides if s in per_slide]
        if not slides:
            print(f"\n{task}: none of the held-out slides has predictions")
            continue
        frame = pd.concat([per_slide[s] for s in slides], ignore_index=True)
        classes = task_classes(task)
        on_truth = frame["truth_type"].notna()
        y_class = map_labels(frame["truth_type"].where(on_truth, None).tolist(), task)
        scored = np.array([v is not None for v in y_class])
        index = {c: i for i, c in enumerate(classes)}
        y_true = np.array([index[v] for v in y_class[scored]], np.int64)
        y_pred = np.array([index.get(v, -1) for v in frame["pred_" + task].to_numpy()[scored]], np.int64)
        metrics = classification_metrics(y_true, y_pred, classes)
        majority = np.full_like(y_true, np.bincount(y_true, minlength=len(classes)).argmax())
        base = classification_metrics(y_true, majority, classes)
        print(f"\n{task}: {len(slides)} held-out slide(s) {slides}; {int(scored.sum())} cells scored, "
              f"{int((~on_truth).sum())} on background (not scored), {int((on_truth & ~scored).sum())} outside the task")
        print(f"  classifier: accuracy {metrics['accuracy']:.4f}, balanced accuracy {metrics['balanced_accuracy']:.4f}, "
              f"macro F1 {metrics['macro_f1']:.4f}")
        print(f"  baseline majority class: accuracy {base['accuracy']:.4f}, balanced accuracy "
              f"{base['balanced_accuracy']:.4f}")
        if task == "ctc" and "gate" in frame.columns:
            gate = np.array([index.get(v, index["leukocyte"]) for v in frame["gate"].to_numpy()[scored]], np.int64)
            g = classification_metrics(y_true, gate, classes)
            print(f"  baseline marker gate ({args.gate_column}): accuracy {g['accuracy']:.4f}, balanced accuracy "
                  f"{g['balanced_accuracy']:.4f}, CTC recall {g['per_class']['CTC']['recall']:.3f}, "
                  f"CTC precision {g['per_class']['CTC']['precision']:.3f}")
        print("  " + format_confusion(metrics).replace("\n", "\n  "))
    return 0


if __name__ == "__main__":
    sys.exit(main())
