"""Sharded segmentation: time of a resumed shard job (killed with SIGKILL halfway) against a full run, and
of N shard jobs + the stitch against the one-job segmentation, on one synthetic slide (classical backend).

    PYTHONPATH=src python bench/segment_shards.py --size 2048 --tile 256 --shards 4

Prints a table; the shards run one after another here (on a cluster they run in parallel, so the wall
time there is the slowest shard plus the stitch).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers.segment_images import CHANNELS, disc_cells

from hemoprofile.io import create_ome_zarr_image
from hemoprofile.segment.shards import (
    read_ledger,
    segment_shard,
    stitch_shards,
    write_shard_summary,
)
from hemoprofile.segment.tiled import segment_slide

CFG = {"backend": "classical", "diameter": 16}
SHARD_JOB = ("import sys; from hemoprofile.segment.shards import segment_shard; "
             "segment_shard(sys.argv[1], sys.argv[2], 0, 1, {cfg!r}, seed=0, progress=None)")


def timed(fn, *args, **kwargs):
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=2048, help="slide edge in px")
    parser.add_argument("--tile", type=int, default=256, help="tile (chunk) edge in px")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--kill-at", type=float, default=0.5, help="fraction of blocks committed before the kill")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_shards_"))
    image, _ = disc_cells(shape=(args.size, args.size), n=int(args.size**2 / 450), seed=1)
    pre = root / "preprocessed.zarr"
    array = create_ome_zarr_image(pre, image.shape, "uint16", args.tile, CHANNELS, pixel_size_um=0.65, name="pre")
    array[:] = np.round(image * 65535).astype(np.uint16)
    n_tiles = (-(-args.size // args.tile)) ** 2

    one, t_one = timed(segment_slide, pre, root / "one.zarr", CFG, seed=0, progress=None)
    summaries, t_shards = [], []
    for shard in range(args.shards):
        s, t = timed(segment_shard, pre, root / f"{shard}.blocks", shard, args.shards, CFG, seed=0, progress=None)
        write_shard_summary(s, root / f"{shard}.json")
        summaries.append(root / f"{shard}.json")
        t_shards.append(t)
    _, t_stitch = timed(stitch_shards, pre, root / "sharded.zarr", summaries, CFG, seed=0, progress=None)
    equal = np.array_equal(zarr.open_group(str(root / "one.zarr"))["0"][:], zarr.open_group(str(root / "sharded.zarr"))["0"][:])

    _, t_full = timed(segment_shard, pre, root / "full.blocks", 0, 1, CFG, seed=0, progress=None)
    store = root / "killed.blocks"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    job = subprocess.Popen([sys.executable, "-c", SHARD_JOB.format(cfg=CFG), str(pre), str(store)], env=env)
    while len(read_ledger(store)) < args.kill_at * n_tiles and job.poll() is None:
        time.sleep(0.02)
    os.kill(job.pid, signal.SIGKILL)
    job.wait()
    committed = len(read_ledger(store))
    resumed, t_resumed = timed(segment_shard, pre, store, 0, 1, CFG, seed=0, progress=None)

    print(f"slide {args.size} x {args.size} px, {n_tiles} tiles of {args.tile} px, {one['n_objects']} objects, classical")
    print("| run | seconds |\n|---|---|")
    print(f"| one job (segment_slide) | {t_one:.2f} |")
    print(f"| {args.shards} shard jobs, one after another | {sum(t_shards):.2f} (slowest {max(t_shards):.2f}) |")
    print(f"| stitch job | {t_stitch:.2f} |")
    print(f"| sharded labels equal one-job labels | {equal} |")
    print(f"| full shard job (all {n_tiles} blocks) | {t_full:.2f} |")
    print(f"| resumed after SIGKILL ({committed} of {n_tiles} blocks committed, {resumed['segmented']} redone) "
          f"| {t_resumed:.2f} ({t_resumed / t_full:.2f} x full) |")


if __name__ == "__main__":
    main()
