"""preprocess.keep false: preprocessed.zarr is a Snakemake temporary, deleted once the slide's segment and
extract jobs are done; it is not rebuilt for later stages (the report reads image.zarr instead), and a
finished slide does not rerun because it is gone."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers.tiny_workflow import TINY_SLIDES, tiny_config

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
SLIDE = TINY_SLIDES[0]
CONFIG = tiny_config()
CONFIG["preprocess"]["keep"] = False
CONFIG["interaction"] = {"enabled": False}  # it reads every slide's preprocessed.zarr (test below)


def run(workdir: Path, *args: str) -> str:
    command = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", "2", *args]
    result = subprocess.run(command, capture_output=True, text=True, cwd=workdir, timeout=900)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.mark.slow  # one tiny slide through extract (~30 s)
def test_preprocessed_is_deleted_after_extract_and_not_rebuilt(tmp_path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    slide = tmp_path / "results" / SLIDE
    run(tmp_path, f"results/{SLIDE}/cells.parquet")

    assert (slide / "cells.parquet").is_file() and (slide / "labels.zarr").is_dir()
    assert (slide / "image.zarr").is_dir()
    assert not (slide / "preprocessed.zarr").exists(), "the temporary outlived its last consumer"

    # the finished slide is up to date without it, and the rest of the workflow does not ask for it back
    assert "Nothing to be done" in run(tmp_path, "--dry-run", f"results/{SLIDE}/cells.parquet")
    plan = run(tmp_path, "--dry-run")
    planned = dict(re.findall(r"^(\w+)\s+(\d+)\s*$", plan.split("Job stats:", 1)[1], re.M))
    assert planned.get("preprocess") == str(len(TINY_SLIDES) - 1), planned  # the other slides only
    assert "report" in planned and "segment" in planned


def test_interaction_with_a_temporary_preprocessed_image_stops_before_any_job(tmp_path):
    (tmp_path / "config").mkdir()
    config = {**CONFIG, "interaction": {"enabled": True}}
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    command = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "--dry-run"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode != 0
    assert "interaction.enabled is true and preprocess.keep is false" in result.stdout + result.stderr
