"""Snakemake adapter: train the two-stage patient ensemble with cross-validated metrics
(hemoprofile.patients.training)."""
import json

import pandas as pd

from hemoprofile.io import atomic_output
from hemoprofile.patients.prediction import save_model
from hemoprofile.patients.settings import resolve_settings
from hemoprofile.patients.table import feature_columns
from hemoprofile.patients.training import train_two_stage
from hemoprofile.runlog import job_progress

progress = job_progress(snakemake.log[0], "train_patient_model")
table = pd.read_parquet(snakemake.input.table)
settings = resolve_settings(snakemake.params.settings)
features = feature_columns(table, snakemake.params.exclude_prefixes)
progress(f"{len(table)} patients, {len(features)} features")
result = train_two_stage(table, features, settings, snakemake.params.seed)
save_model(snakemake.output.model, result.model)
with atomic_output(snakemake.output.metrics) as tmp:
    tmp.write_text(json.dumps(result.metrics, indent=2) + "\n")
for frame, path in ((result.oof, snakemake.output.oof), (result.importances, snakemake.output.importances)):
    with atomic_output(path) as tmp:
        frame.to_parquet(tmp, index=False)
for stage, block in result.metrics["stages"].items():
    scores = ", ".join(f"{name} {m['value']:.3f}" for name, m in block["metrics"].items())
    progress(f"{stage}: {scores}")
