"""Snakemake adapter: link a slide's image and labels as one OME-Zarr for viewers (hemoprofile.io.slide_view)."""
from hemoprofile.io.slide_view import write_slide_view
from hemoprofile.runlog import job_progress

progress = job_progress(snakemake.log[0], f"view {snakemake.wildcards.slide}")
levels = write_slide_view(snakemake.input.image, snakemake.input.labels, snakemake.output.view)
progress(f"wrote {snakemake.output.view}: image levels {levels['image_levels']}, labels levels {levels['labels_levels']}")
