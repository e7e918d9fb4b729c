"""Snakemake adapter: tile one slide into OME-Zarr (hemoprofile.ingest.tile.tile_slide)."""
from hemoprofile.runlog import job_progress
from hemoprofile.io.slide_sources import open_slide_source
from hemoprofile.ingest.tile import tile_slide

reader = snakemake.params.reader
progress = job_progress(snakemake.log[0], f"tile {snakemake.wildcards.slide}")
with open_slide_source(
    snakemake.input.slide,
    reader["format"],
    reader["channels"],
    pixel_size_um=reader["pixel_size_um"],
    frame_rows=reader["frame_rows"],
    frame_cols=reader["frame_cols"],
    frame_pattern=reader["frame_pattern"] or "Tile{index:06d}.tif",
    frame_order=reader["frame_order"] or "row-major",
) as source:
    tile_slide(
        source,
        snakemake.output.image,
        tile_size=snakemake.params.tile["size"],
        compression_level=snakemake.params.tile["compression_level"],
        progress=progress,
        pyramid_smallest=snakemake.params.pyramid["smallest"] if snakemake.params.pyramid["enabled"] else None,
        threads=snakemake.threads,
    )
