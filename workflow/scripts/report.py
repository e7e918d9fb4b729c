"""Snakemake adapter: build the self-contained cohort report (hemoprofile.report)."""
import pandas as pd

from hemoprofile.report import ReportInputs, build_report, collect_provenance
from hemoprofile.runlog import job_progress

progress = job_progress(snakemake.log[0], "report")
inputs = snakemake.input
slides = list(snakemake.params.slides)
keys = {"image": "images", "preprocessed": "preprocessed", "labels": "labels", "cells": "cells",
        "predictions": "predictions", "clusters": "clusters", "patches": "patches", "embedding": "embeddings"}
# preprocessed is absent with preprocess.keep false (the report then shows image.zarr)
slide_paths = {slide: {key: inputs[name][i] for key, name in keys.items() if name in inputs.keys()}
               for i, slide in enumerate(slides)}
# single-cell collections: cells and predictions only (no image, segmentation or embedding)
for i, row in enumerate(snakemake.params.get("collections", [])):
    slide_paths[row] = {"cells": inputs.collection_cells[i], "predictions": inputs.collection_predictions[i],
                        "qc": inputs.collection_qc[i]}
result = build_report(
    ReportInputs(
        config=snakemake.params.config,
        samples=pd.DataFrame(snakemake.params.samples),
        slides=slide_paths,
        classifier_metrics=dict(zip(snakemake.params.tasks, inputs.classifier_metrics)),
        embedding_metrics=inputs.get("embedding_metrics"),
        embedding_figures=dict(zip(snakemake.params.figure_keys, inputs.embedding_figures)),
        clusters_by_condition=inputs.get("clusters_by_condition"),
        patients=inputs.patients,
        patient_columns=inputs.patient_columns,
        patient_metrics=inputs.get("patient_metrics"),
        patient_oof=inputs.get("patient_oof"),
        patient_importances=inputs.get("patient_importances"),
        patient_predictions=inputs.patient_predictions,
        benchmarks_dir=snakemake.params.benchmarks,
        provenance=collect_provenance(snakemake.params.repo),
        truth_cells=inputs.get("truth_cells"),
        interaction_metrics=inputs.get("interaction_metrics"),
        interaction_predictions=inputs.get("interaction_predictions"),
        ctc_table=inputs.get("ctc_table"),
        ctc_calibration=inputs.get("ctc_calibration"),
        ctc_calibration_curve=inputs.get("ctc_calibration_curve"),
    ),
    snakemake.output.html,
)
progress(f"wrote {snakemake.output.html} ({result['bytes'] / 1e6:.1f} MB, sections {', '.join(result['sections'])})")
