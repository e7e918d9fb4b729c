"""Snakemake adapter: embed one slide's cells (hemoprofile.embed.slide.embed_slide)."""
import logging

from hemoprofile.embed.sample import EmbedSlide
from hemoprofile.embed.slide import embed_slide
from hemoprofile.runlog import job_progress

slide = snakemake.wildcards.slide
progress = job_progress(snakemake.log[0], f"embed {slide}")
logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="[%(asctime)s] %(name)s: %(message)s")
item = EmbedSlide(slide, snakemake.input.cells, snakemake.input.patches, **snakemake.params.sheet)
embed_slide(
    snakemake.input.model,
    snakemake.input.patches,
    snakemake.input.cells,
    snakemake.output.embedding,
    slide=slide,
    category=item.category(snakemake.params.condition_on),
    device=snakemake.params.device,
    mixed_precision=snakemake.params.mixed_precision,
    batch_size=snakemake.params.batch_size,
    threads=snakemake.threads,
    progress=progress,
)
