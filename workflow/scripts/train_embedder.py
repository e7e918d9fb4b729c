"""Snakemake adapter: train the cohort's (conditional) VAE, 2-D map and clustering
(hemoprofile.embed.training.train_embedder)."""
import logging

from hemoprofile.embed.sample import EmbedSlide
from hemoprofile.embed.training import train_embedder
from hemoprofile.runlog import job_progress

progress = job_progress(snakemake.log[0], "train_embedder")
logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="[%(asctime)s] %(name)s: %(message)s")
truth_labels = list(snakemake.input.get("truth_labels", [])) or [None] * len(snakemake.params.slides)
items = [
    EmbedSlide(slide, cells, patches, truth_labels=truth, **snakemake.params.sheet[slide])
    for slide, cells, patches, truth in zip(
        snakemake.params.slides, snakemake.input.cells, snakemake.input.patches, truth_labels
    )
]
train_embedder(
    items,
    snakemake.output.model,
    snakemake.output.metrics,
    snakemake.params.embed,
    seed=snakemake.params.seed,
    truth_cells=snakemake.input.get("truth_cells"),
    threads=snakemake.threads,
    progress=progress,
)
