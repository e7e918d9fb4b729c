"""Sharded segmentation (segment.shards): N shard jobs + one stitch job give exactly the one-job labels;
a shard job killed with SIGKILL resumes and skips its committed blocks; threads do not change a bit."""

import json
import os
import signal
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import zarr
from helpers.segment_images import CHANNELS, disc_cells

from hemoprofile.io import create_ome_zarr_image, open_ome_zarr
from hemoprofile.segment.shards import (
    LEDGER,
    read_ledger,
    segment_shard,
    shard_ranges,
    stitch_shards,
    write_shard_summary,
)
from hemoprofile.segment.tiled import segment_slide

TILE = 64
# 5 x 4 = 20 tiles of 64 px (last row and column partial): 2, 3 and 4 shards do not all divide it evenly
CFG = {"backend": "classical", "diameter": 16, "sample_tiles": 1000, "batch_tiles": 1}
SHAPE = (300, 250)
N_TILES = 5 * 4


def write_preprocessed(path, image):
    array = create_ome_zarr_image(path, image.shape, "uint16", TILE, CHANNELS, pixel_size_um=0.65, name="preprocessed")
    array[:] = np.round(image * 65535).astype(np.uint16)


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    image, _ = disc_cells(shape=SHAPE, n=170, seed=7)
    pre = root / "preprocessed.zarr"
    write_preprocessed(pre, image)
    reference = root / "reference.zarr"
    summary = segment_slide(pre, reference, CFG, seed=5, progress=None)
    assert summary["tiles"] == N_TILES and summary["n_objects"] > 100
    return pre, np.asarray(open_ome_zarr(reference).array[:])


def run_shards(pre, out_dir, shards, cfg=CFG, threads=1):
    summaries = []
    for shard in range(shards):
        summary = segment_shard(pre, out_dir / f"{shard}-of-{shards}.blocks", shard, shards, cfg, seed=5,
                                threads=threads, progress=None)
        path = out_dir / f"{shard}-of-{shards}.json"
        write_shard_summary(summary, path)
        summaries.append(path)
    return summaries


def test_shard_ranges_cover_the_tiles_contiguously_in_whole_batches():
    for n, shards, batch in [(20, 1, 1), (20, 3, 1), (20, 4, 4), (9, 4, 4), (7, 10, 1), (0, 2, 1)]:
        ranges = shard_ranges(n, shards, batch)
        assert len(ranges) == shards and ranges[0][0] == 0 and ranges[-1][1] == n
        assert all(a[1] == b[0] for a, b in pairwise(ranges))
        assert all(start % batch == 0 and start <= stop for start, stop in ranges)
        sizes = [stop - start for start, stop in ranges]
        assert max(sizes) - min(sizes) <= batch
    with pytest.raises(ValueError, match="at least 1"):
        shard_ranges(5, 0)


@pytest.mark.parametrize("shards", [1, 2, 3, 4])
def test_sharded_labels_equal_the_one_job_run(tmp_path, slide, shards):
    pre, reference = slide
    summaries = run_shards(pre, tmp_path, shards)
    records = [json.loads(p.read_text()) for p in summaries]
    assert sum(r["blocks"] for r in records) == N_TILES and all(r["skipped"] == 0 for r in records)
    out = tmp_path / "labels.zarr"
    summary = stitch_shards(pre, out, summaries[::-1], CFG, seed=5, progress=None)  # any order
    labels = np.asarray(open_ome_zarr(out).array[:])
    assert labels.dtype == np.uint32 and np.array_equal(labels, reference)
    assert summary["shards"] == shards and summary["n_objects"] == reference.max()
    assert not list(tmp_path.glob("*.blocks"))  # stores removed once labels.zarr is written


def test_more_shards_than_tiles_leave_empty_shards_and_equal_labels(tmp_path, slide):
    pre, _ = slide
    cfg = {**CFG, "sample_tiles": 4}
    reference = tmp_path / "reference.zarr"
    segment_slide(pre, reference, cfg, seed=5, progress=None)
    summaries = run_shards(pre, tmp_path, N_TILES + 2, cfg)
    blocks = [json.loads(p.read_text())["blocks"] for p in summaries]
    assert sorted(blocks) == [0, 0] + [1] * N_TILES
    stitch_shards(pre, tmp_path / "labels.zarr", summaries, cfg, seed=5, progress=None)
    assert np.array_equal(open_ome_zarr(tmp_path / "labels.zarr").array[:], open_ome_zarr(reference).array[:])


def test_stitch_refuses_missing_or_foreign_shards(tmp_path, slide):
    pre, _ = slide
    summaries = run_shards(pre, tmp_path, 3)
    with pytest.raises(ValueError, match="expected it to start at"):
        stitch_shards(pre, tmp_path / "a.zarr", [summaries[0], summaries[2]], CFG, seed=5, progress=None)
    with pytest.raises(ValueError, match="shards cover tiles"):
        stitch_shards(pre, tmp_path / "a.zarr", summaries[:2], CFG, seed=5, progress=None)
    with pytest.raises(ValueError, match="other settings"):
        stitch_shards(pre, tmp_path / "a.zarr", summaries, {**CFG, "diameter": 14}, seed=5, progress=None)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json: not a readable shard summary"):
        stitch_shards(pre, tmp_path / "a.zarr", [tmp_path / "bad.json"], CFG, seed=5, progress=None)
    assert not (tmp_path / "a.zarr").exists()


def test_threads_give_bitwise_identical_labels_and_windows(tmp_path, slide):
    pre, reference = slide
    two = tmp_path / "two.zarr"
    segment_slide(pre, two, CFG, seed=5, progress=None, threads=2)
    assert np.array_equal(np.asarray(open_ome_zarr(two).array[:]), reference)
    stores = {}
    for threads in (1, 2):
        store = tmp_path / f"t{threads}.blocks"
        segment_shard(pre, store, 0, 1, CFG, seed=5, threads=threads, progress=None)
        stores[threads] = np.asarray(zarr.open_array(str(store / "windows.zarr"), mode="r")[:])
    assert stores[1].tobytes() == stores[2].tobytes()


def test_store_from_other_settings_is_wiped_not_mixed(tmp_path, slide):
    pre, _ = slide
    store = tmp_path / "0-of-2.blocks"
    segment_shard(pre, store, 0, 2, CFG, seed=5, progress=None)
    again = segment_shard(pre, store, 0, 2, CFG, seed=5, progress=None)
    assert again["skipped"] == again["blocks"] and again["segmented"] == 0
    changed = segment_shard(pre, store, 0, 2, {**CFG, "diameter": 14}, seed=5, progress=None)
    assert changed["skipped"] == 0 and changed["segmented"] == changed["blocks"]


KILLED_JOB = """
import sys, time
from hemoprofile.segment.segmenter import build_segmenter
from hemoprofile.segment.shards import segment_shard

class Slow:  # the classical backend, 0.25 s per window, so the test can kill the job halfway
    def __init__(self, inner):
        self.inner = inner
    def __getattr__(self, name):
        return getattr(self.inner, name)
    def segment(self, windows):
        time.sleep(0.25)
        return self.inner.segment(windows)

cfg = {cfg!r}
segment_shard(sys.argv[1], sys.argv[2], 0, 1, cfg, seed=5, segmenter=Slow(build_segmenter(cfg)), progress=None)
"""


def test_killed_shard_job_resumes_and_skips_committed_blocks(tmp_path, slide):
    pre, reference = slide
    store = tmp_path / "0-of-1.blocks"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[3] / "src"),
                                                         os.environ.get("PYTHONPATH", "")])}
    job = subprocess.Popen([sys.executable, "-c", KILLED_JOB.format(cfg=CFG), str(pre), str(store)], env=env)
    deadline = time.monotonic() + 60
    while len(read_ledger(store)) < 6:
        assert job.poll() is None, "the shard job ended before it could be killed"
        assert time.monotonic() < deadline, "no blocks committed within 60 s"
        time.sleep(0.05)
    os.kill(job.pid, signal.SIGKILL)
    job.wait()
    committed = read_ledger(store)
    assert 6 <= len(committed) < N_TILES and committed == set(range(len(committed)))
    # a line cut by the kill (no newline) does not count
    with open(store / LEDGER, "a") as ledger:
        ledger.write(str(N_TILES - 1))
    assert read_ledger(store) == committed

    started = time.perf_counter()
    resumed = segment_shard(pre, store, 0, 1, CFG, seed=5, progress=None)
    resumed_s = time.perf_counter() - started
    assert resumed["skipped"] == len(committed) and resumed["segmented"] == N_TILES - len(committed)
    assert (store / LEDGER).read_text().split() == [str(i) for i in range(N_TILES)]  # the cut line is gone
    summary = tmp_path / "0-of-1.json"
    write_shard_summary(resumed, summary)
    stitch_shards(pre, tmp_path / "labels.zarr", [summary], CFG, seed=5, progress=None)
    assert np.array_equal(np.asarray(open_ome_zarr(tmp_path / "labels.zarr").array[:]), reference)

    started = time.perf_counter()
    segment_shard(pre, tmp_path / "full.blocks", 0, 1, CFG, seed=5, progress=None)
    full_s = time.perf_counter() - started
    print(f"resumed run {resumed_s:.2f} s ({resumed['segmented']} of {N_TILES} blocks) vs full run {full_s:.2f} s")
