"""Write slides' cell tables as one AnnData ``.h5ad`` file, streamed: chunk by chunk and column by column.

A slide of 3 million cells must not need its table in memory twice (nor once): every element of the file
is written by anndata's on-disk element API (:func:`anndata.io.write_elem`) from its first chunk, with an
unlimited first axis, and then grown chunk by chunk with the next rows read from the parquet files. What
is in memory at once is one chunk of one element (``chunk_rows`` rows of X, or of one obs column), so the
peak is flat in the number of cells (bench/anndata.py measures it). A cohort file is the same writer fed
the slides one after another.

The file (what anndata and scanpy read):

* ``X`` (float32, cells × features): morphology and intensities from cells.parquet; ``var`` names them,
  with ``feature_type`` (morphology / intensity / texture) and ``channel``.
* ``obs`` (index ``<slide>:<cell_id>``, unique in a cohort): ``slide`` and the sample-sheet fields
  (``patient``, ``condition``, ...; categorical), ``cell_id``, ``tile``, ``at_border``,
  ``cell_cluster_id`` (touching cells, from extract), the gate label, from the classify stage
  ``p_<task>_<class>`` (float32) and ``pred_<task>`` (categorical), from the embed stage
  ``latent_cluster`` (categorical).
* ``obsm["spatial"]``: centroids (x, y) in µm (pixels when no pixel size is recorded; uns says which);
  ``obsm["X_latent"]``: the embedder's latent means; ``obsm["X_map"]``: its 2-D map.
* ``uns["hemoprofile"]``: provenance (package version, export version, per slide the classifier and
  embedder model ids, pixel size, channel names, the source files and their metadata as JSON, and what
  the caller adds, e.g. the config hash).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence

import h5py
import numpy as np
import pandas as pd

try:  # anndata >= 0.11
    from anndata.io import write_elem
except ImportError:  # anndata 0.10
    from anndata.experimental import write_elem

import hemoprofile
from hemoprofile.export.sources import (
    CELL_OBS_COLUMNS,
    SlideInputs,
    SlidePlan,
    check_aligned,
    check_same_layout,
    iter_columns,
    plan_slide,
    source_paths,
)
from hemoprofile.io import atomic_output

#: HDF5 chunks of at most this many bytes (whole rows), whatever chunk_rows is.
HDF5_CHUNK_BYTES = 1 << 20

Chunks = Callable[[SlidePlan], Iterator[np.ndarray]]


def _column(name: str, chunk_rows: int) -> Chunks:
    def chunks(plan: SlidePlan) -> Iterator[np.ndarray]:
        path = plan.inputs.cells
        if name.startswith(("p_", "pred_")):
            path = plan.inputs.predictions
        elif name == "cluster":
            path = plan.inputs.embedding
        for table in iter_columns(path, [name], chunk_rows):
            yield table.column(0).to_numpy(zero_copy_only=False)
    return chunks


def _matrix(which: str, columns: Sequence[str], chunk_rows: int, dtype, scale: Callable[[SlidePlan], float] | None = None) -> Chunks:
    def chunks(plan: SlidePlan) -> Iterator[np.ndarray]:
        factor = scale(plan) if scale else 1.0
        path = getattr(plan.inputs, which)
        for table in iter_columns(path, columns, chunk_rows):
            block = np.empty((table.num_rows, len(columns)), dtype=dtype)
            for j in range(len(columns)):
                block[:, j] = table.column(j).to_numpy(zero_copy_only=False)
            if factor != 1.0:
                block *= factor
            yield block
    return chunks


def _constant(field_name: str, chunk_rows: int) -> Chunks:
    def chunks(plan: SlidePlan) -> Iterator[np.ndarray]:
        value = plan.slide if field_name == "slide" else str(plan.inputs.sheet[field_name])
        for start in range(0, max(plan.n_cells, 1), chunk_rows):
            yield np.full(min(chunk_rows, plan.n_cells - start), value, dtype=object)
    return chunks


def _obs_names(chunk_rows: int) -> Chunks:
    def chunks(plan: SlidePlan) -> Iterator[np.ndarray]:
        for table in iter_columns(plan.inputs.cells, ["cell_id"], chunk_rows):
            ids = table.column(0).to_numpy()
            yield np.array([f"{plan.slide}:{i}" for i in ids.tolist()], dtype=object)
    return chunks


def _as_labels(chunks: Chunks) -> Chunks:
    """Cluster ids (integers) -> their string labels, as categorical obs columns are in scanpy."""
    def labels(plan: SlidePlan) -> Iterator[np.ndarray]:
        for values in chunks(plan):
            yield np.array([None if v is None else str(int(v)) for v in values.tolist()], dtype=object)
    return labels


def _categories(plans: Sequence[SlidePlan], chunks: Chunks, first: Sequence[str] = ()) -> list[str]:
    """The categories of an obs column: ``first`` (e.g. a classifier's classes in its order), then the
    other values seen, sorted (numerically when they are all integers)."""
    seen: set[str] = set()
    for plan in plans:
        for values in chunks(plan):
            seen.update(v for v in pd.unique(values) if v is not None and not (isinstance(v, float) and np.isnan(v)))
    rest = sorted(seen - set(first), key=lambda v: (0, int(v), "") if re.fullmatch(r"-?\d+", v) else (1, 0, v))
    return [*first, *rest]


class _Appender:
    """One element of the file, created by ``write_elem`` from its first chunk and grown chunk by chunk."""

    def __init__(self, parent: h5py.Group, name: str, total: int, compression: str | None,
                 categories: Sequence[str] | None = None):
        self.parent, self.name, self.total = parent, name, total
        self.compression, self.categories = compression, categories
        self.rows = 0
        self.target: h5py.Dataset | None = None

    def _wrap(self, values: np.ndarray):
        if self.categories is None:
            return values
        return pd.Categorical(values, categories=self.categories)

    def append(self, values: np.ndarray) -> None:
        element = self._wrap(values)
        if self.target is None:
            shape = np.shape(values)
            row_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * max(np.asarray(values).dtype.itemsize, 8))
            rows = max(1, min(self.total, HDF5_CHUNK_BYTES // row_bytes))
            kwargs = {"maxshape": (None, *shape[1:]), "chunks": (rows, *shape[1:])}
            if self.compression:
                kwargs["compression"] = self.compression
            write_elem(self.parent, self.name, element, dataset_kwargs=kwargs)
            node = self.parent[self.name]
            self.target = node["codes"] if self.categories is not None else node
            self.rows = len(values)
            return
        codes = element.codes if self.categories is not None else element
        n = len(codes)
        self.target.resize(self.rows + n, axis=0)
        self.target[self.rows:self.rows + n] = codes
        self.rows += n

    def write(self, plans: Sequence[SlidePlan], chunks: Chunks, empty: np.ndarray) -> None:
        for plan in plans:
            for values in chunks(plan):
                self.append(values)
        if self.target is None:
            write_elem(self.parent, self.name, self._wrap(empty))
        elif self.rows != self.total:
            raise ValueError(f"{self.name}: wrote {self.rows} rows, expected {self.total} (a table changed while "
                             "it was read?)")


def var_table(features: Sequence[str], channels: Sequence[str]) -> pd.DataFrame:
    """``var``: the feature names, their type (morphology / intensity / texture) and channel."""
    kinds, chans = [], []
    for name in features:
        prefix, _, channel = name.partition("_")
        if channel in channels and prefix in ("mean", "max", "integrated", "texture"):
            kinds.append("texture" if prefix == "texture" else "intensity")
            chans.append(channel)
        else:
            kinds.append("morphology")
            chans.append("")
    return pd.DataFrame({"feature_type": pd.Categorical(kinds), "channel": pd.Categorical(chans)},
                        index=pd.Index(list(features), dtype=object))


def _uns_safe(value):
    """Metadata -> what ``write_elem`` stores in uns: Nones dropped, nested lists as JSON text."""
    if isinstance(value, Mapping):
        return {str(k): _uns_safe(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, str) for v in value):
            return np.array(value, dtype=object)
        if value and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return np.asarray(value)
        return json.dumps(value)
    return value


def slide_provenance(plan: SlidePlan) -> dict:
    """Per slide: pixel size, channels, model ids, source files and their metadata (as JSON)."""
    cells, pred, emb = (plan.metadata.get(k, {}) for k in ("cells", "predictions", "embedding"))
    entry = {
        "n_cells": plan.n_cells,
        "pixel_size_um": plan.pixel_size_um,
        "channel_names": cells.get("channel_names"),
        "classifier_models": {task: m.get("id") for task, m in (pred.get("models") or {}).items()},
        "embedder_model_id": emb.get("model_id"),
        "files": source_paths(plan),
        "metadata_json": {k: json.dumps(v, sort_keys=True, default=str) for k, v in plan.metadata.items() if v},
    }
    return _uns_safe(entry)


def config_digest(config: Mapping) -> str:
    """The SHA-256 of a configuration (its canonical JSON: keys sorted), the ``config_sha256`` in uns."""
    text = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def write_cells_h5ad(slides: Sequence[SlideInputs], out_path: str | os.PathLike, *, chunk_rows: int = 65536,
                     compression: str | None = "gzip", provenance: Mapping | None = None,
                     progress: Callable[[str], None] | None = None) -> dict:
    """Write one or more slides' cells as an AnnData ``.h5ad`` file, chunk by chunk (module docstring).

    Parameters
    ----------
    slides : each slide's files and sample-sheet fields, in the order of the file's rows.
    out_path : the ``.h5ad`` to write (atomically: it appears only when complete).
    chunk_rows : rows read and written at a time; bounds the memory (the content does not depend on it).
    compression : HDF5 compression of every element (``"gzip"``, ``"lzf"`` or None).
    provenance : extra entries for ``uns["hemoprofile"]`` (e.g. ``config_sha256``).
    progress : called with a message per element written.

    Returns
    -------
    dict with ``n_obs``, ``n_vars``, ``slides`` and the ``obsm`` keys written.

    Example
    -------
    >>> write_cells_h5ad([SlideInputs("S1", "results/S1/cells.parquet")], "S1.h5ad")  # doctest: +SKIP
    """
    say = progress or (lambda message: None)
    chunk_rows = max(1, int(chunk_rows))
    plans = [plan_slide(s) for s in slides]
    check_same_layout(plans)
    for plan in plans:
        check_aligned(plan, chunk_rows)
    first = plans[0]
    total = sum(p.n_cells for p in plans)
    channels = first.metadata["cells"].get("channel_names") or []

    with atomic_output(out_path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
        say(f"{total} cells of {len(plans)} slide(s), {len(first.features)} features")

        _Appender(f, "X", total, compression).write(
            plans, _matrix("cells", first.features, chunk_rows, np.float32),
            np.zeros((0, len(first.features)), np.float32))
        write_elem(f, "var", var_table(first.features, channels))
        say("X and var written")

        obs = f.create_group("obs")
        _Appender(obs, "_index", total, compression).write(plans, _obs_names(chunk_rows), np.array([], dtype=object))
        columns = obs_columns(plans, chunk_rows)
        for name, chunks, categories in columns:
            empty = np.array([], dtype=object if categories is not None else np.float32)
            _Appender(obs, name, total, compression, categories).write(plans, chunks, empty)
        order = [name for name, _, _ in columns]
        obs.attrs.update({"encoding-type": "dataframe", "encoding-version": "0.2.0", "_index": "_index",
                          "column-order": np.array(order, dtype=object)})
        say(f"obs written: {len(order)} columns")

        obsm = f.create_group("obsm")
        obsm.attrs.update({"encoding-type": "dict", "encoding-version": "0.1.0"})
        written = []
        if first.has_position:
            scale = (lambda p: p.pixel_size_um) if first.pixel_size_um is not None else None
            _Appender(obsm, "spatial", total, compression).write(
                plans, _matrix("cells", ["x", "y"], chunk_rows, np.float64, scale), np.zeros((0, 2)))
            written.append("spatial")
        if first.latent:
            _Appender(obsm, "X_latent", total, compression).write(
                plans, _matrix("embedding", first.latent, chunk_rows, np.float32),
                np.zeros((0, len(first.latent)), np.float32))
            written.append("X_latent")
        if first.has_map:
            _Appender(obsm, "X_map", total, compression).write(
                plans, _matrix("embedding", ["map_x", "map_y"], chunk_rows, np.float32), np.zeros((0, 2), np.float32))
            written.append("X_map")
        say(f"obsm written: {written}")

        uns = {
            "version": hemoprofile.__version__,
            "export_version": hemoprofile.STAGE_VERSIONS["export"],
            "spatial_unit": "um" if first.pixel_size_um is not None else "pixel",
            "slides": {p.slide: slide_provenance(p) for p in plans},
            **_uns_safe(dict(provenance or {})),
        }
        write_elem(f, "uns", {"hemoprofile": _uns_safe(uns)})
        for empty in ("layers", "obsp", "varm", "varp"):
            write_elem(f, empty, {})
    return {"n_obs": total, "n_vars": len(first.features), "slides": [p.slide for p in plans], "obsm": written}


def obs_columns(plans: Sequence[SlidePlan], chunk_rows: int) -> list[tuple[str, Chunks, list[str] | None]]:
    """obs in its column order: (name, chunk reader, categories or None for a numeric column).

    Categories of the categorical columns are read first (a pass over that column only): a categorical's
    codes can only be written once its categories are fixed.
    """
    first = plans[0]
    columns: list[tuple[str, Chunks, Sequence[str] | None]] = [("slide", _constant("slide", chunk_rows), [p.slide for p in plans])]
    columns += [(k, _constant(k, chunk_rows), ()) for k in sorted(first.inputs.sheet)]
    columns += [(CELL_OBS_COLUMNS[c], _column(c, chunk_rows), None) for c in first.cell_obs]
    if first.gate_column:
        columns.append((first.gate_column, _column(first.gate_column, chunk_rows), ()))
    columns += [(c, _probability(c, chunk_rows), None) for c in first.probabilities]
    models = (first.metadata.get("predictions") or {}).get("models") or {}
    for c in first.predicted:
        columns.append((c, _column(c, chunk_rows), list((models.get(c[len("pred_"):]) or {}).get("classes") or [])))
    if first.has_cluster:
        columns.append(("latent_cluster", _as_labels(_column("cluster", chunk_rows)), ()))
    return [(name, chunks, None if known is None else _categories(plans, chunks, known))
            for name, chunks, known in columns]


def _probability(name: str, chunk_rows: int) -> Chunks:
    matrix = _matrix("predictions", [name], chunk_rows, np.float32)

    def chunks(plan: SlidePlan) -> Iterator[np.ndarray]:
        for block in matrix(plan):
            yield block[:, 0]
    return chunks
