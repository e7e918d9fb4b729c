"""Snakemake adapter: train one cell classifier task (hemoprofile.classify.training.train_classifier)."""
import logging

from hemoprofile.classify.labels import SlideInput
from hemoprofile.classify.training import train_classifier
from hemoprofile.runlog import job_progress

progress = job_progress(snakemake.log[0], f"train_classifier {snakemake.wildcards.task}")
logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="[%(asctime)s] %(name)s: %(message)s")
truth_labels = list(snakemake.input.get("truth_labels", [])) or [None] * len(snakemake.params.slides)
items = [
    SlideInput(slide, cells, patches, group=snakemake.params.groups.get(slide), truth_labels=truth)
    for slide, cells, patches, truth in zip(
        snakemake.params.slides, snakemake.input.cells, snakemake.input.patches, truth_labels
    )
]
classify_cfg = dict(snakemake.params.classify)
if "labels_table" in snakemake.input.keys():
    classify_cfg["labels_table"] = snakemake.input.labels_table
train_classifier(
    items,
    snakemake.wildcards.task,
    snakemake.output.model,
    snakemake.output.metrics,
    classify_cfg,
    seed=snakemake.params.seed,
    truth_cells=snakemake.input.get("truth_cells"),
    threads=snakemake.threads,
    progress=progress,
)
