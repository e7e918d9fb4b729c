"""Segmentation of one slide split into shard jobs (one GPU each), resumable block by block, and the
stitch job that turns the shards' windows into ``labels.zarr`` (``segment.shards: N`` in the workflow).

Design
    The slide's tiles (the preprocessed image's chunks, row-major) are cut into N contiguous ranges
    (:func:`shard_ranges`; with Cellpose aligned to ``batch_tiles``, so each eval call gets the same
    windows as in the unsharded run). A shard job (:func:`segment_shard`) segments the halo window of
    each of its tiles, exactly as :func:`hemoprofile.segment.tiled.segment_tiled` does, and stores each window's own labels
    (local ids, one zarr chunk per window) in a block store. The stitch job (:func:`stitch_shards`) then
    runs the existing stitcher of :mod:`hemoprofile.segment.tiled` over all tiles in row-major order,
    reading the stored windows instead of segmenting: the costly part (the network) runs in parallel on N
    GPUs, the cheap part (centroid ownership, duplicate test, running id counter) runs once on a CPU, and
    the labels EQUAL the unsharded run's by construction (same windows, same stitcher, same order; the
    shards calibrate on the same seeded tile sample).

Resumable by block
    A shard job commits each window as it completes: the chunk is written, then its tile index is
    appended to the store's ledger (``ledger.txt``, one line per block, flushed and fsynced; a line
    without its newline, from a kill mid-write, does not count). A job killed halfway and restarted
    reads the ledger and skips the committed blocks; a block whose chunk was half written has no
    ledger line and is segmented again. The store records a fingerprint of everything its windows
    depend on (source, tile grid, range, segment settings, seed, stage version); a store from other
    settings is wiped, never mixed. The store is not a Snakemake output (Snakemake deletes the outputs
    of an incomplete job before rerunning it, which would throw the finished blocks away): the shard's
    declared output is a small summary written when the shard is complete, and the stitch job removes
    the stores once ``labels.zarr`` is written.

What we took from Cellpose's ``contrib/distributed_segmentation.py`` and Sopa, and why
    - Cellpose contrib: blocks segmented independently with an overlap of about 2 diameters (our halo,
      ``overlap_diameters``), written to a temporary zarr, a cheap single stitching step run apart from
      the GPU workers. Not taken: its merge (labels made globally unique per block, faces compared, a
      connected-components relabel). Trimming the overlap and merging only labels that touch across a
      face cuts a cell that the two blocks segmented differently, and the relabel vector (one entry per
      label of the whole image) is loaded by every worker, which is what runs out of memory on large
      2-D images. Here an object is kept whole by the one tile that owns its centroid (the seam rule of
      the existing stitcher) and ids come from one running counter in the stitch job, which holds only
      one integer per object (areas) and a few windows: no relabel vector exists.
    - Sopa: a list of patches, one job per patch writing its own file, a resolve step that unions cells
      of overlapping patches, and patch results cached so a rerun redoes only what is missing. Taken:
      per-shard outputs listed by the stitch rule's input (no checkpoint needed, N is config), and the
      cache idea, brought down to the block inside a job (the ledger). Not taken: polygon union of
      conflicting cells (shapely), which would not give the unsharded run's labels; our resolve is the
      existing raster stitcher.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from itertools import pairwise
from pathlib import Path

import numpy as np
import zarr

from hemoprofile import STAGE_VERSIONS
from hemoprofile.io import atomic_output, halo_window, iter_tiles, open_ome_zarr
from hemoprofile.segment.input import select_channels
from hemoprofile.segment.settings import segment_settings
from hemoprofile.segment.tiled import (
    calibrate_segmenter,
    halo_pixels,
    segment_slide,
    segment_windows,
)

LEDGER = "ledger.txt"
FINGERPRINT = "fingerprint.json"
WINDOWS = "windows.zarr"


def shard_ranges(n_tiles: int, shards: int, batch_tiles: int = 1) -> list[tuple[int, int]]:
    """Split tiles 0..n_tiles into ``shards`` contiguous [start, stop) ranges of whole batches.

    Ranges differ in size by at most one batch; with more shards than batches some are empty.

    Example
    -------
    >>> shard_ranges(10, 3)
    [(0, 3), (3, 6), (6, 10)]
    >>> shard_ranges(10, 3, batch_tiles=4)
    [(0, 4), (4, 8), (8, 10)]
    """
    if int(shards) < 1:
        raise ValueError(f"segment.shards must be at least 1, got {shards}")
    batch = max(1, int(batch_tiles))
    n_batches = -(-int(n_tiles) // batch)
    bounds = [i * n_batches // shards for i in range(shards + 1)]
    return [(min(b0 * batch, n_tiles), min(b1 * batch, n_tiles)) for b0, b1 in pairwise(bounds)]


def _shard_batch(cfg: Mapping) -> int:
    # Cellpose pads the windows of one eval call to the largest, so a shard keeps the unsharded run's
    # batches whole; the classical backend segments each window alone, so any tile can start a shard.
    return max(1, int(cfg["batch_tiles"])) if cfg["backend"] == "cellpose" else 1


def read_ledger(store) -> set[int]:
    """Tile indices committed in a shard store (complete lines of its ledger only)."""
    path = Path(store) / LEDGER
    if not path.exists():
        return set()
    text = path.read_text()
    lines = text.split("\n")[:-1]  # the part after the last newline is a line cut by a kill
    return {int(line) for line in lines if line.strip()}


def _drop_cut_line(store: Path) -> None:
    """Remove a ledger's last line when a kill cut it (no newline), so appends start on a fresh line."""
    path = store / LEDGER
    if path.exists():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(path, "r+b") as ledger:
                ledger.truncate(data.rfind(b"\n") + 1)


def _json_safe(value):
    return json.loads(json.dumps(value, default=str))


def _fingerprint(preprocessed_path, shape, tile_size: int, start: int, stop: int, cfg: Mapping, seed: int) -> dict:
    return _json_safe({
        "version": STAGE_VERSIONS.get("segment"),
        "source": str(Path(preprocessed_path).resolve()),
        "shape": list(shape),
        "tile_size": tile_size,
        "range": [start, stop],
        "segment": {k: v for k, v in cfg.items() if k != "shards"},
        "seed": seed,
    })


def _open_store(store: Path, fingerprint: dict, n: int, window: int) -> tuple[zarr.Array, set[int]]:
    """Open a shard's block store for resuming, or (re)create it when absent or from other settings."""
    fp_path = store / FINGERPRINT
    if fp_path.exists() and (store / WINDOWS).exists():
        try:
            same = json.loads(fp_path.read_text()) == fingerprint
        except json.JSONDecodeError:
            same = False
        if same:
            _drop_cut_line(store)
            return zarr.open_array(str(store / WINDOWS), mode="r+"), read_ledger(store)
    if store.exists():
        shutil.rmtree(store)
    store.mkdir(parents=True)
    array = zarr.create_array(str(store / WINDOWS), shape=(max(n, 1), window, window), chunks=(1, window, window),
                              dtype="int32", fill_value=0)
    with atomic_output(fp_path) as tmp:
        Path(tmp).write_text(json.dumps(fingerprint, indent=1))
    return array, set()


def segment_shard(
    preprocessed_path,
    store,
    shard: int,
    shards: int,
    segment_cfg: Mapping | None = None,
    seed: int = 0,
    segmenter=None,
    threads: int = 1,
    progress: Callable[[str], None] | None = print,
) -> dict:
    """Segment shard ``shard`` of ``shards`` of a slide into a resumable block store (see the module doc).

    Parameters
    ----------
    preprocessed_path : ``results/<slide>/preprocessed.zarr``.
    store : the shard's block store (a folder; created, resumed, or wiped when its settings differ).
    shard, shards : which contiguous range of tiles (0-based) of how many.
    segment_cfg, seed, segmenter, threads : as for :func:`hemoprofile.segment.tiled.segment_slide`.
    progress : called with progress messages; None for silence.

    Returns
    -------
    dict: ``shard``, ``shards``, ``range`` [start, stop), ``blocks`` (tiles in the range), ``skipped``
    (committed by an earlier, interrupted run), ``segmented``, ``seconds``, ``store``.

    Example
    -------
    >>> segment_shard("results/s1/preprocessed.zarr", "results/s1/segment_shards/0-of-4.blocks", 0, 4)  # doctest: +SKIP
    """
    cfg = segment_settings(segment_cfg)
    say = progress or (lambda message: None)
    if not 0 <= int(shard) < int(shards):
        raise ValueError(f"shard {shard} is not one of 0..{int(shards) - 1}")
    started = time.perf_counter()
    image = open_ome_zarr(preprocessed_path)
    source = image.array
    if source.ndim != 3:
        raise ValueError(f"{preprocessed_path}: expected a (c, y, x) image, got shape {source.shape}")
    shape_yx = tuple(int(s) for s in source.shape[1:])
    tile_size = int(source.chunks[-1])
    selection = select_channels(image.channel_names, cfg["channels"]["nucleus"], cfg["channels"]["cytoplasm"],
                                str(preprocessed_path))
    tiles = list(iter_tiles(shape_yx, tile_size))
    start, stop = shard_ranges(len(tiles), int(shards), _shard_batch(cfg))[int(shard)]
    halo = halo_pixels(cfg)
    store = Path(store)
    fingerprint = _fingerprint(preprocessed_path, source.shape, tile_size, start, stop, cfg, seed)
    array, done = _open_store(store, fingerprint, stop - start, tile_size + 2 * halo)
    todo = [i for i in range(start, stop) if i not in done]
    say(f"shard {shard + 1}/{shards}: tiles {start}..{stop - 1} of {len(tiles)}, {len(done)} already committed, "
        f"{len(todo)} to segment" if stop > start else f"shard {shard + 1}/{shards}: no tiles (more shards than batches)")
    if todo:
        segmenter = calibrate_segmenter(source, selection, tiles, shape_yx, cfg, seed, segmenter)
        windows = [halo_window(tiles[i], halo, shape_yx) for i in todo]
        # Keep whole batches of the unsharded run together: resume restarts at a batch boundary.
        batch = max(1, int(cfg["batch_tiles"]))
        with open(store / LEDGER, "a") as ledger:
            step = max(1, len(todo) // 10)
            for n, (index, window, labels) in enumerate(
                zip(todo, windows, segment_windows(segmenter, source, selection.indices, windows, batch, threads)),
                start=1,
            ):
                h, w = window[1] - window[0], window[3] - window[2]
                block = np.zeros(array.shape[1:], np.int32)
                block[:h, :w] = labels
                array[index - start] = block
                ledger.write(f"{index}\n")  # committed only after its chunk is written
                ledger.flush()
                os.fsync(ledger.fileno())
                if n % step == 0 or n == len(todo):
                    say(f"shard {shard + 1}/{shards}: {n}/{len(todo)} blocks")
    missing = set(range(start, stop)) - read_ledger(store)
    if missing:
        raise RuntimeError(f"{store}: blocks {sorted(missing)[:5]} not committed after the run")
    return {"shard": int(shard), "shards": int(shards), "range": [start, stop], "blocks": stop - start,
            "skipped": len(done & set(range(start, stop))), "segmented": len(todo),
            "seconds": round(time.perf_counter() - started, 3), "store": str(store), "fingerprint": fingerprint}


def write_shard_summary(summary: Mapping, path) -> None:
    """Write a shard job's summary (its declared output; the stitch job's input) atomically."""
    with atomic_output(path) as tmp:
        Path(tmp).write_text(json.dumps(_json_safe(dict(summary)), indent=1))


def stitch_shards(
    preprocessed_path,
    labels_path,
    summaries: Sequence,
    segment_cfg: Mapping | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = print,
    remove_stores: bool = True,
    **slide_options,
) -> dict:
    """Stitch the shard jobs' windows into ``labels.zarr`` with the existing stitcher (see the module doc).

    Parameters
    ----------
    preprocessed_path : the slide's ``preprocessed.zarr`` (geometry, pixel size and provenance).
    labels_path : ``labels.zarr`` to write (atomically).
    summaries : the shard jobs' summary files (:func:`write_shard_summary`), any order.
    segment_cfg, seed : the settings the shards ran with (checked against their fingerprints).
    progress : called with progress messages; None for silence.
    remove_stores : delete the shards' block stores once ``labels.zarr`` is written.
    slide_options : passed to :func:`hemoprofile.segment.tiled.segment_slide` (e.g. ``pyramid_smallest``), as the
        unsharded rule passes them, so that both write the same labels.zarr.

    Returns
    -------
    :func:`hemoprofile.segment.tiled.segment_slide`'s summary plus ``shards``.
    """
    cfg = segment_settings(segment_cfg)
    records = []
    for path in summaries:
        try:
            records.append((Path(path), json.loads(Path(path).read_text())))
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"{path}: not a readable shard summary ({error})") from error
    records.sort(key=lambda r: r[1]["range"][0])
    image = open_ome_zarr(preprocessed_path)
    tile_size = int(image.array.chunks[-1])
    n_tiles = len(list(iter_tiles(image.array.shape[1:], tile_size)))
    expected = 0
    stores = []
    for path, record in records:
        start, stop = record["range"]
        if start != expected:
            raise ValueError(f"{path}: shard covers tiles {start}..{stop - 1}, expected it to start at {expected} "
                             f"(shards missing or from another split)")
        want = _fingerprint(preprocessed_path, image.array.shape, tile_size, start, stop, cfg, seed)
        if record.get("fingerprint") != want:
            raise ValueError(f"{path}: shard was segmented with other settings or another image; rerun it")
        store = Path(record["store"])
        if not (store / WINDOWS).exists():
            raise ValueError(f"{path}: its block store {store} is gone; delete the summary to rerun the shard")
        missing = set(range(start, stop)) - read_ledger(store)
        if missing:
            raise ValueError(f"{store}: blocks {sorted(missing)[:5]} were never committed")
        stores.append((start, stop, zarr.open_array(str(store / WINDOWS), mode="r")))
        expected = stop
    if expected != n_tiles:
        raise ValueError(f"{preprocessed_path}: shards cover tiles 0..{expected - 1} of {n_tiles}")

    def window_labels(tiles, windows):
        for index, window in enumerate(windows):
            start, _, array = next(s for s in stores if s[0] <= index < s[1])
            yield np.asarray(array[index - start, : window[1] - window[0], : window[3] - window[2]])

    summary = segment_slide(preprocessed_path, labels_path, cfg, seed=seed, progress=progress,
                            window_labels=window_labels, **slide_options)
    if remove_stores:
        for path, record in records:
            shutil.rmtree(record["store"], ignore_errors=True)
    return {**summary, "shards": len(records)}
