"""The workflow names bundled models by ``bundled:<name>`` in its parameters and makes their files rule
inputs (so replacing a model's file reruns what used it), wherever the working directory is."""

import re
import subprocess
import sys
from pathlib import Path

import yaml
from helpers.tiny_workflow import tiny_config

from hemoprofile.models import resolve_model

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def dry_run(workdir: Path, config: dict) -> subprocess.CompletedProcess:
    (workdir / "config").mkdir(parents=True, exist_ok=True)
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    command = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", "1", "--dry-run"]
    return subprocess.run(command, capture_output=True, text=True, cwd=workdir)


def job_inputs(stdout: str, rule: str) -> set[str]:
    return {name.strip() for line in re.findall(rf"^rule {rule}:\n\s+input: (.*)$", stdout, re.M)
            for name in line.split(",")}


def test_bundled_models_are_rule_inputs_by_their_installed_files(tmp_path):
    config = tiny_config(segment={"backend": "cellpose", "model": "bundled:hemoprofile_cellpose"})
    config["classify"]["models"] = {"lineage": "bundled:pbc8_cellnet96"}
    result = dry_run(tmp_path, config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert str(resolve_model("bundled:hemoprofile_cellpose")) in job_inputs(result.stdout, "segment")
    assert str(resolve_model("bundled:pbc8_cellnet96")) in job_inputs(result.stdout, "classify")
    assert "classifier_lineage.pt" not in result.stdout  # a given model is not trained


def test_unknown_bundled_name_stops_the_workflow_naming_it(tmp_path):
    result = dry_run(tmp_path, tiny_config(segment={"backend": "cellpose", "model": "bundled:no_such_model"}))
    assert result.returncode != 0
    assert "segment.model: no bundled model named 'bundled:no_such_model'" in result.stdout + result.stderr
