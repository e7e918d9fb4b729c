"""Snakemake adapter: write the synthetic cohort's sample sheet and its whole ground-truth cell table."""
import pandas as pd

from hemoprofile.io import atomic_output
from hemoprofile.runlog import job_progress
from hemoprofile.simulate import write_cohort_truth

progress = job_progress(snakemake.log[0], "synthetic cohort")
write_cohort_truth(list(snakemake.input.truth_cells), snakemake.output.truth_cells)
with atomic_output(snakemake.output.samples) as tmp:
    pd.DataFrame(snakemake.params.samples).to_csv(tmp, sep="\t", index=False)
progress(f"wrote {snakemake.output.truth_cells} and {snakemake.output.samples}")
