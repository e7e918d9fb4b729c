"""Snakemake adapter: score every patient with the two-stage patient model (hemoprofile.patients.prediction)."""
import pandas as pd

from hemoprofile.io import atomic_output
from hemoprofile.patients.prediction import load_model, predict_two_stage
from hemoprofile.runlog import job_progress

progress = job_progress(snakemake.log[0], "predict_patients")
table = pd.read_parquet(snakemake.input.table)
predictions = predict_two_stage(load_model(snakemake.input.model), table)
with atomic_output(snakemake.output.predictions) as tmp:
    predictions.to_parquet(tmp, index=False)
progress(f"scored {len(predictions)} patients: " + ", ".join(
    f"{state} {n}" for state, n in predictions["predicted_state"].value_counts().sort_index().items()))
