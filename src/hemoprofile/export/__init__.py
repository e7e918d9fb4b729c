"""Export stage: the workflow's per-cell outputs as files other tools open.

:func:`~hemoprofile.export.h5ad.write_cells_h5ad` writes slides' cells.parquet (+ the classify stage's
predictions.parquet and the embed stage's embedding.parquet) as an AnnData ``.h5ad`` for scanpy /
squidpy, streamed chunk by chunk so memory stays flat in the number of cells.
"""

from hemoprofile.export.h5ad import config_digest, write_cells_h5ad
from hemoprofile.export.sources import SlideInputs, plan_slide

__all__ = ["SlideInputs", "config_digest", "plan_slide", "write_cells_h5ad"]
