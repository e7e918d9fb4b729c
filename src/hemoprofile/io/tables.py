"""Parquet tables: cells.parquet's schema and the readers every stage uses (errors name the file)."""

from __future__ import annotations

import os
from collections.abc import Sequence

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
