"""Snakemake adapter: cell-cell interaction windows and regressors (hemoprofile.interaction.cohort)."""
import logging
import os

import torch

from hemoprofile.embed.slide import patch_encoder
from hemoprofile.interaction.cohort import run_interaction
from hemoprofile.runlog import job_progress

progress = job_progress(snakemake.log[0], "interaction")
logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="[%(asctime)s] %(name)s: %(message)s")
torch.set_num_threads(snakemake.threads)
inputs = snakemake.input
keys = ["preprocessed", "labels", "cells", "clusters", "predictions", "embedding"]
if "truth_labels" in inputs.keys():
    keys.append("truth_labels")
slides = {slide: {key: inputs[key][i] for key in keys} for i, slide in enumerate(snakemake.params.slides)}
run_interaction(
    slides,
    snakemake.params.patients,
    os.path.dirname(snakemake.output.metrics),
    encoder=patch_encoder(inputs.embedder),  # the VAE, handed over: stages do not import each other
    truth_cells=inputs.get("truth_cells"),
    categories=snakemake.params.categories,
    settings=snakemake.params.settings,
    halo_px=snakemake.params.halo_px,
    seed=snakemake.params.seed,
    progress=progress,
)
