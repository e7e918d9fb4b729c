"""Tiny written slides for the embed tests: two cell 'types' (disc, ring) as patches.zarr plus a
cells.parquet with a ``label`` column, and a tiny embedder config."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hemoprofile.embed.sample import EmbedSlide
from hemoprofile.io.patches import PatchWriter, patch_attributes, to_patch_dtype

#: A VAE small enough to train in a second or two on the CPU.
TINY = {"latent_dim": 3, "widths": [4, 8], "cells_per_slide": 40, "device": "cpu", "mixed_precision": False,
        "train": {"epochs": 2, "batch_size": 16}, "cluster": {"k": 0, "k_min": 2, "k_max": 3, "n_init": 1},
        "metrics": {"sample_size": 200}}


def blobs(n_per=60, centres=((0, 0, 0), (6, 0, 0), (0, 6, 0)), seed=0, spread=0.5):
    """Gaussian blobs around ``centres``: (points, blob index of each point)."""
    rng = np.random.default_rng(seed)
    z = np.concatenate([rng.normal(c, spread, (n_per, len(c))) for c in centres])
    return z, np.repeat(np.arange(len(centres)), n_per)


def write_slide(folder, slide, n, gain, seed, size=16) -> EmbedSlide:
    """Two cell 'types' (disc, ring) with a per-slide gain on channel 0; cells.parquet with a label column."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    r = np.hypot(yy, xx)
    labels = np.where(rng.random(n) < 0.5, "disc", "ring")
    patches = np.zeros((n, 2, size, size), np.float32)
    for i, lab in enumerate(labels):
        radius = rng.uniform(4, 6)
        shape = (r < radius) if lab == "disc" else ((r < radius) & (r > radius - 2))
        patches[i, 0] = shape * min(1.0, 0.6 * gain)
        patches[i, 1] = (r < radius) * 0.3
    patches += rng.normal(0, 0.02, patches.shape).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    with PatchWriter(folder / "patches.zarr", 2, size, "uint8", patch_attributes(["A", "B"], size, "uint8")) as w:
        w.append(to_patch_dtype(np.clip(patches, 0, 1), "uint8"))
    pq.write_table(pa.table({"slide": [slide] * n, "cell_id": np.arange(1, n + 1, dtype=np.int64) * 3,
                             "label": labels.tolist()}), folder / "cells.parquet")
    return EmbedSlide(slide, str(folder / "cells.parquet"), str(folder / "patches.zarr"), patient=slide,
                      condition="c" + slide[-1], batch="b" + slide[-1])


def two_slides(root) -> list[EmbedSlide]:
    """Slides S1 (50 cells, gain 1) and S2 (30 cells, gain 1.5) under ``root``."""
    return [write_slide(root / "S1", "S1", 50, 1.0, 1), write_slide(root / "S2", "S2", 30, 1.5, 2)]
