"""Snakemake adapter: extract one slide's cells, patches and clusters (hemoprofile.features.extract.extract_slide)."""
from hemoprofile.features.extract import extract_slide
from hemoprofile.runlog import job_progress

extract_slide(
    snakemake.input.labels,
    snakemake.input.image,
    snakemake.input.preprocessed,
    snakemake.output.cells,
    snakemake.output.patches,
    snakemake.output.clusters,
    snakemake.params.extract,
    snakemake.params.gating,
    slide=snakemake.wildcards.slide,
    progress=job_progress(snakemake.log[0], "hemoprofile"),  # lines read "extract <slide>: ..."
    threads=snakemake.threads,
)
