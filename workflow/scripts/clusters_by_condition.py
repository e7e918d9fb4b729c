"""Snakemake adapter: the cohort's latent clusters by condition (hemoprofile.embed.conditions.clusters_by_condition)."""
import logging

from hemoprofile.embed.conditions import clusters_by_condition
from hemoprofile.embed.sample import EmbedSlide
from hemoprofile.runlog import job_progress

progress = job_progress(snakemake.log[0], "clusters_by_condition")
logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="[%(asctime)s] %(name)s: %(message)s")
slides = snakemake.params.slides
items = [EmbedSlide(slide, "", "", **snakemake.params.sheet[slide]) for slide in slides]
clusters_by_condition(
    list(snakemake.input.embeddings),
    items,
    snakemake.output.table,
    settings=snakemake.params.settings,
    progress=progress,
)
