"""Tiny classifier cohorts: "slides" whose patches carry the class in which channel is bright (a task a
2-stage net learns in a few epochs), written in the patches.zarr + cells.parquet contract of
hemoprofile.features.extract, and the tiny ``classify`` settings that train on them in seconds."""

import numpy as np
import pandas as pd
import zarr

from hemoprofile.classify.labels import SlideInput

CHANNELS = ["DAPI", "CK", "VIM", "CD45"]
TINY = {
    "model": {"widths": [8, 16], "blocks": [1, 1], "dropout": 0.0},
    "train": {"epochs": 4, "minutes": 1.0, "batch_size": 32, "lr": 1e-2, "patience": 0, "ema_decay": 0.9},
    "augment": {"blur_p": 0.0, "channel_dropout": 0.0},
    "split": {"val_fraction": 0.25, "test_fraction": 0.25},
    "device": "cpu",
    "mixed_precision": False,
    "batch_size": 64,
}
# which channel is bright for each cell type (CTC: CK; lymphoid: VIM; myeloid: CD45; DAPI = subtype)
BRIGHT = {"CD4_T": (2, 0.2), "CD8_T": (2, 0.9), "B": (2, 0.5), "NK": (2, 0.5),
          "granulocyte": (3, 0.2), "monocyte": (3, 0.9), "CTC": (1, 0.5)}


def write_slide(folder, slide, labels, size=12, seed=0, column="label"):
    """Write cells.parquet + patches.zarr for cells of the given types; return (cells, patches) paths."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    patches = (rng.random((n, len(CHANNELS), size, size)) * 40).astype(np.uint8)
    for i, t in enumerate(labels):
        channel, dapi = BRIGHT[t]
        patches[i, channel, 3:-3, 3:-3] += 180
        patches[i, 0, 4:-4, 4:-4] = int(dapi * 255)
    folder.mkdir(parents=True, exist_ok=True)
    arr = zarr.create_array(str(folder / "patches.zarr"), shape=patches.shape, chunks=(16, 1, size, size),
                            dtype="uint8")
    arr[:] = patches
    arr.attrs["hemoprofile"] = {"channel_names": CHANNELS, "patch_size": size, "dtype": "uint8"}
    cells = pd.DataFrame({"slide": slide, "cell_id": np.arange(1, n + 1, dtype=np.int64),
                          "y": rng.random(n) * 100, "x": rng.random(n) * 100, column: list(labels)})
    cells.to_parquet(folder / "cells.parquet")
    return str(folder / "cells.parquet"), str(folder / "patches.zarr")


def make_cohort(tmp_path, n_slides=4, per_type=12, types=("CD4_T", "CD8_T", "granulocyte", "monocyte", "CTC")):
    items = []
    for s in range(n_slides):
        labels = [t for t in types for _ in range(per_type)]
        cells, patches = write_slide(tmp_path / f"S{s}", f"S{s}", labels, seed=s)
        items.append(SlideInput(f"S{s}", cells, patches, group=f"P{s}"))
    return items
