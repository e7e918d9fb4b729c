"""A small slide for the CTC review tests: cells.parquet, predictions.parquet (in several row groups),
clusters.parquet and patches.zarr whose CTC scores are known, so candidates are known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

CHANNELS = ["DAPI", "CK", "VIM", "CD45"]


def write_review_slide(root: Path, slide: str = "S1", n: int = 400, n_ctc: int = 6, seed: int = 0,
                       row_group: int = 64, patches: bool = True) -> dict[str, str]:
    """Write one slide's tables (cells ``1..n``; the ``n_ctc`` cells with ids 10, 20, ... score 0.9+)
    and return their paths, plus ``ctc_ids``. Row groups of ``row_group`` rows exercise streaming."""
    rng = np.random.default_rng(seed)
    root = Path(root) / slide
    root.mkdir(parents=True, exist_ok=True)
    cell_id = np.arange(1, n + 1, dtype=np.int64)
    score = rng.uniform(0.0, 0.3, n).astype(np.float32)
    ctc = np.zeros(n, bool)
    ctc[np.arange(9, 10 * n_ctc, 10)] = True
    score[ctc] = np.linspace(0.99, 0.9, n_ctc).astype(np.float32)
    cluster_id = np.full(n, -1, np.int64)
    cluster_id[[9, 10, 11]] = 0  # the first CTC sits in a 3-cell cluster
    cells = pd.DataFrame({
        "slide": slide, "cell_id": cell_id, "y": rng.uniform(0, 500, n), "x": rng.uniform(0, 500, n),
        "area": rng.integers(60, 400, n).astype(np.int32), "area_um2": rng.uniform(20, 150, n).astype(np.float32),
        "eccentricity": np.float32(0.3), "solidity": np.float32(0.95), "nucleus_ratio": np.float32(0.5),
        "mean_DAPI": np.float32(1000), "max_DAPI": np.float32(2000), "mean_CK": np.where(ctc, 900, 10).astype(np.float32),
        "mean_VIM": np.float32(100), "mean_CD45": np.where(ctc, 50, 900).astype(np.float32),
        "cluster_id": cluster_id, "gate_label": np.where(ctc, "CTC", "leukocyte"),
    })
    predictions = pd.DataFrame({
        "slide": slide, "cell_id": cell_id, "pred_immune5": np.where(rng.random(n) < 0.5, "T", "granulocyte"),
        "p_ctc_leukocyte": 1 - score, "p_ctc_CTC": score, "pred_ctc": np.where(score >= 0.5, "CTC", "leukocyte"),
    })
    clusters = pd.DataFrame({"slide": slide, "cluster_id": [0], "cell_ids": [[10, 11, 12]], "size": [3]})
    paths = {"cells": str(root / "cells.parquet"), "predictions": str(root / "predictions.parquet"),
             "clusters": str(root / "clusters.parquet")}
    pq.write_table(pa.Table.from_pandas(cells, preserve_index=False), paths["cells"], row_group_size=row_group)
    pq.write_table(pa.Table.from_pandas(predictions, preserve_index=False), paths["predictions"],
                   row_group_size=row_group)
    clusters.to_parquet(paths["clusters"], index=False)
    if patches:
        from hemoprofile.io.patches import PatchWriter, patch_attributes

        paths["patches"] = str(root / "patches.zarr")
        pixels = (rng.random((n, len(CHANNELS), 32, 32)) * 60).astype(np.uint8)
        pixels[ctc, 1, 8:24, 8:24] = 220  # CK-bright centre on the CTCs
        with PatchWriter(paths["patches"], len(CHANNELS), 32, "uint8",
                         patch_attributes(CHANNELS, 32, "uint8")) as writer:
            writer.append(pixels)
    paths["ctc_ids"] = cell_id[ctc].tolist()
    return paths
