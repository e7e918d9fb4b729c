"""Snakemake adapter: write slides' cells as one AnnData file (hemoprofile.export.write_cells_h5ad)."""
from hemoprofile.export import SlideInputs, config_digest, write_cells_h5ad
from hemoprofile.runlog import job_progress

params = snakemake.params
name = params.slides[0] if len(params.slides) == 1 and snakemake.rule == "export_slide_h5ad" else "cohort"
progress = job_progress(snakemake.log[0], f"export_h5ad {name}")
slides = [
    SlideInputs(slide, cells, predictions, embedding, params.sheet[slide])
    for slide, cells, predictions, embedding in zip(
        params.slides, snakemake.input.cells, snakemake.input.predictions, snakemake.input.embedding, strict=True
    )
]
summary = write_cells_h5ad(
    slides,
    snakemake.output.h5ad,
    chunk_rows=params.chunk_rows,
    compression=params.compression,
    provenance={"config_sha256": config_digest(snakemake.config)},
    progress=progress,
)
progress(f"wrote {snakemake.output.h5ad}: {summary['n_obs']} cells x {summary['n_vars']} features, obsm {summary['obsm']}")
