"""A slide with a damaged frame fails its own tile job with a message naming the file, while
``--keep-going`` finishes every other slide; a rerun after the fix runs only that slide's jobs. A channel
name the sheet does not have stops the run before any job."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from hemoprofile.config import validate_config
from hemoprofile.simulate import plan_cohort, simulate_slide

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
SLIDES = ["P01_S1", "P02_S1"]
OUTPUTS = ("image.zarr", "preprocessed.zarr", "labels.zarr", "cells.parquet", "patches.zarr", "clusters.parquet")


def run_snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    targets = [f"results/{slide}/cells.parquet" for slide in SLIDES]
    command = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", "1", *args, *targets]
    return subprocess.run(command, capture_output=True, text=True, cwd=workdir)


@pytest.fixture
def own_slides(tmp_path):
    """Two simulated frame-folder slides described by a sample sheet, as a user's own data would be."""
    synthetic = validate_config({"synthetic": {
        "enabled": True, "seed": 3, "frame": {"height": 128, "width": 128}, "grid": {"rows": 2, "cols": 2},
        "cells_per_frame": 15,
        "conditions": {"control": {"patients": 2, "composition": {"CD4_T": 0.3, "granulocyte": 0.7}}}}})["synthetic"]
    plan = plan_cohort(synthetic, tmp_path / "data")
    for _, sample in plan.iterrows():
        simulate_slide(synthetic, sample, tmp_path / "data")
    plan.to_csv(tmp_path / "samples.tsv", sep="\t", index=False)
    config = {
        "samples": "samples.tsv", "results": "results", "synthetic": {"enabled": False}, "tile": {"size": 96},
        "segment": {"backend": "classical"},  # the plumbing is under test, not the segmentation
        "preprocess": {"sample_tiles": 4},
    }
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    return tmp_path, pd.read_csv(tmp_path / "samples.tsv", sep="\t").set_index("slide")


@pytest.mark.slow
def test_truncated_frame_fails_only_its_slide_and_keep_going_finishes_the_others(own_slides):
    workdir, samples = own_slides
    frame = Path(samples.loc["P02_S1", "path"]) / "Tile000006.tif"
    whole = frame.read_bytes()
    frame.write_bytes(whole[: len(whole) // 2])  # an interrupted copy

    result = run_snakemake(workdir, "--keep-going")
    assert result.returncode != 0
    # the failed job is named, and its log says which file is damaged and how
    assert "Error in rule tile" in result.stderr and "P02_S1" in result.stderr
    log = (workdir / "results" / "logs" / "tile" / "P02_S1.log").read_text()
    assert f"ERROR ValueError: {frame.parent}: 1 of 16 frame files are damaged" in log
    assert "Tile000006.tif: truncated TIFF" in log
    # the other slide went all the way; the damaged one left nothing, not even a temporary
    assert all((workdir / "results" / "P01_S1" / name).exists() for name in OUTPUTS)
    assert not list((workdir / "results").glob("P02_S1/*"))

    # fixed: the same command runs the damaged slide's four jobs and leaves the finished slide alone
    frame.write_bytes(whole)
    finished = {p: p.stat().st_mtime_ns for p in (workdir / "results" / "P01_S1").iterdir()}
    planned = run_snakemake(workdir, "--dry-run").stdout
    stats = planned.split("Job stats:", 1)[1]
    jobs = {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)\s*$", stats, re.M) if rule != "total"}
    assert jobs == {"tile": 1, "preprocess": 1, "segment": 1, "extract": 1}, planned
    assert "slide=P02_S1" in planned and "slide=P01_S1" not in planned
    rerun = run_snakemake(workdir)
    assert rerun.returncode == 0, rerun.stderr
    assert {p: p.stat().st_mtime_ns for p in (workdir / "results" / "P01_S1").iterdir()} == finished
    assert all((workdir / "results" / "P02_S1" / name).exists() for name in OUTPUTS)


def test_channel_name_unknown_to_the_sheet_stops_the_run_before_any_job(own_slides):
    workdir, _ = own_slides
    config = yaml.safe_load((workdir / "config" / "config.yaml").read_text())
    config["segment"]["channels"] = {"nucleus": "Hoechst"}
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    result = run_snakemake(workdir)
    assert result.returncode != 0
    assert ("samples.tsv: channel names do not fit the configuration:\n  slide(s) P01_S1, P02_S1: "
            "segment.channels.nucleus names 'Hoechst', not among the channels ['DAPI', 'CK', 'VIM', 'CD45']"
            ) in result.stdout + result.stderr
    assert not (workdir / "results").exists()
