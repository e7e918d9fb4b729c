"""Snakemake adapter: preprocess one slide (hemoprofile.preprocess.pipeline.preprocess_slide)."""
from hemoprofile.preprocess.pipeline import preprocess_slide
from hemoprofile.runlog import job_progress

preprocess_slide(
    snakemake.input.image,
    snakemake.output.image,
    snakemake.params.preprocess,
    seed=snakemake.params.seed,
    progress=job_progress(snakemake.log[0], f"preprocess {snakemake.wildcards.slide}"),
    threads=snakemake.threads,
)
