"""Snakemake adapter: stitch a slide's segmentation shards into labels.zarr (hemoprofile.segment.shards)."""
from hemoprofile.runlog import job_progress
from hemoprofile.segment.shards import stitch_shards

progress = job_progress(snakemake.log[0], f"segment stitch {snakemake.wildcards.slide}")
stitch_shards(
    snakemake.input.image,
    snakemake.output.labels,
    snakemake.input.shards,
    snakemake.params.segment,
    seed=snakemake.params.seed,
    progress=progress,
    pyramid_smallest=snakemake.params.pyramid["smallest"] if snakemake.params.pyramid["enabled"] else None,
)
