"""Byte-for-byte comparison of two runs of a stage (1 thread and N threads): zarr stores file by file
(chunks bytewise, metadata as JSON less run times) and parquet files (table, schema metadata, bytes)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

#: Keys that record how long a run took, the only thing allowed to differ between two runs.
VOLATILE_KEYS = {"seconds", "pyramid_seconds"}  # run times recorded in the provenance


def _without_volatile(value):
    if isinstance(value, dict):
        return {k: _without_volatile(v) for k, v in value.items() if k not in VOLATILE_KEYS}
    if isinstance(value, list):
        return [_without_volatile(v) for v in value]
    return value


def assert_zarr_stores_identical(a: str | Path, b: str | Path) -> int:
    """Every file of store ``a`` is in ``b`` and equal: chunk files bytewise, ``zarr.json`` as JSON without
    run times. Returns the number of chunk files compared (so a test can check it compared something)."""
    a, b = Path(a), Path(b)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b, f"{a} and {b} hold different files"
    chunks = 0
    for rel in files_a:
        if rel.name == "zarr.json":
            ja, jb = (json.loads((root / rel).read_text()) for root in (a, b))
            assert _without_volatile(ja) == _without_volatile(jb), f"metadata {rel} differs"
        else:
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), f"chunk {rel} differs"
            chunks += 1
    return chunks


def assert_parquet_identical(a: str | Path, b: str | Path) -> int:
    """Same table (values, types, row order, row groups), same schema metadata, same bytes; returns rows."""
    ta, tb = pq.read_table(a), pq.read_table(b)
    assert ta.schema.equals(tb.schema, check_metadata=True), f"{a} and {b} differ in schema or metadata"
    assert ta.equals(tb), f"{a} and {b} differ in their rows"
    assert pq.ParquetFile(a).metadata.num_row_groups == pq.ParquetFile(b).metadata.num_row_groups
    assert Path(a).read_bytes() == Path(b).read_bytes(), f"{a} and {b} hold the same table but differ in bytes"
    return ta.num_rows
