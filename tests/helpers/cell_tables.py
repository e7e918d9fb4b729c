"""Generated per-slide output tables with the workflow's schemas, written in row groups (so millions of rows
need no more memory than one group): cells.parquet as extract writes it (hemoprofile.io.tables.cells_schema),
predictions.parquet as classify writes it (p_<task>_<class>, pred_<task>, model_<task>) and
embedding.parquet as embed writes it (z_<i>, map_x, map_y, cluster), with their ``hemoprofile`` metadata.

Used by tests/unit/export and bench/anndata.py; no images needed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hemoprofile.io.tables import cells_schema

CHANNELS = ["DAPI", "CK", "VIM", "CD45"]
TASKS = {"lineage": ["lymphoid", "myeloid"], "ctc": ["leukocyte", "CTC"]}
MODEL_IDS = {"lineage": "aaaaaaaaaaaa", "ctc": "bbbbbbbbbbbb"}
EMBEDDER_ID = "cccccccccccc"


def _meta(schema: pa.Schema, meta: dict) -> pa.Schema:
    return schema.with_metadata({"hemoprofile": json.dumps(meta)})


def write_cell_tables(folder, slide: str, n_cells: int, *, seed: int = 0, latent_dim: int = 8,
                      pixel_size_um: float | None = 0.65, chunk_rows: int = 65536, gate_labels=("leukocyte", "other"),
                      predictions: bool = True, embedding: bool = True, cell_id_offset: int = 0,
                      tasks: dict[str, list[str]] | None = None, cell_pairs: bool = False) -> dict[str, Path]:
    """Write ``folder``/{cells,predictions,embedding}.parquet for ``n_cells`` random cells of ``slide``.

    ``tasks``: classification task -> classes written to predictions.parquet (default :data:`TASKS`);
    ``cell_pairs``: cells whose id ends in 0 or 1 form two-cell clusters (``cluster_id`` = id // 10), the
    others are in none (-1), instead of every cell its own cluster.

    Returns the paths by name (``cells``, and ``predictions`` / ``embedding`` when written).
    """
    tasks = TASKS if tasks is None else tasks
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cells_meta = {"stage": "extract", "version": 2, "slide": slide, "channel_names": CHANNELS,
                  "pixel_size_um": pixel_size_um, "gating": {"config": {"column": "gate_label"}}}
    cs = _meta(cells_schema(CHANNELS, "gate_label"), cells_meta)
    pred_fields = [("slide", pa.string()), ("cell_id", pa.int64())]
    for task, classes in tasks.items():
        pred_fields += [(f"p_{task}_{c}", pa.float32()) for c in classes]
        pred_fields += [(f"pred_{task}", pa.string()), (f"model_{task}", pa.string())]
    models = {t: {"id": MODEL_IDS.get(t, t[:12]), "file": f"models/classifier_{t}.pt", "classes": c}
              for t, c in tasks.items()}
    ps = _meta(pa.schema(pred_fields), {"models": models})
    es = _meta(pa.schema([("slide", pa.string()), ("cell_id", pa.int64())]
                         + [(f"z_{i}", pa.float32()) for i in range(latent_dim)]
                         + [("map_x", pa.float32()), ("map_y", pa.float32()), ("cluster", pa.int32())]),
               {"stage": {"stage": "embed", "version": 2}, "model_id": EMBEDDER_ID, "k": 5, "map": "pca"})
    paths = {"cells": folder / "cells.parquet"}
    if predictions:
        paths["predictions"] = folder / "predictions.parquet"
    if embedding:
        paths["embedding"] = folder / "embedding.parquet"
    writers = {"cells": pq.ParquetWriter(paths["cells"], cs)}
    if predictions:
        writers["predictions"] = pq.ParquetWriter(paths["predictions"], ps)
    if embedding:
        writers["embedding"] = pq.ParquetWriter(paths["embedding"], es)
    try:
        for start in range(0, n_cells, chunk_rows):
            n = min(chunk_rows, n_cells - start)
            ids = np.arange(start + 1, start + n + 1, dtype=np.int64) + cell_id_offset
            slides = pa.array(np.full(n, slide, dtype=object), pa.string())
            writers["cells"].write_table(_cells(cs, rng, slides, ids, pixel_size_um, gate_labels, cell_pairs))
            if predictions:
                cols = {"slide": slides, "cell_id": ids}
                for task, classes in tasks.items():
                    if len(classes) == 2:
                        p = rng.random(n).astype(np.float32)
                        cols[f"p_{task}_{classes[0]}"], cols[f"p_{task}_{classes[1]}"] = p, 1 - p
                        cols[f"pred_{task}"] = np.where(p >= 0.5, classes[0], classes[1])
                    else:
                        p = rng.random((n, len(classes)), dtype=np.float32)
                        p /= p.sum(1, keepdims=True)
                        for j, c in enumerate(classes):
                            cols[f"p_{task}_{c}"] = p[:, j]
                        cols[f"pred_{task}"] = np.asarray(classes, dtype=object)[p.argmax(1)]
                    cols[f"model_{task}"] = [MODEL_IDS.get(task, task[:12])] * n
                writers["predictions"].write_table(pa.table([cols[f.name] for f in ps], schema=ps))
            if embedding:
                z = rng.normal(size=(n, latent_dim)).astype(np.float32)
                cols = [slides, ids, *z.T, z[:, 0] + z[:, 1], z[:, 0] - z[:, 1], rng.integers(0, 5, n, dtype=np.int32)]
                writers["embedding"].write_table(pa.table(cols, schema=es))
    finally:
        for writer in writers.values():
            writer.close()
    return paths


def _cells(schema: pa.Schema, rng, slides, ids, pixel_size_um, gate_labels, cell_pairs=False) -> pa.Table:
    n = len(ids)
    y, x = rng.uniform(0, 50000, n), rng.uniform(0, 20000, n)
    area = rng.integers(60, 600, n).astype(np.int32)
    scale = pixel_size_um or np.nan
    cols = {
        "slide": slides, "cell_id": ids, "tile": (ids // 1000).astype(np.int32), "y": y, "x": x,
        "y_um": y * scale, "x_um": x * scale,
        "bbox_y0": (y - 8).astype(np.int32), "bbox_x0": (x - 8).astype(np.int32),
        "bbox_y1": (y + 8).astype(np.int32), "bbox_x1": (x + 8).astype(np.int32),
        "area": area, "area_um2": (area * scale**2).astype(np.float32),
        "perimeter": rng.uniform(20, 90, n).astype(np.float32),
        "eccentricity": rng.random(n).astype(np.float32), "solidity": rng.uniform(0.8, 1, n).astype(np.float32),
        "nucleus_area": (area * 0.4).astype(np.int32), "nucleus_ratio": rng.uniform(0.2, 0.8, n).astype(np.float32),
        "orientation_deg": rng.uniform(-90, 90, n).astype(np.float32),
        "at_border": rng.random(n) < 0.02,
        "cluster_id": np.where(ids % 10 < 2, ids // 10, -1) if cell_pairs else ids.copy(),
        "gate_label": np.array(gate_labels, dtype=object)[rng.integers(0, len(gate_labels), n)],
    }
    for c in CHANNELS:
        mean = rng.gamma(2, 500, n).astype(np.float32)
        cols[f"mean_{c}"], cols[f"max_{c}"] = mean, (mean * 2).astype(np.float32)
        cols[f"integrated_{c}"] = mean.astype(np.float64) * area
        cols[f"texture_{c}"] = rng.random(n).astype(np.float32)
    return pa.table([cols[f.name] for f in schema], schema=schema)
