"""A run killed with SIGKILL in the middle of tiling, of segmentation and of extraction (Snakemake and its
job at once, as when a node loses power) leaves no output that looks complete and loses nothing already
finished; after ``snakemake --unlock`` the same command completes the run, and its outputs equal those of
a run that was never interrupted, array for array and row for row.

The slide is 8 x 8 frames of 128 px (1 megapixel, 4 channels) so that each stage runs for long enough
(tile about 0.5 s, segment and extract a few seconds on two CPU cores) for a kill to land inside it; the
test waits for the stage's temporary output (``<output>.tmp-<pid>``, see hemoprofile.io.atomic_output)
to appear and kills then.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
import zarr

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
SLIDE = "P01_S1"
CONFIG = {
    "results": "results",
    "synthetic": {
        "enabled": True,
        "seed": 3,
        "frame": {"height": 128, "width": 128},
        "grid": {"rows": 8, "cols": 8},
        "cells_per_frame": 15,
        "conditions": {"control": {"patients": 1, "composition": {"CD4_T": 0.3, "granulocyte": 0.7}}},
    },
    "tile": {"size": 128},
    "preprocess": {
        "sample_tiles": 4,
        "channels": {"DAPI": {"denoise": {"enabled": True, "iterations": 5}},
                     "CK": {"clahe": {"enabled": True, "kernel_size": 32}}},
    },
    # segment: the default, Cellpose with the project's bundled model, on the CPU
}
TARGETS = [f"results/{SLIDE}/{name}" for name in ("cells.parquet", "patches.zarr", "clusters.parquet")]
ARRAYS = ("image.zarr", "preprocessed.zarr", "labels.zarr", "patches.zarr")
TABLES = ("cells.parquet", "clusters.parquet")
STAGE_TIMEOUT_S = 300


def command(workdir: Path, *args: str) -> list[str]:
    return [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", "1", *args]


def run(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(command(workdir, *args), capture_output=True, text=True, cwd=workdir)


def new_workdir(path: Path) -> Path:
    (path / "config").mkdir(parents=True)
    (path / "config" / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same run, never interrupted."""
    workdir = new_workdir(tmp_path_factory.mktemp("uninterrupted"))
    result = run(workdir, *TARGETS)
    assert result.returncode == 0, result.stdout + result.stderr
    return workdir / "results" / SLIDE


def _process_group_alive(pgid: int) -> bool:
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def run_until_killed(workdir: Path, temporary: str, log_name: str) -> Path:
    """Start the run; as soon as ``results/<slide>/<temporary>`` exists (the stage is writing) and the
    stage's log has a line, SIGKILL Snakemake and its job together. Return what Snakemake printed."""
    output = workdir / f"killed-{log_name}.out"
    log = workdir / "results" / "logs" / log_name / f"{SLIDE}.log"
    with open(output, "w") as handle:
        # Snakemake and its jobs share a new process group; lower priority keeps this poller responsive
        process = subprocess.Popen(command(workdir, *TARGETS), stdout=handle, stderr=subprocess.STDOUT, cwd=workdir,
                                   start_new_session=True, preexec_fn=lambda: os.nice(5))
    started = time.monotonic()
    try:
        while not (list((workdir / "results" / SLIDE).glob(temporary)) and log.exists() and log.stat().st_size):
            if process.poll() is not None:
                pytest.fail(f"the run ended before {temporary} appeared:\n{output.read_text()}")
            if time.monotonic() - started > STAGE_TIMEOUT_S:
                pytest.fail(f"{temporary} did not appear in {STAGE_TIMEOUT_S} s:\n{output.read_text()}")
            time.sleep(0.005)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    deadline = time.monotonic() + 30
    while _process_group_alive(process.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _process_group_alive(process.pid)
    return output


def unlock(workdir: Path) -> None:
    result = run(workdir, "--unlock")
    assert result.returncode == 0, result.stdout + result.stderr


def pixels(path: Path) -> zarr.Array:
    """The array of an OME-Zarr image (its level 0) or of a bare array (patches.zarr)."""
    node = zarr.open(str(path), mode="r")
    return node["0"] if isinstance(node, zarr.Group) else node


def mtimes(folder: Path, names) -> dict[str, int]:
    return {name: (folder / name / "zarr.json").stat().st_mtime_ns for name in names}


@pytest.mark.slow
def test_killed_in_tile_segment_and_extract_the_rerun_equals_an_uninterrupted_run(tmp_path, reference):
    workdir = new_workdir(tmp_path)
    slide = workdir / "results" / SLIDE
    timings = {}

    # 1. killed while tiling: no image.zarr, only the temporary the next run clears
    started = time.monotonic()
    run_until_killed(workdir, "image.zarr.tmp-*", "tile")
    timings["killed in tile"] = time.monotonic() - started
    assert not (slide / "image.zarr").exists()
    assert list(slide.glob("image.zarr.tmp-*"))
    assert (workdir / "results" / "synthetic" / SLIDE / "frames").is_dir()  # the finished simulation stays
    # the killed Snakemake left its lock: the same command refuses to start and says what to do
    locked = run(workdir, *TARGETS)
    assert locked.returncode != 0 and "--unlock" in locked.stdout + locked.stderr

    # 2. killed while segmenting: tile and preprocess outputs are kept, no labels.zarr
    started = time.monotonic()
    unlock(workdir)
    run_until_killed(workdir, "labels.zarr.tmp-*", "segment")
    timings["killed in segment"] = time.monotonic() - started
    assert not (slide / "labels.zarr").exists() and list(slide.glob("labels.zarr.tmp-*"))
    assert not list(slide.glob("image.zarr.tmp-*"))  # the rerun of tile removed the first kill's leftover
    finished = mtimes(slide, ["image.zarr", "preprocessed.zarr"])

    # 3. killed while extracting (its first pass over the tiles): none of its three outputs exists
    started = time.monotonic()
    unlock(workdir)
    run_until_killed(workdir, "cells.parquet.tmp-pass1-*", "extract")
    timings["killed in extract"] = time.monotonic() - started
    assert not any((slide / name).exists() for name in ("cells.parquet", "patches.zarr", "clusters.parquet"))
    finished.update(mtimes(slide, ["labels.zarr"]))

    # 4. the same command completes the run; nothing finished before a kill was computed again
    started = time.monotonic()
    unlock(workdir)
    result = run(workdir, *TARGETS)
    timings["completing run"] = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    assert mtimes(slide, finished) == finished
    assert not list(slide.glob("*.tmp-*")), list(slide.glob("*.tmp-*"))
    print("timings (s):", {k: round(v, 1) for k, v in timings.items()})

    # 5. equal to the uninterrupted run
    for name in ARRAYS:
        got, want = pixels(slide / name), pixels(reference / name)
        assert got.shape == want.shape and got.dtype == want.dtype, name
        np.testing.assert_array_equal(got[:], want[:], err_msg=name)
    assert pixels(slide / "labels.zarr")[:].max() > 500  # cells were found
    for name in TABLES:
        got, want = pq.read_table(slide / name), pq.read_table(reference / name)
        assert got.num_rows == want.num_rows and got.schema == want.schema, name
        assert got.equals(want), name
