"""Snakemake adapter: aggregate every slide into one row per patient (hemoprofile.patients.aggregate)."""
import pandas as pd

from hemoprofile.patients.aggregate import aggregate_patients, table_descriptions, write_patient_table
from hemoprofile.patients.interaction_features import add_interaction_features
from hemoprofile.runlog import job_progress

progress = job_progress(snakemake.log[0], "aggregate_patients")
samples = pd.DataFrame(snakemake.params.samples)
# every row has cells and predictions; only slides (not single-cell collections) have an embedding
files = {slide: {"cells": cells, "predictions": predictions}
         for slide, cells, predictions in zip(samples["slide"], snakemake.input.cells, snakemake.input.predictions)}
for slide, embedding in zip(snakemake.params.embedded, snakemake.input.embeddings):
    files[slide]["embedding"] = embedding
# with the ctc task: the CTC candidates, and a reviewer's decisions where a review CSV exists
for slide, candidates in zip(snakemake.params.candidate_slides, snakemake.input.candidates):
    files[slide]["candidates"] = candidates
for slide, review in zip(snakemake.params.review_slides, snakemake.input.reviews):
    files[slide]["review"] = review
table, notes = aggregate_patients(samples, files, cell_type_names=snakemake.params.cell_types, progress=progress)
if snakemake.params.interaction:  # interaction_* columns from the interaction stage
    table = add_interaction_features(table, pd.read_parquet(snakemake.input.interaction_slides),
                                     pd.read_parquet(snakemake.input.interaction_predictions))
write_patient_table(table, table_descriptions(table), snakemake.output.table, snakemake.output.columns)
for note in notes:
    progress(note)
progress(f"wrote {len(table)} patients x {table.shape[1]} columns to {snakemake.output.table}")
