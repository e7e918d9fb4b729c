"""Inference: class probabilities of a model for stored patches (with optional dihedral test-time
augmentation), channels matched to the model's by name, and the ``classify`` stage
(:func:`classify_slide`: patches.zarr -> predictions.parquet, block by block).

Hierarchical models give p(lineage) x p(type | lineage) for each leaf class.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from hemoprofile.classify.checkpoints import LoadedClassifier, load_classifier
from hemoprofile.io import atomic_output, ordered_map, resolve_threads
from hemoprofile.io.patches import check_patches_match_cells, open_patch_array
from hemoprofile.io.tables import read_cell_keys
from hemoprofile.nn.augment import centre_crop, dihedral, to_unit_float
from hemoprofile.nn.devices import DeviceChoice, pick_device, ready_for_inference

log = logging.getLogger(__name__)

TTA_ORDER = (0, 4, 2, 6, 1, 5, 3, 7)  # identity, flip, 180, 180+flip, 90, ...


@torch.no_grad()
def predict_proba(model: torch.nn.Module, patches, device: DeviceChoice, batch_size: int = 256,
                   tta: int = 1, input_size: int | None = None) -> torch.Tensor:
    """Softmax probabilities (float32, on the CPU) of ``model`` for ``patches`` (N, C, H, W) as stored.

    With ``tta`` > 1 the probabilities are averaged over the first ``tta`` dihedral transforms of
    :data:`TTA_ORDER`; ``input_size`` centre-crops larger patches.
    """
    if tta not in (1, 2, 4, 8):
        raise ValueError(f"tta must be 1, 2, 4 or 8, got {tta}")
    # on the device and in the inputs' memory layout (no per-batch conversions); a no-op when already so
    ready_for_inference(model, device.device, channels_last=True)
    out = []
    for start in range(0, len(patches), batch_size):
        x = to_unit_float(patches[start:start + batch_size])
        if input_size and x.shape[-1] != input_size:
            x = centre_crop(x, input_size)
        x = x.to(device.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        p = 0
        for k in TTA_ORDER[:tta]:
            with device.autocast():
                logits = model(dihedral(x, k) if k else x)
            p = p + torch.softmax(logits.float(), 1)
        out.append((p / tta).cpu())
    return torch.cat(out) if out else torch.zeros((0, model.spec.n_classes))


def _prepare_input(x: torch.Tensor, index: list[int | None], input_size: int) -> torch.Tensor:
    """Reorder channels to the model's (a missing channel becomes zeros, as in channel dropout) and
    centre-crop or zero-pad to the model's input size."""
    if index != list(range(x.shape[1])):
        out = torch.zeros((x.shape[0], len(index), *x.shape[2:]), dtype=x.dtype)
        for i, j in enumerate(index):
            if j is not None:
                out[:, i] = x[:, j]
        x = out
    size = x.shape[-1]
    if size > input_size:
        x = centre_crop(x, input_size)
    elif size < input_size:
        lo = (input_size - size) // 2
        x = F.pad(x, (lo, input_size - size - lo, lo, input_size - size - lo))
    return x


def channel_index(model_channels: Sequence[str], patch_channels: Sequence[str], where: str = "") -> list[int | None]:
    """Position in ``patch_channels`` of each model channel (``None``: absent, fed as zeros).

    When no name matches but the counts agree (e.g. an RGB collection named differently), channels are
    taken by position, with a warning; when nothing matches otherwise, a ValueError names both lists.
    """
    names = list(patch_channels)
    index = [names.index(c) if c in names else None for c in model_channels]
    if all(i is None for i in index):
        if len(model_channels) == len(names):
            log.warning("%s: no channel names match the model's %s; using channels %s by position",
                        where, list(model_channels), names)
            return list(range(len(names)))
        raise ValueError(f"{where}: none of the model's channels {list(model_channels)} is among {names}")
    missing = [c for c, i in zip(model_channels, index) if i is None]
    if missing:
        log.warning("%s: channel(s) %s absent; the model sees them as zeros", where, missing)
    return index


@torch.no_grad()
def classifier_probabilities(clf: LoadedClassifier, patches, device: DeviceChoice, batch_size: int = 1024,
                             tta: int = 1, patch_channels: Sequence[str] | None = None,
                             index: list[int | None] | None = None) -> np.ndarray:
    """Class probabilities (N, len(clf.output_classes)) for patches (N, C, P, P) as stored.

    Channels are matched by name when ``patch_channels`` is given (or by a precomputed ``index`` from
    :func:`channel_index`), else taken in order. Hierarchical models give p(lineage) x p(type | lineage)
    for each leaf class.
    """
    if index is None:
        index = channel_index(clf.channels, patch_channels, clf.path) if patch_channels is not None else \
            list(range(len(clf.channels)))
    model = ready_for_inference(clf.model, device.device, channels_last=True)
    children = {k: ready_for_inference(c.model, device.device, channels_last=True) for k, c in clf.children.items()}
    out = []
    for start in range(0, len(patches), batch_size):
        x = _prepare_input(to_unit_float(np.asarray(patches[start:start + batch_size])), index, clf.input_size)
        p = predict_proba(model, x, device, len(x) or 1, tta)
        if children:
            leaves = [p[:, k:k + 1] * predict_proba(children[lin], x, device, len(x) or 1, tta)
                      for k, lin in enumerate(clf.classes)]
            p = torch.cat(leaves, 1)
        out.append(p.numpy().astype(np.float32))
    return np.concatenate(out) if out else np.zeros((0, len(clf.output_classes)), np.float32)


def prediction_columns(clf: LoadedClassifier) -> list[str]:
    """Column names ``p_<task>_<class>`` of a classifier's probabilities."""
    return [f"p_{clf.task}_{c}" for c in clf.output_classes]


def classify_slide(patches_path: str | os.PathLike, cells_path: str | os.PathLike, model_paths: Sequence[str],
                   out_path: str | os.PathLike, device: str = "auto", mixed_precision: bool = True,
                   batch_size: int = 1024, tta: int = 1, threads: int | None = None,
                   progress: Callable[[str], None] | None = None) -> dict:
    """The ``classify`` stage: predict every cell of a slide with each model; write predictions.parquet.

    Reads patches.zarr block by block (``batch_size`` cells), so memory is bounded whatever the slide
    size, and streams row groups to parquet. Columns: slide, cell_id, then per model ``p_<task>_<class>``
    (float32), ``pred_<task>`` (string, the most probable class) and ``model_<task>`` (model id).

    ``threads`` (the rule's): on a CPU that many blocks are classified at once, torch running each on
    one thread (:func:`hemoprofile.io.ordered_map`; rows are written in block order, so the file is byte
    for byte the same for any number); None leaves torch's own thread setting and one block at a time.

    Returns
    -------
    dict with slide, n_cells, seconds, cells_per_second, device, model ids.
    """
    progress = progress or (lambda m: log.info(m))
    dev = pick_device(device, mixed_precision, threads=threads)
    array, channels, attributes = open_patch_array(patches_path)
    cells = read_cell_keys(cells_path)
    check_patches_match_cells(cells_path, cells.frame(), patches_path, array, attributes)
    models = [load_classifier(p) for p in model_paths]
    tasks = [m.task for m in models]
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"two models for the same task among {list(model_paths)}: {tasks}")
    # matched once per model (fails early on disjoint channels, warns once about absent ones)
    indices = [channel_index(m.channels, channels, f"{m.path} on {patches_path}") for m in models]
    fields = [pa.field("slide", pa.string()), pa.field("cell_id", pa.int64())]
    for m in models:
        fields += [pa.field(c, pa.float32()) for c in prediction_columns(m)]
        fields += [pa.field(f"pred_{m.task}", pa.string()), pa.field(f"model_{m.task}", pa.string())]
    schema = pa.schema(fields, metadata={"hemoprofile": json.dumps(
        {"models": {m.task: {"id": m.model_id, "file": m.path, "classes": m.output_classes} for m in models},
         # the thread count is left out: it does not change a byte of the results (test_classify_threads)
         "device": re.sub(r" \(\d+ threads\)", "", dev.description), "tta": tta,
         "patches": str(patches_path)})})
    n = len(cells)
    start, done, last_report = time.perf_counter(), 0, 0.0
    progress(f"{n} cells, {len(models)} model(s) {tasks}, {dev.description}")

    # On a CPU, `threads` blocks are classified at once, each by torch on one thread: every block goes
    # through the same single-threaded kernels whatever the thread count (identical bytes by
    # construction), reading and decoding overlap, and no intra-op barrier waits on a descheduled
    # thread when the machine is shared. On a GPU the blocks run one after the other.
    workers = resolve_threads(threads) if threads and dev.device.type == "cpu" else 1
    if workers > 1:
        torch.set_num_threads(1)
    for m in models:  # converted here, once, so the worker threads only read the weights
        ready_for_inference(m.model, dev.device, channels_last=True)
        for child in m.children.values():
            ready_for_inference(child.model, dev.device, channels_last=True)

    def read(lo):
        return np.asarray(array[lo:min(lo + batch_size, n)])

    def predict_block(lo, block):
        hi = lo + len(block)
        cols = {"slide": pa.array(cells.slides(lo, hi), pa.string()), "cell_id": pa.array(cells.cell_ids[lo:hi])}
        for m, index in zip(models, indices):
            p = classifier_probabilities(m, block, dev, batch_size, tta, index=index)
            for j, name in enumerate(prediction_columns(m)):
                cols[name] = pa.array(p[:, j])
            classes = np.array(m.output_classes, dtype=object)
            cols[f"pred_{m.task}"] = pa.array(classes[p.argmax(1)].tolist() if len(p) else [], pa.string())
            cols[f"model_{m.task}"] = pa.array([m.model_id] * (hi - lo), pa.string())
        return pa.table([cols[f.name] for f in schema], schema=schema)

    def prefetched(pool):
        # the next block is read and decompressed (Blosc releases the GIL) while this one is classified
        pending = pool.submit(read, 0) if n else None
        for lo in range(0, n, batch_size):
            hi = min(lo + batch_size, n)
            block = pending.result()
            if hi < n:
                pending = pool.submit(read, hi)
            yield predict_block(lo, block)

    with atomic_output(out_path) as tmp, pq.ParquetWriter(tmp, schema) as writer, ThreadPoolExecutor(1) as pool:
        tables = (prefetched(pool) if workers == 1 else
                  ordered_map(lambda lo: predict_block(lo, read(lo)), range(0, n, batch_size), workers,
                              processes=True))
        for table in tables:  # written in block order
            writer.write_table(table)
            done += table.num_rows
            elapsed = time.perf_counter() - start
            if elapsed - last_report >= 10 or done == n:
                last_report = elapsed
                progress(f"{done}/{n} cells, {done / max(elapsed, 1e-9):.0f} cells/s")
        if n == 0:
            writer.write_table(schema.empty_table())
    seconds = time.perf_counter() - start
    rate = n / seconds if seconds > 0 else float("inf")
    progress(f"wrote {out_path}: {n} cells in {seconds:.1f} s ({rate:.0f} cells/s)")
    return {"slide": cells.slides(0, 1)[0] if n else None, "n_cells": n, "seconds": seconds,
            "cells_per_second": rate, "device": dev.description, "models": {m.task: m.model_id for m in models}}
