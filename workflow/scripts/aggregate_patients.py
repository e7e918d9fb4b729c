"""Snakemake adapter: aggregate every slide into one row per patient (hemoprofile.patients.aggregate)."""
import pandas as pd

from hemoprofile.patients.aggregate import (
    aggregate_patients,
    column_descriptions,
    write_patient_table,
)
from hemoprofile.runlog import job_progress

progress = job_progress(snakemake.log[0], "aggregate_patients")
samples = pd.DataFrame(snakemake.params.samples)
files = {
    slide: {"cells": cells, "predictions": predictions, "embedding": embedding}
    for slide, cells, predictions, embedding in zip(
        samples["slide"], snakemake.input.cells, snakemake.input.predictions, snakemake.input.embeddings
    )
}
table, notes = aggregate_patients(samples, files, cell_type_names=snakemake.params.cell_types, progress=progress)
latent = sum(c.startswith("frac_latent_") for c in table.columns)
write_patient_table(table, column_descriptions(snakemake.params.cell_types, latent), snakemake.output.table,
                    snakemake.output.columns)
for note in notes:
    progress(note)
progress(f"wrote {len(table)} patients x {table.shape[1]} columns to {snakemake.output.table}")
