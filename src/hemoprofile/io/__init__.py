"""File formats and dtype policy: every stage reads and writes through this layer, and deals in arrays
and tables otherwise.

Modules: :mod:`~hemoprofile.io.ome_zarr` (OME-Zarr images and label images),
:mod:`~hemoprofile.io.pyramid` (their multiscale levels), :mod:`~hemoprofile.io.slide_view` (view.zarr: image +
labels linked as one OME-Zarr for viewers), :mod:`~hemoprofile.io.tiles`
(the tile grid), :mod:`~hemoprofile.io.atomic` (atomic writes), :mod:`~hemoprofile.io.frames` (HDSCA frame
file names), :mod:`~hemoprofile.io.slide_sources` (reading TIFF / OME-TIFF slides and frame folders),
:mod:`~hemoprofile.io.tables` (parquet tables), :mod:`~hemoprofile.io.patches` (patches.zarr),
:mod:`~hemoprofile.io.images` (single images: crops, microscope images), :mod:`~hemoprofile.io.truth`
(synthetic ground truth), :mod:`~hemoprofile.io.digests` (ids of tables and model files),
:mod:`~hemoprofile.io.blocks` (blocks computed on several threads, results in block order).

The names most stages need are importable from here; the rest from their module.
"""

from hemoprofile.io.atomic import atomic_output
from hemoprofile.io.blocks import ordered_map, resolve_threads
from hemoprofile.io.digests import CellIdsDigest, model_id
from hemoprofile.io.frames import FRAME_ORDERS, frame_filename, frame_grid_position
from hemoprofile.io.ome_zarr import (
    NGFF_VERSION,
    OmeZarrImage,
    create_ome_zarr_image,
    create_ome_zarr_labels,
    open_ome_zarr,
)
from hemoprofile.io.tiles import Tile, halo_window, iter_tiles

__all__ = [
    "FRAME_ORDERS", "NGFF_VERSION", "CellIdsDigest", "OmeZarrImage", "Tile", "atomic_output",
    "create_ome_zarr_image", "create_ome_zarr_labels", "frame_filename", "frame_grid_position",
    "halo_window", "iter_tiles", "model_id", "open_ome_zarr", "ordered_map", "resolve_threads",
]
