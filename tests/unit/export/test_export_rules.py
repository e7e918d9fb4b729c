"""The workflow plans the AnnData export when anndata.enabled is on (per slide and cohort) and not when off."""

import re
import subprocess
import sys
from pathlib import Path

import yaml
from helpers.tiny_workflow import TINY_SLIDES, tiny_config

REPO = Path(__file__).resolve().parents[3]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def planned(workdir: Path, anndata: dict) -> dict[str, int]:
    (workdir / "config").mkdir(parents=True, exist_ok=True)
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(tiny_config(anndata=anndata)))
    done = subprocess.run([SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", "1", "--dry-run"],
                          capture_output=True, text=True, cwd=workdir, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)\s*$", done.stdout, re.MULTILINE)}


def test_export_rules_are_planned_only_when_enabled(tmp_path):
    jobs = planned(tmp_path / "on", {"enabled": True})
    assert jobs["export_slide_h5ad"] == len(TINY_SLIDES) and jobs["export_cohort_h5ad"] == 1
    assert not {"export_slide_h5ad", "export_cohort_h5ad"} & set(planned(tmp_path / "off", {"enabled": False}))
