"""Snakemake adapter: the cohort CTC table (hemoprofile.patients.ctc_table.ctc_cohort_table)."""
import pandas as pd

from hemoprofile.patients.ctc_table import ctc_cohort_table, write_ctc_table
from hemoprofile.runlog import job_progress

progress = job_progress(snakemake.log[0], "ctc_table")
samples = pd.DataFrame(snakemake.params.samples)
files = {s: {"cells": c, "candidates": k}
         for s, c, k in zip(samples["slide"], snakemake.input.cells, snakemake.input.candidates)}
for slide, review in zip(snakemake.params.review_slides, snakemake.input.reviews):
    files[slide]["review"] = review
table = ctc_cohort_table(samples, files)
write_ctc_table(table, snakemake.output.table)
progress(f"{len(snakemake.params.review_slides)} reviewed slide(s); wrote {snakemake.output.table}")
