"""Snakemake adapter: write the generated collection cohort's sample sheet (for reuse outside the demo)."""
import pandas as pd

from hemoprofile.io import atomic_output
from hemoprofile.runlog import job_progress

progress = job_progress(snakemake.log[0], "collection_demo samples")
table = pd.DataFrame(snakemake.params.samples)
with atomic_output(snakemake.output.samples) as tmp:
    table.to_csv(tmp, sep="\t", index=False)
progress(f"wrote {len(table)} rows to {snakemake.output.samples}")
