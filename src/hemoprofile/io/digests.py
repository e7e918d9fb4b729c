"""Content digests: of a cells table's ids (to pair cells.parquet with patches.zarr) and of model files."""

from __future__ import annotations

import hashlib
import os

import numpy as np


class CellIdsDigest:
    """SHA-256 of a cells table's ``cell_id`` column in row order (as int64), fed part by part.

    The extract stage records it in patches.zarr (``cell_ids_sha256``), so a reader can tell that a
    cells.parquet and a patches.zarr come from the same run: extract renames its outputs one after another,
    and a run killed between the renames would otherwise leave a new table beside old patches.

    Example
    -------
    >>> d = CellIdsDigest(); d.update([3, 7]); d.update([9])
    >>> d.hexdigest() == CellIdsDigest.of([3, 7, 9])
    True
    """

    def __init__(self) -> None:
        self._hash = hashlib.sha256()

    def update(self, cell_ids) -> None:
        self._hash.update(np.ascontiguousarray(np.asarray(cell_ids, dtype=np.int64)).tobytes())

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    @classmethod
    def of(cls, cell_ids) -> str:
        digest = cls()
        digest.update(cell_ids)
        return digest.hexdigest()


def model_id(path: str | os.PathLike) -> str:
    """The id of a model file: the first 12 hex digits of its SHA-256 (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]
