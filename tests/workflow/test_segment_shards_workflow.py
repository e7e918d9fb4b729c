"""segment.shards through Snakemake: a shard job killed with SIGKILL (Snakemake and the job at once) keeps
its committed blocks across the rerun (the block store is not a Snakemake output, so it is not deleted
as an incomplete output), the rerun skips them, and the stitched labels.zarr equals the one-job
segmentation of the same preprocessed image.

The slide is 12 x 12 frames of 128 px in 128 px tiles (144 tiles, 72 per shard), classical backend, so
a shard runs for a few seconds and the kill lands inside it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr

from hemoprofile.segment.shards import read_ledger
from hemoprofile.segment.tiled import segment_slide

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
SLIDE = "P01_S1"
SHARDS = 2
SEGMENT = {"backend": "classical", "shards": SHARDS}
CONFIG = {
    "results": "results",
    "seed": 0,
    "synthetic": {
        "enabled": True,
        "seed": 3,
        "frame": {"height": 128, "width": 128},
        "grid": {"rows": 12, "cols": 12},
        "cells_per_frame": 15,
        "conditions": {"control": {"patients": 1, "composition": {"CD4_T": 0.3, "granulocyte": 0.7}}},
    },
    "tile": {"size": 128},
    "preprocess": {"sample_tiles": 4},
    "segment": SEGMENT,
}
LABELS = f"results/{SLIDE}/labels.zarr"


def command(workdir: Path, *args: str) -> list[str]:
    return [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", "1", *args]


def run(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(command(workdir, *args), capture_output=True, text=True, cwd=workdir, timeout=600)


@pytest.mark.slow
def test_killed_shard_job_resumes_under_snakemake_and_labels_equal_the_one_job_run(tmp_path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    pre = f"results/{SLIDE}/preprocessed.zarr"
    result = run(tmp_path, pre)
    assert result.returncode == 0, result.stdout + result.stderr

    store = tmp_path / f"results/{SLIDE}/segment_shards/0-of-{SHARDS}.blocks"
    job = subprocess.Popen(command(tmp_path, LABELS), cwd=tmp_path, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while len(read_ledger(store)) < 8:
        assert job.poll() is None, "Snakemake ended before the shard job could be killed"
        assert time.monotonic() < deadline, "no blocks committed within 300 s"
        time.sleep(0.05)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    committed = read_ledger(store)
    assert 8 <= len(committed) < 72, len(committed)
    assert not (tmp_path / LABELS).exists()

    assert run(tmp_path, "--unlock").returncode == 0
    result = run(tmp_path, LABELS)
    assert result.returncode == 0, result.stdout + result.stderr
    log = (tmp_path / f"results/logs/segment_shard/{SLIDE}/0.log").read_text()
    assert f"{len(committed)} already committed, {72 - len(committed)} to segment" in log, log
    assert not store.exists()  # removed by the stitch job once labels.zarr was written

    reference = tmp_path / "reference.zarr"
    segment_slide(tmp_path / pre, reference, SEGMENT, seed=CONFIG["seed"], progress=None)
    labels = zarr.open_group(str(tmp_path / LABELS), mode="r")["0"][:]
    assert labels.max() > 500 and np.array_equal(labels, zarr.open_group(str(reference), mode="r")["0"][:])
