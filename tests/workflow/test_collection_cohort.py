"""Collections as a cohort in the workflow: a tiny generated collection cohort runs end to end (ingest ->
classify with the bundled pbc8 -> aggregate -> patient model -> report), and a mixed sheet (slides and
collections) plans each row's own stages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))

TINY_COLLECTIONS = {
    "results": "results",
    "synthetic": {"enabled": False},
    "collection_demo": {
        "enabled": True,
        "source": str(REPO / "tests" / "fixtures" / "pbc"),
        "cells_per_patient": 30,
        "conditions": {
            "control": {"patients": 2, "composition": {"neutrophil": 0.7, "lymphocyte": 0.3}},
            "aml_a": {"patients": 2, "composition": {"monocyte": 0.6, "neutrophil": 0.4}},
            "aml_b": {"patients": 2, "composition": {"ig": 0.6, "neutrophil": 0.4}},
        },
    },
    "patient_model": {
        "cv_folds": 2, "cv_repeats": 1, "bootstrap": 20,
        "models": {"xgboost": {"n_estimators": 10}, "catboost": {"iterations": 20},
                   "random_forest": {"n_estimators": 20}, "mlp": {"hidden": [8], "max_iter": 200}},
    },
}


def _snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    command = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", "2", *args]
    return subprocess.run(command, check=False, capture_output=True, text=True, cwd=workdir, timeout=600)


def _write_config(workdir: Path, config: dict) -> None:
    (workdir / "config").mkdir(parents=True, exist_ok=True)
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config))


@pytest.mark.slow
def test_tiny_collection_cohort_runs_end_to_end(tmp_path):
    _write_config(tmp_path, TINY_COLLECTIONS)
    run = _snakemake(tmp_path)
    assert run.returncode == 0, run.stderr[-4000:]
    results = tmp_path / "results"
    patients = pd.read_parquet(results / "cohort" / "patients.parquet")
    assert len(patients) == 6 and set(patients["modality"]) == {"smear"}
    assert {"frac_neutrophil", "frac_monocyte", "frac_ig"} <= set(patients.columns)
    assert (patients["n_cells"] == 30).all()  # the bad files were skipped, not counted
    qc = pd.read_csv(results / "C01" / "qc.csv", keep_default_na=False)
    assert (qc["status"] == "skipped").sum() == 1 and qc["problem"].tolist().count("empty") == 1
    predictions = pd.read_parquet(results / "cohort" / "patient_predictions.parquet")
    assert len(predictions) == 6
    html = (results / "cohort" / "report.html").read_text()
    assert "modality" in html and "smear" in html
    assert not (results / "C01" / "labels.zarr").exists()  # no image stage ran for a collection
    # a rerun has nothing to do
    assert "Nothing to be done" in _snakemake(tmp_path, "-n").stdout + _snakemake(tmp_path, "-n").stderr


def test_mixed_sheet_plans_image_stages_for_slides_and_ingest_for_collections(tmp_path):
    (tmp_path / "crops").mkdir()
    (tmp_path / "slide.ome.tif").write_bytes(b"not read by a dry run")
    sheet = pd.DataFrame([
        {"slide": "S1", "patient": "P1", "condition": "control", "path": "slide.ome.tif", "format": "ome-tiff",
         "channels": "DAPI,CK,VIM,CD45", "source": "slide"},
        {"slide": "K1", "patient": "P2", "condition": "aml", "path": "crops", "source": "collection",
         "modality": "smear"},
    ])
    sheet.to_csv(tmp_path / "samples.tsv", sep="\t", index=False)
    _write_config(tmp_path, {"samples": "samples.tsv", "synthetic": {"enabled": False},
                             "classify": {"label_source": "column"}})
    run = _snakemake(tmp_path, "-n", "--quiet", "rules")
    assert run.returncode == 0, run.stderr[-4000:]
    counts = {}
    for line in run.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    assert counts["ingest_collection"] == 1 and counts["classify_collection"] == 1
    assert counts["extract"] == 1 and counts["classify"] == 1 and counts["embed"] == 1
    assert counts["aggregate_patients"] == 1 and counts["report"] == 1
