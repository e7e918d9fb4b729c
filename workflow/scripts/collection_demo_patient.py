"""Snakemake adapter: write one patient of the generated collection cohort
(hemoprofile.ingest.demo_cohort.write_demo_patient)."""
from hemoprofile.ingest.demo_cohort import write_demo_patient
from hemoprofile.runlog import job_progress

progress = job_progress(snakemake.log[0], f"collection_demo {snakemake.wildcards.slide}")
demo = snakemake.params.demo
result = write_demo_patient(demo, snakemake.params.row, snakemake.params.index, demo["source"],
                            snakemake.output.images, snakemake.output.truth)
progress(f"{result['n_cells']} crops from {demo['source']}: {result['counts']}; bad files added: {result['bad_files']}")
