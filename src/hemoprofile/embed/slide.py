"""The ``embed`` stage for one slide (:func:`embed_slide`: patches -> ``embedding.parquet``), the reader
of embedding tables (:func:`read_embeddings`), and :class:`PatchEncoder`, the embedder as a function
that another stage is handed by its workflow script (stages do not import each other).

``embedding.parquet`` columns: ``slide`` (string), ``cell_id`` (int64; (slide, cell_id) is the key, row
order = cells.parquet), ``z_0`` .. ``z_{d-1}`` (float32, posterior mean), ``map_x``, ``map_y`` (float32,
the first two principal components of the training sample's latent means: the same axes for every
slide), ``cluster`` (int32, the latent cluster, 0..k-1). The schema metadata ``hemoprofile`` holds the
model id and condition.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from hemoprofile.embed.clustering import apply_pca, assign_latent_clusters
from hemoprofile.embed.metrics import json_default
from hemoprofile.embed.model_files import Embedder, load_embedder
from hemoprofile.embed.orientation import maybe_orient
from hemoprofile.embed.sample import read_angles
from hemoprofile.embed.settings import STAGE_VERSION
from hemoprofile.embed.training import encode
from hemoprofile.io import atomic_output, ordered_map, resolve_threads
from hemoprofile.io.patches import check_patches_match_cells, open_patch_array
from hemoprofile.io.tables import read_cell_keys
from hemoprofile.nn.devices import pick_device, ready_for_inference

log = logging.getLogger(__name__)


def embedding_schema(latent_dim: int, metadata: Mapping | None = None) -> pa.Schema:
    """Arrow schema of embedding.parquet (see the module docstring)."""
    fields = [pa.field("slide", pa.string()), pa.field("cell_id", pa.int64())]
    fields += [pa.field(f"z_{i}", pa.float32()) for i in range(latent_dim)]
    fields += [pa.field("map_x", pa.float32()), pa.field("map_y", pa.float32()), pa.field("cluster", pa.int32())]
    meta = {"hemoprofile": json.dumps(dict(metadata), default=json_default)} if metadata else None
    return pa.schema(fields, metadata=meta)


def embed_slide(model_path: str | os.PathLike | Embedder, patches_path: str | os.PathLike,
                cells_path: str | os.PathLike, out_path: str | os.PathLike, *, slide: str | None = None,
                category: str | None = None, device: str = "auto", mixed_precision: bool = True,
                batch_size: int = 1024, threads: int | None = None,
                progress: Callable[[str], None] | None = None) -> dict:
    """The ``embed`` stage for one slide: latent means, map coordinates and latent clusters -> embedding.parquet.

    Streams ``batch_size`` patches at a time and writes one parquet row group per block, so memory is
    bounded whatever the slide's size. A model trained with ``embed.orientation: major_axis`` gets the
    patches rotated the same way as they are read (cells.parquet ``orientation_deg``). ``threads`` (the
    rule's): on a CPU that many blocks are embedded at once, torch on one thread each; the file is byte for
    byte the same for any number (None: torch's own thread setting, one block at a time).

    Parameters
    ----------
    model_path : a model file of :func:`train_embedder` (or a loaded :class:`Embedder`).
    patches_path, cells_path : the slide's patches.zarr and cells.parquet (row i = patch i).
    out_path : embedding.parquet (written atomically).
    slide : slide name (default: the cells table's ``slide`` column).
    category : the slide's cVAE condition value (its slide, batch or condition, as the model's
        ``condition_on``); a value the model was not trained on gets the average condition, with a warning.

    Returns
    -------
    dict: ``slide``, ``n_cells``, ``cluster_counts``, ``model_id``, ``seconds``.

    Raises
    ------
    ValueError naming the files when rows and patches disagree, or the patches' channels or size differ
    from the model's.
    """
    started = time.perf_counter()
    say = progress or (lambda m: log.info(m))
    emb = model_path if isinstance(model_path, Embedder) else load_embedder(model_path)
    array, names, attributes = open_patch_array(patches_path)
    if names != emb.channels or int(array.shape[-1]) != emb.patch_size:
        raise ValueError(f"{patches_path}: channels {names} / patch size {array.shape[-1]} differ from the model's "
                         f"{emb.channels} / {emb.patch_size} ({emb.path})")
    cells = read_cell_keys(cells_path)
    check_patches_match_cells(cells_path, cells.frame(), patches_path, array, attributes)
    slide = slide or (cells.slides(0, 1)[0] if len(cells) else os.path.basename(
        os.path.dirname(os.path.abspath(cells_path))))
    warning = None
    if emb.condition_on != "none":
        if category is None:
            raise ValueError(f"{emb.path} is conditioned on {emb.condition_on}: give the slide's {emb.condition_on}")
        if str(category) not in emb.categories:
            warning = (f"{emb.condition_on} {category!r} of slide {slide} was not in the embedder's training set; "
                       f"using the average condition")
            say("warning: " + warning)
            log.warning(warning)
    dev = pick_device(device, mixed_precision, threads=threads, logger=log)
    d = emb.model.spec.latent_dim
    schema = embedding_schema(d, {"stage": STAGE_VERSION, "model_id": emb.model_id, "condition_on": emb.condition_on,
                                  "category": category, "warning": warning, "map": "pca",
                                  "clustering": emb.clustering["method"], "k": int(emb.clustering["k"])})
    ids = cells.cell_ids
    angles = read_angles(cells_path) if emb.orientation != "none" else None
    counts = np.zeros(int(emb.clustering["k"]), np.int64)
    block = max(1, int(batch_size)) * 4
    # On a CPU, `threads` blocks are embedded at once, torch running each on one thread (the same kernels
    # whatever the thread count, so identical bytes by construction; see classify_slide); rows are written
    # in block order. On a GPU the blocks run one after the other.
    workers = resolve_threads(threads) if threads and dev.device.type == "cpu" else 1
    if workers > 1:
        torch.set_num_threads(1)
    ready_for_inference(emb.model, dev.device)  # converted once here; the worker threads only read it

    def embed_block(s):
        e = min(s + block, len(ids))
        conds = emb.conditions_for([category] * (e - s))
        block_patches = maybe_orient(np.asarray(array[s:e]), emb.orientation, emb.channels,
                                     None if angles is None else angles[s:e])
        z = encode(emb.model, block_patches, conds, dev, batch_size)
        xy = apply_pca(emb.pca, z)
        cl = assign_latent_clusters(emb.clustering, z)
        cols = [pa.array([slide] * (e - s), pa.string()), pa.array(ids[s:e], pa.int64())]
        cols += [pa.array(z[:, i], pa.float32()) for i in range(d)]
        cols += [pa.array(xy[:, 0], pa.float32()), pa.array(xy[:, 1], pa.float32()), pa.array(cl, pa.int32())]
        return e, cl, pa.Table.from_arrays(cols, schema=schema)

    with atomic_output(out_path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for e, cl, table in ordered_map(embed_block, range(0, len(ids), block), workers, processes=True):
            counts += np.bincount(cl, minlength=len(counts))
            writer.write_table(table)
            say(f"{e}/{len(ids)} cells embedded")
        if not len(ids):
            writer.write_table(schema.empty_table())
    seconds = time.perf_counter() - started
    say(f"{slide}: {len(ids)} cells in {seconds:.1f} s; cluster sizes {counts.tolist()}")
    return {"slide": slide, "n_cells": int(len(ids)), "cluster_counts": counts.tolist(), "model_id": emb.model_id,
            "seconds": seconds}


def read_embeddings(paths: Sequence[str | os.PathLike], max_cells: int = 0, seed: int = 0) -> pd.DataFrame:
    """Concatenate embedding.parquet tables, keeping at most ``max_cells`` rows overall (an even share
    per slide, seeded; 0 = all), with a ``row`` column: the row in its slide's table (= cells.parquet)."""
    frames = []
    per = int(math.ceil(max_cells / max(len(paths), 1))) if max_cells else 0
    for i, path in enumerate(paths):
        if not os.path.exists(path):
            raise FileNotFoundError(f"embedding table not found: {path}")
        table = pd.read_parquet(path)
        table["row"] = np.arange(len(table))
        if per and len(table) > per:
            table = table.iloc[np.sort(np.random.default_rng([seed, i]).choice(len(table), per, replace=False))]
        frames.append(table)
    if not frames:
        raise ValueError("no embedding tables given")
    return pd.concat(frames, ignore_index=True)


@dataclass
class PatchEncoder:
    """The embedder as a function: stored patches (n, C, P, P) -> posterior means (n, latent_dim), on the
    CPU, one code path with :func:`embed_slide` (:func:`hemoprofile.embed.training.encode`). The
    interaction stage gets one from its workflow script.

    Attributes
    ----------
    embedder : the loaded model; ``patch_size``, ``latent_dim``, ``model_id`` and ``channels`` are its.
    """

    embedder: Embedder

    @property
    def patch_size(self) -> int:
        return int(self.embedder.patch_size)

    @property
    def latent_dim(self) -> int:
        return int(self.embedder.model.spec.latent_dim)

    @property
    def model_id(self) -> str:
        return self.embedder.model_id

    @property
    def channels(self) -> list[str]:
        return list(self.embedder.channels)

    def __call__(self, patches: np.ndarray, category: str | None = None) -> np.ndarray:
        """Latent means of ``patches``; ``category``: the cVAE condition value (None for a plain VAE)."""
        if self.embedder.condition_on != "none" and category is None:
            raise ValueError(f"{self.embedder.path} is conditioned on {self.embedder.condition_on}: give the "
                             f"{self.embedder.condition_on} of the patches")
        return encode(self.embedder.model, patches, self.embedder.conditions_for([category] * len(patches)))


def patch_encoder(model_path: str | os.PathLike) -> PatchEncoder:
    """A :class:`PatchEncoder` of an embedder model file (:func:`hemoprofile.embed.model_files.load_embedder`)."""
    return PatchEncoder(load_embedder(model_path))
