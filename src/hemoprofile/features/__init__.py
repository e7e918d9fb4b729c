"""The features (extract) stage: labels.zarr + image.zarr + preprocessed.zarr -> cells.parquet,
patches.zarr and clusters.parquet, streamed tile by tile.

- :mod:`~hemoprofile.features.extract`: the entry point ``extract_slide`` and the output contracts.
- :mod:`~hemoprofile.features.settings`: the ``extract`` section with the schema's defaults, checked.
- :mod:`~hemoprofile.features.windows`: halo windows, a chunk-caching reader, the cells a tile owns.
- :mod:`~hemoprofile.features.measure`: per-cell measures of a window and the nucleus threshold.
- :mod:`~hemoprofile.features.morphology`: perimeters and convex-hull areas of many cells at once.
- :mod:`~hemoprofile.features.patches`: per-cell patches with neighbour / background masks.
- :mod:`~hemoprofile.features.cell_clusters`: touching-cell clusters (not the embed stage's latent
  clusters).
- :mod:`~hemoprofile.features.gating`: marker gates with slide-relative thresholds.
"""
