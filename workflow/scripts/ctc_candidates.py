"""Snakemake adapter: one slide's CTC candidates (hemoprofile.classify.candidates.slide_candidates)."""
from hemoprofile.classify.candidates import slide_candidates
from hemoprofile.runlog import job_progress

progress = job_progress(snakemake.log[0], f"ctc_candidates {snakemake.wildcards.slide}")
table = slide_candidates(snakemake.wildcards.slide, snakemake.input.cells, snakemake.input.predictions,
                         snakemake.output.candidates, threshold=snakemake.params.threshold,
                         calibration_path=snakemake.input.get("calibration"), clusters_path=snakemake.input.clusters,
                         gate_column=snakemake.params.gate_column)
progress(f"{len(table)} candidates ({int(table['gate_ctc'].sum())} also gate CTC) -> {snakemake.output.candidates}")
