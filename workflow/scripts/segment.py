"""Snakemake adapter: segment one slide (hemoprofile.segment.tiled.segment_slide)."""
import logging

from hemoprofile.runlog import job_progress
from hemoprofile.segment.tiled import segment_slide

progress = job_progress(snakemake.log[0], f"segment {snakemake.wildcards.slide}")
# The package logs the device and model choice; send those lines to the job's log too.
logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="[%(asctime)s] %(name)s: %(message)s")
if snakemake.params.segment["backend"] == "cellpose":
    import torch

    torch.set_num_threads(snakemake.threads)
segment_slide(
    snakemake.input.image,
    snakemake.output.labels,
    snakemake.params.segment,
    seed=snakemake.params.seed,
    progress=progress,
    pyramid_smallest=snakemake.params.pyramid["smallest"] if snakemake.params.pyramid["enabled"] else None,
    threads=snakemake.threads,
)
