"""The workflow end to end on a tiny synthetic cohort: lint, dry run, outputs, config errors, reruns."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))

TINY_CONFIG = {
    "results": "results",
    "synthetic": {
        "enabled": True,
        "seed": 3,
        "frame": {"height": 128, "width": 128},
        "grid": {"rows": 2, "cols": 2},
        "cells_per_frame": 15,
        "conditions": {
            "control": {"patients": 1, "composition": {"CD4_T": 0.3, "granulocyte": 0.7}},
            "disease_a": {"patients": 1, "ctc_per_1000": 50.0, "composition": {"CD8_T": 0.3, "monocyte": 0.7}},
        },
    },
    # 256 px slides in 96 px tiles: edge tiles are partial, so sizes that are not multiples are covered
    "tile": {"size": 96},
    # small, fast models: these tests check the plumbing, not the accuracy
    "classify": {"tasks": ["lineage"], "max_cells_per_label": 200, "train": {"epochs": 2, "minutes": 0.2}},
    "embed": {"widths": [8, 16], "cells_per_slide": 200, "train": {"epochs": 2}, "cluster": {"k_max": 4}},
    "preprocess": {
        "sample_tiles": 4,
        "channels": {"DAPI": {"denoise": {"enabled": True, "iterations": 5}}, "CK": {"clahe": {"enabled": True, "kernel_size": 32}}},
    },
}


def snakemake(workdir, *args, check=True):
    command = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", "2", *args]
    result = subprocess.run(command, capture_output=True, text=True, cwd=workdir)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def write_config(workdir, config):
    (workdir / "config").mkdir(parents=True, exist_ok=True)
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config))


def planned_jobs(workdir):
    """Rule -> job count from a dry run's job stats table."""
    out = snakemake(workdir, "--dry-run").stdout
    if "Nothing to be done" in out:
        return {}
    stats = out.split("Job stats:", 1)[1]
    return {rule: int(count) for rule, count in re.findall(r"^(\w+)\s+(\d+)\s*$", stats, re.M) if rule != "total"}


def downstream_rules(workdir, rule):
    """Rules that depend, directly or not, on ``rule``, from Snakemake's rule graph."""
    dot = snakemake(workdir, "--rulegraph").stdout
    names = dict(re.findall(r'^\s*(\d+)\[label = "(\w+)"', dot, re.M))
    children = {}
    for parent, child in re.findall(r"^\s*(\d+) -> (\d+)", dot, re.M):
        children.setdefault(names[parent], set()).add(names[child])
    found, todo = set(), [rule]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("workflow")
    write_config(workdir, TINY_CONFIG)
    result = snakemake(workdir)
    return workdir, result


def test_lint_reports_nothing():
    result = subprocess.run([SNAKEMAKE, "--lint"], capture_output=True, text=True, cwd=REPO)
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr, (
        result.stdout + result.stderr
    )


def test_dry_run_of_the_demo_config_plans_every_stage(tmp_path):
    # a fresh working directory, so results of an earlier `make demo` in the checkout do not matter
    write_config(tmp_path, yaml.safe_load((REPO / "config" / "config.yaml").read_text()))
    result = snakemake(tmp_path, "--dry-run")
    for rule in ("simulate_slide", "synthetic_cohort", "tile", "preprocess", "all"):
        assert re.search(rf"^{rule}\s+\d+", result.stdout, re.M), (rule, result.stdout)


def test_bad_config_stops_before_any_job(tmp_path):
    bad = {**TINY_CONFIG, "tile": {"size": 96, "overlap": 5}}
    write_config(tmp_path, bad)
    result = snakemake(tmp_path, check=False)
    assert result.returncode != 0
    message = result.stdout + result.stderr
    assert "'overlap'" in message and "allowed: compression_level, size" in message
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_tiny_run_writes_ome_zarr_for_every_slide(tiny_run):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    workdir, result = tiny_run
    slides = ["P01_S1", "P02_S1"]
    truth = workdir / "results" / "synthetic" / "truth_cells.parquet"
    assert truth.exists() and (workdir / "results" / "synthetic" / "samples.tsv").exists()
    for slide in slides:
        for name in ("image.zarr", "preprocessed.zarr"):
            path = workdir / "results" / slide / name
            group = zarr.open_group(str(path), mode="r")
            assert group.attrs["ome"]["omero"]["channels"][0]["label"] == "DAPI"
            assert group["0"].shape == (4, 256, 256) and group["0"].chunks == (1, 96, 96)
            node = next(iter(Reader(parse_url(str(path)))()))
            assert node.metadata["channel_names"] == ["DAPI", "CK", "VIM", "CD45"]
        image = zarr.open_group(str(workdir / "results" / slide / "image.zarr"), mode="r")["0"]
        assert image.dtype == np.uint16 and image[0].max() > 0
    # progress went to the terminal and the per-slide log
    assert "tile P01_S1" in result.stderr
    assert (workdir / "results" / "logs" / "preprocess" / "P01_S1.log").read_text().strip()


def _mtimes(workdir, pattern):
    return {p: p.stat().st_mtime_ns for p in sorted((workdir / "results").glob(pattern))}


@pytest.mark.slow
def test_changing_one_preprocess_parameter_reruns_only_preprocess(tiny_run):
    workdir, _ = tiny_run
    assert planned_jobs(workdir) == {}, "a second run with nothing changed must run nothing"
    tiles_before = _mtimes(workdir, "*/image.zarr/zarr.json")
    simulated_before = _mtimes(workdir, "synthetic/*/truth_cells.parquet")
    preprocessed_before = _mtimes(workdir, "*/preprocessed.zarr/zarr.json")

    changed = yaml.safe_load(yaml.safe_dump(TINY_CONFIG))
    changed["preprocess"]["channels"]["DAPI"]["denoise"]["weight"] = 0.2
    write_config(workdir, changed)
    try:
        jobs = planned_jobs(workdir)
        assert jobs.get("preprocess") == 2
        assert set(jobs) <= downstream_rules(workdir, "preprocess") | {"preprocess"}, jobs
        time.sleep(0.01)
        snakemake(workdir)
        assert _mtimes(workdir, "*/image.zarr/zarr.json") == tiles_before
        assert _mtimes(workdir, "synthetic/*/truth_cells.parquet") == simulated_before
        after = _mtimes(workdir, "*/preprocessed.zarr/zarr.json")
        assert all(after[p] != preprocessed_before[p] for p in after)
        assert planned_jobs(workdir) == {}
    finally:
        write_config(workdir, TINY_CONFIG)
