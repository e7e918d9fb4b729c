"""The segment stage: ``preprocessed.zarr`` -> ``labels.zarr``, cell segmentation tile by tile with a halo,
stitched to slide-wide unique ids; and the training of the project's own Cellpose model.

- :mod:`~hemoprofile.segment.settings`: the ``segment`` section completed from the schema's defaults.
- :mod:`~hemoprofile.segment.input`: channel selection, slide-wide intensity calibration and the
  2-channel network input (:func:`~hemoprofile.segment.input.cellpose_input`): the one input
  preparation of inference, training and the benchmark.
- :mod:`~hemoprofile.segment.classical`: the classical backend (threshold + watershed).
- :mod:`~hemoprofile.segment.cellpose_model`: Cellpose model files (network, loading, fp16 + sidecar)
  and the torch device.
- :mod:`~hemoprofile.segment.segmenter`: the backends behind one interface (``build_segmenter``) and
  whole-image segmentation (``segment_image``).
- :mod:`~hemoprofile.segment.diameter`: object sizes, diameter estimates and segmenting at an estimate.
- :mod:`~hemoprofile.segment.tiled`: tiled segmentation and stitching; ``segment_slide`` (the workflow's
  entry point).
- :mod:`~hemoprofile.segment.shards`: one slide's segmentation split into shard jobs over tile ranges,
  resumable block by block, and the stitch job (``segment.shards``; design notes in the module).
- :mod:`~hemoprofile.segment.metrics`: instance segmentation scores (IoU matching, AP).
- :mod:`~hemoprofile.segment.annotation`: the tiles of a segmented slide where the segmenter is least
  sure, exported for correction in the Cellpose GUI (``hemoprofile export-for-annotation``).
- :mod:`~hemoprofile.segment.training`: training and scoring the Cellpose model, and fine-tuning it on
  a lab's own annotated folders (imports torch/cellpose when run).

torch and cellpose load only when a Cellpose model is built, so importing the stage is light.
"""

from hemoprofile.segment.segmenter import build_segmenter, segment_image
from hemoprofile.segment.settings import segment_settings
from hemoprofile.segment.tiled import segment_slide, segment_tiled

__all__ = ["build_segmenter", "segment_image", "segment_settings", "segment_slide", "segment_tiled"]
