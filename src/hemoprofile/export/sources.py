"""What the AnnData export reads: one slide's output tables (cells.parquet, and optionally the classify
stage's predictions.parquet and the embed stage's embedding.parquet), their columns and metadata,
checked against each other before anything is written.

The export reads other stages' OUTPUT files only (through pyarrow, column by column and in row chunks),
never their code, so it sees exactly what the workflow wrote.

Which cells.parquet columns become what (see :func:`plan_slide`):

* ``X`` (the features): every numeric column that is not an id, a position, a box or a flag: the
  morphology (``area``, ``area_um2``, ``perimeter``, ``eccentricity``, ``solidity``, ``nucleus_area``,
  ``nucleus_ratio``, ``orientation_deg``) and the per-channel intensities and textures (``mean_<c>``,
  ``max_<c>``, ``integrated_<c>``, ``texture_<c>``).
* ``obs``: ``cell_id``, ``tile``, ``at_border``, ``cluster_id`` (renamed ``cell_cluster_id``: the group of
  touching cells from extract) and the gate label column.
* ``obsm["spatial"]``: the centroid (``x``, ``y``) times the pixel size the extract stage recorded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hemoprofile.io.tables import open_parquet_stream

#: cells.parquet columns that are ids, positions, boxes or flags, never features.
NON_FEATURE_COLUMNS = frozenset({
    "slide", "cell_id", "tile", "y", "x", "y_um", "x_um", "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1",
    "at_border", "cluster_id",
})
#: cells.parquet columns copied to obs as they are (when present) -> their obs name.
CELL_OBS_COLUMNS = {"cell_id": "cell_id", "tile": "tile", "at_border": "at_border", "cluster_id": "cell_cluster_id"}


@dataclass(frozen=True)
class SlideInputs:
    """One slide's files for the export, and its sample-sheet fields (e.g. patient, condition).

    ``predictions`` and ``embedding`` are optional; a cohort export needs the same ones for every slide.
    """

    slide: str
    cells: str | os.PathLike
    predictions: str | os.PathLike | None = None
    embedding: str | os.PathLike | None = None
    sheet: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SlidePlan:
    """What one slide contributes, read from its files' schemas and metadata (no rows read)."""

    inputs: SlideInputs
    n_cells: int
    features: list[str]
    cell_obs: list[str]
    gate_column: str | None
    probabilities: list[str]
    predicted: list[str]
    latent: list[str]
    has_map: bool
    has_cluster: bool
    pixel_size_um: float | None
    has_position: bool
    metadata: dict[str, dict]

    @property
    def slide(self) -> str:
        return self.inputs.slide

    def layout(self) -> tuple:
        """The columns that must agree between the slides of one file."""
        return (self.features, self.cell_obs, self.gate_column, self.probabilities, self.predicted,
                self.latent, self.has_map, self.has_cluster, sorted(self.inputs.sheet), self.has_position)


def parquet_metadata(path: str | os.PathLike) -> dict:
    """The ``hemoprofile`` JSON entry of a parquet file's schema metadata ({} when it has none)."""
    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(b"hemoprofile")
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: the 'hemoprofile' schema metadata is not JSON ({err})") from err


def _numeric(schema: pa.Schema, name: str) -> bool:
    kind = schema.field(name).type
    return pa.types.is_integer(kind) or pa.types.is_floating(kind)


def _require(names: Sequence[str], wanted: Sequence[str], path) -> None:
    missing = [c for c in wanted if c not in names]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; has {list(names)}")


def plan_slide(inputs: SlideInputs) -> SlidePlan:
    """Read one slide's schemas and metadata and decide which column goes where.

    Raises ``FileNotFoundError`` / ``ValueError`` naming the file: missing file, missing ``slide`` /
    ``cell_id``, a predictions or embedding table whose row count differs from cells.parquet's, no
    feature column.
    """
    cells = open_parquet_stream(inputs.cells, "cells table")
    schema = cells.schema_arrow
    _require(schema.names, ["slide", "cell_id"], inputs.cells)
    meta = {"cells": parquet_metadata(inputs.cells)}
    gate = ((meta["cells"].get("gating") or {}).get("config") or {}).get("column")
    if gate is None and "gate_label" in schema.names:
        gate = "gate_label"
    gate = gate if gate in schema.names else None
    features = [c for c in schema.names if c not in NON_FEATURE_COLUMNS and c != gate and _numeric(schema, c)]
    if not features:
        raise ValueError(f"{inputs.cells}: no numeric feature column (morphology, intensities) to export")
    n = cells.metadata.num_rows
    probabilities, predicted, latent, has_map, has_cluster = [], [], [], False, False
    if inputs.predictions is not None:
        pred = open_parquet_stream(inputs.predictions, "predictions table")
        names = pred.schema_arrow.names
        _require(names, ["cell_id"], inputs.predictions)
        _same_rows(pred, n, inputs.predictions, inputs.cells)
        probabilities = [c for c in names if c.startswith("p_")]
        predicted = [c for c in names if c.startswith("pred_")]
        meta["predictions"] = parquet_metadata(inputs.predictions)
    if inputs.embedding is not None:
        emb = open_parquet_stream(inputs.embedding, "embedding table")
        names = emb.schema_arrow.names
        _require(names, ["cell_id"], inputs.embedding)
        _same_rows(emb, n, inputs.embedding, inputs.cells)
        latent = sorted((c for c in names if c.startswith("z_") and c[2:].isdigit()), key=lambda c: int(c[2:]))
        if not latent:
            raise ValueError(f"{inputs.embedding}: no latent column (z_0, z_1, ...)")
        has_map = "map_x" in names and "map_y" in names
        has_cluster = "cluster" in names
        meta["embedding"] = parquet_metadata(inputs.embedding)
    pixel = meta["cells"].get("pixel_size_um")
    return SlidePlan(
        inputs=inputs, n_cells=n, features=features,
        cell_obs=[c for c in CELL_OBS_COLUMNS if c in schema.names], gate_column=gate,
        probabilities=probabilities, predicted=predicted, latent=latent, has_map=has_map,
        has_cluster=has_cluster, pixel_size_um=float(pixel) if pixel else None,
        has_position="x" in schema.names and "y" in schema.names, metadata=meta,
    )


def _same_rows(table: pq.ParquetFile, n: int, path, cells_path) -> None:
    if table.metadata.num_rows != n:
        raise ValueError(f"{path}: {table.metadata.num_rows} rows, but {cells_path} has {n} "
                         "(the files come from different runs?)")


def iter_columns(path: str | os.PathLike, columns: Sequence[str], chunk_rows: int) -> Iterator[pa.Table]:
    """Yield ``columns`` of a parquet file in tables of exactly ``chunk_rows`` rows (the last may be shorter;
    an empty file gives one empty table).

    Reads one row group's batches at a time, so memory is bounded by a row group plus a chunk, whatever
    the file's size; equal chunking across files lets the caller zip tables with different row groups.
    """
    chunk_rows = max(1, int(chunk_rows))
    pending: list[pa.RecordBatch] = []
    held = 0
    reader = open_parquet_stream(path, "parquet table")  # pre_buffer off: memory flat whatever the file
    for batch in reader.iter_batches(batch_size=chunk_rows, columns=list(columns)):
        pending.append(batch)
        held += batch.num_rows
        while held >= chunk_rows:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, chunk_rows)
            rest = table.slice(chunk_rows)
            pending, held = rest.to_batches(), rest.num_rows
    if held:
        yield pa.Table.from_batches(pending)
    elif reader.metadata.num_rows == 0:  # one empty table, so writers still see the columns' types
        yield reader.schema_arrow.empty_table().select(list(columns))


def check_aligned(plan: SlidePlan, chunk_rows: int) -> None:
    """Check that predictions / embedding rows are the same cells, in the same order, as cells.parquet.

    Raises ``ValueError`` naming the file and the first row whose ``cell_id`` differs.
    """
    others = [p for p in (plan.inputs.predictions, plan.inputs.embedding) if p is not None]
    if not others:
        return
    readers = [iter_columns(plan.inputs.cells, ["cell_id"], chunk_rows)]
    readers += [iter_columns(p, ["cell_id"], chunk_rows) for p in others]
    start = 0
    for tables in zip(*readers):
        ids = [t.column("cell_id").to_numpy() for t in tables]
        for path, other in zip(others, ids[1:]):
            if not np.array_equal(ids[0], other):
                row = start + int(np.flatnonzero(ids[0] != other)[0])
                raise ValueError(f"{path}: cell_id {other[row - start]} at row {row}, but {plan.inputs.cells} has "
                                 f"{ids[0][row - start]} there (the files come from different runs?)")
        start += len(ids[0])


def check_same_layout(plans: Sequence[SlidePlan]) -> None:
    """Slides written into one file must have the same columns (features, predictions, latent size)."""
    if not plans:
        raise ValueError("no slide to export")
    first = plans[0]
    for plan in plans[1:]:
        if plan.layout() != first.layout():
            names = ("features", "cell columns", "gate column", "probabilities", "predicted classes",
                     "latent columns", "map", "latent cluster", "sheet fields", "centroids")
            differ = [n for n, a, b in zip(names, first.layout(), plan.layout()) if a != b]
            raise ValueError(f"{plan.inputs.cells}: its {', '.join(differ)} differ from those of "
                             f"{first.inputs.cells}; slides in one AnnData file need the same columns")
        if (plan.pixel_size_um is None) != (first.pixel_size_um is None):
            known = first if first.pixel_size_um is not None else plan
            unknown = plan if known is first else first
            raise ValueError(f"{unknown.inputs.cells}: no pixel size recorded while {known.inputs.cells} has "
                             "one; centroids of one file must share a unit (µm or pixels)")
    slides = [p.slide for p in plans]
    if len(set(slides)) != len(slides):
        raise ValueError(f"slide named more than once: {sorted({s for s in slides if slides.count(s) > 1})}")


def source_paths(plan: SlidePlan) -> dict[str, str]:
    """The files a slide's rows came from (for the provenance)."""
    files = {"cells": plan.inputs.cells, "predictions": plan.inputs.predictions, "embedding": plan.inputs.embedding}
    return {k: str(Path(v)) for k, v in files.items() if v is not None}
