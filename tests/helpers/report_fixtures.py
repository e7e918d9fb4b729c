"""A tiny but complete set of cohort-report inputs, fabricated in a folder (shared by the report tests:
tests/unit/report and the browser test in tests/report).

Slides are small (96 x 96 px, 4 channels, 2 x 2 tiles) images of disc-shaped cells written with
hemoprofile.io's OME-Zarr writers; cells.parquet, patches.zarr and clusters.parquet come from the real
extract stage, so their formats are the ones the report meets in a run. Predictions, embeddings,
classifier and embedding metrics and the patient-level files are fabricated in the formats their
stages write (patient files: the formats agreed for the aggregate and patient-model stages).

Every slide has 16 leukocytes on a grid and one large CK-positive, CD45-negative cell (a CTC) touching
a leukocyte, so each slide has one CTC–leukocyte cluster. ``intensity_scale`` multiplies a slide's raw
intensities (an intensity-QC outlier); ``empty_slide`` adds a slide with no cells and
``skipped_slide`` a sample-sheet row with no outputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from hemoprofile import io
from hemoprofile.embed.conditions import clusters_by_condition
from hemoprofile.embed.sample import EmbedSlide
from hemoprofile.features.extract import extract_slide
from hemoprofile.report import ReportInputs

CHANNELS = ["DAPI", "CK", "VIM", "CD45"]
SIZE = 96
TILE = 64
IMMUNE5 = ["T", "B", "NK", "granulocyte", "monocyte"]
SUBTYPES = ["disease_a", "disease_b"]
#: slide -> (patient, condition); P3 has two slides.
SHEET = {"S1": ("P1", "control"), "S2": ("P2", "disease_a"), "S3": ("P3", "disease_b"), "S4": ("P3", "disease_b")}
GIT_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _disc(yy, xx, cy, cx, r):
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def slide_arrays(seed: int, scale: float = 1.0, empty: bool = False):
    """(raw uint16 (4, y, x), preprocessed uint16 in [0, 1] scaled, labels uint32) of one slide."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    labels = np.zeros((SIZE, SIZE), np.uint32)
    signal = np.zeros((4, SIZE, SIZE), np.float64)
    if not empty:
        label = 0
        for cy in (12, 32, 52, 72):
            for cx in (12, 30, 48):
                label += 1
                cell = _disc(yy, xx, cy, cx, 6) & (labels == 0)
                labels[cell] = label
                signal[0][_disc(yy, xx, cy, cx, 3)] = 2000   # DAPI nucleus
                signal[3][cell] += 1500                      # CD45
                signal[2][cell] += 300                       # VIM
        # a leukocyte touching a CTC: the slide's CTC–leukocyte cluster
        leuk = _disc(yy, xx, 48, 66, 6) & (labels == 0)
        labels[leuk] = label + 1
        signal[0][_disc(yy, xx, 48, 66, 3)] = 2000
        signal[3][leuk] += 1500
        ctc = _disc(yy, xx, 48, 81, 10) & (labels == 0)
        labels[ctc] = label + 2
        signal[0][_disc(yy, xx, 48, 81, 5)] = 2000
        signal[1][ctc] += 3000                               # CK
        signal[2][ctc] += 800
        # four more leukocytes in the free lower right corner
        for i, (cy, cx) in enumerate(((72, 66), (72, 84), (86, 66), (86, 84))):
            cell = _disc(yy, xx, cy, cx, 6) & (labels == 0)
            labels[cell] = label + 3 + i
            signal[0][_disc(yy, xx, cy, cx, 3)] = 2000
            signal[3][cell] += 1500
    raw = 100 + signal * scale + rng.normal(0, 10, signal.shape)
    raw = np.clip(raw, 0, 65535).astype(np.uint16)
    unit = np.clip(signal / 3000.0 + rng.normal(0, 0.01, signal.shape), 0, 1)
    return raw, np.round(unit * 65535).astype(np.uint16), labels


def write_slide(folder: Path, slide: str, seed: int, scale: float = 1.0, empty: bool = False) -> dict[str, str]:
    """Write one slide's zarr images and run the extract stage on them; return its paths."""
    folder.mkdir(parents=True, exist_ok=True)
    raw, pre, labels = slide_arrays(seed, scale, empty)
    paths = {k: str(folder / f"{k}.zarr") for k in ("image", "preprocessed", "labels", "patches")}
    paths.update({k: str(folder / f"{k}.parquet") for k in ("cells", "clusters", "predictions", "embedding")})
    for key, pixels in (("image", raw), ("preprocessed", pre)):
        io.create_ome_zarr_image(paths[key], pixels.shape, pixels.dtype, TILE, CHANNELS, pixel_size_um=0.65,
                                 name=slide)[:] = pixels
    io.create_ome_zarr_labels(paths["labels"], labels.shape, TILE, pixel_size_um=0.65)[:] = labels
    extract_slide(paths["labels"], paths["image"], paths["preprocessed"], paths["cells"], paths["patches"],
                  paths["clusters"], {"max_cell_diameter_px": 24}, {"enabled": False}, slide=slide, progress=None)
    cells = pd.read_parquet(paths["cells"])
    write_predictions(paths["predictions"], slide, cells, seed)
    rng = np.random.default_rng(seed + 100)
    embedding = pd.DataFrame({"slide": slide, "cell_id": cells["cell_id"].to_numpy()})
    for k in range(4):
        embedding[f"z_{k}"] = rng.normal(size=len(cells)).astype(np.float32)
    embedding["map_x"] = embedding["z_0"]
    embedding["map_y"] = embedding["z_1"]
    embedding["cluster"] = (np.arange(len(cells)) % 3).astype(np.int32)
    embedding.to_parquet(paths["embedding"], index=False)
    return paths


def write_predictions(path, slide: str, cells: pd.DataFrame, seed: int) -> None:
    """Predictions in classify's format: the largest cell is a CTC (p 0.97), leukocytes cycle over immune5."""
    rng = np.random.default_rng(seed + 200)
    n = len(cells)
    types = np.array([IMMUNE5[i % len(IMMUNE5)] for i in range(n)], dtype=object)
    pred = pd.DataFrame({"slide": slide, "cell_id": cells["cell_id"].to_numpy()})
    probs = np.full((n, len(IMMUNE5)), 0.05, np.float32)
    probs[np.arange(n), [IMMUNE5.index(t) for t in types]] = 0.8
    for k, name in enumerate(IMMUNE5):
        pred[f"p_immune5_{name}"] = probs[:, k]
    pred["pred_immune5"] = types
    pred["model_immune5"] = "aaaaaaaaaaaa"
    p_ctc = rng.uniform(0.0, 0.2, n).astype(np.float32)
    if n:
        p_ctc[int(np.argmax(cells["area"].to_numpy()))] = 0.97
    pred["p_ctc_leukocyte"] = 1 - p_ctc
    pred["p_ctc_CTC"] = p_ctc
    pred["pred_ctc"] = np.where(p_ctc >= 0.5, "CTC", "leukocyte")
    pred["model_ctc"] = "bbbbbbbbbbbb"
    pred.to_parquet(path, index=False)


def classifier_metrics(task: str, classes: list[str]) -> dict:
    k = len(classes)
    cm = (np.eye(k, dtype=int) * 40 + 2).tolist()
    per_class = {c: {"precision": 0.95, "recall": 0.952, "f1": 0.951, "support": 40 + 2 * k} for c in classes}
    block = {"n": int(np.sum(cm)), "accuracy": 0.953, "balanced_accuracy": 0.951, "macro_f1": 0.949,
             "per_class": per_class, "classes": classes, "confusion_matrix": cm}
    return {"task": task, "classes": classes,
            "split": {"held_out_by": "group", "train_groups": ["P1"], "validation_groups": ["P2"],
                      "test_groups": ["P3"]},
            "training": {"epochs": 2, "best_epoch": 1}, "validation": block, "test": block,
            "model_id": "cccccccccccc", "model_file": f"classifier_{task}.pt"}


def _ci(value: float) -> dict:
    return {"value": value, "ci95": [round(value - 0.1, 3), round(min(value + 0.1, 1.0), 3)]}


def patient_files(cohort: Path, patients: list[str], conditions: dict[str, str]) -> dict[str, str]:
    """The aggregate and patient-model outputs in their agreed formats."""
    cohort.mkdir(parents=True, exist_ok=True)
    (cohort / "patient_model").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"patient": patients, "condition": [conditions[p] for p in patients],
                          "n_slides": [2 if p == "P3" else 1 for p in patients]})
    table["n_cells"] = 22 * table["n_slides"]
    for t in IMMUNE5:
        table[f"count_{t}"] = 4 * table["n_slides"]
    for t in IMMUNE5:
        table[f"frac_{t}"] = 0.2
    table["count_CTC"] = table["n_slides"]
    table["ctc_count"] = table["n_slides"]
    table["ctc_per_1000"] = 1000 * table["ctc_count"] / 21
    paths = {"patients": str(cohort / "patients.parquet"), "patient_columns": str(cohort / "patients_columns.tsv"),
             "patient_metrics": str(cohort / "patient_model/metrics.json"),
             "patient_oof": str(cohort / "patient_model/oof_predictions.parquet"),
             "patient_importances": str(cohort / "patient_model/importances.parquet"),
             "patient_predictions": str(cohort / "patient_predictions.parquet")}
    table.to_parquet(paths["patients"], index=False)
    pd.DataFrame({"column": table.columns, "description": [f"what {c} means" for c in table.columns]}).to_csv(
        paths["patient_columns"], sep="\t", index=False)

    def stage(classes, auc=True):
        metrics = {"accuracy": _ci(0.8), "balanced_accuracy": _ci(0.75), "macro_f1": _ci(0.7)}
        if auc:
            metrics["roc_auc"] = _ci(0.85)
        k = len(classes)
        return {"classes": classes, "n_patients": len(patients), "class_counts": {c: 1 for c in classes},
                "cv": {"folds": 2, "repeats": 3, "smote_skipped_folds": 1}, "metrics": metrics,
                "per_model": {m: {"accuracy": _ci(0.7), "balanced_accuracy": _ci(0.7), "macro_f1": _ci(0.65),
                                  "roc_auc": _ci(0.8)}
                              for m in ("xgboost", "catboost", "random_forest", "mlp", "ensemble")},
                "confusion_matrix": (np.eye(k, dtype=int) + 1).tolist()}

    overall = stage(["control", *SUBTYPES], auc=False)
    overall.pop("cv")
    overall.pop("per_model")
    metrics = {"n_patients": len(patients), "n_unlabelled": 0, "features": ["frac_T", "frac_B", "ctc_per_1000"],
               "seed": 0, "settings": {"folds": 2, "repeats": 3},
               "stages": {"disease": stage(["control", "disease"]), "subtype": stage(SUBTYPES), "overall": overall}}
    Path(paths["patient_metrics"]).write_text(json.dumps(metrics, indent=1))

    p_disease = rng.uniform(0, 1, len(patients))
    p_a = rng.uniform(0, 1, len(patients))
    state = np.where(p_disease < 0.5, "control", np.where(p_a >= 0.5, "disease_a", "disease_b"))
    oof = pd.DataFrame({"patient": patients, "condition": [conditions[p] for p in patients],
                        "stage1_true": ["control" if conditions[p] == "control" else "disease" for p in patients],
                        "p_disease": p_disease,
                        "stage1_pred": np.where(p_disease >= 0.5, "disease", "control"),
                        "p_disease_a": p_a, "p_disease_b": 1 - p_a,
                        "stage2_pred": np.where(p_a >= 0.5, "disease_a", "disease_b"), "predicted_state": state})
    oof.to_parquet(paths["patient_oof"], index=False)
    features = ["frac_T", "frac_B", "frac_NK", "ctc_per_1000", "count_CTC"]
    rows = [{"stage": s, "feature": f, "model": m, "importance": float(rng.uniform(0, 1))}
            for s in ("disease", "subtype") for f in features
            for m in ("xgboost", "catboost", "random_forest", "ensemble")]
    pd.DataFrame(rows).to_parquet(paths["patient_importances"], index=False)
    pred = pd.DataFrame({"patient": patients, "p_disease": p_disease,
                         "predicted_disease": np.where(p_disease >= 0.5, "disease", "control"),
                         "p_disease_a": p_a, "p_disease_b": 1 - p_a,
                         "predicted_subtype": np.where(p_a >= 0.5, "disease_a", "disease_b"),
                         "predicted_state": state, "p_state_control": 1 - p_disease,
                         "p_state_disease_a": p_disease * p_a, "p_state_disease_b": p_disease * (1 - p_a)})
    pred.to_parquet(paths["patient_predictions"], index=False)
    return paths


def _small_png(path: Path, title: str) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3, 2.5))
    ax = fig.add_subplot()
    ax.scatter(np.arange(10), np.arange(10) % 4, c=np.arange(10) % 3, s=8)
    ax.set_title(title)
    fig.savefig(path, dpi=60)
    return str(path)


def make_report_inputs(root: str | Path, *, intensity_scale: dict[str, float] | None = None,
                       empty_slide: bool = False, skipped_slide: bool = False) -> ReportInputs:
    """Fabricate every input of the report under ``root`` and return the :class:`ReportInputs`."""
    root = Path(root)
    sheet = dict(SHEET)
    if empty_slide:
        sheet["S5"] = ("P4", "control")
    if skipped_slide:
        sheet["S6"] = ("P5", "disease_a")
    samples = pd.DataFrame([{"slide": s, "patient": p, "condition": c, "path": f"raw/{s}", "format": "frames",
                             "channels": ",".join(CHANNELS), "batch": s} for s, (p, c) in sheet.items()])
    slides = {}
    for i, slide in enumerate(sheet):
        if slide == "S6":
            continue  # in the sheet, no outputs (a skipped or failed slide)
        slides[slide] = write_slide(root / slide, slide, seed=i, scale=(intensity_scale or {}).get(slide, 1.0),
                                    empty=slide == "S5")
    models = root / "models"
    models.mkdir(exist_ok=True)
    classifier = {}
    for task, classes in (("immune5", IMMUNE5), ("ctc", ["leukocyte", "CTC"])):
        classifier[task] = str(models / f"classifier_{task}.metrics.json")
        Path(classifier[task]).write_text(json.dumps(classifier_metrics(task, classes)))
    emb = root / "cohort" / "embedding"
    emb.mkdir(parents=True, exist_ok=True)
    (emb / "metrics.json").write_text(json.dumps({
        "n_cells": 80, "n_clusters": 3, "silhouette": 0.21, "davies_bouldin": 1.4,
        "label": {"n_labelled": 80, "ari": 0.4, "nmi": 0.5, "purity": 0.7},
        "batch": {"n_batches": 4, "silhouette_by_batch": -0.01, "knn_entropy": 0.8},
        "condition_on": "none", "model_id": "dddddddddddd"}))
    figures = {key: _small_png(emb / f"{key}.png", key) for key in ("map_cluster", "map_condition")}
    items = [EmbedSlide(s, "", "", *sheet[s]) for s in slides]
    clusters_by_condition([slides[s]["embedding"] for s in slides], items, emb / "clusters_by_condition.parquet",
                          settings={"medoids": 3})
    patients = sorted({p for s, (p, _) in sheet.items()})
    conditions = {p: c for p, c in sheet.values()}
    patient_paths = patient_files(root / "cohort", patients, conditions)
    bench = root / "benchmarks"
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    for rule, seconds in (("segment", 2.5), ("extract", 0.5)):
        (bench / rule).mkdir(parents=True, exist_ok=True)
        for slide in slides:
            (bench / rule / f"{slide}.tsv").write_text(header + f"{seconds}\t0:00:02\t400.5\t900\t1\t1\t1\t1\t50\t2\n")
    (bench / "train_embedder.tsv").write_text(header + "30.0\t0:00:30\t700\t900\t1\t1\t1\t1\t90\t29\n")
    config = {"results": str(root), "seed": 0, "classify": {"tasks": ["immune5", "ctc"]},
              "embed": {"latent_dim": 4}}
    provenance = {"git_commit": GIT_COMMIT, "git_dirty": False, "versions": {"numpy": np.__version__},
                  "python": "3.x", "platform": "test", "hostname": "testhost", "date": "2026-01-01T00:00:00+00:00",
                  "command": "snakemake --cores 2", "started": "2026-01-01T00:00:00+00:00",
                  "finished": "2026-01-01T00:10:00+00:00"}
    return ReportInputs(config=config, samples=samples, slides=slides, classifier_metrics=classifier,
                        embedding_metrics=str(emb / "metrics.json"), embedding_figures=figures,
                        clusters_by_condition=str(emb / "clusters_by_condition.parquet"),
                        benchmarks_dir=str(bench), provenance=provenance, **patient_paths,
                        **interaction_files(root / "cohort" / "interaction", sheet),
                        **_ctc_review_files(root, samples))


def interaction_files(folder: Path, sheet: dict) -> dict:
    """The interaction stage's predictions.parquet and metrics.json: 8 windows per slide whose true
    contacts are known; the CNN is off by a fixed 0.5 (so its RMSE is 0.500), the latent ridge by 1."""
    from hemoprofile.interaction.regression import rmse_summary

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    rows = []
    for slide, (patient, _) in sheet.items():
        for w in range(8):
            target = float(rng.integers(0, 7))
            rows.append({"slide": slide, "patient": patient, "window": w, "kind": "cluster" if w < 4 else "random",
                         "target": target, "target_source": "truth", "n_cells": 10, "seg_contacts": target,
                         "ctc_leukocyte_contacts": 0.0, "fold": 0, "pred_mean": 3.0,
                         "pred_latent": target + (1.0 if w % 2 else -1.0), "pred_cnn": target + 0.5})
    pred = pd.DataFrame(rows)
    pred.to_parquet(folder / "predictions.parquet", index=False)
    preds = {"mean": pred["pred_mean"], "latent_ridge": pred["pred_latent"], "cnn": pred["pred_cnn"],
             "segmentation_count": pred["seg_contacts"]}
    metrics = {"target": "contacts", "target_source": ["truth"], "folds": 3, "window_size": 128, "input_size": 32,
               "epochs": 2, "all": rmse_summary(pred["target"], preds, pred["patient"], 100)}
    for kind, part in pred.groupby("kind"):
        metrics[kind] = rmse_summary(part["target"], {k: v[part.index] for k, v in preds.items()}, part["patient"], 100)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return {"interaction_metrics": str(folder / "metrics.json"),
            "interaction_predictions": str(folder / "predictions.parquet")}


def _ctc_review_files(root: Path, samples: pd.DataFrame) -> dict[str, str]:
    """The CTC review inputs: a calibration JSON, its reliability diagram and the cohort CTC table, made
    by hemoprofile.classify.calibration from fabricated scores and counts."""
    from hemoprofile.classify.calibration import calibrate_and_choose, write_calibration
    from hemoprofile.rates import rate_per_million

    rng = np.random.default_rng(3)
    scores = np.concatenate([rng.beta(1, 30, 4000), rng.beta(8, 2, 40)])
    cells = pd.DataFrame({"score": scores, "is_ctc": np.arange(len(scores)) >= 4000})
    result, curve = calibrate_and_choose(cells, cells, 10.0)
    result.update(validation_patients=["P1"], test_patients=["P3"])
    cohort = root / "cohort"
    cohort.mkdir(parents=True, exist_ok=True)
    write_calibration(result, curve, cohort / "ctc_calibration.json", cohort / "ctc_calibration_curve.tsv")
    patients = samples.groupby(["patient", "condition"], as_index=False).size()
    table = pd.DataFrame({"level": "patient", "patient": patients["patient"], "slide": "",
                          "condition": patients["condition"], "n_cells": 5000, "candidates": 3, "reviewed": 2,
                          "reviewed_ctc": 1, "reviewed_not_ctc": 1, "unsure": 0, "unreviewed": 1,
                          "reviewed_slides": 1, "ctc_count": 1, "n_leukocytes": 4999})
    rate, low, high = rate_per_million(table["ctc_count"], table["n_leukocytes"])
    table["ctc_per_million"], table["ctc_per_million_low"], table["ctc_per_million_high"] = rate, low, high
    table.to_csv(cohort / "ctc_review.tsv", sep="\t", index=False)
    return {"ctc_table": str(cohort / "ctc_review.tsv"), "ctc_calibration": str(cohort / "ctc_calibration.json"),
            "ctc_calibration_curve": str(cohort / "ctc_calibration_curve.tsv")}
