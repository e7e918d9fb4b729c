"""The workflow picks a fine-tuned model up: with segment.model naming finetune_segmenter's output, the
model is built from the annotated folders and feeds segmentation only (so a retrain reruns segment and
what follows, never tile or preprocess). Dry runs of the tiny cohort; nothing is trained here."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import tifffile
import yaml
from helpers.tiny_workflow import tiny_config

REPO = Path(__file__).resolve().parents[3]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
FINETUNED = "results/models/segmenter/finetuned.pt"


def snakemake(workdir: Path, config: dict, *args: str) -> subprocess.CompletedProcess:
    (workdir / "config").mkdir(parents=True, exist_ok=True)
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    command = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", "1", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=workdir, check=False)


def test_segment_model_naming_the_finetuned_file_schedules_finetuning_before_segment_only(tmp_path):
    folder = tmp_path / "annotations"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", np.zeros((8, 8), np.uint16))
    tifffile.imwrite(folder / "a_masks.tif", np.ones((8, 8), np.uint16))
    config = tiny_config(segment={"backend": "cellpose", "model": FINETUNED},
                         train_segmenter={"finetune": {"folders": [str(folder)]}})
    result = snakemake(tmp_path, config, "--dry-run", "--dag", "dot", "results/P01_S1/cells.parquet")
    assert result.returncode == 0, result.stdout + result.stderr
    labels = dict(re.findall(r'^\s*(\d+)\[label = "(\w+)', result.stdout, re.MULTILINE))
    edges = [(labels[a], labels[b]) for a, b in re.findall(r"^\s*(\d+) -> (\d+)", result.stdout, re.MULTILINE)]
    assert "finetune_segmenter" in labels.values() and "train_segmenter" not in labels.values()
    assert [child for parent, child in edges if parent == "finetune_segmenter"] == ["segment"]
    assert not [parent for parent, child in edges if child == "finetune_segmenter"]  # built from the folders alone

    config["train_segmenter"]["finetune"]["folders"] = []
    result = snakemake(tmp_path, config, "--dry-run", "results/P01_S1/cells.parquet")
    assert result.returncode != 0 and "train_segmenter.finetune.folders is empty" in result.stdout + result.stderr
