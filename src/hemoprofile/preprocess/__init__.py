"""The preprocess stage: ``image.zarr`` -> ``preprocessed.zarr``, per-channel intensity preprocessing
tile by tile, with output equal to whole-image output.

- :mod:`~hemoprofile.preprocess.settings`: per-channel settings (``default`` deep-merged with
  ``channels.<name>``), each step's switch and the halo a tile needs (``required_halo``).
- :mod:`~hemoprofile.preprocess.statistics`: slide statistics from a seeded sample of tiles
  (percentiles, background noise) and the clip / normalise ranges derived from them.
- :mod:`~hemoprofile.preprocess.clahe`: CLAHE on a block grid anchored to the slide.
- :mod:`~hemoprofile.preprocess.pipeline`: one channel's steps (``preprocess_channel``) and the
  workflow entry point ``preprocess_slide``.
"""
