"""Rare events at real frequencies (issue 17 section 3): CTC recall and false candidates per million
leukocytes of the whole chain on real-size synthetic slides, three candidate rules side by side.

Two synthetic cohorts at HDSCA geometry (config/scale.yaml: 1362 x 1004 px frames, ~1,300 cells per frame,
look-alikes at their real-size default rates), each run through the workflow's own rules (simulate, tile,
preprocess, classical segment, extract: one Snakemake call per arm whose targets are the slides'
cells.parquet and patches.zarr), then classified with the CTC classifier of a finished run
(``--models-from``: its models/classifier_ctc.pt, trained on a CTC-enriched cohort such as the demo's).
Several runs' classifiers can be compared on the same objects in the same run: ``--models-from
A=<run A>/results B=<run B>/results`` prints every rule once per model, named by the label before ``=``:

- the **real-rate arm** (``ctc_arm`` real): control slides (0 CTCs per million) and disease slides at real
  rates (2 and 10 per million, Poisson per slide). Its first control slide is the **calibration slide**: the
  candidate threshold is chosen on it for ``--max-false-per-million`` (hemoprofile.classify.calibration
  .choose_threshold, as calibrate_ctc does on held-out training slides). The other slides are the
  **evaluation slides**: their false candidates per million leukocytes are the figure to read.
- the **spiked arm** (``ctc_arm`` enriched, ``--spiked-enrichment`` x the real rates): enough CTCs for a
  recall interval, by subtype (CK_high, EMT-like, small) and in CTC-leukocyte clusters. Its false-candidate
  rate is printed too but is not the real-rate figure (a spiked slide has more CTC-leukocyte doublets).

Rules, side by side on the same objects: the CNN at the calibration slide's threshold; the CNN at the
training run's own calibrate_ctc threshold (models/ctc_calibration.json, when present); the classical
HDSCA gate alone (gate_label CTC: CK+ CD45- DAPI+); and the CNN at each threshold restricted to
gate-positive objects. Objects are matched to truth by centroid (hemoprofile.classify.rare_events): recall
counts true CTCs, found by segmentation or not; false candidates are flagged objects on no true CTC,
per million such objects. Intervals: Clopper-Pearson (recall), Garwood (rates).

Usage (the figures in bench/RESULTS.md; ~1 h on 2 cores)::

    PYTHONPATH=src .venv/bin/python bench/rare_events.py --models-from results \\
        --work /work/benchwork/rare --scale 1/16 --real 3 2 2 --spiked-scale 1/64 --spiked 2 2

Work folders are kept (a second call resumes: Snakemake skips finished slides, classification skips
slides already classified by the same model file: predictions_ctc_<model id>.parquet); delete ``--work``
afterwards.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

#: Per-slide stages run by Snakemake (the ``threads:`` keys set to 1 so that --cores slides run at once).
STAGE_THREADS = ("simulate", "tile", "preprocess", "segment", "extract")
CONDITIONS = ("control", "disease_a", "disease_b")


def merged_config(configfiles: list[Path]) -> dict:
    """config/config.yaml with ``configfiles`` merged over it key by key, as Snakemake's --configfile does."""
    from snakemake.utils import update_config

    from hemoprofile.config import load_config

    merged = load_config(ROOT / "config" / "config.yaml")
    for extra in configfiles:
        update_config(merged, yaml.safe_load(extra.read_text()) or {})
    return merged


def build_arm(name: str, work: Path, scale: str, patients: list[int], enrichment: float, seed: int,
              cores: int) -> tuple[Path, pd.DataFrame, float]:
    """Simulate and run one arm's slides up to extract; returns its results folder, plan and seconds."""
    from hemoprofile.simulate import plan_cohort

    arm = work / name
    results = arm / "results"
    arm.mkdir(parents=True, exist_ok=True)
    overlay = arm / "overlay.yaml"
    conditions = {c: {"patients": n, "blind_patients": 0} for c, n in zip(CONDITIONS, patients)}
    overlay.write_text(yaml.safe_dump({
        "results": str(results),
        "synthetic": {"scale": scale, "seed": seed, "ctc_enrichment": enrichment, "conditions": conditions},
        "threads": dict.fromkeys(STAGE_THREADS, 1),
    }))
    configfiles = [ROOT / "config" / "scale.yaml", overlay]
    plan = plan_cohort(merged_config(configfiles)["synthetic"], results / "synthetic")
    targets = [str(results / s / f) for s in plan["slide"] for f in ("cells.parquet", "patches.zarr")]
    log = arm / "snakemake.log"
    print(f"== {name} arm: {len(plan)} slides at scale {scale}, ctc_enrichment {enrichment:g}, seed {seed}; "
          f"Snakemake log {log}", flush=True)
    start = time.perf_counter()
    with open(log, "a") as handle:
        code = subprocess.call([sys.executable, "-m", "snakemake", "--cores", str(cores), "--configfile",
                                *map(str, configfiles), "--", *targets], cwd=ROOT, stdout=handle, stderr=handle)
    if code != 0:
        raise SystemExit(f"{name} arm: Snakemake failed (exit {code}); see {log}")
    seconds = time.perf_counter() - start
    print(f"   {name} arm built in {seconds / 60:.1f} min", flush=True)
    return results, plan, seconds


def predictions_name(model: Path) -> str:
    """The file a model's scores of one slide go to (named by the model file's id, so a second model or a
    retrained one never reuses another's scores)."""
    from hemoprofile.io import model_id

    return f"predictions_ctc_{model_id(model)[:16]}.parquet"


def classify_arm(results: Path, plan: pd.DataFrame, model: Path, threads: int) -> float:
    """p_ctc_CTC of every object (classify_slide with the one ctc model and the classify settings of
    config/scale.yaml, as the rule would run it); skips slides this model already classified."""
    from hemoprofile.classify.inference import classify_slide

    section = merged_config([ROOT / "config" / "scale.yaml"])["classify"]
    seconds = 0.0
    for slide in plan["slide"]:
        out = results / slide / predictions_name(model)
        if out.exists():
            continue
        start = time.perf_counter()
        info = classify_slide(results / slide / "patches.zarr", results / slide / "cells.parquet", [str(model)],
                              out, device=section["device"], mixed_precision=section["mixed_precision"],
                              batch_size=section["batch_size"], tta=section["tta"], threads=threads,
                              progress=lambda m: None)
        seconds += time.perf_counter() - start
        print(f"   classified {slide}: {info['n_cells']} objects, {info['cells_per_second']:.0f} cells/s", flush=True)
    return seconds


def arm_objects(results: Path, plan: pd.DataFrame, models: dict[str, Path]) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Objects of every slide with truth, each model's score (column ``p_<name>``) and the gate; the true
    CTCs; the true cells counted."""
    from hemoprofile.classify.rare_events import TRUTH_NEEDED, objects_with_truth
    from hemoprofile.io.tables import read_cells

    objects, ctcs, n_truth = [], [], 0
    for slide in plan["slide"]:
        synthetic = results / "synthetic" / slide
        truth = pd.read_parquet(synthetic / "truth_cells.parquet", columns=list(TRUTH_NEEDED))
        n_truth += len(truth)
        cells = read_cells(results / slide / "cells.parquet", ["slide", "cell_id", "y", "x", "gate_label"])
        for name, model in models.items():
            path = results / slide / predictions_name(model)
            scores = pd.read_parquet(path, columns=["cell_id", "p_ctc_CTC"])
            if not np.array_equal(scores["cell_id"].to_numpy(), cells["cell_id"].to_numpy()):
                raise SystemExit(f"{path}: rows do not follow cells.parquet")
            cells[f"p_{name}"] = scores["p_ctc_CTC"].to_numpy()
        cells["gate"] = (cells.pop("gate_label") == "CTC").to_numpy()
        found = objects_with_truth(cells, synthetic / "truth_labels.zarr", truth)
        objects.append(found[["slide", "truth_id", "is_ctc", "source", *(f"p_{n}" for n in models), "gate"]])
        true_ctcs = truth.loc[truth["cell_type"] == "CTC", ["cell_id", "ctc_subtype", "cluster_id"]]
        ctcs.append(true_ctcs.assign(slide=slide))
    return pd.concat(objects, ignore_index=True), pd.concat(ctcs, ignore_index=True), n_truth


def cnn_label(model: str) -> str:
    return f"CNN {model}" if model else "CNN"


def rules(objects: pd.DataFrame, thresholds: dict[str, dict[str, float]]) -> dict[str, np.ndarray]:
    """Candidate flags per rule, in print order (``thresholds``: model name -> threshold name -> value)."""
    gate = objects["gate"].to_numpy(bool)
    scores = {model: objects[f"p_{model}"].to_numpy(np.float32) for model in thresholds}
    out = {}
    for model, chosen in thresholds.items():
        out.update({f"{cnn_label(model)}, {name} threshold {t:.4g}": scores[model] >= t for name, t in chosen.items()})
    out["CK+ CD45- DAPI+ gate alone"] = gate
    for model, chosen in thresholds.items():
        out.update({f"{cnn_label(model)} ({name} threshold) on gate-positive": (scores[model] >= t) & gate
                    for name, t in chosen.items()})
    return out


def parse_models(values: list[str]) -> dict[str, Path]:
    """``--models-from`` values (``PATH`` or ``NAME=PATH``) -> model name -> its models folder."""
    named = [v.split("=", 1) if "=" in v else ["" if len(values) == 1 else str(i + 1), v] for i, v in enumerate(values)]
    models = {name: Path(path) / "models" for name, path in named}
    if len(models) != len(values):
        raise SystemExit(f"--models-from: two models with the same name in {values}")
    for folder in models.values():
        if not (folder / "classifier_ctc.pt").exists():
            raise SystemExit(f"--models-from: {folder / 'classifier_ctc.pt'} not found (run the workflow first, "
                             f"e.g. make demo)")
    return models


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-from", nargs="+", default=["results"],
                        help="a finished run's results folder (models/classifier_ctc.pt, models/ctc_calibration.json); "
                             "several as NAME=FOLDER to compare their classifiers on the same objects")
    parser.add_argument("--work", default="/work/benchwork/rare", help="work folder (outside the repository)")
    parser.add_argument("--scale", default="1/16", help="real-rate arm's slide scale (1/16: ~190k cells per slide)")
    parser.add_argument("--real", nargs=3, type=int, default=[3, 2, 2], metavar=("CONTROL", "DISEASE_A", "DISEASE_B"),
                        help="real-rate arm's patients per condition (one slide each; the first control slide "
                             "calibrates the threshold)")
    parser.add_argument("--spiked-scale", default="1/64")
    parser.add_argument("--spiked", nargs=2, type=int, default=[2, 2], metavar=("DISEASE_A", "DISEASE_B"),
                        help="spiked arm's patients per disease condition")
    parser.add_argument("--spiked-enrichment", type=float, default=300.0,
                        help="factor on the real CTC rates in the spiked arm (300: 600 and 3,000 per million)")
    parser.add_argument("--max-false-per-million", type=float, default=10.0)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--json", default="", help="write the figures here too (default: <work>/rare_events.json)")
    args = parser.parse_args(argv)
    if args.real[0] < 1:
        parser.error("the real-rate arm needs at least one control slide (the calibration slide)")
    from hemoprofile.classify.calibration import choose_threshold, read_calibration
    from hemoprofile.classify.rare_events import false_by_source, recall_by_group, rule_figures

    work = Path(args.work)
    model_dirs = parse_models(args.models_from)
    models = {name: folder / "classifier_ctc.pt" for name, folder in model_dirs.items()}
    real_results, real_plan, real_s = build_arm("real", work, args.scale, args.real, 1.0, 101, args.cores)
    spiked_results, spiked_plan, spiked_s = build_arm("spiked", work, args.spiked_scale, [0, *args.spiked],
                                                      args.spiked_enrichment, 202, args.cores)
    classify_s = 0.0
    for model in models.values():
        classify_s += classify_arm(real_results, real_plan, model, args.cores)
        classify_s += classify_arm(spiked_results, spiked_plan, model, args.cores)
    real, real_ctcs, real_truth = arm_objects(real_results, real_plan, models)
    spiked, spiked_ctcs, spiked_truth = arm_objects(spiked_results, spiked_plan, models)

    calibration_slide = real_plan.loc[real_plan["condition"] == "control", "slide"].iloc[0]
    on_calibration = real["slide"] == calibration_slide
    thresholds, choices = {}, {}
    for name, folder in model_dirs.items():
        chosen = choose_threshold(real.loc[on_calibration, f"p_{name}"].to_numpy(),
                                  real.loc[on_calibration, "is_ctc"].to_numpy(), args.max_false_per_million)
        choices[name] = chosen
        thresholds[name] = {"calibration-slide": chosen["threshold"]}
        training_json = folder / "ctc_calibration.json"
        if training_json.exists():
            thresholds[name]["training-run"] = float(read_calibration(training_json)["threshold"])
    evaluation = real[~on_calibration].reset_index(drop=True)
    evaluation_ctcs = real_ctcs[real_ctcs["slide"] != calibration_slide].reset_index(drop=True)

    chosen_text = ", ".join(f"{cnn_label(name)} {c['threshold']:.4g}" for name, c in choices.items())
    print(f"\nreal-rate arm: {len(real_plan)} slides, {real_truth:,} true cells, {len(real):,} objects; calibration "
          f"slide {calibration_slide} ({int(on_calibration.sum()):,} objects: threshold {chosen_text} "
          f"for <= {args.max_false_per_million:g} false per million, resolution "
          f"{next(iter(choices.values()))['resolution_per_million']:.1f} per million); evaluation: "
          f"{len(evaluation_ctcs)} true CTCs, {len(evaluation):,} objects ({int((~evaluation['is_ctc']).sum()):,} "
          f"not on a CTC)")
    print(f"spiked arm: {len(spiked_plan)} slides x {args.spiked_enrichment:g} real rates, {spiked_truth:,} true "
          f"cells, {len(spiked):,} objects, {len(spiked_ctcs)} true CTCs")
    print(f"time: real arm up to extract {real_s / 60:.1f} min, spiked arm {spiked_s / 60:.1f} min, "
          f"classify {classify_s / 60:.1f} min (wall, {args.cores} cores)")

    report = {"command": " ".join(sys.argv), "calibration_slide": calibration_slide, "threshold_choice": choices,
              "models": {name: str(path) for name, path in models.items()},
              "thresholds": thresholds, "real_truth_cells": real_truth, "spiked_truth_cells": spiked_truth,
              "minutes": {"real": real_s / 60, "spiked": spiked_s / 60, "classify": classify_s / 60}, "rules": {}}
    eval_rules, spiked_rules = rules(evaluation, thresholds), rules(spiked, thresholds)
    print(f"\n{'rule':<56} | {'false / M leukocytes, real arm [95% CI]':>40} | {'recall, spiked arm [95% CI]':>28} | "
          f"{'recall, real arm':>16} | {'cand / M, real':>14}")
    for name in eval_rules:
        r, s = rule_figures(evaluation, eval_rules[name], evaluation_ctcs), rule_figures(spiked, spiked_rules[name],
                                                                                         spiked_ctcs)
        report["rules"][name] = {"real": r, "spiked": s}
        per_million = r["candidates"] / len(evaluation) * 1e6
        print(f"{name:<56} | {r['false_per_million']:8.1f} [{r['false_per_million_ci95'][0]:6.1f}, "
              f"{r['false_per_million_ci95'][1]:6.1f}] ({r['false']:>5} false) | {s['recall']:.3f} "
              f"[{s['recall_ci95'][0]:.3f}, {s['recall_ci95'][1]:.3f}] {s['found']:>4}/{s['ctc']:<4} | "
              f"{r['found']:>3}/{r['ctc']:<3} {r['recall']:.2f}    | {per_million:14.1f}")
    last = report["rules"][name]
    print(f"(segmentation put an object on {last['spiked']['ctc_segmented']} of {len(spiked_ctcs)} spiked-arm CTCs "
          f"and {last['real']['ctc_segmented']} of {len(evaluation_ctcs)} real-arm ones)")

    groups = {"CK_high": spiked_ctcs["ctc_subtype"] == "CK_high", "EMT-like": spiked_ctcs["ctc_subtype"] == "EMT",
              "small": spiked_ctcs["ctc_subtype"] == "small", "in a cluster": spiked_ctcs["cluster_id"] >= 0,
              "single": spiked_ctcs["cluster_id"] < 0}
    print("\nrecall by CTC subtype, spiked arm")
    by_group = {name: recall_by_group(spiked, flags, spiked_ctcs, groups) for name, flags in spiked_rules.items()}
    table = pd.DataFrame({name: [f"{g.found}/{g.ctc} {g.recall:.2f} [{g.recall_low:.2f}, {g.recall_high:.2f}]"
                                 for g in frame.itertuples()] for name, frame in by_group.items()},
                         index=list(groups)).T
    print(table.to_string())
    report["recall_by_group"] = {name: frame.to_dict("records") for name, frame in by_group.items()}

    print("\nfalse candidates by what they are, real-arm evaluation slides")
    sources = pd.DataFrame({name: false_by_source(evaluation, flags) for name, flags in eval_rules.items()})
    print(sources.fillna(0).astype(int).to_string())
    report["false_by_source"] = sources.fillna(0).astype(int).to_dict()

    out = Path(args.json) if args.json else work / "rare_events.json"
    out.write_text(json.dumps(report, indent=1, default=float))
    print(f"\nfigures written to {out}")


if __name__ == "__main__":
    main()
