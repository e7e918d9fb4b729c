"""patches.zarr: per-cell image patches (N, C, P, P), row i = row i of cells.parquet.

Values are [0, 1] intensities stored as uint8 (round(v * 255)), uint16 (round(v * 65535)) or float16;
the array's ``hemoprofile`` attributes carry the channel names, patch size, dtype policy, ``n_cells``
and ``cell_ids_sha256`` (the digest of the cells table's ids it was written with). Every stage reads
patches through :func:`open_patch_array` and checks them against their table with
:func:`check_patches_match_cells`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import numpy as np
import pandas as pd
import zarr
from zarr.codecs import BloscCodec, BloscShuffle

from hemoprofile.io.digests import CellIdsDigest

log = logging.getLogger(__name__)

#: Cells per chunk of patches.zarr (a chunk of 32 px uint8 patches of 4 channels is 1 MB raw).
PATCH_CHUNK_CELLS = 256


def to_patch_dtype(unit: np.ndarray, dtype: str) -> np.ndarray:
    """[0, 1] floats -> the stored patch dtype (integers scaled to their full range and rounded)."""
    dt = np.dtype(dtype)
    if np.issubdtype(dt, np.integer):
        return np.rint(np.clip(unit, 0.0, 1.0) * np.float32(np.iinfo(dt).max)).astype(dt)
    return unit.astype(dt)


class PatchWriter:
    """Append patches to an (N, C, P, P) zarr v3 array in whole chunks; memory: one chunk of patches.

    Used by :func:`extract_slide` and :func:`hemoprofile.ingest.collection.ingest_collection`; close it (or use it
    as a context manager) to write the last partial chunk and the final size.
    """

    def __init__(self, path, n_channels: int, patch_size: int, dtype: str, attributes: Mapping,
                 compression_level: int = 5, chunk_cells: int = PATCH_CHUNK_CELLS) -> None:
        self.shape_tail = (int(n_channels), int(patch_size), int(patch_size))
        self.dtype = np.dtype(dtype)
        self.chunk = int(chunk_cells)
        # Channel-wise chunks and the shuffle by dtype, measured on dense synthetic patches (32 px, zstd 5):
        # one channel per chunk is 12% smaller than all four together; for uint8 no shuffle beats
        # bitshuffle by 11% (byte shuffle is a no-op on 1-byte values, bit planes of noisy 8-bit data
        # compress worse), for 16-bit byte shuffle beats bitshuffle by 13%.
        shuffle = BloscShuffle.noshuffle if self.dtype.itemsize == 1 else BloscShuffle.shuffle
        self.array = zarr.create_array(
            str(path), shape=(0, *self.shape_tail), chunks=(self.chunk, 1, *self.shape_tail[1:]),
            dtype=self.dtype, fill_value=0, zarr_format=3,
            compressors=(BloscCodec(cname="zstd", clevel=int(compression_level), shuffle=shuffle),),
            dimension_names=("cell", "c", "y", "x"), attributes={"hemoprofile": dict(attributes)},
        )
        self.buffer = np.zeros((self.chunk, *self.shape_tail), self.dtype)
        self.filled = 0
        self.written = 0

    def append(self, patches: np.ndarray) -> None:
        """Append (n, C, P, P) patches (their dtype must be the array's)."""
        patches = np.asarray(patches)
        if patches.shape[1:] != self.shape_tail:
            raise ValueError(f"patches of shape {patches.shape[1:]} do not fit {self.shape_tail}")
        start = 0
        while start < len(patches):
            take = min(self.chunk - self.filled, len(patches) - start)
            self.buffer[self.filled : self.filled + take] = patches[start : start + take]
            self.filled += take
            start += take
            if self.filled == self.chunk:
                self._flush()

    def _flush(self) -> None:
        if not self.filled:
            return
        end = self.written + self.filled
        self.array.resize((end, *self.shape_tail))
        self.array[self.written : end] = self.buffer[: self.filled]
        self.written = end
        self.filled = 0

    def close(self, **extra_attributes) -> int:
        """Write what is buffered, record ``n_cells`` (and ``extra_attributes``); return the number of patches."""
        self._flush()
        attrs = dict(self.array.attrs.get("hemoprofile", {}))
        attrs.update(extra_attributes, n_cells=self.written)
        self.array.attrs["hemoprofile"] = attrs
        return self.written

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self.close()


def patch_attributes(channel_names, patch_size, dtype, **more) -> dict:
    """The ``hemoprofile`` attributes of a patches.zarr array (see the module docstring)."""
    return {
        "channel_names": [str(c) for c in channel_names],
        "patch_size": int(patch_size),
        "dtype": str(np.dtype(dtype)),
        "dtype_policy": ("values are [0, 1] intensities; uint8 = round(v * 255), uint16 = round(v * 65535), "
                         "float16 = v"),
        "row_order": "row i is row i of cells.parquet",
        **more,
    }


def check_patches_match_cells(cells_path, cells: pd.DataFrame, patches_path, array, attributes: dict) -> None:
    """Raise ``ValueError`` naming both files unless patch row i is cells row i's patch.

    Checks the row counts and, when patches.zarr records ``cell_ids_sha256`` (the extract stage writes
    it) and the table has ``cell_id``, that the table's ids in row order hash to it: a cells.parquet and
    a patches.zarr from different runs (a run killed between extract's renames) are refused.
    """
    if len(cells) != array.shape[0]:
        raise ValueError(f"{cells_path} has {len(cells)} rows but {patches_path} has {array.shape[0]} patches")
    recorded = (attributes or {}).get("cell_ids_sha256")
    if recorded and "cell_id" in cells and CellIdsDigest.of(cells["cell_id"].to_numpy()) != recorded:
        raise ValueError(f"{patches_path} was not written with {cells_path}: their cell ids differ (outputs of "
                         f"two different extract runs?); rerun the extract stage of this slide")


def check_slide_patches(item, cells: pd.DataFrame, array, attributes, names, channels, size):
    """Check one slide's patches against its cells table (:func:`check_patches_match_cells`) and against
    the first slide's patches.

    Returns the cohort's ``(channels, patch size)``: taken from this slide when ``channels`` is None (the
    first slide), else the ones given. Raises ``ValueError`` naming the files when the patches do not
    belong to the table or the channels / patch size differ from the first slide's.
    """
    check_patches_match_cells(item.cells, cells, item.patches, array, attributes)
    if channels is None:
        return names, int(array.shape[-1])
    if names != channels or int(array.shape[-1]) != size:
        raise ValueError(f"{item.patches}: channels {names} / patch size {array.shape[-1]} differ from the first "
                         f"slide's {channels} / {size}")
    return channels, size


def open_patch_array(path: str | os.PathLike):
    """Open a patches.zarr (N, C, P, P) read-only; return ``(array, channel_names, attributes)``.

    Accepts the array at the folder's root (as :mod:`hemoprofile.features.extract` writes it) or a group holding
    one 4-D array; attributes are read from the array, else the group (``hemoprofile`` key or top level).

    Raises
    ------
    ValueError naming the path when it is not readable or holds no (N, C, P, P) array.
    """
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as err:  # zarr raises several types for a missing or broken store
        raise ValueError(f"{path}: not a readable zarr store ({err})") from err
    group_attrs = {}
    if isinstance(node, zarr.Group):
        group_attrs = dict(node.attrs)
        arrays = [a for _, a in node.arrays() if a.ndim == 4]
        if len(arrays) != 1:
            raise ValueError(f"{path}: expected one (N, C, P, P) array in the zarr group, found {len(arrays)}")
        node = arrays[0]
    if node.ndim != 4 or node.shape[-1] != node.shape[-2]:
        raise ValueError(f"{path}: patches must be (N, C, P, P) with square patches, got shape {node.shape}")
    attrs = dict(node.attrs)
    meta = dict(attrs.get("hemoprofile") or group_attrs.get("hemoprofile") or {**group_attrs, **attrs})
    names = meta.get("channel_names") or meta.get("channels")
    if not names:
        names = [f"channel_{i}" for i in range(node.shape[1])]
        log.warning("%s: no channel names in the attributes; using %s", path, names)
    if len(names) != node.shape[1]:
        raise ValueError(f"{path}: {len(names)} channel names for {node.shape[1]} channels")
    return node, [str(n) for n in names], meta


def read_patch_rows(array, rows: np.ndarray | None = None, block: int = 4096) -> np.ndarray:
    """Read the given rows (ascending indices; ``None``: all) of a patches array, in blocks of rows."""
    if rows is None:
        return np.asarray(array[:])
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) == 0:
        return np.zeros((0, *array.shape[1:]), dtype=array.dtype)
    if np.any(np.diff(rows) < 0):
        raise ValueError("rows must be ascending")
    out = np.empty((len(rows), *array.shape[1:]), dtype=array.dtype)
    # read contiguous spans and pick rows from them: far fewer chunk decodes than per-row reads
    start = 0
    while start < len(rows):
        lo = rows[start]
        stop = int(np.searchsorted(rows, lo + block, side="left"))
        span = np.asarray(array[lo:rows[stop - 1] + 1])
        out[start:stop] = span[rows[start:stop] - lo]
        start = stop
    return out
