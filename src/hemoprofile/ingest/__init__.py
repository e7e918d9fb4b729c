"""The ingest stage: input data -> the pipeline's own formats.

Modules: :mod:`~hemoprofile.ingest.tile` (a slide, read through :mod:`hemoprofile.io.slide_sources`,
-> ``image.zarr``, one chunk per tile: :func:`~hemoprofile.ingest.tile.tile_slide`) and
:mod:`~hemoprofile.ingest.collection` (a folder of labelled single-cell crops -> ``cells.parquet`` +
``patches.zarr``: :func:`~hemoprofile.ingest.collection.ingest_collection`).

Nothing is re-exported here: import from the module (``collection`` loads scikit-image).
"""
