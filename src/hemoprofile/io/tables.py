"""Parquet tables: cells.parquet's schema and the readers every stage uses (errors name the file)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


def cells_schema(channel_names: Sequence[str], gate_column: str | None = None) -> pa.Schema:
    """Return the arrow schema of cells.parquet for these channels (see the module docstring)."""
    fields = [
        ("slide", pa.string()), ("cell_id", pa.int64()), ("tile", pa.int32()),
        ("y", pa.float64()), ("x", pa.float64()), ("y_um", pa.float64()), ("x_um", pa.float64()),
        ("bbox_y0", pa.int32()), ("bbox_x0", pa.int32()), ("bbox_y1", pa.int32()), ("bbox_x1", pa.int32()),
        ("area", pa.int32()), ("area_um2", pa.float32()), ("perimeter", pa.float32()),
        ("eccentricity", pa.float32()), ("solidity", pa.float32()),
        ("nucleus_area", pa.int32()), ("nucleus_ratio", pa.float32()), ("orientation_deg", pa.float32()),
    ]
    for c in channel_names:
        fields += [(f"mean_{c}", pa.float32()), (f"max_{c}", pa.float32()), (f"integrated_{c}", pa.float64())]
    fields += [(f"texture_{c}", pa.float32()) for c in channel_names]
    fields += [("at_border", pa.bool_()), ("cluster_id", pa.int64())]
    if gate_column:
        fields.append((gate_column, pa.string()))
    return pa.schema(fields)


def read_cells(path: str | os.PathLike, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Read cells.parquet (only ``columns`` when given) with an error naming the file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"cells table not found: {path}")
    try:
        available = pq.read_schema(path).names
        if columns is not None:
            missing = [c for c in columns if c not in available]
            if missing:
                raise ValueError(f"{path}: missing column(s) {missing}; has {available}")
        return pd.read_parquet(path, columns=list(columns) if columns is not None else None)
    except (OSError, ValueError) as err:
        if isinstance(err, ValueError) and str(path) in str(err):
            raise
        raise ValueError(f"{path}: not a readable parquet table ({err})") from err


def open_parquet_stream(path: str | os.PathLike, what: str = "parquet table", **options) -> pq.ParquetFile:
    """Open a parquet file to be read row group by row group (``iter_batches``), with memory bounded by a
    batch whatever the file's size; errors name the file.

    pyarrow's ``pre_buffer`` (on by default) makes ``iter_batches`` keep the buffers of every row group
    read so far: streaming all 45 columns of a 3 M-row cells table grew the process by 772 MiB, against
    87 MiB with ``pre_buffer=False`` (bench/parquet_stream_memory.py; it was the extract stage's peak at
    full slide size, issue 16). Every streamed read goes through here so it stays off.

    ``options`` go to :class:`pyarrow.parquet.ParquetFile` (e.g. ``read_dictionary``).
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return pq.ParquetFile(path, pre_buffer=False, **options)
    except Exception as err:  # pyarrow raises several types for a broken file
        raise ValueError(f"{path}: not a readable {what} ({err})") from err


@dataclass
class CellKeys:
    """The key columns of a cells table, compact: ``cell_ids`` (int64, row order) and each row's slide
    as a code into ``slide_names`` (``slide_codes``, int32; all 0 for a table without a ``slide``
    column, whose one name is then ``default_slide``).

    What the per-row stages (classify, embed) need of a slide's table: 12 bytes per row. Reading the same
    two columns as a DataFrame (the slide a Python string per row) grew the process by 173 MiB at 3 M rows,
    this by 62 MiB (bench/parquet_stream_memory.py).
    """

    cell_ids: np.ndarray
    slide_codes: np.ndarray
    slide_names: list[str]

    def __len__(self) -> int:
        return len(self.cell_ids)

    def slides(self, start: int, stop: int) -> list[str]:
        """The slide name of rows ``start:stop``."""
        names = np.asarray(self.slide_names, dtype=object)
        return names[self.slide_codes[start:stop]].tolist()

    def frame(self) -> pd.DataFrame:
        """A one-column DataFrame view (``cell_id``) for checks that take a table."""
        return pd.DataFrame({"cell_id": self.cell_ids}, copy=False)


def read_cell_keys(path: str | os.PathLike, default_slide: str | None = None, batch_rows: int = 65536) -> CellKeys:
    """Read ``cell_id`` and ``slide`` of a cells table row group by row group into compact arrays
    (:class:`CellKeys`), never holding the columns as Python objects.

    Raises ``FileNotFoundError`` / ``ValueError`` naming the file when it is missing, unreadable or has no
    ``cell_id`` column; a table without ``slide`` gets ``default_slide`` (its folder's name when None).
    """
    names = open_parquet_stream(path, "cells table").schema_arrow.names
    source = open_parquet_stream(path, "cells table", read_dictionary=["slide"] if "slide" in names else None)
    if "cell_id" not in names:
        raise ValueError(f"{path}: missing column(s) ['cell_id']; has {names}")
    with_slide = "slide" in names
    n = source.metadata.num_rows
    cell_ids = np.empty(n, np.int64)
    codes = np.zeros(n, np.int32)
    slide_names: list[str] = [] if with_slide else [
        default_slide or os.path.basename(os.path.dirname(os.path.abspath(path)))]
    index: dict[str, int] = {}
    at = 0
    for batch in source.iter_batches(columns=["cell_id", "slide"] if with_slide else ["cell_id"],
                                     batch_size=batch_rows):
        rows = batch.num_rows
        cell_ids[at:at + rows] = batch.column(0).to_numpy(zero_copy_only=False)
        if with_slide:
            slides = batch.column(1)
            if slides.null_count:
                raise ValueError(f"{path}: the slide column has {slides.null_count} empty value(s)")
            local = np.array([index.setdefault(str(s), len(index)) for s in slides.dictionary.to_pylist()],
                             np.int32)
            codes[at:at + rows] = local[slides.indices.to_numpy(zero_copy_only=False)]
        at += rows
    if with_slide:
        slide_names = list(index)
    return CellKeys(cell_ids, codes, slide_names)


def read_table(path: str | os.PathLike | None, columns: Sequence[str] | None = None) -> pd.DataFrame | None:
    """Read a parquet table, only those of ``columns`` that it has (all when None); ``None`` for no path.

    Raises ``ValueError`` naming the file when it is not a readable parquet file.
    """
    if not path:
        return None
    try:
        schema = pq.read_schema(path)
    except Exception as err:  # pyarrow raises several types for a missing or broken file
        raise ValueError(f"{path}: not a readable parquet file ({err})") from err
    wanted = None if columns is None else [c for c in columns if c in schema.names]
    return pq.read_table(path, columns=wanted).to_pandas()


def read_label_table(path: str | os.PathLike, label_column: str = "label") -> pd.DataFrame:
    """Read a labels table (CSV, TSV or parquet) with columns slide, cell_id and ``label_column``."""
    path = str(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"labels table not found: {path}")
    if path.endswith(".parquet"):
        table = pd.read_parquet(path)
    else:
        table = pd.read_csv(path, sep="\t" if path.endswith((".tsv", ".txt")) else ",")
    missing = [c for c in ("slide", "cell_id", label_column) if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: labels table lacks column(s) {missing}; has {list(table.columns)}")
    return table
