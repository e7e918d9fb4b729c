"""One patient's images -> cell types -> the cohort's patient features -> the patient model's prediction.

The steps are the cohort's own, so the page computes what the workflow would for the same images:

* each image is read and fitted to the classifier's patch size by the collection ingestion
  (:func:`hemoprofile.ingest.collection.read_crop`, :func:`~hemoprofile.ingest.collection.fit_crop`,
  stored as uint8 as ingestion stores patches) and classified by
  :func:`hemoprofile.classify.inference.classifier_probabilities`;
* the per-patient row is built by the patient aggregation's own row function
  (:func:`hemoprofile.patients.aggregate.patient_row`, which every cohort's patient table comes from);
* the patient model scores it with :func:`hemoprofile.patients.prediction.predict_two_stage`.

An image that cannot be used (unreadable, empty, not an image, wrong number of channels) is listed with
its problem and skipped; the rest are classified.

This module imports the classify, ingest and patients stages: ``serve`` is an application layer over
the stages, like ``cli`` (tests/unit/package/test_package_layout.py), and no stage imports it.
"""

from __future__ import annotations

import base64
import io as _io
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

#: Images read, fitted and classified per step (bounds memory; progress is reported per step).
BATCH = 128
#: Thumbnail edge in the gallery (px).
THUMBNAIL = 64


@dataclass
class ModelFiles:
    """The files a served cohort needs: the cell classifier, the patient model and its metrics."""

    classifier: Path
    patient_model: Path
    metrics: Path

    @classmethod
    def from_results(cls, results: Path, classifier: Path | None = None, patient_model: Path | None = None,
                     metrics: Path | None = None) -> ModelFiles:
        """The workflow's layout under ``results`` (``models/patient_model.pkl``,
        ``cohort/patient_model/metrics.json``); the bundled ``pbc8`` classifier unless one is given."""
        results = Path(results)
        files = cls(classifier=Path(classifier) if classifier else bundled_classifier(),
                    patient_model=Path(patient_model) if patient_model else results / "models" / "patient_model.pkl",
                    metrics=Path(metrics) if metrics else results / "cohort" / "patient_model" / "metrics.json")
        train = "train the cohort first (its workflow's train_patient_model rule) or name the file with"
        for what, path, hint in (
                ("cell classifier", files.classifier, "name the cohort's classifier with --classifier"),
                ("patient model", files.patient_model, f"{train} --patient-model"),
                ("patient-model metrics", files.metrics, f"{train} --metrics")):
            if not path.is_file():
                raise FileNotFoundError(f"{what} not found: {path} ({hint})")
        return files


def bundled_classifier() -> Path:
    """The bundled 8-class stained-smear classifier (``bundled:pbc8_cellnet96``, package data)."""
    from hemoprofile.models import DEFAULT_CLASSIFIER_MODEL, resolve_model

    return resolve_model(DEFAULT_CLASSIFIER_MODEL, "cell classifier")


@dataclass
class CellTable:
    """Classified cells of one upload and the files that could not be used."""

    paths: list[str]
    classes: list[str]
    probabilities: np.ndarray
    thumbnails: dict[str, list[dict]] = field(default_factory=dict)
    bad_files: list[dict] = field(default_factory=list)

    @property
    def predicted(self) -> np.ndarray:
        if not len(self.paths):
            return np.array([], dtype=object)
        return np.asarray(self.classes, dtype=object)[self.probabilities.argmax(1)]

    def to_frame(self) -> pd.DataFrame:
        """One row per classified image: ``path``, ``predicted_type``, ``p_<class>``."""
        out = pd.DataFrame({"path": self.paths, "predicted_type": self.predicted})
        for j, c in enumerate(self.classes):
            out[f"p_{c}"] = self.probabilities[:, j] if len(self.paths) else []
        return out


def _thumbnail(patch: np.ndarray) -> str:
    """A (c, P, P) uint8 patch as a small PNG data URI."""
    from PIL import Image

    image = np.moveaxis(patch, 0, -1)
    image = image[..., 0] if image.shape[-1] == 1 else image[..., :3]
    buffer = _io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).resize((THUMBNAIL, THUMBNAIL), Image.BILINEAR).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class Analyzer:
    """The loaded models of a served cohort; :meth:`classify` and :meth:`predict` run one upload.

    Parameters
    ----------
    files : the model files.
    device : ``auto``, ``cpu`` or ``cuda``.
    threads : CPU threads for torch (None: torch's default).
    gallery_per_type : thumbnails kept per predicted type.
    """

    def __init__(self, files: ModelFiles, device: str = "auto", threads: int | None = None,
                 gallery_per_type: int = 24):
        from hemoprofile.classify.checkpoints import load_classifier
        from hemoprofile.nn.devices import pick_device
        from hemoprofile.patients.prediction import load_model

        self.files = files
        self.classifier = load_classifier(files.classifier)
        self.device = pick_device(device, threads=threads)
        self.patient_model = load_model(files.patient_model)
        self.metrics = json.loads(Path(files.metrics).read_text())
        self.gallery_per_type = int(gallery_per_type)
        self.cell_types = list(self.classifier.output_classes)
        missing = [f for f in self.patient_model.features if f not in self.patient_row([])]
        if missing:
            raise ValueError(f"patient model {files.patient_model} needs feature(s) {missing} that the classifier "
                             f"{files.classifier} (types {', '.join(self.cell_types)}) cannot give; serve the "
                             "classifier the cohort was classified with (--classifier)")

    def describe(self) -> dict:
        """What the page shows about the models."""
        return {"classifier": {"file": self.files.classifier.name, "model_id": self.classifier.model_id,
                               "classes": self.cell_types},
                "patient_model": {"file": self.files.patient_model.name, "control_label": self.patient_model.control_label,
                                  "subtypes": list(self.patient_model.subtypes),
                                  "n_patients": self.metrics.get("n_patients"),
                                  "features": list(self.patient_model.features)},
                "device": self.device.description}

    def classify(self, root: Path, files: Sequence[Path], progress: Callable[[int, int], None] | None = None,
                 should_stop: Callable[[], bool] = lambda: False) -> CellTable:
        """Classify the images ``files`` (under ``root``); unusable ones go to ``bad_files``."""
        from hemoprofile.classify.inference import classifier_probabilities
        from hemoprofile.ingest.collection import IMAGE_SUFFIXES, fit_crop, read_crop
        from hemoprofile.io.patches import to_patch_dtype

        clf = self.classifier
        n_channels = len(clf.channels)
        table = CellTable(paths=[], classes=self.cell_types, probabilities=np.zeros((0, len(self.cell_types)), np.float32))
        probabilities = []
        total = len(files)
        for start in range(0, total, BATCH):
            if should_stop():
                raise RuntimeError("cancelled")
            names, patches = [], []
            for path in files[start:start + BATCH]:
                name = str(path.relative_to(root))
                problem = None
                if path.suffix.lower() not in IMAGE_SUFFIXES:
                    problem = f"not an image file (accepted: {', '.join(IMAGE_SUFFIXES)})"
                elif path.stat().st_size == 0:
                    problem = "empty file"
                else:
                    try:
                        crop = read_crop(path)
                    except ValueError as err:
                        problem = str(err).replace(str(path), name).removeprefix(f"{name}: ")
                    else:
                        if crop.shape[0] != n_channels:
                            problem = (f"{crop.shape[0]} channel(s); the classifier needs {n_channels} "
                                       f"({', '.join(clf.channels)})")
                        elif min(crop.shape[1:]) < 4:
                            problem = f"too small ({crop.shape[2]} x {crop.shape[1]} px)"
                if problem:
                    table.bad_files.append({"path": name, "problem": problem})
                    continue
                names.append(name)
                patches.append(to_patch_dtype(fit_crop(crop, clf.patch_size), "uint8"))
            if patches:
                batch = np.stack(patches)
                p = classifier_probabilities(clf, batch, self.device, batch_size=BATCH)
                probabilities.append(p)
                table.paths += names
                for i, k in enumerate(p.argmax(1)):
                    gallery = table.thumbnails.setdefault(self.cell_types[k], [])
                    if len(gallery) < self.gallery_per_type:
                        gallery.append({"path": names[i], "p": round(float(p[i, k]), 4), "src": _thumbnail(batch[i])})
            if progress:
                progress(min(start + BATCH, total), total)
        if probabilities:
            table.probabilities = np.concatenate(probabilities)
        return table

    def patient_row(self, predicted_types: Sequence[str]) -> dict:
        """The patient-table row of one patient whose cells have these predicted types (the cohort's
        aggregation; no morphology or cell-cluster measurements exist for single-cell images)."""
        from hemoprofile.patients.aggregate import patient_row

        cells = pd.DataFrame({"cell_type": pd.Series(list(predicted_types), dtype=object),
                              "cluster_id": np.full(len(predicted_types), -1, np.int64),
                              "slide": "upload"})
        return patient_row(cells, self.cell_types, None)

    def predict(self, cells: CellTable) -> dict:
        """Counts, fractions and the patient model's prediction for one upload (JSON-ready)."""
        from hemoprofile.patients.prediction import predict_two_stage

        started = time.perf_counter()
        predicted = cells.predicted
        n = len(predicted)
        counts = pd.Series(predicted, dtype=object).value_counts()
        composition = [{"type": t, "count": int(counts.get(t, 0)),
                        "fraction": float(counts.get(t, 0)) / n if n else 0.0} for t in self.cell_types]
        result = {"n_files": n + len(cells.bad_files), "n_cells": n, "bad_files": cells.bad_files,
                  "composition": composition, "gallery": cells.thumbnails, "prediction": None,
                  "performance": performance_summary(self.metrics)}
        if n == 0:
            result["message"] = "no usable image in the upload: nothing to predict"
            return result
        row = {"patient": "upload", **self.patient_row(predicted)}
        scored = predict_two_stage(self.patient_model, pd.DataFrame([row])).iloc[0]
        model = self.patient_model
        result["prediction"] = {
            "control_label": model.control_label,
            "p_disease": float(scored["p_disease"]),
            "predicted_state": str(scored["predicted_state"]),
            "predicted_subtype": str(scored["predicted_subtype"]),
            "states": [{"state": s, "p": float(scored[f"p_state_{s}"])} for s in model.states],
            "subtypes": [{"subtype": s, "p_given_disease": float(scored[f"p_{s}"])} for s in model.subtypes],
            "features": {f: _finite(row.get(f)) for f in model.features},
        }
        result["seconds_predict"] = round(time.perf_counter() - started, 3)
        return result


def _finite(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None


def performance_summary(metrics: dict) -> dict:
    """The cross-validated metrics of each stage (value and 95 % CI), as the page shows them."""
    out = {"n_patients": metrics.get("n_patients"), "cv": None, "stages": {}}
    for stage, block in (metrics.get("stages") or {}).items():
        scores = {name: {"value": _finite(m.get("value")), "ci95": m.get("ci95")}
                  for name, m in (block.get("metrics") or {}).items() if isinstance(m, dict)}
        out["stages"][stage] = {"classes": block.get("classes"), "class_counts": block.get("class_counts"),
                                "metrics": scores}
        if out["cv"] is None and block.get("cv"):
            out["cv"] = {"folds": block["cv"].get("folds"), "repeats": block["cv"].get("repeats")}
    return out
