"""Snakemake adapter: predict every crop of one collection with its modality's classifier
(hemoprofile.classify.inference.classify_slide)."""
import logging

from hemoprofile.classify.inference import classify_slide
from hemoprofile.runlog import job_progress

progress = job_progress(snakemake.log[0], f"classify {snakemake.wildcards.slide}")
logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="[%(asctime)s] %(name)s: %(message)s")
classify_slide(
    snakemake.input.patches,
    snakemake.input.cells,
    [snakemake.input.model],
    snakemake.output.predictions,
    device=snakemake.params.device,
    mixed_precision=snakemake.params.mixed_precision,
    batch_size=snakemake.params.batch_size,
    tta=snakemake.params.tta,
    threads=snakemake.threads,
    progress=progress,
)
