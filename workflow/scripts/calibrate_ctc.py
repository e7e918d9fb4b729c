"""Snakemake adapter: CTC calibration and candidate threshold on held-out patients
(hemoprofile.classify.calibration.calibrate_ctc)."""
from hemoprofile.classify.calibration import calibrate_ctc
from hemoprofile.runlog import job_progress

progress = job_progress(snakemake.log[0], "calibrate_ctc")
slides = snakemake.params.slides
truth_labels = list(snakemake.input.get("truth_labels", [])) or [None] * len(slides)
items = [{"slide": s, "patient": snakemake.params.patients[s], "cells": c, "predictions": p, "truth_labels": t}
         for s, c, p, t in zip(slides, snakemake.input.cells, snakemake.input.predictions, truth_labels)]
calibrate_ctc(items, snakemake.input.metrics, snakemake.output.calibration, snakemake.output.curve,
              max_false_per_million=snakemake.params.max_false_per_million, method=snakemake.params.method,
              bins=snakemake.params.bins, label_source=snakemake.params.label_source,
              label_column=snakemake.params.label_column, truth_cells=snakemake.input.get("truth_cells"),
              labels_table=snakemake.input.get("labels_table"), progress=progress)
