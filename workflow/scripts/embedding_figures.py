"""Snakemake adapter: the cohort's latent maps, reconstructions and clustering metrics
(hemoprofile.embed.maps.cohort_figures)."""
import logging

from hemoprofile.embed.maps import FIGURE_KEYS, cohort_figures
from hemoprofile.embed.sample import EmbedSlide
from hemoprofile.runlog import job_progress

progress = job_progress(snakemake.log[0], "embedding_figures")
logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="[%(asctime)s] %(name)s: %(message)s")
slides = snakemake.params.slides
truth_labels = list(snakemake.input.get("truth_labels", [])) or [None] * len(slides)
items = [
    EmbedSlide(slide, cells, patches, truth_labels=truth, **snakemake.params.sheet[slide])
    for slide, cells, patches, truth in zip(slides, snakemake.input.cells, snakemake.input.patches, truth_labels)
]
outputs = {key: snakemake.output[key] for key in (*FIGURE_KEYS, "metrics") if key in snakemake.output.keys()}
cohort_figures(
    snakemake.input.model,
    list(snakemake.input.embeddings),
    items,
    outputs,
    truth_cells=snakemake.input.get("truth_cells"),
    prediction_paths=list(snakemake.input.predictions) or None,
    embed_cfg=snakemake.params.embed,
    seed=snakemake.params.seed,
    progress=progress,
)
